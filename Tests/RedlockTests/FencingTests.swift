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
}
