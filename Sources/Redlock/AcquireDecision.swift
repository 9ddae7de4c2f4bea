/// What one acquire attempt's votes and timing decide: a lease valid until an instant, or the
/// error — and, for a failed attempt, where to release what it may have set.
///
/// Pure: the clock readings (`start`, `end`) and the cancellation are inputs, so the rule is
/// unit-tested without Redis or a clock. The rule is Redlock's (Kleppmann and Sanfilippo,
/// redis.io/docs/manual/patterns/distributed-locks): granted on at least `quorum` nodes and time
/// left once the elapsed time and the drift allowance are taken from the expiry
/// (``Timing/validUntil(start:end:expiry:driftFactor:)``).
struct AcquireDecision<Instant: InstantProtocol>: Equatable where Instant.Duration == Duration {
    enum Outcome: Equatable {
        /// The lease is valid until this instant.
        case acquired(validUntil: Instant)
        case failed(RedlockError.Code, message: String)
    }

    var outcome: Outcome
    /// Nodes to release on, awaiting their answers: granted, or failed in a way that may have
    /// set the key.
    var releaseAwaited: [Int] = []
    /// Nodes that had not answered (silent through the budget, or not yet when refusals decided
    /// the attempt, unless the caller counts handoffs): their release is sent without waiting,
    /// behind the acquire on the same connection, so a frozen node does not make a failed
    /// attempt cost its budget (again).
    var releaseQueued: [Int] = []

    /// Decides an attempt.
    ///
    /// - Parameters:
    ///   - votes: One per node (nil: not asked), after any fencing round.
    ///   - quorum: Grants needed (`N/2 + 1`).
    ///   - start: When the attempt was sent; validity is measured from it.
    ///   - end: When its votes were in.
    ///   - cancelled: Whether the caller was cancelled by then: no lease, and "silent" then only
    ///     means not awaited, so every release is awaited.
    ///   - fenceShortfall: When the fencing round failed, what to say (the votes already carry
    ///     the nodes that refused it).
    ///   - countsHandoffs: Whether the caller counts a fair release's handoffs as grants: then
    ///     the release to a node that had not answered yet is awaited, since its answer says
    ///     whether that node still counts (`LocalCoordination.HandoffWatch`) — unless the node
    ///     is in `down`.
    ///   - down: Nodes known not to answer (``NodeHealth``): their release is queued, never
    ///     awaited, so a stopped node does not hold up every failed attempt of a waiter that
    ///     counts handoffs for a whole budget; such a node no longer counts its handoffs for
    ///     the call.
    ///   - budget: The attempt's time budget, named when no node answered within it.
    ///   - endpoints: The nodes' addresses, to name those the refusals decided without.
    static func decide(
        votes: [Vote?], quorum: Int, start: Instant, end: Instant, expiry: Duration, driftFactor: Double,
        cancelled: Bool, fenceShortfall: String? = nil, countsHandoffs: Bool = false, down: Set<Int> = [], budget: Duration? = nil,
        neverWritten: NodeMask = .none, endpoints: [RedisEndpoint] = []
    ) -> AcquireDecision {
        let granted = grantedCount(votes)
        if fenceShortfall == nil, granted >= quorum, !cancelled,
           let validUntil = Timing.validUntil(start: start, end: end, expiry: expiry, driftFactor: driftFactor) {
            return AcquireDecision(outcome: .acquired(validUntil: validUntil))
        }
        var decision = AcquireDecision(outcome: failure(
            votes: votes, granted: granted, quorum: quorum, elapsed: start.duration(to: end), expiry: expiry,
            cancelled: cancelled, fenceShortfall: fenceShortfall, budget: budget, endpoints: endpoints
        ))
        for (index, vote) in votes.enumerated() {
            switch vote {
            case .granted?:
                decision.releaseAwaited.append(index)
            case .unsettled?:
                // A cancelled caller returns at once: the release runs behind the acquire on the
                // node's connection, as for any node that has not answered.
                if !cancelled, countsHandoffs, !down.contains(index) {
                    decision.releaseAwaited.append(index)
                } else {
                    decision.releaseQueued.append(index)
                }
            case .refused(.noAnswer)?:
                decision.releaseQueued.append(index)
            case let .refused(cause)? where cause.setNothing:
                continue
            case nil:
                continue
            case let .refused(cause)?:
                // A node that failed (or voted while recently restarted) may hold the key.
                guard let error = cause.error else {
                    decision.releaseAwaited.append(index)
                    continue
                }
                // The acquire itself was never written (no connection, a full queue, shut down
                // before the write): nothing to release. (Not a later command's failure in its
                // vote's place: the fencing raise or the restart guard's check ran after a grant.)
                if neverWritten.containsExactly(index) { continue }
                if error.code == .timeout { decision.releaseQueued.append(index) } else { decision.releaseAwaited.append(index) }
            }
        }
        return decision
    }

    /// Why an attempt failed: the fencing round, cancellation, no time left, exhausted
    /// counters, a holder (taken on a quorum, or every refusal a taken), else no quorum.
    private static func failure(
        votes: [Vote?], granted: Int, quorum: Int, elapsed: Duration, expiry: Duration, cancelled: Bool, fenceShortfall: String?,
        budget: Duration?, endpoints: [RedisEndpoint]
    ) -> Outcome {
        let nodeCount = votes.count
        if let fenceShortfall { return .failed(.noQuorum, message: fenceShortfall) }
        if granted >= quorum {
            if cancelled { return .failed(.cancelled, message: "lock was cancelled; what it won was released") }
            return .failed(.validityExhausted, message: "a quorum granted after \(elapsed.readableDescription), leaving no validity of \(expiry.readableDescription); released")
        }
        let causes: [NodeFailure.Cause] = votes.compactMap { vote in
            if case let .refused(cause)? = vote { return cause }
            return nil
        }
        let exhausted = causes.filter { $0 == .fencingCounterExhausted }.count
        // Exhausted counters alone leave no quorum: no token can be issued until an operator acts.
        if exhausted > nodeCount - quorum {
            return .failed(
                .fencingCounterExhausted,
                message: "the fencing counter \(Scripts.fenceCounterKey) is at its maximum on \(exhausted) of \(nodeCount) nodes; no token can be issued"
            )
        }
        if cancelled { return .failed(.cancelled, message: "lock was cancelled") }
        let taken = causes.filter { $0 == .taken }.count
        if taken >= quorum || taken == causes.count {
            return .failed(.taken, message: "held by another holder on \(taken) of \(nodeCount) nodes")
        }
        // Nodes that had not answered when the refusals decided it (failFast) are named as such:
        // they are not in the error's node list, and "0 granted" alone reads as if they refused.
        let unsettled = votes.filter { $0 == .unsettled }.count
        let pending = Vote.unsettledNote(votes, endpoints: endpoints)
        // Every node silent: the budget may be what is wrong (a tiny expiry), not the nodes.
        let silentAll = granted == 0 && unsettled == 0 && !causes.isEmpty && causes.allSatisfy { $0 == .noAnswer }
        let silence = silentAll ? " (no node answered within the attempt's time budget\(budget.map { " of \($0)" } ?? ""): expiry × timeoutFactor; the nodes, or the budget, are too slow)" : ""
        return .failed(.noQuorum, message: "\(granted) of \(countedNodes(nodeCount)) granted\(pending), \(quorum) needed\(silence)")
    }
}

extension Vote {
    /// ` (node 0 (HOST:PORT) had not answered when the refusals made a quorum impossible)` for
    /// the nodes whose votes are unsettled (a failure decided without them, failFast: they are
    /// left out of the error's node list), or "" when there are none. `endpoints` may be empty
    /// (then only the indices are named).
    static func unsettledNote(_ votes: [Vote?], endpoints: [RedisEndpoint]) -> String {
        let unsettled = votes.indices.filter { votes[$0] == .unsettled }
        guard !unsettled.isEmpty else { return "" }
        let named = unsettled.map { index in
            index < endpoints.count ? "\(index) (\(endpoints[index]))" : "\(index)"
        }
        let nodes = unsettled.count == 1 ? "node \(named[0]) had" : "nodes \(named.joined(separator: ", ")) had"
        return " (\(nodes) not answered when the refusals made a quorum impossible)"
    }
}
