import Foundation
import Redlock
import RedlockTestSupport
import Testing

extension FaultTests {
    /// Nodes that lose their data while a lease is held, seen by separate lock processes: without
    /// the epoch guard a second holder gets in during the first one's lease, or with a fencing
    /// token lower than one already handed out (the hazard, shown to be reproduced); with it, never.
    @Suite("Data loss")
    struct DataLoss {
        /// How the nodes lose their data.
        enum Loss: String, Sendable, CustomTestStringConvertible {
            /// `FLUSHALL` on every node.
            case flushAll
            /// A majority (2 of 3) restarted without persistence.
            case restartMajority

            var testDescription: String { rawValue }
        }

        @Test(
            "4 worker processes on one lock while the nodes lose their data under a holder: epoch guard off shows overlapping leases or fencing tokens going back, on shows neither",
            arguments: [Loss.flushAll, .restartMajority], [false, true]
        )
        func dataLossUnderContention(loss: Loss, guardOn: Bool) async throws {
            let expiryMilliseconds = 1_000
            try await withCluster(3) { cluster in
                let run = try await contendUnderFault(
                    cluster: cluster, lock: "dataloss",
                    arguments: [
                        "--expiry-ms", String(expiryMilliseconds), "--timeout-factor", "0.1",
                        "--connect-timeout-ms", "100", "--command-timeout-ms", "200",
                        "--hold-max-ms", "300", "--retry-min-ms", "2", "--retry-max-ms", "10", "--extend-every", "3",
                        "--fencing",
                    ] + (guardOn ? ["--epoch-guard-ms", String(expiryMilliseconds)] : []),
                    // Past the guard, so that the lock changes hands between rounds.
                    rounds: guardOn ? 4 : 8, stopAtFirstViolation: !guardOn, settle: .milliseconds(expiryMilliseconds + 500)
                ) { _ in
                    switch loss {
                    case .flushAll:
                        for server in cluster.servers { try await server.flushAll() }
                    case .restartMajority:
                        async let first: Void = cluster.servers[0].restart(keepingData: false)
                        async let second: Void = cluster.servers[1].restart(keepingData: false)
                        _ = try await (first, second)
                    }
                }
                run.check(guardOn: guardOn, rounds: 4, label: "data loss (\(loss.rawValue))")
            }
        }
    }
}
