import CoreMetrics
import Logging
import RedlockTransport
import Synchronization

/// Whether each node answers, as the client's fan-outs see it: a node that stops answering is
/// logged once at `warning` with the cause, and once at `info` when it answers again, so a lock
/// that quietly runs on 3 of 5 nodes is visible without debug logs. So is a node that answers
/// the lock's commands with errors (`OOM`, `READONLY`, `NOREPLICAS`, `MISCONF`, `LOADING`,
/// `BUSY`, a refused permission or credentials, …): `warning` at its first error of each kind
/// (the reply's first word), `info` at its first grant after ``refusalQuietPeriod`` without
/// errors. Errors often concern one key or one lock's options (a fenced lock refused its
/// counter, a name holding another type) while other locks on the node go on: a grant alone
/// does not end the refusing, or each pair of calls would log twice.
///
/// A node counts as down after a connection-level failure (refused, timed out, closed, an I/O or
/// resolver error, bytes that are not RESP: a wrong service or a TLS-only port); any reply, an
/// error reply or a refused `AUTH` or `SELECT` included, means it answers.
/// A node whose replies come after their attempt's budget, so that its votes never count, is
/// logged the same way (``answeredLate(_:after:nodeTime:budget:)``), unless the node answered
/// in time and this process read late (``readLate(_:after:nodeTime:budget:)``: short of CPU;
/// no node is blamed). Every late reply is counted per node in
/// `redlock_node_failures_total{node,kind}`, each read late in `redlock_replies_read_late_total`.
/// The state of the first 64 nodes is three atomic bit masks, so a healthy reply costs four
/// loads and a clock reading.
///
/// It also vets the address each new connection reaches, and the server by its `run_id` when
/// the handshake learned it (``vet(_:peer:server:)``): one server listed under two names votes
/// once; a node whose server told its `run_id` once is not let through without it.
final class NodeHealth: Sendable {
    /// The nodes' endpoints, in order, for votes, errors and these logs.
    let endpoints: [RedisEndpoint]
    let logger: Logger
    private let down = Atomic<UInt64>(0)
    /// The nodes answering the lock's commands with errors (``refused(_:_:)``), and those
    /// answering after their attempts' budget (``answeredLate(_:after:nodeTime:budget:)``).
    private let refusing: Episodes
    private let late: Episodes
    /// This process handling replies after their attempts' budget though the nodes answered in
    /// time (``readLate(_:after:nodeTime:budget:)``): one episode for the whole client.
    private let readingLate = Episodes(nodeCount: 1)
    /// How long a node must go without an error (a late answer) before a grant (an answer in
    /// time) ends its episode, logged at `info`: 10 s, unless set (for tests).
    var refusalQuietPeriod: Duration {
        get { .nanoseconds(quietNanoseconds.load(ordering: .relaxed)) }
        set { quietNanoseconds.store(newValue.wholeNanoseconds, ordering: .relaxed) }
    }
    private let quietNanoseconds = Atomic<Int64>(10_000_000_000)
    /// Each address (or server) the nodes' open sockets reach (``vet(_:peer:server:)``): the
    /// node, and how many of its sockets are open there; the pairs of nodes already logged as
    /// one server; the nodes whose server told its `run_id`, and those of them refused since
    /// for a socket without one (until one tells it again).
    private let peers: Mutex<(holders: [String: (node: Int, sockets: Int)], logged: Set<[Int]>, told: Set<Int>, unidentified: Set<Int>)>

    /// Whether ``vet(for:)`` gives vets: not for a client over the caller's connections.
    private let vetsConnections: Bool
    /// Each node's latest connection-level failure (read only while the node is down).
    private let downBecause: Mutex<[RedisError?]>

    /// `redlock_node_failures_total{node,kind}` per node (``LockMetrics``): no answer, an error
    /// answer, a late answer.
    private let failureCounters: [(noAnswer: Counter, errorReply: Counter, late: Counter)]
    /// `redlock_replies_read_late_total`: replies handled after their attempt's budget that the
    /// node sent within it (``readLate(_:after:nodeTime:budget:)``).
    private let lateReads: Counter

    init(endpoints: [RedisEndpoint], logger: Logger, metrics: any MetricsFactory = MetricsSystem.factory, vetsConnections: Bool = false) {
        self.endpoints = endpoints
        self.logger = logger
        failureCounters = endpoints.indices.map { index in
            func counter(_ kind: String) -> Counter {
                Counter(label: "redlock_node_failures_total", dimensions: [("node", "\(index)"), ("kind", kind)], factory: metrics)
            }
            return (counter("noAnswer"), counter("errorReply"), counter("late"))
        }
        lateReads = Counter(label: "redlock_replies_read_late_total", factory: metrics)
        self.vetsConnections = vetsConnections
        peers = Mutex((holders: [:], logged: [], told: [], unidentified: []))
        downBecause = Mutex(Array(repeating: nil, count: endpoints.count))
        refusing = Episodes(nodeCount: endpoints.count)
        late = Episodes(nodeCount: endpoints.count)
    }

    /// Node `index` answered `elapsed` after its fan-out was sent, whose budget was `budget`:
    /// after it, so the attempt may have been over (its vote counted only if the attempt was
    /// still waiting for it). `nodeTime` is the node's own time, from the fan-out's send to the
    /// arrival of its reply on this machine, when the kernel told the arrival (TCP): then also
    /// over the budget, so the node or the network was slow (a reply the node sent in time that
    /// this process read late is ``readLate(_:after:nodeTime:budget:)``). The
    /// first such answer is logged at `warning` (with its times), and the node's first answer
    /// in time (``answeredInTime(_:)``) after ``refusalQuietPeriod`` without late ones at
    /// `info`. A node that is always late leaves the quorum one failure from an outage without
    /// another sign.
    func answeredLate(_ index: Int, after elapsed: Duration, nodeTime: Duration?, budget: Duration) {
        guard index < 64 else { return }
        failureCounters[index].late.increment()
        if late.note(index, kind: "late") {
            var metadata: Logger.Metadata = [
                "node": "\(index)", "endpoint": "\(endpoints[index])", "answered-after": "\(elapsed)", "budget": "\(budget)",
            ]
            if let nodeTime { metadata["node-time"] = "\(nodeTime)" }
            logger.warning(
                nodeTime != nil
                    ? "redlock node's replies arrive after the attempt's time budget (a slow node or network), so its votes may not count; a lock is granted only where a quorum of nodes answers in time (the budget is expiry × timeoutFactor)"
                    : "redlock node answers after the attempt's time budget, so its votes may not count; a lock is granted only where a quorum of nodes answers in time (a slow node or network, or this process too busy to read the reply in time; the budget is expiry × timeoutFactor)",
                metadata: metadata
            )
        }
    }

    /// Node `index`'s reply reached this machine `nodeTime` after the fan-out was sent, within
    /// the attempt's `budget`, but was handled only `elapsed` after it, past the budget: this
    /// process read late (short of CPU: a throttled container, a busy executor, a pause of the
    /// process), the node was not slow. Counted in
    /// `redlock_replies_read_late_total`; logged at `warning` once for the client, and at
    /// `info` at the first reply handled in time after ``refusalQuietPeriod`` without late ones.
    /// No node is blamed for it.
    func readLate(_ index: Int, after elapsed: Duration, nodeTime: Duration, budget: Duration) {
        lateReads.increment()
        if readingLate.note(0, kind: "readLate") {
            logger.warning(
                "redlock handled a node's reply after the attempt's time budget though the node answered in time: this process is short of CPU (a throttled container, a busy executor, a pause), so votes may not count; locks fail or wait while it lasts",
                metadata: [
                    "node": "\(index)", "endpoint": "\(endpoints[index])", "node-time": "\(nodeTime)",
                    "handled-after": "\(elapsed)", "budget": "\(budget)",
                ]
            )
        }
    }

    /// Node `index` answered within its attempt's budget (see ``answeredLate(_:after:nodeTime:budget:)``
    /// and ``readLate(_:after:nodeTime:budget:)``).
    func answeredInTime(_ index: Int) {
        if readingLate.isActive(0), readingLate.endIfQuiet(0, for: refusalQuietPeriod) != nil {
            logger.info("redlock handles the nodes' replies within the attempts' budget again")
        }
        guard index < 64, late.isActive(index), late.endIfQuiet(index, for: refusalQuietPeriod) != nil else { return }
        logger.info(
            "redlock node answers within the attempts' budget again",
            metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])"]
        )
    }

    /// Whether node `index` has not answered since its latest connection-level failure: one
    /// atomic load.
    func isDown(_ index: Int) -> Bool {
        index < 64 && down.load(ordering: .relaxed) & (1 << UInt64(index)) != 0
    }

    /// The latest connection-level failure of node `index` while it has not answered (refused,
    /// timed out, a TLS handshake with a plain port, …), or nil when it answers.
    func failure(of index: Int) -> RedisError? {
        guard isDown(index) else { return nil }
        return downBecause.withLock { $0[index] }
    }

    /// What vets the sockets of node `index` (``vet(_:peer:server:)``), for its connections and
    /// its subscriber; nil when this client vets nothing.
    func vet(for index: Int) -> ConnectVet? {
        guard vetsConnections else { return nil }
        return { [self] peer, server in vet(index, peer: peer, server: server) }
    }

    /// Vets a new socket of node `index` that reached `peer` (``NodeSocket``'s peer: a numeric
    /// address with the TLS server name, or a Unix socket's file; nil when the system would not
    /// tell) on the server whose `run_id` is `server` (nil when the handshake did not learn it).
    /// A socket without a `run_id` of a node whose server told one before (through any of its
    /// sockets) is refused with ``RedisError/Code-swift.struct/unexpectedReply`` (transient):
    /// its address alone cannot show it is not another node's server (`+info` revoked, `INFO`
    /// renamed, a proxy put in front). Logged at `error` when a node is first refused so, and
    /// at `info` when a socket of it that tells the `run_id` again is let through; the refusal
    /// counts neither as an answer nor as silence (``failed(_:_:)``): the node's sockets let
    /// through before still vote. Otherwise refused while another node's
    /// sockets (any of them: either lane's connection, its subscriber) are open at that address
    /// or on that server, so that a server listed under two names votes once, not twice:
    /// `localhost:6379` and `127.0.0.1:6379` by the address, a TCP address and the server's Unix
    /// socket (or its IPv4 and IPv6 addresses) by the `run_id`. Whichever node's socket gets
    /// there first holds the address (and the server) until its last socket there closes; the
    /// other's connects fail meanwhile with ``RedisError/Code-swift.struct/invalidAddress``
    /// (permanent) naming both, and it counts as a node that refuses every command. Logged at
    /// `error` once per pair and order (holder, refused). A success carries what to call when
    /// the socket closes.
    func vet(_ index: Int, peer: String?, server: String? = nil) -> Result<@Sendable () -> Void, RedisError> {
        let keys = (peer.map { [$0] } ?? []) + (server.map { ["the server with run_id \($0)"] } ?? [])
        // Refused without a run_id (first time: true), or telling it again after that.
        var unidentified: Bool?
        var identifiedAgain = false
        let found: (node: Int, key: String, isNew: Bool)? = peers.withLock { peers in
            if server != nil {
                peers.told.insert(index)
            } else if peers.told.contains(index) {
                unidentified = peers.unidentified.insert(index).inserted
                return nil
            }
            for key in keys {
                if let holder = peers.holders[key], holder.node != index {
                    return (holder.node, key, peers.logged.insert([holder.node, index]).inserted)
                }
            }
            for key in keys { peers.holders[key, default: (index, 0)].sockets += 1 }
            // Let through with the run_id: the node is no longer refused for want of it.
            identifiedAgain = server != nil && peers.unidentified.remove(index) != nil
            return nil
        }
        if let unidentified {
            let refusal = RedisError(
                code: .unexpectedReply, endpoint: endpoints[index],
                message: "no run_id from this connect (INFO server refused, closed on, or answered without one), though this node's server "
                    + "told one before: its address alone cannot show it is not another node's server, so a connection without the run_id "
                    + "does not vote (grant +info again); the next connect asks again"
            )
            if unidentified {
                logger.error(
                    "redlock node's server no longer tells its run_id; its connections without it do not vote",
                    metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])", "error": "\(refusal)"]
                )
            }
            return .failure(refusal)
        }
        guard let found else {
            if identifiedAgain {
                logger.info("redlock node's server tells its run_id again", metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])"])
            }
            return .success { [self] in
                peers.withLock { peers in
                    for key in keys {
                        guard let holder = peers.holders[key] else { continue }
                        if holder.sockets > 1 {
                            peers.holders[key] = (holder.node, holder.sockets - 1)
                        } else {
                            peers.holders[key] = nil
                        }
                    }
                }
            }
        }
        if found.isNew {
            logger.error(
                "redlock nodes are one server listed twice; the second does not vote",
                metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])", "same-as-node": "\(found.node)", "address": "\(found.key)"]
            )
        }
        return .failure(RedisError(
            code: .invalidAddress, endpoint: endpoints[index],
            message: "the same server as node \(found.node) (\(endpoints[found.node])): both reach \(found.key), and a server votes once; list each server once"
        ))
    }

    /// The pairs of nodes seen to reach one server (each logged once by
    /// ``vet(_:peer:server:)``): the node that held the address, and the node refused there.
    var sameServerPairs: Set<[Int]> {
        peers.withLock { $0.logged }
    }

    /// Node `index` answered; `granted`: with a grant (a key set, extended or deleted), which
    /// ends its refusing once it made no error for ``refusalQuietPeriod``. Another answer
    /// (taken, missing) does not: a read-only node answers those and refuses every write.
    func answered(_ index: Int, granted: Bool = false) {
        guard index < 64 else { return }
        let bit: UInt64 = 1 << UInt64(index)
        if down.load(ordering: .relaxed) & bit != 0 {
            let (before, _) = down.bitwiseAnd(~bit, ordering: .relaxed)
            if before & bit != 0 {
                logger.info("redlock node answers again", metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])"])
            }
        }
        if granted, refusing.isActive(index), let errors = refusing.endIfQuiet(index, for: refusalQuietPeriod) {
            logger.info(
                "redlock node grants again, without errors for \(refusalQuietPeriod)",
                metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])", "errors": "\(errors)"]
            )
        }
    }

    /// Node `index` answered a lock's command with `error` (an error reply, refused credentials
    /// or database): logged at `warning` the first time each kind of error (the reply's first
    /// word) comes while the node is refusing.
    private func refused(_ index: Int, _ error: RedisError) {
        failureCounters[index].errorReply.increment()
        let kind = error.code == .serverError
            ? String(error.message.prefix { $0 != " " }.prefix(32)) : "\(error.code)"
        if refusing.note(index, kind: kind) {
            logger.warning(
                "redlock node answers the lock's commands with errors; a lock is granted only where a quorum of the other nodes grants it",
                metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])", "error": "\(error)", "quorum": "\(Timing.quorum(nodeCount: endpoints.count)) of \(endpoints.count)"]
            )
        }
    }

    /// Node `index` failed with `error`.
    func failed(_ index: Int, _ error: RedisError) {
        guard index < 64 else { return }
        // Replies, refused credentials or database included, mean the node answers. The refusal
        // of a socket without the run_id its server told before (``vet(_:peer:server:)``) means
        // neither: the vet logged it, and the node's other sockets may still answer.
        switch error.code {
        case .unexpectedReply where peers.withLock({ $0.unidentified.contains(index) }):
            return
        case .serverError where error.message.hasPrefix("NOSCRIPT"):
            // A script the node forgot (a restart, SCRIPT FLUSH): the next call sends it again.
            return answered(index)
        case .serverError, .authenticationFailed, .databaseSelectionFailed:
            answered(index)
            return refused(index, error)
        case .unexpectedReply, .cancelled:
            return answered(index)
        case .shutdown:
            // The client (or its event loop) shut the connection down: nothing is known of the node.
            return
        default:
            break
        }
        failureCounters[index].noAnswer.increment()
        let bit: UInt64 = 1 << UInt64(index)
        downBecause.withLock { $0[index] = error }
        guard down.load(ordering: .relaxed) & bit == 0 else { return }
        let (before, _) = down.bitwiseOr(bit, ordering: .relaxed)
        if before & bit == 0 {
            logger.warning(
                "redlock node does not answer; a lock is granted only where a quorum of the other nodes answers",
                metadata: ["node": "\(index)", "endpoint": "\(endpoints[index])", "error": "\(error)", "quorum": "\(Timing.quorum(nodeCount: endpoints.count)) of \(endpoints.count)"]
            )
        }
    }
}

/// Per node, an episode of something going wrong (error answers, late answers) that is logged
/// once per kind when it begins and once when it ends: it ends only at a good answer after a
/// quiet period without another bad one, so that a node that alternates (errors for one lock,
/// grants for another; late now and then) is one episode, not a line per call. The first 64
/// nodes' episodes are a bit mask: a good answer outside any episode costs one atomic load.
private final class Episodes: Sendable {
    /// Per node in an episode: its latest bad answer's time, the kinds seen, and how many.
    private struct Episode {
        var lastAt: ContinuousClock.Instant
        var kinds: Set<String> = []
        var count = 0
    }

    private let active = Atomic<UInt64>(0)
    private let episodes: Mutex<[Episode?]>

    init(nodeCount: Int) {
        episodes = Mutex(Array(repeating: nil, count: nodeCount))
    }

    /// A bad answer of `kind` from node `index` (< 64): whether it is the first of its kind in
    /// the node's episode (begun now, or before).
    func note(_ index: Int, kind: String) -> Bool {
        let now = ContinuousClock.now
        return episodes.withLock { episodes in
            var episode = episodes[index] ?? Episode(lastAt: now)
            episode.lastAt = now
            episode.count += 1
            let first = episode.kinds.insert(kind).inserted
            episodes[index] = episode
            active.bitwiseOr(1 << UInt64(index), ordering: .relaxed)
            return first
        }
    }

    /// Whether node `index` (< 64) is in an episode: one atomic load (check it before
    /// ``endIfQuiet(_:for:)``, whose quiet period costs more to make).
    func isActive(_ index: Int) -> Bool {
        active.load(ordering: .relaxed) & (1 << UInt64(index)) != 0
    }

    /// A good answer from node `index` (< 64): ends its episode when the last bad answer is at
    /// least `quiet` ago, returning how many bad answers it had; nil otherwise.
    func endIfQuiet(_ index: Int, for quiet: Duration) -> Int? {
        let bit: UInt64 = 1 << UInt64(index)
        guard active.load(ordering: .relaxed) & bit != 0 else { return nil }
        let now = ContinuousClock.now
        return episodes.withLock { episodes in
            guard let episode = episodes[index], episode.lastAt.duration(to: now) >= quiet else { return nil }
            episodes[index] = nil
            active.bitwiseAnd(~bit, ordering: .relaxed)
            return episode.count
        }
    }
}
