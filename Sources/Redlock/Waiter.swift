import Synchronization

/// How a wait for a release (or for a single-flight gate) ended.
struct WaitOutcome: Sendable, Equatable {
    /// Whether what it waited for ended it (rather than its timeout or cancellation).
    var woken: Bool
    /// When whoever heard the release (a releaser in this process, or the subscriber's thread)
    /// sent the waiter's prepared attempt for it; nil otherwise.
    var handedOverAt: ContinuousClock.Instant?
}

/// One task waiting for something (a release, a single-flight gate): resumed exactly once, by
/// whoever claims it first — the event it waits for, its deadline on the client's
/// ``DeadlineTimer``, or its cancellation — with no task of its own for the deadline.
final class Waiter: Expiring {
    private struct State {
        var continuation: UnsafeContinuation<Void, Never>?
        var finished = false
        var outcome = WaitOutcome(woken: false)
    }

    private let state = Mutex(State())
    private let finishedFlag = Atomic<Bool>(false)

    var isFinished: Bool { finishedFlag.load(ordering: .acquiring) }

    /// How the wait ended (read once it has).
    var outcome: WaitOutcome { state.withLock { $0.outcome } }

    /// Suspends until the waiter is claimed. `register` puts it where the event will find it,
    /// under the caller's lock; it returns false when the event already happened, which then
    /// counts as being woken. Without a `deadline` only the event or cancellation end the wait.
    func wait(timer: DeadlineTimer, deadline: ContinuousClock.Instant?, register: () -> Bool) async {
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                install(continuation)
                if !register() {
                    claim(byRelease: true)?.resume()
                } else if let deadline {
                    timer.schedule(self, at: deadline)
                }
            }
        } onCancel: {
            expire()
        }
    }

    /// Hands over the waiting task's continuation; resumes it at once when already ended.
    private func install(_ continuation: UnsafeContinuation<Void, Never>) {
        let endedEarly = state.withLock { state in
            if state.finished { return true }
            state.continuation = continuation
            return false
        }
        if endedEarly { continuation.resume() }
    }

    /// Ends the wait, by the event it waits for or not; returns the continuation to resume
    /// (outside any lock), or nil when the wait had already ended or its continuation is not
    /// installed yet (then the wait resumes at once when it installs it).
    func claim(byRelease: Bool) -> UnsafeContinuation<Void, Never>? {
        state.withLock { state in
            guard !state.finished else { return nil }
            state.finished = true
            state.outcome.woken = byRelease
            finishedFlag.store(true, ordering: .releasing)
            defer { state.continuation = nil }
            return state.continuation
        }
    }

    /// Resumes a claimed waiter, noting when its next attempt was sent for it (nil: not sent).
    func resume(_ continuation: UnsafeContinuation<Void, Never>, handedOverAt: ContinuousClock.Instant?) {
        state.withLock { $0.outcome.handedOverAt = handedOverAt }
        continuation.resume()
    }

    func expire() {
        claim(byRelease: false)?.resume()
    }
}
