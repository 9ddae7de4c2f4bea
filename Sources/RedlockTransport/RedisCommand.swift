/// One Redis command, kept in its wire form: each argument already framed as a RESP bulk string.
///
/// Building a command costs two allocations however many arguments it has; sending it needs no
/// formatting, only copies of its bytes (with the `*<count>` header) into the connection's
/// output buffer, so the same command value goes to many nodes for the price of those copies.
package struct RedisCommand: Sendable, Hashable, CustomStringConvertible {
    /// `$<length>\r\n<argument>\r\n` for every argument, back to back.
    private(set) var body: [UInt8]
    /// Where each argument's frame ends in `body`.
    private(set) var ends: [Int]

    /// Creates an empty command; append its name and arguments.
    package init() {
        body = []
        ends = []
    }

    /// Reserves room for `arguments` arguments of `bytes` bytes in all.
    package mutating func reserve(arguments: Int, bytes byteCount: Int) {
        ends.reserveCapacity(arguments)
        body.reserveCapacity(byteCount + arguments * 8)
    }

    /// Creates a command from its name and arguments, e.g. `RedisCommand("SET", key, value)`.
    package init(_ arguments: String...) {
        self.init(arguments)
    }

    /// Creates a command from its name and arguments, framed in one pass into a buffer of the
    /// exact size, plus room for `extraBytes` bytes of `extraArguments` more framed arguments.
    package init(_ arguments: [String], extraArguments: Int = 0, extraBytes: Int = 0) {
        let size = arguments.reduce(0) { size, argument in
            let length = argument.utf8.count
            return size + headerSize(length) + length + 2
        }
        // Reserved and appended (specialized here), rather than `init(unsafeUninitializedCapacity:)`,
        // whose allocation looks up the array's generic metadata on every call.
        var body: [UInt8] = []
        body.reserveCapacity(size + extraBytes)
        var ends: [Int] = []
        ends.reserveCapacity(arguments.count + extraArguments)
        for argument in arguments { Self.frame(argument, into: &body, ends: &ends) }
        self.body = body
        self.ends = ends
    }

    /// This command, then `argument`, then the arguments of `suffix`, framed into buffers of
    /// the exact size in two allocations: a command whose parts stay the same from call to call
    /// (a lock's `SET <name>` and `NX PX <ms>`) kept framed, made whole around the one argument
    /// that changes (the value).
    package func appending(_ argument: String, then suffix: RedisCommand = RedisCommand()) -> RedisCommand {
        let length = argument.utf8.count
        var body: [UInt8] = []
        body.reserveCapacity(self.body.count + headerSize(length) + length + 2 + suffix.body.count)
        body.append(contentsOf: self.body)
        var ends: [Int] = []
        ends.reserveCapacity(self.ends.count + 1 + suffix.ends.count)
        ends.append(contentsOf: self.ends)
        Self.frame(argument, into: &body, ends: &ends)
        let offset = body.count
        body.append(contentsOf: suffix.body)
        for end in suffix.ends { ends.append(offset + end) }
        var result = RedisCommand()
        result.body = body
        result.ends = ends
        return result
    }

    /// Appends a text argument (sent as its UTF-8 bytes).
    package mutating func append(_ argument: String) {
        Self.frame(argument, into: &body, ends: &ends)
    }

    /// Appends a binary argument.
    package mutating func append(bytes argument: some Collection<UInt8>) {
        appendHeader(UInt8(ascii: "$"), argument.count, to: &body)
        body.append(contentsOf: argument)
        Self.endArgument(&body, &ends)
    }

    /// Appends `argument` framed to `body`, and where it ends to `ends` (on locals, in `init`:
    /// no uniqueness check of the command's own arrays per argument).
    @inline(__always)
    private static func frame(_ argument: String, into body: inout [UInt8], ends: inout [Int]) {
        appendHeader(UInt8(ascii: "$"), argument.utf8.count, to: &body)
        // A native string's bytes go in one copy.
        let copied: Void? = argument.utf8.withContiguousStorageIfAvailable { body.append(contentsOf: $0) }
        if copied == nil { body.append(contentsOf: argument.utf8) }
        endArgument(&body, &ends)
    }

    /// Closes the argument whose bytes were just appended: `\r\n`, and where it ends.
    @inline(__always)
    private static func endArgument(_ body: inout [UInt8], _ ends: inout [Int]) {
        body.append(13)
        body.append(10)
        ends.append(body.count)
    }

    /// Appends an integer argument in decimal.
    package mutating func append(_ argument: Int) {
        append(String(argument))
    }

    /// The command with its first `count` arguments replaced by `replacements`.
    package func replacingLeadingArguments(_ count: Int, with replacements: [String]) -> RedisCommand {
        // Replacing more arguments than there are replaces them all.
        let start = count > 0 && !ends.isEmpty ? ends[min(count, ends.count) - 1] : 0
        var result = RedisCommand(replacements, extraArguments: ends.count - min(count, ends.count), extraBytes: body.count - start)
        result.body.append(contentsOf: body[start...])
        var previous = start
        for end in ends.dropFirst(count) {
            result.ends.append(result.ends.last.map { $0 + end - previous } ?? end - previous)
            previous = end
        }
        return result
    }

    /// The number of arguments, the command name included.
    package var count: Int { ends.count }

    /// Whether one of the arguments (the command name included) is `bytes`; compares in place.
    func hasArgument(_ bytes: [UInt8]) -> Bool {
        var start = 0
        for end in ends {
            defer { start = end }
            // Skip `$<digits>\r\n`; the closing `\r\n` is not part of the argument.
            var payloadStart = start
            while payloadStart < end, body[payloadStart] != 10 { payloadStart += 1 }
            payloadStart += 1
            let payloadEnd = end - 2
            if payloadEnd - payloadStart == bytes.count, body[payloadStart..<payloadEnd].elementsEqual(bytes) { return true }
        }
        return false
    }

    /// The arguments as bytes.
    package var arguments: [ArraySlice<UInt8>] {
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
    package var description: String {
        guard let first = arguments.first else { return "<empty command>" }
        return "\(String(decoding: first, as: UTF8.self)) (\(count - 1) arguments)"
    }

    /// Appends the whole command in RESP (`*<count>\r\n` and the framed arguments) to `output`;
    /// appends nothing for a command without arguments.
    func appendWire(to output: inout [UInt8]) {
        guard !ends.isEmpty else { return }
        let headerCount = headerSize(ends.count)
        // An empty buffer (the usual case: each write takes the buffer) gets the exact size at
        // once, rather than growing twice; a busy connection's buffer grows as arrays do.
        if output.isEmpty { output.reserveCapacity(headerCount + body.count) }
        appendHeader(UInt8(ascii: "*"), ends.count, to: &output)
        output.append(contentsOf: body)
    }

    /// The whole command in RESP, as ``appendWire(to:)`` writes it.
    var wireBytes: [UInt8] {
        var bytes: [UInt8] = []
        appendWire(to: &bytes)
        return bytes
    }
}

/// The size of a RESP header line for `value` (≥ 0): a marker, its digits, CR LF.
private func headerSize(_ value: Int) -> Int {
    var digits = 1
    var rest = value
    while rest >= 10 {
        digits += 1
        rest /= 10
    }
    return 1 + digits + 2
}

/// Appends `<marker><value>\r\n` to `output`: `$` before a bulk string's length, `*` before
/// an array's count (`value` ≥ 0).
private func appendHeader(_ marker: UInt8, _ value: Int, to output: inout [UInt8]) {
    precondition(value >= 0, "a RESP length is never negative")
    output.append(marker)
    var divisor = 1
    while divisor <= value / 10 { divisor *= 10 }
    var rest = value
    repeat {
        output.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: rest / divisor))
        rest %= divisor
        divisor /= 10
    } while divisor > 0
    output.append(13)
    output.append(10)
}
