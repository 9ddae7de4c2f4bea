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
final class NodeHealth: Sendable {
    /// The nodes' endpoints, in order, for votes, errors and these logs.
    let endpoints: [RedisEndpoint]
    let logger: Logger
    private let down = Atomic<UInt64>(0)

    init(endpoints: [RedisEndpoint], logger: Logger) {
        self.endpoints = endpoints
        self.logger = logger
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
