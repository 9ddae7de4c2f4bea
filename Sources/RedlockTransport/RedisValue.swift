/// A reply from Redis, copied out of hiredis into Swift.
package enum RedisValue: Sendable, Hashable {
    /// A status reply such as `OK` or `PONG`.
    case simpleString(String)
    /// A bulk string; may hold any bytes.
    case bulkString([UInt8])
    /// An integer reply.
    case integer(Int64)
    /// The null reply (`$-1` or `*-1`).
    case null
    /// An array reply.
    case array([RedisValue])
    /// An error reply nested inside an array (a top-level error reply is thrown instead).
    case error(String)

    /// The text of a status or bulk string reply, decoded as UTF-8.
    package var string: String? {
        switch self {
        case let .simpleString(text): text
        case let .bulkString(bytes): String(decoding: bytes, as: UTF8.self)
        default: nil
        }
    }

    /// The value of an integer reply.
    package var integer: Int64? {
        if case let .integer(value) = self { return value }
        return nil
    }

    /// Whether this is the null reply.
    package var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}
