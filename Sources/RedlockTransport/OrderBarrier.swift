import Synchronization

/// Order across a reconnect: a connection closed with commands unanswered is ended on the server
/// before the next connection to that node sends anything.
///
/// Redis runs one connection's commands in order, but two connections' commands in whatever
/// order it reads them. When the command timeout closes a connection to a node that is frozen
/// or slow, the commands written on it are still in the node's buffers, and the node runs them
/// once it reads them: possibly after commands sent later on the next connection (a node reads a
/// bounded amount of each client per turn). A lock attempt's clean-up could then run after a
/// retry's grant of the same value and delete it, or an acquire after its own clean-up, leaving
/// its key.
///
/// So each new connection asks the server how it names it (`CLIENT INFO`: the client id and the
/// address the server sees) before anything else is written on it, and when a TCP connection
/// that had commands unanswered is closed by the client (not by the server), the next connection
/// to that node first sends `CLIENT KILL ID <id> ADDR <address>` in its handshake (after `AUTH`
/// and `SELECT`, when configured, were answered: a refused password runs nothing). Redis frees
/// the old connection with what it has not run yet, so everything the old connection held
/// either ran before the kill or never runs. The next connection is handed over only once the
/// node answered (within the command timeout, or the rest of the connect timeout if longer):
/// while the node stays frozen, connects fail and nothing is sent, so a frozen node collects no
/// backlog of connections whose commands it would run in any order. The two filters together
/// name the old connection only: ids start again after a restart, and the address (the
/// client's port) pins it. Not over a Unix socket: every client's address there is the
/// socket's path, so after a restart the kill could end another client with the same id; and
/// no network holds bytes back there.
///
/// It needs `+client|info` and `+client|kill` (Redis 6.2 or later). A node that refuses either
/// (an ACL, a proxy in front of it, an older server: any error reply but those of a busy or full
/// node, or `NOAUTH`, which fail the connect) works as before without the barrier, and the
/// refusal is reported (``RedisConnection/orderBarrierRefusal``). A server that closes the
/// connection on `CLIENT INFO` gets one more connect without it, handed over once it answered a
/// `PING`; never while a kill is owed. A reset on `CLIENT INFO` cannot be told from such a
/// server: that connection, too, goes without the barrier (the next connect asks again).
enum OrderBarrier {
    /// What a connect is asked to do: learn the new connection's name, and end `kill` first.
    struct Request: Sendable {
        /// The connection to end before anything else, if any.
        var kill: ServerClient?
    }

    /// What a connect did with a ``Request``.
    struct Outcome: Sendable {
        /// How the server names the new connection; nil when it would not tell.
        var client: ServerClient?
        /// The node's refusal of `CLIENT KILL` or `CLIENT INFO`, or why the answer was of no
        /// use; nil when both worked.
        var refusal: String?

        /// A connect made without the barrier, after the node closed the connection (or
        /// garbled its answer) on `CLIENT`: a proxy that does not pass it on, say.
        init(unsupported reason: String) {
            client = nil
            refusal = reason
        }

        /// Whether an error reply refuses for good: anything but the replies of a node that
        /// cannot serve this client now and may later (`BUSY`, `LOADING`, `MASTERDOWN`,
        /// `TRYAGAIN`, `CLUSTERDOWN`, `ERR max number of clients reached`) or wants credentials
        /// (`NOAUTH`). So `NOPERM`, an unknown command or subcommand, and a proxy's own text for
        /// a command it does not pass on (`unsupported command 'CLIENT'`) all are.
        static func refusesForGood(_ text: String) -> Bool {
            let upper = text.uppercased()
            let passing = ["BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOAUTH", "ERR MAX NUMBER OF CLIENTS"]
            return !passing.contains { upper.hasPrefix($0) }
        }

        /// Reads the replies to a request's commands: the kill's (when asked), then `CLIENT INFO`'s.
        /// An error reply is a refusal: the connect failed on those that are not (see
        /// ``refusesForGood(_:)``) before it got here.
        init(requested: Request, replies: [RedisValue]) {
            var replies = replies[...]
            refusal = nil
            if requested.kill != nil, let reply = replies.popFirst() {
                switch reply {
                case .integer: break
                case let .error(text): refusal = "CLIENT KILL: \(text)"
                default: refusal = "CLIENT KILL: unexpected reply \(reply)"
                }
            }
            client = nil
            guard let reply = replies.popFirst() else { return }
            switch reply {
            case .bulkString, .simpleString:
                client = reply.string.flatMap(ServerClient.init(clientInfo:))
                if client == nil { refusal = refusal ?? "CLIENT INFO: no id and addr in its reply" }
            case let .error(text):
                refusal = refusal ?? "CLIENT INFO: \(text)"
            default:
                refusal = refusal ?? "CLIENT INFO: unexpected reply \(reply)"
            }
        }
    }
}

/// A connection as its server names it (`CLIENT INFO`): its client id and the address the server
/// sees it from (`127.0.0.1:50912`; behind a NAT or proxy, not the client's own).
struct ServerClient: Sendable, Equatable {
    /// The server's client id (`CLIENT ID`), unique until the server restarts.
    let id: UInt64
    /// The `addr` field: the peer address as the server sees it.
    let address: String

    static let infoCommand = RedisCommand("CLIENT", "INFO")

    init(id: UInt64, address: String) {
        self.id = id
        self.address = address
    }

    /// Parses `CLIENT INFO`'s line (`id=7 addr=127.0.0.1:50912 laddr=… fd=8 name= …`); nil
    /// when it lacks a numeric `id` or an `addr`.
    init?(clientInfo line: String) {
        var id: UInt64?
        var address: String?
        for field in line.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\r" }) {
            if field.hasPrefix("id=") {
                id = UInt64(field.dropFirst(3))
            } else if field.hasPrefix("addr="), field.count > 5 {
                address = String(field.dropFirst(5))
            }
        }
        guard let id, let address else { return nil }
        self.init(id: id, address: address)
    }

    /// `CLIENT KILL ID <id> ADDR <address>`: both filters must match, so after a restart (ids
    /// start again) it cannot end another client that got the same id. Answers how many
    /// connections it ended (0 or 1).
    var killCommand: RedisCommand {
        RedisCommand("CLIENT", "KILL", "ID", String(id), "ADDR", address)
    }
}

/// Whether lost commands may still be sent again (``RedisConnection/send(_:script:runsLateUnlessBehind:untilScriptsRun:replayWindow:setting:handler:)``):
/// open until ``close()``, after which a copy not written yet is dropped, and none is made.
/// A lock closes a `lock()` call's window when its value may be used elsewhere (a lease handed
/// to another process): a late delete of that value could then remove a key someone counts.
///
/// A command sent with a window, open or closed, is a release: a connection whose queue is full
/// still takes it (``RedisConnectionConfiguration/maximumQueuedCommands``).
///
/// A window that tracks where its value is set (``init(tracksWhereSet:)``) keeps a lost release
/// only for a node (by its index in its client, whichever connection to it) for which a command
/// that may set the key to that value was staged for writing (sent with `setting:` this
/// window): a node never sent such a command has nothing of the value to release, and a
/// connection's replays are bounded (``RedisConnection/maximumReplays``), so they go to the
/// releases that may matter. A connection made without a node index
/// (``RedisConnection/init(configuration:eventLoop:vet:orderBarrier:node:)``), and a node from
/// the 64th on, may always hold the value.
package final class ReplayWindow: Sendable {
    private let closed = Atomic<Bool>(false)
    /// Whether ``settingOn`` says where the value may be set.
    private let tracksWhereSet: Bool
    /// Bit `i`: a command that may set the value was staged for node `i`.
    private let settingOn = Atomic<UInt64>(0)
    /// Set by ``mayBeSetAnywhere()``.
    private let anywhere = Atomic<Bool>(false)

    /// An open window. `tracksWhereSet`: every command that may set a key to the value is sent
    /// with this window as its `setting:` (a lock's own acquires of a fresh value, and nothing
    /// else: no handoff, no `SET NX` on extend); default false.
    package init(tracksWhereSet: Bool = false) {
        self.tracksWhereSet = tracksWhereSet
    }

    /// Notes that a command that may set the value was staged for `node` (its index in its
    /// client).
    func staged(on node: Int?) {
        guard tracksWhereSet, let node, node < 64 else { return }
        settingOn.bitwiseOr(1 << UInt64(node), ordering: .releasing)
    }

    /// Whether `node` may have set the value: always for a window that does not track it (or no
    /// longer does), a connection without a node index and a node from the 64th on.
    func mayBeSet(on node: Int?) -> Bool {
        guard tracksWhereSet, !anywhere.load(ordering: .acquiring), let node, node < 64 else { return true }
        return settingOn.load(ordering: .acquiring) & (1 << UInt64(node)) != 0
    }

    /// From now on every node may hold the value, whatever was staged where: a command that
    /// may set it went without this window (an extend that re-creates missing keys), or a
    /// release goes on other connections than the acquires, behind which none of them waits
    /// (an acquire still queued on its own connection may be written after the release is
    /// lost). Lost releases of the value are then kept for every node.
    package func mayBeSetAnywhere() {
        anywhere.store(true, ordering: .releasing)
    }

    /// Whether ``mayBeSetAnywhere()`` was called.
    package var isSetAnywhere: Bool { anywhere.load(ordering: .acquiring) }

    /// The window of releases that are never sent again (of a value the caller chose, which
    /// another holder may use), closed from the start: it marks them as releases all the same.
    package static let closedForGood: ReplayWindow = {
        let window = ReplayWindow()
        window.close()
        return window
    }()

    /// Whether copies may still be made and written.
    package var isOpen: Bool { !closed.load(ordering: .acquiring) }

    /// From now on no copy is written or made.
    package func close() {
        closed.store(true, ordering: .releasing)
    }
}
