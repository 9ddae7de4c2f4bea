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

/// A line on stderr (see ``writeLine(_:to:)``).
func printError(_ line: String) {
    writeLine(line, to: STDERR_FILENO)
}
