import RedlockTransport

extension RedlockClient {
    /// One node's answer to ``RedlockClient/checkNodes()``.
    public struct NodeStatus: Sendable {
        /// The node's index in ``RedlockClient/nodes``.
        public var node: Int
        /// The node's address.
        public var endpoint: RedisEndpoint
        /// The `PING` round-trip time, or why the node failed.
        public var result: Result<Duration, RedisError>
    }

    /// Connects to every node concurrently and sends `PING`, e.g. at startup or for a health check.
    /// Each node answers within its connect and command timeouts.
    public func checkNodes() async -> [NodeStatus] {
        await withTaskGroup(of: NodeStatus.self) { group in
            for (index, node) in nodes.enumerated() {
                group.addTask {
                    let endpoint = node.configuration.endpoint
                    let start = ContinuousClock.now
                    let result: Result<Duration, RedisError>
                    do {
                        let reply = try await node.send(RedisCommand("PING"))
                        result = reply == .simpleString("PONG")
                            ? .success(start.duration(to: .now))
                            : .failure(RedisError(code: .unexpectedReply, endpoint: endpoint, message: "PING returned \(reply)"))
                    } catch let error as RedisError {
                        result = .failure(error)
                    } catch {
                        result = .failure(RedisError(code: .io, endpoint: endpoint, message: "\(error)"))
                    }
                    return NodeStatus(node: index, endpoint: endpoint, result: result)
                }
            }
            var statuses: [NodeStatus] = []
            for await status in group { statuses.append(status) }
            return statuses.sorted { $0.node < $1.node }
        }
    }
}
