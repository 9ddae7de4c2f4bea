/// One Redis command: its arguments packed into a single byte buffer.
///
/// Building a command costs two allocations however many arguments it has, and the same
/// command value can be sent to many nodes without copying.
public struct RedisCommand: Sendable, Hashable, CustomStringConvertible {
    private(set) var bytes: [UInt8]
    private(set) var ends: [Int]

    /// Creates an empty command; append its name and arguments.
    public init() {
        bytes = []
        ends = []
    }

    /// Reserves room for `arguments` arguments of `bytes` bytes in all.
    public mutating func reserve(arguments: Int, bytes byteCount: Int) {
        ends.reserveCapacity(arguments)
        bytes.reserveCapacity(byteCount)
    }

    /// Creates a command from its name and arguments, e.g. `RedisCommand("SET", key, value)`.
    public init(_ arguments: String...) {
        self.init(arguments)
    }

    /// Creates a command from its name and arguments.
    public init(_ arguments: [String]) {
        bytes = []
        ends = []
        bytes.reserveCapacity(arguments.reduce(0) { $0 + $1.utf8.count })
        ends.reserveCapacity(arguments.count)
        for argument in arguments { append(argument) }
    }

    /// Appends a text argument (sent as its UTF-8 bytes).
    public mutating func append(_ argument: String) {
        bytes.append(contentsOf: argument.utf8)
        ends.append(bytes.count)
    }

    /// Appends a binary argument.
    public mutating func append(bytes argument: some Sequence<UInt8>) {
        bytes.append(contentsOf: argument)
        ends.append(bytes.count)
    }

    /// Appends an integer argument in decimal.
    public mutating func append(_ argument: Int) {
        append(String(argument))
    }

    /// The command with its first `count` arguments replaced by `replacements`.
    func replacingLeadingArguments(_ count: Int, with replacements: [String]) -> RedisCommand {
        var result = RedisCommand(replacements)
        let start = count > 0 && count <= ends.count ? ends[count - 1] : 0
        var previous = start
        for end in ends.dropFirst(count) {
            result.append(bytes: bytes[previous..<end])
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
            return bytes[start..<end]
        }
    }

    /// The command name and the number of arguments (argument values may be secrets).
    public var description: String {
        guard let first = arguments.first else { return "<empty command>" }
        return "\(String(decoding: first, as: UTF8.self)) (\(count - 1) arguments)"
    }

    /// Calls `body` with C views of the arguments: count, argv and argv lengths, valid only inside.
    func withArgv<Result>(
        _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> Result
    ) -> Result? {
        let count = ends.count
        guard count > 0, let argc = Int32(exactly: count) else { return nil }
        return bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { chars -> Result? in
                // An empty buffer (every argument empty) may have no base address; use a dummy.
                let fallback: CChar = 0
                return withUnsafePointer(to: fallback) { dummy in
                    let base = chars.baseAddress ?? dummy
                    return withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: count) { argv in
                        withUnsafeTemporaryAllocation(of: Int.self, capacity: count) { lengths -> Result? in
                            guard let argvBase = argv.baseAddress, let lengthsBase = lengths.baseAddress else {
                                return nil
                            }
                            var start = 0
                            for index in 0..<count {
                                let end = ends[index]
                                argv.initializeElement(at: index, to: base + start)
                                lengths.initializeElement(at: index, to: end - start)
                                start = end
                            }
                            return body(argc, argvBase, lengthsBase)
                        }
                    }
                }
            }
        }
    }
}
