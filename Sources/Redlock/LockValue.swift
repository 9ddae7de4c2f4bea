import RedlockTransport

/// Where a lock call gets the value it writes to the nodes: proof of ownership for unlock
/// and extend, so it must be unique to the caller.
public struct LockValue: Sendable {
    private let make: @Sendable () -> String
    /// Whether a node may already hold a value from this source for the name (a fixed or caller-
    /// made value): acquires then re-attach where the node holds it (see ``fixed(_:)``).
    let mayAlreadyBeHeld: Bool

    /// Values made by `generator`, called once per `lock()`/`tryLock()` call (the value is
    /// reused across that call's retries). It must return a non-empty, unique string. A node
    /// that already holds the generated value for the name counts as granted (re-attach), so a
    /// generator that returns the same value twice (one per process, say) makes `lock()` and
    /// `tryLock()` re-entrant for every caller with that value: they cannot tell each other
    /// apart. Scopes can: while one of them holds the value, another scope of the same client on
    /// the name is refused (see ``DistributedLock/withLease(isolation:_:extendWhenRemaining:maximumHoldTime:safetyMargin:onExtended:_:)``).
    public init(generator: @escaping @Sendable () -> String) {
        make = generator
        mayAlreadyBeHeld = true
    }

    private init(random generator: @escaping @Sendable () -> String) {
        make = generator
        mayAlreadyBeHeld = false
    }

    /// 16 random bytes from the system's secure generator, base64-encoded. The default. A fair
    /// lock (``LockOptions/fair``) puts its client's handoff tag in front — 16 lowercase hex
    /// digits and `~` — so that a release tells the waiter's process alone that it was handed the
    /// lock (on its client's channel `redlock:handoff:~TAG`, not the channel every waiting
    /// process listens on).
    public static let random = LockValue(random: { randomToken(byteCount: 16) })

    /// The same value every time, e.g. to re-attach to a lease held by another process that
    /// handed over its value. An acquire with it counts every node that already holds this
    /// value for the name as granted and resets the key's expiry there (`GET == value →
    /// PEXPIRE, else SET NX PX`, the single-Redis lock's re-attach), so the new lease's validity
    /// is measured from this acquire. Two holders with one fixed value cannot tell each other
    /// apart: an attempt that fails releases the value wherever it was set, the handed-over
    /// lease's keys included.
    public static func fixed(_ value: String) -> LockValue {
        var fixed = LockValue(generator: { value })
        fixed.fixedValue = value
        return fixed
    }

    /// The value of ``fixed(_:)``; nil for other sources.
    private(set) var fixedValue: String?

    func next() -> String { make() }
}

/// 16 lowercase hex digits (8 random bytes from the system's secure generator): a client's
/// handoff tag (``LocalCoordination/handoffTag``).
func randomHexTag() -> String {
    var generator = SystemRandomNumberGenerator()
    let word: UInt64 = generator.next()
    let digits = String(word, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

/// `byteCount` random bytes, base64-encoded (standard alphabet, padded).
func randomToken(byteCount: Int) -> String {
    base64(secureRandomBytes(byteCount))
}

private let base64Alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

func base64(_ bytes: [UInt8]) -> String {
    let alphabet = base64Alphabet
    var output: [UInt8] = []
    output.reserveCapacity((bytes.count + 2) / 3 * 4)
    var index = 0
    while index < bytes.count {
        let remaining = bytes.count - index
        let b0 = UInt32(bytes[index])
        let b1 = remaining > 1 ? UInt32(bytes[index + 1]) : 0
        let b2 = remaining > 2 ? UInt32(bytes[index + 2]) : 0
        let triple = b0 << 16 | b1 << 8 | b2
        output.append(alphabet[Int(triple >> 18 & 63)])
        output.append(alphabet[Int(triple >> 12 & 63)])
        output.append(remaining > 1 ? alphabet[Int(triple >> 6 & 63)] : UInt8(ascii: "="))
        output.append(remaining > 2 ? alphabet[Int(triple & 63)] : UInt8(ascii: "="))
        index += 3
    }
    return String(decoding: output, as: UTF8.self)
}
