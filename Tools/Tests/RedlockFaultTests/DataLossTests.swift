import Foundation
import Redlock
import RedlockTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension FaultTests {
    /// Nodes that lose their data while a lease is held, seen by separate lock processes: without
    /// the epoch guard a second holder gets in during the first one's lease (the hazard, shown to
    /// be reproduced); with it, never.
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
            "4 worker processes on one lock while the nodes lose their data under a holder: epoch guard off shows overlapping leases, on shows none and no fencing token going back",
            arguments: [Loss.flushAll, .restartMajority], [false, true]
        )
        func dataLossUnderContention(loss: Loss, guardOn: Bool) async throws {
            let worker = try workerExecutable()
            let expiryMilliseconds = 1_000
            try await withCluster(3) { cluster in
                try await withTemporaryDirectory { directory in
                    let logs = (0..<4).map { "\(directory)/worker-\($0).log" }
                    var workers: [HelperProcess] = []
                    do {
                        for log in logs {
                            workers.append(try await HelperProcess.start(
                                executable: worker,
                                arguments: workerArguments("contend", cluster: cluster, lock: "dataloss", [
                                    "--log", log, "--expiry-ms", String(expiryMilliseconds), "--timeout-factor", "0.1",
                                    "--connect-timeout-ms", "100", "--command-timeout-ms", "200",
                                    "--hold-max-ms", "300", "--retry-min-ms", "2", "--retry-max-ms", "10", "--extend-every", "3",
                                    "--fencing",
                                ] + (guardOn ? ["--epoch-guard-ms", String(expiryMilliseconds)] : [])),
                                readyMarker: "ready pid="
                            ))
                        }
                        // Each round waits for a holder (its key on node 0), takes the data away
                        // under it, and gives the lock time to change hands (past the guard).
                        // Without the guard, rounds stop at the first overlap seen.
                        var rounds = 0
                        var acquisitions: [Acquisition] = []
                        var lastLoss: Int64 = 0
                        while rounds < (guardOn ? 4 : 8) {
                            let holder = await waitForHolder(of: "dataloss", on: cluster.servers[0], within: .seconds(10))
                            #expect(holder, "nobody held the lock for 10 s")
                            guard holder else { break }
                            switch loss {
                            case .flushAll:
                                for server in cluster.servers { try await server.flushAll() }
                            case .restartMajority:
                                async let first: Void = cluster.servers[0].restart(keepingData: false)
                                async let second: Void = cluster.servers[1].restart(keepingData: false)
                                _ = try await (first, second)
                            }
                            lastLoss = MachineClock.nanoseconds(.now)
                            rounds += 1
                            try await Task.sleep(for: .milliseconds(expiryMilliseconds + 500))
                            acquisitions = try logs.flatMap { try Acquisition.parse(log: String(contentsOfFile: $0, encoding: .utf8)) }
                            if !guardOn, !ExclusionChecker.overlaps(in: acquisitions).isEmpty { break }
                        }
                        for worker in workers { worker.signal(SIGTERM) }
                        for worker in workers {
                            let termination = await waitForExit(worker, within: .seconds(20))
                            #expect(termination == .exited(0), "\(worker) ended with \(termination): \(worker.output.suffix(500))")
                        }
                        acquisitions = try logs.flatMap { try Acquisition.parse(log: String(contentsOfFile: $0, encoding: .utf8)) }
                        let overlaps = ExclusionChecker.overlaps(in: acquisitions)
                        let regressions = ExclusionChecker.fencingRegressions(in: acquisitions) ?? []
                        let afterLastLoss = acquisitions.filter { $0.acquired > lastLoss }.count
                        print("""
                            data loss (\(loss.rawValue), epoch guard \(guardOn ? "on" : "off")): \(rounds) rounds, \
                            \(acquisitions.count) acquisitions (\(afterLastLoss) after the last loss), \
                            overlaps \(overlaps.count), token regressions \(regressions.count)
                            """)
                        if guardOn {
                            for (first, second) in overlaps.prefix(5) {
                                Issue.record("overlapping critical sections: \(first) and \(second)")
                            }
                            #expect(overlaps.isEmpty)
                            #expect(regressions.isEmpty, "fencing tokens went backwards: \(regressions.prefix(5))")
                            #expect(afterLastLoss > 0, "the lock did not recover after the last loss")
                            #expect(rounds == 4)
                        } else {
                            #expect(!overlaps.isEmpty, "no overlap in \(rounds) rounds: the fault did not reproduce the hazard")
                        }
                    } catch {
                        for worker in workers { await worker.kill() }
                        throw error
                    }
                    for worker in workers { await worker.kill() }
                }
            }
        }

        /// Polls (every 1 ms) until `name` exists on `server`: a holder is in its critical section.
        private func waitForHolder(of name: String, on server: RedisServer, within limit: Duration) async -> Bool {
            let giveUp = ContinuousClock.now + limit
            while ContinuousClock.now < giveUp {
                if (try? await server.value(of: name)) != nil { return true }
                try? await Task.sleep(for: .milliseconds(1))
            }
            return false
        }
    }
}
