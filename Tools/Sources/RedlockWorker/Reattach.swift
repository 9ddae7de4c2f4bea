import ArgumentParser
import Foundation
import Redlock
import RedlockTestSupport

/// `redlock-worker reattach`: takes over a lease another process handed over as JSON
/// (`Lease.Handoff`), prints the new lease, releases it and exits.
///
/// Prints `reattached value=VALUE token=N valid_ms=N`, then `released`.
struct Reattach: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-attach to a handed-over lease (JSON), print it, release it."
    )

    @OptionGroup var cluster: ClusterOptions

    @Option(help: "The handed-over lease, as JSON (Lease.Handoff).")
    var handoff: String

    @Flag(help: "With fencing tokens.")
    var fencing = false

    func run() async throws {
        cluster.startWatchdog()
        let decoded = try JSONDecoder().decode(Lease.Handoff.self, from: Data(handoff.utf8))
        let client = try cluster.makeClient()
        let lock = try client.makeLock(decoded.name, options: LockOptions(
            expiry: cluster.expiry, tries: 1, timeoutFactor: cluster.timeoutFactor, fencing: fencing
        ))
        let lease = try await lock.reattach(decoded)
        say("reattached value=\(lease.value) token=\(lease.fencingToken.map(String.init) ?? "none") valid_ms=\(lease.remainingValidity.components.seconds * 1_000 + lease.remainingValidity.components.attoseconds / 1_000_000_000_000_000)")
        try await lock.unlock(lease)
        say("released")
        await client.shutdown()
    }
}
