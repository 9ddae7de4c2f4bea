import Redlock
import RedlockTestSupport
import RedlockTransport
import Testing

@Suite("Errors say what happened")
struct DiagnosticsTests {
    @Test("codes print as their names, messages do not repeat themselves, and a second unlock says already released")
    func messages() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("said", options: testOptions())
            let lease = try await lock.lock()
            let taken = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            #expect(taken?.code.description == "taken")
            let text = taken.map(String.init(describing:)) ?? ""
            #expect(text.hasPrefix("lock \"said\": taken: held by another holder on 3 of 3 nodes"), "\(text)")
            #expect(text.components(separatedBy: "another holder").count - 1 == 1 + 3, "\(text)")
            try await lock.unlock(lease)
            let again = await #expect(throws: RedlockError.self) { try await lock.unlock(lease) }
            #expect(again?.code == .leaseExpired)
            #expect(again?.message.contains("already released") == true, "\(String(describing: again))")
            #expect(RedisError.Code.connectionRefused.description == "connectionRefused")
        }
    }

    @Test("an error shows its lock's name on one line: quotes, backslashes, control and format characters and line separators escaped (a line break, a terminal escape, NEL, a bidi override, U+2028, a BOM), a name over 400 bytes cut to its first 200 with its length in bytes (a character of 50,000 combining marks too); lockName keeps it whole")
    func namesShownSafely() {
        let odd = "nl\nx\u{1B}[31mRED \"q\" \\ é\u{85}\u{202E}\u{2028}\u{FEFF}\t🙂"
        let error = RedlockError(code: .taken, lockName: odd, message: "held")
        #expect(error.description == #"lock "nl\nx\u{1B}[31mRED \"q\" \\ é\u{85}\u{202E}\u{2028}\u{FEFF}\t🙂": taken: held"#, "\(error)")
        let long = String(repeating: "ab", count: 50_000)
        let cut = RedlockError(code: .taken, lockName: long, message: "held")
        #expect(cut.description == "lock \"\(String(repeating: "ab", count: 100))\"… (100000 bytes): taken: held", "\(cut.description.prefix(300))")
        #expect(cut.lockName == long)
        let marks = "a" + String(repeating: "\u{301}", count: 50_000)
        #expect(RedlockError.shown(marks).utf8.count < 300, "\(RedlockError.shown(marks).prefix(300))")
        #expect(RedlockError(code: .taken, lockName: "said", message: "held").description == #"lock "said": taken: held"#)
    }

    @Test("a node that gives no answer within the budget because its connection keeps failing (a TLS handshake with a port that never completes it, longer than the budget) has that failure in the error, not only in the log")
    func silentNodeSaysWhy() async throws {
        let stalled = try GarbageServer.start(reply: nil)
        defer { stalled.stop() }
        var tls = RedisTLSConfiguration()
        tls.verifiesCertificate = false
        let client = try RedlockClient(nodes: [RedisConnectionConfiguration(endpoint: stalled.endpoint, connectTimeout: .milliseconds(300), tls: tls)])
        try await withTeardown {
            // Budget 100 ms, shorter than the connect timeout: the first attempts end while
            // the handshake is under way, later ones after it timed out at least once.
            let lock = try client.makeLock("silent-why", options: LockOptions(expiry: .milliseconds(500), tries: 1_000, retryDelay: .constant(.milliseconds(20))))
            let error = await #expect(throws: RedlockError.self) { try await lock.lock(timeout: .seconds(1)) }
            let failure = try #require(error?.nodes.first, "\(String(describing: error))")
            #expect(failure.cause == .noAnswer, "\(failure)")
            #expect(failure.connectionFailure?.code == .timeout, "\(failure)")
            #expect(failure.connectionFailure?.message.contains("does the port speak TLS?") == true, "\(failure)")
            #expect("\(failure)".contains("its connection failed"), "\(failure)")
        } teardown: {
            await client.shutdown()
        }
    }

    @Test("a client used after shutdown says so")
    func afterShutdown() async throws {
        try await withRedisServers(1) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let lock = try client.makeLock("late", options: testOptions())
            let lease = try await lock.lock()
            await client.shutdown()
            for error in [
                await #expect(throws: RedlockError.self) { try await lock.lock() },
                await #expect(throws: RedlockError.self) { try await lock.unlock(lease) },
                await #expect(throws: RedlockError.self) { try await lock.extend(lease) },
            ] {
                #expect(error?.code == .clientShutDown, "\(String(describing: error))")
            }
        }
    }

    @Test("a lock() that waits for a held lock ends with clientShutDown soon after the client shuts down, not after its tries")
    func shutdownWhileRetrying() async throws {
        try await withRedisServers(1) { servers throws in
            try await servers[0].set("busy", to: "someone else", expiry: .seconds(30))
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            var options = testOptions(tries: 1_000)
            options.retryDelay = .constant(.milliseconds(20))
            options.acquireTimeout = nil
            let lock = try client.makeLock("busy", options: options)
            let waiting = Task { try await lock.lock() }
            #expect(await eventually { client.waitingLockCalls(for: "busy") > 0 })
            let shutdownAt = ContinuousClock.now
            await client.shutdown()
            let error = await #expect(throws: RedlockError.self) { try await waiting.value }
            let took = shutdownAt.duration(to: .now)
            #expect(error?.code == .clientShutDown, "\(String(describing: error))")
            #expect(took < .seconds(1), "lock() went on for \(took) after the shutdown")
        }
    }

    @Test("names that are different keys never share local state, even when Swift calls them equal")
    func canonicallyEquivalentNames() async throws {
        try await withLockNodes(1) { client, servers in
            let composed = "caf\u{E9}"
            let decomposed = "cafe\u{301}"
            #expect(composed == decomposed, "Swift compares by canonical equivalence")
            var options = testOptions()
            options.singleFlight = true
            let first = try await client.makeLock(composed, options: options).tryLock()
            // A different key in Redis: the single-flight gate of the first must not hold it back.
            let second = try await client.makeLock(decomposed, options: options).tryLock()
            #expect(try await values(of: composed, on: servers) == [first.value])
            #expect(try await values(of: decomposed, on: servers) == [second.value])
            try await client.makeLock(composed, options: options).unlock(first)
            try await client.makeLock(decomposed, options: options).unlock(second)
        }
    }

    @Test("a lease or handoff of one of two names Swift calls equal is refused by the other's lock (they are two keys): extend, unlock, withLease and reattach act on no key; leases and scopes of the two are distinct")
    func canonicallyEquivalentNamesAreTwoLocks() async throws {
        try await withLockNodes(3) { client, servers in
            let composed = "caf\u{E9}-lease"
            let decomposed = "cafe\u{301}-lease"
            #expect(composed == decomposed)
            let composedLock = try client.makeLock(composed, options: testOptions(expiry: .seconds(20)))
            let decomposedLock = try client.makeLock(decomposed, options: testOptions(expiry: .seconds(20)))
            let lease = try await composedLock.lock()
            let refusals: [(String, () async throws -> Void)] = [
                ("extend", { _ = try await decomposedLock.extend(lease) }),
                ("unlock", { try await decomposedLock.unlock(lease) }),
                ("withLease", { try await decomposedLock.withLease(lease) { _ in _ = Issue.record("the body ran") } }),
                ("reattach", { _ = try await decomposedLock.reattach(lease.handoff) }),
            ]
            for (call, refused) in refusals {
                let error = await #expect(throws: RedlockError.self, "\(call)") { try await refused() }
                #expect(error?.code == .invalidConfiguration, "\(call): \(String(describing: error))")
            }
            #expect(try await values(of: composed, on: servers).allSatisfy { $0 == lease.value })
            #expect(try await values(of: decomposed, on: servers).allSatisfy { $0 == nil })
            // Same value and times under the other name: another lease, and a scope of its own.
            let other = Lease(
                name: decomposed, value: lease.value, expiry: lease.expiry, acquiredAt: lease.acquiredAt, validUntil: lease.validUntil,
                fencingToken: lease.fencingToken
            )
            #expect(other != lease)
            let fixed = LockValue.fixed("shared-value")
            let first = try client.makeLock(composed + "-scope", options: LockOptions(expiry: .seconds(20), value: fixed))
            let second = try client.makeLock(decomposed + "-scope", options: LockOptions(expiry: .seconds(20), value: fixed))
            let both = try await first.withLock { _ in try await second.withLock { _ in true } }
            #expect(both)
            try await composedLock.unlock(lease)
        }
    }
}
