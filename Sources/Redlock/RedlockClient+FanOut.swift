import RedlockTransport

extension RedlockClient {
    /// The one fan-out path that acquire, extend and release share.
    ///
    /// Sends `command` (with `script`, an `EVALSHA` that falls back to `EVAL`) to each node in
    /// `order` at once, turns each reply into a vote with `classify`, and returns when every node
    /// answered, the outcome is decided (with `returnWhenDecided`), `budget` ran out or — when
    /// `cancellable` — the calling task was cancelled. Nodes still silent then get `.unsettled`
    /// when the outcome was decided without them, `.refused(.noAnswer)` otherwise; nodes not in
    /// `order` get `nil`. The command reaches every node either way: once sent, a lock command
    /// is never withdrawn.
    ///
    /// With `confirm`, a granted vote is passed through it before it counts (the restart guard);
    /// that check runs in a task of its own, bounded by the node's command timeout.
    ///
    /// `afterSending` runs once every command is queued on its connection, before any reply: a
    /// command queued on these connections after that point reaches each node after this one.
    func fanOut(
        _ command: RedisCommand,
        script: RedisScript? = nil,
        classify: @escaping @Sendable (RedisValue, RedisEndpoint) -> Vote,
        order: [Int],
        budget: Duration,
        returnWhenDecided: Bool,
        cancellable: Bool = true,
        confirm: (@Sendable (_ index: Int, _ granted: Vote) async -> Vote)? = nil,
        afterSending: (() -> Void)? = nil
    ) async -> [Vote?] {
        let round = FanOutRound(nodeCount: nodes.count, order: order, returnWhenDecided: returnWhenDecided)
        let (nodes, logger, deadlines) = (nodes, logger, deadlines)
        let start = { (continuation: UnsafeContinuation<[Vote?], Never>) in
            round.install(continuation)
            for index in order {
                let node = nodes[index]
                node.send(command, script: script) { result in
                    let vote = Vote.of(result, endpoint: node.configuration.endpoint, classify: classify)
                    if case let .refused(.error(error)) = vote {
                        logger.debug("redlock node failed", metadata: ["node": "\(index)", "error": "\(error)"])
                    }
                    if let confirm, vote.isGranted {
                        Task { round.record(await confirm(index, vote), from: index) }
                    } else {
                        round.record(vote, from: index)
                    }
                }
            }
            afterSending?()
            if !round.isFinished { deadlines.schedule(round, after: budget) }
        }
        guard cancellable else { return await withUnsafeContinuation(start) }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation(start)
        } onCancel: {
            round.expire()
        }
    }

    /// Runs a compare-and-act script (1 granted, 0 taken, -1 missing) on every node in `order`
    /// through ``fanOut(_:script:classify:order:budget:returnWhenDecided:cancellable:confirm:afterSending:)``.
    func fanOut(
        _ call: RedisScriptCall,
        order: [Int],
        budget: Duration,
        returnWhenDecided: Bool,
        cancellable: Bool = true,
        afterSending: (() -> Void)? = nil
    ) async -> [Vote?] {
        await fanOut(
            call.command, script: call.script, classify: Vote.ofScript,
            order: order, budget: budget, returnWhenDecided: returnWhenDecided, cancellable: cancellable,
            afterSending: afterSending
        )
    }

    /// The node order for one fan-out: all nodes, shuffled when asked.
    func nodeOrder(shuffled: Bool) -> [Int] {
        shuffled ? nodeIndices.shuffled() : nodeIndices
    }

    /// The node failures among `votes`, for an error (unsettled nodes are left out).
    func failures(in votes: [Vote?]) -> [NodeFailure] {
        votes.enumerated().compactMap { index, vote in
            guard case let .refused(cause)? = vote else { return nil }
            return NodeFailure(node: index, endpoint: nodes[index].configuration.endpoint, cause: cause)
        }
    }
}

extension Vote {
    /// The vote for one node's outcome: `classify` for a reply, else the node's error.
    static func of(
        _ result: Result<RedisValue, RedisError>,
        endpoint: RedisEndpoint,
        classify: (RedisValue, RedisEndpoint) -> Vote
    ) -> Vote {
        switch result {
        case let .success(reply): classify(reply, endpoint)
        case let .failure(error): .refused(failure: error, endpoint: endpoint)
        }
    }

    /// The vote of a node whose call failed: no answer when the caller was cancelled, else the
    /// node's error.
    static func refused(failure error: any Error, endpoint: RedisEndpoint) -> Vote {
        guard let error = error as? RedisError else {
            return .refused(.error(RedisError(code: .io, endpoint: endpoint, message: "\(error)")))
        }
        return error.code == .cancelled ? .refused(.noAnswer) : .refused(.error(error))
    }
}

/// The number of granted votes.
func grantedCount(_ votes: [Vote?]) -> Int {
    votes.reduce(0) { $0 + (($1?.isGranted ?? false) ? 1 : 0) }
}
