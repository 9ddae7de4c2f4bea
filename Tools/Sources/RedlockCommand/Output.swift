import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Writes `line` and a newline to descriptor `fd` with `write(2)`, whatever happens to it: a
/// closed pipe or descriptor (`EPIPE`, `EBADF`) loses the line and nothing else. Foundation's
/// `FileHandle.write` traps on those, which took `redlock run` down mid-run (its command never
/// started, or was left to the watchdog) when stderr was a closed pipe.
func writeLine(_ line: String, to fd: Int32) {
    var bytes = Array((line + "\n").utf8)
    bytes.withUnsafeMutableBytes { buffer in
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

/// A line on stderr that waits at most a second for room (see ``StandardError``): a message
/// after the work is done, which a reader may still take.
func printError(_ line: String) {
    StandardError.shared.write(line, waitingUpTo: .seconds(1))
}

/// stderr, written without waiting for a reader: a log shipper that stalls, or a pipe nobody
/// reads, must not hold up the lease's extensions (a log line written on the extender's path or
/// on the client's I/O thread would, and the lease would be lost while every node answers).
///
/// A pipe or a terminal is opened again (`/proc/self/fd/2`) as an open file description of
/// redlock's own, non-blocking, so that the command's stderr (the same pipe) stays as it was; a
/// socket (journald's stream) is written with `MSG_DONTWAIT`; a regular file, which never
/// makes a writer wait, as it is. A line that finds no room is dropped and counted, and the
/// next line that gets through says how many were. Lines never interleave: one writes at a
/// time, and a line that would wait for another's is dropped too.
final class StandardError: Sendable {
    /// The one for this process.
    static let shared = StandardError()

    private enum Kind {
        /// A description of redlock's own (`O_NONBLOCK`) of stderr's pipe or device.
        case reopened(Int32)
        /// A socket: `send` with `MSG_DONTWAIT` on descriptor 2.
        case socket
        /// A regular file, or what could not be opened again: `write` on descriptor 2.
        case direct
    }

    private let kind: Kind
    /// Lines dropped since the last one written (taken under the lock).
    private let dropped = Mutex(0)
    /// Held while a line is written, so that lines never interleave.
    private let writing = Mutex(())

    private init() {
        var status = stat()
        guard fstat(STDERR_FILENO, &status) == 0 else {
            kind = .direct
            return
        }
        switch status.st_mode & S_IFMT {
        case S_IFSOCK:
            kind = .socket
        case S_IFIFO, S_IFCHR:
            let fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
            kind = fd >= 0 ? .reopened(fd) : .direct
        default:
            kind = .direct
        }
    }

    /// Writes `line` and a newline, waiting up to `limit` for room (zero: not at all); drops it
    /// when there is none by then, or when another line is being written and `limit` is zero.
    func write(_ line: String, waitingUpTo limit: Duration = .zero) {
        let written: Bool? = limit == .zero
            ? writing.withLockIfAvailable { _ in writeWithNotice(line, until: nil) }
            : writing.withLock { _ in writeWithNotice(line, until: ContinuousClock.now + limit) }
        if written != true { dropped.withLock { $0 += 1 } }
    }

    /// Writes the count of lines dropped before (when any), then `line`; false when `line`
    /// found no room by `deadline` (nil: now).
    private func writeWithNotice(_ line: String, until deadline: ContinuousClock.Instant?) -> Bool {
        let lost = dropped.withLock { count in
            defer { count = 0 }
            return count
        }
        var text = line + "\n"
        if lost > 0 {
            text = "redlock: \(lost) line\(lost == 1 ? "" : "s") for stderr dropped: it was not read\n" + text
        }
        guard writeAll(Array(text.utf8), until: deadline) else {
            dropped.withLock { $0 += lost }
            return false
        }
        return true
    }

    /// Writes `bytes`, waiting for room until `deadline` (nil: not at all); false when some
    /// found none (a line cut short is ended with a newline, when room for one comes).
    private func writeAll(_ bytes: [UInt8], until deadline: ContinuousClock.Instant?) -> Bool {
        bytes.withUnsafeBytes { buffer in
            guard let base = buffer.baseAddress else { return true }
            var offset = 0
            while offset < buffer.count {
                let written: Int
                switch kind {
                case let .reopened(fd): written = Glibc.write(fd, base + offset, buffer.count - offset)
                case .socket: written = send(STDERR_FILENO, base + offset, buffer.count - offset, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                case .direct: written = Glibc.write(STDERR_FILENO, base + offset, buffer.count - offset)
                }
                if written > 0 {
                    offset += written
                    continue
                }
                if written < 0 && errno == EINTR { continue }
                // A closed pipe or descriptor loses the line and nothing else.
                guard written < 0, errno == EAGAIN || errno == EWOULDBLOCK, let deadline, waitForRoom(until: deadline) else {
                    if offset > 0 { endCutLine() }
                    return offset == buffer.count
                }
            }
            return true
        }
    }

    /// Waits until stderr takes bytes again or `deadline` passes; false then.
    private func waitForRoom(until deadline: ContinuousClock.Instant) -> Bool {
        let fd: Int32 = if case let .reopened(fd) = kind { fd } else { STDERR_FILENO }
        while true {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { return false }
            var watched = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let ready = poll(&watched, 1, Int32(clamping: max(1, left.components.seconds * 1_000 + left.components.attoseconds / 1_000_000_000_000_000)))
            if ready > 0 { return watched.revents & Int16(POLLOUT) != 0 }
            if ready < 0 && errno != EINTR { return false }
        }
    }

    /// A newline after a line cut short, if stderr takes one now: the next line starts on a
    /// line of its own.
    private func endCutLine() {
        var newline: UInt8 = 10
        switch kind {
        case let .reopened(fd): _ = Glibc.write(fd, &newline, 1)
        case .socket: _ = send(STDERR_FILENO, &newline, 1, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
        case .direct: _ = Glibc.write(STDERR_FILENO, &newline, 1)
        }
    }
}

/// swift-log's handler for `redlock`: lines as swift-log's `StreamLogHandler` prints them
/// (time, level, label, metadata, message), written through ``StandardError`` without waiting,
/// since the client logs on its I/O thread (a node that stops answering) and a stalled stderr
/// must not stop its I/O.
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
