import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

@Suite("Fencing tokens")
struct FencingTests {
    @Test("tokens strictly increase across 500 contended acquisitions in acquisition order")
    func monotonic() async throws {
        try await withLockNodes(5) { client, _ in
            var options = testOptions(tries: 100_000)
            options.fencing = true
            let lock = try client.makeLock("fenced", options: options)
            let tokens = Locked<[Int64]>([])
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<10 {
                    group.addTask {
                        for _ in 0..<50 {
                            let lease = try await lock.lock()
                            let token = try #require(lease.fencingToken)
                            // Holders are serialised by the lock, so appends are in acquisition order.
                            tokens.update { $0.append(token) }
                            try await lock.unlock(lease)
                        }
                    }
                }
                try await group.waitForAll()
            }
            let seen = tokens.value
            #expect(seen.count == 500)
            #expect(zip(seen, seen.dropFirst()).allSatisfy { $0 < $1 })
        }
    }

    @Test("a token survives key expiry and a node's absence: the next holder's token is still larger")
    func acrossExpiryAndNodeLoss() async throws {
        try await withLockNodes(5) { client, servers in
            var options = testOptions(expiry: .seconds(2), timeoutFactor: 0.5)
            options.fencing = true
            let lock = try client.makeLock("fence-gap", options: options)
            let first = try await lock.tryLock()
            // Let it expire without unlock, lose two nodes, acquire again.
            try await Task.sleep(until: first.validUntil.advanced(by: .milliseconds(500)), clock: .continuous)
            await servers[0].kill()
            await servers[1].kill()
            let second = try await lock.tryLock()
            #expect(try #require(second.fencingToken) > #require(first.fencingToken))
            try await lock.unlock(second)
        }
    }

    @Test("a lock without fencing has no token")
    func off() async throws {
        try await withLockNodes(1) { client, _ in
            let lock = try client.makeLock("unfenced", options: testOptions())
            let lease = try await lock.tryLock()
            #expect(lease.fencingToken == nil)
            try await lock.unlock(lease)
        }
    }

    @Test("fenced names share one counter per node in the reserved key space: no key per name, no collision with a lock named NAME:fence")
    func oneCounterPerNode() async throws {
        try await withLockNodes(3) { client, servers in
            var options = testOptions()
            options.fencing = true
            var last: Int64 = 0
            for index in 0..<100 {
                let lock = try client.makeLock("job-\(index)", options: options)
                let lease = try await lock.lock()
                let token = try #require(lease.fencingToken)
                #expect(token > last)
                last = token
                try await lock.unlock(lease)
            }
            for server in servers {
                let connection = RedisConnection(configuration: server.configuration())
                let keys = try await connection.send(RedisCommand("KEYS", "*"))
                #expect(keys == .array([.bulkString(Array("redlock:fence".utf8))]), "\(server): \(keys)")
                await connection.shutdown()
            }
            // Names that collided with the old per-name counters work both ways now.
            let fenced = try await client.makeLock("task", options: options).lock()
            let plain = try await client.makeLock("task:fence", options: testOptions()).tryLock()
            try await client.makeLock("task:fence", options: testOptions()).unlock(plain)
            try await client.makeLock("task", options: options).unlock(fenced)

            let reserved = #expect(throws: RedlockError.self) { try client.makeLock("redlock:fence") }
            #expect(reserved?.code == .invalidConfiguration)
            // Compared as bytes: a combining mark after the colon makes one character of ":\u{301}",
            // which `hasPrefix` did not see as starting with "redlock:".
            let combined = #expect(throws: RedlockError.self) { try client.makeLock("redlock:\u{301}fence") }
            #expect(combined?.code == .invalidConfiguration)
        }
    }

    @Test("a counter at Int64.max is a typed error, not retried, and leaves no key behind")
    func counterExhausted() async throws {
        try await withLockNodes(3) { client, servers in
            for server in servers {
                let connection = RedisConnection(configuration: server.configuration())
                _ = try await connection.send(RedisCommand("SET", "redlock:fence", String(Int64.max)))
                await connection.shutdown()
            }
            var options = LockOptions(tries: 32, retryDelay: .constant(.milliseconds(200)))
            options.fencing = true
            let started = ContinuousClock.now
            let error = await #expect(throws: RedlockError.self) { try await client.makeLock("last", options: options).lock() }
            #expect(error?.code == .fencingCounterExhausted, "\(String(describing: error))")
            #expect(started.duration(to: .now) < .milliseconds(1_500))
            #expect(try await values(of: "last", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("a counter that holds no integer, or a negative one, is a refusal for good naming the counter, not retried, and sets no key; on one node of three, the others grant", arguments: ["abc", "1.5", "-1", "-3", "-100", "1e3", " 5", "007", "99999999999999999999"])
    func counterHoldsNoInteger(held: String) async throws {
        try await withLockNodes(3) { client, servers in
            for server in servers.prefix(2) { _ = try await server.run(RedisCommand("SET", "redlock:fence", held)) }
            var options = LockOptions(tries: .max, retryDelay: .constant(.milliseconds(50)))
            options.fencing = true
            let error = await #expect(throws: RedlockError.self) { try await client.makeLock("garbled", options: options).lock() }
            #expect(error?.message.contains("not retried: nodes refused for good") == true, "\(String(describing: error))")
            #expect(error?.message.contains("after") == false, "retried: \(String(describing: error))")
            let causes = error?.nodes.filter { $0.node < 2 }.compactMap(\.cause.error) ?? []
            #expect(causes.count == 2 && causes.allSatisfy { $0.isPermanent && $0.message.contains("redlock:fence") }, "\(causes)")
            #expect(try await values(of: "garbled", on: servers).allSatisfy { $0 == nil })
            #expect(try await values(of: "redlock:fence", on: Array(servers.prefix(2))) == [held, held], "the counter was changed")

            _ = try await servers[1].run(RedisCommand("SET", "redlock:fence", "7"))
            let lock = try client.makeLock("garbled", options: options)
            let lease = try await lock.lock()
            #expect(lease.fencingToken == 8)
            try await lock.unlock(lease)
            // The fencing round's floor reached node 0 too (its PING is answered after it): it
            // refused the counter it does not read as one, as the grant did, and left it.
            _ = await client.checkNodes()
            #expect(try await values(of: "redlock:fence", on: [servers[0]]) == [held])
        }
    }

    @Test("tokens above 2^53 are exact (Lua numbers are doubles): each holder's token is the counter's next value, for plain, fair and guarded acquires", arguments: ["plain", "fair", "clockGuard"])
    func tokensAboveTwoToTheFiftyThree(kind: String) async throws {
        try await withLockNodes(3) { client, servers in
            for start: Int64 in [9_007_199_254_740_993, 9_223_372_036_854_775_000] {
                for server in servers { _ = try await server.run(RedisCommand("SET", "redlock:fence", String(start))) }
                var options = LockOptions(tries: 3, retryDelay: .constant(.milliseconds(10)))
                options.fencing = true
                options.fair = kind == "fair"
                options.clockGuard = kind == "clockGuard"
                let lock = try client.makeLock("big-\(kind)", options: options)
                var tokens: [Int64] = []
                for _ in 0..<4 {
                    let lease = try await lock.lock()
                    tokens.append(try #require(lease.fencingToken))
                    try await lock.unlock(lease)
                }
                #expect(tokens == (1...4).map { start + $0 }, "\(start): \(tokens)")
                #expect(try await values(of: "redlock:fence", on: servers) == Array(repeating: String(start + 4), count: 3))
            }
        }
    }

    @Test("one exhausted counter beside a node that is only down is an ordinary node failure, retried")
    func oneCounterExhausted() async throws {
        try await withLockNodes(3) { client, servers in
            let connection = RedisConnection(configuration: servers[0].configuration())
            _ = try await connection.send(RedisCommand("SET", "redlock:fence", String(Int64.max)))
            await connection.shutdown()
            await servers[2].kill()
            var options = LockOptions(tries: .max, retryDelay: .constant(.milliseconds(50)))
            options.fencing = true
            let started = ContinuousClock.now
            let error = await #expect(throws: RedlockError.self) {
                try await client.makeLock("half", options: options).lock(timeout: .milliseconds(400))
            }
            #expect(error?.code == .noQuorum, "\(String(describing: error))")
            #expect(started.duration(to: .now) >= .milliseconds(400), "gave up before its time: the down node may come back")
        }
    }
}
