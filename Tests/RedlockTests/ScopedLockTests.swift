import Foundation
import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

@Suite("Scoped locks with auto-extension")
struct ScopedLockTests {
    @Test("withLock's body runs where the caller runs: on the main actor for a main-actor caller, mutating its state; on an actor instance for its method; elsewhere off it")
    func bodyRunsWithTheCaller() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("isolation", options: testOptions())
            #expect(try await Self.onMainActor(lock) == 2)
            // An actor that is not a global actor: its method's body runs on that actor's executor.
            #expect(try await Ledger().queueOfBody(lock) == "ledger")
            // A caller on no actor: the body runs on no actor either.
            let isolated = try await lock.withLock { _ in #isolation != nil }
            #expect(!isolated)
        }
    }

    /// An actor instance on a serial queue of its own (so code can tell it runs there) that runs
    /// a scoped lock from one of its methods.
    private actor Ledger {
        let executor = QueueExecutor(label: "ledger")
        nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

        /// The label of the queue the body of a `withLock` called here runs on.
        func queueOfBody(_ lock: DistributedLock) async throws -> String? {
            try await lock.withLock { _ in QueueExecutor.current }
        }
    }

    /// Runs two scoped locks from the main actor; their bodies touch main-actor state unguarded.
    @MainActor private static func onMainActor(_ lock: DistributedLock) async throws -> Int {
        var counter = 0
        for _ in 0..<2 {
            try await lock.withLock { _ in
                #expect(#isolation === MainActor.shared, "the body left the caller's actor")
                counter += 1
            }
        }
        return counter
    }

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
            #expect(try await values(of: "scoped", on: servers).allSatisfy { $0 == nil })
            #expect(!result.isEmpty)
            // Nothing extends the keys after the call: a new holder gets them at once.
            let next = try await other.tryLock()
            try await other.unlock(next)
        }
    }

    @Test("the body may capture non-Sendable state, as a Mutex.withLock body can")
    func nonSendableCapture() async throws {
        /// Not Sendable: a plain class with mutable state.
        final class Journal {
            var entries: [String] = []
        }
        try await withLockNodes(1) { client, _ in
            let lock = try client.makeLock("journal", options: testOptions())
            let journal = Journal()
            journal.entries.append("before")
            let count = try await lock.withLock { held in
                journal.entries.append("held \(held.name)")
                return journal.entries.count
            }
            #expect(count == 2)
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
            #expect(try await values(of: "throwing", on: servers).allSatisfy { $0 == nil })
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
            #expect(try await values(of: "cancelled-scope", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("a cancelled caller's body stays protected while it winds down: the lease is still extended, and nobody else gets the lock")
    func cancelledBodyWindsDownProtected() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("winding-down", options: testOptions(expiry: .milliseconds(600)))
            let other = try client.makeLock("winding-down", options: testOptions())
            let entered = OneTimeEvent<Void>()
            let windingDown = OneTimeEvent<Void>()
            let cleanedUp = OneTimeEvent<Void>()
            let task = Task {
                try await lock.withLock { held in
                    entered.fire()
                    do {
                        try await Task.sleep(for: .seconds(60))
                    } catch {}
                    // Cancelled: cleaning up until told, which takes two expiries (a wait that
                    // ignores cancellation); only extensions keep the keys ours meanwhile.
                    windingDown.fire()
                    await cleanedUp.wait()
                    return held.isValid
                }
            }
            await entered.wait()
            task.cancel()
            await windingDown.wait()
            var refusals: [RedlockError.Code] = []
            let until = ContinuousClock.now.advanced(by: .milliseconds(1_200))
            while ContinuousClock.now < until {
                do throws(RedlockError) {
                    try await other.unlock(try await other.tryLock())
                    refusals.append(.invalidConfiguration)
                } catch {
                    refusals.append(error.code)
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            cleanedUp.fire()
            #expect(try await task.value, "the body's lease was not valid when it ended")
            #expect(refusals.count > 10)
            #expect(refusals.allSatisfy { $0 == .taken }, "\(refusals)")
            #expect(try await values(of: "winding-down", on: servers).allSatisfy { $0 == nil })
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
            #expect(try await values(of: "lost", on: servers).allSatisfy { $0 == "someone-else" })
        }
    }

    @Test("bodies that compute without suspending on every thread of the global pool hold up neither the extensions nor the deadline: on healthy nodes each keeps its lease well past its first expiry; with a majority frozen each is cancelled, and stops working, before its lease's validity ends (before: extensions and the watch waited for a free thread of the pool, so the bodies worked on uncancelled long after the keys expired)", arguments: [false, true])
    func busyPool(frozen: Bool) async throws {
        let width = Swift.max(ProcessInfo.processInfo.activeProcessorCount, 1)
        try await withLockNodes(3) { client, servers in
            // The majority is frozen once every body holds its lease (an acquire after it fails).
            let entered = Locked(0)
            let reports = await withTaskGroup(of: BusyBodyReport.self) { group in
                for index in 0..<width {
                    group.addTask {
                        await Self.busyBody(
                            client, name: "busy-\(index)", freezing: frozen && index == 0 ? Array(servers.prefix(2)) : [],
                            entered: entered, bodies: width
                        )
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            for server in servers.prefix(2) where frozen { try server.resume() }
            #expect(reports.count == width)
            for report in reports {
                if frozen {
                    #expect(report.error?.code == .leaseLost, "\(report)")
                    #expect(report.lastWork < report.validUntil, "worked past the lease's validity: \(report)")
                    #expect(report.lastWork < report.started + .milliseconds(1_500), "\(report)")
                } else {
                    #expect(report.error == nil, "\(report)")
                    #expect(report.validUntil > report.firstValidUntil + .seconds(1), "not extended: \(report)")
                }
            }
        }
    }

    @Test("a body's cancellation handlers run on a thread of the library's own when the scope ends it (here at its hold-time cap), not on the client's timer or I/O thread, and one that blocks holds up no other: with nine handlers blocked for 1.5 s, another scope keeps its lease and a tenth capped body is cancelled at its cap (before: on the timer thread, which every other wait of the client needed, the other scope lost its lease; with at most 8 such threads, the tenth waited for one)")
    func cancellationHandlersRunApart() async throws {
        try await withLockNodes(3) { client, _ in
            let other = try client.makeLock("other", options: testOptions(expiry: .milliseconds(900)))
            let handlerThreads = Locked<[String]>([])
            let blocked = (0..<9).map { index in
                Task {
                    let capped = try client.makeLock("capped-\(index)", options: testOptions(expiry: .seconds(5)))
                    try await capped.withLock(maximumHoldTime: .milliseconds(300)) { _ in
                        try await withTaskCancellationHandler {
                            try await Task.sleep(for: .seconds(10))
                        } onCancel: {
                            let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? "?"
                            handlerThreads.update { $0.append(name.trimmingCharacters(in: .whitespacesAndNewlines)) }
                            usleep(1_500_000)
                        }
                    }
                }
            }
            let lateAcquiredAt = Locked<ContinuousClock.Instant?>(nil)
            let lateCancelledAt = Locked<ContinuousClock.Instant?>(nil)
            let late = Task {
                let capped = try client.makeLock("capped-late", options: testOptions(expiry: .seconds(5)))
                try await capped.withLock(maximumHoldTime: .milliseconds(700)) { held in
                    lateAcquiredAt.update { $0 = held.lease.acquiredAt }
                    try await withTaskCancellationHandler {
                        try await Task.sleep(for: .seconds(10))
                    } onCancel: {
                        lateCancelledAt.update { $0 = .now }
                    }
                }
            }
            try await other.withLock { _ in try await Task.sleep(for: .milliseconds(2_500)) }
            for task in blocked {
                let error = await #expect(throws: RedlockError.self) { try await task.value }
                #expect(error?.code == .holdTimeExceeded, "\(String(describing: error))")
            }
            _ = await late.result
            #expect(handlerThreads.value.count == 9 && handlerThreads.value.allSatisfy { $0 == "redlock-cancel" }, "\(handlerThreads.value)")
            let cancelledAt = try #require(lateCancelledAt.value)
            let lateCap = try #require(lateAcquiredAt.value) + .milliseconds(700)
            #expect(cancelledAt < lateCap + .milliseconds(600), "cancelled \(lateCap.duration(to: cancelledAt)) after its cap")
        }
    }

    /// What one of ``busyPool(frozen:)``'s bodies saw.
    struct BusyBodyReport: Sendable, CustomStringConvertible {
        var started = ContinuousClock.now
        var firstValidUntil = ContinuousClock.now
        var validUntil = ContinuousClock.now
        var lastWork = ContinuousClock.now
        var error: RedlockError?

        var description: String {
            "work ended \(started.duration(to: lastWork)) after the start, validity \(started.duration(to: firstValidUntil)) at first and \(started.duration(to: validUntil)) at the end, error: \(error.map { "\($0)" } ?? "none")"
        }
    }

    /// A scope whose body computes for 2 s in 1 ms steps without suspending (checking for
    /// cancellation between steps, and the lease's validity after each), after freezing
    /// `freezing`, on a 1.2 s expiry with a 300 ms safety margin, extended at 60 % left.
    /// Each body counts itself in `entered`; one that freezes waits until all `bodies` did.
    private static func busyBody(
        _ client: RedlockClient, name: String, freezing: [RedisServer], entered: Locked<Int>, bodies: Int
    ) async -> BusyBodyReport {
        let report = Locked(BusyBodyReport())
        do {
            let lock = try client.makeLock(name, options: testOptions(expiry: .milliseconds(1_200)))
            // Extended with 720 ms of validity left: 420 ms before the deadline for its round
            // trip, on a loaded machine too. Cancelled 300 ms before the validity ends: time for
            // the cancellation to reach a body whose threads share two busy cores.
            try await lock.withLock(extendWhenRemaining: 0.6, safetyMargin: .milliseconds(300)) { held in
                entered.update { $0 += 1 }
                if !freezing.isEmpty { _ = await eventually(within: .seconds(10)) { entered.value == bodies } }
                for server in freezing { try await server.pause() }
                let started = ContinuousClock.now
                report.update { $0.started = started; $0.firstValidUntil = held.lease.validUntil; $0.validUntil = held.lease.validUntil; $0.lastWork = started }
                while !Task.isCancelled, started.duration(to: .now) < .seconds(2) {
                    let step = ContinuousClock.now + .milliseconds(1)
                    while ContinuousClock.now < step {}
                    let now = ContinuousClock.now
                    let validUntil = held.lease.validUntil
                    report.update { $0.lastWork = now; $0.validUntil = validUntil }
                }
            }
        } catch let error as RedlockError {
            report.update { $0.error = error }
        } catch {
            report.update { $0.error = RedlockError(code: .cancelled, lockName: name, message: "\(error)") }
        }
        return report.value
    }

    @Test("a body that returns before any extension, while its keys were taken over meanwhile, gets leaseLost at the release, not its result")
    func takenOverBeforeTheRelease() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("stolen", options: testOptions())
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLock { _ in
                    // Overwritten from outside the lock: no extension is due for seconds, so
                    // only the release can tell.
                    try await occupy("stolen", on: servers)
                    return 1
                }
            }
            #expect(error?.code == .leaseLost, "\(String(describing: error))")
            #expect(error?.nodes.count == 3)
            #expect(try await values(of: "stolen", on: servers).allSatisfy { $0 == "someone-else" })
        }
    }

    @Test(
        "when every node freezes, the body is cancelled before validUntil and nobody else holds the lock while it runs",
        arguments: [2, 8]
    )
    func frozenNodes(expirySeconds: Int) async throws {
        try await withLockNodes(3) { client, servers in
            let expiry = Duration.seconds(expirySeconds)
            let name = "frozen-\(expirySeconds)"
            let lock = try client.makeLock(name, options: testOptions(expiry: expiry, timeoutFactor: 0.05, failFast: true))
            let validUntil = Locked<ContinuousClock.Instant?>(nil)
            let cancelledAt = Locked<ContinuousClock.Instant?>(nil)
            let error = await #expect(throws: RedlockError.self) {
                // Cancelled 400 ms before the validity ends (the default, 5 % of 2 s, leaves a
                // loaded machine 100 ms to resume the body).
                try await lock.withLock(safetyMargin: .milliseconds(400)) { held in
                    validUntil.update { $0 = held.lease.validUntil }
                    for server in servers { try await server.pause() }
                    do {
                        try await Task.sleep(for: .seconds(60))
                    } catch {
                        cancelledAt.update { $0 = .now }
                        throw error
                    }
                }
            }
            let bodyEnded = ContinuousClock.now
            for server in servers { try server.resume() }
            #expect(error?.code == .leaseLost)
            let deadline = try #require(validUntil.value)
            let cancelled = try #require(cancelledAt.value)
            print("expiry \(expiry): body cancelled \(cancelled.duration(to: deadline)) before validUntil")
            #expect(cancelled < deadline, "cancelled \(deadline.duration(to: cancelled)) after validUntil")

            // A second client polls until it has the lock: its lease starts after the body ended.
            let other = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) })
            let next = try await other.makeLock(name, options: testOptions(expiry: .seconds(5), tries: 100_000)).lock()
            #expect(bodyEnded < next.acquiredAt, "the body ran \(next.acquiredAt.duration(to: bodyEnded)) into the next holder's lease")
            try await other.makeLock(name, options: testOptions()).unlock(next)
            await other.shutdown()
        }
    }

    @Test("a body that ignores cancellation and ends after the deadline gets leaseLost, not its result", arguments: [false, true])
    func bodyIgnoringCancellation(throwing: Bool) async throws {
        struct BodyFailed: Error {}
        try await withLockNodes(3) { client, servers in
            // A long attempt budget: an extension still waiting for its reply when validUntil passes
            // must not be what decides the loss.
            let lock = try client.makeLock("stubborn", options: testOptions(expiry: .milliseconds(600), timeoutFactor: 0.5, failFast: true))
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLock { held in
                    let until = held.lease.validUntil.advanced(by: .milliseconds(20))
                    for server in servers { try await server.pause() }
                    // Deaf to cancellation: keeps going until past validUntil.
                    while ContinuousClock.now < until { try? await Task.sleep(for: .milliseconds(2)) }
                    if throwing { throw BodyFailed() }
                    return 1
                }
            }
            for server in servers { try server.resume() }
            #expect(error?.code == .leaseLost)
            if throwing {
                #expect(error?.underlyingError is BodyFailed, "\(String(describing: error))")
            } else {
                #expect(error?.underlyingError == nil)
            }
        }
    }

    @Test("withLease refuses a lease with no validity left, without running the body")
    func withLeaseRefusesStaleLease() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("stale", options: testOptions(expiry: .milliseconds(300)))
            let stale = try await lock.lock()
            try await Task.sleep(until: stale.validUntil.advanced(by: .milliseconds(100)), clock: .continuous)
            let other = try client.makeLock("stale", options: testOptions(tries: 1_000))
            let successor = try await other.lock()
            let ran = Locked(false)
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLease(stale) { _ in
                    ran.update { $0 = true }
                    return 1
                }
            }
            #expect(error?.code == .leaseExpired)
            #expect(!ran.value)
            #expect(try await values(of: "stale", on: servers).allSatisfy { $0 == successor.value })
            try await other.unlock(successor)
        }
    }

    @Test("withLease confirms a copy of a lease on the nodes before its body runs: a released copy whose validity lies ahead is refused, taken over or gone, without running the body")
    func withLeaseConfirmsOnTheNodes() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("confirmed", options: testOptions(expiry: .seconds(5)))
            let ran = Locked(0)
            // Released, then taken by another holder while the copy's validity lies ahead.
            let copy = try await lock.lock()
            try await lock.unlock(copy)
            let successor = try await lock.lock()
            let takenOver = await #expect(throws: RedlockError.self) {
                try await lock.withLease(copy) { _ in ran.update { $0 += 1 } }
            }
            #expect(takenOver?.code == .leaseTakenOver, "\(String(describing: takenOver))")
            #expect(try await values(of: "confirmed", on: servers).allSatisfy { $0 == successor.value })
            try await lock.unlock(successor)
            // Released, and nobody took it.
            let gone = await #expect(throws: RedlockError.self) {
                try await lock.withLease(successor) { _ in ran.update { $0 += 1 } }
            }
            #expect(gone?.code == .leaseExpired, "\(String(describing: gone))")
            #expect(ran.value == 0)
            #expect(try await values(of: "confirmed", on: servers).allSatisfy { $0 == nil })
            // A lease still held runs, with its validity renewed by the confirmation.
            let held = try await lock.lock()
            let renewed = try await lock.withLease(held) { held in held.lease.validUntil }
            #expect(renewed > held.validUntil)
            #expect(try await values(of: "confirmed", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("a scope's default safety margin fits any expiry the lock accepts: with a 10–40 ms expiry, withLock's defaults are accepted (before: the 5 ms floor was past extendWhenRemaining × expiry, invalidConfiguration)")
    func defaultMarginFitsShortExpiry() async throws {
        try await withLockNodes(1) { client, _ in
            for milliseconds in [10, 20, 40] {
                let lock = try client.makeLock("short-\(milliseconds)", options: LockOptions(expiry: .milliseconds(milliseconds), tries: 50))
                // The lease may be lost or never won on a loaded machine: only the parameters matter.
                do { try await lock.withLock { _ in } } catch {
                    #expect((error as? RedlockError)?.code != .invalidConfiguration, "\(milliseconds) ms: \(error)")
                }
            }
        }
    }

    @Test("a lease has one scope at a time: a second withLease on a lease a scope holds is refused and leaves it and its keys to that scope (whatever else is wrong with it), as does an unlock that sends nothing; unlock of a scope's lease from outside cancels its body")
    func oneScopePerLease() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("one-scope", options: testOptions(expiry: .seconds(5)))
            let lease = try await lock.lock()
            let finish = OneTimeEvent<Void>()
            let first = await Self.runningScope(lock, lease, until: finish)
            let secondRan = Locked(false)
            let second = await #expect(throws: RedlockError.self) {
                try await lock.withLease(lease) { _ in secondRan.update { $0 = true } }
            }
            #expect(second?.code == .invalidConfiguration, "\(String(describing: second))")
            // Refused for other reasons too, and an unlock that sends nothing (another lock's):
            // none of them touches the running scope or its keys.
            let badParameters = await #expect(throws: RedlockError.self) {
                try await lock.withLease(lease, extendWhenRemaining: 2) { _ in }
            }
            #expect(badParameters?.code == .invalidConfiguration)
            let fromCancelled = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await lock.withLease(lease) { _ in }
            }
            await #expect(throws: RedlockError.self) { try await fromCancelled.value }
            let otherLock = try client.makeLock("one-scope-other", options: testOptions())
            let wrongLock = await #expect(throws: RedlockError.self) { try await otherLock.unlock(lease) }
            #expect(wrongLock?.code == .invalidConfiguration)
            #expect(!secondRan.value)
            #expect(try await values(of: "one-scope", on: servers).allSatisfy { $0 == lease.value }, "the refused scope released the lease")
            finish.fire()
            #expect(try await first.value)
            #expect(try await values(of: "one-scope", on: servers).allSatisfy { $0 == nil })

            // An outside unlock of the scope's lease: the body is cancelled then, not at the
            // next extension seconds later.
            let started = OneTimeEvent<Lease>()
            let scoped = Task {
                try await lock.withLock { held in
                    started.fire(held.lease)
                    try await Task.sleep(for: .seconds(30))
                }
            }
            let scopedLease = await started.wait()
            let unlockedAt = ContinuousClock.now
            try await lock.unlock(scopedLease)
            let lost = await #expect(throws: RedlockError.self) { try await scoped.value }
            #expect(lost?.code == .leaseLost, "\(String(describing: lost))")
            #expect(unlockedAt.duration(to: .now) < .seconds(2))
            #expect(try await values(of: "one-scope", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("a value of your own is one lease: withLock with the fixed value a running scope holds is refused before it acquires, and a failed acquire with that value (which deletes it where granted) interrupts the scope")
    func ownValueIsOneLease() async throws {
        try await withLockNodes(3) { client, servers in
            var options = testOptions(expiry: .seconds(5))
            options.value = .fixed("shared")
            let lock = try client.makeLock("own-value", options: options)
            let entered = OneTimeEvent<Void>()
            let first = Task {
                try await lock.withLock { _ in
                    entered.fire()
                    try await Task.sleep(for: .seconds(30))
                }
            }
            await entered.wait()
            // An attempt with the value would fail here (two nodes stalled past its budget), and
            // its clean-up would delete the value where it was granted.
            let quick = try client.makeLock(
                "own-value", options: LockOptions(expiry: .seconds(10), tries: 1, timeoutFactor: 0.01, value: .fixed("shared"))
            )
            var stalls: [RedisServerStall] = []
            for server in servers.dropFirst() { stalls.append(try await server.stall(for: .milliseconds(400))) }
            let refused = await #expect(throws: RedlockError.self) { try await quick.withLock { _ in } }
            #expect(refused?.code == .invalidConfiguration, "\(String(describing: refused))")
            for stall in stalls { await stall.waitUntilOver() }
            #expect(try await values(of: "own-value", on: servers).allSatisfy { $0 == "shared" }, "the running scope's keys were deleted")
            // The same value from a generator fails that way: the scope hears of it at once.
            let generated = try client.makeLock(
                "own-value", options: LockOptions(expiry: .seconds(10), tries: 1, timeoutFactor: 0.01, value: LockValue(generator: { "shared" }))
            )
            stalls = []
            for server in servers.dropFirst() { stalls.append(try await server.stall(for: .milliseconds(400))) }
            await #expect(throws: RedlockError.self) { try await generated.tryLock() }
            let failedAt = ContinuousClock.now
            let lost = await #expect(throws: RedlockError.self) { try await first.value }
            #expect(lost?.code == .leaseLost, "\(String(describing: lost))")
            #expect(failedAt.duration(to: .now) < .seconds(5), "the scope ran on after its keys were deleted")
            for stall in stalls { await stall.waitUntilOver() }
        }
    }

    @Test("withLease refuses, without running the body, a lease held past its maximumHoldTime; after shutdown it sends nothing, as unlock does")
    func withLeaseRefusalsSendNothingLate() async throws {
        try await withRedisServers(3) { servers in
            let connections = servers.map { RedisConnection(configuration: $0.configuration()) }
            let client = try RedlockClient(connections: connections)
            let lock = try client.makeLock("late", options: testOptions(expiry: .seconds(5)))
            let lease = try await lock.lock()
            try await Task.sleep(until: lease.acquiredAt.advanced(by: .milliseconds(150)), clock: .continuous)
            let ran = Locked(false)
            let capped = await #expect(throws: RedlockError.self) {
                try await lock.withLease(lease, maximumHoldTime: .milliseconds(100)) { _ in ran.update { $0 = true } }
            }
            #expect(capped?.code == .holdTimeExceeded, "\(String(describing: capped))")
            #expect(!ran.value)
            let second = try await lock.lock()
            await client.shutdown()
            let afterShutdown = await #expect(throws: RedlockError.self) {
                try await lock.withLease(second) { _ in ran.update { $0 = true } }
            }
            #expect(afterShutdown?.code == .clientShutDown)
            #expect(!ran.value)
            #expect(try await values(of: "late", on: servers).allSatisfy { $0 == second.value }, "a release went out after shutdown")
            for connection in connections { await connection.shutdown() }
        }
    }

    /// A client over `servers` that the test shuts down itself, once every node answered.
    private static func clientToShutDown(_ servers: [RedisServer]) async throws -> RedlockClient {
        let client = try RedlockClient(
            nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(2)) }
        )
        for status in await client.checkNodes() { _ = try status.result.get() }
        return client
    }

    /// A `withLease` on `lease` whose body runs until `finish` fires, once its body runs; its
    /// task returns whether the lease was valid when the body ended.
    private static func runningScope(_ lock: DistributedLock, _ lease: Lease, until finish: OneTimeEvent<Void>) async -> Task<Bool, any Error> {
        let entered = OneTimeEvent<Void>()
        let task = Task {
            try await lock.withLease(lease) { held in
                entered.fire()
                await finish.wait()
                return held.isValid
            }
        }
        await entered.wait()
        return task
    }

    @Test("withLease's maximumHoldTime counts from the lease's acquire, not from its confirmation; the confirmation is reported to onExtended")
    func holdTimeCountsFromTheAcquire() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("hold-from-acquire", options: testOptions(expiry: .seconds(5)))
            let lease = try await lock.lock()
            try await Task.sleep(until: lease.acquiredAt.advanced(by: .milliseconds(600)), clock: .continuous)
            let extensions = Locked(0)
            let called = ContinuousClock.now
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLease(lease, maximumHoldTime: .milliseconds(1_200), onExtended: { _ in extensions.update { $0 += 1 } }) { _ in
                    try await Task.sleep(for: .seconds(10))
                }
            }
            #expect(error?.code == .holdTimeExceeded)
            // The cap is 600 ms after the call (room for a late wake-up from the sleep before it);
            // counted from the confirmation it would be 1.2 s.
            #expect(called.duration(to: .now) < .milliseconds(1_000), "\(called.duration(to: .now))")
            #expect(extensions.value == 1)
            #expect(try await values(of: "hold-from-acquire", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("a withLock whose acquire is still out when shutdown begins never runs its body; shutdown waits for it and its lease is released before the connections close")
    func shutdownDuringAcquire() async throws {
        try await withRedisServers(3) { servers in
            let client = try await Self.clientToShutDown(servers)
            let lock = try client.makeLock("shut-acquiring", options: testOptions(expiry: .seconds(10)))
            var stalls: [RedisServerStall] = []
            // 400 ms: the acquire is still out when shutdown begins (unless that takes 400 ms),
            // and its answers and release come within the 500 ms shutdown waits for it
            // (`scopeReleaseWait`, from shutdown's start, after the nodes fell asleep).
            for server in servers { stalls.append(try await server.stall(for: .milliseconds(400))) }
            let ran = Locked(false)
            let scoped = Task {
                try await lock.withLock { _ in
                    ran.update { $0 = true }
                    try await Task.sleep(for: .seconds(30))
                }
            }
            #expect(await eventually { client.runningScopes == 1 })
            await client.shutdown()
            let error = await #expect(throws: RedlockError.self) { try await scoped.value }
            #expect(error?.code == .clientShutDown, "\(String(describing: error))")
            #expect(!ran.value, "the body ran on a client that was shutting down")
            for stall in stalls { await stall.waitUntilOver() }
            #expect(try await values(of: "shut-acquiring", on: servers).allSatisfy { $0 == nil }, "the lease was left on the nodes")
        }
    }

    @Test("single-flight with a fixed value: scopes one after another on the same name and value all run, one at a time (each successor enters as its predecessor's release passes the gate on)")
    func singleFlightScopesWithOneValue() async throws {
        try await withLockNodes(3) { client, servers in
            var options = testOptions(expiry: .seconds(5), tries: 1_000)
            options.value = .fixed("one-value")
            options.singleFlight = true
            let lock = try client.makeLock("sf-scopes", options: options)
            let counts = Locked((inside: 0, overlaps: 0))
            // A withLock that starts while a scope of that value runs is refused (a lease has one
            // scope): the nodes hold every acquire until all twelve are counted as running, so
            // none starts late on a loaded machine.
            var stalls: [RedisServerStall] = []
            for server in servers { stalls.append(try await server.stall(for: .seconds(2))) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<12 {
                    group.addTask {
                        try await lock.withLock { _ in
                            counts.update { $0.inside += 1; if $0.inside > 1 { $0.overlaps += 1 } }
                            try await Task.sleep(for: .milliseconds(2))
                            counts.update { $0.inside -= 1 }
                        }
                    }
                }
                #expect(await eventually(within: .seconds(2)) { client.runningScopes == 12 })
                try await group.waitForAll()
            }
            for stall in stalls { await stall.waitUntilOver() }
            #expect(counts.value.overlaps == 0)
            #expect(try await values(of: "sf-scopes", on: servers).allSatisfy { $0 == nil })

            // One that starts while a scope of that value runs waits at the gate and runs after
            // it (before: refused with invalidConfiguration, so only scopes started together ran).
            let entered = OneTimeEvent<Void>()
            let finish = OneTimeEvent<Void>()
            let first = Task {
                try await lock.withLock { _ in
                    entered.fire()
                    await finish.wait()
                    return ContinuousClock.now
                }
            }
            await entered.wait()
            let second = Task { try await lock.withLock { _ in ContinuousClock.now } }
            #expect(await eventually(within: .seconds(2)) { client.runningScopes == 2 })
            finish.fire()
            let firstEnded = try await first.value
            let secondRan = try await second.value
            #expect(secondRan >= firstEnded)
            #expect(try await values(of: "sf-scopes", on: servers).allSatisfy { $0 == nil })

            // A scope of that value that did not come through the gate (a lock of the name
            // without single-flight): a single-flight withLock is refused up front, sending
            // nothing, and the gate stays free (before: it re-attached to that scope's keys, was
            // refused then, and kept the gate until that lease's validity ended).
            var ungatedOptions = options
            ungatedOptions.singleFlight = false
            let ungated = try client.makeLock("sf-scopes", options: ungatedOptions)
            let holding = OneTimeEvent<Void>()
            let release = OneTimeEvent<Void>()
            let holder = Task {
                try await ungated.withLock { _ in
                    holding.fire()
                    await release.wait()
                }
            }
            await holding.wait()
            let refused = await #expect(throws: RedlockError.self) { try await lock.withLock { _ in } }
            #expect(refused?.code == .invalidConfiguration, "\(String(describing: refused))")
            release.fire()
            try await holder.value
            let after = try await lock.tryLock()
            try await lock.unlock(after)
        }
    }

    @Test("shutdown interrupts a running scope and releases its lease before the connections close, and ends a lock() of the same client waiting behind it")
    func shutdownInterruptsScopes() async throws {
        try await withRedisServers(3) { servers in
            let client = try await Self.clientToShutDown(servers)
            let lock = try client.makeLock("shut-scope", options: testOptions(expiry: .seconds(10)))
            let waiter = try client.makeLock("shut-scope", options: LockOptions(expiry: .seconds(10), tries: 1_000, retryDelay: .constant(.seconds(5))))
            let entered = OneTimeEvent<Void>()
            let scoped = Task {
                try await lock.withLock { _ in
                    entered.fire()
                    try await Task.sleep(for: .seconds(30))
                }
            }
            await entered.wait()
            let waiting = Task { try await waiter.lock(timeout: .seconds(20)) }
            #expect(await eventually { client.waitingLockCalls(for: "shut-scope") == 1 })
            let began = ContinuousClock.now
            await client.shutdown()
            let shutdownTook = began.duration(to: .now)
            let scopeError = await #expect(throws: RedlockError.self) { try await scoped.value }
            #expect(scopeError?.code == .clientShutDown, "\(String(describing: scopeError))")
            let waiterError = await #expect(throws: RedlockError.self) { try await waiting.value }
            #expect(waiterError?.code == .clientShutDown, "\(String(describing: waiterError))")
            #expect(began.duration(to: .now) < .seconds(2), "shutdown \(shutdownTook), the scope and the waiter \(began.duration(to: .now))")
            #expect(try await values(of: "shut-scope", on: servers).allSatisfy { $0 == nil }, "the scope's lease was left on the nodes")
        }
    }

    @Test("HeldLease stops saying valid the moment the scope ends the lease, before the body is cancelled: keys deleted, maximumHoldTime passed, unlocked from outside; and once the scope has released it")
    func heldLeaseEndsWithTheScope() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("held-ends", options: testOptions(expiry: .seconds(2)))
            // What the body's HeldLease says when its cancellation reaches it: the scope has
            // decided by then, so a body that checks `isValid` rather than cancellation stops too.
            @Sendable func seenAtCancellation(
                _ interrupt: @escaping @Sendable (Lease) async throws -> Void, maximumHoldTime: Duration? = nil
            ) async throws -> (error: RedlockError?, valid: Bool, remaining: Duration, deadlineAhead: Bool) {
                let seen = Locked<(Bool, Duration, Bool)?>(nil)
                let started = OneTimeEvent<Lease>()
                let scope = Task {
                    try await lock.withLock(maximumHoldTime: maximumHoldTime) { held in
                        let cancelled = OneTimeEvent<Void>()
                        await withTaskCancellationHandler {
                            started.fire(held.lease)
                            await cancelled.wait()
                        } onCancel: {
                            seen.update { $0 = (held.isValid, held.remainingValidity, held.deadline > .now) }
                            cancelled.fire()
                        }
                    }
                }
                try await interrupt(await started.wait())
                let error = await #expect(throws: RedlockError.self) { try await scope.value }
                let (valid, remaining, ahead) = try #require(seen.value)
                return (error, valid, remaining, ahead)
            }

            // The keys deleted on every node: the next extension (after 1.33 s) finds them gone.
            let deleted = try await seenAtCancellation { _ in
                for server in servers { _ = try await server.run(RedisCommand("DEL", "held-ends")) }
            }
            #expect(deleted.error?.code == .leaseLost, "\(String(describing: deleted.error))")
            #expect(deleted.deadlineAhead, "the deadline still lies ahead, so only the scope's end can say it")
            #expect(!deleted.valid && deleted.remaining == .zero)

            let capped = try await seenAtCancellation({ _ in }, maximumHoldTime: .milliseconds(100))
            #expect(capped.error?.code == .holdTimeExceeded, "\(String(describing: capped.error))")
            #expect(capped.deadlineAhead && !capped.valid && capped.remaining == .zero)

            let unlocked = try await seenAtCancellation { lease in try await lock.unlock(lease) }
            #expect(unlocked.error?.code == .leaseLost, "\(String(describing: unlocked.error))")
            #expect(unlocked.deadlineAhead && !unlocked.valid && unlocked.remaining == .zero)

            // Unlocked from outside while every node sleeps: the body is told as the deletes go
            // out, not once their answers come (before: it saw the lease valid until then, while
            // a node that had run the delete could grant the lock to another process).
            // The release's budget (2.4 s) and the client's reply timeout (3 s) outlast the
            // nodes' 1 s sleep: its votes come when they wake (with the suite's 1 s reply
            // timeout, a node's answer could miss it by the few ms between its sleep's start
            // and the delete's send).
            try await withSecondClient(on: servers, commandTimeout: .seconds(3)) { other in
                let outside = try other.makeLock("held-ends-outside", options: testOptions(expiry: .seconds(3), timeoutFactor: 0.8))
                let toldAt = Locked<ContinuousClock.Instant?>(nil)
                let entered = OneTimeEvent<Lease>()
                let scope = Task {
                    try await outside.withLock { held in
                        entered.fire(held.lease)
                        if await eventually(within: .seconds(5), { !held.isValid }) { toldAt.update { $0 = .now } }
                    }
                }
                let lease = await entered.wait()
                var stalls: [RedisServerStall] = []
                for server in servers { stalls.append(try await server.stall(for: .seconds(1))) }
                let unlocking = Task { try await outside.unlock(lease) }
                let stalledUntil = try #require(stalls.map { $0.startedAt + $0.duration }.min())
                try await unlocking.value
                let whileOut = await #expect(throws: RedlockError.self) { try await scope.value }
                #expect(whileOut?.code == .leaseLost, "\(String(describing: whileOut))")
                let told = try #require(toldAt.value, "the body never saw the lease end")
                #expect(told < stalledUntil - .milliseconds(300), "told \(stalledUntil.duration(to: told)) after the nodes woke")
                for stall in stalls { await stall.waitUntilOver() }
            }

            // A HeldLease kept past its scope: released, so not valid, though its deadline is ahead.
            let kept = try await lock.withLock { held in held }
            #expect(kept.deadline > .now)
            #expect(!kept.isValid && kept.remainingValidity == .zero)
            #expect(try await values(of: "held-ends", on: servers).allSatisfy { $0 == nil })
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
            #expect(try await values(of: "capped", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("a body that ends in time counts as ended in time while its actor is busy: a main-actor caller whose actor is held up past the hold-time cap and the deadline still gets the body's result")
    func bodyEndsInTimeOnABusyActor() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("busy-actor", options: testOptions(expiry: .milliseconds(600)))
            #expect(try await Self.returnsWhileTheMainActorIsHeldUp(lock, servers: servers) == 42)
            #expect(try await values(of: "busy-actor", on: servers).allSatisfy { $0 == nil })
        }
    }

    /// A main-actor `withLock` whose body returns at once, leaving the main actor busy with other
    /// work (a job that blocks it) and every node frozen, for longer than the hold-time cap and
    /// the lease: the scope must see the body's end as it was, not when the actor came free.
    @MainActor private static func returnsWhileTheMainActorIsHeldUp(_ lock: DistributedLock, servers: [RedisServer]) async throws -> Int {
        try await lock.withLock(maximumHoldTime: .milliseconds(300)) { held in
            for server in servers { try await server.pause() }
            let heldUpUntil = held.lease.validUntil.advanced(by: .milliseconds(200))
            Task { @MainActor in
                while ContinuousClock.now < heldUpUntil { usleep(1_000) }
                for server in servers { try? server.resume() }
            }
            return 42
        }
    }

    @Test("withLease in a task already cancelled throws cancelled without running the body, and releases the lease")
    func withLeaseWhenCancelled() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("cancelled-before", options: testOptions())
            let lease = try await lock.lock()
            let ran = Locked(false)
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await lock.withLease(lease) { _ in ran.update { $0 = true } }
            }
            let error = await #expect(throws: RedlockError.self) { try await task.value }
            #expect(error?.code == .cancelled)
            #expect(!ran.value)
            #expect(try await values(of: "cancelled-before", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("bad scope parameters are rejected before acquiring, among them an extension window (extendWhenRemaining × expiry − safetyMargin) under 1 ms, and a share at which every extension is due at once")
    func invalidScope() async throws {
        try await withLockNodes(1) { client, servers in
            let lock = try client.makeLock("scope-args", options: testOptions())
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLock(extendWhenRemaining: 1.5) { _ in 1 }
            }
            #expect(error?.code == .invalidConfiguration)
            // Less than 1 ms for each extension to be confirmed before the deadline: accepted
            // before, every such scope lost its lease at its first extension.
            let tinyWindows: [(Double, Duration?)] = [(1e-6, nil), (1e-4, nil), (0.001, .microseconds(4_200))]
            for (share, margin) in tinyWindows {
                let ran = Locked(false)
                let tiny = await #expect(throws: RedlockError.self) {
                    try await lock.withLock(extendWhenRemaining: share, safetyMargin: margin) { _ in ran.update { $0 = true } }
                }
                #expect(tiny?.code == .invalidConfiguration && tiny?.message.contains("for each extension to be confirmed before the deadline") == true,
                        "\(share), \(String(describing: margin)): \(String(describing: tiny))")
                // The default margin is not the caller's to lower: the message says what is.
                let named = margin == nil ? "after the default safety margin (half of it)" : "less safetyMargin (4.2 ms) leaves "
                #expect(tiny?.message.contains(named) == true, "\(String(describing: tiny))")
                #expect(!ran.value)
            }
            // A share that leaves less than half an attempt's budget (1 s here) from a new
            // lease's validity (4.948 s with a drift factor of 0.01) to the next extension: at or
            // past the validity every extension was due at once (thousands a second), just
            // under it they came back to back (0.98799 of 1 s: 3,076 a second).
            for share in [0.9, 0.98, 0.99, 0.999] {
                let backToBack = await #expect(throws: RedlockError.self) {
                    try await lock.withLock(extendWhenRemaining: share) { _ in 1 }
                }
                #expect(backToBack?.code == .invalidConfiguration && backToBack?.message.contains("extensions would follow each other back to back") == true, "\(String(describing: backToBack))")
            }
            #expect(try await lock.withLock(extendWhenRemaining: 0.88) { _ in 1 } == 1)
            // 1.1 ms is enough to be accepted.
            #expect(try await lock.withLock(extendWhenRemaining: 0.001, safetyMargin: .microseconds(3_900)) { _ in 1 } == 1)
            #expect(try await values(of: "scope-args", on: servers) == [nil])
        }
    }

    @Test("a scope whose release the nodes refuse (NOREPLICAS on 2 of 3) returns the body's result and warns that the keys stay until they expire (before: a debug line only)")
    func refusedReleaseWarns() async throws {
        try await withRedisServers(3) { servers throws in
            let records = Locked<[String]>([])
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, logger: capturingLogger(into: records, level: .info))
            let lock = try client.makeLock("refused-release", options: LockOptions(expiry: .seconds(30), tries: 1))
            func setMinReplicas(_ count: Int) async throws {
                for server in servers.prefix(2) {
                    let admin = RedisConnection(configuration: server.configuration())
                    let reply: Result<RedisValue, any Error>
                    do { reply = .success(try await admin.send(RedisCommand("CONFIG", "SET", "min-replicas-to-write", "\(count)"))) } catch { reply = .failure(error) }
                    await admin.shutdown()
                    _ = try reply.get()
                }
            }
            let result = try await lock.withLock { _ in
                try await setMinReplicas(1)
                return "body ran"
            }
            try await setMinReplicas(0)
            #expect(result == "body ran")
            let warnings = records.value.filter { $0.hasPrefix("warning") && $0.contains("could not release the lock at the end of its scope") }
            #expect(warnings.count == 1 && warnings.allSatisfy { $0.contains("refused-release") && $0.contains("NOREPLICAS") }, "\(records.value)")
            #expect(try await values(of: "refused-release", on: servers).filter { $0 != nil }.count == 2)
            await client.shutdown()
        }
    }

}
