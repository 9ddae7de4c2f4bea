import Synchronization

/// Cancels one child task from any other task: what a scoped lock's deadline watch uses to stop
/// the body, which runs as a child task of the caller (so it inherits the caller's task executor
/// preference, SE-0417) and has no `Task` handle to cancel.
///
/// The child registers itself for the time it runs ``run(_:)``; ``cancel()`` cancels it then,
/// or, when it comes first, as the child starts. Later calls of either are no-ops.
final class ChildCanceller: Sendable {
    private struct State {
        /// The child, while it runs the operation (see ``TaskReference``).
        var task: TaskReference?
        var requested = false
    }

    /// The running child. `UnsafeCurrentTask` is not `Sendable`, and its documentation calls
    /// any use outside `withUnsafeCurrentTask` undefined, because a reference may outlive its
    /// task. This one cannot: it is stored by the child itself at the start of
    /// ``ChildCanceller/run(_:)``, removed by it, under the same lock, before that call
    /// returns, and used (``ChildCanceller/cancel()``) only under that lock while stored. A
    /// task that has not returned from an async function is still running, and the runtime
    /// frees no running task (a child task lives at least until its parent collects it), so the
    /// reference is never used after its task ended. `UnsafeCurrentTask.cancel()` may be called
    /// from any thread: it is `Task.cancel()`'s runtime call. It runs the child's cancellation
    /// handlers at once, on the cancelling thread, with the lock held: the lock is private to
    /// this type, so no handler can take it again.
    private struct TaskReference: @unchecked Sendable {
        let task: UnsafeCurrentTask
    }

    private let state = Mutex(State())

    init() {}

    /// Runs `operation` in the calling task, cancellable by ``cancel()`` meanwhile.
    func run<R>(_ operation: () async -> R) async -> R {
        let cancelledFirst = withUnsafeCurrentTask { task -> Bool in
            state.withLock { state in
                if let task, !state.requested { state.task = TaskReference(task: task) }
                return state.requested
            }
        }
        if cancelledFirst { withUnsafeCurrentTask { $0?.cancel() } }
        defer { state.withLock { $0.task = nil } }
        return await operation()
    }

    /// Cancels the child that runs (or will run) ``run(_:)``.
    func cancel() {
        state.withLock { state in
            state.requested = true
            state.task?.task.cancel()
            state.task = nil
        }
    }
}
