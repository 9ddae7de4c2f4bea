/// One Redis command, kept in its wire form: each argument already framed as a RESP bulk string.
///
/// Building a command costs two allocations however many arguments it has; sending it needs no
/// formatting, only copies of its bytes (with the `*<count>` header) into the connection's
/// output buffer, so the same command value goes to many nodes for the price of those copies.
public struct RedisCommand: Sendable, Hashable, CustomStringConvertible {
    /// `$<length>\r\n<argument>\r\n` for every argument, back to back.
    private(set) var body: [UInt8]
    /// Where each argument's frame ends in `body`.
    private(set) var ends: [Int]

    /// Creates an empty command; append its name and arguments.
    public init() {
        body = []
        ends = []
    }

    /// Reserves room for `arguments` arguments of `bytes` bytes in all.
    public mutating func reserve(arguments: Int, bytes byteCount: Int) {
        ends.reserveCapacity(arguments)
        body.reserveCapacity(byteCount + arguments * 8)
    }

    /// Creates a command from its name and arguments, e.g. `RedisCommand("SET", key, value)`.
    public init(_ arguments: String...) {
        self.init(arguments)
    }

    /// Creates a command from its name and arguments, framed in one pass into a buffer of the
    /// exact size.
    public init(_ arguments: [String]) {
        var size = 0
        for argument in arguments {
            let length = argument.utf8.count
            size += 1 + decimalDigitCount(length) + 2 + length + 2
        }
        var ends: [Int] = []
        ends.reserveCapacity(arguments.count)
        body = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            var position = 0
            func put(_ byte: UInt8) {
                buffer[position] = byte
                position += 1
            }
            for argument in arguments {
                let utf8 = argument.utf8
                let length = utf8.count
                put(UInt8(ascii: "$"))
                var scale = 1
                while length / scale >= 10 { scale *= 10 }
                while scale > 0 {
                    put(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: length / scale % 10))
                    scale /= 10
                }
                put(13)
                put(10)
                let copied = utf8.withContiguousStorageIfAvailable { bytes -> Bool in
                    _ = UnsafeMutableBufferPointer(rebasing: buffer[position..<(position + length)]).initialize(fromContentsOf: bytes)
                    return true
                }
                if copied == nil {
                    for byte in utf8 { put(byte) }
                } else {
                    position += length
                }
                put(13)
                put(10)
                ends.append(position)
            }
            initialized = position
        }
        self.ends = ends
    }

    /// Appends a text argument (sent as its UTF-8 bytes).
    public mutating func append(_ argument: String) {
        let utf8 = argument.utf8
        appendFrameHeader(length: utf8.count)
        body.append(contentsOf: utf8)
        appendFrameEnd()
    }

    /// Appends a binary argument.
    public mutating func append(bytes argument: some Collection<UInt8>) {
        appendFrameHeader(length: argument.count)
        body.append(contentsOf: argument)
        appendFrameEnd()
    }

    /// Appends an integer argument in decimal.
    public mutating func append(_ argument: Int) {
        append(String(argument))
    }

    /// `$<length>\r\n`.
    private mutating func appendFrameHeader(length: Int) {
        body.append(UInt8(ascii: "$"))
        appendDecimal(length, to: &body)
        body.append(13)
        body.append(10)
    }

    private mutating func appendFrameEnd() {
        body.append(13)
        body.append(10)
        ends.append(body.count)
    }

    /// The command with its first `count` arguments replaced by `replacements`.
    func replacingLeadingArguments(_ count: Int, with replacements: [String]) -> RedisCommand {
        var result = RedisCommand(replacements)
        // Replacing more arguments than there are replaces them all.
        let start = count > 0 && !ends.isEmpty ? ends[min(count, ends.count) - 1] : 0
        result.body.append(contentsOf: body[start...])
        var previous = start
        for end in ends.dropFirst(count) {
            result.ends.append(result.ends.last.map { $0 + end - previous } ?? end - previous)
            previous = end
        }
        return result
    }

    /// The number of arguments, the command name included.
    public var count: Int { ends.count }

    /// The arguments as bytes.
    public var arguments: [ArraySlice<UInt8>] {
        var start = 0
        return ends.map { end in
            defer { start = end }
            // Skip `$<digits>\r\n`; drop the closing `\r\n`.
            var payloadStart = start
            while payloadStart < end, body[payloadStart] != 10 { payloadStart += 1 }
            return body[(payloadStart + 1)..<(end - 2)]
        }
    }

    /// The command name and the number of arguments (argument values may be secrets).
    public var description: String {
        guard let first = arguments.first else { return "<empty command>" }
        return "\(String(decoding: first, as: UTF8.self)) (\(count - 1) arguments)"
    }

    /// Calls `use` with the whole command in RESP (`*<count>\r\n` and the framed arguments),
    /// valid only inside; nil for a command without arguments.
    func withWireBytes<Result>(_ use: (UnsafeBufferPointer<CChar>) -> Result) -> Result? {
        guard !ends.isEmpty else { return nil }
        var digits = 1
        var scale = 10
        while ends.count >= scale {
            digits += 1
            scale *= 10
        }
        let headerCount = 1 + digits + 2
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: headerCount + body.count) { buffer in
            buffer[0] = UInt8(ascii: "*")
            var rest = ends.count
            for position in stride(from: digits, through: 1, by: -1) {
                buffer[position] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            }
            buffer[digits + 1] = 13
            buffer[digits + 2] = 10
            _ = UnsafeMutableBufferPointer(rebasing: buffer[headerCount...]).initialize(fromContentsOf: body)
            return buffer.withMemoryRebound(to: CChar.self) { use(UnsafeBufferPointer($0)) }
        }
    }
}

/// The number of decimal digits of `value` (≥ 0).
private func decimalDigitCount(_ value: Int) -> Int {
    var digits = 1
    var rest = value
    while rest >= 10 {
        digits += 1
        rest /= 10
    }
    return digits
}

/// Appends `value` (≥ 0) in decimal ASCII.
private func appendDecimal(_ value: Int, to bytes: inout [UInt8]) {
    precondition(value >= 0, "a RESP length is never negative")
    if value < 10 {
        bytes.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value))
        return
    }
    var scale = 10
    while value / scale >= 10 { scale *= 10 }
    var rest = value
    while scale > 0 {
        bytes.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: rest / scale))
        rest %= scale
        scale /= 10
    }
}
