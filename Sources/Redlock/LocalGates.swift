import Synchronization

/// Per-name local queues for ``LockOptions/singleFlight``: one `lock()` call per name at a time
/// contends with other processes; the others wait here, first come first served.
///
/// The gate passes to the next caller when the holder unlocks, when its acquire fails, or —
/// should a holder never unlock — once its lease has run out.
final class LocalGates: Sendable {
    private struct Queued {
        let id: Int
        let waiter: Waiter
    }

    private struct Gate {
        /// The caller that has the gate.
        var owner: Int
        /// The value of the lease the owner acquired, once it has one.
        var holderValue: String?
        /// When the owner's lease runs out; nil while it is still acquiring.
        var holderValidUntil: ContinuousClock.Instant?
        /// First come first; may hold waiters that already ended (they remove themselves).
        var waiters: [Queued] = []
    }

    private struct State {
        var gates: [LockKey: Gate] = [:]
        var nextID = 0
    }

    private let state = Mutex(State())
    /// Ends waits at the owner's lease end.
    private let timer: DeadlineTimer

    init(timer: DeadlineTimer) {
        self.timer = timer
    }

    /// Waits for the gate of `name`, then owns it and returns true; returns false when `giveUp`
    /// passes first (owning nothing). Throws `CancellationError` when cancelled (and then owns
    /// nothing).
    func enter(_ name: String, giveUpAt giveUp: ContinuousClock.Instant? = nil) async throws -> Bool {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        while true {
            enum Step { case entered, wait(ContinuousClock.Instant?) }
            let step: Step = state.withLock { state in
                guard let gate = state.gates[LockKey(name)] else {
                    state.gates[LockKey(name)] = Gate(owner: id)
                    return .entered
                }
                if gate.owner == id { return .entered }
                if let until = gate.holderValidUntil, until <= .now {
                    // The owner's lease ran out without an unlock: take the gate over.
                    state.gates[LockKey(name)]?.owner = id
                    state.gates[LockKey(name)]?.holderValue = nil
                    state.gates[LockKey(name)]?.holderValidUntil = nil
                    return .entered
                }
                return .wait(gate.holderValidUntil)
            }
            guard case let .wait(holderEnd) = step else { return true }
            if Task.isCancelled { throw CancellationError() }
            if let giveUp, giveUp <= .now { return false }
            let wakeAt: ContinuousClock.Instant? = switch (holderEnd, giveUp) {
            case let (end?, giveUp?): min(end, giveUp)
            case let (end, giveUp): end ?? giveUp
            }
            await waitForTurn(name, id: id, deadline: wakeAt)
            if Task.isCancelled {
                // If the gate was handed over just now, pass it on.
                let owns = state.withLock { $0.gates[LockKey(name)]?.owner == id }
                if owns { leave(name) }
                throw CancellationError()
            }
        }
    }

    /// Takes the gate of `name` if nobody has it (or its owner's lease ran out); never waits.
    func tryEnter(_ name: String) -> Bool {
        state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            guard let gate = state.gates[LockKey(name)] else {
                state.gates[LockKey(name)] = Gate(owner: id)
                return true
            }
            guard let until = gate.holderValidUntil, until <= .now else { return false }
            state.gates[LockKey(name)]?.owner = id
            state.gates[LockKey(name)]?.holderValue = nil
            state.gates[LockKey(name)]?.holderValidUntil = nil
            return true
        }
    }

    /// Queues `id` until it is handed the gate, `deadline` passes, or the task is cancelled.
    private func waitForTurn(_ name: String, id: Int, deadline: ContinuousClock.Instant?) async {
        let waiter = Waiter()
        await waiter.wait(timer: timer, deadline: deadline) {
            state.withLock { state in
                guard let gate = state.gates[LockKey(name)], gate.owner != id else { return false }
                state.gates[LockKey(name)]?.waiters.append(Queued(id: id, waiter: waiter))
                return true
            }
        }
        state.withLock { state in
            state.gates[LockKey(name)]?.waiters.removeAll { $0.waiter === waiter }
        }
    }

    /// Records that the owner of `name`'s gate acquired (or extended) `lease`.
    func held(_ lease: Lease) {
        state.withLock { state in
            guard state.gates[LockKey(lease.name)] != nil else { return }
            state.gates[LockKey(lease.name)]?.holderValue = lease.value
            state.gates[LockKey(lease.name)]?.holderValidUntil = lease.validUntil
        }
    }

    /// Passes the gate of `name` to the next waiter. With `value`, only if that lease owns it.
    func leave(_ name: String, value: String? = nil) {
        let next: UnsafeContinuation<Void, Never>? = state.withLock { state in
            guard let gate = state.gates[LockKey(name)] else { return nil }
            if let value, gate.holderValue != value { return nil }
            // Waiters that timed out or were cancelled meanwhile are skipped.
            while let first = state.gates[LockKey(name)]?.waiters.first {
                state.gates[LockKey(name)]?.waiters.removeFirst()
                guard let continuation = first.waiter.claim(byRelease: true) else { continue }
                state.gates[LockKey(name)]?.owner = first.id
                state.gates[LockKey(name)]?.holderValue = nil
                state.gates[LockKey(name)]?.holderValidUntil = nil
                return continuation
            }
            state.gates[LockKey(name)] = nil
            return nil
        }
        next?.resume()
    }
}
