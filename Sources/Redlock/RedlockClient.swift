import Logging
import RedlockTransport

/// A Redlock client over N independent Redis nodes (masters with no replication between them).
///
/// Create one per process and share it: it holds one pipelined connection per node. Locks made
/// from it (``makeLock(_:options:)``) fan every operation out to all nodes concurrently and
/// succeed on a quorum of `N/2 + 1`.
///
/// ```swift
/// let client = try RedlockClient(endpoints: [.hostname("10.0.0.1"), .hostname("10.0.0.2"), .hostname("10.0.0.3")])
/// let lock = try client.makeLock("migrations")
/// let lease = try await lock.lock()
/// defer { Task { try? await lock.unlock(lease) } }
/// ```
public final class RedlockClient: Sendable {
    /// The connections, one per node, in the order given.
    public let nodes: [RedisConnection]
    /// How many nodes must grant an operation: `nodes.count / 2 + 1`.
    public let quorum: Int
    let logger: Logger
    private let ownsConnections: Bool

    /// Creates a client that opens one connection per node configuration.
    ///
    /// - Throws: ``RedlockError/Code-swift.struct/invalidConfiguration`` when `nodes` is empty
    ///   or names one endpoint twice (its votes would count twice).
    public convenience init(nodes: [RedisConnectionConfiguration], logger: Logger = Logger(label: "swift-redlock")) throws(RedlockError) {
        try Self.validate(nodes.map(\.endpoint))
        self.init(validated: nodes.map { RedisConnection(configuration: $0) }, owning: true, logger: logger)
    }

    /// Creates a client for endpoints with default connection settings.
    public convenience init(endpoints: [RedisEndpoint], logger: Logger = Logger(label: "swift-redlock")) throws(RedlockError) {
        try self.init(nodes: endpoints.map { RedisConnectionConfiguration(endpoint: $0) }, logger: logger)
    }

    /// Creates a client over connections you own; ``shutdown()`` leaves them open.
    public convenience init(connections: [RedisConnection], logger: Logger = Logger(label: "swift-redlock")) throws(RedlockError) {
        try Self.validate(connections.map(\.configuration.endpoint))
        self.init(validated: connections, owning: false, logger: logger)
    }

    private init(validated nodes: [RedisConnection], owning: Bool, logger: Logger) {
        self.nodes = nodes
        quorum = Timing.quorum(nodeCount: nodes.count)
        self.logger = logger
        ownsConnections = owning
    }

    private static func validate(_ endpoints: [RedisEndpoint]) throws(RedlockError) {
        guard !endpoints.isEmpty else { throw .invalid("a client needs at least one node") }
        var seen = Set<RedisEndpoint>()
        for endpoint in endpoints where !seen.insert(endpoint).inserted {
            throw .invalid("node \(endpoint) is listed twice; each node must be an independent server")
        }
    }

    /// Makes a lock on `name` with `options`.
    ///
    /// - Throws: ``RedlockError/Code-swift.struct/invalidConfiguration`` for an empty name or
    ///   invalid options (non-positive expiry, tries < 1, drift factor outside [0, 1), …).
    public func makeLock(_ name: String, options: LockOptions = LockOptions()) throws(RedlockError) -> DistributedLock {
        guard !name.isEmpty else { throw .invalid("the lock name must not be empty") }
        try options.validate(lockName: name)
        return DistributedLock(name: name, options: options, client: self)
    }

    /// Closes the connections the client opened and stops their threads. Locks made from the
    /// client fail with node errors afterwards.
    public func shutdown() async {
        guard ownsConnections else { return }
        await withTaskGroup(of: Void.self) { group in
            for node in nodes { group.addTask { await node.shutdown() } }
        }
    }
}

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
                    let start = ContinuousClock.now
                    let result: Result<Duration, RedisError>
                    do {
                        let reply = try await node.send(RedisCommand("PING"))
                        result = reply == .simpleString("PONG")
                            ? .success(start.duration(to: .now))
                            : .failure(RedisError(code: .unexpectedReply, endpoint: node.configuration.endpoint, message: "PING returned \(reply)"))
                    } catch let error as RedisError {
                        result = .failure(error)
                    } catch {
                        result = .failure(RedisError(code: .io, endpoint: node.configuration.endpoint, message: "\(error)"))
                    }
                    return NodeStatus(node: index, endpoint: node.configuration.endpoint, result: result)
                }
            }
            var statuses: [NodeStatus] = []
            for await status in group { statuses.append(status) }
            return statuses.sorted { $0.node < $1.node }
        }
    }
}
