import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

/// A server scripted by command, over ``GarbageServer``: each connection (numbered from 0 in
/// accept order: the client under test connects one at a time) answers each whole RESP command
/// as `answer(connection, name)` says, `name` being the command's first word in upper case
/// (with a `CLIENT`'s subcommand: `CLIENT INFO`). Bytes that are not RESP (a TLS hello) get
/// nothing.
private final class ScriptedServer: Sendable {
    enum Answer: Sendable {
        /// These bytes.
        case reply(String)
        /// The end of the stream, before any later command's answer.
        case close
    }

    let server: GarbageServer
    var endpoint: RedisEndpoint { server.endpoint }
    var acceptedCount: Int { server.acceptedCount }

    /// The commands each connection sent, by name, in order.
    var commands: [[String]] { log.state.withLock { $0.sent } }
    private let log: Log

    /// The last connection's unparsed bytes, and what each connection sent.
    private final class Log: Sendable {
        let state = Mutex<(buffer: [UInt8], sent: [[String]])>(([], []))
    }

    private init(server: GarbageServer, log: Log) {
        self.server = server
        self.log = log
    }

    static func start(_ answer: @escaping @Sendable (_ connection: Int, _ command: String) -> Answer) throws -> ScriptedServer {
        let log = Log()
        let server = try GarbageServer.start { peer, read in
            let (connection, names): (Int, [String]) = log.state.withLock { state in
                if read == 0 {
                    state.buffer = []
                    state.sent.append([])
                }
                state.buffer += peer.bytes
                let (commands, consumed) = parseCommands(state.buffer)
                state.buffer.removeFirst(consumed)
                let names = commands.map { words in
                    let name = (words.first ?? "").uppercased()
                    return name == "CLIENT" && words.count > 1 ? "CLIENT \(words[1].uppercased())" : name
                }
                state.sent[state.sent.count - 1] += names
                return (state.sent.count - 1, names)
            }
            for name in names {
                switch answer(connection, name) {
                case let .reply(bytes):
                    peer.send(bytes)
                case .close:
                    peer.endStream()
                    return false
                }
            }
            return true
        }
        return ScriptedServer(server: server, log: log)
    }

    /// Redis's answer to `name` in these tests: `PING`, `CLIENT INFO`, `INFO` (with the run_id
    /// `runID`), `SUBSCRIBE` (to `ch`), else `+OK`.
    static func redis(_ name: String, runID: String = serverRunID) -> Answer {
        switch name {
        case "PING": .reply("+PONG\r\n")
        case "CLIENT INFO": .reply(bulk("id=7 addr=127.0.0.1:40000 laddr=127.0.0.1:6379 fd=8 name="))
        case "INFO": .reply(bulk("# Server\r\nredis_version:7.0.15\r\nrun_id:\(runID)\r\nuptime_in_seconds:100\r\n"))
        case "SUBSCRIBE": .reply("*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
        default: .reply("+OK\r\n")
        }
    }

    private static func bulk(_ text: String) -> String { "$\(text.utf8.count)\r\n\(text)\r\n" }

    func stop() { server.stop() }
}

/// The whole RESP commands (arrays of bulk strings) at the start of `bytes`, and how many bytes
/// they take; bytes that are not a command's are all taken, as nothing.
private func parseCommands(_ bytes: [UInt8]) -> (commands: [[String]], consumed: Int) {
    var commands: [[String]] = []
    var index = 0
    /// The number after `marker` up to CRLF at `index`, moving past it; nil when cut short.
    func number(after marker: UInt8) -> Int?? {
        guard index < bytes.count else { return .some(nil) }
        guard bytes[index] == marker else { return nil }
        guard let end = bytes[index...].firstIndex(of: 13), end + 1 < bytes.count else { return .some(nil) }
        let value = Int(String(decoding: bytes[(index + 1)..<end], as: UTF8.self))
        index = end + 2
        return value.map { .some($0) } ?? nil
    }
    while index < bytes.count {
        let start = index
        guard let countOrCut = number(after: UInt8(ascii: "*")) else { return (commands, bytes.count) }
        guard let count = countOrCut else { return (commands, start) }
        var words: [String] = []
        for _ in 0..<count {
            guard let lengthOrCut = number(after: UInt8(ascii: "$")) else { return (commands, bytes.count) }
            guard let length = lengthOrCut, index + length + 2 <= bytes.count else { return (commands, start) }
            words.append(String(decoding: bytes[index..<(index + length)], as: UTF8.self))
            index += length + 2
        }
        commands.append(words)
    }
    return (commands, index)
}

/// The run_id the scripted servers tell.
private let serverRunID = "0123456789abcdef0123456789abcdef01234567"

/// Which lane a test drives: a connection (each use: a `PING`) or a subscriber (its use: a
/// subscription to `ch`, confirmed).
enum Lane: Sendable, CustomStringConvertible {
    case connection, subscriber
    var description: String { self == .connection ? "connection" : "subscriber" }
}

/// A connection or a subscriber to one server, vetted by a vet that records each run_id it is
/// shown and lets every socket through.
private final class VettedLane: Sendable {
    let lane: Lane
    let connection: RedisConnection?
    let subscriber: RedisSubscriber?
    private let record = Record()

    /// What the vet was shown, and the confirmed subscriptions.
    private final class Record: Sendable {
        let shown = Mutex<[String?]>([])
        let confirmations = Mutex(0)
    }

    init(_ lane: Lane, to endpoint: RedisEndpoint, connectTimeout: Duration = .seconds(2)) {
        self.lane = lane
        let configuration = RedisConnectionConfiguration(endpoint: endpoint, connectTimeout: connectTimeout, commandTimeout: .seconds(2))
        let record = record
        let vet: ConnectVet = { _, runID in
            record.shown.withLock { $0.append(runID) }
            return .success {}
        }
        switch lane {
        case .connection:
            connection = RedisConnection(configuration: configuration, eventLoop: .shared, vet: vet)
            subscriber = nil
        case .subscriber:
            connection = nil
            subscriber = RedisSubscriber(
                configuration: configuration, vet: vet, onSubscribed: { _ in record.confirmations.withLock { $0 += 1 } }, onMessage: { _, _ in }
            )
        }
    }

    /// The run_ids the vet was shown, in order (nil: a socket without one).
    var vetted: [String?] { record.shown.withLock { $0 } }
    /// How many subscriptions the server confirmed.
    var confirmed: Int { record.confirmations.withLock { $0 } }

    /// A connection's `PING`, answered; a subscriber's subscription to `ch` (made once),
    /// confirmed within 5 s.
    func use() async throws {
        if let connection {
            #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
        } else if let subscriber {
            if confirmed == 0 { subscriber.subscribe("ch") }
            #expect(await eventually { confirmed > 0 }, "not subscribed")
        }
    }

    func shutdown() async {
        await connection?.shutdown()
        await subscriber?.shutdown()
    }
}

@Suite("Which server a vetted socket reached")
struct ServerIdentificationTests {

    @Test(
        "a vetted connect closed once on CLIENT INFO or on INFO, after answering the command before it, asks INFO again on the next connect and is vetted by the server's run_id when the close does not repeat (before: the next connect went without INFO, so a passing fault let one server under two addresses vote twice)",
        arguments: [(Lane.connection, "CLIENT INFO"), (.connection, "INFO"), (.subscriber, "INFO")]
    )
    func oneCloseIsNoProof(lane: Lane, closedOn: String) async throws {
        let server = try ScriptedServer.start { connection, name in
            connection == 0 && name == closedOn ? .close : ScriptedServer.redis(name)
        }
        defer { server.stop() }
        let vetted = VettedLane(lane, to: server.endpoint)
        try await vetted.use()
        #expect(vetted.vetted == [serverRunID])
        #expect(server.acceptedCount == 2)
        let commands = server.commands
        #expect(commands.count == 2 && commands[0].first == "PING" && commands[0].contains(closedOn) && commands[1].contains("INFO"), "\(commands)")
        await vetted.shutdown()
    }

    @Test(
        "a close before any reply (a proxy without its backend, a hang-up) is the connection's: the connect fails (transient) and makes no connect without the order barrier or INFO; a later one asks both and is vetted by the run_id (before: the close was taken for one on CLIENT INFO, and the connect that followed had neither)",
        arguments: [Lane.connection, .subscriber]
    )
    func closeBeforeAnyReply(lane: Lane) async throws {
        let server = try ScriptedServer.start { connection, name in
            connection == 0 ? .close : ScriptedServer.redis(name)
        }
        defer { server.stop() }
        // The look for TLS a silent close starts (a TLS hello on another connection) gets no
        // answer, within the connect timeout.
        let vetted = VettedLane(lane, to: server.endpoint, connectTimeout: .milliseconds(300))
        if let connection = vetted.connection {
            let error = await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("PING")) }
            #expect(error?.code == .connectionClosed && error?.isPermanent == false, "\(String(describing: error))")
        }
        try await vetted.use()
        // (The look for TLS's plain PING, at half the TLS handshake's time, is never handed over.)
        #expect(vetted.vetted == [serverRunID], "\(server.commands)")
        await vetted.shutdown()
    }

    @Test(
        "a server (or proxy) that closes on INFO every time, after answering the command before it, is connected to a third time without INFO: a connection keeps the order barrier, and the socket is vetted without a run_id (by its address)",
        arguments: [Lane.connection, .subscriber]
    )
    func closesOnInfoEveryTime(lane: Lane) async throws {
        let server = try ScriptedServer.start { _, name in
            name == "INFO" ? .close : ScriptedServer.redis(name)
        }
        defer { server.stop() }
        let vetted = VettedLane(lane, to: server.endpoint)
        try await vetted.use()
        #expect(vetted.vetted == [nil])
        #expect(server.acceptedCount == 3)
        #expect(server.commands.map { $0.contains("INFO") } == [true, true, false], "\(server.commands)")
        if lane == .connection {
            #expect(server.commands.allSatisfy { $0.contains("CLIENT INFO") }, "the order barrier is kept: \(server.commands)")
            #expect(vetted.connection?.orderBarrierRefusal == nil)
        }
        await vetted.shutdown()
    }

    @Test("a proxy that closes on CLIENT and on INFO (as twemproxy does on commands it does not pass): the second connect goes without the order barrier still asking INFO, the third without either; the connection works and says why it has no barrier")
    func closesOnClientAndInfo() async throws {
        let server = try ScriptedServer.start { _, name in
            name == "INFO" || name.hasPrefix("CLIENT") ? .close : ScriptedServer.redis(name)
        }
        defer { server.stop() }
        let vetted = VettedLane(.connection, to: server.endpoint)
        try await vetted.use()
        #expect(vetted.vetted == [nil])
        #expect(server.commands == [["PING", "CLIENT INFO", "INFO"], ["PING", "INFO"], ["PING", "PING"]], "\(server.commands)")
        let refusal = vetted.connection?.orderBarrierRefusal
        #expect(refusal?.hasPrefix("CLIENT INFO: connectionClosed") == true, "\(refusal ?? "nil")")
        await vetted.shutdown()
    }

    @Test(
        "once a socket told the server's run_id, a close on INFO fails each later connect (transient, saying why) with no connect without INFO; once INFO is answered again, the next connect is vetted by the run_id",
        arguments: [Lane.connection, .subscriber]
    )
    func runIDOnceToldIsRequired(lane: Lane) async throws {
        // Connection 0 answers the handshake, the first PING or SUBSCRIBE, then closes on the
        // next command (a GET; a second SUBSCRIBE). Later ones close on INFO while `closing`.
        let closing = Mutex(true)
        let used = Mutex(false)
        let server = try ScriptedServer.start { connection, name in
            if connection == 0, name == "GET" || (name == "SUBSCRIBE" && used.withLock({ seen in defer { seen = true }; return seen })) {
                return .close
            }
            return connection > 0 && name == "INFO" && closing.withLock({ $0 }) ? .close : ScriptedServer.redis(name)
        }
        defer { server.stop() }
        let vetted = VettedLane(lane, to: server.endpoint)
        try await vetted.use()
        #expect(vetted.vetted == [serverRunID])
        if let connection = vetted.connection {
            await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("GET", "k")) }
            let error = await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("PING")) }
            #expect(error?.code == .connectionClosed && error?.isPermanent == false, "\(String(describing: error))")
            #expect(error?.message.contains("told its run_id before") == true, "\(String(describing: error))")
            #expect(server.acceptedCount == 2, "a connect without INFO followed: \(server.commands)")
        } else if let subscriber = vetted.subscriber {
            subscriber.subscribe("other")
            // Three reconnects (50, 100, 200 ms apart), each closed on INFO.
            #expect(await eventually { server.acceptedCount >= 4 })
        }
        #expect(vetted.vetted == [serverRunID], "a socket went without INFO")
        for sent in server.commands.dropFirst() where !sent.isEmpty {
            #expect(sent.contains("INFO"), "\(server.commands)")
        }
        closing.withLock { $0 = false }
        if lane == .connection {
            try await vetted.use()
        } else {
            let before = vetted.confirmed
            #expect(await eventually { vetted.confirmed > before }, "not subscribed again")
        }
        #expect(vetted.vetted == [serverRunID, serverRunID])
        await vetted.shutdown()
    }
}
