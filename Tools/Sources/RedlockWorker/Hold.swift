import ArgumentParser
import Redlock
import RedlockTestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `redlock-worker hold`: acquires the lock once and holds it without ever releasing or
/// extending it, until the process is killed — a holder that dies while holding.
///
/// Prints `acquired pid=PID acquire_ns=N valid_until_ns=N value=VALUE`, then `holding`.
struct Hold: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Acquire the lock once, print the lease, and hold it until killed."
    )

    @OptionGroup var cluster: ClusterOptions

    func run() async throws {
        cluster.startWatchdog()
        let client = try cluster.makeClient()
        let lock = try client.makeLock(cluster.lock, options: LockOptions(
            expiry: cluster.expiry, tries: 1_000, retryDelay: .constant(.milliseconds(5)), timeoutFactor: cluster.timeoutFactor
        ))
        let lease = try await lock.lock()
        let acquired = ContinuousClock.now
        say(
            "acquired pid=\(getpid()) acquire_ns=\(MachineClock.nanoseconds(acquired)) "
                + "valid_until_ns=\(MachineClock.nanoseconds(lease.validUntil)) value=\(lease.value)"
        )
        say("holding")
        // Until SIGKILL (or the watchdog).
        while true {
            try await Task.sleep(for: .seconds(1))
        }
    }
}
