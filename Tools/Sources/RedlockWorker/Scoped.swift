import ArgumentParser
import Redlock
import RedlockTestSupport

/// `redlock-worker scoped`: runs one `withLock` whose body works for `--work-ms` without
/// checking for cancellation, and prints how the call ended: `outcome=ok` or
/// `outcome=CODE` (e.g. `leaseLost`). Prints `entered` once the body runs — the moment for a
/// test to pause the whole process.
struct Scoped: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one withLock whose body works a while; print the outcome."
    )

    @OptionGroup var cluster: ClusterOptions

    @Option(name: .customLong("work-ms"), help: "How long the body works, in milliseconds.")
    var workMilliseconds: Int = 200

    func run() async throws {
        cluster.startWatchdog()
        let client = try cluster.makeClient()
        let lock = try client.makeLock(cluster.lock, options: LockOptions(expiry: cluster.expiry, timeoutFactor: cluster.timeoutFactor))
        let work = Duration.milliseconds(workMilliseconds)
        do {
            try await lock.withLock { _ in
                say("entered")
                let until = ContinuousClock.now.advanced(by: work)
                // Deaf to cancellation, as work that does not check for it is.
                while ContinuousClock.now < until { try? await Task.sleep(for: .milliseconds(5)) }
            }
            say("outcome=ok")
        } catch let error as RedlockError {
            say("outcome=\(error.code)")
        }
        await client.shutdown()
    }
}
