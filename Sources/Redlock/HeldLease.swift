import Synchronization

/// The lease of a scoped lock while its body runs, kept current as it is extended in the
/// background. Read it at any time to see how long the body may still act.
///
/// Its deadline (``deadline``) is the lease's ``Lease/validUntil`` minus the scope's safety
/// margin: the moment the body is cancelled unless an extension has been confirmed by then.
/// Once the scope has ended the lease for the body (it was lost, unlocked from outside, past its
/// ``DistributedLock/withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``
/// hold-time cap, or the client shut down) or released it (the body returned), the lease is
/// no longer valid here, whatever its deadline says: ``isValid`` is false and
/// ``remainingValidity`` zero from that moment, before the body is cancelled.
public final class HeldLease: Sendable, CustomStringConvertible {
    private struct State {
        var lease: Lease
        /// Set once an extension was confirmed only after the previous lease's deadline: the lease
        /// then had a gap, and work done across it was not protected.
        var lapsed = false
        /// The latest failed extension, for the lease-lost error.
        var lastExtensionError: RedlockError?
        /// When the scope first interrupted the body or began releasing the lease: from then on
        /// the body may no longer act, whatever the deadline.
        var endedAt: ContinuousClock.Instant?
    }

    private let state: Mutex<State>
    /// How long before ``Lease/validUntil`` the body is cancelled.
    public let safetyMargin: Duration

    init(_ lease: Lease, safetyMargin: Duration) {
        state = Mutex(State(lease: lease))
        self.safetyMargin = safetyMargin
    }

    /// The lease as of its latest extension.
    public var lease: Lease { state.withLock { $0.lease } }
    /// The lock's name.
    public var name: String { lease.name }
    /// The fencing token of the acquisition (unchanged by extensions), when fencing is on.
    public var fencingToken: Int64? { lease.fencingToken }

    /// When the body is cancelled unless an extension is confirmed first: the current lease's
    /// ``Lease/validUntil`` minus ``safetyMargin``, on this process's monotonic clock.
    public var deadline: ContinuousClock.Instant {
        state.withLock { Self.deadline(of: $0.lease, margin: safetyMargin) }
    }

    /// How long the body may still act: the time to ``deadline``; zero once it has passed, the
    /// lease lapsed, or the scope ended it (see ``HeldLease``).
    public var remainingValidity: Duration {
        let margin = safetyMargin
        let deadline: ContinuousClock.Instant? = state.withLock { state in
            state.lapsed || state.endedAt != nil ? nil : Self.deadline(of: state.lease, margin: margin)
        }
        guard let deadline else { return .zero }
        return Swift.max(.zero, ContinuousClock.now.duration(to: deadline))
    }

    /// Whether the body may still act: the deadline has not passed, the lease never lapsed, and
    /// the scope has not ended it (see ``HeldLease``). A pause right after this check can outlast
    /// it; use the fencing token where the resource can check it.
    public var isValid: Bool { remainingValidity > .zero }

    /// Whether an extension was confirmed only after the previous deadline had passed (for
    /// example after the whole process was paused): the work is then treated as unprotected.
    var hasLapsed: Bool { state.withLock { $0.lapsed } }

    /// The latest failed extension, if any.
    var lastExtensionError: RedlockError? { state.withLock { $0.lastExtensionError } }

    /// Whether the scope ended the lease for the body (interrupted it, or is releasing it).
    var hasEnded: Bool { state.withLock { $0.endedAt != nil } }

    /// Takes a confirmed extension. If it started after the previous deadline, the lease had a
    /// gap and stays lapsed.
    func update(_ extended: Lease) {
        let margin = safetyMargin
        state.withLock { state in
            if extended.acquiredAt >= Self.deadline(of: state.lease, margin: margin) { state.lapsed = true }
            state.lease = extended
            state.lastExtensionError = nil
        }
    }

    /// Marks the lease as no longer the body's: the scope interrupted the body, or is about to
    /// release the lease. Called before the body is cancelled, so that a body that sees its
    /// cancellation sees this too.
    func end() {
        let now = ContinuousClock.now
        state.withLock { state in
            if state.endedAt == nil { state.endedAt = now }
        }
    }

    /// Whether the scope ended the lease for the body before `instant`.
    func ended(before instant: ContinuousClock.Instant) -> Bool {
        state.withLock { $0.endedAt.map { $0 < instant } ?? false }
    }

    /// Records a failed extension.
    func extensionFailed(_ error: RedlockError) {
        state.withLock { $0.lastExtensionError = error }
    }

    /// Whether the body's work up to `instant` was protected: the lease never lapsed and
    /// `instant` is before the current deadline.
    func protects(until instant: ContinuousClock.Instant) -> Bool {
        let margin = safetyMargin
        return state.withLock { !$0.lapsed && instant < Self.deadline(of: $0.lease, margin: margin) }
    }

    static func deadline(of lease: Lease, margin: Duration) -> ContinuousClock.Instant {
        lease.validUntil.advanced(by: .zero - margin)
    }

    /// The current lease's description.
    public var description: String { lease.description }
}
