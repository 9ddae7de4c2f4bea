import MetricsTestKit
@testable import Redlock
import RedlockTestSupport
import Testing

/// A `lock()` whose name is held by a lease of its own client waits for that lease's release
/// (handed to the longest-waiting waiter) or its validity end, instead of polling the nodes at
/// its retry delay; once the lock went to another process, the waiters here poll again.
@Suite("Waiting for a holder in this process")
struct HolderHereTests {
    @Test("waiters of a lease held (and extended) here make no attempts while it lasts, then all get it in turn")
    func waitersDoNotPoll() async throws {
        try await withRedisServers(3) { servers throws in
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
            try await withTeardown {
                func attempts() -> Int64 { metrics.counterTotal(label: "redlock_acquire_attempts_total") }
                // Retries every 1–5 ms: a waiter that polled would make hundreds of attempts
                // while the lease lasts. Validity 1 s, so the waiters outlive the first lease's
                // validity end and wait for the extended one's.
                let lock = try client.makeLock("held-here", options: testOptions(expiry: .seconds(1), tries: 1_000_000))
                var lease = try await lock.lock()
                let acquired = Locked(0)
                let waiters = Task {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for _ in 0..<8 {
                            group.addTask {
                                let lease = try await lock.lock(timeout: .seconds(30))
                                acquired.update { $0 += 1 }
                                try await lock.unlock(lease)
                            }
                        }
                        try await group.waitForAll()
                    }
                }
                #expect(await eventually { client.waitingLockCalls(for: "held-here") == 8 })
                let before = attempts()
                // 1.5 s of holding, extended every 250 ms: past the first validity end.
                for _ in 0..<6 {
                    try await Task.sleep(for: .milliseconds(250))
                    lease = try await lock.extend(lease)
                }
                let during = attempts() - before
                // Each waiter's first attempt came before `before` (it waits after it); the old
                // validity end brings at most one more each (the first extension's end, two).
                #expect(during <= 8 * 3, "\(during) attempts while the lease was held here")
                #expect(acquired.value == 0)
                try await lock.unlock(lease)
                try await waiters.value
                #expect(acquired.value == 8)
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("when the lease held here was taken over, its waiters get the lock soon after, not at its validity end")
    func takenOverLeaseFreesWaiters() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            try await withTeardown {
                // Valid for about 30 s: a waiter left waiting for it would outlast the bound below.
                let lock = try client.makeLock("taken-over", options: testOptions(expiry: .seconds(30), tries: 1_000_000))
                let lease = try await lock.lock()
                let waiters = Task {
                    await finished(within: .seconds(15)) {
                        await withTaskGroup(of: Bool.self) { group in
                            for _ in 0..<2 {
                                group.addTask {
                                    guard let lease = try? await lock.lock(timeout: .seconds(25)) else { return false }
                                    try? await lock.unlock(lease)
                                    return true
                                }
                            }
                            return await group.reduce(true) { $0 && $1 }
                        }
                    }
                }
                #expect(await eventually { client.waitingLockCalls(for: "taken-over") == 2 })
                // Another process took the lock over (the keys were lost, say) for 300 ms.
                for server in servers { try await server.set("taken-over", to: "someone-else", expiry: .milliseconds(300)) }
                // The release fails, and so does the attempt sent for the waiter it was handed
                // to: no lease is held here any more, and that waiter polls (then hands the lock
                // to the other one) rather than waiting for the old lease's validity end.
                await #expect(throws: RedlockError.self) { try await lock.unlock(lease) }
                let outcome = await waiters.value
                #expect(outcome == true, "the waiters did not both get the lock within 15 s (nil: still waiting)")
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("a lock() waiting for a lease held here returns clientShutDown at shutdown, not at the lease's validity end")
    func shutdownEndsTheWait() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let lock = try client.makeLock("held-at-shutdown", options: testOptions(expiry: .seconds(30), tries: 1_000_000))
            _ = try await lock.lock()
            let waiter = Task {
                await finished(within: .seconds(10)) { () -> RedlockError.Code? in
                    do throws(RedlockError) {
                        _ = try await lock.lock(timeout: .seconds(25))
                        return nil
                    } catch {
                        return error.code
                    }
                }
            }
            #expect(await eventually { client.waitingLockCalls(for: "held-at-shutdown") == 1 })
            await client.shutdown()
            let code = await waiter.value
            #expect(code == .clientShutDown, "\(String(describing: code)) (nil: no return within 10 s, or acquired)")
        }
    }

    @Test("the record of leases held here costs nothing once released, and leases never released are swept after their validity")
    func recordsDoNotLeak() async throws {
        try await withLockNodes(1) { client, _ in
            for index in 0..<50 {
                let lock = try client.makeLock("released-\(index)", options: testOptions(tries: 3))
                try await lock.unlock(try await lock.lock())
            }
            #expect(client.coordinatedNameCount == 0)
            // Six batches of 500 leases never released, each batch's validity over before the next.
            for batch in 0..<6 {
                for index in 0..<500 {
                    let lock = try client.makeLock("abandoned-\(batch)-\(index)", options: testOptions(expiry: .milliseconds(100)))
                    _ = try await lock.tryLock()
                }
                try await Task.sleep(for: .milliseconds(120))
            }
            // Swept each time the names doubled: never more than the first sweep's threshold
            // and a batch, not all 3,000.
            #expect(client.coordinatedNameCount <= 1_024 + 500, "\(client.coordinatedNameCount) names kept")
        }
    }
}
