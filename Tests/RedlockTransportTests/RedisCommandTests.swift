@testable import RedlockTransport
import Testing

/// The command as it goes on the wire, or nil when it has no bytes to send.
private func wire(_ command: RedisCommand) -> [UInt8]? {
    let bytes = command.wireBytes
    return bytes.isEmpty ? nil : bytes
}

private func bytes(_ text: String) -> [UInt8] {
    Array(text.utf8)
}

/// `length` letters cycling through the alphabet, so a shifted or truncated copy shows.
private func letters(_ length: Int) -> String {
    String((0..<length).map { Character(Unicode.Scalar(UInt8(ascii: "a") + UInt8($0 % 26))) })
}

@Suite("Commands in wire form")
struct RedisCommandTests {
    @Test("SET k with an empty value is framed as exact RESP")
    func exactFrame() {
        #expect(wire(RedisCommand("SET", "k", "")) == bytes("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"))
        #expect(wire(RedisCommand("PING")) == bytes("*1\r\n$4\r\nPING\r\n"))
    }

    @Test("a prefix, one argument and a suffix make the same command as all the arguments at once",
          arguments: [0, 1, 9, 10, 99, 100, 12_345])
    func prefixArgumentSuffix(length: Int) {
        let value = letters(length)
        let whole = RedisCommand("SET", "name:\(length)", value, "NX", "PX", "8000")
        let made = RedisCommand("SET", "name:\(length)").appending(value, then: RedisCommand("NX", "PX", "8000"))
        #expect(made == whole)
        #expect(wire(made) == wire(whole))
        #expect(made.arguments.map(Array.init) == whole.arguments.map(Array.init))
        // Without a suffix, onto an empty command, and with an empty one.
        #expect(RedisCommand("ECHO").appending(value) == RedisCommand("ECHO", value))
        #expect(RedisCommand().appending(value, then: RedisCommand("")) == RedisCommand(value, ""))
        // A script call completed from its prefix is the call built at once.
        let script = RedisScript("return 1")
        let call = RedisScriptCall(script, keys: ["k"]).appending(value, then: RedisCommand("channel"), runsLateUnlessBehind: value)
        #expect(call.command == RedisScriptCall(script, keys: ["k"], arguments: [value, "channel"]).command)
        #expect(call.runsLateUnlessBehind == value)
    }

    @Test("arguments whose lengths have one to five digits are framed exactly",
          arguments: [0, 1, 9, 10, 11, 99, 100, 101, 999, 1_000, 12_345])
    func argumentLengths(length: Int) {
        let value = letters(length)
        let command = RedisCommand("ECHO", value)
        #expect(wire(command) == bytes("*2\r\n$4\r\nECHO\r\n$\(length)\r\n\(value)\r\n"))
        #expect(command.arguments.map(Array.init) == [bytes("ECHO"), bytes(value)])
    }

    @Test("binary arguments holding CR LF, dollar signs and every byte value go through unchanged")
    func binaryArguments() {
        let framingLookalike: [UInt8] = [0, 13, 10, 36, 51, 13, 10, 255, 42, 13, 10]
        let leadingNewline: [UInt8] = [10, 13, 10]
        let everyByte = (0...255).map { UInt8($0) } + [13, 10]
        var command = RedisCommand("SET", "key")
        command.append(bytes: framingLookalike)
        command.append(bytes: leadingNewline)
        command.append(bytes: everyByte)

        let expected = bytes("*5\r\n$3\r\nSET\r\n$3\r\nkey\r\n")
            + bytes("$11\r\n") + framingLookalike + bytes("\r\n")
            + bytes("$3\r\n") + leadingNewline + bytes("\r\n")
            + bytes("$258\r\n") + everyByte + bytes("\r\n")
        #expect(wire(command) == expected)
        #expect(command.count == 5)
        #expect(command.arguments.map(Array.init) == [bytes("SET"), bytes("key"), framingLookalike, leadingNewline, everyByte])
    }

    @Test("commands with argument counts of one to four digits are framed exactly",
          arguments: [1, 2, 9, 10, 11, 99, 100, 101, 1_000])
    func argumentCounts(count: Int) {
        let names = ["MSET"] + (1..<count).map { "a\($0)" }
        let command = RedisCommand(names)
        var expected = bytes("*\(count)\r\n")
        for name in names { expected += bytes("$\(name.utf8.count)\r\n\(name)\r\n") }
        #expect(wire(command) == expected)
        #expect(command.count == count)
        #expect(command.arguments.map { String(decoding: $0, as: UTF8.self) } == names)
    }

    @Test("arguments gives back each argument's bytes, however it was appended")
    func argumentsRoundTrip() {
        var command = RedisCommand("SET", "lock", "")
        command.append("PX")
        command.append(30_000)
        command.append(-7)
        command.append("naïve ✓")
        command.append(bytes: [0, 13, 10, 0])
        #expect(command.count == 8)
        #expect(command.arguments.map(Array.init) == [
            bytes("SET"), bytes("lock"), [], bytes("PX"), bytes("30000"), bytes("-7"), bytes("naïve ✓"), [0, 13, 10, 0],
        ])
        #expect(RedisCommand().count == 0)
        #expect(RedisCommand().arguments.isEmpty)
    }

    @Test("the description shows the command name and argument count, never the values")
    func descriptionHidesValues() {
        let command = RedisCommand("AUTH", "admin", "hunter2")
        #expect(command.description == "AUTH (2 arguments)")
        #expect(!command.description.contains("admin"))
        #expect(!command.description.contains("hunter2"))
        #expect(RedisCommand("PING").description == "PING (0 arguments)")
        #expect(RedisCommand().description == "<empty command>")
    }

    @Test("replacing EVALSHA and the digest with EVAL and the source gives the command built directly")
    func evalFallback() {
        let script = RedisScript(
            """
            local current = redis.call('GET', KEYS[1])
            if current == ARGV[1] then
                return redis.call('PEXPIRE', KEYS[1], ARGV[2])
            end
            return 0
            """
        )
        let call = RedisScriptCall(script, keys: ["lock"], arguments: ["value-1", "30000"])
        #expect(call.command.arguments.first.map(Array.init) == bytes("EVALSHA"))

        let replaced = call.command.replacingLeadingArguments(2, with: ["EVAL", script.source])
        let direct = RedisCommand("EVAL", script.source, "1", "lock", "value-1", "30000")
        #expect(wire(replaced) == wire(direct))
        #expect(replaced == direct)
        #expect(replaced.count == 6)
        #expect(replaced.arguments.map(Array.init) == direct.arguments.map(Array.init))
        // The original is untouched.
        #expect(call.command.arguments.dropFirst().first.map(Array.init) == bytes(script.sha1))
    }

    @Test("replacing leading arguments keeps binary arguments and re-counts across a digit boundary")
    func replacementChangesCount() {
        var original = RedisCommand("EVALSHA", String(repeating: "0", count: 40), "0")
        for index in 0..<6 { original.append("arg\(index)") }
        original.append(bytes: [13, 10, 0, 255])
        #expect(original.count == 10)

        let replaced = original.replacingLeadingArguments(1, with: ["X", "Y"])
        var direct = RedisCommand("X", "Y", String(repeating: "0", count: 40), "0")
        for index in 0..<6 { direct.append("arg\(index)") }
        direct.append(bytes: [13, 10, 0, 255])
        #expect(replaced.count == 11)
        #expect(wire(replaced) == wire(direct))
        #expect(wire(replaced)?.starts(with: bytes("*11\r\n$1\r\nX\r\n$1\r\nY\r\n$40\r\n")) == true)

        let shortened = original.replacingLeadingArguments(3, with: ["PING"])
        #expect(shortened.count == 8)
        var expectedShort = RedisCommand("PING")
        for index in 0..<6 { expectedShort.append("arg\(index)") }
        expectedShort.append(bytes: [13, 10, 0, 255])
        #expect(wire(shortened) == wire(expectedShort))
        #expect(wire(shortened)?.starts(with: bytes("*8\r\n")) == true)
    }

    @Test("an empty command has no wire bytes")
    func emptyCommand() {
        #expect(wire(RedisCommand()) == nil)
        #expect(wire(RedisCommand([])) == nil)
    }
}
