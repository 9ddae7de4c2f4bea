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
            #expect(spans[1].status?.code == .error)
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
