import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

@Suite("Scoped locks with auto-extension")
struct ScopedLockTests {
    @Test("withLock keeps the lease alive past several expiries and releases it when the body returns")
    func extendsAndReleases() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("scoped", options: testOptions(expiry: .seconds(1), timeoutFactor: 0.5))
            let other = try client.makeLock("scoped", options: testOptions())
            let result = try await lock.withLock(extendWhenRemaining: 0.5) { held in
                let first = held.lease.validUntil
                // Three expiries long: only extensions keep the keys alive.
                try await Task.sleep(for: .seconds(3))
                #expect(held.isValid)
                #expect(held.lease.validUntil > first.advanced(by: .seconds(1)))
                let blocked = await #expect(throws: RedlockError.self) { try await other.tryLock() }
                #expect(blocked?.code == .taken)
                return held.lease.value
            }
            #expect(try await keyValues("scoped", on: servers).allSatisfy { $0 == nil })
            #expect(!result.isEmpty)
            // Nothing extends the keys after the call: a new holder gets them at once.
            let next = try await other.tryLock()
            try await other.unlock(next)
        }
    }

    @Test("withLock releases when the body throws, and rethrows the body's error")
    func releasesOnThrow() async throws {
        struct BodyFailed: Error {}
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("throwing", options: testOptions())
            await #expect(throws: BodyFailed.self) {
                try await lock.withLock { _ in throw BodyFailed() }
            }
            #expect(try await keyValues("throwing", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("cancelling the caller cancels the body and releases the lock")
    func releasesOnCancellation() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("cancelled-scope", options: testOptions())
            let entered = AsyncStream<Void>.makeStream()
            let task = Task {
                try await lock.withLock { _ in
                    entered.continuation.yield()
                    try await Task.sleep(for: .seconds(60))
                }
            }
            for await _ in entered.stream { break }
            let cancelledAt = ContinuousClock.now
            task.cancel()
            let result = await task.result
            #expect(cancelledAt.duration(to: .now) < .seconds(2))
            #expect(throws: CancellationError.self) { try result.get() }
            #expect(try await keyValues("cancelled-scope", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("when the lease is taken over, the body is cancelled promptly and withLock throws leaseLost")
    func leaseLost() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("lost", options: testOptions(expiry: .milliseconds(600), timeoutFactor: 0.5))
            let bodyCancelled = Locked(false)
            let started = ContinuousClock.now
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLock { held in
                    // Another holder overwrites the keys: the next extension finds them taken.
                    try await occupy("lost", on: servers)
                    do {
                        try await Task.sleep(for: .seconds(30))
                    } catch {
                        bodyCancelled.update { $0 = true }
                        throw error
                    }
                }
            }
            #expect(error?.code == .leaseLost)
            #expect(bodyCancelled.value)
            // The first extension is due after 2/3 of the expiry; the loss is noticed then, not
            // after the body's 30 s.
            #expect(started.duration(to: .now) < .seconds(6))
            // The other holder's keys are untouched by the release.
            #expect(try await keyValues("lost", on: servers).allSatisfy { $0 == "someone-else" })
        }
    }

    @Test("when the nodes die, the body is cancelled by the time the lease runs out")
    func leaseRunsOut() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("orphaned", options: testOptions(expiry: .milliseconds(600), timeoutFactor: 0.25))
            let validUntil = Locked<ContinuousClock.Instant?>(nil)
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLock { held in
                    validUntil.update { $0 = held.lease.validUntil }
                    for server in servers { await server.kill() }
                    try await Task.sleep(for: .seconds(30))
                }
            }
            #expect(error?.code == .leaseLost)
            let deadline = try #require(validUntil.value)
            // Cancelled at the lease's end, not 30 s later (generous margin for a loaded machine).
            #expect(ContinuousClock.now < deadline.advanced(by: .seconds(2)))
        }
    }

    @Test("maximumHoldTime cancels a body that runs too long")
    func holdTimeCap() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("capped", options: testOptions())
            let started = ContinuousClock.now
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLock(maximumHoldTime: .milliseconds(200)) { _ in
                    try await Task.sleep(for: .seconds(30))
                }
            }
            #expect(error?.code == .holdTimeExceeded)
            #expect(started.duration(to: .now) < .seconds(3))
            #expect(try await keyValues("capped", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("bad scope parameters are rejected before acquiring")
    func invalidScope() async throws {
        try await withLockNodes(1) { client, servers in
            let lock = try client.makeLock("scope-args", options: testOptions())
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLock(extendWhenRemaining: 1.5) { _ in 1 }
            }
            #expect(error?.code == .invalidConfiguration)
            #expect(try await keyValues("scope-args", on: servers) == [nil])
        }
    }
}
