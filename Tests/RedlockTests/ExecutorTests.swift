import Dispatch
import Logging
import MetricsTestKit
import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

@Suite("Locks on the client's executor")
struct ExecutorTests {
    @Test("lock, extend, unlock and withLock run on the client's I/O thread when the task prefers client.executor")
    func operationsStayOnTheLoop() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("executor-thread", options: testOptions())
            let threads = try await withTaskExecutorPreference(client.executor) {
                var seen = [currentThreadName()]
                let lease = try await lock.lock()
                seen.append(currentThreadName())
                let extended = try await lock.extend(lease)
                seen.append(currentThreadName())
                try await lock.unlock(extended)
                seen.append(currentThreadName())
                seen.append(try await lock.withLock { _ in currentThreadName() })
                seen.append(currentThreadName())
                return seen
            }
            #expect(threads == Array(repeating: "redlock-io", count: 6))
        }
    }

    @Test("an actor that calls lock, extend and unlock runs none of their work, only its own resumptions; also for a lock() that waits for a release")
    func actorCallerRunsNoLockWork() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("actor-caller", options: testOptions())
            let executor = CountingExecutor(label: "actor-caller")
            let caller = LockCaller(executor: executor)
            let rounds = 20
            // lock(), extend(), unlock(): three awaits per round, each resumed on the actor at most
            // once (the runtime takes the idle actor over without a job where it can: one job a
            // round, measured). Work of the lock on the actor would add jobs at its suspensions:
            // with lock() and unlock() made to run on their caller's executor, 58 for 20 rounds.
            let jobs = try await caller.cycles(lock, rounds: rounds)
            #expect(jobs <= 2 * rounds, "\(jobs) jobs on the actor for \(rounds) rounds")
            // A contended lock(): its waits, wakes and attempts run off the actor too.
            let held = try await lock.lock()
            let waiting = Task { try await caller.lockAndUnlock(lock) }
            #expect(await eventually(within: .seconds(5)) { client.waitingLockCalls(for: "actor-caller") == 1 })
            try await lock.unlock(held)
            // One job measured (six with lock() and unlock() on their caller's executor).
            let contended = try await waiting.value
            #expect(contended <= 2, "\(contended) jobs on the actor")
        }
    }

    @Test("withLock's body runs on whatever executor the caller's task prefers, not only the client's")
    func bodyFollowsAnyPreference() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("executor-any", options: testOptions())
            let executor = QueueExecutor(label: "custom")
            let queues = try await withTaskExecutorPreference(executor) {
                let scoped = try await lock.withLock { _ in QueueExecutor.current }
                let leased = try await lock.withLease(try await lock.lock()) { _ in QueueExecutor.current }
                return [scoped, leased]
            }
            #expect(queues == ["custom", "custom"])
        }
    }

    @Test("200 tasks on the executor increment a plain counter under the lock: exactly 200, never two inside")
    func mutualExclusionOnTheLoop() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("executor-counter", options: testOptions(tries: .max, failFast: true))
            // The group's tasks run on the I/O thread, and so does the counter (a default actor
            // runs on the executor its caller prefers).
            let counter = try await withTaskExecutorPreference(client.executor) {
                try await UnsafeCounter.incremented(under: lock, tasks: 200)
            }
            #expect(await counter.read() == 200)
            #expect(await counter.maximumInside == 1)
        }
    }

    @Test("a body busy on the I/O thread is still cancelled at its lease's deadline (the deadline watch runs off that thread); the error says the loop was held, which is logged once as a warning and measured")
    func busyBodyOnTheLoopIsCancelled() async throws {
        try await withRedisServers(3) { servers throws in
            let records = Locked<[String]>([])
            let logger = capturingLogger(into: records)
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, logger: logger, metrics: metrics)
            try await withTeardown {
                let lock = try client.makeLock("executor-busy", options: testOptions(expiry: .milliseconds(600)))
                let outcome = await finished(within: .seconds(15)) { () -> (String, String, Duration) in
                    await withTaskExecutorPreference(client.executor) {
                        let start = ContinuousClock.now
                        do {
                            // Never suspends: the I/O thread reads no reply while it spins, so no
                            // extension is confirmed, and only a watch elsewhere can stop it.
                            try await lock.withLock { _ in
                                while !Task.isCancelled, start.duration(to: .now) < .seconds(5) {}
                            }
                            return ("ok", "", start.duration(to: .now))
                        } catch let error as RedlockError {
                            return ("\(error.code)", error.message, start.duration(to: .now))
                        } catch {
                            return ("\(error)", "", start.duration(to: .now))
                        }
                    }
                }
                guard let (code, message, took) = outcome else {
                    Issue.record("withLock with a busy body never returned")
                    return
                }
                #expect(code == "leaseLost")
                // The deadline is 600 ms minus the safety margin after the acquire; a watch held up
                // behind the body would let it spin its whole 5 s.
                #expect(took < .seconds(3), "the body ran \(took)")
                #expect(message.contains("the client's event loop has been running tasks on its executor for"), "\(message)")
                // A second hold, shorter but over 100 ms, is logged at debug level only.
                await withTaskExecutorPreference(client.executor) {
                    let start = ContinuousClock.now
                    while start.duration(to: .now) < .milliseconds(150) {}
                }
                #expect(await eventually { (try? metrics.expectTimer("redlock_event_loop_held_seconds").values.count) == 2 })
                let holds = try metrics.expectTimer("redlock_event_loop_held_seconds").values
                #expect(holds.first.map { $0 >= 400_000_000 } == true, "\(holds)")
                #expect(holds.last.map { $0 >= 150_000_000 } == true, "\(holds)")
                let lines = records.value.filter { $0.contains("event loop ran tasks on its executor") }
                #expect(lines.map { $0.prefix(while: { $0 != " " }) } == ["warning", "debug"], "\(lines)")
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("a lease lost for another reason while the body suspends on the executor: the error does not blame the loop, and no hold is measured")
    func lostLeaseWithoutHold() async throws {
        try await withRedisServers(3) { servers throws in
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: servers.map { $0.configuration() }, metrics: metrics)
            try await withTeardown {
                let lock = try client.makeLock("executor-flushed", options: testOptions(expiry: .milliseconds(600)))
                let message = await withTaskExecutorPreference(client.executor) { () -> String in
                    do {
                        try await lock.withLock { _ in
                            for server in servers { try await server.flushAll() }
                            try await Task.sleep(for: .seconds(5))
                        }
                        return "no error"
                    } catch let error as RedlockError {
                        return "\(error.code): \(error.message)"
                    } catch {
                        return "\(error)"
                    }
                }
                #expect(message.hasPrefix("leaseLost"), "\(message)")
                #expect(!message.contains("event loop"), "\(message)")
                #expect((try? metrics.expectTimer("redlock_event_loop_held_seconds").values) ?? [] == [])
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("with a majority of nodes frozen, a lock() on the executor fails within its attempt budgets (budgets set on the loop: the loop keeps them, then wakes the timer)")
    func frozenMajorityOnTheLoop() async throws {
        try await withLockNodes(3) { client, servers in
            try await servers[0].pause()
            try await servers[1].pause()
            defer {
                try? servers[0].resume()
                try? servers[1].resume()
            }
            // Two attempts of 100 ms each (expiry 1 s × 0.1), and a few ms between them.
            let lock = try client.makeLock("executor-frozen", options: testOptions(expiry: .seconds(1), tries: 2, timeoutFactor: 0.1))
            let outcome = await finished(within: .seconds(5)) { () -> (RedlockError.Code?, String) in
                await withTaskExecutorPreference(client.executor) {
                    do throws(RedlockError) {
                        let lease = try await lock.lock()
                        try? await lock.unlock(lease)
                        return (nil, currentThreadName())
                    } catch {
                        return (error.code, currentThreadName())
                    }
                }
            }
            guard let (code, thread) = outcome else {
                Issue.record("lock() on the executor never returned with two of three nodes frozen")
                return
            }
            #expect(code == .noQuorum)
            #expect(thread == "redlock-io")
        }
    }

    @Test("after shutdown a task that prefers the client's executor still runs, on the global executor")
    func afterShutdown() async throws {
        try await withRedisServers(1) { servers throws in
            let client = try RedlockClient(nodes: [servers[0].configuration()])
            let lock = try client.makeLock("executor-shutdown", options: testOptions())
            let before = try await withTaskExecutorPreference(client.executor) {
                try await lock.unlock(try await lock.lock())
                return currentThreadName()
            }
            #expect(before == "redlock-io")
            await client.shutdown()
            let after = await finished(within: .seconds(5)) {
                await withTaskExecutorPreference(client.executor) { () -> (RedlockError.Code?, String) in
                    do throws(RedlockError) {
                        _ = try await lock.lock()
                        return (nil, currentThreadName())
                    } catch {
                        return (error.code, currentThreadName())
                    }
                }
            }
            #expect(after?.0 == .clientShutDown)
            #expect(after.map { $0.1 != "redlock-io" } == true)
        }
    }
}


/// A serial executor of the tests' own that counts the jobs it runs.
private final class CountingExecutor: SerialExecutor {
    private let queue: DispatchQueue
    private let counted = Mutex(0)

    init(label: String) {
        queue = DispatchQueue(label: label)
    }

    var jobs: Int { counted.withLock { $0 } }

    func enqueue(_ job: consuming ExecutorJob) {
        counted.withLock { $0 += 1 }
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedSerialExecutor()) }
    }
}

/// An actor on a ``CountingExecutor`` that calls a lock: the jobs its calls cost it.
private actor LockCaller {
    private let executor: CountingExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    init(executor: CountingExecutor) {
        self.executor = executor
    }

    /// `rounds` of lock, extend and unlock; returns the jobs the actor ran meanwhile (this
    /// method's own first job not counted).
    func cycles(_ lock: DistributedLock, rounds: Int) async throws -> Int {
        let before = executor.jobs
        for _ in 0..<rounds {
            let lease = try await lock.lock()
            try await lock.unlock(try await lock.extend(lease))
        }
        return executor.jobs - before
    }

    /// One lock() (that may wait) and its unlock; returns the jobs the actor ran meanwhile.
    func lockAndUnlock(_ lock: DistributedLock) async throws -> Int {
        let before = executor.jobs
        try await lock.unlock(try await lock.lock())
        return executor.jobs - before
    }
}
