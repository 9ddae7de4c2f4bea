import RedlockTransport

extension RedlockClient {
    /// The one fan-out path that acquire, extend and release share.
    ///
    /// Runs `operation` for each node in `order` concurrently and collects their votes until the
    /// outcome is decided (with `returnWhenDecided`), every node answered, or `budget` ran out.
    /// Nodes still silent then get `.unsettled` when the outcome was decided without them and
    /// `.refused(.noAnswer)` when the budget ran out or the caller was cancelled; their calls are
    /// cancelled, which withdraws commands not yet written unless the operation sends with
    /// `withdrawOnCancel: false`. Nodes not in `order` get `nil`.
    func fanOut(
        order: [Int],
        budget: Duration,
        returnWhenDecided: Bool,
        operation: @escaping @Sendable (_ index: Int, _ node: RedisConnection) async -> Vote
    ) async -> [Vote?] {
        var votes = [Vote?](repeating: nil, count: nodes.count)
        var tally = Tally(nodeCount: nodes.count)
        for _ in 0..<(nodes.count - order.count) { tally.record(granted: false) }
        for index in order { votes[index] = .refused(.noAnswer) }

        await withTaskGroup(of: (Int, Vote)?.self) { group in
            for index in order {
                let node = nodes[index]
                group.addTask { (index, await operation(index, node)) }
            }
            group.addTask {
                try? await Task.sleep(for: budget)
                return nil
            }
            var answered = 0
            while answered < order.count, let next = await group.next() {
                guard let (index, vote) = next else { break }  // the budget ran out
                answered += 1
                votes[index] = vote
                tally.record(granted: vote.isGranted)
                if case let .refused(.error(error)) = vote {
                    logger.debug("redlock node failed", metadata: ["node": "\(index)", "error": "\(error)"])
                }
                if returnWhenDecided, tally.isDecided {
                    for index in order where votes[index] == .refused(.noAnswer) { votes[index] = .unsettled }
                    break
                }
            }
            group.cancelAll()
        }
        return votes
    }

    /// Runs a compare-and-act script (1 granted, 0 taken, -1 missing) on every node in `order`
    /// through ``fanOut(order:budget:returnWhenDecided:operation:)``. The call is sent even to
    /// nodes left unsettled: extends and releases must reach every node they can.
    func fanOut(_ call: RedisScriptCall, order: [Int], budget: Duration, returnWhenDecided: Bool) async -> [Vote?] {
        await fanOut(order: order, budget: budget, returnWhenDecided: returnWhenDecided) { _, node in
            await vote(of: node, classify: Vote.ofScript) { try await node.evaluate(call, withdrawOnCancel: false) }
        }
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

/// Sends one command to a node and turns the reply, or the failure, into a vote.
func vote(
    of node: RedisConnection,
    classify: (RedisValue, RedisEndpoint) -> Vote,
    _ send: () async throws -> RedisValue
) async -> Vote {
    do {
        return classify(try await send(), node.configuration.endpoint)
    } catch {
        return .refused(failure: error, endpoint: node.configuration.endpoint)
    }
}

extension Vote {
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
