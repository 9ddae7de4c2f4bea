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

    /// For a connection: `PING`s every 100 ms (as `lock()` tries again) until one is answered,
    /// within 5 s; the failures before it (each transient). For a subscriber (which tries
    /// again by itself): its subscription to `ch` (made once), confirmed within 5 s; none.
    @discardableResult
    func use() async throws -> [RedisError] {
        guard let connection else {
            if confirmed == 0 { subscriber?.subscribe("ch") }
            #expect(await eventually { confirmed > 0 }, "not subscribed")
            return []
        }
        var errors: [RedisError] = []
        let giveUp = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < giveUp {
            do {
                #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
                return errors
            } catch let error as RedisError {
                #expect(!error.isPermanent, "\(error)")
                errors.append(error)
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        Issue.record("no PING answered within 5 s: \(errors)")
        return errors
    }

    func shutdown() async {
        await connection?.shutdown()
        await subscriber?.shutdown()
    }
}

@Suite("Which server a vetted socket reached")
struct ServerIdentificationTests {

    @Test(
        "a vetted connect closed once on CLIENT INFO, after answering the command before it, connects once more without the order barrier still asking INFO; one closed on INFO fails (transient) and the next connect asks again: either way the socket is vetted by the server's run_id when the close does not repeat (before: the next connect went without INFO, so a passing fault let one server under two addresses vote twice)",
        arguments: [(Lane.connection, "CLIENT INFO"), (.connection, "INFO"), (.subscriber, "INFO")]
    )
    func oneCloseIsNoProof(lane: Lane, closedOn: String) async throws {
        let server = try ScriptedServer.start { connection, name in
            connection == 0 && name == closedOn ? .close : ScriptedServer.redis(name)
        }
        defer { server.stop() }
        let vetted = VettedLane(lane, to: server.endpoint)
        let errors = try await vetted.use()
        if lane == .connection {
            #expect(errors.count == (closedOn == "INFO" ? 1 : 0), "\(errors)")
        }
        if lane == .connection, closedOn == "INFO" {
            #expect(errors.first?.code == .connectionClosed && errors.first?.message.hasPrefix("INFO after connecting") == true, "\(errors)")
        }
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
        let errors = try await vetted.use()
        if lane == .connection {
            #expect(errors.count == 1 && errors.first?.code == .connectionClosed, "\(errors)")
        }
        // (The look for TLS's plain PING, at half the TLS handshake's time, is never handed over.)
        #expect(vetted.vetted == [serverRunID], "\(server.commands)")
        await vetted.shutdown()
    }

    @Test(
        "a server (or proxy) that closes on INFO every time, after answering the command before it: connects fail (transient), each asking INFO, until two have and a second has passed since the first; then one more connection goes without INFO: a connection keeps the order barrier, and the socket is vetted without a run_id (by its address)",
        arguments: [Lane.connection, .subscriber]
    )
    func closesOnInfoEveryTime(lane: Lane) async throws {
        let server = try ScriptedServer.start { _, name in
            name == "INFO" ? .close : ScriptedServer.redis(name)
        }
        defer { server.stop() }
        let vetted = VettedLane(lane, to: server.endpoint)
        let started = ContinuousClock.now
        let errors = try await vetted.use()
        #expect(started.duration(to: .now) >= .seconds(1), "went without INFO within a second of the first close")
        if lane == .connection {
            #expect(errors.count >= 2 && errors.allSatisfy { $0.message.hasPrefix("INFO after connecting") }, "\(errors)")
        }
        #expect(vetted.vetted == [nil])
        let asked = server.commands.map { $0.contains("INFO") }
        #expect(asked.count >= 4 && asked.dropLast().allSatisfy { $0 } && asked.last == false, "\(server.commands)")
        if lane == .connection {
            #expect(server.commands.allSatisfy { $0.contains("CLIENT INFO") }, "the order barrier is kept: \(server.commands)")
            #expect(vetted.connection?.orderBarrierRefusal == nil)
            #expect(vetted.connection?.orderBarrierClients.open == 7)
        }
        await vetted.shutdown()
    }

    @Test("a proxy that closes on CLIENT and on INFO (as twemproxy does on commands it does not pass): each connect goes once more without the order barrier still asking INFO; those fail so until two have and a second has passed, then one more goes on without either: the connection works and says why it has no barrier")
    func closesOnClientAndInfo() async throws {
        let server = try ScriptedServer.start { _, name in
            name == "INFO" || name.hasPrefix("CLIENT") ? .close : ScriptedServer.redis(name)
        }
        defer { server.stop() }
        let vetted = VettedLane(.connection, to: server.endpoint)
        let errors = try await vetted.use()
        #expect(errors.count >= 2)
        #expect(vetted.vetted == [nil])
        let failed = [["PING", "CLIENT INFO", "INFO"], ["PING", "INFO"]]
        let expected = Array(repeating: failed, count: errors.count + 1).flatMap { $0 } + [["PING", "PING"]]
        #expect(server.commands == expected, "\(server.commands)")
        let refusal = vetted.connection?.orderBarrierRefusal
        #expect(refusal?.hasPrefix("CLIENT INFO: connectionClosed") == true, "\(refusal ?? "nil")")
        await vetted.shutdown()
    }

    @Test("a refused PING (an ACL without +ping) on the connect without the order barrier does not stop it from asking INFO: the socket is vetted by the run_id (before: any error reply in the first round trip skipped the second, INFO's)")
    func refusedPingStillAsksInfo() async throws {
        let server = try ScriptedServer.start { connection, name in
            switch name {
            case "PING": .reply("-NOPERM User default has no permissions to run the 'ping' command\r\n")
            case "CLIENT INFO" where connection == 0: .close
            default: ScriptedServer.redis(name)
            }
        }
        defer { server.stop() }
        let vetted = VettedLane(.connection, to: server.endpoint)
        let connection = try #require(vetted.connection)
        #expect(try await connection.send(RedisCommand("GET", "k")) == .simpleString("OK"))
        #expect(vetted.vetted == [serverRunID], "\(server.commands)")
        #expect(server.commands.count == 2 && server.commands[1].contains("INFO"), "\(server.commands)")
        await vetted.shutdown()
    }

    @Test("a connect that closes on CLIENT INFO after the owed CLIENT KILL was answered fails (transient) and makes no connect without the order barrier: that node answered CLIENT INFO before; the next connect asks again")
    func closeOnClientInfoWithAKillOwed() async throws {
        // Connection 0 answers the handshake, then nothing (a command timeout: a kill is owed);
        // connection 1 answers the kill and closes on CLIENT INFO; later ones answer all.
        let server = try ScriptedServer.start { connection, name in
            switch (connection, name) {
            case (0, "GET"): .reply("")
            case (1, "CLIENT INFO"): .close
            case (_, "CLIENT KILL"): .reply(":1\r\n")
            default: ScriptedServer.redis(name)
            }
        }
        defer { server.stop() }
        let connection = RedisConnection(configuration: RedisConnectionConfiguration(
            endpoint: server.endpoint, connectTimeout: .seconds(2), commandTimeout: .milliseconds(300)
        ))
        await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("GET", "k")) }
        #expect(connection.orderBarrierClients.pendingKill != nil)
        let error = await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("PING")) }
        #expect(error?.code == .connectionClosed && error?.message.hasPrefix("CLIENT INFO after connecting") == true, "\(String(describing: error))")
        #expect(server.acceptedCount == 2, "\(server.commands)")
        #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
        #expect(server.commands.last?.contains("CLIENT KILL") == true, "the kill is still owed: \(server.commands)")
        #expect(connection.orderBarrierRefusal == nil)
        await connection.shutdown()
    }

    @Test("a connection whose connect once got the run_id never goes without INFO: closes on it fail every later connect (transient, saying the server told its run_id before), however many and for however long")
    func toldOnceAlwaysAsks() async throws {
        // Connection 0 answers everything but GET (it closes); later ones close on INFO.
        let server = try ScriptedServer.start { connection, name in
            (connection == 0 && name == "GET") || (connection > 0 && name == "INFO") ? .close : ScriptedServer.redis(name)
        }
        defer { server.stop() }
        let vetted = VettedLane(.connection, to: server.endpoint)
        let connection = try #require(vetted.connection)
        #expect(try await vetted.use().isEmpty)
        await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("GET", "k")) }
        let started = ContinuousClock.now
        var failures = 0
        while started.duration(to: .now) < .milliseconds(1_500) {
            let error = await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("PING")) }
            #expect(error?.message.contains("told its run_id before") == true, "\(String(describing: error))")
            failures += 1
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(failures >= 5)
        #expect(vetted.vetted == [serverRunID])
        #expect(server.commands.dropFirst().allSatisfy { $0.contains("INFO") }, "a connect went without INFO: \(server.commands)")
        await vetted.shutdown()
    }
}
