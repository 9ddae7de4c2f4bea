import Dispatch
import InMemoryTracing
import Logging
import Redlock
import RedlockServiceLifecycle
import RedlockTestSupport
import ServiceLifecycle
import Testing
import Tracing

@Suite("Lifecycle and tracing")
struct LifecycleAndTracingTests {
    @Test("spans for acquire, extend and release carry the lock, node count, quorum, attempts and outcome")
    func spans() async throws {
        try await withRedisServers(3) { servers throws in
            let tracer = InMemoryTracer()
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, tracer: tracer)
            let lock = try client.makeLock("traced", options: LockOptions(tries: 1))
            let lease = try await lock.lock()
            _ = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            let extended = try await lock.extend(lease)
            try await lock.unlock(extended)
            let spans = tracer.finishedSpans
            #expect(spans.map(\.operationName) == ["redlock.acquire", "redlock.acquire", "redlock.extend", "redlock.release"])
            #expect(spans[0].attributes["redlock.lock"]?.toSpanAttribute() == "traced")
            #expect(spans[0].attributes["redlock.nodes"]?.toSpanAttribute() == 3)
            #expect(spans[0].attributes["redlock.quorum"]?.toSpanAttribute() == 2)
            #expect(spans[0].attributes["redlock.attempts"]?.toSpanAttribute() == 1)
            #expect(spans[0].attributes["redlock.outcome"]?.toSpanAttribute() == "ok")
            #expect(spans[1].attributes["redlock.outcome"]?.toSpanAttribute() == "taken")
            // Taken is an outcome, not an error of the operation.
            #expect(spans[1].status == nil)
            #expect(spans[3].attributes["redlock.outcome"]?.toSpanAttribute() == "ok")
            await client.shutdown()
        }
    }

    @Test("as a Service in a ServiceGroup, the client is shut down on graceful shutdown")
    func service() async throws {
        try await withRedisServers(1) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let lock = try client.makeLock("lifecycle", options: LockOptions(tries: 1))
            // Listed before the app: the group shuts down in reverse order, so the app can still
            // lock while it drains.
            let app = DrainingApp(lock: lock)
            let group = ServiceGroup(services: [RedlockClientService(client), app], logger: Logger(label: "test"))
            let running = Task { try await group.run() }
            let lease = try await lock.lock()
            try await lock.unlock(lease)
            await group.triggerGracefulShutdown()
            try await running.value
            #expect(await app.drainedWithLock.value == true)
            let error = await #expect(throws: RedlockError.self) { try await lock.lock() }
            #expect(error?.code == .clientShutDown)
        }
    }
}

extension LifecycleAndTracingTests {
    /// How `shutdown()` is reached in ``cancelledShutdownReleases(_:)``.
    enum CancelledShutdown: String, CaseIterable, CustomTestStringConvertible, Sendable {
        /// From a task cancelled before it calls `shutdown()`.
        case cancelledCaller
        /// A `ServiceGroup` with the client's service and the scope's, cancelled.
        case cancelledGroup
        var testDescription: String { rawValue }
    }

    @Test("shutdown() from a cancelled task, or a cancelled service group, still waits for a running scope's release: no key is left (before: the waits were skipped and the lease stayed on every node for its expiry)", arguments: CancelledShutdown.allCases)
    func cancelledShutdownReleases(_ way: CancelledShutdown) async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let lock = try client.makeLock("cancelled-shutdown", options: LockOptions(expiry: .seconds(30)))
            let (entered, signal) = AsyncStream<Void>.makeStream()
            struct Scope: Service {
                let lock: DistributedLock
                let signal: AsyncStream<Void>.Continuation
                func run() async throws {
                    try await lock.withLock { _ in
                        signal.yield()
                        try await Task.sleep(for: .seconds(60))
                    }
                }
            }
            let scope = Scope(lock: lock, signal: signal)
            switch way {
            case .cancelledCaller:
                let running = Task { try await scope.run() }
                for await _ in entered { break }
                let shutter = Task {
                    withUnsafeCurrentTask { $0?.cancel() }
                    await client.shutdown()
                }
                await shutter.value
                let error = await #expect(throws: RedlockError.self) { try await running.value }
                #expect(error?.code == .clientShutDown)
            case .cancelledGroup:
                let group = ServiceGroup(services: [RedlockClientService(client), scope], logger: Logger(label: "test"))
                let running = Task { try await group.run() }
                for await _ in entered { break }
                running.cancel()
                _ = try? await running.value
            }
            #expect(try await values(of: "cancelled-shutdown", on: servers) == [nil, nil, nil])
            await client.shutdown()
        }
    }

    @Test("a cancelled shutdown() with a frozen node waits its grace period (500 ms), not the command timeout (10 s)")
    func cancelledShutdownFrozenNode() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration(commandTimeout: .seconds(10)) })
            let lock = try client.makeLock("frozen-shutdown", options: LockOptions(expiry: .seconds(30)))
            let lease = try await lock.lock()
            try await servers[0].pause()
            defer { try? servers[0].resume() }
            // A release queued behind nothing the frozen node will answer.
            let releasing = Task { try? await lock.unlock(lease) }
            let shutter = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                let started = ContinuousClock.now
                await client.shutdown()
                return started.duration(to: .now)
            }
            let took = await shutter.value
            #expect(took < .seconds(4), "shutdown took \(took)")
            await releasing.value
        }
    }

    @Test("an unlock() racing shutdown() either completes (the keys are gone) or throws clientShutDown, never a node failure of the connections closing under it (before: noQuorum with 'shutdown' from the nodes and the keys left)")
    func unlockRacingShutdown() async throws {
        try await withRedisServers(3) { servers throws in
            var outcomes: [String: Int] = [:]
            for round in 0..<60 {
                let client = try RedlockClient(nodes: servers.map { $0.configuration() })
                let name = "race-\(round)"
                let lock = try client.makeLock(name, options: LockOptions(expiry: .seconds(30)))
                let lease = try await lock.lock()
                let unlocking = Task { () -> RedlockError? in
                    do throws(RedlockError) { try await lock.unlock(lease); return nil } catch { return error }
                }
                // Spread the shutdown over the unlock's window (a few to a hundred µs).
                let spin = ContinuousClock.now + .microseconds(round % 6 * 20)
                while ContinuousClock.now < spin {}
                await client.shutdown()
                let error = await unlocking.value
                let left = try await values(of: name, on: servers).filter { $0 != nil }.count
                outcomes["\(error?.code.description ?? "ok"), \(left) keys left", default: 0] += 1
                #expect(error == nil || error?.code == .clientShutDown, "round \(round): \(String(describing: error))")
                if error == nil { #expect(left == 0, "round \(round): unlocked, yet \(left) keys left") }
            }
            #expect(outcomes.keys.contains("ok, 0 keys left"), "\(outcomes)")
        }
    }
}

extension LifecycleAndTracingTests {
    @Test("shutdown() from a scope's own body does not wait for that scope (it cannot end first: before, the whole 500 ms release wait went by for nothing)")
    func shutdownFromScopeBody() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let lock = try client.makeLock("shutdown-inside", options: LockOptions(expiry: .seconds(30)))
            let took = Locked<Duration?>(nil)
            let error = await #expect(throws: RedlockError.self) {
                try await lock.withLock { _ in
                    let started = ContinuousClock.now
                    await client.shutdown()
                    took.update { $0 = started.duration(to: .now) }
                }
            }
            #expect(error?.code == .clientShutDown)
            let waited = try #require(took.value)
            #expect(waited < RedlockClient.scopeReleaseWait * 0.9, "shutdown waited \(waited) for the scope that called it")
        }
    }

    @Test("a task a scope's body started, outliving the scope, is not in it: its unlock() after shutdown() throws clientShutDown (it inherits the task-locals that mark scope bodies)")
    func taskOutlivingScope() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let scoped = try client.makeLock("outlived", options: LockOptions(expiry: .seconds(30)))
            let other = try client.makeLock("other-outlived", options: LockOptions(expiry: .seconds(30)))
            let otherLease = try await other.lock()
            let (proceed, go) = AsyncStream<Void>.makeStream()
            let later = try await scoped.withLock { _ in
                Task { () -> RedlockError? in
                    for await _ in proceed { break }
                    do throws(RedlockError) { try await other.unlock(otherLease); return nil } catch { return error }
                }
            }
            await client.shutdown()
            go.yield()
            let error = await later.value
            #expect(error?.code == .clientShutDown, "\(String(describing: error))")
        }
    }

    @Test("a scope's body cleaning up while the client shuts down (cancelled, it unlocks another lease before it ends) gets that unlock through: shutdown waits for the scope anyway (before: clientShutDown, and the keys stayed)")
    func cleanUpUnlockDuringShutdown() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let scoped = try client.makeLock("scoped", options: LockOptions(expiry: .seconds(30)))
            let other = try client.makeLock("other", options: LockOptions(expiry: .seconds(30)))
            let otherLease = try await other.lock()
            let (entered, signal) = AsyncStream<Void>.makeStream()
            let cleanUp = Locked<String?>(nil)
            let scope = Task {
                try await scoped.withLock { _ in
                    let (cancelled, fire) = AsyncStream<Void>.makeStream()
                    await withTaskCancellationHandler {
                        signal.yield()
                        for await _ in cancelled { break }
                    } onCancel: {
                        fire.yield()
                    }
                    // Cancelled by the shutdown: clean up, then end.
                    do throws(RedlockError) {
                        try await other.unlock(otherLease)
                        cleanUp.update { $0 = "ok" }
                    } catch {
                        cleanUp.update { $0 = "\(error.code)" }
                    }
                }
            }
            for await _ in entered { break }
            await client.shutdown()
            _ = try? await scope.value
            #expect(cleanUp.value == "ok")
            #expect(try await values(of: "other", on: servers) == [nil, nil, nil])
            #expect(try await values(of: "scoped", on: servers) == [nil, nil, nil])
        }
    }
}

extension LifecycleAndTracingTests {
    @Test("with replicaAcknowledgements, shutdown() during an acquire whose WAIT blocks (nodes without replicas: 1 s, half the command timeout) lets the WAIT end, so the release queued behind it runs: no key left once shutdown() returns (before: the connection closed 500 ms in, Redis dropped the queued release, and every node kept the key for its 60 s expiry)")
    func shutdownDuringReplicaWait() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration(commandTimeout: .seconds(2)) })
            let lock = try client.makeLock("waited-at-shutdown", options: LockOptions(expiry: .seconds(60), replicaAcknowledgements: 1))
            let acquiring = Task { () -> RedlockError.Code? in
                do throws(RedlockError) { _ = try await lock.lock(); return nil } catch { return error.code }
            }
            // The SETs ran; each connection's WAIT now blocks for up to a second.
            let set = ContinuousClock.now + .seconds(5)
            while try await values(of: "waited-at-shutdown", on: servers).contains(nil), ContinuousClock.now < set {
                try await Task.sleep(for: .milliseconds(2))
            }
            await client.shutdown()
            #expect(await acquiring.value == .clientShutDown)
            #expect(try await values(of: "waited-at-shutdown", on: servers) == [nil, nil, nil], "keys left")
        }
    }

    @Test("an extend() whose nodes' connections the shutdown closes (two of three frozen) throws clientShutDown, not noQuorum with empty 'shutdown' causes")
    func extendClosedByShutdown() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let lock = try client.makeLock("extended-at-shutdown", options: LockOptions(expiry: .seconds(60)))
            let lease = try await lock.lock()
            defer { try? servers[1].resume(); try? servers[2].resume() }
            try await servers[1].pause()
            try await servers[2].pause()
            let extending = Task { () -> RedlockError.Code? in
                do throws(RedlockError) { _ = try await lock.extend(lease); return nil } catch { return error.code }
            }
            // The extension is written to every node (the live one answers it) before the shutdown.
            try await Task.sleep(for: .milliseconds(100))
            await client.shutdown()
            #expect(await extending.value == .clientShutDown)
        }
    }

    @Test("an unlock() that begins while shutdown() waits (here for a scope whose body ignores its cancellation for 300 ms) still releases the lease and is waited for; one that begins after shutdown() returned throws clientShutDown (before: clientShutDown from the moment shutdown() was called, and the keys stayed for their expiry)")
    func unlockDuringShutdownWait() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let plain = try client.makeLock("released-while-shutting", options: LockOptions(expiry: .seconds(30)))
            let later = try client.makeLock("released-after-shutdown", options: LockOptions(expiry: .seconds(30)))
            let scoped = try client.makeLock("stubborn-scope", options: LockOptions(expiry: .seconds(30)))
            let lease = try await plain.lock()
            let lateLease = try await later.lock()
            let (entered, signal) = AsyncStream<Void>.makeStream()
            let scope = Task {
                try await scoped.withLock { _ in
                    signal.yield()
                    // Cancelled by the shutdown, the body takes 300 ms more to end (a wait its
                    // cancellation does not cut short): shutdown waits for it meanwhile.
                    try? await Task.sleep(for: .seconds(30))
                    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                        DispatchQueue.global().asyncAfter(deadline: .now() + 0.3) { done.resume() }
                    }
                }
            }
            for await _ in entered { break }
            let shutter = Task { await client.shutdown() }
            // Shutting down: a new acquire is refused.
            let probe = try client.makeLock("probe-shutting", options: LockOptions(expiry: .seconds(30), tries: 1))
            // A tryLock on a client shutting down fails at once, without a round trip.
            var refused = false
            let giveUp = ContinuousClock.now + .seconds(5)
            while !refused, ContinuousClock.now < giveUp {
                do throws(RedlockError) {
                    let got = try await probe.tryLock()
                    try await probe.unlock(got)
                } catch {
                    refused = error.code == .clientShutDown
                }
            }
            #expect(refused, "the client did not start shutting down")
            let during: RedlockError?
            do throws(RedlockError) { try await plain.unlock(lease); during = nil } catch { during = error }
            #expect(during == nil, "\(String(describing: during))")
            await shutter.value
            _ = try? await scope.value
            #expect(try await values(of: "released-while-shutting", on: servers) == [nil, nil, nil])
            let after = await #expect(throws: RedlockError.self) { try await later.unlock(lateLease) }
            #expect(after?.code == .clientShutDown)
            for server in servers { _ = try await server.run(RedisCommand("DEL", "released-after-shutdown")) }
        }
    }
}

extension LifecycleAndTracingTests {
    /// What runs its acquire when ``shutdownDuringAcquireReleases(_:)`` shuts the client down.
    enum AcquireAtShutdown: String, CaseIterable, CustomTestStringConvertible, Sendable {
        /// `lock()`.
        case lock
        /// `withLock`, still acquiring (the scope's wait alone, 500 ms, is shorter than the
        /// attempt's budget).
        case withLock
        /// A `lock()` waiting behind a lease held in the same client, whose attempt the holder's
        /// `unlock()` sent behind its deletes.
        case waiterHere
        var testDescription: String { rawValue }
    }

    @Test("shutdown() during an acquire whose attempt waits for frozen nodes ends the attempt and releases what it set: the call throws clientShutDown, the live node holds no key once shutdown() returns, the frozen ones none once they run again (before: the key stayed on every node for its 60 s expiry)", arguments: AcquireAtShutdown.allCases)
    func shutdownDuringAcquireReleases(_ way: AcquireAtShutdown) async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let name = "acquire-at-shutdown-\(way.rawValue)"
            // A 3 s attempt budget: far longer than shutdown's waits.
            let lock = try client.makeLock(name, options: LockOptions(expiry: .seconds(60)))
            let holder = way == .waiterHere ? try await lock.lock() : nil
            let holderValue = holder?.value
            var unlocking: Task<Void, Never>?
            defer { try? servers[1].resume(); try? servers[2].resume() }
            // Every connection open before two nodes freeze, and frozen before the acquire (a
            // waiter's: before the holder's unlock sends it), so its commands wait on them.
            _ = await client.checkNodes()
            if way != .waiterHere {
                try await servers[1].pause()
                try await servers[2].pause()
            }
            let acquiring = Task { () -> RedlockError.Code? in
                do {
                    switch way {
                    case .lock, .waiterHere: _ = try await lock.lock()
                    case .withLock: try await lock.withLock { _ in }
                    }
                    return nil
                } catch {
                    return (error as? RedlockError)?.code
                }
            }
            if let holder {
                #expect(await eventually { client.waitingLockCalls(for: name) == 1 })
                try await servers[1].pause()
                try await servers[2].pause()
                unlocking = Task { try? await lock.unlock(holder) }
            }
            // The attempt's key is on the live node (the waiter's: not the holder's value).
            let set = ContinuousClock.now + .seconds(5)
            var onLive: String?
            while ContinuousClock.now < set {
                onLive = try await servers[0].value(of: name)
                if let onLive, onLive != holderValue { break }
                try await Task.sleep(for: .milliseconds(2))
            }
            #expect(onLive != nil && onLive != holderValue, "the attempt did not reach the live node: \(String(describing: onLive))")
            let started = ContinuousClock.now
            await client.shutdown()
            let took = started.duration(to: .now)
            #expect(await acquiring.value == .clientShutDown)
            await unlocking?.value
            #expect(try await servers[0].value(of: name) == nil, "the live node kept the attempt's key (shutdown took \(took))")
            try servers[1].resume()
            try servers[2].resume()
            // Each frozen node runs the attempt's SET, then the release queued behind it.
            let cleared = ContinuousClock.now + .seconds(5)
            var left = try await values(of: name, on: servers)
            while left != [nil, nil, nil], ContinuousClock.now < cleared {
                try await Task.sleep(for: .milliseconds(5))
                left = try await values(of: name, on: servers)
            }
            #expect(left == [nil, nil, nil], "keys left after shutdown (it took \(took))")
        }
    }
}

/// An app service that takes the lock once more while it shuts down.
struct DrainingApp: Service {
    let lock: DistributedLock
    let drainedWithLock = Drained()

    func run() async throws {
        try? await gracefulShutdown()
        do {
            let lease = try await lock.lock(timeout: .seconds(2))
            try await lock.unlock(lease)
            await drainedWithLock.set(true)
        } catch {
            await drainedWithLock.set(false)
        }
    }
}

actor Drained {
    private(set) var value: Bool?
    func set(_ newValue: Bool) { value = newValue }
}
