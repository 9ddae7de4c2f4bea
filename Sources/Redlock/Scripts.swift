import RedlockTransport

/// The Lua scripts of the algorithm. Each compares the key's value with the holder's before
/// touching it, so nobody but the holder can release or extend a lease.
enum Scripts {
    /// `KEYS[1]` lock name, `ARGV[1]` value. Returns 1 when deleted, 0 when another holder's
    /// value is there, -1 when the key is missing.
    static let release = RedisScript(
        """
        local current = redis.call('GET', KEYS[1])
        if current == ARGV[1] then
            return redis.call('DEL', KEYS[1])
        elseif current == false then
            return -1
        end
        return 0
        """
    )

    /// `KEYS[1]` lock name, `ARGV[1]` value, `ARGV[2]` expiry in ms, `ARGV[3]` "1" to re-create a
    /// missing key. Returns 1 when extended (or re-created), 0 when another holder's value is
    /// there, -1 when the key is missing.
    static let extend = RedisScript(
        """
        local current = redis.call('GET', KEYS[1])
        if current == ARGV[1] then
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
            return 1
        elseif current == false then
            if ARGV[3] == '1' then
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                return 1
            end
            return -1
        end
        return 0
        """
    )
}

/// How one node voted in a fan-out.
enum Vote: Sendable, Equatable {
    case granted
    case refused(NodeFailure.Cause)
    /// Asked, but not awaited: the outcome was decided before it answered.
    case unsettled

    /// The vote of a compare-and-act script: 1 granted, 0 taken, -1 missing.
    static func ofScript(_ reply: RedisValue, endpoint: RedisEndpoint) -> Vote {
        switch reply.integer {
        case .some(1): .granted
        case .some(0): .refused(.taken)
        case .some(-1): .refused(.missing)
        default: .refused(.error(RedisError(code: .unexpectedReply, endpoint: endpoint, message: "script returned \(reply)")))
        }
    }

    /// The vote of `SET key value NX PX ms`: OK granted, null taken.
    static func ofSetNX(_ reply: RedisValue, endpoint: RedisEndpoint) -> Vote {
        switch reply {
        case .simpleString("OK"): .granted
        case .null: .refused(.taken)
        default: .refused(.error(RedisError(code: .unexpectedReply, endpoint: endpoint, message: "SET NX returned \(reply)")))
        }
    }
}
