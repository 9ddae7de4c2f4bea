import Foundation
import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

@Suite("Network partitions through fault proxies")
struct PartitionTests {
    @Test("a holder cut off from every node (which run on and expire its keys) stops its body before a client that sees every node gets the lock")
    func blackHoledHolder() async throws {
        try await withRedisServers(3) { servers throws in
            let proxies = try servers.map { try FaultProxy.start(to: $0.endpoint) }
            defer { for proxy in proxies { proxy.stop() } }
            let cutOff = try RedlockClient(nodes: proxies.map {
                RedisConnectionConfiguration(endpoint: $0.endpoint, connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(300))
            })
            let other = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) })
            try await withTeardown {
                // A 500 ms safety margin: the body is cancelled that long before the lease's
                // validity ends, time for a loaded machine to run it to its end (with the 50 ms
                // default, a beat taken late by a task resumed late could land in the next lease).
                let lock = try cutOff.makeLock("partitioned", options: testOptions(expiry: .seconds(3), timeoutFactor: 0.05))
                let lastBeat = Locked<ContinuousClock.Instant?>(nil)
                let started = OneTimeEvent<Void>()
                let holder = Task {
                    try await lock.withLock(safetyMargin: .milliseconds(500)) { _ -> Void in
                        started.fire()
                        while true {
                            lastBeat.update { $0 = .now }
                            try await Task.sleep(for: .milliseconds(5))
                        }
                    }
                }
                await started.wait()
                // Black hole both ways: the holder hears nothing, its extensions never arrive.
                for proxy in proxies { proxy.set(.stall([.toNode, .toClient])) }
                let next = try await other.makeLock("partitioned", options: testOptions(expiry: .seconds(5), tries: 100_000)).lock()
                let error = await #expect(throws: RedlockError.self) { try await holder.value }
                #expect(error?.code == .leaseLost)
                let beat = try #require(lastBeat.value)
                print("black-holed holder: last beat \(beat.duration(to: next.acquiredAt)) before the next holder's lease")
                #expect(beat < next.acquiredAt, "the cut-off body ran \(next.acquiredAt.duration(to: beat)) into the next lease")
                try await other.makeLock("partitioned", options: testOptions()).unlock(next)
            } teardown: {
                for proxy in proxies { proxy.set(.none) }
                await cutOff.shutdown()
                await other.shutdown()
            }
        }
    }

    @Test(
        "a failed attempt's clean-up, held in the network when the command timeout closed its connection, cannot delete the grant a retry of the same lock() got on the next connection: the next connection ends the old one on the node first",
        arguments: [false, true]
    )
    func cleanUpBehindBrokenPath(fencing: Bool) async throws {
        try await withRedisServers(1) { servers throws in
            let proxy = try FaultProxy.start(to: servers[0].endpoint)
            defer { proxy.stop() }
            let client = try RedlockClient(nodes: [
                RedisConnectionConfiguration(endpoint: proxy.endpoint, connectTimeout: .seconds(2), commandTimeout: .milliseconds(300)),
            ])
            try await withTeardown {
                var options = LockOptions(expiry: .seconds(4), tries: 10, retryDelay: .constant(.milliseconds(250)), timeoutFactor: 0.025)
                options.fencing = fencing
                let lock = try client.makeLock("retried", options: options)
                // The connection is open when its path breaks: the first attempt (100 ms) and its
                // clean-up are written there and held; the command timeout closes it at 300 ms,
                // and the next attempt (at 350 ms) goes on a new connection, which gets through.
                try await lock.unlock(lock.lock())
                proxy.set(.stallOpen([.toNode, .toClient]))
                let lease = try await lock.lock()
                // The path heals: the old connection's bytes reach the node (or find it closed).
                proxy.set(.none)
                #expect(await eventually { proxy.openCount <= 1 })
                #expect(try await servers[0].value(of: "retried") == lease.value, "a clean-up of an earlier attempt deleted the lease's key")
                try await lock.unlock(lease)
            } teardown: {
                proxy.set(.none)
                await client.shutdown()
            }
        }
    }

    @Test("a lease handed off stops its client from sending the value's lost clean-ups again: the process that re-attached it keeps its key on the node the clean-ups were lost to")
    func handoffEndsReplays() async throws {
        try await withRedisServers(3) { servers throws in
            let proxy = try FaultProxy.start(to: servers[0].endpoint)
            defer { proxy.stop() }
            let direct = servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) }
            let a = try RedlockClient(nodes: [
                RedisConnectionConfiguration(endpoint: proxy.endpoint, connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(300)),
            ] + direct.dropFirst())
            let b = try RedlockClient(nodes: direct)
            try await withTeardown {
                let options = LockOptions(expiry: .seconds(6), tries: 20, retryDelay: .constant(.milliseconds(250)), timeoutFactor: 0.1, fastHandoff: false)
                let lockA = try a.makeLock("handed", options: options)
                // A's connection to node 0 is open before its path stalls. The quorum of nodes 1
                // and 2 decides the lock and unlock while node 0's connect is still under way (on a
                // busy machine; here always, the path slowed 40 ms each way), and commands queued
                // behind a connect that then fails were never sent: they leave nothing to replay.
                proxy.set(.latency(.milliseconds(40)))
                try await lockA.unlock(lockA.lock())
                #expect(try await a.nodes[0].send(RedisCommand("PING")) == .simpleString("PONG"))
                proxy.set(.none)
                // Node 1 is held by someone else for a moment, node 0 out of A's reach: A's first
                // attempts fail, their clean-ups for node 0 are lost, and it wins on nodes 1 and 2.
                _ = try await servers[1].run(RedisCommand("SET", "handed", "someone else", "PX", "700"))
                proxy.set(.stall([.toNode, .toClient]))
                let lease = try await lockA.lock()
                #expect(await eventually { a.nodes[0].pendingReplays > 0 }, "the clean-ups wait for the next connection")
                // The old connections go, with the bytes the network held for them.
                proxy.resetConnections()
                // A hands the lease over; B re-attaches it, node 0 included (waiting for every
                // node's answer).
                var reattaching = options
                reattaching.failFast = false
                let leaseB = try await b.makeLock("handed", options: reattaching).reattach(lease.handoff)
                #expect(try await servers[0].value(of: "handed") == lease.value)
                // A's path heals and A talks to node 0 again (a connect begun before the reset
                // may still fail).
                proxy.set(.none)
                var answered = false
                for _ in 0..<20 where !answered {
                    answered = (try? await a.nodes[0].send(RedisCommand("PING"))) == .simpleString("PONG")
                    if !answered { try await Task.sleep(for: .milliseconds(50)) }
                }
                #expect(answered)
                #expect(a.nodes[0].pendingReplays == 0)
                #expect(try await servers[0].value(of: "handed") == lease.value, "a clean-up A lost deleted the key B's re-attach counted")
                try await b.makeLock("handed", options: options).unlock(leaseB)
            } teardown: {
                proxy.set(.none)
                await a.shutdown()
                await b.shutdown()
            }
        }
    }

    @Test("a node frozen past the command timeout under load keeps no key once it answers again: of the many releases lost to it, those that follow acquires it may have run are sent again")
    func frozenNodeUnderLoadKeepsNoKeys() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) })
            try await withTeardown {
                _ = await client.checkNodes()
                try await servers[2].pause()
                // Long enough for the frozen node's connection to be lost (the command timeout)
                // and for more releases to be lost to it than a connection keeps for replay.
                let started = ContinuousClock.now
                let cycles = Locked(0)
                func goOn() -> Bool {
                    let elapsed = started.duration(to: .now)
                    return elapsed < .seconds(30) && (elapsed < .milliseconds(2_500) || cycles.value < 2 * RedisConnection.maximumReplays)
                }
                try await withThrowingTaskGroup { group in
                    for task in 0..<64 {
                        group.addTask {
                            var index = 0
                            while goOn() {
                                index += 1
                                let lock = try client.makeLock("frozen-load-\(task)-\(index)", options: LockOptions(expiry: .seconds(60), tries: 1))
                                try await lock.unlock(try await lock.lock())
                                cycles.update { $0 += 1 }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                try servers[2].resume()
                // The node's next command goes after the order barrier and the replays.
                // (A connect begun while it was frozen may fail first.)
                var answered = false
                for _ in 0..<10 where !answered { answered = (try? await client.checkNodes()[2].result.get()) != nil }
                #expect(answered)
                let left = try await servers[2].run(RedisCommand("KEYS", "frozen-load-*"))
                guard case let .array(keys) = left else { Issue.record("KEYS: \(left)"); return }
                #expect(keys.isEmpty, "\(keys.count) keys left after \(cycles.value) cycles")
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test(
        "a frozen node that never got many acquires (its full queue refused them, or its lost connection's reconnects failed under them) does not crowd out the releases it needs: those acquires' clean-ups and unlocks are not kept for it, so the room goes to the leases it holds",
        arguments: ["full queue", "lost connection"]
    )
    func releasesForTheKeysANodeHolds(way: String) async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { server in
                if way == "lost connection" { return server.configuration(connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(500)) }
                var configuration = server.configuration(connectTimeout: .milliseconds(300), commandTimeout: .seconds(60))
                configuration.maximumQueuedCommands = 8
                return configuration
            })
            try await withTeardown {
                _ = await client.checkNodes()
                try await servers[2].pause()
                // Eight leases whose acquires were written to the frozen node (it will set their
                // keys when it wakes).
                var held: [(DistributedLock, Lease)] = []
                for index in 0..<8 {
                    let lock = try client.makeLock("held-\(index)", options: LockOptions(expiry: .seconds(30), tries: 1))
                    held.append((lock, try await lock.lock()))
                }
                if way == "lost connection" {
                    // Their connection is lost (the command timeout): what comes next waits for
                    // reconnects that fail.
                    #expect(await eventually(within: .seconds(10)) { client.nodes[2].waitingCommands == 0 })
                }
                // More acquires the node never gets than the room for releases past them.
                await cycleFreshLocks(on: client, prefix: "never", until: RedisConnection.maximumReplays + 500) { _, _ in
                    LockOptions(expiry: .seconds(30), tries: 1)
                }
                // (Lost: the connect they wait for fails.)
                if way == "lost connection" { #expect(await eventually(within: .seconds(10)) { client.nodes[2].waitingCommands == 0 }) }
                for (lock, lease) in held { try await lock.unlock(lease) }
                if way == "lost connection" { #expect(await eventually(within: .seconds(10)) { client.nodes[2].waitingCommands == 0 }) }
                try servers[2].resume()
                // The node's next answer comes after everything queued or replayed before it
                // (and, past a full queue, once the queue has room again).
                var answered = false
                for _ in 0..<20 where !answered {
                    _ = await eventually(within: .seconds(5)) { client.nodes[2].waitingCommands == 0 }
                    answered = (try? await client.checkNodes()[2].result.get()) != nil
                }
                #expect(answered)
                let left = try await servers[2].run(RedisCommand("KEYS", "held-*"))
                #expect(left == .array([]), "\(left)")
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test(
        "a node that granted and went away before the command after the grant (the fencing raise, the restart guard's INFO) was written to it still gets the failed acquire's clean-up, or the lease's unlock: that command's failure says nothing of the acquire",
        // (A fenced acquire that lost a granted node's raise holds only when more nodes granted
        // than the decision waited for: no lease to unlock here.)
        arguments: zip(["fencing", "restartGuard", "restartGuard"], [false, false, true])
    )
    func grantedThenGone(check: String, acquired: Bool) async throws {
        try await withRedisServers(3) { servers throws in
            let proxies = try servers.map { try FaultProxy.start(to: $0.endpoint) }
            defer { for proxy in proxies { proxy.stop() } }
            let proxy = proxies[0]
            let configurations = proxies.map {
                RedisConnectionConfiguration(endpoint: $0.endpoint, connectTimeout: .milliseconds(300), commandTimeout: .seconds(2))
            }
            // The guard asks INFO after the grant over connections of the caller's own; a
            // vetted connection's handshake asked it already (no command after the grant).
            let connections = check == "restartGuard" ? configurations.map { RedisConnection(configuration: $0) } : []
            let client = try connections.isEmpty ? RedlockClient(nodes: configurations) : RedlockClient(connections: connections)
            try await withTeardown {
                var options = LockOptions(expiry: .seconds(30), tries: 1)
                // (A guard the fresh servers pass: nodes 1 and 2 grant.)
                if check == "fencing" { options.fencing = true } else { options.restartGuard = .nanoseconds(1) }
                var exercised = 0
                for trial in 0..<10 where exercised < 3 {
                    let name = "gone-\(trial)"
                    // Node 2 refuses: node 0, lost after granting, makes the acquire fail.
                    if !acquired { try await occupy(name, on: [servers[2]]) }
                    // Connected (the handshake's bytes are through) before the fault is set.
                    _ = try await client.nodes[0].send(RedisCommand("PING"))
                    // The acquire's reply: the counter's next value (the fenced acquire script),
                    // else SET's OK. The client reads the end of the stream with it.
                    let counter = try await servers[0].run(RedisCommand("GET", "redlock:fence")).string.flatMap { Int($0) } ?? 0
                    proxy.set(.hangUp(afterBytes: (check == "fencing" ? ":\(counter + 1)\r\n" : "+OK\r\n").utf8.count))
                    let lock = try client.makeLock(name, options: options)
                    if acquired {
                        // The lease stands on nodes 1 and 2, whose grants come once node 0's
                        // refusal is in (else it is left unsettled, and may have run anyway);
                        // its unlock is kept for node 0 too.
                        for slow in proxies.dropFirst() { slow.set(.latency(.milliseconds(50))) }
                        let accepted = proxy.acceptedCount
                        let lease = try await lock.lock()
                        // Node 0's INFO waited for a connect (the proxy closed it): never written.
                        if proxy.acceptedCount > accepted { exercised += 1 }
                        for other in proxies { other.set(.none) }
                        try await lock.unlock(lease)
                    } else {
                        let error = await #expect(throws: RedlockError.self) { _ = try await lock.lock() }
                        if error?.nodes.first(where: { $0.node == 0 })?.cause.error?.neverWritten == true { exercised += 1 }
                        proxy.set(.none)
                    }
                    // The node's next answer comes after the release kept for it.
                    #expect(await answersAgain(client.nodes[0]))
                    let left = try await servers[0].run(RedisCommand("EXISTS", name))
                    #expect(left == .integer(0), "trial \(trial): node 0 kept the key")
                }
                #expect(exercised > 0, "the command after the grant was written every time: the test tests nothing")
            } teardown: {
                await client.shutdown()
                for connection in connections { await connection.shutdown() }
            }
        }
    }

    @Test("two clients that each see a different majority (sharing one node) never hold the lock at once, and both get it")
    func differentMajorities() async throws {
        try await withRedisServers(5) { servers throws in
            func client(cutOffFrom hidden: Set<Int>) throws -> (RedlockClient, [FaultProxy]) {
                let proxies = try servers.map { try FaultProxy.start(to: $0.endpoint) }
                for index in hidden { proxies[index].set(.stall([.toNode, .toClient])) }
                let client = try RedlockClient(nodes: proxies.map {
                    RedisConnectionConfiguration(endpoint: $0.endpoint, connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(300))
                })
                return (client, proxies)
            }
            // A sees nodes 0, 1, 2; B sees 2, 3, 4.
            let (a, aProxies) = try client(cutOffFrom: [3, 4])
            let (b, bProxies) = try client(cutOffFrom: [0, 1])
            defer { for proxy in aProxies + bProxies { proxy.stop() } }
            try await withTeardown {
                let intervals = Locked<[(String, ContinuousClock.Instant, ContinuousClock.Instant)]>([])
                let stop = ContinuousClock.now + .seconds(2)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for (label, client) in [("A", a), ("B", b)] {
                        group.addTask {
                            let lock = try client.makeLock("majorities", options: testOptions(expiry: .seconds(1), timeoutFactor: 0.1))
                            while ContinuousClock.now < stop {
                                guard let lease = try? await lock.lock(timeout: .seconds(2)) else { continue }
                                let entered = ContinuousClock.now
                                try await Task.sleep(for: .milliseconds(3))
                                let left = ContinuousClock.now
                                intervals.update { $0.append((label, entered, left)) }
                                try? await lock.unlock(lease)
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let all = intervals.value.sorted { $0.1 < $1.1 }
                print("different majorities: \(all.filter { $0.0 == "A" }.count) holds by A, \(all.filter { $0.0 == "B" }.count) by B")
                #expect(all.contains { $0.0 == "A" } && all.contains { $0.0 == "B" })
                for (earlier, later) in zip(all, all.dropFirst()) {
                    #expect(earlier.2 <= later.1, "\(earlier.0) and \(later.0) held the lock at once")
                }
            } teardown: {
                await a.shutdown()
                await b.shutdown()
            }
        }
    }
}
