import Logging
import RedlockTransport
import Synchronization

/// Whether each node answers, as the client's fan-outs see it: a node that stops answering is
/// logged once at `warning` with the cause, and once at `info` when it answers again, so a lock
/// that quietly runs on 3 of 5 nodes is visible without debug logs.
///
/// A node counts as down after a connection-level failure (refused, timed out, closed, an I/O or
/// resolver error, bytes that are not RESP: a wrong service or a TLS-only port); any reply, an
/// error reply or a refused `AUTH` or `SELECT` included, means it answers.
/// The state of the first 64 nodes is one atomic bit mask, so a healthy reply costs one load.
///
/// It also vets the address each new connection reaches (``vet(_:peer:)``): one server listed
/// under two names votes once.
final class NodeHealth: Sendable {
    /// The nodes' endpoints, in order, for votes, errors and these logs.
    let endpoints: [RedisEndpoint]
    let logger: Logger
    private let down = Atomic<UInt64>(0)
    /// The address each node's connections reached last (``vet(_:peer:)``), and the pairs of
    /// nodes already logged as one server.
    private let peers: Mutex<(addresses: [String?], logged: Set<[Int]>)>

    init(endpoints: [RedisEndpoint], logger: Logger) {
        self.endpoints = endpoints
        self.logger = logger
        peers = Mutex((addresses: Array(repeating: nil, count: endpoints.count), logged: []))
    }

    /// Vets a new connection of node `index` that reached `peer` (``NodeSocket``'s peer: a
    /// numeric address with the TLS server name, or a Unix socket's file): refused when another
    /// node's connections reach the same, so that a server listed under two names
    /// (`localhost:6379` and `127.0.0.1:6379`) votes once, not twice. Whichever node connects
    /// first keeps the address; the other's connects fail with
    /// ``RedisError/Code-swift.struct/invalidAddress`` (permanent) naming both, and it counts as
    /// a node that refuses every command. Logged at `error` once per pair. A node that does not
    /// answer (``failed(_:_:)``) keeps no address: a server that now answers there, under
    /// another node's name (a name moved to a new address), is that node's.
    func vet(_ index: Int, peer: String) -> RedisError? {
        let found: (node: Int, isNew: Bool)? = peers.withLock { peers in
            let other = peers.addresses.indices.first { $0 != index && peers.addresses[$0] == peer }
            guard let other, !isDown(other) else {
                if let other { peers.addresses[other] = nil }
                peers.addresses[index] = peer
                // It answers (AUTH and SELECT went through), and must count so before another
                // node's connect to the same address is vetted: a node marked down gives it up.
                answered(index)
                return nil
            }
            return (other, peers.logged.insert([other, index]).inserted)
        }
        guard let found else { return nil }
        let refusal = RedisError(
            code: .invalidAddress, endpoint: endpoints[index],
            message: "the same server as node \(found.node) (\(endpoints[found.node])): both reach \(peer), and a server votes once; list each server once"
        )
        if found.isNew {
            logger.error(
                "redlock nodes are one server listed twice; the second does not vote",
                metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])", "same-as-node": "\(found.node)", "address": "\(peer)"]
            )
        }
        return refusal
    }

    /// Whether node `index` counts as not answering (always false past the first 64 nodes).
    private func isDown(_ index: Int) -> Bool {
        index < 64 && down.load(ordering: .relaxed) & (1 << UInt64(index)) != 0
    }

    /// Node `index` answered.
    func answered(_ index: Int) {
        guard index < 64 else { return }
        let bit: UInt64 = 1 << UInt64(index)
        guard down.load(ordering: .relaxed) & bit != 0 else { return }
        let (before, _) = down.bitwiseAnd(~bit, ordering: .relaxed)
        if before & bit != 0 {
            logger.info("redlock node answers again", metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])"])
        }
    }

    /// Node `index` failed with `error`.
    func failed(_ index: Int, _ error: RedisError) {
        guard index < 64 else { return }
        // Replies, refused credentials or database included, mean the node answers.
        switch error.code {
        case .serverError, .unexpectedReply, .cancelled, .authenticationFailed, .databaseSelectionFailed:
            return answered(index)
        default:
            break
        }
        let bit: UInt64 = 1 << UInt64(index)
        guard down.load(ordering: .relaxed) & bit == 0 else { return }
        let (before, _) = down.bitwiseOr(bit, ordering: .relaxed)
        if before & bit == 0 {
            logger.warning(
                "redlock node does not answer; locks go on while a quorum does",
                metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])", "error": "\(error)"]
            )
        }
    }
}
