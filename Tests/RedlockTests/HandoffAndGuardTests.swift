import Logging
import MetricsTestKit
@testable import Redlock
import RedlockTestSupport
import RedlockTransport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The fraction of the wall clock's current second, in nanoseconds.
private func wallClockNanoseconds() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return now.tv_nsec
}

@Suite("Fast handoff, restart guard, single-flight, observability")
struct HandoffAndGuardTests {
    @Test("a waiter on the same client with a 10 s retry delay gets the lock handed over as soon as the holder unlocks")
    func handoff() async throws {
        try await withLockNodes(5) { client, _ in
            let holder = try client.makeLock("handoff", options: testOptions())
            let lease = try await holder.lock()
            let waiter = try client.makeLock("handoff", options: LockOptions(
                tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.2
            ))
            let waiting = Task { try await waiter.lock() }
            // Let the waiter fail its first attempt and settle into its 10 s delay.
            try await Task.sleep(for: .milliseconds(200))
            let releasedAt = ContinuousClock.now
            try await holder.unlock(lease)
            let next = try await waiting.value
            // Without the published release it would sleep out the 10 s delay.
            #expect(releasedAt.duration(to: .now) < .seconds(3))
            try await waiter.unlock(next)
        }
    }

    @Test("a waiter on another client (as in another process) with a 10 s retry delay acquires as soon as the release is published")
    func publishedHandoff() async throws {
        try await withLockNodes(5) { client, servers in
            let other = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) })
            try await withTeardown {
                let holder = try client.makeLock("published", options: testOptions())
                let lease = try await holder.lock()
                let waiter = try other.makeLock("published", options: LockOptions(
                    tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.2
                ))
                let waiting = Task { try await waiter.lock() }
                try await untilSubscribed("redlock:released:published", on: servers)
                let releasedAt = ContinuousClock.now
                try await holder.unlock(lease)
                let next = try await waiting.value
                // Its own client has no waiter to hand over to: only the message can wake it.
                #expect(releasedAt.duration(to: .now) < .seconds(3))
                try await waiter.unlock(next)
            } teardown: {
                await other.shutdown()
            }
        }
    }

    @Test("a lock() in another client (as in another process) that starts within a millisecond before a release is not left sleeping out its 20 s retry delay, subscribed or not")
    func noMissedRelease() async throws {
        try await withLockNodes(5) { client, servers in
            let other = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) })
            try await withTeardown {
                let waiterOptions = LockOptions(tries: 100, retryDelay: .constant(.seconds(20)), timeoutFactor: 0.2)
                // Fresh names: the waiter subscribes after its first failed attempt, and a release
                // published before a node confirmed the subscription goes unheard. The same name
                // again: the subscription lingers from the last round, so the waiter listens
                // before its first attempt.
                var afterRelease: [Duration] = []
                for round in 0..<40 {
                    let name = round < 20 ? "missed-\(round)" : "missed-again"
                    let holder = try client.makeLock(name, options: testOptions())
                    let lease = try await holder.lock()
                    let waiter = try other.makeLock(name, options: waiterOptions)
                    let started = ContinuousClock.now
                    let waiting = Task { try await waiter.lock() }
                    try await Task.sleep(for: .microseconds(Int64.random(in: 0...1_000)))
                    let releasing = ContinuousClock.now
                    try await holder.unlock(lease)
                    let next = try await waiting.value
                    afterRelease.append(releasing.duration(to: .now))
                    // A release missed costs the 20 s delay; heard (or found by the retry that
                    // follows the subscription's confirmation) it takes milliseconds.
                    #expect(started.duration(to: .now) < .seconds(10), "round \(round): \(started.duration(to: .now))")
                    try await waiter.unlock(next)
                }
                afterRelease.sort()
                print("missed-release rounds: from the release to the waiter's lock() returning, median \(afterRelease[20]), max \(afterRelease[39])")
            } teardown: {
                await other.shutdown()
            }
        }
    }

    @Test("a lock() in another client that starts after the release was heard from one node, while it is still on its way to the others, is woken by their messages, not left sleeping out its 20 s retry delay")
    func releaseHeardNodeByNode() async throws {
        try await withLockNodes(5) { waiterClient, servers in
            let name = "node-by-node"
            let waiter = try waiterClient.makeLock(name, options: LockOptions(tries: 100, retryDelay: .constant(.seconds(20)), timeoutFactor: 0.2))
            try await withHeldBackRelease(of: name, on: servers, subscribing: waiter) { holder, lease, proxies in
                for proxy in proxies { proxy.set(.stall([.toNode])) }
                let releasing = Task { try await holder.unlock(lease) }
                // Node 0 released and published; nodes 1–4 still hold the key.
                try #require(await eventually { waiterClient.coordination.lastRelease(of: name) == Array(lease.value.utf8) })
                let waiting = Task { try await waiter.lock() }
                // Its attempt found nodes 1–4 taken, after the release it heard.
                try #require(await eventually { waiterClient.coordination.waiterCount(of: name) == 1 })
                let freed = ContinuousClock.now
                for proxy in proxies { proxy.set(.none) }
                let next = try await waiting.value
                #expect(freed.duration(to: .now) < .seconds(10), "\(freed.duration(to: .now))")
                try await releasing.value
                try await waiter.unlock(next)
            }
        }
    }

    @Test(
        "a waiter woken by a release that then gives up without the lock passes the wake on, also after attempts of its own since: one that waited since before the release is not left sleeping out its 20 s retry delay",
        arguments: [2, 3]
    )
    func wokenWaiterPassesOn(firstTries: Int) async throws {
        try await withLockNodes(5) { waiterClient, servers in
            let name = "passed-on-\(firstTries)"
            // `first` gives up after its attempt sent for the release (with 3 tries, after one
            // more of its own, made 0.5–5 ms later); `second` retries every 20 s. The warm-up
            // uses `second` (a confirmation would cost `first` a try).
            let first = try waiterClient.makeLock(name, options: LockOptions(tries: firstTries, retryDelay: .constant(.seconds(20)), timeoutFactor: 0.2))
            let second = try waiterClient.makeLock(name, options: LockOptions(tries: 100, retryDelay: .constant(.seconds(20)), timeoutFactor: 0.2))
            try await withHeldBackRelease(of: name, on: servers, subscribing: second) { holder, lease, proxies in
                let giving = Task { try await first.lock() }
                try #require(await eventually { waiterClient.coordination.waiterCount(of: name) == 1 })
                let waiting = Task { try await second.lock() }
                try #require(await eventually { waiterClient.coordination.waiterCount(of: name) == 2 })
                for proxy in proxies { proxy.set(.stall([.toNode])) }
                let releasing = Task { try await holder.unlock(lease) }
                // Node 0's message wakes `first` (the longest waiting), whose attempt finds nodes
                // 1–4 taken (with 3 tries, so does its next): its last. Nodes 1–4's messages pass
                // over `second`, which waited before.
                await #expect(throws: RedlockError.self) { try await giving.value }
                let freed = ContinuousClock.now
                for proxy in proxies { proxy.set(.none) }
                let next = try await waiting.value
                #expect(freed.duration(to: .now) < .seconds(10), "\(freed.duration(to: .now))")
                try await releasing.value
                try await second.unlock(next)
            }
        }
    }

    @Test("a waiter cancelled while an unlock hands it the lock ends cancelled, and releases what the handed-over attempt set")
    func cancelledDuringHandOff() async throws {
        try await withLockNodes(5) { client, servers in
            // Budgets of 2.5 s: longer than the stall below, which stays within the 1 s command timeout.
            let holder = try client.makeLock("claimed", options: testOptions(timeoutFactor: 0.5))
            let lease = try await holder.lock()
            let waiter = try client.makeLock("claimed", options: LockOptions(
                expiry: .seconds(5), tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.5
            ))
            let waiting = Task { try await waiter.lock() }
            try await untilSubscribed("redlock:released:claimed", on: servers)
            // Three of five nodes stall (all at once), so the handed-over attempt waits for a quorum.
            async let first = servers[0].stall(for: .milliseconds(700))
            async let second = servers[1].stall(for: .milliseconds(700))
            async let third = servers[2].stall(for: .milliseconds(700))
            let stalls = try await [first, second, third]
            let unlocking = Task { try await holder.unlock(lease) }
            // The waiter's value on a node that answers shows the attempt was handed over.
            let giveUp = ContinuousClock.now + .seconds(5)
            while try await values(of: "claimed", on: Array(servers.suffix(2))).contains(where: { $0 == nil || $0 == lease.value }) {
                try #require(ContinuousClock.now < giveUp, "the attempt was never handed over")
                try await Task.sleep(for: .milliseconds(2))
            }
            waiting.cancel()
            let result = await waiting.result
            #expect(throws: RedlockError.self) { try result.get() }
            #expect((result.failure as? RedlockError)?.code == .cancelled)
            try await unlocking.value
            for stall in stalls { await stall.waitUntilOver() }
            #expect(try await values(of: "claimed", on: servers) == Array(repeating: nil, count: 5))
        }
    }

    @Test("a client dropped without shutdown after a handoff under the restart guard is freed (its last reference may go on the timer thread)")
    func clientFreedAfterHandOff() async throws {
        try await withRedisServers(3) { servers in
            weak var released: RedlockClient?
            do {
                let client = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) })
                released = client
                var options = testOptions()
                options.restartGuard = .milliseconds(1)
                let holder = try client.makeLock("freed", options: options)
                let lease = try await holder.lock()
                options.tries = 100
                options.retryDelay = .constant(.milliseconds(600))
                let waiter = try client.makeLock("freed", options: options)
                let waiting = Task { try await waiter.lock() }
                try await untilSubscribed("redlock:released:freed", on: servers)
                try await holder.unlock(lease)
                try await waiter.unlock(try await waiting.value)
            }
            // The timer still holds the waiter's finished wait until its 600 ms deadline.
            let giveUp = ContinuousClock.now + .seconds(5)
            while released != nil, ContinuousClock.now < giveUp { try await Task.sleep(for: .milliseconds(10)) }
            #expect(released == nil, "the client was never freed")
        }
    }

    @Test("with fast handoff off, a waiter in the same client is still handed the lock; one in another client (as in another process) sleeps out its retry delay")
    func handoffOff() async throws {
        try await withLockNodes(3) { client, servers in
            let options = LockOptions(tries: 100, retryDelay: .constant(.milliseconds(600)), timeoutFactor: 0.2, fastHandoff: false)
            // Same client: the release hands the lock to the waiting lock() (no Redis involved).
            let holder = try client.makeLock("polling", options: options)
            var lease = try await holder.lock()
            let local = try client.makeLock("polling", options: options)
            let localWaiting = Task { try await local.lock() }
            #expect(await eventually(within: .seconds(5)) { client.waitingLockCalls(for: "polling") == 1 })
            var releasedAt = ContinuousClock.now
            try await holder.unlock(lease)
            let handed = try await localWaiting.value
            #expect(releasedAt.duration(to: .now) < .milliseconds(400), "handed over in \(releasedAt.duration(to: .now))")
            try await local.unlock(handed)

            // Another client: nothing is published, so it finds out only by retrying.
            let other = try RedlockClient(nodes: servers.map { $0.configuration() })
            try await withTeardown {
                lease = try await holder.lock()
                let remote = try other.makeLock("polling", options: options)
                let started = ContinuousClock.now
                let remoteWaiting = Task { try await remote.lock() }
                #expect(await eventually(within: .seconds(5)) { other.waitingLockCalls(for: "polling") == 1 })
                releasedAt = .now
                try await holder.unlock(lease)
                let next = try await remoteWaiting.value
                #expect(started.duration(to: .now) >= .milliseconds(550))
                try await remote.unlock(next)
                // And no subscriber connection was made for it.
                let admin = RedisConnection(configuration: servers[0].configuration())
                let subscribers = try await admin.send(RedisCommand("PUBSUB", "NUMSUB", "redlock:released:polling"))
                #expect(subscribers == .array([.bulkString(Array("redlock:released:polling".utf8)), .integer(0)]))
                await admin.shutdown()
            } teardown: {
                await other.shutdown()
            }
        }
    }

    @Test(
        "a count of tries bounds the time of a lock() in a new client, whose subscriptions' confirmations each call for one more look: tries × the retry delay, as in Redsync",
        arguments: [false, true]
    )
    func triesBoundTimeInANewClient(fair: Bool) async throws {
        try await withLockNodes(3) { client, servers in
            let holder = try client.makeLock("counted-fresh", options: LockOptions(expiry: .seconds(30), fair: fair))
            let lease = try await holder.lock()
            for tries in [2, 3] {
                // A new client each round: its subscriptions are confirmed after the first attempt.
                let metrics = TestMetrics()
                let other = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
                try await withTeardown {
                    let counted = try other.makeLock(
                        "counted-fresh", options: LockOptions(expiry: .seconds(30), tries: tries, retryDelay: .constant(.milliseconds(300)), fair: fair)
                    )
                    let (code, took) = await failureAndTime(of: counted)
                    #expect(code == .taken)
                    // (tries − 1) waits of 300 ms; the confirmations' looks cut none short.
                    #expect(took >= .milliseconds(300 * (tries - 1) - 20), "\(tries) tries took \(took)")
                    #expect(took < .milliseconds(300 * tries + 500), "\(tries) tries took \(took)")
                    let attempts = metrics.counterTotal(label: "redlock_acquire_attempts_total")
                    #expect(attempts >= tries && attempts <= tries + 3, "\(attempts) attempts for \(tries) tries")
                } teardown: {
                    await other.shutdown()
                }
            }
            try await holder.unlock(lease)
        }
    }

    @Test("a confirmation that comes late in a wait (one node 100 ms away each way, two round trips for its subscriber: INFO, SUBSCRIBE) calls for a look, and the wait after it ends when the one it cut short would have: the count still bounds the time")
    func lateConfirmationKeepsTheSchedule() async throws {
        try await withLockNodes(3) { client, servers in
            let holder = try client.makeLock("counted-late", options: LockOptions(expiry: .seconds(30)))
            let lease = try await holder.lock()
            let proxy = try FaultProxy.start(to: servers[2].endpoint)
            proxy.set(.latency(.milliseconds(100)))
            let nodes = [servers[0].configuration(), servers[1].configuration(), RedisConnectionConfiguration(endpoint: proxy.endpoint)]
            let other = try RedlockClient(nodes: nodes)
            try await withTeardown {
                let counted = try other.makeLock("counted-late", options: LockOptions(expiry: .seconds(30), tries: 2, retryDelay: .constant(.seconds(1))))
                let (code, took) = await failureAndTime(of: counted)
                #expect(code == .taken)
                // Node 2 confirms about 400 ms into the 1 s wait; a full wait after the look it
                // calls for would end the second try at about 1.4 s.
                #expect(took >= .milliseconds(980) && took < .milliseconds(1_300), "two tries took \(took)")
                #expect(other.subscriptionConfirmations(for: "counted-late") == 3)
            } teardown: {
                await other.shutdown()
                proxy.stop()
            }
            try await holder.unlock(lease)
        }
    }

    @Test("a node whose subscriber connection is killed over and over confirms again each time, and each confirmation is a look, not a try: a lock() with a count still takes the time its tries bound")
    func reconnectingNodeCannotStretchTheCount() async throws {
        try await withLockNodes(3) { client, servers in
            let holder = try client.makeLock("counted-flapping", options: LockOptions(expiry: .seconds(30)))
            let lease = try await holder.lock()
            let metrics = TestMetrics()
            let other = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
            let admin = RedisConnection(configuration: servers[0].configuration())
            try await withTeardown {
                let counted = try other.makeLock("counted-flapping", options: LockOptions(expiry: .seconds(30), tries: 2, retryDelay: .constant(.milliseconds(600))))
                let killing = Task {
                    while !Task.isCancelled {
                        _ = try? await admin.send(RedisCommand("CLIENT", "KILL", "TYPE", "pubsub"))
                        try? await Task.sleep(for: .milliseconds(20))
                    }
                }
                let (code, took) = await failureAndTime(of: counted)
                killing.cancel()
                await killing.value
                #expect(code == .taken)
                let confirmations = other.subscriptionConfirmations(for: "counted-flapping")
                let attempts = metrics.counterTotal(label: "redlock_acquire_attempts_total")
                // One per node, and at least one more from a reconnect: past the former cap of
                // one look per node, which the reconnect's confirmation used to exceed.
                #expect(confirmations >= 4, "the node confirmed only \(confirmations) times: the test did not make it flap")
                #expect(attempts <= 2 + confirmations, "\(attempts) attempts for 2 tries and \(confirmations) confirmations")
                #expect(took >= .milliseconds(580) && took < .milliseconds(1_500), "two tries took \(took)")
            } teardown: {
                await admin.shutdown()
                await other.shutdown()
            }
            try await holder.unlock(lease)
        }
    }

    @Test("the restart guard ignores a node that restarted empty, so a held lock is not granted twice")
    func restartGuard() async throws {
        try await withLockNodes(3) { client, servers in
            // The guard counts whole seconds of uptime less a second and a tick (a lower bound):
            // let every node report 3 s, up for 1.99 s at least.
            try await Task.sleep(for: .milliseconds(3_100))
            var options = testOptions(expiry: .seconds(10))
            // In production the guard is at least the longest expiry; here it only has to tell the
            // restarted node (up 0 s, and for 1.9 s after) from the others (up 1.99 s at least).
            options.restartGuard = .milliseconds(1_900)
            let holder = try client.makeLock("guarded", options: testOptions(expiry: .seconds(10)))
            let lease = try await holder.lock()

            // Node 1 forgets the lock; node 2 is made to look taken so that only 0 and 1 matter…
            try await servers[1].restart(keepingData: false)
            let challenger = try client.makeLock("guarded", options: options)
            // …node 0 still holds the lease: without the guard, nodes 1 and 2 would grant.
            let admin = RedisConnection(configuration: servers[2].configuration())
            _ = try await admin.send(RedisCommand("DEL", "guarded"))
            await admin.shutdown()

            let error = await #expect(throws: RedlockError.self) { try await challenger.tryLock() }
            #expect(error?.code == .noQuorum)
            let causes = Dictionary(uniqueKeysWithValues: (error?.nodes ?? []).map { ($0.node, $0.cause) })
            guard causes[1]?.uptime != nil else {
                Issue.record("node 1 should be ignored as recently restarted, got \(String(describing: causes[1])) in \(String(describing: error))")
                return
            }
            #expect(causes[2] == nil, "node 2, up for long enough, should have granted: \(String(describing: error))")
            // The unguarded lock shows the hazard the guard closes.
            let unguarded = try client.makeLock("guarded", options: testOptions(expiry: .seconds(10)))
            let second = try await unguarded.tryLock()
            #expect(lease.isValid && second.isValid, "two valid leases at once: the restart hazard")
            try await unguarded.unlock(second)
        }
    }

    @Test("the restart guard takes a second (and a tick) off the reported uptime: Redis counts its wall clock's whole seconds since start, so a node started at x.9 s reports 1 s of uptime 0.1 s later; with a 1 s guard it gets no vote in its first 950 ms (a trial counts once the node reported 1 s before then), and a vote again soon after")
    func restartGuardRoundsUptimeDown() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            try await withTeardown {
                var options = LockOptions(expiry: .seconds(10), tries: 1)
                options.restartGuard = .seconds(1)
                let lock = try client.makeLock("uptime-rounded", options: options)
                // Node 0 is taken: every lease needs node 2's vote.
                _ = try await servers[0].run(RedisCommand("SET", lock.name, "another holder"))
                /// What node 2 reports as its uptime now.
                func reported() async throws -> Int {
                    let info = try await servers[2].run(RedisCommand("INFO", "server")).string ?? ""
                    return info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("uptime_in_seconds:") }.flatMap { Int($0.dropFirst("uptime_in_seconds:".count)) } ?? -1
                }
                var trials = 0
                for _ in 0..<6 where trials < 2 {
                    // A restart 250–300 ms before the wall clock's next whole second (a loaded
                    // machine's restart may take 100 ms and more: it must be up before then).
                    while !(700_000_000..<750_000_000).contains(wallClockNanoseconds()) {
                        try await Task.sleep(for: .milliseconds(2))
                    }
                    let restarted = ContinuousClock.now
                    try await servers[2].restart(keepingData: false)
                    try await Task.sleep(until: restarted + .milliseconds(200), clock: .continuous)
                    var reportedOne = false
                    while restarted.duration(to: .now) < .milliseconds(950) {
                        if let lease = try? await lock.tryLock() {
                            // The server started after `restarted`: a lease within a second of
                            // it came from a node up for less than the guard.
                            let took = restarted.duration(to: .now)
                            if took < .seconds(1) { Issue.record("node 2 voted \(took) after its restart began, with a 1 s guard") }
                            try await lock.unlock(lease)
                        }
                        let uptime = try await reported()
                        if uptime >= 1, restarted.duration(to: .now) < .milliseconds(950) { reportedOne = true }
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    if reportedOne { trials += 1 }
                }
                #expect(trials == 2, "node 2 never reported a second of uptime within 950 ms of its restart")
                // Once the client has seen it up for the guard's second (from its first look at
                // the new server, with the report's lower bound), it votes: within 2.5 s more.
                var lease: Lease?
                let giveUp = ContinuousClock.now + .milliseconds(2_500)
                while lease == nil, ContinuousClock.now < giveUp {
                    lease = try? await lock.tryLock()
                    if lease == nil { try await Task.sleep(for: .milliseconds(20)) }
                }
                let held = try #require(lease, "node 2 never voted again")
                try await lock.unlock(held)
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("the restart guard reads a new connection's uptime from its handshake's INFO server: one INFO per node for a guarded lock and unlock, where asking again cost a round trip; a client over connections that are not vetted (no handshake INFO) asks its own")
    func restartGuardUsesTheHandshake() async throws {
        try await withRedisServers(3) { servers throws in
            /// How many `INFO` commands each server ran since its stats were reset.
            func infoCalls() async throws -> [Int] {
                var calls: [Int] = []
                for server in servers {
                    let stats = try await server.run(RedisCommand("INFO", "commandstats")).string ?? ""
                    let line = stats.split(whereSeparator: \.isNewline).first { $0.hasPrefix("cmdstat_info:") } ?? ""
                    calls.append(line.split(separator: ",").first.flatMap { Int($0.dropFirst("cmdstat_info:calls=".count)) } ?? 0)
                }
                return calls
            }
            var options = testOptions(expiry: .seconds(10))
            // Any uptime passes: what is counted is how it was learned.
            options.restartGuard = .nanoseconds(1)
            /// The INFO calls of each server for a first guarded lock and unlock by `client`.
            func infoCallsOfOneLock(by client: RedlockClient) async throws -> [Int] {
                for server in servers { _ = try await server.run(RedisCommand("CONFIG", "RESETSTAT")) }
                let lock = try client.makeLock("guard-handshake", options: options)
                try await lock.unlock(try await lock.lock())
                return try await infoCalls()
            }
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            try await withTeardown {
                let calls = try await infoCallsOfOneLock(by: client)
                #expect(calls == [1, 1, 1], "the handshake's INFO only")
            } teardown: {
                await client.shutdown()
            }

            // Over connections of the caller's own (not vetted): the guard asks.
            let connections = servers.map { RedisConnection(configuration: $0.configuration()) }
            let own = try RedlockClient(connections: connections)
            try await withTeardown {
                let calls = try await infoCallsOfOneLock(by: own)
                #expect(calls == [1, 1, 1], "the guard's INFO only")
            } teardown: {
                await own.shutdown()
                for connection in connections { await connection.shutdown() }
            }
        }
    }

    @Test("single-flight: concurrent local lock() calls take turns and never contend with each other")
    func singleFlight() async throws {
        try await withRedisServers(3) { servers throws in
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
            var options = testOptions(tries: 1_000)
            options.singleFlight = true
            let lock = try client.makeLock("flight", options: options)
            let counter = UnsafeCounter()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<20 {
                    group.addTask {
                        let lease = try await lock.lock()
                        await counter.enter()
                        await Task.yield()
                        await counter.leave()
                        try await lock.unlock(lease)
                    }
                }
                try await group.waitForAll()
            }
            #expect(await counter.maximumInside == 1)
            // Every lock() got in on its first attempt: none of them polled the others.
            #expect(metrics.counterTotal(label: "redlock_acquire_attempts_total") == 20)
            #expect(metrics.counterTotal(label: "redlock_acquired_total") == 20)

            // tryLock does not queue: it fails at once while a local caller holds the gate.
            let held = try await lock.lock()
            let error = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            #expect(error?.code == .taken)
            #expect(error?.message.contains("single-flight") == true)
            try await lock.unlock(held)
            let next = try await lock.tryLock()
            try await lock.unlock(next)
            await client.shutdown()
        }
    }

    @Test("single-flight: a caller that began to wait while the gate's owner was still acquiring enters once the owner's lease runs out without an unlock, not at its own deadline")
    func singleFlightOwnerLeaseRunsOut() async throws {
        try await withLockNodes(3) { client, servers in
            let other = try RedlockClient(nodes: servers.map { $0.configuration() })
            try await withTeardown {
                // Another process holds the lock, so the gate's owner here is still acquiring when
                // the second caller comes.
                let held = try await other.makeLock("gated").lock()
                var options = LockOptions(
                    expiry: .milliseconds(600), acquireTimeout: .seconds(20), retryDelay: .random(in: .milliseconds(5)...(.milliseconds(20)))
                )
                options.singleFlight = true
                let lock = try client.makeLock("gated", options: options)
                let owner = Task { try await lock.lock() }
                try #require(await eventually { client.coordination.gateQueueLength(of: "gated") == 0 })
                let second = Task { () throws -> (Lease, ContinuousClock.Instant) in
                    let lease = try await lock.lock()
                    return (lease, .now)
                }
                try #require(await eventually { client.coordination.gateQueueLength(of: "gated") == 1 })
                try await other.makeLock("gated").unlock(held)
                // The owner acquires and drops its lease: no unlock, so only its end passes the gate.
                let dropped = try await owner.value
                let (lease, acquiredAt) = try await second.value
                #expect(acquiredAt >= dropped.validUntil, "the gate passed on before the owner's lease ran out")
                #expect(dropped.validUntil.duration(to: acquiredAt) < .seconds(5), "waited \(dropped.validUntil.duration(to: acquiredAt)) past the owner's lease")
                try await lock.unlock(lease)
            } teardown: {
                await other.shutdown()
            }
        }
    }

    @Test("single-flight: callers that queued while the gate's owner was still acquiring keep their places when owners unlock before their leases end, past the end of the first owner's lease")
    func singleFlightOrderKept() async throws {
        try await withLockNodes(3) { client, servers in
            let other = try RedlockClient(nodes: servers.map { $0.configuration() })
            try await withTeardown {
                let held = try await other.makeLock("ordered").lock()
                var options = LockOptions(expiry: .seconds(2), retryDelay: .random(in: .milliseconds(5)...(.milliseconds(20))))
                options.singleFlight = true
                let lock = try client.makeLock("ordered", options: options)
                let order = Locked<[String]>([])
                func take(_ label: String, holding hold: Duration) -> Task<Void, any Error> {
                    Task {
                        let lease = try await lock.lock()
                        order.update { $0.append(label) }
                        try await Task.sleep(for: hold)
                        try await lock.unlock(lease)
                    }
                }
                let owner = take("O", holding: .milliseconds(300))
                try #require(await eventually { client.coordination.gateQueueLength(of: "ordered") == 0 })
                let first = take("W1", holding: .milliseconds(1_900))
                try #require(await eventually { client.coordination.gateQueueLength(of: "ordered") == 1 })
                let second = take("W2", holding: .zero)
                try #require(await eventually { client.coordination.gateQueueLength(of: "ordered") == 2 })
                try await other.makeLock("ordered").unlock(held)
                // W1 holds past the end of O's lease (about 2 s after O acquired); W3 comes meanwhile.
                try #require(await eventually { order.value == ["O", "W1"] })
                let third = take("W3", holding: .zero)
                try #require(await eventually { client.coordination.gateQueueLength(of: "ordered") == 2 })
                for task in [owner, first, second, third] { try await task.value }
                #expect(order.value == ["O", "W1", "W2", "W3"])
            } teardown: {
                await other.shutdown()
            }
        }
    }

    @Test("single-flight with a fixed value: once a holder's validity ended and the gate passed on, its unlock and extend are refused without touching the nodes (the successor holds keys with the same value) and do not pass on the successor's gate")
    func singleFlightFixedValueLateUnlock() async throws {
        try await withLockNodes(3) { client, servers in
            // The successor's lease must outlast the checks below (a few round trips) on a loaded machine.
            var options = LockOptions(expiry: .milliseconds(1_500), acquireTimeout: .seconds(20), value: .fixed("one-value"))
            options.singleFlight = true
            let lock = try client.makeLock("fixed-flight", options: options)
            let dropped = try await lock.lock()
            let successor = Task { try await lock.lock() }
            try #require(await eventually { client.coordination.gateQueueLength(of: "fixed-flight") == 1 })
            // The holder never unlocks in time: its lease's end passes the gate on.
            let lease = try await successor.value
            let third = Task { try await lock.lock() }
            try #require(await eventually { client.coordination.gateQueueLength(of: "fixed-flight") == 1 })

            let unlockError = await #expect(throws: RedlockError.self) { try await lock.unlock(dropped) }
            #expect(unlockError?.code == .leaseExpired && unlockError?.message.contains("single-flight") == true, "\(String(describing: unlockError))")
            let extendError = await #expect(throws: RedlockError.self) { _ = try await lock.extend(dropped) }
            #expect(extendError?.code == .leaseExpired, "\(String(describing: extendError))")
            #expect(try await values(of: "fixed-flight", on: servers) == Array(repeating: "one-value", count: 3), "the successor's keys were touched")
            #expect(client.coordination.gateQueueLength(of: "fixed-flight") == 1, "the old holder passed on its successor's gate")
            // A copy made with Lease.init carries no ticket: it is told apart by its age.
            let copy = Lease(
                name: dropped.name, value: dropped.value, expiry: dropped.expiry, acquiredAt: dropped.acquiredAt, validUntil: dropped.validUntil
            )
            #expect(copy == dropped)
            let copyError = await #expect(throws: RedlockError.self) { try await lock.unlock(copy) }
            #expect(copyError?.code == .leaseExpired, "\(String(describing: copyError))")
            #expect(try await values(of: "fixed-flight", on: servers) == Array(repeating: "one-value", count: 3), "the successor's keys were touched")
            #expect(client.coordination.gateQueueLength(of: "fixed-flight") == 1, "a copy of the old lease passed on its successor's gate")

            try await lock.unlock(lease)
            let last = try await third.value
            try await lock.unlock(last)
            // The unlock returned once a quorum deleted (fail-fast); the last delete lands soon after.
            var left = try await values(of: "fixed-flight", on: servers)
            let giveUp = ContinuousClock.now + .seconds(2)
            while left != [nil, nil, nil], ContinuousClock.now < giveUp {
                try await Task.sleep(for: .milliseconds(5))
                left = try await values(of: "fixed-flight", on: servers)
            }
            #expect(left == [nil, nil, nil])
        }
    }

    @Test("single-flight with a fixed value: an extension sent before the holder's validity ended and answered after the gate passed on fails, so two callers of one process never both hold")
    func singleFlightFixedValueLateExtension() async throws {
        try await withLockNodes(3) { client, servers in
            // Validity ends 40 % of the expiry before the keys do: the extension is answered after
            // the first and before the second, while a majority of nodes is stalled.
            var options = LockOptions(
                expiry: .seconds(2), acquireTimeout: .seconds(20), driftFactor: 0.4, timeoutFactor: 0.6, value: .fixed("one-value")
            )
            options.singleFlight = true
            let lock = try client.makeLock("late-extension", options: options)
            let lease = try await lock.lock()
            let successor = Task { try await lock.lock() }
            try #require(await eventually { client.coordination.gateQueueLength(of: "late-extension") == 1 })
            try await Task.sleep(until: lease.validUntil - .milliseconds(250))
            let stalls = [try await servers[0].stall(for: .milliseconds(600)), try await servers[1].stall(for: .milliseconds(600))]
            let extended: Result<Lease, RedlockError>
            do throws(RedlockError) { extended = .success(try await lock.extend(lease)) } catch { extended = .failure(error) }
            let answeredAt = ContinuousClock.now
            try #require(answeredAt > lease.validUntil, "the extension was answered before the validity ended: the test proves nothing")
            try #require(answeredAt < lease.acquiredAt + .seconds(2), "the keys expired before the extension came: the test proves nothing")
            #expect(extended.failure?.code == .leaseExpired, "both the old holder and its successor hold: \(extended)")
            for stall in stalls { await stall.waitUntilOver() }
            let next = try await successor.value
            #expect(next.isValid)
            try await lock.unlock(next)
        }
    }

    @Test("single-flight with a fixed value: an extension answered after the holder's validity ended, with nobody waiting, takes the gate again, so a later local caller waits for it instead of re-attaching beside it")
    func singleFlightFixedValueExtensionRetakesGate() async throws {
        try await withLockNodes(3) { client, _ in
            // Validity ends 30 % of the expiry before the keys do: the extension finds them.
            var options = LockOptions(expiry: .seconds(2), acquireTimeout: .seconds(20), driftFactor: 0.3, value: .fixed("one-value"))
            options.singleFlight = true
            let lock = try client.makeLock("retaken", options: options)
            let lease = try await lock.lock()
            try await Task.sleep(until: lease.validUntil + .milliseconds(50))
            // Nobody waited: the gate went away at the lease's end.
            try #require(await eventually { client.coordination.gateQueueLength(of: "retaken") == nil })
            let extended = try await lock.extend(lease)
            try #require(ContinuousClock.now < lease.acquiredAt + .seconds(2), "the keys expired first: the test proves nothing")
            #expect(client.coordination.gateQueueLength(of: "retaken") == 0, "the extension did not take the gate again")
            let error = await #expect(throws: RedlockError.self) { _ = try await lock.tryLock() }
            #expect(error?.code == .taken && error?.message.contains("single-flight") == true, "\(String(describing: error))")
            try await lock.unlock(extended)
            #expect(client.coordination.gateQueueLength(of: "retaken") == nil)
        }
    }

    @Test("single-flight tickets are unique in the process: a lease of one client unlocked through another client's lock object does not pass that client's gate on")
    func singleFlightTicketsAcrossClients() async throws {
        try await withLockNodes(3) { client, servers in
            let other = try RedlockClient(nodes: servers.map { $0.configuration() })
            try await withTeardown {
                var options = LockOptions(expiry: .seconds(5), acquireTimeout: .seconds(20))
                options.singleFlight = true
                // Each client's first gate: with a count per client, both tickets would be the same.
                let mine = try await client.makeLock("tickets-a", options: options).lock()
                let foreign = try other.makeLock(mine.name, options: options)
                let waiting = Task { try await foreign.lock() }
                try #require(await eventually { other.coordination.gateQueueLength(of: mine.name) == 0 })
                // Releasing `mine` through the other client's lock object: the other client's
                // gate owner (still acquiring) keeps its gate.
                try await foreign.unlock(mine)
                #expect(other.coordination.gateQueueLength(of: mine.name) != nil)
                let next = try await waiting.value
                try await foreign.unlock(next)
            } teardown: {
                await other.shutdown()
            }
        }
    }

    @Test("single-flight: client.shutdown() ends a caller waiting for the gate at once with clientShutDown, and the timer's thread does not wait for the owner's lease to end")
    func singleFlightShutdown() async throws {
        try await withRedisServers(3) { servers in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            var options = LockOptions(expiry: .seconds(20), acquireTimeout: .seconds(20))
            options.singleFlight = true
            let lock = try client.makeLock("closing", options: options)
            let held = try await lock.lock()
            let waiting = Task { try await lock.lock() }
            try #require(await eventually { client.coordination.gateQueueLength(of: "closing") == 1 })
            let shutDownAt = ContinuousClock.now
            await client.shutdown()
            let outcome = await waiting.result
            #expect((outcome.failure as? RedlockError)?.code == .clientShutDown, "\(outcome)")
            #expect(shutDownAt.duration(to: .now) < .seconds(5), "the waiter ended \(shutDownAt.duration(to: .now)) after the shutdown")
            #expect(await eventually(within: .seconds(3)) { !client.deadlines.isRunning }, "the timer's thread waits for the lease's end")
            _ = held
        }
    }

    @Test("metrics count attempts, successes, failures by cause, extensions, releases and latency")
    func metrics() async throws {
        try await withRedisServers(3) { servers throws in
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
            let lock = try client.makeLock("measured", options: testOptions())
            let lease = try await lock.lock()
            _ = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            let extended = try await lock.extend(lease)
            try await lock.unlock(extended)
            _ = await #expect(throws: RedlockError.self) { try await lock.unlock(extended) }

            #expect(metrics.counterTotal(label: "redlock_acquire_attempts_total") == 2)
            #expect(metrics.counterTotal(label: "redlock_acquired_total") == 1)
            #expect(metrics.counterTotal(label: "redlock_acquire_failures_total", dimensions: [("cause", "taken")]) == 1)
            #expect(metrics.counterTotal(label: "redlock_extensions_total", dimensions: [("result", "ok")]) == 1)
            #expect(metrics.counterTotal(label: "redlock_releases_total", dimensions: [("result", "ok")]) == 1)
            #expect(metrics.counterTotal(label: "redlock_releases_total", dimensions: [("result", "leaseExpired")]) == 1)
            let timer = try metrics.expectTimer("redlock_acquire_duration_seconds")
            #expect(timer.values.count == 1)
            await client.shutdown()
        }
    }

    @Test("node failures are logged at debug; a node going down is a warning once, coming back an info once; a healthy cycle logs nothing")
    func logging() async throws {
        try await withRedisServers(3) { servers throws in
            let records = Locked<[String]>([])
            var logger = Logger(label: "test") { _ in CapturingLogHandler(records: records) }
            logger.logLevel = .trace
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, logger: logger)
            var options = testOptions(tries: 1)
            // Wait for every node, so the dead node's failure is always observed (and logged).
            options.failFast = false
            let lock = try client.makeLock("logged", options: options)
            let lease = try await lock.lock()
            try await lock.unlock(lease)
            #expect(untimedLines(records).isEmpty)

            await servers[2].kill()
            for _ in 0..<3 {
                let again = try await lock.lock()
                try await lock.unlock(again)
            }
            #expect(untimedLines(records).contains { $0.contains("debug") && $0.contains("\(servers[2].endpoint)") })
            // Down: one warning naming the node, however many calls see it.
            let warnings = untimedLines(records).filter { $0.hasPrefix("warning") }
            #expect(warnings.count == 1 && warnings[0].contains("\(servers[2].endpoint)"), "\(warnings)")
            #expect(!untimedLines(records).contains { $0.hasPrefix("info") || $0.hasPrefix("error") })

            // Back: one info line.
            try await servers[2].restart(keepingData: false)
            for _ in 0..<3 {
                let back = try await lock.lock()
                try await lock.unlock(back)
            }
            let infos = untimedLines(records).filter { $0.hasPrefix("info") }
            #expect(infos.count == 1 && infos[0].contains("answers again"), "\(infos)")
            await client.shutdown()
        }
    }

    /// Sets `min-replicas-to-write` on `servers` (1 with no replicas: every write is refused
    /// with NOREPLICAS).
    private func setMinReplicas(_ count: Int, on servers: [RedisServer]) async throws {
        for server in servers {
            let admin = RedisConnection(configuration: server.configuration())
            let reply: Result<RedisValue, any Error>
            do { reply = .success(try await admin.send(RedisCommand("CONFIG", "SET", "min-replicas-to-write", "\(count)"))) } catch { reply = .failure(error) }
            await admin.shutdown()
            _ = try reply.get()
        }
    }

    /// Grants within the quiet period after the nodes' last errors do not end their refusing;
    /// after `quiet`, the first grant does, once per node (two nodes).
    private func expectGrantsAgain(_ lock: DistributedLock, records: Locked<[String]>, after quiet: Duration) async throws {
        let early = try await lock.lock()
        try await lock.unlock(early)
        #expect(!untimedLines(records).contains { $0.hasPrefix("info") }, "\(untimedLines(records))")
        try await Task.sleep(for: quiet)
        for _ in 0..<3 {
            let lease = try await lock.lock()
            try await lock.unlock(lease)
        }
        let infos = untimedLines(records).filter { $0.hasPrefix("info") }
        #expect(infos.count == 2 && infos.allSatisfy { $0.contains("grants again") }, "\(infos)")
        #expect(untimedLines(records).filter { $0.hasPrefix("warning") }.count == 2)
    }

    @Test("a node answering the lock's commands with errors while a quorum holds is a warning once, naming it and the error, and an info once when it grants again after the quiet period (before: debug lines only)")
    func refusingNodeLogged() async throws {
        try await withRedisServers(5) { servers throws in
            let records = Locked<[String]>([])
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, logger: capturingLogger(into: records, level: .info))
            client.setRefusalQuietPeriod(.milliseconds(300))
            var options = testOptions(tries: 1)
            options.failFast = false
            let lock = try client.makeLock("refusing", options: options)
            try await setMinReplicas(1, on: Array(servers.suffix(2)))
            for _ in 0..<3 {
                let lease = try await lock.lock()
                try await lock.unlock(try await lock.extend(lease))
            }
            let warnings = untimedLines(records).filter { $0.hasPrefix("warning") }
            #expect(warnings.count == 2, "\(untimedLines(records))")
            for server in servers.suffix(2) {
                #expect(warnings.contains { $0.contains("answers the lock's commands with errors") && $0.contains("\(server.endpoint)") && $0.contains("NOREPLICAS") }, "\(warnings)")
            }
            #expect(!untimedLines(records).contains { $0.hasPrefix("info") })

            try await setMinReplicas(0, on: Array(servers.suffix(2)))
            try await expectGrantsAgain(lock, records: records, after: .milliseconds(350))
            await client.shutdown()
        }
    }

    @Test("errors that concern one lock while another on the same nodes is granted (a fenced lock whose user may not touch the counter, beside a plain one) are one warning per node, not one per call pair (before: 300 warnings and 300 'grants again' in 100 pairs)")
    func refusalsDoNotFlap() async throws {
        try await withRedisServers(3) { servers throws in
            for server in servers {
                let admin = RedisConnection(configuration: server.configuration())
                _ = try await admin.send(RedisCommand("ACL", "SETUSER", "app", "reset", "on", ">pw", "~app:*", "&*", "+@all"))
                await admin.shutdown()
            }
            let records = Locked<[String]>([])
            let metrics = TestMetrics()
            let client = try RedlockClient(
                nodes: servers.map {
                    var configuration = $0.configuration()
                    configuration.username = "app"
                    configuration.password = "pw"
                    return configuration
                },
                logger: capturingLogger(into: records, level: .info),
                metrics: metrics
            )
            let fenced = try client.makeLock("app:fenced", options: LockOptions(tries: 1, fencing: true))
            let plain = try client.makeLock("app:plain", options: LockOptions(tries: 1))
            // Redis names no key in its refusal: the error does (the counter is the one missing).
            let refusal = await #expect(throws: RedlockError.self) { try await fenced.tryLock() }
            #expect(refusal?.nodes.allSatisfy { "\($0)".contains("the call's keys: app:fenced, redlock:fence") } == true, "\(String(describing: refusal))")
            for _ in 0..<50 {
                _ = try? await fenced.tryLock()
                let lease = try await plain.lock()
                try await plain.unlock(lease)
            }
            // A refusal that came after its attempt was decided (by the others) is counted when
            // it comes: a PING on each connection is answered after it.
            _ = await client.checkNodes()
            let warnings = untimedLines(records).filter { $0.hasPrefix("warning") }
            #expect(warnings.count == 3 && warnings.allSatisfy { $0.contains("NOPERM") }, "\(untimedLines(records))")
            #expect(!untimedLines(records).contains { $0.hasPrefix("info") }, "\(untimedLines(records))")
            // Logged once, counted every time: the first tryLock and the 50 in the loop.
            #expect(metrics.counterTotal(label: "redlock_node_failures_total", dimensions: [("node", "0"), ("kind", "errorReply")]) == 51)
            await client.shutdown()
        }
    }

    @Test("a node answering after the attempts' budget (its votes never count) is a warning once, with its time, and an info once it answers within the budget for the quiet period (before: nothing at any level)")
    func lateNodeLogged() async throws {
        try await withRedisServers(5) { servers throws in
            let proxy = try FaultProxy.start(to: servers[4].endpoint)
            defer { proxy.stop() }
            let records = Locked<[String]>([])
            let configurations = servers.prefix(4).map { $0.configuration() } + [RedisConnectionConfiguration(endpoint: proxy.endpoint)]
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: configurations, logger: capturingLogger(into: records, level: .info), metrics: metrics)
            client.setRefusalQuietPeriod(.milliseconds(300))
            // A 200 ms budget (4 s × 0.05); the proxied node's replies come 300 ms late (each
            // direction is delayed 150 ms).
            let lock = try client.makeLock("late", options: LockOptions(expiry: .seconds(4), tries: 1))
            // Connected first: a connect through the latency takes several round trips.
            try await cycles(lock, count: 1, spacing: .zero)
            proxy.set(.latency(.milliseconds(150)))
            // Until the first late reply is in (at most 5 s), then a few more.
            let warned = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < warned, !records.value.contains(where: { $0.hasPrefix("warning") && $0.contains("\(proxy.endpoint)") }) {
                try await cycles(lock, count: 1, spacing: .milliseconds(50))
            }
            try await cycles(lock, count: 3, spacing: .milliseconds(50))
            // (Another node's reply may be late too on a loaded machine: only the proxied one's count.)
            let warnings = records.value.filter { $0.hasPrefix("warning") && $0.contains("\(proxy.endpoint)") }
            // From the write of its command to the kernel's receive time of its reply (TCP), the
            // node (its network: the proxy) was slow, not this process (said so when the reply
            // came alone in its read, else the line leaves it open).
            #expect(warnings.count == 1 && warnings.allSatisfy { $0.contains("after the attempt's time budget") && !$0.contains("though the node answered in time") }, "\(records.value)")
            #expect(metrics.counterTotal(label: "redlock_replies_read_late_total") == 0)
            // Counted per node and kind (the proxy delays replies one after another: how many have
            // come by now varies).
            #expect(metrics.counterTotal(label: "redlock_node_failures_total", dimensions: [("node", "4"), ("kind", "late")]) >= 1)
            proxy.set(.none)
            // Until the node's replies have come in time for the quiet period (a loaded machine
            // may make one late again): at most 5 s.
            let until = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < until, !records.value.contains(where: { $0.hasPrefix("info") && $0.contains("\(proxy.endpoint)") }) {
                try await cycles(lock, count: 1, spacing: .milliseconds(100))
            }
            let infos = records.value.filter { $0.hasPrefix("info") && $0.contains("\(proxy.endpoint)") }
            #expect(infos.count == 1 && infos.allSatisfy { $0.contains("within the attempts' budget again") }, "\(records.value)")
            await client.shutdown()
        }
    }

    @Test("replies the nodes sent in time but this process read after the attempts' budget (the event loop's thread held while an unlock was out) blame no node: one warning that this process is short of CPU, counted in redlock_replies_read_late_total, and an info once it handles them in time for the quiet period (before: every node named as late)")
    func lateReadBlamesNoNode() async throws {
        try await withRedisServers(3) { servers throws in
            let records = Locked<[String]>([])
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, logger: capturingLogger(into: records, level: .info), metrics: metrics)
            client.setRefusalQuietPeriod(.milliseconds(300))
            // A 100 ms budget (2 s × 0.05): a node would have to be 100 ms late to be blamed.
            let lock = try client.makeLock("read-late", options: LockOptions(expiry: .seconds(2), tries: 1))
            try await cycles(lock, count: 1, spacing: .zero)
            let lease = try await lock.lock()
            // Every node's reply to the lock read (a PING behind it on each connection): the
            // unlock finds each connection idle and its caller writes it at once.
            _ = await client.checkNodes()
            // Replies carry their arrival times by now (the kernel switches receive timestamps on
            // a moment after the first socket asks; without one, a reply read late cannot be told
            // from a late node).
            #expect(await awaitReplyArrivalTimes(on: client.nodes), "the kernel gave the replies no arrival time for 5 s")
            // The event loop's thread held for 300 ms from before the unlock is written until
            // long after its replies came: they wait in the sockets, each alone (an unlock that
            // fails sends nothing more), and are read after its 100 ms budget.
            let holding = Locked(false)
            let hold = Task(executorPreference: client.executor) {
                holding.update { $0 = true }
                let until = ContinuousClock.now + .milliseconds(300)
                while ContinuousClock.now < until {}
            }
            while !holding.value { await Task.yield() }
            await #expect(throws: RedlockError.self) { try await lock.unlock(lease) }
            await hold.value
            // Read by now, or within moments.
            let read = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < read, !records.value.contains(where: { $0.contains("though the node answered in time") })
                || metrics.counterTotal(label: "redlock_replies_read_late_total") < 3 {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(records.value.filter { $0.contains("though the node answered in time") }.count == 1, "\(records.value)")
            // Each node's unlock reply (and any later one a loaded machine reads late).
            #expect(metrics.counterTotal(label: "redlock_replies_read_late_total") >= 3)
            // No node was blamed for it.
            #expect(!records.value.contains { $0.contains("after the attempt's time budget") && !$0.contains("though the node answered in time") }, "\(records.value)")
            for node in 0..<3 {
                #expect(metrics.counterTotal(label: "redlock_node_failures_total", dimensions: [("node", "\(node)"), ("kind", "late")]) == 0)
            }
            // (The lease's keys expire within 2 s.)
            try await Task.sleep(for: .seconds(2))
            let until = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < until, !records.value.contains(where: { $0.contains("handles the nodes' replies within the attempts' budget again") }) {
                try await cycles(lock, count: 1, spacing: .milliseconds(100))
            }
            #expect(records.value.filter { $0.hasPrefix("info") && $0.contains("handles the nodes' replies within the attempts' budget again") }.count == 1, "\(records.value)")
            await client.shutdown()
        }
    }

    /// `count` lock + unlock cycles of `lock`, `spacing` apart.
    private func cycles(_ lock: DistributedLock, count: Int, spacing: Duration) async throws {
        for _ in 0..<count {
            let lease = try await lock.lock()
            try await lock.unlock(lease)
            try await Task.sleep(for: spacing)
        }
    }

    @Test("a client shut down with acquires and releases in flight logs no node as not answering: the shutdown says nothing of the nodes")
    func shutdownLogsNoFailure() async throws {
        try await withRedisServers(3) { servers throws in
            for round in 0..<5 {
                let records = Locked<[String]>([])
                let client = try RedlockClient(nodes: servers.map { $0.configuration() }, logger: capturingLogger(into: records))
                let lock = try client.makeLock("shutdown-\(round)", options: testOptions(tries: 1))
                let started = Locked(0)
                let cycles = (0..<20).map { _ in
                    Task {
                        started.update { $0 += 1 }
                        for _ in 0..<50 {
                            guard let lease = try? await lock.lock() else { continue }
                            try? await lock.unlock(lease)
                        }
                    }
                }
                while started.value < 20 { await Task.yield() }
                await client.shutdown()
                for cycle in cycles { await cycle.value }
                #expect(!untimedLines(records).contains { $0.hasPrefix("warning") || $0.hasPrefix("info") }, "\(untimedLines(records))")
            }
        }
    }

    @Test(
        "one server listed under two names votes once: with the third node down, a fenced lock() gets no quorum from the pair; the second name's connection is refused with invalidAddress naming both, logged once at error; with the third up, locks work and leave no key",
        arguments: ["localhost", "its Unix socket"]
    )
    func serverListedTwice(secondAddress: String) async throws {
        try await withRedisServers(2) { servers throws in
            // localhost reaches the address 127.0.0.1 does; the Unix socket another address of
            // the same server (its run_id tells).
            var alias = secondName(of: servers[0])
            if secondAddress == "its Unix socket" { alias.endpoint = servers[0].unixSocketEndpoint }
            let records = Locked<[String]>([])
            let logger = capturingLogger(into: records, level: .info)
            let client = try RedlockClient(nodes: [servers[0].configuration(), alias, servers[1].configuration()], logger: logger)
            // Fenced: its acquire script counts a node that already holds the value as granted,
            // so the second name of a server that granted would grant again.
            let options = LockOptions(expiry: .seconds(5), tries: 3, retryDelay: .constant(.milliseconds(20)), fencing: true)
            let lock = try client.makeLock("listed-twice", options: options)
            for _ in 0..<3 {
                let lease = try await lock.lock()
                _ = try await lock.extend(lease)
                try await lock.unlock(lease)
            }
            #expect(try await values(of: lock.name, on: servers).allSatisfy { $0 == nil })

            await servers[1].kill()
            let error = await #expect(throws: RedlockError.self) { try await lock.lock() }
            #expect(error?.code == .noQuorum, "\(String(describing: error))")
            let refused = error?.nodes.filter { $0.cause.error?.code == .invalidAddress } ?? []
            #expect(refused.count == 1 && refused.allSatisfy { [0, 1].contains($0.node) && "\($0)".contains("the same server as node") }, "\(String(describing: error))")
            let errors = records.value.filter { $0.hasPrefix("error") }
            let shared = secondAddress == "localhost" ? "127.0.0.1:\(servers[0].port)" : "the server with run_id "
            #expect(errors.count == 1 && errors.allSatisfy { $0.contains("listed twice") && $0.contains(shared) }, "\(errors)")
            #expect(try await values(of: lock.name, on: [servers[0]]) == [nil])
            // The audit names the pair although it could not ask the refused name for its run id.
            let audits = await client.audit(for: lock)
            let distinct = audits.compactMap { audit in audit.checks.first { $0.name == "distinct" }.map { (audit.node, $0) } }
            #expect(distinct.contains { [0, 1].contains($0.0) && $0.1.verdict == .fail && $0.1.detail.contains("the same server as node") }, "\(audits)")
            await client.shutdown()
        }
    }

    @Test("one server listed under two addresses votes once across its restart, when the listing refused before it gets the new run_id first: with the third node down, no fenced lock() gets a quorum from the pair, the listing that held before the restart is refused once it reconnects; with the third node up again, locks work and leave no key")
    func serverListedTwiceAcrossRestart() async throws {
        // Each proxy can keep its listing from connecting (hangUp) to choose which listing gets
        // the server first.
        try await withServerListedTwice { servers, first, second, client in
            let lock = try client.makeLock("listed-twice-restart", options: LockOptions(expiry: .seconds(5), tries: 1, fencing: true))
            /// Node `index`'s failure is a refusal as the same server as another node's.
            func refused(_ index: Int, in failures: [NodeFailure]) -> Bool {
                failures.contains { $0.node == index && $0.cause.error?.code == .invalidAddress }
            }

            // The first listing connects first and holds the server's run_id.
            second.set(.hangUp(afterBytes: 0))
            try await lock.unlock(try await lock.lock())
            await servers[1].kill()
            second.set(.none)
            #expect(await failingAttempts(of: lock) { refused(1, in: $0) && !$0.contains { $0.node == 0 } } == 5, "the second listing is refused")

            // A restart (a new run_id) while only the second listing can reach the server: it
            // holds the new run_id; the first is refused once it reconnects.
            first.set(.hangUp(afterBytes: 0))
            try await servers[0].restart(keepingData: false)
            #expect(await failingAttempts(of: lock) { !$0.contains { $0.node == 1 } } == 5, "the second listing votes")
            first.set(.none)
            #expect(await failingAttempts(of: lock) { refused(0, in: $0) && !$0.contains { $0.node == 1 } } == 5, "the first listing is refused, the second still votes")

            try await servers[1].restart(keepingData: false)
            try await lock.unlock(try await eventuallyLocked(lock, "no lock once the third node was back"))
            #expect(try await values(of: lock.name, on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("one server listed twice (two proxies) hides its run_id after both listings told it (+info revoked, its connections ended): neither listing is let through without it, so with the third node down no lock() gets a quorum from that server (without the rule: two addresses, no run_id to compare, two votes); with +info granted again, still one vote (the listings' run_ids compared again); with the third node back, locks work")
    func serverListedTwiceHidingItsRunID() async throws {
        try await withServerListedTwice { servers, _, _, client in
            let lock = try client.makeLock("listed-twice-hidden", options: LockOptions(expiry: .seconds(5), tries: 1))
            func cause(_ node: Int, _ failures: [NodeFailure]) -> RedisError.Code? {
                failures.first { $0.node == node }?.cause.error?.code
            }
            // Both listings connect and tell the run_id: one holds the server, the other is refused.
            let statuses = await client.checkNodes()
            #expect(statuses.filter { (try? $0.result.get()) == nil }.count == 1, "\(statuses)")
            _ = try await servers[0].run(RedisCommand("ACL", "SETUSER", "default", "-info"))
            for type in ["normal", "pubsub"] {
                _ = try await servers[0].run(RedisCommand("CLIENT", "KILL", "TYPE", type))
            }
            await servers[1].kill()
            // Once the refusal held from checkNodes() has passed: both listings refused for
            // want of a run_id. The third node's refusal and one listing's decide an attempt
            // (failFast) before a slow answer from the other, which then tells nothing.
            #expect(
                await failingAttempts(
                    of: lock, until: { cause(0, $0) == .unexpectedReply && cause(1, $0) == .unexpectedReply },
                    inconclusive: { failures in cause(0, failures) == nil || cause(1, failures) == nil }
                ) == 5,
                "both listings refused"
            )
            _ = try await servers[0].run(RedisCommand("ACL", "SETUSER", "default", "+info"))
            // The run_id told again: one listing holds the server, the other is refused as the same.
            #expect(
                await failingAttempts(of: lock) { [cause(0, $0), cause(1, $0)].filter { $0 == .invalidAddress }.count == 1 } == 5,
                "one listing votes, the other is refused as the same server"
            )
            try await servers[1].restart(keepingData: false)
            try await lock.unlock(try await eventuallyLocked(lock, "no lock once the third node was back"))
        }
    }

    /// Runs `body` with two servers and a client whose nodes are the first server through two
    /// proxies (two addresses, one run_id: `first`, `second`) and the second server; shuts the
    /// client down and stops the proxies after it.
    private func withServerListedTwice(
        _ body: (_ servers: [RedisServer], _ first: FaultProxy, _ second: FaultProxy, _ client: RedlockClient) async throws -> Void
    ) async throws {
        try await withRedisServers(2) { servers throws in
            let (first, second) = (try FaultProxy.start(to: servers[0].endpoint), try FaultProxy.start(to: servers[0].endpoint))
            defer {
                first.stop()
                second.stop()
            }
            var (viaFirst, viaSecond) = (servers[0].configuration(), servers[0].configuration())
            viaFirst.endpoint = first.endpoint
            viaSecond.endpoint = second.endpoint
            let client = try RedlockClient(nodes: [viaFirst, viaSecond, servers[1].configuration()])
            try await withTeardown {
                try await body(servers, first, second, client)
            } teardown: {
                await client.shutdown()
            }
        }
    }

    /// Attempts of `lock`, each of which must fail with no quorum (one server listed twice
    /// votes once; the third node is down), every 20 ms until `settled` holds for the failures
    /// of one, then for four more (and only then), within 10 s; how many held. An attempt for
    /// which `inconclusive` holds (decided before a node it looks at answered: failFast leaves
    /// such a node out of the failures) counts neither way.
    private func failingAttempts(
        of lock: DistributedLock, until settled: ([NodeFailure]) -> Bool, inconclusive: ([NodeFailure]) -> Bool = { _ in false }
    ) async -> Int {
        var held = 0
        let giveUp = ContinuousClock.now + .seconds(10)
        while held < 5, ContinuousClock.now < giveUp {
            let error = await #expect(throws: RedlockError.self, "a lease from one server listed twice") { try await lock.lock() }
            #expect(error?.code == .noQuorum, "\(String(describing: error))")
            if inconclusive(error?.nodes ?? []) {
                try? await Task.sleep(for: .milliseconds(20))
            } else if settled(error?.nodes ?? []) {
                held += 1
            } else {
                #expect(held == 0, "settled, then not: \(String(describing: error))")
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        return held
    }

    /// A lease of `lock`, tried every 20 ms for up to 3 s; fails the test with `message`
    /// without one.
    private func eventuallyLocked(_ lock: DistributedLock, _ message: Comment) async throws -> Lease {
        var lease: Lease?
        for _ in 0..<150 where lease == nil {
            lease = try? await lock.lock()
            if lease == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        return try #require(lease, message)
    }

    @Test("one server listed over TCP and over its Unix socket subscribes once (its run_id): a fair lock's handoff from it counts once, so with the third node frozen a waiter gets no lease from that server's one message (before: two subscribers, two messages, a lease on one server)")
    func handoffFromServerListedTwiceCountsOnce() async throws {
        try await withRedisServers(2) { servers throws in
            var alias = servers[0].configuration()
            alias.endpoint = servers[0].unixSocketEndpoint
            let nodes = [servers[0].configuration(), alias, servers[1].configuration()]
            let (holder, waiting) = (try RedlockClient(nodes: nodes), try RedlockClient(nodes: nodes))
            let name = "listed-twice-fair"
            let options = LockOptions(expiry: .seconds(10), retryDelay: .constant(.seconds(3)), fair: true)
            let held = try await holder.makeLock(name, options: options).lock()
            let lock = try waiting.makeLock(name, options: options)
            let waiter = Task { () async throws(RedlockError) -> Lease in try await lock.lock(timeout: .seconds(4)) }
            // Queued on the server (and subscribed) before the holder lets go.
            var queued = false
            for _ in 0..<500 where !queued {
                queued = try await servers[0].run(RedisCommand("ZCARD", Scripts.queueKey(name))) == .integer(1)
                if !queued { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(queued)
            // As many subscribers on that server as on the other: one per client, not one per
            // listing (looked at until both clients have subscribed on both, for up to 5 s: a
            // client subscribes when it first needs to, and a refused listing's subscriber shows
            // until its vet closes it).
            var subscribers: [String] = []
            func counts() -> [Int] { subscribers.map { $0.split(separator: "\n").count } }
            for _ in 0..<500 where subscribers.count < 2 || counts()[0] != counts()[1] || subscribers.contains(where: \.isEmpty) {
                subscribers = []
                for server in servers {
                    subscribers.append(try await server.run(RedisCommand("CLIENT", "LIST", "TYPE", "pubsub")).string ?? "")
                }
                if counts()[0] != counts()[1] || subscribers.contains(where: \.isEmpty) { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(counts()[0] == counts()[1], "\(subscribers)")
            #expect(!subscribers[1].isEmpty, "\(subscribers)")
            try await servers[1].pause()
            _ = try? await holder.makeLock(name, options: options).unlock(held)
            let outcome = await waiter.result
            try servers[1].resume()
            if case let .success(lease) = outcome {
                Issue.record("the waiter got a lease from one server's handoff: \(lease)")
                try? await lock.unlock(lease)
            }
            await holder.shutdown()
            await waiting.shutdown()
        }
    }

    @Test("a node that stops answering keeps its server's address while any of its sockets is open there: the second name is still refused, and with the third node down a fenced lock() gets no quorum from one server (before: the second name took the address over while the first name's idle connection still voted)")
    func secondNameWaitsForEverySocketOfTheFirst() async throws {
        try await withRedisServers(2) { servers throws in
            // Command timeout 1 s (the default), longer than a lock()'s attempt (400 ms here).
            let alias = secondName(of: servers[0])
            let client = try RedlockClient(nodes: [servers[0].configuration(), alias, servers[1].configuration()])
            let fenced = LockOptions(expiry: .seconds(5), tries: 1, fencing: true)
            let lock = try client.makeLock("held-while-open", options: fenced)
            try await lock.unlock(try await lock.lock())
            // The name that connected first now also has a connection on the lane of locks that
            // wait for replicas (refused for want of replicas, which does not matter here).
            // (Its attempt, 5 % of a 30 s expiry, outlasts the node's 1 s command timeout.)
            let acknowledged = try client.makeLock(
                "acknowledged", options: LockOptions(expiry: .seconds(30), tries: 1, failFast: false, replicaAcknowledgements: 1)
            )
            _ = await failureAndTime(of: acknowledged)
            try await servers[0].pause()
            // That lane times out: its name counts as not answering, while its idle shared
            // connection stays open. (This takes over a second: the second name's last refusal,
            // which stands for a second, has lapsed by then.)
            _ = await failureAndTime(of: acknowledged)
            // A lock() on the shared lane: the second name connects (through the listen backlog)
            // and must be refused. The first name's command waits on its open connection, past
            // the lock()'s end, and is answered once the server resumes.
            _ = await failureAndTime(of: try client.makeLock("meanwhile", options: LockOptions(tries: 1)))
            try servers[0].resume()
            await servers[1].kill()
            let (code, _) = await failureAndTime(of: lock)
            #expect(code == .noQuorum, "one server voted twice")
            await client.shutdown()
        }
    }

    @Test("distinct servers are never refused as one: three servers that each bind the same relative socket path (redis.sock in their own directory), reached by their absolute paths, all vote")
    func sameBoundPathIsNotOneServer() async throws {
        try await withRedisServers(3, arguments: ["--unixsocket", "redis.sock"]) { servers throws in
            let client = try RedlockClient(nodes: servers.map { RedisConnectionConfiguration(endpoint: $0.unixSocketEndpoint) })
            let lock = try client.makeLock("bound-alike", options: LockOptions(expiry: .seconds(5), tries: 1, failFast: false))
            for _ in 0..<3 {
                let lease = try await lock.lock()
                #expect(try await values(of: lock.name, on: servers).allSatisfy { $0 == lease.value })
                try await lock.unlock(lease)
            }
            await client.shutdown()
        }
    }
}

/// `server`'s configuration under another name of it: `localhost` rather than 127.0.0.1.
func secondName(of server: RedisServer) -> RedisConnectionConfiguration {
    var configuration = server.configuration()
    configuration.endpoint = .hostname("localhost", port: server.port)
    return configuration
}

/// What `lock.lock()` failed with (nil: it acquired, and the lease is left to expire) and how
/// long the call took.
func failureAndTime(of lock: DistributedLock) async -> (RedlockError.Code?, Duration) {
    let started = ContinuousClock.now
    do throws(RedlockError) {
        _ = try await lock.lock()
        return (nil, started.duration(to: .now))
    } catch {
        return (error.code, started.duration(to: .now))
    }
}

/// A logger at `level` whose lines go to `records` (``CapturingLogHandler``).
func capturingLogger(into records: Locked<[String]>, level: Logger.Level = .trace) -> Logger {
    var logger = Logger(label: "test") { _ in CapturingLogHandler(records: records) }
    logger.logLevel = level
    return logger
}

/// `records`' lines but those about replies later than their attempt's budget: a loaded
/// machine can make any node's reply late, or read late (``NodeHealth/answeredLate(_:after:nodeTime:budget:)``), which
/// tests of other lines do not look at.
func untimedLines(_ records: Locked<[String]>) -> [String] {
    records.value.filter { !$0.contains("after the attempt's time budget") && !$0.contains("within the attempts' budget again") }
}

/// Records every log line as "LEVEL MESSAGE METADATA".
struct CapturingLogHandler: LogHandler {

    let records: Locked<[String]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        records.update { $0.append("\(event.level) \(event.message) \(event.metadata ?? [:])") }
    }
}

/// How many subscribers `channel` has on each server, asked with a separate connection.
func subscriberCounts(_ channel: String, on servers: [RedisServer]) async throws -> [Int64] {
    var counts: [Int64] = []
    for server in servers {
        let connection = RedisConnection(configuration: server.configuration())
        let reply: RedisValue
        do {
            reply = try await connection.send(RedisCommand("PUBSUB", "NUMSUB", channel))
            await connection.shutdown()
        } catch {
            await connection.shutdown()
            throw error
        }
        guard case let .array(parts) = reply, parts.count == 2, let count = parts[1].integer else {
            throw RedisError(code: .unexpectedReply, endpoint: server.configuration().endpoint, message: "PUBSUB NUMSUB returned \(reply)")
        }
        counts.append(count)
    }
    return counts
}

/// Returns once `channel` has a subscriber on every server: a waiting `lock()` subscribes once
/// its first attempt failed, right after it starts waiting for a release.
/// Runs `body` with a holder of `name` in a client of its own, which reaches nodes 1–4 of
/// `servers` through proxies (to hold its release back): its lease, on every node, and the
/// proxies. A first round of `subscribing` (a lock of the waiters' client) subscribes that client
/// to the name's releases; the subscription lingers through `body`.
func withHeldBackRelease(
    of name: String, on servers: [RedisServer], subscribing: DistributedLock,
    _ body: (DistributedLock, Lease, [FaultProxy]) async throws -> Void
) async throws {
    let proxies = try servers.dropFirst().map { try FaultProxy.start(to: $0.endpoint) }
    defer { for proxy in proxies { proxy.stop() } }
    let holderClient = try RedlockClient(nodes: [servers[0].configuration(commandTimeout: .seconds(10))] + proxies.map {
        RedisConnectionConfiguration(endpoint: $0.endpoint, commandTimeout: .seconds(10))
    })
    try await withTeardown {
        let holder = try holderClient.makeLock(name, options: LockOptions(expiry: .seconds(30), timeoutFactor: 0.5))
        let warmUp = try await holder.lock()
        let subscribed = Task { try await subscribing.lock() }
        try await untilSubscribed(Scripts.releaseChannel(name), on: servers)
        try await holder.unlock(warmUp)
        try await subscribing.unlock(subscribed.value)
        // unlock() returns once a quorum deleted: the next lock() must find every node free.
        try await untilEveryNode(of: servers, holds: nil, at: name)
        let lease = try await holder.lock()
        // lock() returns once a quorum granted: the holder's last SETs may still be on their way.
        try await untilEveryNode(of: servers, holds: lease.value, at: name)
        try await body(holder, lease, proxies)
    } teardown: {
        for proxy in proxies { proxy.set(.none) }
        await holderClient.shutdown()
    }
}

/// Returns once every node of `servers` holds `value` (nil: nothing) at `key`; fails after 5 s.
func untilEveryNode(of servers: [RedisServer], holds value: String?, at key: String) async throws {
    let giveUp = ContinuousClock.now + .seconds(5)
    var found = try await values(of: key, on: servers)
    while found.contains(where: { $0 != value }) {
        try #require(ContinuousClock.now < giveUp, "\(key) is not \(value ?? "free") on every node: \(found)")
        try await Task.sleep(for: .milliseconds(1))
        found = try await values(of: key, on: servers)
    }
}

func untilSubscribed(_ channel: String, on servers: [RedisServer]) async throws {
    let giveUp = ContinuousClock.now + .seconds(10)
    while try await subscriberCounts(channel, on: servers).contains(0) {
        try #require(ContinuousClock.now < giveUp, "nobody subscribed to \(channel)")
        try await Task.sleep(for: .milliseconds(5))
    }
}

extension Result {
    /// The error of a failure, nil for a success.
    var failure: Failure? {
        if case let .failure(error) = self { return error }
        return nil
    }
}
