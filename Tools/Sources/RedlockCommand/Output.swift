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
func writeLine(_ line: String, to fd: Int32) {
    writeAll(Array((line + "\n").utf8), to: fd)
}

/// Writes `bytes` to descriptor `fd` with `write(2)`, waiting as long as it takes, whatever
/// happens to it: a closed pipe or descriptor (`EPIPE`, `EBADF`) loses them and nothing else.
/// Foundation's `FileHandle.write` traps on those, which took `redlock run` down mid-run (its
/// command never started, or was left to the watchdog) when stderr was a closed pipe.
func writeAll(_ bytes: [UInt8], to fd: Int32) {
    bytes.withUnsafeBytes { buffer in
        guard let base = buffer.baseAddress else { return }
        var offset = 0
        while offset < buffer.count {
            let written = write(fd, base + offset, buffer.count - offset)
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }
}

/// A line on stderr that waits at most a second to be written (see ``StandardError``): a
/// message after the work is done, which a reader may still take.
func printError(_ line: String) {
    StandardError.shared.write(line, waitingUpTo: .seconds(1))
}

/// stderr, written by a thread of its own so that no caller waits for a reader: a log shipper
/// that stalls, or a pipe nobody reads, must not hold up the lease's extensions (a line written
/// on the extender's path or on the client's I/O thread would, and the lease would be lost
/// while every node answers). Whatever stderr is (a pipe, a terminal, a socket, a file, one
/// owned by another user), callers only queue lines; the thread writes them in order, waiting
/// as long as stderr makes it. Lines that would take the queue past 64 KiB are dropped and
/// counted, and the thread says how many after the lines queued before them. A line written
/// with a wait (``write(_:waitingUpTo:)``) is always queued, and its caller waits until it is
/// written or the wait is over.
final class StandardError: Sendable {
    /// The one for this process.
    static let shared = StandardError()
    /// How many bytes of lines may wait to be written.
    static let capacity = 64 * 1_024

    private struct State {
        var lines: [String] = []
        var bytes = 0
        /// Lines dropped since the thread last took the queue.
        var dropped = 0
        /// How many lines were queued since the start (a line's number).
        var queued = 0
        /// Callers waiting for their line (its number) to be written.
        var waiters: [(line: Int, done: DispatchSemaphore)] = []
        var writerStarted = false
    }

    private let state = Mutex(State())
    /// Signalled once per line queued: the writer's wake-up.
    private let work = DispatchSemaphore(value: 0)

    private init() {}

    /// Queues `line` (a newline follows it) and, with a `limit` above zero, waits until it is
    /// written or `limit` has passed. Without a wait, a line that finds the queue full is
    /// dropped (and counted).
    func write(_ line: String, waitingUpTo limit: Duration = .zero) {
        let text = line + "\n"
        let waiting = limit > .zero
        let done = waiting ? DispatchSemaphore(value: 0) : nil
        let (accepted, startWriter) = state.withLock { state -> (Bool, Bool) in
            guard waiting || state.bytes + text.utf8.count <= Self.capacity else {
                state.dropped += 1
                return (false, false)
            }
            state.lines.append(text)
            state.bytes += text.utf8.count
            state.queued += 1
            if let done { state.waiters.append((state.queued, done)) }
            defer { state.writerStarted = true }
            return (true, !state.writerStarted)
        }
        guard accepted else { return }
        if startWriter {
            let writer = Thread { [self] in writeForever() }
            writer.name = "redlock-stderr"
            writer.start()
        }
        work.signal()
        guard let done else { return }
        let seconds = Double(limit.components.seconds) + Double(limit.components.attoseconds) / 1e18
        if done.wait(timeout: .now() + seconds) == .timedOut {
            state.withLock { $0.waiters.removeAll { $0.done === done } }
        }
    }

    /// The writer thread: takes what is queued, writes it (and the count of lines dropped
    /// meanwhile), wakes the callers waiting for it; for as long as the process runs.
    private func writeForever() {
        while true {
            work.wait()
            let (lines, dropped, through) = state.withLock { state in
                defer {
                    state.lines.removeAll(keepingCapacity: true)
                    state.bytes = 0
                    state.dropped = 0
                }
                return (state.lines, state.dropped, state.queued)
            }
            guard !lines.isEmpty || dropped > 0 else { continue }
            var text = lines.joined()
            if dropped > 0 {
                text += "redlock: \(dropped) line\(dropped == 1 ? "" : "s") for stderr dropped: it was not read fast enough\n"
            }
            writeAll(Array(text.utf8), to: STDERR_FILENO)
            let woken = state.withLock { state in
                let woken = state.waiters.filter { $0.line <= through }.map(\.done)
                state.waiters.removeAll { $0.line <= through }
                return woken
            }
            for done in woken { done.signal() }
        }
    }
}

/// swift-log's handler for `redlock`: time, level, label, metadata and message, as swift-log's
/// `StreamLogHandler` prints them (without its `[source]`), queued on ``StandardError`` without
/// waiting, since the client logs on its I/O thread (a node that stops answering) and a stalled
/// stderr must not stop its I/O.
struct StandardErrorLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
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
