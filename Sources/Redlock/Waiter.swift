import Synchronization

/// How a wait for a release (or for a single-flight gate) ended.
struct WaitOutcome: Sendable, Equatable {
    /// Whether what it waited for ended it (a release, a handoff, the gate), rather than its
    /// timeout, cancellation, or a confirmation of the subscription (which calls for one more
    /// attempt but says nothing of the lock being free).
    var woken: Bool
    /// When whoever heard the release (a releaser in this process, or the subscriber's thread)
    /// sent the waiter's prepared attempt for it; nil otherwise.
    var handedOverAt: ContinuousClock.Instant?
    /// A fair lock's handoff heard from a quorum of nodes, counted as their grants (nil
    /// otherwise; no attempt was sent then).
    var handoff: HandoffGrant?
    /// The release whose hearer sent the attempt (see ``handedOverAt``), as
    /// ``LocalCoordination`` numbers them; nil otherwise.
    var release: UInt64?
    /// Whether a subscription's confirmation ended it: the attempt after it is one more look
    /// (a release may have gone unheard before the subscription took effect), not a try of
    /// the caller's count.
    var confirmed = false
}

/// The nodes that handed a fair lock to a waiter, heard from their messages: each node's key
/// holds the waiter's value and lives for `expiry` from the moment it was handed (the shortest
/// life of those messages).
struct HandoffGrant: Sendable, Equatable {
    var nodes: [Int]
    var expiry: Duration
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

    /// What a wait's registration found.
    enum Registration {
        /// The waiter is where the event will find it.
        case waiting
        /// The waiter is where the event will find it, until this deadline rather than the one
        /// the wait began with.
        case waitingUntil(ContinuousClock.Instant)
        /// The wait is over before it began: the event it waits for came already (`woken`), or
        /// something that only calls for another look did (a subscription's confirmation:
        /// `confirmed`).
        case ended(woken: Bool, confirmed: Bool = false)
    }

    /// Suspends until the waiter is claimed. `register` puts it where the event will find it,
    /// under the caller's lock, or says why the wait is over already. Without a `deadline` only
    /// the event or cancellation end the wait.
    func wait(timer: DeadlineTimer, deadline: ContinuousClock.Instant?, register: () -> Registration) async {
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                install(continuation)
                switch register() {
                case let .ended(woken, confirmed):
                    claim(byRelease: woken, byConfirmation: confirmed)?.resume()
                case .waiting:
                    if let deadline { timer.schedule(self, at: deadline) }
                case let .waitingUntil(until):
                    timer.schedule(self, at: until)
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
    func claim(byRelease: Bool, byConfirmation: Bool = false) -> UnsafeContinuation<Void, Never>? {
        state.withLock { state in
            guard !state.finished else { return nil }
            state.finished = true
            state.outcome.woken = byRelease
            state.outcome.confirmed = byConfirmation
            finishedFlag.store(true, ordering: .releasing)
            defer { state.continuation = nil }
            return state.continuation
        }
    }

    /// Notes the handoff that gives the waiter the lock, for a wait that ends as it begins.
    func noteHandoff(_ grant: HandoffGrant) {
        state.withLock { $0.outcome.handoff = grant }
    }

    /// Resumes a claimed waiter, noting when its next attempt was sent for it (nil: not sent), or
    /// the handoff that gave it the lock.
    func resume(
        _ continuation: UnsafeContinuation<Void, Never>, handedOverAt: ContinuousClock.Instant?, handoff: HandoffGrant? = nil, release: UInt64? = nil
    ) {
        state.withLock { state in
            state.outcome.handedOverAt = handedOverAt
            state.outcome.handoff = handoff
            state.outcome.release = release
        }
        continuation.resume()
    }

    func expire() {
        claim(byRelease: false)?.resume()
    }
}
