import Dispatch
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Writes `line` and a newline to descriptor `fd` (``writeAll(_:to:)``).
public func writeLine(_ line: String, to fd: Int32) {
    writeAll(Array((line + "\n").utf8), to: fd)
}

/// Writes `bytes` to descriptor `fd` with `write(2)`, waiting as long as it takes, also when
/// the descriptor was left non-blocking (`EAGAIN`: poll until it takes bytes again), whatever
/// happens to it: a closed pipe or descriptor (`EPIPE`, `EBADF`) loses them and nothing else.
/// Foundation's `FileHandle.write` traps on those, which took `redlock run` down mid-run (its
/// command never started, or was left to the watchdog) when stderr was a closed pipe.
public func writeAll(_ bytes: [UInt8], to fd: Int32) {
    bytes.withUnsafeBytes { buffer in
        guard let base = buffer.baseAddress else { return }
        var offset = 0
        while offset < buffer.count {
            let written = write(fd, base + offset, buffer.count - offset)
            if written > 0 {
                offset += written
            } else if written < 0 && errno == EINTR {
                continue
            } else if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                var room = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                while poll(&room, 1, -1) < 0 && errno == EINTR {}
            } else {
                return
            }
        }
    }
}

/// A line on stderr that waits at most a second to be written (see ``StandardError``): a
/// message after the work is done, which a reader may still take.
public func printError(_ line: String) {
    StandardError.shared.write(line, waitingUpTo: .seconds(1))
}

/// Waits up to a second for what ``StandardError/shared`` has queued to be written: what
/// `redlock` registers with `atexit` (a function of no actor, as exit may run on any thread).
public func flushStandardErrorAtExit() {
    StandardError.shared.flush(waitingUpTo: .seconds(1))
}

/// stderr, written by a thread of its own so that no caller waits for a reader: a log shipper
/// that stalls, or a pipe nobody reads, must not hold up the lease's extensions (a line written
/// on the extender's path or on the client's I/O thread would, and the lease would be lost
/// while every node answers). Whatever stderr is (a pipe, a terminal, a socket, a file, one
/// owned by another user, one left non-blocking), callers only queue lines; the thread writes
/// them in order, one line per write (a line of at most `PIPE_BUF` bytes reaches a pipe whole,
/// never mixed with the command's output on the same pipe), waiting as long as stderr makes it.
///
/// Lines queued without a wait that would take the queue past 64 KiB are dropped, and a line
/// in their place says how many were. A line queued with a wait (``write(_:waitingUpTo:)``: a
/// message after the work, such as why `redlock` exits) is always queued; when the thread has
/// been held in one write for 100 ms or more (a reader that does not keep up), the lines queued
/// before it that nobody waits for are dropped (counted in their place), so it goes next. At
/// exit, what is queued has a second to be written (``flush(waitingUpTo:)``).
public final class StandardError: Sendable {
    /// The one for this process's stderr (descriptor 2).
    public static let shared = StandardError(descriptor: STDERR_FILENO)
    /// How many bytes of lines queued without a wait may wait to be written.
    public static let capacity = 64 * 1_024
    /// How long the thread may be held in one write before a line queued with a wait drops
    /// the lines queued before it without one.
    public static let stuck: Duration = .milliseconds(100)

    private enum Entry {
        /// A line and its newline, its number (lines queued since the start), and `waited` when
        /// a caller waits for it to be written.
        case line(String, number: Int, waited: Bool)
        /// The count of lines dropped in its place (``State/dropped``).
        case droppedNotice
    }

    private struct State {
        var entries: [Entry] = []
        /// Bytes of the lines queued without a wait.
        var bytes = 0
        /// Lines dropped since the notice in the queue was queued (``Entry/droppedNotice``).
        var dropped = 0
        var noticeQueued = false
        /// Lines queued since the start (the last one's number), and written since.
        var queued = 0
        var written = 0
        /// Callers waiting until the lines up to a number are written (or dropped).
        var waiters: [(through: Int, done: DispatchSemaphore)] = []
        /// Since when the thread has been in its current write, if it is in one.
        var writingSince: ContinuousClock.Instant?
        var writerStarted = false

        /// Drops `entries`' lines that nobody waits for; a notice takes the place of the first.
        mutating func dropUnwaited() {
            var kept: [Entry] = []
            for entry in entries {
                if case .line(_, _, waited: false) = entry {
                    dropped += 1
                    guard !noticeQueued else { continue }
                    noticeQueued = true
                    kept.append(.droppedNotice)
                } else {
                    kept.append(entry)
                }
            }
            entries = kept
            bytes = 0
        }
    }

    private let state = Mutex(State())
    /// Signalled once per entry queued: the writer's wake-up.
    private let work = DispatchSemaphore(value: 0)
    /// Where the lines go.
    private let descriptor: Int32

    /// Lines for descriptor `descriptor` (``shared`` for stderr; another, a pipe say, for
    /// tests). The writer thread starts with the first line, and runs as long as the process.
    public init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// Queues `line` (a newline follows it) and, with a `limit` above zero, waits until it is
    /// written or `limit` has passed. Without a wait, a line that finds the queue full is
    /// dropped (and counted).
    public func write(_ line: String, waitingUpTo limit: Duration = .zero) {
        let text = line + "\n"
        let waited = limit > .zero
        let (queued, startWriter) = state.withLock { state -> (Int?, Bool) in
            if waited {
                if let since = state.writingSince, since.duration(to: .now) >= Self.stuck { state.dropUnwaited() }
            } else if state.bytes + text.utf8.count > Self.capacity {
                state.dropped += 1
                guard !state.noticeQueued else { return (nil, false) }
                state.noticeQueued = true
                state.entries.append(.droppedNotice)
                return (nil, false)
            }
            state.queued += 1
            state.entries.append(.line(text, number: state.queued, waited: waited))
            if !waited { state.bytes += text.utf8.count }
            defer { state.writerStarted = true }
            return (state.queued, !state.writerStarted)
        }
        if startWriter {
            let writer = Thread { [self] in writeForever() }
            writer.name = "redlock-stderr"
            writer.start()
        }
        work.signal()
        if let queued, waited { wait(through: queued, upTo: limit) }
    }

    /// Waits until every line queued so far is written (or dropped), or `limit` has passed:
    /// at exit, so that lines queued without a wait just before are not lost.
    public func flush(waitingUpTo limit: Duration) {
        let last = state.withLock { $0.queued }
        wait(through: last, upTo: limit)
    }

    /// Waits until the lines up to number `through` are written, or `limit` has passed.
    private func wait(through number: Int, upTo limit: Duration) {
        let done = DispatchSemaphore(value: 0)
        let waiting = state.withLock { state -> Bool in
            guard state.written < number else { return false }
            state.waiters.append((number, done))
            return true
        }
        guard waiting else { return }
        let seconds = Double(limit.components.seconds) + Double(limit.components.attoseconds) / 1e18
        if done.wait(timeout: .now() + seconds) == .timedOut {
            state.withLock { $0.waiters.removeAll { $0.done === done } }
        }
    }

    /// The writer thread: writes the queue's entries one by one (a notice with the count of
    /// lines dropped in its place), wakes the callers waiting for them; for as long as the
    /// process runs.
    private func writeForever() {
        while true {
            work.wait()
            while let entry = nextEntry() {
                let text: String
                var number: Int?
                switch entry {
                case let .line(line, lineNumber, _):
                    text = line
                    number = lineNumber
                case .droppedNotice:
                    let dropped = state.withLock { state in
                        defer {
                            state.dropped = 0
                            state.noticeQueued = false
                        }
                        return state.dropped
                    }
                    text = "redlock: \(dropped) line\(dropped == 1 ? "" : "s") for stderr dropped: it was not read fast enough\n"
                }
                writeAll(Array(text.utf8), to: descriptor)
                let woken = state.withLock { state in
                    state.writingSince = nil
                    if let number { state.written = max(state.written, number) }
                    let written = state.written
                    let woken = state.waiters.filter { $0.through <= written }.map(\.done)
                    state.waiters.removeAll { $0.through <= written }
                    return woken
                }
                for done in woken { done.signal() }
            }
        }
    }

    /// Takes the queue's first entry, noting that a write begins.
    private func nextEntry() -> Entry? {
        state.withLock { state in
            guard !state.entries.isEmpty else { return nil }
            let entry = state.entries.removeFirst()
            if case let .line(text, _, waited: false) = entry { state.bytes -= text.utf8.count }
            state.writingSince = .now
            return entry
        }
    }
}

/// swift-log's handler for `redlock`: time, level, label, metadata and message, as swift-log's
/// `StreamLogHandler` prints them (without its `[source]`), queued on ``StandardError`` without
/// waiting, since the client logs on its I/O thread (a node that stops answering) and a stalled
/// stderr must not stop its I/O.
public struct StandardErrorLogHandler: LogHandler {
    /// The logger's label.
    public let label: String
    /// The lowest level logged; `info` by default.
    public var logLevel: Logger.Level = .info
    /// Metadata every line carries.
    public var metadata: Logger.Metadata = [:]

    /// A handler for the logger labelled `label`.
    public init(label: String) {
        self.label = label
    }

    /// The metadata value under `key`.
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Queues the line on ``StandardError/shared``, without waiting.
    public func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        let fields = merged.isEmpty ? "" : " " + merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        StandardError.shared.write("\(Self.timestamp()) \(event.level) \(label):\(fields) \(event.message)")
    }

    /// The local time, as `StreamLogHandler` gives it: `2026-12-06T05:40:12+0000`.
    private static func timestamp() -> String {
        var now = time(nil)
        var local = tm()
        var buffer = [CChar](repeating: 0, count: 64)
        guard localtime_r(&now, &local) != nil else { return "" }
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &local)
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
