import Foundation
import MetricsTestKit
import Redlock
import RedlockTestSupport
import Testing

extension FaultTests {
    /// Node clock faults through the clock shim (`libRedlockClockShim.so`, preloaded into one
    /// redis-server): a wall clock that runs fast or steps forward expires keys early, which no
    /// drift allowance covers. These tests show the shim does what it says, that the hazard is
    /// real without the clock guard (two valid leases), and that with it a client that has read
    /// the nodes' clocks before refuses their votes.
    @Suite("Clock faults")
    struct ClockFaults {
        /// The shim built next to the test bundle.
        private func shim() throws -> String {
            guard let path = HelperProcess.siblingExecutable(named: "libRedlockClockShim.so") else {
                throw ShimNotFound()
            }
            return path
        }

        /// Locks `lock` while `first` (another client's lease) may still be valid; expects a second
        /// holder only after `first` ended when the guard is on, and during it when it is off (the
        /// fault took). Releases what it got; returns the refusal when it got nothing.
        private func secondHolder(_ lock: DistributedLock, beside first: Lease, guardOn: Bool, fault: String) async throws -> RedlockError? {
            let label = "clock fault (\(fault), guard \(guardOn ? "on" : "off"))"
            do {
                let second = try await lock.lock()
                let left = ContinuousClock.now.duration(to: first.validUntil)
                print("\(label): second holder while the first lease had \(left) of validity left")
                if guardOn {
                    #expect(left <= .zero, "a second holder while the first lease was valid (\(left) left)")
                } else {
                    #expect(left > .zero, "no second holder during the first lease: the fault did not take")
                }
                try await lock.unlock(second)
                return nil
            } catch {
                print("\(label): no second holder: \(error)")
                #expect(guardOn, "without the guard the second holder should get in: \(error)")
                return error
            }
        }

        struct ShimNotFound: Error, CustomStringConvertible {
            var description: String { "libRedlockClockShim.so not found next to the test bundle; build the Tools package" }
        }

        @Test("a node clock at twice the rate expires a key in half the time; a step of +20 s expires it at once; TIME follows; the honest node is untouched")
        func shimDoesWhatItSays() async throws {
            let shim = try shim()
            try await withRedisServers(2, clockShim: shim) { servers throws in
                let (fast, honest) = (servers[0], servers[1])
                try fast.setClock(rate: 2)
                for server in servers { try await server.set("k", to: "v", expiry: .milliseconds(600)) }
                try await Task.sleep(for: .milliseconds(400))
                #expect(try await fast.value(of: "k") == nil, "600 ms of node time should have passed in 300 ms")
                #expect(try await honest.value(of: "k") == "v")

                try fast.setClock(rate: 1, offset: .seconds(20))
                try await Task.sleep(for: .milliseconds(5))
                for server in servers { try await server.set("j", to: "v", expiry: .seconds(10)) }
                #expect(try await fast.value(of: "j") == "v", "a key set after the step lives its full expiry")
                // TIME follows the node's clock: redlock doctor's clock check sees the step.
                let auditor = try RedlockClient(nodes: [fast.configuration()])
                let offset = await auditor.audit(for: try auditor.makeLock("k")).first?.clockOffset
                await auditor.shutdown()
                let seconds = offset.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
                #expect(seconds.map { abs($0 - 20) < 1 } == true, "TIME offset \(String(describing: offset)), expected about +20 s")
                try fast.setClock(rate: 1, offset: .seconds(40))
                try await Task.sleep(for: .milliseconds(5))
                #expect(try await fast.value(of: "j") == nil, "a step of 20 s expires a 10 s key")
                #expect(try await honest.value(of: "j") == "v")

                // A restart without data takes the data, not the clock: still 40 s ahead.
                try await fast.restart(keepingData: false)
                let restarted = try RedlockClient(nodes: [fast.configuration()])
                let after = await restarted.audit(for: try restarted.makeLock("k")).first?.clockOffset
                await restarted.shutdown()
                let afterSeconds = after.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
                #expect(afterSeconds.map { abs($0 - 40) < 1 } == true, "TIME offset after the restart \(String(describing: after)), expected about +40 s")
            }
        }

        @Test("one of three node clocks runs 1.5× fast: with the clock guard and failFast (the default), the lock is granted by the other two, attempt after attempt")
        func oneFastNodeDoesNotBlock() async throws {
            let shim = try shim()
            try await withRedisServers(3, clockShim: shim) { servers throws in
                let metrics = TestMetrics()
                let client = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
                try await withTeardown {
                    // A budget of 500 ms per attempt (not 100): a loaded machine's stall is not
                    // what this counts.
                    let lock = try client.makeLock("one-fast", options: LockOptions(expiry: .seconds(2), timeoutFactor: 0.25, clockGuard: true))
                    try await lock.unlock(try await lock.tryLock())
                    try servers[0].setClock(rate: 1.5)
                    try await Task.sleep(for: .milliseconds(50))
                    var granted = 0
                    for _ in 0..<40 {
                        do {
                            let lease = try await lock.tryLock()
                            granted += 1
                            try await lock.unlock(lease)
                        } catch {
                            Issue.record("tryLock failed: \(error)")
                        }
                        try await Task.sleep(for: .milliseconds(10))
                    }
                    print("one fast node: \(granted) of 40 tryLock granted")
                    #expect(granted == 40)
                    // Node 0 was judged running ahead (and its votes refused) all along.
                    let recorded = metrics.recorders(label: "redlock_node_clock_ahead_seconds")
                    #expect(Set(recorded.flatMap { $0.dimensions.filter { $0.0 == "node" }.map(\.1) }) == ["0"])
                } teardown: {
                    await client.shutdown()
                }
            }
        }

        @Test("redlock doctor's audit fails a node whose clock runs fast, and one whose clock is behind the latest time its marker shows")
        func auditSeesClocks() async throws {
            let shim = try shim()
            try await withRedisServers(3, clockShim: shim) { servers throws in
                let client = try RedlockClient(nodes: servers.map { $0.configuration() })
                try await withTeardown {
                    let lock = try client.makeLock("audited", options: LockOptions(expiry: .milliseconds(300), epochGuard: .milliseconds(300)))
                    // Markers on every node (the first acquire waits the guard out).
                    try await lock.unlock(try await lock.lock())
                    try servers[0].setClock(rate: 2)
                    try servers[1].setClock(offset: .seconds(-30))
                    let audits = await client.audit(for: lock)
                    func verdict(_ node: Int, _ name: String) -> RedlockClient.AuditCheck? { audits[node].checks.first { $0.name == name } }
                    #expect(verdict(0, "clock rate")?.verdict == .fail, "\(String(describing: verdict(0, "clock rate")))")
                    #expect(verdict(1, "epoch")?.verdict == .fail, "\(String(describing: verdict(1, "epoch")))")
                    #expect(verdict(1, "epoch")?.detail.contains("behind") == true)
                    #expect(verdict(2, "clock rate")?.verdict == .pass, "\(String(describing: verdict(2, "clock rate")))")
                    #expect(verdict(2, "epoch")?.verdict == .pass, "\(String(describing: verdict(2, "epoch")))")
                } teardown: {
                    await client.shutdown()
                }
            }
        }

        @Test(
            "two of three node clocks set back 10 s, a holder locks, the clocks are put right: without a guard its keys there expire at once and a second holder gets in; with the clock guard the nodes refuse while behind, and nobody gets in beside the holder after",
            arguments: [false, true]
        )
        func clockSetBackThenRight(guardOn: Bool) async throws {
            let shim = try shim()
            try await withRedisServers(3, clockShim: shim) { servers throws in
                let client = try RedlockClient(nodes: servers.map { $0.configuration() })
                let other = try RedlockClient(nodes: servers.map { $0.configuration() })
                try await withTeardown {
                    var options = testOptions(expiry: .seconds(1), tries: .max)
                    options.acquireTimeout = .seconds(3)
                    options.clockGuard = guardOn
                    let lock = try client.makeLock("setback", options: options)
                    let otherLock = try other.makeLock("setback", options: options)
                    // Both clients have read the nodes' clocks before.
                    try await lock.unlock(try await lock.lock())
                    try await otherLock.unlock(try await otherLock.lock())
                    for server in servers.prefix(2) { try server.setClock(offset: .seconds(-10)) }
                    try await Task.sleep(for: .milliseconds(5))
                    if guardOn {
                        let refused = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
                        #expect(refused?.nodes.filter { $0.cause.clockBehind != nil }.map(\.node) == [0, 1], "\(String(describing: refused))")
                        // Put right, the clocks step forward 10 s from what this client last read:
                        // it refuses them for its hold-off (1 s), then locks.
                        for server in servers.prefix(2) { try server.setClock(offset: .zero) }
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    let first = try await lock.lock()
                    if !guardOn {
                        for server in servers.prefix(2) { try server.setClock(offset: .zero) }
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    _ = try await secondHolder(otherLock, beside: first, guardOn: guardOn, fault: "set back")
                    try? await lock.unlock(first)
                } teardown: {
                    await client.shutdown()
                    await other.shutdown()
                }
            }
        }

        @Test(
            "4 worker processes on one lock while two of three node clocks step +20 s, or run 4× fast for 1.5 s, under a holder: clock guard off shows overlapping leases, on shows none",
            arguments: ["step", "fast"], [false, true]
        )
        func clockFaultsUnderContention(fault: String, guardOn: Bool) async throws {
            let shim = try shim()
            let expiryMilliseconds = 1_000
            try await withCluster(3, clockShim: shim) { cluster in
                let run = try await contendUnderFault(
                    cluster: cluster, lock: "clocks",
                    arguments: [
                        "--expiry-ms", String(expiryMilliseconds), "--timeout-factor", "0.1",
                        "--connect-timeout-ms", "100", "--command-timeout-ms", "200",
                        // Holds long enough to outlive a key that a fast clock expires early; no
                        // extend, which would set the key's expiry again.
                        "--hold-max-ms", "900", "--retry-min-ms", "2", "--retry-max-ms", "10", "--extend-every", "0",
                        "--fencing",
                    ] + (guardOn ? ["--clock-guard"] : []),
                    // Every worker has read the nodes before the first fault: a client's first reading
                    // of a node cannot be judged.
                    rounds: guardOn ? 3 : 8, stopAtFirstViolation: !guardOn, settle: .milliseconds(3_000), warmUp: true
                ) { round in
                    for server in cluster.servers.prefix(2) {
                        if fault == "step" { try server.setClock(offset: .seconds(20 * Int64(round + 1))) } else { try server.setClock(rate: 4) }
                    }
                    if fault == "fast" {
                        try await Task.sleep(for: .milliseconds(1_500))
                        for server in cluster.servers.prefix(2) { try server.setClock(rate: 1) }
                    }
                }
                run.check(guardOn: guardOn, rounds: 3, label: "clock fault under contention (\(fault))")
            }
        }

        @Test(
            "two of three node clocks run 1.5× fast (or step +20 s) under a holder: without the clock guard a second holder gets in while the first lease is valid; with it, never",
            arguments: ["fast", "step"], [false, true]
        )
        func fastClocks(fault: String, guardOn: Bool) async throws {
            let shim = try shim()
            try await withRedisServers(3, clockShim: shim) { servers throws in
                let client = try RedlockClient(nodes: servers.map { $0.configuration() })
                let metrics = TestMetrics()
                let other = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
                try await withTeardown {
                    let expiry = Duration.seconds(2)
                    var options = testOptions(expiry: expiry, tries: .max)
                    options.acquireTimeout = .seconds(4)
                    options.fencing = true
                    options.clockGuard = guardOn
                    let otherLock = try other.makeLock("clock", options: options)
                    // The second client has read the nodes' clocks before the fault.
                    try await otherLock.unlock(try await otherLock.lock())
                    let first = try await client.makeLock("clock", options: options).lock()
                    for server in servers.prefix(2) {
                        if fault == "fast" { try server.setClock(rate: 1.5) } else { try server.setClock(offset: .seconds(20)) }
                    }
                    let refusal = try await secondHolder(otherLock, beside: first, guardOn: guardOn, fault: fault)
                    if let refusal {
                        #expect(refusal.nodes.contains { $0.cause.clockExcess != nil }, "refused, but not for the clocks: \(refusal)")
                    }
                    let outcome: Result<Void, RedlockError> = refusal.map { .failure($0) } ?? .success(())
                    // Each node whose clock was seen running ahead has its excess recorded.
                    let recorded = metrics.recorders(label: "redlock_node_clock_ahead_seconds")
                    let nodes = Set(recorded.flatMap { $0.dimensions.filter { $0.0 == "node" }.map(\.1) })
                    #expect(nodes == (guardOn ? ["0", "1"] : []), "recorded for nodes \(nodes)")
                    if guardOn, fault == "step" {
                        // A step is over once every lease it may have cut short has ended.
                        guard case .success = outcome else {
                            Issue.record("after a one-off step the nodes should be trusted again within the expiry")
                            return
                        }
                    }
                } teardown: {
                    await client.shutdown()
                    await other.shutdown()
                }
            }
        }
    }
}
