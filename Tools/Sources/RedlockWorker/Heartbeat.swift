import ArgumentParser
import RedlockTestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `redlock-worker heartbeat`: a stand-in for a job run under `redlock run`. Appends one line
/// with CLOCK_BOOTTIME nanoseconds to a file every interval while it lives, so a checker can
/// tell when it ran (its last line is at most one interval before it died).
///
/// The file starts with `pid=PID`. With `--ignore-term` SIGTERM does nothing (a job that will
/// not stop on request); it exits on its own after `--duration`.
struct Heartbeat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Append CLOCK_BOOTTIME timestamps to a file every interval until killed or --duration passes."
    )

    @Option(help: "The file to append to.")
    var file: String

    @Option(help: "Milliseconds between beats.")
    var intervalMs: Int = 1

    @Option(help: "Milliseconds to run before exiting 0.")
    var durationMs: Int = 60_000

    @Flag(help: "Ignore SIGTERM.")
    var ignoreTerm = false

    func run() throws {
        if ignoreTerm { _ = signal(SIGTERM, SIG_IGN) }
        let fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ValidationError("cannot open \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        func append(_ line: String) {
            var bytes = Array((line + "\n").utf8)
            _ = write(fd, &bytes, bytes.count)
        }
        let start = MachineClock.nowNanoseconds()
        append("pid=\(getpid())")
        while true {
            let now = MachineClock.nowNanoseconds()
            append(String(now))
            if now - start >= Int64(durationMs) * 1_000_000 { return }
            usleep(useconds_t(intervalMs * 1_000))
        }
    }
}
