import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

@Suite("Redlock on real nodes")
struct LockTests {
    @Test("200 concurrent tasks increment a plain counter under the lock: exactly 200", arguments: [1, 3, 5])
    func mutualExclusion(nodeCount: Int) async throws {
        try await withLockNodes(nodeCount) { client, _ in
            // The default, early-returning path.
            let lock = try client.makeLock("counter", options: testOptions(tries: .max, failFast: true))
            let counter = try await UnsafeCounter.incremented(under: lock, tasks: 200)
            #expect(await counter.read() == 200)
            #expect(await counter.maximumInside == 1)
        }
    }

    @Test("with busy polling on, 200 tasks on the pool and 200 on the client's executor still count to exactly 200 each")
    func mutualExclusionWhilePolling() async throws {
        try await withLockNodes(3, busyPoll: .milliseconds(1)) { client, _ in
            let lock = try client.makeLock("counter", options: testOptions(tries: .max, failFast: true))
            let counter = try await UnsafeCounter.incremented(under: lock, tasks: 200)
            #expect(await counter.read() == 200)
            #expect(await counter.maximumInside == 1)
            let onLoop = try await withTaskExecutorPreference(client.executor) {
                try await UnsafeCounter.incremented(under: lock, tasks: 200)
            }
            #expect(await onLoop.read() == 200)
            #expect(await onLoop.maximumInside == 1)
        }
    }

    @Test("on 5 nodes, every subset of taken nodes gives acquire iff the free nodes reach quorum")
    func everySubset() async throws {
        try await withLockNodes(5) { client, servers in
            for mask in 0..<(1 << 5) {
                let name = "subset-\(mask)"
                let takenIndices = (0..<5).filter { mask & (1 << $0) != 0 }
                try await occupy(name, on: takenIndices.map { servers[$0] })
                let lock = try client.makeLock(name, options: testOptions())
                let free = 5 - takenIndices.count
                do {
                    let lease = try await lock.tryLock()
                    #expect(free >= 3, "acquired with only \(free) free nodes (mask \(mask))")
                    let values = try await values(of: name, on: servers)
                    for index in 0..<5 {
                        #expect(values[index] == (takenIndices.contains(index) ? "someone-else" : lease.value))
                    }
                    try await lock.unlock(lease)
                } catch let error as RedlockError {
                    #expect(free < 3, "refused with \(free) free nodes (mask \(mask)): \(error)")
                    #expect(error.code == .taken)
                    // The attempt returns once decided, so it names the taken nodes that answered by then.
                    #expect(error.nodes.count >= 3)
                    #expect(error.nodes.allSatisfy { $0.cause == .taken && takenIndices.contains($0.node) })
                    // A failed attempt leaves none of its keys behind.
                    let values = try await values(of: name, on: servers)
                    #expect(values.allSatisfy { $0 == nil || $0 == "someone-else" })
                }
            }
        }
    }

    @Test("tryLock fails with taken while another holder has the lock, and succeeds after unlock")
    func tryLockWhileHeld() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("held", options: testOptions())
            let lease = try await lock.lock()
            let error = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            #expect(error?.code == .taken)
            #expect((error?.nodes.count ?? 0) >= 2)
            #expect(error?.nodes.allSatisfy { $0.cause == .taken } == true)
            #expect(error?.description.contains("held") == true)
            try await lock.unlock(lease)
            let next = try await lock.tryLock()
            #expect(next.value != lease.value)
            try await lock.unlock(next)
        }
    }

    @Test("a lease expires and another holder acquires; the first holder's unlock and extend then fail as taken over")
    func expiryAndTakeover() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("expiring", options: testOptions(expiry: .milliseconds(500), timeoutFactor: 0.5))
            let first = try await lock.tryLock()
            #expect(first.validUntil <= first.acquiredAt.advanced(by: .milliseconds(500)))
            let blocked = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            #expect(blocked?.code == .taken)

            // lock() retries until the first lease's keys expire on the nodes.
            let waiting = try client.makeLock("expiring", options: LockOptions(
                expiry: .seconds(5), tries: 1_000, retryDelay: .constant(.milliseconds(5)), timeoutFactor: 0.2
            ))
            let second = try await waiting.lock()
            #expect(ContinuousClock.now >= first.validUntil, "the second holder acquired before the first lease ran out")

            let unlockError = await #expect(throws: RedlockError.self) { try await lock.unlock(first) }
            #expect(unlockError?.code == .leaseTakenOver)
            let extendError = await #expect(throws: RedlockError.self) { try await lock.extend(first) }
            #expect(extendError?.code == .leaseTakenOver)
            try await waiting.unlock(second)
        }
    }

    @Test("extend keeps the lease past its first expiry; extend after expiry fails with leaseExpired")
    func extend() async throws {
        try await withLockNodes(3) { client, servers in
            let options = testOptions(expiry: .seconds(1), timeoutFactor: 0.5)
            let lock = try client.makeLock("extended", options: options)
            var lease = try await lock.tryLock()
            let firstDeadline = lease.validUntil
            // Extend whenever half of the expiry is left, until well past the first deadline.
            while ContinuousClock.now < firstDeadline.advanced(by: .milliseconds(500)) {
                try await Task.sleep(until: lease.validUntil.advanced(by: .milliseconds(-500)), clock: .continuous)
                lease = try await lock.extend(lease)
            }
            #expect(lease.validUntil > firstDeadline.advanced(by: .milliseconds(500)))
            #expect(ContinuousClock.now > firstDeadline)
            #expect(try await values(of: "extended", on: servers).allSatisfy { $0 == lease.value })
            let other = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            #expect(other?.code == .taken)

            // Let the keys expire on every node; extend must not revive them.
            try await Task.sleep(until: lease.validUntil.advanced(by: .milliseconds(200)), clock: .continuous)
            #expect(try await values(of: "extended", on: servers).allSatisfy { $0 == nil })
            let error = await #expect(throws: RedlockError.self) { try await lock.extend(lease) }
            #expect(error?.code == .leaseExpired)
            #expect(try await values(of: "extended", on: servers).allSatisfy { $0 == nil })
            let unlockError = await #expect(throws: RedlockError.self) { try await lock.unlock(lease) }
            #expect(unlockError?.code == .leaseExpired)
        }
    }

    @Test("setNXOnExtend re-creates a key that vanished from a node")
    func setNXOnExtend() async throws {
        try await withLockNodes(3) { client, servers in
            var options = testOptions()
            options.setNXOnExtend = true
            let lock = try client.makeLock("recreated", options: options)
            let lease = try await lock.tryLock()
            let admin = RedisConnection(configuration: servers[1].configuration())
            _ = try await admin.send(RedisCommand("DEL", "recreated"))
            await admin.shutdown()
            _ = try await lock.extend(lease)
            #expect(try await values(of: "recreated", on: servers).allSatisfy { $0 == lease.value })
            try await lock.unlock(lease)
        }
    }

    @Test("unlock by a non-holder deletes nothing")
    func unlockByNonHolder() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("owned", options: testOptions())
            let lease = try await lock.lock()
            let impostor = Lease(
                name: "owned", value: "not-the-value", expiry: lease.expiry,
                acquiredAt: lease.acquiredAt, validUntil: lease.validUntil
            )
            let error = await #expect(throws: RedlockError.self) { try await lock.unlock(impostor) }
            #expect(error?.code == .leaseTakenOver)
            #expect(try await values(of: "owned", on: servers).allSatisfy { $0 == lease.value })
            try await lock.unlock(lease)
            #expect(try await values(of: "owned", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("a key of another type under the lock's name (a hash: another program's data, or another lock library's hold) is taken to every acquire form, as to the plain one: tryLock() and lock() fail taken, lock() after its tries; a lease whose keys became hashes is taken over for extend and unlock; nothing logs WRONGTYPE and the hashes stay as they were (before: the fenced, guarded, fair and fixed-value forms failed at once for good with Redis's WRONGTYPE, and each plain attempt's clean-up logged it)", arguments: LeastPrivilegeTests.AcquireForm.allCases)
    func keyOfAnotherType(form: LeastPrivilegeTests.AcquireForm) async throws {
        try await withRedisServers(3) { servers throws in
            let records = Locked<[String]>([])
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, logger: capturingLogger(into: records))
            var options = form.options
            options.expiry = .seconds(5)
            options.tries = 3
            options.retryDelay = .constant(.milliseconds(20))
            // Every node's answer counted, also on a loaded machine: a 2.5 s budget per attempt.
            options.timeoutFactor = 0.5
            let lock = try client.makeLock("hashed", options: options)
            try await Self.makeHashes("hashed", on: servers)
            let tried = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            #expect(tried?.code == .taken && (tried?.nodes.count ?? 0) >= 2 && tried?.nodes.allSatisfy { $0.cause == .taken } == true, "\(String(describing: tried))")
            let started = ContinuousClock.now
            let waited = await #expect(throws: RedlockError.self) { try await lock.lock() }
            #expect(waited?.code == .taken && waited?.nodes.allSatisfy { $0.cause == .taken } == true, "\(String(describing: waited))")
            #expect(started.duration(to: .now) >= .milliseconds(40), "not retried: \(started.duration(to: .now))")
            for server in servers { _ = try await server.run(RedisCommand("DEL", "hashed")) }
            let lease = try await lock.lock()
            try await Self.makeHashes("hashed", on: servers)
            let extended = await #expect(throws: RedlockError.self) { try await lock.extend(lease) }
            #expect(extended?.code == .leaseTakenOver, "\(String(describing: extended))")
            let unlocked = await #expect(throws: RedlockError.self) { try await lock.unlock(lease) }
            #expect(unlocked?.code == .leaseTakenOver, "\(String(describing: unlocked))")
            for server in servers {
                #expect(try await server.run(RedisCommand("HGET", "hashed", "f")) == .bulkString(Array("v".utf8)))
            }
            #expect(!records.value.contains { $0.contains("WRONGTYPE") }, "\(records.value.filter { $0.contains("WRONGTYPE") })")
            await client.shutdown()
        }
    }

    /// Replaces `key` on every server with a hash (`f` = `v`, no expiry).
    private static func makeHashes(_ key: String, on servers: [RedisServer]) async throws {
        for server in servers {
            _ = try await server.run(RedisCommand("DEL", key))
            _ = try await server.run(RedisCommand("HSET", key, "f", "v"))
        }
    }

    @Test("a fixed value re-attaches to a lease another process handed over")
    func fixedValue() async throws {
        try await withLockNodes(3) { client, _ in
            var options = testOptions()
            options.value = .fixed("shared-secret")
            let lock = try client.makeLock("handover", options: options)
            let lease = try await lock.lock()
            #expect(lease.value == "shared-secret")
            let adopted = Lease(name: "handover", value: "shared-secret", expiry: lease.expiry, acquiredAt: .now, validUntil: .now)
            let extended = try await lock.extend(adopted)
            #expect(extended.isValid)
            try await lock.unlock(extended)
        }
    }

    @Test("cancelling a waiting lock() stops it promptly, during retry delays too, and leaves no key behind")
    func cancellation() async throws {
        try await withLockNodes(3) { client, servers in
            let holder = try client.makeLock("contended", options: testOptions())
            let held = try await holder.lock()
            let waiter = try client.makeLock("contended", options: LockOptions(
                tries: 1_000_000, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.2
            ))
            let task = Task { try await waiter.lock() }
            // Let it make its first attempt and enter the 10 s retry delay.
            try await Task.sleep(for: .milliseconds(100))
            let cancelledAt = ContinuousClock.now
            task.cancel()
            let result = await task.result
            // Far below the 10 s delay it was sleeping out.
            #expect(cancelledAt.duration(to: .now) < .seconds(3))
            guard case let .failure(error) = result else {
                Issue.record("lock() succeeded after cancellation")
                return
            }
            #expect((error as? RedlockError)?.code == .cancelled)
            try await holder.unlock(held)
            #expect(try await values(of: "contended", on: servers).allSatisfy { $0 == nil })

            // Cancelled before it starts: no attempt, no key.
            let early = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await holder.lock()
            }
            let earlyResult = await early.result
            if case .success = earlyResult { Issue.record("a cancelled lock() acquired") }
            #expect(try await values(of: "contended", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("cancelled while a frozen majority has not answered its attempt, lock() returns at once, not after the attempt's budget; the releases run behind the acquires once the nodes wake, leaving no key")
    func cancelledWithFrozenNodes() async throws {
        try await withRedisServers(5) { servers throws in
            // A 3 s budget, and no command timing out meanwhile.
            let client = try RedlockClient(nodes: servers.map { $0.configuration(commandTimeout: .seconds(10)) })
            let lock = try client.makeLock("cancel-frozen", options: LockOptions(expiry: .seconds(60), tries: .max))
            for server in servers.prefix(3) { try await server.pause() }
            let task = Task { try await lock.lock(timeout: .seconds(30)) }
            // Inside the first attempt: the answering nodes granted, the frozen ones are silent.
            try await Task.sleep(for: .milliseconds(300))
            let cancelledAt = ContinuousClock.now
            task.cancel()
            let result = await task.result
            let took = cancelledAt.duration(to: .now)
            #expect((result.failure as? RedlockError)?.code == .cancelled, "\(result)")
            // Before, it waited out the budget (about 2.7 s here) for releases the frozen nodes
            // could not confirm.
            #expect(took < .seconds(1.5), "took \(took)")
            for server in servers.prefix(3) { try server.resume() }
            // Nothing to wait on but the keys themselves: polled.
            var clean = false
            let giveUp = ContinuousClock.now + .seconds(10)
            while !clean, ContinuousClock.now < giveUp {
                clean = try await values(of: "cancel-frozen", on: servers).allSatisfy { $0 == nil }
                if !clean { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(clean, "a key was left behind")
            await client.shutdown()
        }
    }

    @Test(
        "attempts that frozen nodes run only after the caller gave up are released there too: a release goes out behind its acquire, not held for a reply that never comes (a new client, and one that already ran the scripts on its connections)",
        arguments: ["fencing", "fair", "plain"], [false, true]
    )
    func frozenNodesRunTheReleaseToo(acquire: String, warmConnections: Bool) async throws {
        try await withLockNodes(3) { client, servers in
            // Attempts of 300 ms for 600 ms: two or three, each released behind its acquire.
            var options = testOptions(expiry: .seconds(30), tries: .max, timeoutFactor: 0.01)
            options.acquireTimeout = .milliseconds(600)
            options.fencing = acquire == "fencing"
            options.fair = acquire == "fair"
            let name = "late-acquire-\(acquire)-\(warmConnections)"
            // No command times out meanwhile: every attempt and release stays on one connection.
            let tested = try RedlockClient(nodes: servers.map { $0.configuration(commandTimeout: .seconds(10)) })
            // The nodes know the acquire script: an EVALSHA would run there once they wake.
            // Warm connections have run it themselves, so they send it as EVALSHA.
            let warm = try (warmConnections ? tested : client).makeLock(name, options: options)
            try await warm.unlock(try await warm.lock())
            try await servers[1].pause()
            try await servers[2].pause()
            let error = await #expect(throws: RedlockError.self) { try await tested.makeLock(name, options: options).lock() }
            #expect(error?.code == .noQuorum)
            await tested.shutdown()
            try servers[1].resume()
            try servers[2].resume()
            // Each node runs what it had read from the closed connection before this command.
            for server in servers { _ = try await server.run(RedisCommand("PING")) }
            #expect(try await values(of: name, on: servers) == [nil, nil, nil], "an acquire ran after its release, or without one")
        }
    }

    @Test("with fail-fast, a lock held on three of five nodes while the other two are down fails as taken, every time: the down nodes' refusals come first and make a quorum impossible, but the answers still out are waited for when they could show the key another holder's on a quorum (before: noQuorum, as a failure of the nodes)")
    func heldWhileNodesAreDown() async throws {
        let down = [try ClosedPort(), try ClosedPort()]
        try await withRedisServers(3) { servers throws in
            let name = "held-while-down"
            try await occupy(name, on: servers)
            let configurations = servers.map { $0.configuration() }
                + down.map { RedisConnectionConfiguration(endpoint: .hostname("127.0.0.1", port: $0.port)) }
            let client = try RedlockClient(nodes: configurations)
            let lock = try client.makeLock(name, options: LockOptions(expiry: .seconds(5), timeoutFactor: 0.2, failFast: true))
            for _ in 0..<10 {
                do throws(RedlockError) {
                    let lease = try await lock.tryLock()
                    Issue.record("acquired a lock held on three of five nodes: \(lease)")
                } catch {
                    #expect(error.code == .taken, "\(error)")
                    #expect(error.nodes.filter { $0.cause == .taken }.count == 3, "\(error)")
                }
            }
            await client.shutdown()
        }
        withExtendedLifetime(down) {}
    }

    @Test("a release decided at once, while a frozen node has not answered the acquire, still reaches that node")
    func immediateReleaseReachesAFrozenNode() async throws {
        try await withLockNodes(3) { client, servers in
            let name = "refused-at-once"
            // Two nodes refuse at once (another holder), so the attempt is decided, and its
            // release queued, within a millisecond of the acquire the frozen node holds.
            try await occupy(name, on: Array(servers.prefix(2)))
            try await servers[2].pause()
            let tested = try RedlockClient(nodes: servers.map { $0.configuration(commandTimeout: .seconds(10)) })
            let options = testOptions(expiry: .seconds(30), tries: 1, failFast: true)
            let started = ContinuousClock.now
            let error = await #expect(throws: RedlockError.self) { try await tested.makeLock(name, options: options).lock() }
            #expect(error?.code == .taken)
            // Decided by the refusals: neither the attempt nor its clean-up waits for the frozen
            // node (its 6 s budget).
            #expect(started.duration(to: .now) < options.attemptBudget / 2)
            await tested.shutdown()
            try servers[2].resume()
            _ = try await servers[2].run(RedisCommand("PING"))
            #expect(try await servers[2].value(of: name) == nil, "the acquire ran on waking, without its release")
        }
    }

    @Test("a node not waited for (the others' refusals decided the attempt first) is named in the error's message with its address: every node's cause is told (before: '1 more had not answered', unnamed)")
    func unsettledNodesNamed() async throws {
        try await withRedisServers(3) { servers throws in
            try await servers[0].pause()
            await servers[1].kill()
            await servers[2].kill()
            let client = try RedlockClient(nodes: servers.map { $0.configuration(commandTimeout: .seconds(10)) })
            let lock = try client.makeLock("unsettled", options: testOptions(expiry: .seconds(30), tries: 1, failFast: true))
            let error = await #expect(throws: RedlockError.self) { try await lock.lock() }
            #expect(error?.code == .noQuorum)
            #expect(error?.nodes.map(\.node).sorted() == [1, 2], "\(String(describing: error))")
            #expect(error?.message.contains("(node 0 (\(servers[0].endpoint)) had not answered when the refusals made a quorum impossible)") == true, "\(String(describing: error))")
            await client.shutdown()
            try servers[0].resume()
        }
    }

    @Test("a node that is not Redis (an HTTP server on the port) fails the lock at once, not at the end of its wait: its first bytes are not RESP, a permanent cause (before: 26 attempts over a 4 s wait)")
    func notRedisFailsAtOnce() async throws {
        let http = try GarbageServer.start(reply: "<!DOCTYPE HTML>\r\n", closeAfterReply: true)
        defer { http.stop() }
        let client = try RedlockClient(endpoints: [.hostname("127.0.0.1", port: http.port)])
        let lock = try client.makeLock("not-redis", options: testOptions(tries: .max))
        let started = ContinuousClock.now
        let error = await #expect(throws: RedlockError.self) { try await lock.lock(timeout: .seconds(10)) }
        #expect(started.duration(to: .now) < .seconds(5), "\(started.duration(to: .now))")
        #expect(error?.nodes.first?.cause.error?.code == .notRedis || error?.nodes.first?.connectionFailure?.code == .notRedis, "\(String(describing: error))")
        await client.shutdown()
    }

    @Test("Redis Cluster shards listed as nodes: a shard that does not serve the lock key's slot (MOVED), or a fenced acquire whose lock key and counter hash to two slots (CROSSSLOT), refuses for good: lock() fails at once with Redis's answer as the cause (before: retried until its wait ran out)")
    func clusterShardsRefuseForGood() async throws {
        let buses = [try freeLoopbackPort(), try freeLoopbackPort()]
        try await withRedisServers(1, arguments: ["--cluster-enabled", "yes", "--cluster-port", String(buses[0])]) { first throws in
            try await withRedisServers(1, arguments: ["--cluster-enabled", "yes", "--cluster-port", String(buses[1])]) { second throws in
                let (shard, other) = (first[0], second[0])
                _ = try await shard.run(RedisCommand("CLUSTER", "ADDSLOTSRANGE", "0", "8191"))
                _ = try await other.run(RedisCommand("CLUSTER", "ADDSLOTSRANGE", "8192", "16383"))
                _ = try await shard.run(RedisCommand("CLUSTER", "MEET", "127.0.0.1", String(other.port), String(buses[1])))
                let elsewhere = try #require(try await Self.name(on: shard, inSlots: 8192...16383))
                let here = try #require(try await Self.name(on: shard, inSlots: 0...8191))
                // Until the shards agree the cluster is down (CLUSTERDOWN, transient).
                var answer = ""
                for _ in 0..<1_000 where !answer.hasPrefix("MOVED") {
                    do { answer = try await shard.run(RedisCommand("GET", elsewhere)).string ?? "" } catch { answer = (error as? RedisError)?.message ?? "\(error)" }
                    if !answer.hasPrefix("MOVED") { try await Task.sleep(for: .milliseconds(10)) }
                }
                try #require(answer.hasPrefix("MOVED"), "the cluster never formed: \(answer)")
                let client = try RedlockClient(nodes: [shard.configuration()])
                for (name, fencing, refusal) in [(elsewhere, false, "MOVED"), (here, true, "CROSSSLOT")] {
                    var options = testOptions(tries: .max)
                    options.fencing = fencing
                    let started = ContinuousClock.now
                    let error = await #expect(throws: RedlockError.self) { try await client.makeLock(name, options: options).lock(timeout: .seconds(10)) }
                    #expect(started.duration(to: .now) < .seconds(5), "\(refusal): \(started.duration(to: .now))")
                    let cause = error?.nodes.first?.cause.error
                    #expect(cause?.isPermanent == true && cause?.message.hasPrefix(refusal) == true, "\(String(describing: error))")
                }
                await client.shutdown()
            }
        }
    }

    /// A lock name whose cluster slot (`CLUSTER KEYSLOT` on `server`) is in `slots`, other than the
    /// fencing counter's, or nil.
    private static func name(on server: RedisServer, inSlots slots: ClosedRange<Int64>) async throws -> String? {
        let counterSlot = try await server.run(RedisCommand("CLUSTER", "KEYSLOT", "redlock:fence")).integer
        for index in 0..<1_000 {
            let slot = try await server.run(RedisCommand("CLUSTER", "KEYSLOT", "shard-\(index)")).integer
            if let slot, slots.contains(slot), slot != counterSlot { return "shard-\(index)" }
        }
        return nil
    }

    @Test("a lock acquired while one of three nodes refuses connections lists that node when the majority fails")
    func refusingNode() async throws {
        try await withLockNodes(3) { client, servers in
            await servers[2].kill()
            let lock = try client.makeLock("partial", options: testOptions(tries: 2))
            let lease = try await lock.lock()
            try await lock.unlock(lease)

            await servers[1].kill()
            let started = ContinuousClock.now
            let error = await #expect(throws: RedlockError.self) { try await lock.lock() }
            // Refusals are immediate: 2 attempts take nowhere near their 1 s budgets.
            #expect(started.duration(to: .now) < .seconds(4))
            #expect(error?.code == .noQuorum)
            let causes = Dictionary(uniqueKeysWithValues: (error?.nodes ?? []).map { ($0.node, $0.cause) })
            #expect(causes[0] == nil)
            for index in [1, 2] {
                guard let redisError = causes[index]?.error else {
                    Issue.record("node \(index) should carry its connection error, got \(String(describing: causes[index]))")
                    continue
                }
                #expect(redisError.code == .connectionRefused)
                #expect(redisError.endpoint == servers[index].endpoint)
            }
            #expect(try await values(of: "partial", on: [servers[0]]) == [nil])
        }
    }

    @Test("a node that answers garbage and one that never answers fail in bounded time with their causes")
    func misbehavingNodes() async throws {
        try await withRedisServers(1) { servers throws in
            let garbage = try GarbageServer.start(reply: "???\r\n")
            let silent = try GarbageServer.start(reply: nil)
            defer {
                garbage.stop()
                silent.stop()
            }
            let client = try RedlockClient(nodes: [
                servers[0].configuration(),
                RedisConnectionConfiguration(endpoint: garbage.endpoint),
                // The silent node's own timeout is far longer than the test: only the attempt
                // budget can end its wait.
                RedisConnectionConfiguration(endpoint: silent.endpoint, commandTimeout: .seconds(60)),
            ])
            let lock = try client.makeLock("garbled", options: testOptions(expiry: .seconds(1), tries: 3))
            let started = ContinuousClock.now
            let error = await #expect(throws: RedlockError.self) { try await lock.lock() }
            // 3 attempts of at most 200 ms each plus short delays; nothing waits for the silent
            // node's 60 s timeout.
            #expect(started.duration(to: .now) < .seconds(8))
            #expect(error?.code == .noQuorum)
            let causes = Dictionary(uniqueKeysWithValues: (error?.nodes ?? []).map { ($0.node, $0.cause) })
            // Its first bytes are not RESP: not a Redis server.
            if let redisError = causes[1]?.error {
                #expect(redisError.code == .notRedis)
            } else {
                Issue.record("the garbage node should fail as not Redis, got \(String(describing: causes[1]))")
            }
            #expect(causes[2] == .noAnswer)
            #expect(try await values(of: "garbled", on: servers) == [nil])
            await client.shutdown()
        }
    }

    @Test("a retry delay of 'forever' (Int64.max seconds, or more) waits, and ends by cancellation, plain and fair; nothing traps")
    func foreverRetryDelay() async throws {
        try await withLockNodes(3) { client, _ in
            let holder = try client.makeLock("forever", options: LockOptions(expiry: .seconds(30)))
            let lease = try await holder.lock()
            let delays: [(Duration, Bool)] = [
                (.seconds(Int64.max), true), (.seconds(Int64.max), false), (.seconds(Int64.max) + .seconds(Int64.max), false),
            ]
            for (delay, fair) in delays {
                let waiter = try client.makeLock(
                    "forever", options: LockOptions(expiry: .seconds(30), acquireTimeout: nil, tries: 3, retryDelay: .constant(delay), fair: fair)
                )
                let waiting = Task { () -> RedlockError.Code? in
                    do throws(RedlockError) {
                        _ = try await waiter.lock()
                        return nil
                    } catch {
                        return error.code
                    }
                }
                #expect(await eventually { client.waitingLockCalls(for: "forever") == 1 })
                waiting.cancel()
                #expect(await finished(within: .seconds(5)) { await waiting.value } == .some(.cancelled), "fair: \(fair)")
            }
            try await holder.unlock(lease)
        }
    }

    @Test("invalid configuration is rejected with a clear error (a port out of range among it)")
    func configurationErrors() async throws {
        #expect { try RedlockClient(nodes: []) } throws: { ($0 as? RedlockError)?.code == .invalidConfiguration }
        #expect { try RedlockClient(endpoints: [.hostname("127.0.0.1", port: 1), .hostname("127.0.0.1", port: 1)]) } throws: {
            ($0 as? RedlockError)?.message.contains("twice") == true
        }
        // A port no connection could use: refused when the client is made, not at its first call.
        for port in [0, -1, 65_536, 70_000] {
            #expect { try RedlockClient(endpoints: [.hostname("127.0.0.1", port: port)]) } throws: {
                ($0 as? RedlockError)?.code == .invalidConfiguration && ($0 as? RedlockError)?.message.contains("1 to 65535") == true
            }
        }
        for busyPoll in [Duration.microseconds(-1), .milliseconds(10) + .nanoseconds(1)] {
            #expect { try RedlockClient(endpoints: [.hostname("127.0.0.1", port: 1)], busyPoll: busyPoll) } throws: {
                ($0 as? RedlockError)?.code == .invalidConfiguration && ($0 as? RedlockError)?.message.contains("busyPoll") == true
            }
        }
        await (try RedlockClient(endpoints: [.hostname("127.0.0.1", port: 1)], busyPoll: .milliseconds(10))).shutdown()
        // Host names are compared as DNS compares them: without regard to case, and a fully
        // qualified name's root dot is the same name.
        for pair in [("LocalHost", "localhost"), ("redis-a.example.", "redis-a.example")] {
            #expect { try RedlockClient(endpoints: [.hostname(pair.0, port: 1), .hostname(pair.1, port: 1)]) } throws: {
                ($0 as? RedlockError)?.message.contains("twice") == true
            }
        }
        // Over TLS the server name is part of the node (a gateway may route by it), compared
        // the same way.
        func routed(_ name: String?) -> RedisConnectionConfiguration {
            RedisConnectionConfiguration(endpoint: .hostname("gw.example", port: 6380), tls: RedisTLSConfiguration(serverName: name))
        }
        await (try RedlockClient(nodes: [routed("redis-a.example"), routed("redis-b.example"), routed(nil)])).shutdown()
        for (first, second) in [("redis-a.example", "Redis-A.example."), ("gw.example", nil)] {
            #expect { try RedlockClient(nodes: [routed(first), routed(second)]) } throws: {
                ($0 as? RedlockError)?.message.contains("twice") == true
            }
        }
        // Node settings no connection could work with.
        let endpoint = RedisEndpoint.hostname("127.0.0.1", port: 1)
        let badNodes: [(RedisConnectionConfiguration, String)] = [
            (RedisConnectionConfiguration(endpoint: endpoint, commandTimeout: .zero), "commandTimeout"),
            (RedisConnectionConfiguration(endpoint: endpoint, commandTimeout: .seconds(-1)), "commandTimeout"),
            (RedisConnectionConfiguration(endpoint: endpoint, connectTimeout: .zero), "connectTimeout"),
            (RedisConnectionConfiguration(endpoint: endpoint, maximumQueuedCommands: 0), "maximumQueuedCommands"),
            (RedisConnectionConfiguration(endpoint: endpoint, username: "app"), "user name needs a password"),
            (RedisConnectionConfiguration(endpoint: endpoint, database: -1), "database"),
            // A host cut short at a NUL byte would be another host; an empty one is none.
            (RedisConnectionConfiguration(endpoint: .hostname("127.0.0.1\u{0}x", port: 1)), "NUL"),
            (RedisConnectionConfiguration(endpoint: .hostname("", port: 1)), "empty"),
            (RedisConnectionConfiguration(endpoint: .unixDomainSocket(path: "/tmp/a\u{0}b")), "NUL"),
        ]
        for (configuration, word) in badNodes {
            #expect { try RedlockClient(nodes: [configuration]) } throws: {
                ($0 as? RedlockError)?.code == .invalidConfiguration && ($0 as? RedlockError)?.message.contains(word) == true
            }
            #expect { try RedlockClient(connections: [RedisConnection(configuration: configuration)]) } throws: {
                ($0 as? RedlockError)?.code == .invalidConfiguration && ($0 as? RedlockError)?.message.contains(word) == true
            }
        }
        let client = try RedlockClient(endpoints: [.hostname("127.0.0.1", port: 1)])
        let invalid: [(String, LockOptions, String)] = [
            ("", LockOptions(), "name"),
            ("x", LockOptions(expiry: .zero), "expiry"),
            ("x", LockOptions(expiry: .milliseconds(-5)), "expiry"),
            ("x", LockOptions(tries: 0), "tries"),
            ("x", LockOptions(driftFactor: 1), "driftFactor"),
            ("x", LockOptions(driftFactor: -0.1), "driftFactor"),
            ("x", LockOptions(timeoutFactor: 0), "timeoutFactor"),
            // A budget that rounds to nothing: every attempt failed, and an unlock that deleted
            // the keys reported no quorum.
            ("x", LockOptions(timeoutFactor: .leastNonzeroMagnitude), "at least 1 µs"),
            ("x", LockOptions(expiry: .milliseconds(10), timeoutFactor: 1e-5), "at least 1 µs"),
            ("x", LockOptions(expiry: .milliseconds(2)), "validity"),
            // The longest durations are refused, not a trap.
            ("x", LockOptions(expiry: .seconds(Int64.max)), "too long"),
            ("x", LockOptions(expiry: .nanoseconds(Int64.max - 10)), "too long"),
            ("x", LockOptions(epochGuard: .seconds(Int64.max)), "too long"),
            ("x", LockOptions(value: .fixed("")), "fixed value"),
        ]
        for (name, options, word) in invalid {
            #expect {
                try client.makeLock(name, options: options)
            } throws: { error in
                guard let error = error as? RedlockError else { return false }
                return error.code == .invalidConfiguration && error.message.contains(word)
            }
        }
        // A hold-time cap no sleep could reach is refused before acquiring (no node answers here).
        let scoped = try client.makeLock("x")
        for cap in [Duration.seconds(Int64.max), .seconds(100 * 365 * 86_400) + .nanoseconds(1), .zero] {
            await #expect { try await scoped.withLock(maximumHoldTime: cap) { _ in } } throws: {
                ($0 as? RedlockError)?.code == .invalidConfiguration && ($0 as? RedlockError)?.message.contains("maximumHoldTime") == true
            }
        }
        // A generator is only known to make an empty value when it does.
        var empty = LockOptions()
        empty.value = LockValue(generator: { "" })
        let lock = try client.makeLock("x", options: empty)
        let error = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
        #expect(error?.code == .invalidConfiguration)
        await client.shutdown()
    }
}

@Suite("Waiting by time")
struct WaitingByTimeTests {
    /// Expects `lock(timeout: 300 ms)` on a held lock to throw `taken` after its 300 ms, not
    /// much later; returns the error.
    @discardableResult
    private func expectTakenAfterTimeout(_ lock: DistributedLock) async -> RedlockError? {
        let started = ContinuousClock.now
        let error = await #expect(throws: RedlockError.self) { try await lock.lock(timeout: .milliseconds(300)) }
        let waited = started.duration(to: .now)
        #expect(error?.code == .taken)
        #expect(waited >= .milliseconds(300) && waited < .seconds(2), "waited \(waited)")
        return error
    }

    @Test("lock(timeout:) gives up when its time is up, with the holder named")
    func timeout() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("timed", options: testOptions(tries: .max))
            let lease = try await lock.lock()
            let error = await expectTakenAfterTimeout(lock)
            #expect(error?.message.contains("attempts in") == true, "\(String(describing: error))")
            try await lock.unlock(lease)
        }
    }

    @Test("with single-flight, the wait for this process's own holder counts against the timeout")
    func singleFlightTimeout() async throws {
        try await withLockNodes(3) { client, _ in
            var options = testOptions(expiry: .seconds(6), tries: .max)
            options.singleFlight = true
            let lock = try client.makeLock("single-timed", options: options)
            let lease = try await lock.lock()
            await expectTakenAfterTimeout(lock)
            try await lock.unlock(lease)
            // The gate is free again: the next caller gets it at once.
            let next = try await lock.lock(timeout: .seconds(2))
            try await lock.unlock(next)
        }
    }

    @Test("48 tasks on one name holding 20 ms each: with the default options nobody gives up while the lock changes hands")
    func steadyContention() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("crowded", options: LockOptions())
            let failures = Locked<[String]>([])
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<48 {
                    group.addTask {
                        do {
                            let lease = try await lock.lock()
                            try? await Task.sleep(for: .milliseconds(20))
                            try await lock.unlock(lease)
                        } catch {
                            failures.update { $0.append("\(error)") }
                        }
                    }
                }
            }
            #expect(failures.value.isEmpty, "\(failures.value)")
        }
    }

    @Test("SCRIPT FLUSH on every node while 32 tasks lock and unlock: a release written behind other commands still runs (its EVAL after them), so nothing fails, the locks work at once afterwards and no key is left")
    func scriptFlushUnderLoad() async throws {
        try await withLockNodes(3) { client, servers in
            // Budgets of 400 ms: a loaded machine slows the 32 tasks, it does not fail them.
            let options = testOptions(expiry: .seconds(2), tries: 8)
            let locks = try (0..<32).map { try client.makeLock("flushed-\($0)", options: options) }
            let counts = FlushCounts()
            let failures = Locked<[String]>([])
            await withTaskGroup(of: Void.self) { group in
                for lock in locks {
                    group.addTask {
                        while !counts.stop.load(ordering: .relaxed) {
                            do {
                                let lease = try await lock.lock()
                                try await lock.unlock(lease)
                            } catch {
                                // A release that failed on a node that forgot its script left
                                // the key: the task's next lock() finds it taken.
                                failures.update { $0.append("\(error)") }
                            }
                            counts.cycles.add(1, ordering: .relaxed)
                        }
                    }
                }
                // Three flushes of every node, each once the tasks ran 200 more cycles, and 200
                // more after the last.
                for round in 0..<4 {
                    let target = counts.cycles.load(ordering: .relaxed) + 200
                    #expect(await eventually(within: .seconds(20)) { counts.cycles.load(ordering: .relaxed) >= target })
                    if round < 3 {
                        for server in servers { _ = try? await server.run(RedisCommand("SCRIPT", "FLUSH")) }
                    }
                }
                counts.stop.store(true, ordering: .relaxed)
            }
            print("script flush under load: \(counts.cycles.load(ordering: .relaxed)) cycles, \(failures.value.count) failed")
            #expect(failures.value.isEmpty, "\(failures.value)")
            // The connections forgot the script with the answer: every lock works again at once.
            for lock in locks {
                let lease = try await lock.tryLock()
                try await lock.unlock(lease)
            }
            for server in servers { #expect(try await server.run(RedisCommand("KEYS", "flushed-*")) == .array([])) }
        }
    }
}

/// What the tasks of ``LockTests/scriptFlushUnderLoad()`` count, and when they stop.
private final class FlushCounts: Sendable {
    let cycles = Atomic<Int>(0)
    let stop = Atomic<Bool>(false)

    @Test("a full connection queue refuses acquires, not releases: 300 tasks on connections that queue 2 commands each leave no key, whether their lock() or unlock() failed, with random values or their own", arguments: [false, true])
    func fullQueueRefusesNoRelease(ownValues: Bool) async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { server in
                var configuration = server.configuration()
                configuration.maximumQueuedCommands = 2
                return configuration
            })
            try await withTeardown {
                let overloaded = Locked(0)
                await withTaskGroup { group in
                    for index in 0..<300 {
                        group.addTask {
                            do {
                                let value: LockValue = ownValues ? .fixed("own-\(index)") : .random
                                let lock = try client.makeLock("queue-full-\(index)", options: LockOptions(expiry: .seconds(30), tries: 1, value: value))
                                try await lock.unlock(try await lock.lock())
                            } catch {
                                if (error as? RedlockError)?.nodes.contains(where: { $0.cause.error?.code == .overloaded }) == true { overloaded.update { $0 += 1 } }
                            }
                        }
                    }
                }
                #expect(overloaded.value > 0, "no queue was ever full: the test tests nothing")
                // Each node's next command is answered after every release queued before it.
                for index in servers.indices {
                    for attempt in 1... {
                        do {
                            _ = try await client.nodes[index].send(RedisCommand("PING"))
                            break
                        } catch let error as RedisError where error.code == .overloaded && attempt < 200 {
                            // No event says a queue has room again.
                            try await Task.sleep(for: .milliseconds(5))
                        }
                    }
                    let left = try await servers[index].run(RedisCommand("KEYS", "queue-full-*"))
                    #expect(left == .array([]), "node \(index): \(left)")
                }
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("releases past a full queue are bounded: against a node that answers nothing, a connection that queues 8 commands holds at most 8 + RedisConnection.maximumReplays, however many locks release there")
    func releasesPastAFullQueueAreBounded() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { server in
                var configuration = server.configuration(commandTimeout: .seconds(60))
                configuration.maximumQueuedCommands = 8
                return configuration
            })
            try await withTeardown {
                try await servers[2].pause()
                let bound = 8 + RedisConnection.maximumReplays
                // Until the releases sent to the frozen node could have filled the bound twice
                // over: one per unlock, values of the caller's own (a lease of such a value may be
                // held anywhere, so its unlock goes to every node even where its acquire was refused).
                let cycles = await cycleFreshLocks(on: client, prefix: "bounded", until: 2 * bound) { task, index in
                    LockOptions(expiry: .seconds(30), tries: 1, value: .fixed("own-\(task)-\(index)"))
                }
                let waiting = client.nodes[2].waitingCommands
                #expect(waiting <= bound, "\(waiting) commands wait after \(cycles) cycles")
                #expect(waiting >= bound - 16, "the releases past the limit were not taken: \(waiting)")
                try servers[2].resume()
            } teardown: {
                await client.shutdown()
            }
        }
    }
}
