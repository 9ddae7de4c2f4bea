import Histogram
import Redlock
import RedlockTestSupport
import Synchronization

/// The workloads `redlock bench` measures.
enum BenchWorkloads {
    /// The raw floor: one `SET name value NX PX 8000` to every node concurrently, then one
    /// compare-and-delete script to every node concurrently, straight on the transport's
    /// connections with no task per node, waiting for every reply. No quorum, no validity, no
    /// retry: only the wire work a lock+unlock cycle cannot avoid (``RawFloor/cycle(nodes:name:value:expiry:)``).
    static func floor(nodes: [RedisConnection], name: String, value: String) -> BenchOperation {
        let cycle = RawFloor.cycle(nodes: nodes, name: name, value: value)
        return {
            try await cycle()
            return nil
        }
    }

    /// One uncontended library cycle: `lock()` then `unlock(lease)`, by default with every
    /// default option.
    static func cycle(client: RedlockClient, name: String, options: LockOptions = LockOptions()) throws -> BenchOperation {
        let lock = try client.makeLock(name, options: options)
        return {
            let lease = try await lock.lock()
            try await lock.unlock(lease)
            return nil
        }
    }

    /// A new connection to one node (connect, TLS handshake if any, `AUTH`/`SELECT` if any),
    /// one `PING`, then its shutdown: what a reconnect costs.
    static func connect(_ configuration: RedisConnectionConfiguration) -> BenchOperation {
        {
            let connection = RedisConnection(configuration: configuration)
            let started = ContinuousClock.now
            do {
                try await connection.ping()
            } catch {
                await connection.shutdown()
                throw error
            }
            let took = started.duration(to: .now)
            await connection.shutdown()
            return took
        }
    }

    /// An uncontended `lock()` on its own: the unlock after it is not measured.
    static func acquire(client: RedlockClient, name: String, options: LockOptions = LockOptions()) throws -> BenchOperation {
        let lock = try client.makeLock(name, options: options)
        return {
            let start = ContinuousClock.now
            let lease = try await lock.lock()
            let acquired = start.duration(to: .now)
            try await lock.unlock(lease)
            return acquired
        }
    }
}

/// Contention on one name: `tasks` tasks with `options` (by default every default: retry delay
/// 50–250 ms, fast handoff on) take turns. Each holds the lock for `hold`, releases it, and then steps aside until another
/// task has acquired, so every acquisition is a handoff from one task to another; without that
/// the releasing task would take the free lock again at once, while the others sleep.
struct ContendedWorkload: Sendable {
    let client: RedlockClient
    let name: String
    let tasks: Int
    let hold: Duration
    var options = LockOptions()

    /// Runs for `duration`, then cancels the waiters. Latencies are handoffs, recorded in
    /// `turns`: from the moment a holder starts its release to the moment the next holder's
    /// `lock()` returns.
    func run(for duration: Duration, recordingIn turns: Turns) async throws -> BenchMeasurement {
        let lock = try client.makeLock(name, options: options)
        let start = ContinuousClock.now
        let hold = hold
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    while !Task.isCancelled {
                        let lease: Lease
                        do {
                            lease = try await lock.lock()
                        } catch {
                            if !Task.isCancelled { turns.failed(error) }
                            continue
                        }
                        let generation = turns.acquired(by: task, at: .now)
                        try? await Task.sleep(for: hold)
                        turns.releasing(at: .now)
                        do {
                            try await lock.unlock(lease)
                        } catch {
                            turns.failed(error)
                        }
                        await turns.waitForAcquisition(after: generation)
                    }
                }
            }
            group.addTask {
                try? await Task.sleep(for: duration)
                turns.finish()
            }
            _ = await group.next()
            group.cancelAll()
            turns.finish()
        }
        return turns.measurement(elapsed: start.duration(to: .now))
    }
}

/// Who holds the contended lock, when it was last released, and who waits for the next holder.
final class Turns: Sendable {
    private struct State {
        var measurement = BenchMeasurement()
        var generation = 0
        var releaseStarted: ContinuousClock.Instant?
        var finished = false
        var waiters: [(generation: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state = Mutex(State())

    /// Records an acquisition (a handoff when someone released before) and wakes the task
    /// that stepped aside. Returns the new generation.
    func acquired(by task: Int, at instant: ContinuousClock.Instant) -> Int {
        let (generation, ready) = state.withLock { state -> (Int, [CheckedContinuation<Void, Never>]) in
            if state.finished { return (state.generation, []) }
            if let released = state.releaseStarted {
                state.measurement.record(released.duration(to: instant))
                state.releaseStarted = nil
            }
            state.generation += 1
            let ready = state.waiters.filter { $0.generation < state.generation }.map(\.continuation)
            state.waiters.removeAll { $0.generation < state.generation }
            return (state.generation, ready)
        }
        for continuation in ready { continuation.resume() }
        return generation
    }

    func releasing(at instant: ContinuousClock.Instant) {
        state.withLock { state in
            if !state.finished { state.releaseStarted = instant }
        }
    }

    func failed(_ error: any Error) {
        state.withLock { state in
            if !state.finished { state.measurement.recordError(error) }
        }
    }

    /// Returns once an acquisition newer than `generation` happened, or the run finished.
    func waitForAcquisition(after generation: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.finished || state.generation > generation { return true }
                state.waiters.append((generation, continuation))
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Stops recording and releases every waiting task.
    func finish() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.finished = true
            defer { state.waiters = [] }
            return state.waiters.map(\.continuation)
        }
        for continuation in waiters { continuation.resume() }
    }

    /// What was recorded so far, over `elapsed`.
    func measurement(elapsed: Duration) -> BenchMeasurement {
        var measurement = state.withLock { $0.measurement }
        measurement.elapsed = elapsed
        return measurement
    }
}
