import Redlock
import RedlockTestSupport
import Testing

extension FaultTests {
    /// Nodes that crash and come back on the same port, with and without their data.
    @Suite("Node restarts")
    struct Restarts {
        /// Options whose lease outlives every step of these tests (they never wait for expiry).
        static let longLease = LockOptions(expiry: .seconds(10), tries: 1, timeoutFactor: 0.05)

        /// **The restart hazard, shown.** Holder A acquires while node 2 is down, so A's keys are
        /// on nodes 0 and 1 only — a quorum of 3. Node 2 comes back (it never saw A). Then node 1
        /// crashes and restarts *without its data*, forgetting A's key. Client B now finds
        /// nodes 1 and 2 free, a quorum, and acquires — while A's lease is still valid: two
        /// holders at once.
        ///
        /// Redlock cannot prevent this: a node's vote is only as durable as its memory. Use
        /// `appendfsync always` (next test) or keep a restarted node out of votes for at least
        /// the longest expiry.
        @Test("a node restarted without its data lets a second holder in while the first lease is valid (the hazard is real)")
        func restartWithoutDataGrantsTwice() async throws {
            try await withCluster(3, persistence: .none) { cluster in
                let servers = cluster.servers
                let clientA = try await cluster.makeClient()
                let clientB = try await cluster.makeClient(connect: false)

                await servers[2].kill()
                let lockA = try clientA.makeLock("hazard", options: Self.longLease)
                let leaseA = try await lockA.tryLock()
                #expect(try await values(of: "hazard", on: [servers[0], servers[1]]) == [leaseA.value, leaseA.value])

                try await servers[2].restart(keepingData: false)
                try await servers[1].restart(keepingData: false)
                #expect(try await servers[1].value(of: "hazard") == nil, "node 1 forgot A's key")

                let lockB = try clientB.makeLock("hazard", options: Self.longLease)
                let leaseB = try await lockB.tryLock()
                let now = ContinuousClock.now
                #expect(now < leaseA.validUntil, "A's lease is still valid while B holds the lock")
                #expect(now < leaseB.validUntil)
                #expect(leaseA.value != leaseB.value)
                #expect(try await values(of: "hazard", on: servers) == [leaseA.value, leaseB.value, leaseB.value])
            }
        }

        @Test("with appendfsync always, the restarted node keeps the key and the second holder is refused with taken")
        func restartWithAppendOnlyFileKeepsExclusion() async throws {
            try await withCluster(3, persistence: .appendOnlyFsyncAlways) { cluster in
                let servers = cluster.servers
                let clientA = try await cluster.makeClient()
                let clientB = try await cluster.makeClient(connect: false)

                await servers[2].kill()
                let lockA = try clientA.makeLock("durable", options: Self.longLease)
                let leaseA = try await lockA.tryLock()

                try await servers[2].restart(keepingData: true)
                try await servers[1].restart(keepingData: true)
                #expect(try await servers[1].value(of: "durable") == leaseA.value, "node 1 reloaded A's key from its AOF")

                let lockB = try clientB.makeLock("durable", options: Self.longLease)
                let error = await #expect(throws: RedlockError.self) { try await lockB.tryLock() }
                #expect(error?.code == .taken)
                let taken = (error?.nodes ?? []).filter { $0.cause == .taken }.map(\.node).sorted()
                #expect(taken == [0, 1])
                #expect(leaseA.isValid)
                #expect(try await values(of: "durable", on: servers) == [leaseA.value, leaseA.value, nil])
            }
        }

        @Test("after a killed node restarts on its port, the same client uses it again without being rebuilt")
        func reconnectsAfterRestart() async throws {
            try await withCluster(3) { cluster in
                let servers = cluster.servers
                let client = try await cluster.makeClient(connectTimeout: .milliseconds(200), commandTimeout: .milliseconds(500))
                let lock = try client.makeLock("reconnect", options: LockOptions(expiry: .seconds(5), tries: 1, timeoutFactor: 0.1))

                // Node 1 dies; the client notices (its attempt there fails) and carries on with 0 and 2.
                await servers[1].kill()
                let first = try await lock.tryLock()
                try await lock.unlock(first)

                // Node 1 comes back empty on its port; node 0 dies. A quorum now needs node 1.
                try await servers[1].restart(keepingData: false)
                await servers[0].kill()
                let second = try await lock.tryLock()
                #expect(try await servers[1].value(of: "reconnect") == second.value, "node 1 granted through the same client")
                #expect(try await servers[2].value(of: "reconnect") == second.value)
                try await lock.unlock(second)

                // Node 2 restarts while the client's connection to it sits idle and open: the old
                // socket is dead without the client having seen it. A quorum needs node 2, so
                // lock() succeeds only once the client has reconnected to it.
                try await servers[2].restart(keepingData: false)
                let retrying = try client.makeLock("reconnect", options: LockOptions(
                    expiry: .seconds(5), tries: 3, retryDelay: .constant(.milliseconds(10)), timeoutFactor: 0.1
                ))
                let third = try await retrying.lock()
                #expect(try await values(of: "reconnect", on: [servers[1], servers[2]]) == [third.value, third.value])
                try await retrying.unlock(third)
            }
        }
    }
}
