import RedlockTransport

extension RedlockClient {
    /// The one fan-out path that acquire, extend and release share.
    ///
    /// Sends one command to each node in `order` concurrently and collects votes until the
    /// outcome is decided (with `returnWhenDecided`), every node answered, or `budget` ran out.
    /// Nodes still silent then get `.unsettled` when the outcome was decided without them and
    /// `.refused(.noAnswer)` when the budget ran out or the caller was cancelled; their calls are
    /// cancelled, which withdraws commands not yet written unless the operation sends with
    /// `withdrawOnCancel: false`. Nodes not in `order` get `nil`.
    func fanOut(
        order: [Int],
        budget: Duration,
        returnWhenDecided: Bool,
        operation: @escaping @Sendable (RedisConnection) async throws -> RedisValue,
        vote: (RedisValue, RedisEndpoint) -> Vote
    ) async -> [Vote?] {
        var votes = [Vote?](repeating: nil, count: nodes.count)
        var tally = Tally(nodeCount: nodes.count)
        for _ in 0..<(nodes.count - order.count) { tally.record(granted: false) }
        for index in order { votes[index] = .refused(.noAnswer) }

        await withTaskGroup(of: (Int, Result<RedisValue, RedisError>)?.self) { group in
            for index in order {
                let node = nodes[index]
                group.addTask {
                    do {
                        return (index, .success(try await operation(node)))
                    } catch let error as RedisError {
                        return (index, .failure(error))
                    } catch {
                        return (index, .failure(RedisError(code: .io, endpoint: node.configuration.endpoint, message: "\(error)")))
                    }
                }
            }
            group.addTask {
                try? await Task.sleep(for: budget)
                return nil
            }
            var answered = 0
            while answered < order.count, let next = await group.next() {
                guard let (index, result) = next else { break }  // the budget ran out
                answered += 1
                let endpoint = nodes[index].configuration.endpoint
                let nodeVote: Vote
                switch result {
                case let .success(reply):
                    nodeVote = vote(reply, endpoint)
                case let .failure(error) where error.code == .cancelled:
                    nodeVote = .refused(.noAnswer)
                case let .failure(error):
                    nodeVote = .refused(.error(error))
                    logger.debug("node failed", metadata: ["node": "\(index)", "endpoint": "\(endpoint)", "error": "\(error)"])
                }
                votes[index] = nodeVote
                tally.record(granted: nodeVote == .granted)
                if returnWhenDecided, tally.isDecided {
                    for index in order where votes[index] == .refused(.noAnswer) { votes[index] = .unsettled }
                    break
                }
            }
            group.cancelAll()
        }
        return votes
    }

    /// The node order for one fan-out: all nodes, shuffled when asked.
    func nodeOrder(shuffled: Bool) -> [Int] {
        shuffled ? Array(nodes.indices).shuffled() : Array(nodes.indices)
    }

    /// The node failures among `votes`, for an error (unsettled nodes are left out).
    func failures(in votes: [Vote?]) -> [NodeFailure] {
        votes.enumerated().compactMap { index, vote in
            guard case let .refused(cause)? = vote else { return nil }
            return NodeFailure(node: index, endpoint: nodes[index].configuration.endpoint, cause: cause)
        }
    }
}
