/// A failure talking to one Redis node, naming the node and the cause.
public struct RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong. New codes may be added; switch with a `default`.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: String, Sendable, Hashable {
            case connectionRefused
            case timeout
            case connectionClosed
            case serverError
            case protocolError
            case authenticationFailed
            case databaseSelectionFailed
            case io
            case invalidAddress
            case nameResolutionFailed
            case cancelled
            case shutdown
            case overloaded
            case unexpectedReply
            case tlsFailed
            case certificateRejected
            case notRedis
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// Nobody listens at the address (TCP RST, or no socket file).
        public static let connectionRefused = Code(.connectionRefused)
        /// The connect or a reply took longer than its timeout.
        public static let timeout = Code(.timeout)
        /// The server closed the connection.
        public static let connectionClosed = Code(.connectionClosed)
        /// The server answered with an error reply (`-ERR …`); the message holds it. A busy or
        /// full node's answer to a connect's handshake (`BUSY`, `LOADING`, `ERR max number of
        /// clients reached`, also to `AUTH` or `SELECT`) is one too, and is not permanent.
        public static let serverError = Code(.serverError)
        /// The bytes from the server are not valid RESP (after valid replies on the connection;
        /// see ``notRedis`` for a server whose first bytes are not).
        public static let protocolError = Code(.protocolError)
        /// The server's first bytes on a new connection, its answer to the connect's first
        /// command, are not RESP: another service listens at the address (an HTTP server, a
        /// database of another kind), or a proxy that answers for itself. The message holds the
        /// parser's reason. Permanent.
        public static let notRedis = Code(.notRedis)
        /// `AUTH` after connecting was refused (wrong password, unknown user), or the node
        /// answered `NOAUTH`: it wants credentials and none were configured.
        public static let authenticationFailed = Code(.authenticationFailed)
        /// `SELECT` of the configured database after connecting was refused: no such database, or
        /// the user may not run `SELECT` (ACL); the message holds the node's text.
        public static let databaseSelectionFailed = Code(.databaseSelectionFailed)
        /// Any other socket or resolver error; the message holds the system's text.
        public static let io = Code(.io)
        /// The address could not be parsed.
        public static let invalidAddress = Code(.invalidAddress)
        /// The node's host name could not be resolved; the message holds the resolver's text. A
        /// name that does not exist is permanent (``RedisError/isPermanent``); a temporary
        /// resolver failure is not.
        public static let nameResolutionFailed = Code(.nameResolutionFailed)
        /// The calling task was cancelled before the reply arrived.
        public static let cancelled = Code(.cancelled)
        /// The connection was shut down.
        public static let shutdown = Code(.shutdown)
        /// More commands wait for the connection than its configuration allows.
        public static let overloaded = Code(.overloaded)
        /// The reply has a type or value the caller did not expect; or a new connection to a
        /// node whose server told its `run_id` before got none (`INFO server` refused or closed
        /// on): it is not used, for now (see `RedlockClient.init(nodes:)` on one server listed twice).
        public static let unexpectedReply = Code(.unexpectedReply)
        /// TLS could not be set up: a CA, certificate or key file that does not load, a server that
        /// does not speak TLS on the port, no shared protocol version or cipher. The message holds
        /// OpenSSL's reason. Permanent.
        ///
        /// A port that speaks the other protocol than configured is this code too, once shown:
        /// over TLS, a server that answers the hello in RESP ("use redis://"); over plain TCP, a
        /// server that closes the connection before any reply, answers a `PING` over TLS on
        /// another connection (or a TLS alert: in the handshake with TLS 1.2, on the first read
        /// after it with TLS 1.3) and closes a plain `PING` on a third ("use rediss://"). A close or a silence that is not shown to be the other
        /// protocol stays ``connectionClosed`` or ``timeout`` (transient): a TLS handshake that
        /// gets no byte back is a ``timeout`` even when a plain `PING` on a second connection got
        /// an answer (its message says so), since a port that speaks both may only be slow with
        /// TLS; a clean close before a TLS handshake is done (a TLS server at `maxclients`
        /// closes so) is ``connectionClosed``.
        public static let tlsFailed = Code(.tlsFailed)
        /// The server's certificate was rejected: not signed by a trusted CA, expired or not yet
        /// valid, or not issued for the node's name (hostname verification). The message holds
        /// the verifier's reason, e.g. `certificate has expired`. Permanent.
        public static let certificateRejected = Code(.certificateRejected)

        /// The code's name, as written in Swift (`connectionRefused`, `timeout`, …): stable,
        /// for logs, metrics and scripts.
        public var description: String { base.rawValue }
    }

    /// What went wrong.
    public var code: Code
    /// The node concerned, when there is one.
    public var endpoint: RedisEndpoint?
    /// Details: the server's error reply, the system's error text, or what was expected.
    public var message: String

    /// Whether the command it failed was never written to the node, so the node cannot have run
    /// it: refused by a full queue or a connection shut down, or failed with a connect while it
    /// waited. Set by the connection; not part of equality.
    package var neverWritten = false

    /// Whether a reply was RESP but past the reader's bounds on one reply's elements or bytes
    /// (a ``Code/protocolError``; the connection is dropped): a hostile or broken node, not a
    /// service that does not speak RESP (``Code/notRedis``). Set by the transport; not part of
    /// equality.
    package var pastReaderBound = false

    /// Creates an error.
    public init(code: Code, endpoint: RedisEndpoint?, message: String) {
        self.code = code
        self.endpoint = endpoint
        self.message = message
    }

    /// This error, for a command that was never written (``neverWritten``).
    package var unwritten: RedisError {
        var error = self
        error.neverWritten = true
        return error
    }

    /// Errors are equal when code, node and message are.
    public static func == (lhs: RedisError, rhs: RedisError) -> Bool {
        lhs.code == rhs.code && lhs.endpoint == rhs.endpoint && lhs.message == rhs.message
    }

    /// Hashes what ``==(_:_:)`` compares.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(endpoint)
        hasher.combine(message)
    }

    /// `NODE: CODE: MESSAGE`.
    public var description: String {
        let node = endpoint.map { "\($0): " } ?? ""
        return message.isEmpty ? "\(node)\(code)" : "\(node)\(code): \(message)"
    }
}

extension RedisError {
    /// Whether retrying cannot help: the node refused the credentials (`AUTH`) or a permission
    /// (`NOPERM`), the key holds another type (`WRONGTYPE`), the command or script is not
    /// available there (`ERR unknown command`, scripting disabled, a command a script calls
    /// renamed away: `ERR Unknown Redis command called from script`), the node is a Redis Cluster
    /// shard that does not serve the key's slot (`MOVED`) or a command's keys are in different
    /// slots (`CROSSSLOT`: a fenced acquire's counter and lock key), the address is invalid, the
    /// host name does not exist, TLS cannot be set up or the server's certificate is rejected.
    /// Timeouts, refused or reset connections, `LOADING`, `BUSY`, `OOM`, `READONLY` (after a
    /// failover), `TRYAGAIN`, `ASK` (a slot being migrated) and `CLUSTERDOWN` are transient.
    public var isPermanent: Bool {
        if isPermissionRefusal || code == .databaseSelectionFailed || code == .invalidAddress
            || code == .tlsFailed || code == .certificateRejected || code == .notRedis
        {
            return true
        }
        if code == .nameResolutionFailed {
            let text = message.lowercased()
            return !text.contains("temporary") && !text.contains("try again")
        }
        // A cluster shard answers MOVED for a key of another shard's slot until the cluster is
        // resharded, and CROSSSLOT for keys of two slots always: Redlock wants independent
        // nodes, not one cluster's shards (`redlock doctor` says so).
        return isUnknownCommand || (code == .serverError && hasReplyPrefix(["WRONGTYPE", "MOVED", "CROSSSLOT"]))
    }

    /// Whether the node does not have the command (renamed away, or scripting disabled):
    /// `ERR unknown command`, or inside a script (Redis 7) `ERR Unknown Redis command called
    /// from script`. Permanent.
    public var isUnknownCommand: Bool {
        code == .serverError && hasReplyPrefix(["ERR UNKNOWN COMMAND", "ERR UNKNOWN REDIS COMMAND"])
    }

    /// Whether the node refused the credentials (`AUTH`: `WRONGPASS`, `NOAUTH`) or a permission
    /// (ACL: `NOPERM`, or a command a script may not run). Permanent.
    public var isPermissionRefusal: Bool {
        if code == .authenticationFailed { return true }
        return code == .serverError && hasReplyPrefix([
            "NOPERM", "WRONGPASS", "NOAUTH", "ERR INVALID PASSWORD", "ERR AUTH",
            // An ACL refusal inside a script (Redis 7).
            "ERR THE USER EXECUTING THE SCRIPT CAN'T",
        ])
    }

    private func hasReplyPrefix(_ prefixes: [String]) -> Bool {
        let reply = message.uppercased()
        return prefixes.contains { reply.hasPrefix($0) }
    }
}
