import Synchronization

/// Something that happens once (a thread exited, a server became ready) and that any number of
/// tasks can wait for, before or after it happened.
package final class OneTimeEvent<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var waiters: [CheckedContinuation<Value, Never>] = []
    }

    private let state = Mutex(State())

    package init() {}

    /// Records the event and wakes every waiter. Later calls are ignored. Returns whether this
    /// call recorded it.
    @discardableResult
    package func fire(_ value: Value) -> Bool {
        let (recorded, waiters): (Bool, [CheckedContinuation<Value, Never>]) = state.withLock { state in
            guard state.value == nil else { return (false, []) }
            state.value = value
            defer { state.waiters = [] }
            return (true, state.waiters)
        }
        for waiter in waiters { waiter.resume(returning: value) }
        return recorded
    }

    /// The value, once the event happened.
    package var value: Value? { state.withLock { $0.value } }

    /// Waits until the event happens and returns its value.
    package func wait() async -> Value {
        await withCheckedContinuation { continuation in
            let known: Value? = state.withLock { state in
                if let value = state.value { return value }
                state.waiters.append(continuation)
                return nil
            }
            if let known { continuation.resume(returning: known) }
        }
    }
}

extension OneTimeEvent where Value == Void {
    /// Records the event and wakes every waiter.
    package func fire() { fire(()) }
}
