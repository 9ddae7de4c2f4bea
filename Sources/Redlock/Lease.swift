import RedlockTransport

/// Proof that a lock was acquired: its name, the value written to the nodes, and how long it
/// stays valid. A value, not a handle: pass it to `unlock` and `extend`, or to another process.
public struct Lease: Sendable, Hashable, CustomStringConvertible {
    /// The lock's name (the key on every node).
    public let name: String
    /// The value written to the nodes; whoever has it can unlock or extend.
    public let value: String
    /// The expiry the keys were set with.
    public let expiry: Duration
    /// When the acquire (or latest extend) that produced this lease started; for a lease a fair
    /// release handed over (``LockOptions/fair``), when this process heard the handoffs.
    public let acquiredAt: ContinuousClock.Instant
    /// When the lease stops being valid: `acquiredAt + expiry − expiry × driftFactor − 2 ms`,
    /// measured on this process's monotonic clock. For a lease a fair release handed over it
    /// counts from the `lock()`'s first attempt instead (the releaser set the keys at some
    /// moment after it, on its own clock), so it is earlier than that.
    public let validUntil: ContinuousClock.Instant
    /// The fencing token of the acquisition when ``LockOptions/fencing`` is on, else `nil`.
    ///
    /// Strictly greater than the token of every earlier acquisition of this name, as long as no
    /// node loses its data. Send it with every write to the protected resource, and have the
    /// resource reject writes carrying a token lower than the highest it has seen: that stops a
    /// holder whose lease ran out during a pause from overwriting its successor's work.
    public let fencingToken: Int64?
    /// With ``LockOptions/singleFlight``, the ticket of the local caller that acquired the lease
    /// (kept by its extensions): an unlock or extension of a lease whose gate already passed to
    /// another local caller is told apart from that caller's, even when both hold one fixed value.
    var gateTicket: Int?
    /// For a value drawn at random for this lease's `lock()` (not a value of the caller's own):
    /// open while nobody else may use the value, so that releases of it lost with a connection
    /// are sent again (see `ReplayWindow` in the transport). ``handoff`` closes it: another
    /// process may then re-attach the value, and a late delete could remove its key. For a value
    /// of the caller's own, a window closed for good (its releases are never sent again); nil
    /// for a lease made with ``init(name:value:expiry:acquiredAt:validUntil:fencingToken:)``.
    var replayWindow: ReplayWindow?
    /// The nodes where the `lock()` that made it may have set its key (its acquires to the
    /// others were never written: a full queue, a failed connect): ``DistributedLock/unlock(_:)``
    /// sends the release to these alone. Every node for a value of the caller's own, a lease
    /// handed over or extended with ``LockOptions/setNXOnExtend``, and one made with
    /// ``init(name:value:expiry:acquiredAt:validUntil:fencingToken:)``.
    var mayHoldOn = NodeMask.all
    /// The client and the connections (``DistributedLock/lane``) of the `lock()` that made it;
    /// nil for a lease made with ``init(name:value:expiry:acquiredAt:validUntil:fencingToken:)``.
    /// That client releases it on those connections, behind any of its acquires still waiting
    /// there; ``mayHoldOn`` counts that client's nodes. Another client (or none) releases it on
    /// every node, and tells ``replayWindow`` that the value may be anywhere.
    var origin: Origin?

    /// A client (``RedlockClient/serial``) and the connections it used.
    struct Origin: Sendable, Equatable {
        let client: UInt64
        let lane: ConnectionLane
    }

    /// Creates a lease, e.g. to re-attach to one whose value another process handed over.
    public init(
        name: String,
        value: String,
        expiry: Duration,
        acquiredAt: ContinuousClock.Instant,
        validUntil: ContinuousClock.Instant,
        fencingToken: Int64? = nil
    ) {
        self.name = name
        self.value = value
        self.expiry = expiry
        self.acquiredAt = acquiredAt
        self.validUntil = validUntil
        self.fencingToken = fencingToken
    }

    /// Leases are equal when their public fields are (the local gate ticket is left out, so a
    /// lease made with ``init(name:value:expiry:acquiredAt:validUntil:fencingToken:)`` from
    /// another's fields equals it). Names and values compare as the nodes see them, by their
    /// UTF-8 bytes: `"caf\u{E9}"` and `"cafe\u{301}"`, equal as Swift strings, are two keys.
    public static func == (lhs: Lease, rhs: Lease) -> Bool {
        LockKey.sameBytes(lhs.name, rhs.name) && LockKey.sameBytes(lhs.value, rhs.value) && lhs.expiry == rhs.expiry
            && lhs.acquiredAt == rhs.acquiredAt
            && lhs.validUntil == rhs.validUntil && lhs.fencingToken == rhs.fencingToken
    }

    /// Hashes the fields ``==(_:_:)`` compares.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(name)
        hasher.combine(value)
        hasher.combine(expiry)
        hasher.combine(acquiredAt)
        hasher.combine(validUntil)
        hasher.combine(fencingToken)
    }

    /// How much validity is left now; zero once it has run out.
    public var remainingValidity: Duration {
        Swift.max(.zero, ContinuousClock.now.duration(to: validUntil))
    }

    /// Whether the lease is still valid now. Act on the protected resource only while it is,
    /// and prefer fencing where the resource allows it: a pause after this check can outlast it.
    public var isValid: Bool {
        ContinuousClock.now < validUntil
    }

    /// `lease "NAME" (valid for …, token N)`; the value is left out.
    public var description: String {
        let token = fencingToken.map { ", token \($0)" } ?? ""
        return "lease \(RedlockError.shown(name)) (valid for \(remainingValidity)\(token))"
    }
}

extension Lease {
    /// What another process needs to take over a lease: its name, value, expiry and fencing
    /// token, with the validity left when it was made (for information: validity is measured on
    /// each process's own clock, so the receiver re-attaches to get a lease of its own).
    ///
    /// `Codable`, e.g. as JSON in a message or an environment variable. The receiver calls
    /// ``DistributedLock/reattach(_:)``.
    public struct Handoff: Sendable, Hashable, Codable {
        /// The lock's name.
        public var name: String
        /// The value the nodes hold.
        public var value: String
        /// The expiry the keys were set with, in milliseconds.
        public var expiryMilliseconds: Int64
        /// The validity left when the handoff was made, in milliseconds.
        public var remainingValidityMilliseconds: Int64
        /// The fencing token of the acquisition, if fencing was on.
        public var fencingToken: Int64?

        /// Creates a handoff.
        public init(name: String, value: String, expiryMilliseconds: Int64, remainingValidityMilliseconds: Int64, fencingToken: Int64?) {
            self.name = name
            self.value = value
            self.expiryMilliseconds = expiryMilliseconds
            self.remainingValidityMilliseconds = remainingValidityMilliseconds
            self.fencingToken = fencingToken
        }
    }

    /// This lease for another process: stop using it once handed over.
    ///
    /// Reading it also stops this client from sending the value's releases again when their
    /// connection is lost (README, "Order across a reconnect"): a late delete could remove the
    /// key of the process that re-attached it.
    ///
    /// With ``LockOptions/failFast`` on (the default), `lock()` returns once a quorum granted,
    /// and a slower node's `SET` may still be on its way: if the receiver releases the lease
    /// before it lands, it lands after the release, and that node keeps the key until it
    /// expires (another process's `lock()` then counts one node fewer). Acquire leases that
    /// are handed over with `failFast: false`: `lock()` then returns once every node answered,
    /// within the attempt's budget (a node silent past it can still be late).
    public var handoff: Handoff {
        replayWindow?.close()
        return Handoff(
            name: name, value: value, expiryMilliseconds: expiry.millisecondsRoundedUp,
            remainingValidityMilliseconds: remainingValidity.millisecondsRoundedUp, fencingToken: fencingToken
        )
    }
}