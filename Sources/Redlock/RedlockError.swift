import RedlockTransport

/// Why a lock operation failed: a code, a message, and what each node answered.
public struct RedlockError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure. New codes may be added; switch with a `default`.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: String, Sendable, Hashable {
            case taken
            case noQuorum
            case validityExhausted
            case cancelled
            case leaseExpired
            case leaseTakenOver
            case invalidConfiguration
            case leaseLost
            case holdTimeExceeded
            case fencingCounterExhausted
            case clientShutDown
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// Another holder has the lock on enough nodes that no quorum was possible.
        /// ``RedlockError/nodes`` lists the nodes where it is taken.
        public static let taken = Code(.taken)
        /// Node errors or silent nodes made a quorum impossible; ``RedlockError/nodes`` gives each
        /// node's cause.
        public static let noQuorum = Code(.noQuorum)
        /// A quorum answered, but so late that the elapsed time and drift allowance used up the
        /// whole expiry; the keys were released.
        public static let validityExhausted = Code(.validityExhausted)
        /// The calling task was cancelled; any key the attempt set was released.
        public static let cancelled = Code(.cancelled)
        /// Unlock or extend found the lease's keys gone: it expired.
        public static let leaseExpired = Code(.leaseExpired)
        /// Unlock or extend found another holder's keys: the lease expired and was taken over.
        public static let leaseTakenOver = Code(.leaseTakenOver)
        /// The client, lock options or lease are invalid; the message says which.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// A scoped lock's lease reached its deadline (``Lease/validUntil`` minus the safety
        /// margin) without a confirmed extension, or the nodes reported it expired or taken over,
        /// or the body ended after that deadline: the body was cancelled and its work was not
        /// (entirely) protected. ``RedlockError/underlyingError`` holds what the body threw.
        public static let leaseLost = Code(.leaseLost)
        /// A scoped lock's body ran past its maximum hold time and was cancelled.
        public static let holdTimeExceeded = Code(.holdTimeExceeded)
        /// A fenced acquire found the fencing counter (`redlock:fence`) at `Int64.max` on so many
        /// nodes that no quorum can issue a token. Not retried; an operator must intervene. (Fewer
        /// exhausted nodes are node failures like any other.)
        public static let fencingCounterExhausted = Code(.fencingCounterExhausted)
        /// The client was shut down (``RedlockClient/shutdown()``) before the call.
        public static let clientShutDown = Code(.clientShutDown)

        /// The code's name, as written in Swift (`taken`, `noQuorum`, …): stable, for logs,
        /// metrics and scripts.
        public var description: String { base.rawValue }
    }

    /// The kind of failure.
    public var code: Code
    /// The lock's name, when the error concerns one lock.
    public var lockName: String?
    /// Details in a sentence.
    public var message: String
    /// Each node that did not grant the operation, with its cause; empty for configuration errors.
    public var nodes: [NodeFailure]
    /// The error behind this one, when there is one: for ``Code-swift.struct/leaseLost`` from a
    /// scoped lock, what the body itself threw.
    public var underlyingError: (any Error)?

    /// Creates an error.
    public init(code: Code, lockName: String? = nil, message: String, nodes: [NodeFailure] = [], underlyingError: (any Error)? = nil) {
        self.code = code
        self.lockName = lockName
        self.message = message
        self.nodes = nodes
        self.underlyingError = underlyingError
    }

    /// How many nodes failed with an error that no retry cures (see
    /// ``RedisError/isPermanent``), or gave no answer in time since their connection failed
    /// with one (``NodeFailure/connectionFailure``: a connect that takes longer to fail than an
    /// attempt's budget, as finding a TLS-only port spoken to in plain RESP may, fails the same
    /// way next time).
    var permanentFailureCount: Int {
        nodes.count { $0.cause.isPermanent || ($0.cause == .noAnswer && $0.connectionFailure?.isPermanent == true) }
    }

    static func invalid(_ message: String, lockName: String? = nil) -> RedlockError {
        RedlockError(code: .invalidConfiguration, lockName: lockName, message: message)
    }

    /// `lock "NAME": CODE: MESSAGE; node 0 (HOST:PORT): CAUSE; …; underlying error: …`, the
    /// name as ``shown(_:)`` gives it.
    public var description: String {
        var text = lockName.map { "lock \(Self.shown($0)): " } ?? ""
        text += "\(code): \(message)"
        for node in nodes { text += "; \(node)" }
        if let underlyingError { text += "; underlying error: \(underlyingError)" }
        return text
    }

    /// A lock name as the library's messages (and `redlock`'s) show it, safe for one line of a
    /// log or a terminal: in double quotes; `"` and `\` escaped with a backslash, `\n`, `\r`
    /// and `\t` as such, and as `\u{HEX}` every other control character (U+0000–U+001F,
    /// U+007F–U+009F), format character (bidirectional controls such as U+202E, U+FEFF, zero
    /// width joiners) and line or paragraph separator (U+2028, U+2029). A name of more than
    /// 400 bytes of UTF-8 shows its first 200 (whole Unicode scalars), then `…` and its length in
    /// bytes.
    public static func shown(_ name: String) -> String {
        let cut = name.utf8.count > 400
        var text = "\""
        var bytes = 0
        for scalar in name.unicodeScalars {
            bytes += UTF8.width(scalar)
            if cut, bytes > 200 { break }
            switch scalar {
            case "\"": text += "\\\""
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            case "\r": text += "\\r"
            case "\t": text += "\\t"
            default:
                switch scalar.properties.generalCategory {
                case .control, .format, .lineSeparator, .paragraphSeparator:
                    text += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
                default:
                    text.unicodeScalars.append(scalar)
                }
            }
        }
        text += "\""
        return cut ? text + "… (\(name.utf8.count) bytes)" : text
    }
}

/// What one node did instead of granting an operation.
public struct NodeFailure: Sendable, Hashable, CustomStringConvertible {
    /// Why the node did not grant. New causes may be added: compare with the static members;
    /// the causes that carry details are told by their accessors (``error``, ``uptime``,
    /// ``clockExcess``, ``clockBehind``, ``replicasAcknowledged``), which are nil for every other
    /// cause.
    public struct Cause: Sendable, Hashable, CustomStringConvertible {
        private enum Base: Sendable, Hashable {
            case taken
            case missing
            case error(RedisError)
            case noAnswer
            case recentlyRestarted(uptime: Duration)
            case fencingCounterExhausted
            case epochTooYoung
            case clockRanAhead(Duration)
            case clockWentBack(Duration?)
            case notReplicated(acknowledged: Int, required: Int)
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// Causes are equal when they are the same cause with the same details, but a clock set
        /// back is ``clockWentBack`` whatever the amount: the library reports it with one
        /// (``clockWentBack(by:)``), and `cause == .clockWentBack` must match that.
        public static func == (lhs: Cause, rhs: Cause) -> Bool {
            switch (lhs.base, rhs.base) {
            case (.clockWentBack, .clockWentBack): true
            default: lhs.base == rhs.base
            }
        }

        /// Hashes as ``==`` compares: a clock set back by any amount alike.
        public func hash(into hasher: inout Hasher) {
            if case .clockWentBack = base {
                hasher.combine("clockWentBack")
            } else {
                hasher.combine(base)
            }
        }

        /// The key holds another holder's value.
        public static let taken = Cause(.taken)
        /// The key does not exist (it expired, or was never set).
        public static let missing = Cause(.missing)
        /// The node had not answered when the attempt's time ran out (or the caller was cancelled).
        public static let noAnswer = Cause(.noAnswer)
        /// The node's fencing counter (`redlock:fence`) is at `Int64.max`: it can issue no token
        /// (and set nothing) until an operator acts.
        public static let fencingCounterExhausted = Cause(.fencingCounterExhausted)
        /// The node's data epoch (`redlock:epoch`) is younger than ``LockOptions/epochGuard``:
        /// the node lost its data, or is new, so its vote was refused (it may have forgotten a
        /// lease that is still valid).
        public static let epochTooYoung = Cause(.epochTooYoung)

        /// The node's wall clock is behind the latest time it showed an acquire (it was set back):
        /// a key set now would expire early once the clock is put right, so the node refused
        /// (``LockOptions/epochGuard`` or ``LockOptions/clockGuard``). It grants again once its
        /// clock has passed that time; an operator who knows the earlier time was wrong can
        /// delete `redlock:epoch` (the node is then young for the epoch guard).
        public static let clockWentBack = Cause(.clockWentBack(nil))

        /// The same as ``clockWentBack`` (and equal to it), with how far the node's clock is behind
        /// the latest time it showed: the least time the refusal lasts (``clockBehind``).
        public static func clockWentBack(by behind: Duration) -> Cause { Cause(.clockWentBack(behind)) }

        /// The node's wall clock ran ahead of this client's monotonic clock by `excess` (beyond
        /// the drift allowance) since the client last read it (``LockOptions/clockGuard``): it
        /// runs fast or stepped forward, and may have expired another holder's key early, so its
        /// vote was refused.
        public static func clockRanAhead(by excess: Duration) -> Cause { Cause(.clockRanAhead(excess)) }

        /// The node granted, but fewer of its replicas than ``LockOptions/replicaAcknowledgements``
        /// acknowledged the write within the attempt's time (`WAIT`): a failover to a replica
        /// without the key would forget the lease, so the vote was not counted.
        public static func notReplicated(acknowledged: Int, required: Int) -> Cause {
            Cause(.notReplicated(acknowledged: acknowledged, required: required))
        }

        /// The node failed: refused, timed out, closed, answered an error or garbage.
        public static func error(_ error: RedisError) -> Cause { Cause(.error(error)) }

        /// The node granted, but it has been up for less than the restart guard, so its vote was
        /// not counted (it may have restarted without its data).
        public static func recentlyRestarted(uptime: Duration) -> Cause { Cause(.recentlyRestarted(uptime: uptime)) }

        /// The node's error, for a cause made by ``error(_:)``; else nil.
        public var error: RedisError? {
            if case let .error(error) = base { return error }
            return nil
        }

        /// Whether no retry cures it: the node refused the credentials, a permission or a key of
        /// the wrong type (``RedisError/isPermanent``), or its fencing counter is exhausted.
        var isPermanent: Bool {
            self == .fencingCounterExhausted || error?.isPermanent == true
        }

        /// Whether the node answered that it set nothing (taken, missing, a refusal by the acquire
        /// script's own checks): its key needs no release.
        var setNothing: Bool {
            switch base {
            case .taken, .missing, .fencingCounterExhausted, .epochTooYoung, .clockWentBack: true
            case .error, .noAnswer, .recentlyRestarted, .clockRanAhead, .notReplicated: false
            }
        }

        /// How far the node's clock is behind the latest time it showed, for a cause made by
        /// ``clockWentBack(by:)``; else nil. Every such refusal the library reports carries
        /// the amount (the acquire script measures it), so this tells the cause.
        public var clockBehind: Duration? {
            if case let .clockWentBack(behind) = base { return behind }
            return nil
        }

        /// How far the node's clock ran ahead, for a cause made by ``clockRanAhead(by:)``; else nil.
        public var clockExcess: Duration? {
            if case let .clockRanAhead(excess) = base { return excess }
            return nil
        }

        /// How many of the node's replicas acknowledged the write, for a cause made by
        /// ``notReplicated(acknowledged:required:)``; else nil.
        public var replicasAcknowledged: Int? {
            if case let .notReplicated(acknowledged, _) = base { return acknowledged }
            return nil
        }

        /// The node's uptime, for a cause made by ``recentlyRestarted(uptime:)``; else nil.
        public var uptime: Duration? {
            if case let .recentlyRestarted(uptime) = base { return uptime }
            return nil
        }

        /// A short description of the cause.
        public var description: String {
            switch base {
            case .taken: "taken by another holder"
            case .missing: "key missing"
            case let .error(error): "\(error.code): \(error.message)"
            case .noAnswer: "no answer within the attempt's time budget"
            case let .recentlyRestarted(uptime): "up for only \(uptime.readableDescription), less than the restart guard; vote ignored"
            case .fencingCounterExhausted: "the fencing counter redlock:fence is at its maximum"
            case let .clockWentBack(behind):
                "its clock is \(behind.map { "\($0) " } ?? "")behind the latest time it showed (it was set back); vote refused until it has passed that time"
            case let .clockRanAhead(excess): "its clock ran \(excess) ahead of this client's since it was last read (fast or stepped); vote refused"
            case let .notReplicated(acknowledged, required):
                "\(acknowledged) of its replicas acknowledged the write in time, \(required) required (WAIT); vote not counted"
            case .epochTooYoung: "its data epoch (redlock:epoch) is younger than the epoch guard: the node lost its data or is new; vote refused"
            }
        }
    }

    /// The node's index in the client's node list.
    public var node: Int
    /// The node's address.
    public var endpoint: RedisEndpoint
    /// Why it did not grant.
    public var cause: Cause
    /// For a node that gave no answer in time (``Cause/noAnswer``): the connection-level
    /// failure since which it has not answered, if any — refused, timed out, a TLS handshake
    /// with a port that speaks plain RESP (or the reverse), … — as the node's connection last
    /// reported it; nil otherwise, and while the first connect is still under way. A permanent
    /// one (``RedisError/isPermanent``) counts as the node refusing for good: `lock()` does not
    /// retry when too few other nodes are left for a quorum.
    public var connectionFailure: RedisError?

    /// Creates a node failure.
    public init(node: Int, endpoint: RedisEndpoint, cause: Cause) {
        self.node = node
        self.endpoint = endpoint
        self.cause = cause
    }

    /// `node INDEX (ENDPOINT): CAUSE`, then `; its connection failed: ERROR` when
    /// ``connectionFailure`` is set.
    public var description: String {
        "node \(node) (\(endpoint)): \(cause)" + (connectionFailure.map { "; its connection failed: \($0)" } ?? "")
    }
}
