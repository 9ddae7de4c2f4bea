import Foundation
import Redlock
import RedlockTestSupport
import RedlockTransport
import Testing

@Suite("Re-attaching to a lease by its value")
struct ReattachTests {
    /// The remaining time to live of `name` on each server, in milliseconds.
    private func timesToLive(_ name: String, on servers: [RedisServer]) async throws -> [Int64] {
        var values: [Int64] = []
        for server in servers {
            let connection = RedisConnection(configuration: server.configuration())
            values.append(try await connection.send(RedisCommand("PTTL", name)).integer ?? -3)
            await connection.shutdown()
        }
        return values
    }

    @Test("another client with the holder's value re-attaches: granted where the value is held, expiry reset; another value is refused", arguments: [false, true])
    func reattach(fencing: Bool) async throws {
        try await withLockNodes(3) { client, servers in
            var options = testOptions(expiry: .seconds(5))
            options.fencing = fencing
            let original = try await client.makeLock("handed-over", options: options).lock()
            try await Task.sleep(for: .milliseconds(1_200))
            #expect(try await timesToLive("handed-over", on: servers).allSatisfy { $0 < 4_000 })

            // Another process (another client) that was handed the value.
            let other = try RedlockClient(nodes: servers.map { $0.configuration() })
            var reattaching = options
            reattaching.value = .fixed(original.value)
            let reattached = try await other.makeLock("handed-over", options: reattaching).tryLock()
            #expect(reattached.value == original.value)
            #expect(try await timesToLive("handed-over", on: servers).allSatisfy { $0 > 4_500 })
            if fencing {
                #expect((reattached.fencingToken ?? 0) > (original.fencingToken ?? .max))
            }

            var stranger = options
            stranger.value = .fixed("someone-else")
            let refused = await #expect(throws: RedlockError.self) {
                try await other.makeLock("handed-over", options: stranger).tryLock()
            }
            #expect(refused?.code == .taken)
            try await other.makeLock("handed-over", options: reattaching).unlock(reattached)
            #expect(try await values(of: "handed-over", on: servers).allSatisfy { $0 == nil })
            await other.shutdown()
        }
    }

    @Test("a lease acquired with failFast off, handed over at once and released by its taker at once, leaves no key on a node that answered late: its grant had landed before lock() returned")
    func handOverAfterEveryNode() async throws {
        try await withRedisServers(3) { servers throws in
            let proxy = try FaultProxy.start(to: servers[0].endpoint)
            defer { proxy.stop() }
            let giverClient = try RedlockClient(
                nodes: [RedisConnectionConfiguration(endpoint: proxy.endpoint)] + servers.dropFirst().map { $0.configuration() }
            )
            let takerClient = try RedlockClient(nodes: servers.map { $0.configuration() })
            try await withTeardown {
                for status in await giverClient.checkNodes() { _ = try status.result.get() }
                // A 1 s budget (20 s × 0.05); node 0 answers 400 ms late.
                let options = LockOptions(expiry: .seconds(20), failFast: false)
                proxy.set(.latency(.milliseconds(200)))
                let lease = try await giverClient.makeLock("handed-late", options: options).lock()
                let taker = try takerClient.makeLock("handed-late", options: options)
                try await taker.unlock(try await taker.reattach(lease.handoff))
                // Past any SET still on its way through the proxy.
                try await Task.sleep(for: .milliseconds(600))
                // With failFast on, lock() returned on the two direct nodes' grants, and node
                // 0's SET landed after the taker's release: its key stayed for the expiry.
                #expect(try await values(of: "handed-late", on: servers) == [nil, nil, nil])
            } teardown: {
                proxy.set(.none)
                await giverClient.shutdown()
                await takerClient.shutdown()
            }
        }
    }

    @Test("a node that forgot the release script while frozen: a failed attempt's clean-up never runs after the retry, so a re-attaching lock()'s lease keeps its key and excludes others")
    func cleanUpNeverRunsLate() async throws {
        try await withLockNodes(1) { client, servers in
            let name = "clean-up-order"
            // The connection has run the release script: its releases go as EVALSHA.
            let warm = try client.makeLock(name, options: testOptions())
            try await warm.unlock(try await warm.lock())
            _ = try await servers[0].run(RedisCommand("SCRIPT", "FLUSH"))
            // An attempt budget of 100 ms: the first attempt gets no answer from the frozen node,
            // its clean-up release is queued behind it, and the retry (the same fixed value, a
            // re-attaching acquire) behind that; the node wakes during the retry.
            var options = testOptions(expiry: .seconds(5), tries: 20, timeoutFactor: 0.02)
            options.value = .fixed("one-value")
            let lock = try client.makeLock(name, options: options)
            try await servers[0].pause()
            let started = ContinuousClock.now
            let acquiring = Task { try await lock.lock() }
            // No event tells when the first attempt gave up: 150 ms is past its 100 ms budget.
            try await Task.sleep(for: .milliseconds(150))
            try servers[0].resume()
            let lease = try await acquiring.value
            #expect(started.duration(to: .now) >= .milliseconds(150))
            // A lock of another name, on the same connection: once it answers, whatever the
            // connection wrote before (a late release) has run.
            let probe = try client.makeLock("\(name)-probe", options: testOptions())
            try await probe.unlock(try await probe.lock())
            #expect(try await servers[0].value(of: name) == "one-value", "the lease lock() returned has no key: the clean-up ran after the retry")
            let other = try client.makeLock(name, options: testOptions(tries: 1))
            await #expect(throws: RedlockError.self, "a second holder while the first lease is valid") { try await other.tryLock() }
            try await lock.unlock(lease)
        }
    }

    @Test("nodes that forgot the release script while frozen: an unlock never runs after a re-attach of the same value written behind it, so the re-attached lease keeps its keys")
    func releaseNeverRunsAfterReattach() async throws {
        try await withLockNodes(3) { client, servers in
            let name = "unlock-then-reattach"
            let lock = try client.makeLock(name, options: testOptions(expiry: .seconds(5), tries: 1, timeoutFactor: 0.1))
            // The connections have run the release script (its calls go as EVALSHA), not the
            // extend script a re-attach uses (it goes as EVAL).
            try await lock.unlock(try await lock.lock())
            let lease = try await lock.lock()
            for server in servers { _ = try await server.run(RedisCommand("SCRIPT", "FLUSH")) }
            for server in servers { try await server.pause() }
            // The holder unlocks while the lease's value, handed over, is re-attached here: the
            // re-attach is written behind the unanswered releases once they are overdue (1 ms).
            let unlocking = Task { try? await lock.unlock(lease) }
            #expect(await eventually { client.nodes.allSatisfy { $0.waitingCommands >= 1 } }, "the releases were not sent")
            try await Task.sleep(for: .milliseconds(20))
            let reattaching = Task { try await lock.reattach(lease.handoff) }
            // Queued behind overdue answers, a command is written as it is queued.
            #expect(await eventually { client.nodes.allSatisfy { $0.waitingCommands >= 2 } }, "the re-attach was not sent")
            for server in servers { try server.resume() }
            _ = await unlocking.value
            let reattached = try await reattaching.value
            // Once a lock of another name answers, whatever the connections wrote before has run.
            let probe = try client.makeLock("\(name)-probe", options: testOptions())
            try await probe.unlock(try await probe.lock())
            let held = try await values(of: name, on: servers)
            #expect(held.filter { $0 == lease.value }.count >= 2, "the re-attached lease's keys are gone: \(held)")
            let other = try client.makeLock(name, options: testOptions(tries: 1))
            await #expect(throws: RedlockError.self, "a second holder while the re-attached lease is valid") { try await other.tryLock() }
            try? await lock.unlock(reattached)
        }
    }

    @Test("a handoff for another lock, or whose lease was taken over, is refused")
    func handoffRefused() async throws {
        try await withLockNodes(3) { client, _ in
            let lease = try await client.makeLock("short", options: testOptions(expiry: .milliseconds(200))).lock()
            let wrongLock = await #expect(throws: RedlockError.self) {
                try await client.makeLock("elsewhere", options: testOptions()).reattach(lease.handoff)
            }
            #expect(wrongLock?.code == .invalidConfiguration)
            try await Task.sleep(until: lease.validUntil.advanced(by: .milliseconds(100)), clock: .continuous)
            let successor = try await client.makeLock("short", options: testOptions(tries: 1_000)).lock()
            let late = await #expect(throws: RedlockError.self) {
                try await client.makeLock("short", options: testOptions()).reattach(lease.handoff)
            }
            #expect(late?.code == .taken)
            try await client.makeLock("short", options: testOptions()).unlock(successor)
        }
    }
}
