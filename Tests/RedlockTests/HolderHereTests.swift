import MetricsTestKit
@testable import Redlock
import RedlockTestSupport
import Testing

/// A `lock()` that waits by time, whose name is held by a lease of its own client, waits for
/// that lease's release (handed to the longest-waiting waiter) or its validity end instead of
/// polling the nodes at its retry delay — all but one waiter per name, which polls in case the
/// keys are gone; once the lock went to another process, the waiters here poll again.
@Suite("Waiting for a holder in this process")
struct HolderHereTests {
    /// Whether `callers` concurrent `lock()` calls (each giving up after 25 s) all got the lock and
    /// unlocked it within `limit`; nil when they had not all returned by then.
    static func allLockAndUnlock(_ lock: DistributedLock, callers: Int, within limit: Duration) async -> Bool? {
        await finished(within: limit) {
            await withTaskGroup(of: Bool.self) { group in
                for _ in 0..<callers {
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

    @Test("waiters of a lease held (and extended) here make no attempts while it lasts, but for one, then all get it in turn")
    func waitersDoNotPoll() async throws {
        try await withRedisServers(3) { servers throws in
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
            try await withTeardown {
                func attempts() -> Int64 { metrics.counterTotal(label: "redlock_acquire_attempts_total") }
                // Retries every 50 ms: each waiter that polled would make 30 attempts while the
                // lease lasts. Validity 1 s, so the waiters outlive the first lease's validity end
                // and wait for the extended one's.
                var options = testOptions(expiry: .seconds(1), tries: .max)
                options.retryDelay = .constant(.milliseconds(50))
                let lock = try client.makeLock("held-here", options: options)
                var lease = try await lock.lock()
                let acquired = Locked(0)
                let waiters = Task {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for _ in 0..<16 {
                            group.addTask {
                                let lease = try await lock.lock(timeout: .seconds(30))
                                acquired.update { $0 += 1 }
                                try await lock.unlock(lease)
                            }
                        }
                        try await group.waitForAll()
                    }
                }
                #expect(await eventually { client.waitingLockCalls(for: "held-here") == 16 })
                let before = attempts()
                // 1.5 s of holding, extended every 250 ms: past the first validity end.
                for _ in 0..<6 {
                    try await Task.sleep(for: .milliseconds(250))
                    lease = try await lock.extend(lease)
                }
                let during = attempts() - before
                // One waiter polls: 30 attempts. The others' first attempts came before `before`
                // (each waits after it); the old validity end brings at most one more each (the
                // first extension's end, two). Sixteen pollers would make 480.
                #expect(during <= 30 + 15 * 3 + 30, "\(during) attempts while the lease was held here")
                #expect(acquired.value == 0)
                try await lock.unlock(lease)
                try await waiters.value
                #expect(acquired.value == 16)
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
                let lock = try client.makeLock("taken-over", options: testOptions(expiry: .seconds(30), tries: .max))
                let lease = try await lock.lock()
                let waiters = Task { await Self.allLockAndUnlock(lock, callers: 2, within: .seconds(15)) }
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
            let lock = try client.makeLock("held-at-shutdown", options: testOptions(expiry: .seconds(30), tries: .max))
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
            // Six batches of 500 leases never released, each batch's validity over before the next
            // (an acquire that fails on a loaded machine records nothing, and costs the test
            // nothing: the bound below is an upper one).
            for batch in 0..<6 {
                for index in 0..<500 {
                    let lock = try client.makeLock("abandoned-\(batch)-\(index)", options: testOptions(expiry: .milliseconds(250)))
                    _ = try? await lock.tryLock()
                }
                try await Task.sleep(for: .milliseconds(270))
            }
            // Swept each time the names doubled: never more than the first sweep's threshold
            // and a batch, not all 3,000.
            #expect(client.coordinatedNameCount <= 1_024 + 500, "\(client.coordinatedNameCount) names kept")
        }
    }

    @Test("when the keys of a lease held here are gone, the waiters get the free lock soon, not at the lease's validity end")
    func lostKeysFreeWaiters() async throws {
        try await withLockNodes(1) { client, servers in
            let lock = try client.makeLock("keys-lost", options: testOptions(expiry: .seconds(30), tries: .max))
            _ = try await lock.lock()
            let waiters = Task { await Self.allLockAndUnlock(lock, callers: 3, within: .seconds(10)) }
            #expect(await eventually { client.waitingLockCalls(for: "keys-lost") == 3 })
            // The node lost its data: the lock is free, and nothing announces it.
            try await servers[0].flushAll()
            let outcome = await waiters.value
            #expect(outcome == true, "the waiters did not all get the lock within 10 s (nil: still waiting)")
        }
    }

    @Test("a lock() with a count of tries keeps its retry delay while a lease is held here: the count still bounds its time")
    func triesStillBoundTime() async throws {
        try await withLockNodes(1) { client, _ in
            let holder = try client.makeLock("counted", options: testOptions(expiry: .seconds(30), tries: .max))
            let lease = try await holder.lock()
            // A waiter by time polls for the name (one per client does), so the counted one below
            // would wait for the holder if it waited like it.
            let timed = Task { try await holder.unlock(try await holder.lock(timeout: .seconds(25))) }
            #expect(await eventually { client.waitingLockCalls(for: "counted") == 1 })
            // Three tries 50–250 ms apart: well under a second, where a wait for the holder would
            // last its validity (about 30 s).
            let counted = try client.makeLock("counted", options: LockOptions(expiry: .seconds(30), tries: 3))
            let code = await finished(within: .seconds(5)) { () -> RedlockError.Code? in
                do throws(RedlockError) {
                    _ = try await counted.lock()
                    return nil
                } catch {
                    return error.code
                }
            }
            #expect(code == .taken, "\(String(describing: code)) (nil: no return within 5 s, or acquired)")
            try await holder.unlock(lease)
            try await timed.value
        }
    }

    @Test("fair and plain lock objects of one name leave no lease counted as held here once released")
    func fairAndPlainLeaveNoRecord() async throws {
        try await withLockNodes(1) { client, servers in
            let plain = try client.makeLock("mixed", options: testOptions(expiry: .seconds(30), tries: .max))
            var fairOptions = testOptions(expiry: .seconds(30), tries: .max)
            fairOptions.fair = true
            let fair = try client.makeLock("mixed", options: fairOptions)
            // A plain lease released through the fair object.
            try await fair.unlock(try await plain.lock())
            #expect(client.coordination.heldCount(of: "mixed") == 0)
            // A plain release handed to a fair waiter here.
            let lease = try await plain.lock()
            let fairWaiter = Task { try await fair.unlock(try await fair.lock(timeout: .seconds(10))) }
            #expect(await eventually { client.waitingLockCalls(for: "mixed") == 1 })
            try await plain.unlock(lease)
            try await fairWaiter.value
            #expect(client.coordination.heldCount(of: "mixed") == 0)
            // So a plain waiter does not wait for a lease no longer held: another process holds
            // the lock for 300 ms, and the waiter gets it soon after.
            try await servers[0].set("mixed", to: "another-process", expiry: .milliseconds(300))
            let took = await finished(within: .seconds(10)) { () -> Bool in
                guard let lease = try? await plain.lock(timeout: .seconds(25)) else { return false }
                try? await plain.unlock(lease)
                return true
            }
            #expect(took == true, "nil: no lock within 10 s")
        }
    }

    @Test("leases of one name left to expire are not kept: at most the live one is counted as held here")
    func expiredLeasesOfOneName() async throws {
        try await withLockNodes(1) { client, _ in
            let lock = try client.makeLock("rate-limited", options: testOptions(expiry: .milliseconds(10)))
            for _ in 0..<50 {
                _ = try? await lock.tryLock()
                try await Task.sleep(for: .milliseconds(12))
            }
            #expect(client.coordination.heldCount(of: "rate-limited") <= 1)
        }
    }

    @Test("leases handed over to another client and unlocked there are not kept as held here: after 300 in a row of a 60 s expiry, at most the live one is counted (before: all 300, each lock() scanning them)")
    func handedOverLeasesNotKept() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { taker in
                let giver = try client.makeLock("handed-over", options: testOptions(expiry: .seconds(60)))
                let receiver = try taker.makeLock("handed-over", options: testOptions(expiry: .seconds(60)))
                for _ in 0..<300 {
                    let lease = try await giver.lock()
                    try await receiver.unlock(try await receiver.reattach(lease.handoff))
                }
                #expect(client.coordination.heldCount(of: "handed-over") <= 1)
                // Still held here while it is: a lease acquired here is recorded.
                let lease = try await giver.lock()
                #expect(client.coordination.heldCount(of: "handed-over") == 1)
                try await giver.unlock(lease)
                #expect(client.coordination.heldCount(of: "handed-over") == 0)
            }
        }
    }

    @Test("lock() calls that give up on a name held elsewhere keep one linger of its subscription on the timer, not one per call; the subscription ends 2 s after the last call, not before")
    func oneLingerPerName() async throws {
        try await withLockNodes(1) { client, servers in
            try await withSecondClient(on: servers) { holderClient in
                let name = "lingering"
                let held = try await holderClient.makeLock(name, options: testOptions(expiry: .seconds(60))).lock()
                let waiter = try client.makeLock(name, options: testOptions(expiry: .seconds(60)))
                var peak = 0
                let until = ContinuousClock.now + .milliseconds(2_500)
                var calls = 0
                while ContinuousClock.now < until {
                    await #expect(throws: RedlockError.self) { try await waiter.lock(timeout: .milliseconds(3)) }
                    calls += 1
                    peak = max(peak, client.deadlines.count)
                }
                let lastCall = ContinuousClock.now
                // Before: one 2 s linger action per call that waited (several hundred).
                #expect(peak < 64, "peak \(peak) after \(calls) calls")
                // The first call's linger came due while calls went on: the channel stays.
                #expect(try await subscriberCounts(Scripts.releaseChannel(name), on: servers) == [1])
                var ended: ContinuousClock.Instant?
                while ended == nil, lastCall.duration(to: .now) < .seconds(10) {
                    if try await subscriberCounts(Scripts.releaseChannel(name), on: servers) == [0] { ended = .now }
                    try await Task.sleep(for: .milliseconds(20))
                }
                let after = try #require(ended.map { lastCall.duration(to: $0) })
                #expect(after >= .milliseconds(1_900), "\(after)")
                try await holderClient.makeLock(name).unlock(held)
            }
        }
    }

    @Test("a lock() still waiting when its name's linger comes due keeps the subscription: it ends 2 s after that call returns, not at the linger's first due time nor never")
    func lingerDueWhileWaiting() async throws {
        try await withLockNodes(1) { client, servers in
            try await withSecondClient(on: servers) { holderClient in
                let name = "linger-while-waiting"
                let channel = Scripts.releaseChannel(name)
                let held = try await holderClient.makeLock(name, options: testOptions(expiry: .seconds(60))).lock()
                let waiter = try client.makeLock(name, options: testOptions(expiry: .seconds(60), tries: .max))
                // The first call's end starts the linger: due 2 s later.
                await #expect(throws: RedlockError.self) { try await waiter.lock(timeout: .milliseconds(3)) }
                let firstEnd = ContinuousClock.now
                // A call waiting from before that time until 1 s after it.
                let waitFor = firstEnd.duration(to: firstEnd + .seconds(3))
                await #expect(throws: RedlockError.self) { try await waiter.lock(timeout: waitFor) }
                let secondEnd = ContinuousClock.now
                #expect(firstEnd.duration(to: secondEnd) >= .milliseconds(2_500))
                #expect(try await subscriberCounts(channel, on: servers) == [1])
                var ended: ContinuousClock.Instant?
                while ended == nil, secondEnd.duration(to: .now) < .seconds(10) {
                    if try await subscriberCounts(channel, on: servers) == [0] { ended = .now }
                    try await Task.sleep(for: .milliseconds(20))
                }
                let after = try #require(ended.map { secondEnd.duration(to: $0) }, "never unsubscribed")
                #expect(after >= .milliseconds(1_900), "\(after)")
                try await holderClient.makeLock(name).unlock(held)
            }
        }
    }

    @Test("when the waiter that polls gives up, a waiter for the holder here polls in its place: a lock freed meanwhile is found at its retry delay")
    func pollerLeavesAnotherPolls() async throws {
        try await withLockNodes(1) { client, servers in
            let name = "poller-leaves"
            let holder = try client.makeLock(name, options: testOptions(expiry: .seconds(30), tries: .max))
            _ = try await holder.lock()
            // The poller: a 100 ms retry delay, and it gives up after 0.8 s.
            var quick = testOptions(expiry: .seconds(30), tries: .max)
            quick.retryDelay = .constant(.milliseconds(100))
            let leaving = Task { try await client.makeLock(name, options: quick).lock(timeout: .milliseconds(800)) }
            #expect(await eventually { client.waitingLockCalls(for: name) == 1 })
            // This one waits for the holder (someone polls more often than it would), with 1 s
            // between its own polls.
            var slow = testOptions(expiry: .seconds(30), tries: .max)
            slow.retryDelay = .constant(.seconds(1))
            let staying = try client.makeLock(name, options: slow)
            let got = Task { await finished(within: .seconds(10)) { () -> Bool in
                guard let lease = try? await staying.lock(timeout: .seconds(25)) else { return false }
                try? await staying.unlock(lease)
                return true
            } }
            #expect(await eventually { client.waitingLockCalls(for: name) == 2 })
            _ = try? await leaving.value
            // The node lost its data: the lock is free, and nothing announces it.
            try await servers[0].flushAll()
            let outcome = await got.value
            #expect(outcome == true, "nil: the waiter slept on (to the holder's validity end, 30 s)")
        }
    }

    @Test("tasks of one process taking turns get the lock in the order they asked: nobody waits much longer than a round")
    func turnsAreFirstComeFirstServed() async throws {
        try await withLockNodes(1) { client, _ in
            // Default delays: one waiter polls every 50–250 ms, the others wait for the holder.
            let lock = try client.makeLock("turns", options: LockOptions(expiry: .seconds(5), timeoutFactor: 0.2))
            let tasks = 8
            let hold = Duration.milliseconds(40)
            let end = ContinuousClock.now + .seconds(5)
            let longest = try await withThrowingTaskGroup(of: Duration.self) { group in
                for _ in 0..<tasks {
                    group.addTask {
                        var longest = Duration.zero
                        while ContinuousClock.now < end {
                            let asked = ContinuousClock.now
                            let lease = try await lock.lock()
                            longest = max(longest, asked.duration(to: .now))
                            try await Task.sleep(for: hold)
                            try await lock.unlock(lease)
                        }
                        return longest
                    }
                }
                return try await group.reduce(Duration.zero) { max($0, $1) }
            }
            // First come, first served: about 7 holds (0.3 s) per wait. A waiter passed over at
            // every release (the one polling, say) would wait seconds.
            #expect(longest < .seconds(2), "longest wait \(longest)")
        }
    }

    /// Holds `name` here (30 s validity), starts a `lock()` with the retry delay `first` and,
    /// once it waits (or after `gap`), one with `second`; flushes the node `flushAfter` later
    /// (the lock is free, and nothing announces it). Returns the time from the flush until the
    /// first of them got the lock, and whether both got it and unlocked it (each within 10 s).
    private static func lostKeysFound(
        client: RedlockClient, servers: [RedisServer], name: String,
        first: RetryDelay, gap: Duration? = nil, second: RetryDelay, flushAfter: Duration
    ) async throws -> (first: Duration?, all: Bool) {
        let holder = try client.makeLock(name, options: testOptions(expiry: .seconds(30), tries: .max))
        _ = try await holder.lock()
        let acquiredAt = Locked<[ContinuousClock.Instant]>([])
        func start(_ delay: RetryDelay) throws -> Task<Bool, Never> {
            var options = testOptions(expiry: .seconds(30), tries: .max)
            options.retryDelay = delay
            let lock = try client.makeLock(name, options: options)
            return Task {
                guard let lease = try? await lock.lock(timeout: .seconds(10)) else { return false }
                acquiredAt.update { $0.append(.now) }
                try? await lock.unlock(lease)
                return true
            }
        }
        let tasks = [try start(first)]
        if let gap {
            try await Task.sleep(for: gap)
        } else {
            #expect(await eventually { client.waitingLockCalls(for: name) == 1 })
        }
        let all = tasks + [try start(second)]
        try await Task.sleep(for: flushAfter)
        try await servers[0].flushAll()
        let flushedAt = ContinuousClock.now
        var got = true
        for task in all { got = await task.value && got }
        return (acquiredAt.value.min().map { flushedAt.duration(to: $0) }, got)
    }

    @Test("a waiter whose retry delay is shorter than the poller's polls itself: it finds lost keys at its own delay, not the poller's")
    func shorterDelayPollsItself() async throws {
        try await withLockNodes(1) { client, servers in
            // Parked behind the 4 s poller, it would find the keys gone at the poller's next poll.
            let (found, all) = try await Self.lostKeysFound(
                client: client, servers: servers, name: "shorter-delay",
                first: .constant(.seconds(4)), second: .constant(.milliseconds(50)), flushAfter: .milliseconds(300)
            )
            #expect(all)
            #expect(found.map { $0 < .seconds(1) } == true, "the 50 ms waiter got the free lock \(String(describing: found)) after the keys were lost")
        }
    }

    @Test("with exponential backoff, a newer waiter polls at its own (shorter) delay, not behind the first waiter's grown one")
    func newerWaiterKeepsItsBackoff() async throws {
        try await withLockNodes(1) { client, servers in
            // The first waiter backs off to 2 s (10 + 20 + … + 1,280 ms: 2.55 s); the newer one's
            // delays are 10, 20, 40, 80, 160 ms: it looks again within 0.2 s of the flush.
            let backoff = RetryDelay.exponential(initial: .milliseconds(10), maximum: .seconds(2), jitter: false)
            let (found, all) = try await Self.lostKeysFound(
                client: client, servers: servers, name: "backoff", first: backoff, gap: .seconds(3), second: backoff, flushAfter: .milliseconds(100)
            )
            #expect(all)
            #expect(found.map { $0 < .milliseconds(700) } == true, "the free lock was found \(String(describing: found)) after the keys were lost")
        }
    }

    @Test("a waiter parked behind a poller polls again once that poller backs off past its own delay")
    func parkedPollsWhenPollerSlowsDown() async throws {
        try await withLockNodes(1) { client, servers in
            // The poller's delays double from 10 ms: 1,280 ms from 1.27 s on, 2,560 ms from 2.55 s.
            // The other, 1 s between its own polls, parks at first (the poller looks more often).
            // Flushed at 2.6 s: the poller would look again at 5.1 s; the other, polling again
            // since the poller's delay passed 1 s, within 1 s.
            let (found, all) = try await Self.lostKeysFound(
                client: client, servers: servers, name: "poller-slows",
                first: .exponential(initial: .milliseconds(10), maximum: .seconds(4), jitter: false), second: .constant(.seconds(1)),
                flushAfter: .milliseconds(2_600)
            )
            #expect(all)
            #expect(found.map { $0 < .milliseconds(1_800) } == true, "the free lock was found \(String(describing: found)) after the keys were lost")
        }
    }

    /// The attempts that 200 `lock()` calls with the retry delay `delay` make in 2 s while a
    /// lease of their name is held here (30 s), from 0.5 s after they all wait.
    private static func attemptsOf200Waiters(_ delay: RetryDelay) async throws -> Int64 {
        try await withRedisServers(1) { servers throws in
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
            return try await withTeardown {
                func attempts() -> Int64 { metrics.counterTotal(label: "redlock_acquire_attempts_total") }
                let name = "many-waiters"
                let holder = try client.makeLock(name, options: testOptions(expiry: .seconds(30), tries: .max))
                let lease = try await holder.lock()
                var options = testOptions(expiry: .seconds(30), tries: .max)
                options.retryDelay = delay
                let lock = try client.makeLock(name, options: options)
                let tasks = (0..<200).map { _ in
                    Task { if let lease = try? await lock.lock(timeout: .seconds(20)) { try? await lock.unlock(lease) } }
                }
                #expect(await eventually(within: .seconds(10)) { client.waitingLockCalls(for: name) == 200 })
                try await Task.sleep(for: .milliseconds(500))
                let before = attempts()
                try await Task.sleep(for: .seconds(2))
                let during = attempts() - before
                for task in tasks { task.cancel() }
                for task in tasks { await task.value }
                try await holder.unlock(lease)
                return during
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("200 waiters whose delays back off (exponential, jitter) leave one of them polling: none starts its backoff over")
    func backingOffWaitersDoNotChurn() async throws {
        // One poller at 100 ms (50 ms on average with jitter) makes about 40 attempts in 2 s;
        // waiters unparked as it backed off past them made 464–584.
        let during = try await Self.attemptsOf200Waiters(.exponential(initial: .milliseconds(1), maximum: .milliseconds(100)))
        #expect(during <= 200, "\(during) attempts in 2 s")
    }

    @Test("200 waiters with a delay closure of their own (random 50–250 ms) leave one of them polling")
    func ownDelayWaitersDoNotChurn() async throws {
        // One poller at 150 ms on average makes about 13 attempts in 2 s; waiters unparked by
        // each slower draw made 31–62.
        let during = try await Self.attemptsOf200Waiters(RetryDelay { _ in .milliseconds(Int64.random(in: 50...250)) })
        #expect(during <= 25, "\(during) attempts in 2 s")
    }
}
