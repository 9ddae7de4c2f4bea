import RedlockTransport

/// How one node voted in a fan-out.
enum Vote: Sendable, Equatable {
    /// Granted; the payload is the script's integer (a fencing token for a fenced acquire).
    case granted(Int64)
    case refused(NodeFailure.Cause)
    /// Asked, but not awaited: the outcome was decided before it answered.
    case unsettled

    /// The payload of a release vote whose node deleted the key but refused its announcement.
    static let announcementRefused: Int64 = 2

    var isGranted: Bool {
        if case .granted = self { return true }
        return false
    }

    /// Whether the node refused in a way no retry cures (``NodeFailure/Cause/isPermanent``).
    var isPermanentRefusal: Bool {
        if case let .refused(cause) = self { return cause.isPermanent }
        return false
    }

    /// Whether a compare-and-delete's vote says it deleted nothing: another value, or no key.
    var deletedNothing: Bool {
        self == .refused(.taken) || self == .refused(.missing)
    }

    /// The vote of a compare-and-act script: 1 granted, 0 taken, -1 missing; 2 granted with the
    /// release's announcement refused (``Scripts/release``).
    static func ofScript(_ reply: RedisValue, endpoint: RedisEndpoint) -> Vote {
        switch reply.integer {
        case .some(1): .granted(1)
        case .some(2): .granted(Vote.announcementRefused)
        case .some(0): .refused(.taken)
        case .some(-1): .refused(.missing)
        default: .refused(.error(RedisError(code: .unexpectedReply, endpoint: endpoint, message: "script returned \(reply)")))
        }
    }

    /// The vote of `SET key value NX PX ms`: OK granted, null taken.
    static func ofSetNX(_ reply: RedisValue, endpoint: RedisEndpoint) -> Vote {
        switch reply {
        case .simpleString("OK"): .granted(0)
        case .null: .refused(.taken)
        default: .refused(.error(RedisError(code: .unexpectedReply, endpoint: endpoint, message: "SET NX returned \(reply)")))
        }
    }

    /// The vote of an acquire script (``Scripts/acquireFenced``, ``Scripts/acquireGuarded``): a
    /// token ≥ 1 granted (1 when not fenced), 0 taken, -2 counter exhausted, -3 data epoch too
    /// young.
    /// -4 the node's clock is behind the latest time it showed, by the ms that follow the code
    /// (`{-4, ms}`, or `{-4, seconds, microseconds, ms}` with the node's `TIME`).
    /// A reply with the node's `TIME` (`{code, seconds, microseconds}`) is read by its code.
    static func ofAcquireScript(_ reply: RedisValue, endpoint: RedisEndpoint) -> Vote {
        // A token above 2^53 comes as the counter's text (Lua numbers are doubles).
        func number(_ value: RedisValue) -> Int64? { value.integer ?? value.string.flatMap { Int64($0) } }
        var code = number(reply)
        var behind: Int64?
        if case let .array(items) = reply, (2...4).contains(items.count) {
            code = number(items[0])
            if items.count == 2 || items.count == 4 { behind = items[items.count - 1].integer }
        }
        return switch code {
        case let .some(token) where token >= 1: .granted(token)
        case .some(0): .refused(.taken)
        case .some(-2): .refused(.fencingCounterExhausted)
        case .some(-3): .refused(.epochTooYoung)
        case .some(-4): .refused(behind.map { .clockWentBack(by: .milliseconds($0)) } ?? .clockWentBack)
        default: .refused(.error(RedisError(code: .unexpectedReply, endpoint: endpoint, message: "acquire script returned \(reply)")))
        }
    }
}

extension Vote {
    /// The vote for one node's outcome: `classify` for a reply, else the node's error.
    static func of(
        _ result: Result<RedisValue, RedisError>,
        endpoint: RedisEndpoint,
        classify: (RedisValue, RedisEndpoint) -> Vote
    ) -> Vote {
        switch result {
        case let .success(reply): classify(reply, endpoint)
        case let .failure(error): .refused(failure: error, endpoint: endpoint)
        }
    }

    /// The vote of a node whose call failed: no answer when the caller was cancelled, else the
    /// node's error.
    static func refused(failure error: any Error, endpoint: RedisEndpoint) -> Vote {
        guard let error = error as? RedisError else {
            return .refused(.error(RedisError(code: .io, endpoint: endpoint, message: "\(error)")))
        }
        return error.code == .cancelled ? .refused(.noAnswer) : .refused(.error(error))
    }
}

/// The number of granted votes.
func grantedCount(_ votes: [Vote?]) -> Int {
    votes.reduce(0) { $0 + (($1?.isGranted ?? false) ? 1 : 0) }
}

/// `count` with "node" or "nodes", as messages say it: "1 node", "3 nodes".
func countedNodes(_ count: Int) -> String {
    "\(count) node\(count == 1 ? "" : "s")"
}
