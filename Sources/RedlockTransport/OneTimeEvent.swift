import Synchronization

/// Something that happens once (a thread exited, a server became ready, a scope was
/// interrupted) that any number of tasks can wait for, and handlers be called on, before or
/// after it happened.
package final class OneTimeEvent<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var waiters: [CheckedContinuation<Value, Never>] = []
        var handlers: [@Sendable (Value) -> Void] = []
    }

    private let state = Mutex(State())

    package init() {}

    /// Records the event and wakes every waiter. Later calls are ignored. Returns whether this
    /// call recorded it.
    @discardableResult
    package func fire(_ value: Value) -> Bool {
        let (recorded, waiters, handlers) = state.withLock { state in
            guard state.value == nil else { return (false, [CheckedContinuation<Value, Never>](), [@Sendable (Value) -> Void]()) }
            state.value = value
            defer {
                state.waiters = []
                state.handlers = []
            }
            return (true, state.waiters, state.handlers)
        }
        for waiter in waiters { waiter.resume(returning: value) }
        for handler in handlers { handler(value) }
        return recorded
    }

    /// Calls `handler` with the value when the event happens, on the thread that records it;
    /// at once, on the caller's thread, if it happened already.
    package func onFire(_ handler: @escaping @Sendable (Value) -> Void) {
        let known: Value? = state.withLock { state in
            if let value = state.value { return value }
            state.handlers.append(handler)
            return nil
        }
        if let known { handler(known) }
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
