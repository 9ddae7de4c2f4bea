import ArgumentParser
import Foundation
import Redlock

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The options every worker mode shares: the nodes, the lock, its timing, and the safety net
/// that ends an orphaned worker.
struct ClusterOptions: ParsableArguments {
    @Option(help: "Comma-separated nodes (host:port or redis://…).")
    var nodes: String

    @Option(help: "The lock's name.")
    var lock: String = "redlock-worker"

    @Option(name: .customLong("expiry-ms"), help: "The lock's expiry in milliseconds.")
    var expiryMilliseconds: Int = 500

    @Option(help: "The share of the expiry one attempt may take.")
    var timeoutFactor: Double = 0.2

    @Option(name: .customLong("connect-timeout-ms"), help: "Each node's connect timeout in milliseconds.")
    var connectTimeoutMilliseconds: Int = 200

    @Option(name: .customLong("command-timeout-ms"), help: "Each node's command timeout in milliseconds.")
    var commandTimeoutMilliseconds: Int = 500

    @Option(name: .customLong("busy-poll-us"), help: "The client's busy poll in microseconds (RedlockClient busyPoll; 0: none).")
    var busyPollMicroseconds: Int = 0

    @Option(help: "Exit as soon as this process is no longer our parent (the test process died).")
    var parentPid: Int32?

    @Option(name: .customLong("max-seconds"), help: "Exit after this many seconds, whatever happens.")
    var maximumSeconds: Int = 300

    func validate() throws {
        guard expiryMilliseconds > 0, connectTimeoutMilliseconds > 0, commandTimeoutMilliseconds > 0, maximumSeconds > 0 else {
            throw ValidationError("durations must be positive")
        }
        guard (0...10_000).contains(busyPollMicroseconds) else { throw ValidationError("--busy-poll-us must be in 0...10000") }
        _ = try configurations()
    }

    /// The node configurations, with this worker's timeouts.
    func configurations() throws -> [RedisConnectionConfiguration] {
        try nodes.split(separator: ",").map { text in
            var configuration = try RedisConnectionConfiguration(parsing: String(text))
            configuration.connectTimeout = .milliseconds(connectTimeoutMilliseconds)
            configuration.commandTimeout = .milliseconds(commandTimeoutMilliseconds)
            return configuration
        }
    }

    var expiry: Duration { .milliseconds(expiryMilliseconds) }

    func makeClient() throws -> RedlockClient {
        try RedlockClient(nodes: configurations(), busyPoll: .microseconds(busyPollMicroseconds))
    }

    /// Ends the process when its parent is gone or its time is up, so a crashed test never
    /// leaves workers behind.
    func startWatchdog() {
        let parent = parentPid
        let deadline = ContinuousClock.now.advanced(by: .seconds(maximumSeconds))
        Task.detached {
            while true {
                if let parent, getppid() != parent {
                    say("parent \(parent) is gone; exiting")
                    Glibc.exit(70)
                }
                if ContinuousClock.now >= deadline {
                    say("--max-seconds reached; exiting")
                    Glibc.exit(71)
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }
}

/// Writes one line to stdout at once (unbuffered: the test reads it through a pipe).
func say(_ line: String) {
    let text = line + "\n"
    _ = text.utf8CString.withUnsafeBytes { write(1, $0.baseAddress, $0.count - 1) }
}
