import RedlockTransport
import Synchronization

/// What a client knows of each node's uptime, to ignore the votes of nodes that restarted
/// recently (``LockOptions/restartGuard``).
///
/// A node is asked (`INFO server`) only when the client's connection to it is new: a restarted
/// server always means a new connection. A vetted connection's handshake asked already
/// (``RedisConnection/handshakeServer``), and that answer is used. A reconnect to the same
/// server (same `run_id`) keeps the earlier, more precise estimate.
final class NodeUptimes: Sendable {
    private struct Entry {
        var generation: UInt64
        var runID: String
        var seenAt: ContinuousClock.Instant
        var uptimeWhenSeen: Duration
    }

    private let entries: Mutex<[Entry?]>

    init(nodeCount: Int) {
        entries = Mutex(Array(repeating: nil, count: nodeCount))
    }

    /// A lower bound of how long node `index` has been up.
    func uptime(of index: Int, node: RedisConnection) async throws -> Duration {
        let generation = node.connectionGeneration
        if let known = entries.withLock({ $0[index] }), known.generation == generation {
            return known.uptimeWhenSeen + known.seenAt.duration(to: .now)
        }
        let server: ServerIdentity?
        if let handshake = node.handshakeServer, handshake.generation == generation {
            // The connection's handshake asked (a vetted connection): no round trip of its own.
            server = handshake.server
        } else {
            let reply = try await node.send(RedisCommand("INFO", "server"))
            // Read once the reply is here: the uptime then was at least the report's lower bound.
            server = reply.string.flatMap { ServerIdentity(info: $0, readAt: .now) }
        }
        guard let server, let reported = server.uptime else {
            throw RedisError(code: .unexpectedReply, endpoint: node.configuration.endpoint, message: "INFO server lacks run_id or uptime_in_seconds")
        }
        let (runID, seenAt) = (server.runID, server.readAt)
        let stable = node.connectionGeneration == generation
        return entries.withLock { entries in
            if let known = entries[index], known.runID == runID {
                // Same server, new connection: keep the earlier baseline.
                if stable { entries[index]?.generation = generation }
                return known.uptimeWhenSeen + known.seenAt.duration(to: .now)
            }
            if stable {
                entries[index] = Entry(generation: generation, runID: runID, seenAt: seenAt, uptimeWhenSeen: reported)
            }
            return reported + seenAt.duration(to: .now)
        }
    }
}

extension RedlockClient {
    /// A granted vote, or a refusal when the node has been up for less than `restartGuard`.
    /// Asked on the connection of `lane`, the one the vote came on: a restart shows there as a
    /// new connection.
    func guarded(_ granted: Vote, node index: Int, restartGuard: Duration, lane: ConnectionLane) async -> Vote {
        do {
            let known = switch lane {
            case .shared: uptimes
            case .acknowledged: acknowledgedUptimes
            }
            let uptime = try await known.uptime(of: index, node: sender.connections(lane)[index])
            return uptime >= restartGuard ? granted : .refused(.recentlyRestarted(uptime: uptime))
        } catch {
            return .refused(failure: error, endpoint: endpoints[index])
        }
    }
}
