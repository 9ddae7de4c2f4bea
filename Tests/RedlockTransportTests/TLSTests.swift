import Foundation
import RedlockTestSupport
@testable import RedlockTransport
import Synchronization
import Testing

/// Runs `body` with certificates generated for this test and removes them afterwards.
private func withCertificates(_ body: (TLSCertificates) async throws -> Void) async throws {
    let certificates = try await TLSCertificates.generate()
    defer { certificates.remove() }
    try await body(certificates)
}

/// Starts one TLS-only server, runs `body`, stops the server.
private func withTLSServer(
    _ certificates: TLSCertificates,
    certificate: TLSCertificates.Files? = nil,
    clients: RedisServer.TLS.ClientAuthentication = .none,
    arguments: [String] = [],
    _ body: (RedisServer) async throws -> Void
) async throws {
    let server = try await RedisServer.start(
        tls: .init(certificates: certificates, serverCertificate: certificate, clientAuthentication: clients), arguments: arguments
    )
    try await withTeardown {
        try await body(server)
    } teardown: {
        await server.terminate()
    }
}

/// A TLS configuration for `server` that trusts the test CA (or `ca`).
private func configuration(
    _ server: RedisServer, _ certificates: TLSCertificates, ca: String? = nil, host: String = "127.0.0.1",
    change: (inout RedisTLSConfiguration) -> Void = { _ in }
) -> RedisConnectionConfiguration {
    var tls = RedisTLSConfiguration(trustedCertificatesFile: ca ?? certificates.ca.certificate)
    change(&tls)
    return RedisConnectionConfiguration(
        endpoint: .hostname(host, port: server.port), connectTimeout: .seconds(2), commandTimeout: .seconds(2), tls: tls
    )
}

/// Sends PING on a fresh connection and returns the error it fails with, if any.
private func pingError(_ configuration: RedisConnectionConfiguration) async -> RedisError? {
    let connection = RedisConnection(configuration: configuration)
    defer { Task { await connection.shutdown() } }
    do {
        #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
        return nil
    } catch let error as RedisError {
        return error
    } catch {
        Issue.record("not a RedisError: \(error)")
        return nil
    }
}

/// How many descriptors the process has open.
private func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// `redis-server` arguments that let it speak only TLS 1.2, or only TLS 1.3.
private func onlyTLS(_ tls12: Bool) -> [String] {
    ["--tls-protocols", tls12 ? "TLSv1.2" : "TLSv1.3"]
}

/// `POLLRDHUP` (Linux, `_GNU_SOURCE`, which Swift's Glibc module leaves out): the peer closed
/// its side of the connection.
private let pollReadHangUp: Int16 = 0x2000

/// The events of `descriptor` once one of `events` (or a hang-up or error) came, or when
/// `limit` passed (0).
private func poll(_ descriptor: Int32, for events: Int16, within limit: Duration) -> Int16 {
    var watched = pollfd(fd: descriptor, events: events, revents: 0)
    let deadline = ContinuousClock.now + limit
    while true {
        let left = ContinuousClock.now.duration(to: deadline)
        guard left > .zero else { return 0 }
        let ready = Glibc.poll(&watched, 1, Int32(clamping: max(1, left.wholeNanoseconds / 1_000_000)))
        if ready > 0 { return watched.revents }
        if ready < 0, errno != EINTR { return 0 }
    }
}

/// `size` bytes of lowercase letters, different for each `seed`.
private func letters(_ size: Int, seed: Int) -> [UInt8] {
    (0..<size).map { UInt8(97 + ($0 &+ seed) % 26) }
}

@Suite("TLS to real nodes")
struct TLSTests {
    @Test("rediss:// with the test CA: commands, pipelining, scripts and a reconnect all work over TLS")
    func plainTLS() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates) { server in
                var parsed = try RedisConnectionConfiguration(parsing: "rediss://127.0.0.1:\(server.port)")
                parsed.tls?.trustedCertificatesFile = certificates.ca.certificate
                let connection = RedisConnection(configuration: parsed)
                #expect(try await connection.send(RedisCommand("SET", "k", "v")) == .simpleString("OK"))
                #expect(try await connection.send(RedisCommand("GET", "k")) == .bulkString(Array("v".utf8)))
                // Many callers at once: replies larger than one TLS record's worth arrive in order.
                let big = String(repeating: "x", count: 100_000)
                #expect(try await connection.send(RedisCommand("SET", "big", big)) == .simpleString("OK"))
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<64 {
                        group.addTask { () async throws -> Void in
                            if index % 8 == 0 {
                                #expect(try await connection.send(RedisCommand("GET", "big")) == .bulkString(Array(big.utf8)))
                            } else {
                                #expect(try await connection.send(RedisCommand("ECHO", "\(index)")) == .bulkString(Array("\(index)".utf8)))
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let script = RedisScriptCall(RedisScript("return ARGV[1]"), keys: [], arguments: ["tls"])
                let answered = OneTimeEvent<Result<RedisValue, RedisError>>()
                connection.send(script.command, script: script.script) { answered.fire($0) }
                #expect(try await answered.wait().get() == .bulkString(Array("tls".utf8)))
                let admin = RedisConnection(configuration: parsed)
                #expect(try await admin.send(RedisCommand("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")) == .integer(1))
                await admin.shutdown()
                // The server dropped the first connection: its next call reconnects (a new
                // handshake) and works. Idle past `peekAfterIdle`, the call looks for the close
                // before it writes even when the loop has not handled the close yet (a call
                // sent within moments of a close the loop has not seen may fail as closed).
                try await Task.sleep(for: RedisConnection.peekAfterIdle)
                #expect(try await connection.send(RedisCommand("GET", "k")) == .bulkString(Array("v".utf8)))
                #expect(connection.connectionGeneration >= 2)
                await connection.shutdown()
            }
        }
    }

    @Test("over TLS, a socket's peer carries the server name the handshake sent: one address reached under two names counts as two (a gateway may route each name to another server); an IP address sends none, so 127.0.0.1 and ::ffff:127.0.0.1 are one; a fully qualified name is sent without its root dot")
    func peerCarriesServerName() async throws {
        try await withCertificates { certificates throws in
            try await withTLSServer(certificates) { server throws in
                var peers: [String?] = []
                let tried = [("127.0.0.1", nil), ("127.0.0.1", "gateway-routed.example"), ("127.0.0.1", "gateway-routed.example."), ("::ffff:127.0.0.1", nil)]
                for (host, name) in tried {
                    let seen = OneTimeEvent<String>()
                    let settings = configuration(server, certificates, host: host) { tls in
                        if let name { tls.serverName = name }
                        if name != nil || host.contains(":") { tls.verifiesHostname = false }
                    }
                    let connection = RedisConnection(configuration: settings, eventLoop: .shared) { peer, _ in
                        seen.fire(peer ?? "none")
                        return .success {}
                    }
                    let answered = (try? await connection.send(RedisCommand("PING"))) == .simpleString("PONG")
                    // The IPv4-mapped address needs IPv6 sockets, which a system may lack.
                    #expect(answered || host.contains(":"), "PING over TLS to \(host)")
                    if answered { peers.append(await seen.wait()) }
                    await connection.shutdown()
                }
                let address = "127.0.0.1:\(server.port)"
                let routed = address + " sni=gateway-routed.example"
                #expect(Array(peers.prefix(3)) == [address, routed, routed])
                #expect(peers.dropFirst(3).allSatisfy { $0 == address }, "\(peers)")
            }
        }
    }

    @Test("over TLS too, behind a frozen node whose socket is full, senders stage their commands without writing; the loop writes them all, in order (the same record retried), once the node reads again")
    func fullSocketIsLeftToTheLoop() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates) { server in
                var slow = configuration(server, certificates)
                slow.commandTimeout = .seconds(30)
                try await checkFullSocketIsLeftToTheLoop(server, slow)
            }
        }
    }

    @Test("a TLS node killed under a stream of writes gives typed errors (no SIGPIPE ends the process); after its restart the connection works again")
    func killedUnderWrites() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates) { server in
                let connection = RedisConnection(configuration: configuration(server, certificates))
                #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
                let payload = String(repeating: "p", count: 32_768)
                let writers = Task {
                    var failures: [RedisError.Code] = []
                    for round in 0..<400 {
                        do {
                            _ = try await connection.send(RedisCommand("SET", "w\(round % 8)", payload))
                        } catch let error as RedisError {
                            failures.append(error.code)
                        }
                    }
                    return failures
                }
                await server.kill()
                let failures = try await writers.value
                #expect(!failures.isEmpty, "the node died while commands were being written")
                // Transient causes only: a server that died is no reason to give up on the node.
                let typed: Set<RedisError.Code> = [.connectionClosed, .connectionRefused, .io]
                #expect(failures.allSatisfy(typed.contains), "\(Set(failures))")
                try await server.restart(keepingData: false)
                #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
                await connection.shutdown()
            }
        }
    }

    @Test("a TLS write to a socket that can no longer send fails with a typed error, and raises no SIGPIPE (which would end the process); the next command reconnects")
    func writeAfterTheSocketClosedForSending() async throws {
        try await withCertificates { certificates throws in
            try await withTLSServer(certificates) { server throws in
                try await expectWriteFailsAfterSendingShutDown(on: server, configuration(server, certificates))
            }
        }
    }

    @Test("a TLS node killed while a command waits fails it as closed (transient, as with TCP), not as a permanent TLS failure")
    func killedWhileWaiting() async throws {
        try await withCertificates { certificates throws in
            try await withTLSServer(certificates) { server throws in
                let connection = RedisConnection(configuration: configuration(server, certificates))
                #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
                let waiting = Task { try await connection.send(RedisCommand("BLPOP", "never", "0")) }
                #expect(await becomesTrue(within: .seconds(5)) { await server.blockedClients() == 1 })
                await server.kill()
                let error = await #expect(throws: RedisError.self) { try await waiting.value }
                #expect(error?.code == .connectionClosed, "\(String(describing: error))")
                #expect(error?.isPermanent == false)
                await connection.shutdown()
            }
        }
    }

    @Test("mutual TLS: without a client certificate the node refuses; with one it answers")
    func mutualTLS() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates, clients: .required) { server in
                let refused = await pingError(configuration(server, certificates))
                #expect(refused?.code == .tlsFailed && refused?.isPermanent == true, "\(String(describing: refused))")
                #expect(refused?.endpoint == .hostname("127.0.0.1", port: server.port))
                let accepted = await pingError(configuration(server, certificates) {
                    $0.certificateFile = certificates.client.certificate
                    $0.privateKeyFile = certificates.client.key
                })
                #expect(accepted == nil)
            }
        }
    }

    @Test("a certificate from an unknown CA, an expired one, one for another host, one naming it only in its common name or with a partial wildcard, and DNS names for IPv4 addresses are rejected, naming node and reason; a server name that cannot serve is refused before connecting; hosts the resolver reads as IPv4 addresses are verified as those addresses")
    func rejectedCertificates() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates) { server in
                let wrongCA = await pingError(configuration(server, certificates, ca: certificates.otherCA.certificate))
                #expect(wrongCA?.code == .certificateRejected, "\(String(describing: wrongCA))")
                #expect(wrongCA?.message.contains("certificate rejected: ") == true, "\(String(describing: wrongCA))")
                #expect(wrongCA?.isPermanent == true)
                #expect(wrongCA?.description.contains("127.0.0.1:\(server.port)") == true)
                // localhost is in the certificate, as are 127.0.0.1 and ::1.
                #expect(await pingError(configuration(server, certificates, host: "localhost")) == nil)
            }
            try await withTLSServer(certificates, certificate: certificates.expiredServer) { server in
                let expired = await pingError(configuration(server, certificates))
                #expect(expired?.code == .certificateRejected)
                #expect(expired?.message.contains("expired") == true, "\(String(describing: expired))")
            }
            try await withTLSServer(certificates, certificate: certificates.wrongHostServer) { server in
                let wrongHost = await pingError(configuration(server, certificates))
                #expect(wrongHost?.code == .certificateRejected)
                #expect(wrongHost?.message.contains("mismatch") == true, "\(String(describing: wrongHost))")
                #expect(wrongHost?.message.contains("names no DNS name") == false, "\(String(describing: wrongHost))")
                // The name the certificate was issued for, as SNI and for verification, is accepted.
                #expect(await pingError(configuration(server, certificates) { $0.serverName = "wrong.example" }) == nil)
                // Hostname verification off: the chain alone decides.
                #expect(await pingError(configuration(server, certificates) { $0.verifiesHostname = false }) == nil)
                // A server name that cannot serve is refused before any connect: an empty one
                // would send none and require none (this certificate, for another host, was
                // accepted so), one with a NUL byte would be cut at it (and the cut name
                // verified), one starting with a dot is any name under that domain to OpenSSL
                // (accepted), the others fail each handshake.
                let unusable: [(String, String)] = [
                    ("", "is empty"), ("wrong.example\0.evil", "NUL byte"), (".example", "starts with a dot"),
                    ("wrong.example\n", "white space"), (String(repeating: "a.", count: 126) + "aa", "254 bytes long"),
                    ("*.example", "wildcard"), ("wrong..example", "empty label"), ("wrong.example..", "empty label"),
                    ("127.0.0.1.", "an address with a dot after it"),
                    ("wrong.exämple", "not ASCII"), (String(repeating: "w", count: 64) + ".example", "label of 64 bytes"),
                    ("wrong.ex@mple", "holds \"@\""),
                ]
                for (name, reason) in unusable {
                    let refused = await pingError(configuration(server, certificates) { $0.serverName = name })
                    #expect(refused?.code == .tlsFailed && refused?.isPermanent == true, "\(String(reflecting: name)): \(String(describing: refused))")
                    #expect(refused?.message.contains(reason) == true, "\(String(reflecting: name)): \(String(describing: refused))")
                    var tls = RedisTLSConfiguration(serverName: name)
                    #expect(throws: RedisError.self) { try tls.loadFiles(for: server.endpoint) }
                    tls.serverName = nil
                    #expect(throws: Never.self) { try tls.loadFiles(for: server.endpoint) }
                }
                // A fully qualified name: its root dot is neither sent nor required (OpenSSL
                // matched `wrong.example.` against nothing, and the name was refused here).
                #expect(await pingError(configuration(server, certificates) { $0.serverName = "wrong.example." }) == nil)
                // 253 bytes are a name (the certificate's verdict), with a root dot too, as are
                // IP addresses.
                for name in [String(repeating: "a.", count: 126) + "a", String(repeating: "a.", count: 127)] {
                    let longest = await pingError(configuration(server, certificates) { $0.serverName = name })
                    #expect(longest?.code == .certificateRejected, "\(name.utf8.count) bytes: \(String(describing: longest))")
                }
                let address = await pingError(configuration(server, certificates) { $0.serverName = "::1" })
                #expect(address?.code == .certificateRejected && address?.message.contains("IP address mismatch") == true, "\(String(describing: address))")
            }
            // Names only in the common name are not read; a partial wildcard matches nothing; a
            // host the resolver reads as an IPv4 address is verified as that address, not as
            // the text it was written as. Each of these was accepted before.
            try await withTLSServer(certificates, certificate: certificates.commonNameOnlyServer) { server in
                let commonName = await pingError(configuration(server, certificates, host: "localhost"))
                #expect(commonName?.code == .certificateRejected && commonName?.message.contains("mismatch") == true, "\(String(describing: commonName))")
                // Told why: such certificates worked with clients that read the common name.
                #expect(commonName?.message.contains("names no DNS name in its subject alternative names") == true, "\(String(describing: commonName))")
            }
            try await withTLSServer(certificates, certificate: certificates.lookalikeServer) { server in
                let partial = await pingError(configuration(server, certificates) { $0.serverName = "wrong.example.com" })
                #expect(partial?.code == .certificateRejected && partial?.message.contains("mismatch") == true, "\(String(describing: partial))")
                // Octal with leading zeros, however many (OpenSSL reads the text as decimal:
                // 177.0.0.1; from 46 bytes on it was checked as a DNS name and accepted).
                let padded = String(repeating: "0", count: 37) + "177.0.0.1"
                for host in ["127.1", "2130706433", "0177.0.0.1", padded] {
                    let numeric = await pingError(configuration(server, certificates, host: host))
                    #expect(numeric?.code == .certificateRejected && numeric?.message.contains("IP address mismatch") == true, "\(host): \(String(describing: numeric))")
                }
                #expect(await pingError(configuration(server, certificates) { $0.verifiesHostname = false }) == nil)
            }
            // The same forms against the certificate for 127.0.0.1 (refused before as a host name
            // mismatch).
            try await withTLSServer(certificates) { server in
                for host in ["127.1", "0x7f.0.0.1", "2130706433", "0177.0.0.1", String(repeating: "0", count: 60) + "177.0.0.1"] {
                    #expect(await pingError(configuration(server, certificates, host: host)) == nil, "\(host)")
                }
                // An IPv6 address with a zone is verified as the address (IP:::1 here; it was
                // checked as a DNS name and refused, and a name of that text accepted).
                #expect(await pingError(configuration(server, certificates) { $0.serverName = "::1%1" }) == nil)
                #expect(await pingError(configuration(server, certificates) { $0.serverName = "0:0:0:0:0:0:0:1" }) == nil)
                // An IPv4-mapped IPv6 address reaches the IPv4 address, and is verified as it (16
                // bytes never matched the certificate's 4).
                #expect(await pingError(configuration(server, certificates) { $0.serverName = "::ffff:127.0.0.1" }) == nil)
            }
        }
    }

    @Test("a TLS port spoken to in plain RESP fails at once as a permanent TLS failure that names the scheme to use, and so does one that wants a client certificate (it answers the second connection's TLS with an alert: in the handshake with TLS 1.2, after it with TLS 1.3); a plain port spoken to in TLS times out (transient) with a message that names the scheme")
    func mismatchedPorts() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates) { server in
                for attempt in 0..<3 {
                    let started = ContinuousClock.now
                    let plain = await pingError(RedisConnectionConfiguration(endpoint: server.endpoint, commandTimeout: .seconds(1)))
                    #expect(plain?.code == .tlsFailed && plain?.isPermanent == true, "\(attempt): \(String(describing: plain))")
                    #expect(plain?.message.contains("use rediss://") == true, "\(attempt): \(String(describing: plain))")
                    #expect(started.duration(to: .now) < .milliseconds(900), "\(attempt): waited for a timeout")
                }
            }
            // Client certificates required (Redis's default): TLS 1.2 alerts in the handshake,
            // TLS 1.3 after it, read on the first read or, when the server's close came first
            // (more often on a loaded machine), after the write it reset: five tries each.
            for tls12 in [true, false] {
                try await withTLSServer(certificates, clients: .required, arguments: onlyTLS(tls12)) { server in
                    for attempt in 0..<5 {
                        let plain = await pingError(RedisConnectionConfiguration(endpoint: server.endpoint, commandTimeout: .seconds(1)))
                        #expect(
                            plain?.code == .tlsFailed && plain?.message.contains("use rediss://") == true,
                            "TLS 1.\(tls12 ? 2 : 3), \(attempt): \(String(describing: plain))"
                        )
                    }
                }
            }
            try await withRedisServers(1) { servers in
                // redis-server never answers a hello (its line search stops at the hello's NUL
                // bytes): the PING on a second connection tells the timeout what to say.
                for attempt in 0..<3 {
                    var settings = configuration(servers[0], certificates)
                    settings.connectTimeout = .milliseconds(600)
                    let started = ContinuousClock.now
                    let tls = await pingError(settings)
                    let took = started.duration(to: .now)
                    #expect(tls?.code == .timeout && tls?.isPermanent == false, "\(attempt): \(String(describing: tls))")
                    #expect(tls?.message.contains("use redis://") == true, "\(attempt): \(String(describing: tls))")
                    #expect(took >= .milliseconds(550) && took < .milliseconds(1_500), "\(attempt): took \(took)")
                }
            }
        }
    }

    @Test("a TLS write that meets the reset of a server which sent an alert and closed (TLS 1.3, a client certificate required and none sent) fails naming the alert, not the reset, as the permanent TLS failure it is (the server refused this client): the look for a TLS-only port counts on it")
    func alertBeforeResetWrite() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates, clients: .required, arguments: onlyTLS(false)) { server in
                let settings = configuration(server, certificates)
                let tls = try #require(settings.tls)
                // The handshake alone (no command follows it): a TLS 1.3 client finishes before
                // the server checks its certificate.
                let socket = try NodeSocket.connect(settings, tls: try TLSContext(tls, endpoint: settings.endpoint)).outcome.get()
                defer { socket.close() }
                var ping: [UInt8] = []
                RedisCommand("PING").appendWire(to: &ping)
                // The server's alert and close (its FIN) arrive, unread; its reset may follow (when
                // it closed with bytes of the client's unread).
                let events = poll(socket.descriptor, for: pollReadHangUp, within: .seconds(5))
                #expect(events & pollReadHangUp != 0)
                var failure: RedisError?
                if events & Int16(POLLHUP) == 0 {
                    // No reset yet: a write to the closed server makes its kernel send one (unless
                    // one came first: then this write meets it).
                    if case let .failure(error) = socket.write(ping) {
                        failure = error
                    } else {
                        #expect(poll(socket.descriptor, for: 0, within: .seconds(5)) & Int16(POLLHUP) != 0)
                    }
                }
                if failure == nil {
                    // The reset came: this write meets it.
                    guard case let .failure(error) = socket.write(ping) else {
                        Issue.record("a write after the reset succeeded")
                        return
                    }
                    failure = error
                }
                let error = try #require(failure)
                // The server refused this client: permanent, as in a TLS 1.2 handshake.
                #expect(error.code == .tlsFailed && error.isPermanent, "\(error)")
                #expect(error.message.contains(" alert ") && error.message.contains("certificate required"), "\(error)")
            }
        }
    }

    @Test("a fatal alert that ends the handshake is permanent when it refuses this client (handshake failure, bad certificate, unknown CA, unrecognized name) and a transient close otherwise (internal error, decode error: a server or its key backend failing for now); before, every alert in the handshake was permanent", arguments: [
        (UInt8(40), true, "handshake failure"), (UInt8(42), true, "bad certificate"), (UInt8(48), true, "unknown ca"),
        (UInt8(112), true, "unrecognized name"), (UInt8(80), false, "internal error"), (UInt8(50), false, "decode error"),
    ])
    func handshakeAlerts(alert: UInt8, refuses: Bool, name: String) async throws {
        // Answers a ClientHello with a plaintext fatal alert record, then ends the stream; reads
        // anything else (a plain PING looking for a plain port) without answering.
        let server = try GarbageServer.start { peer, _ in
            guard peer.bytes.first == 0x16 else { return true }
            peer.send([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, alert])
            peer.endStream()
            return false
        }
        defer { server.stop() }
        var settings = RedisConnectionConfiguration(endpoint: server.endpoint, connectTimeout: .milliseconds(500), tls: RedisTLSConfiguration())
        settings.tls?.verifiesCertificate = false
        let failure = await pingError(settings)
        #expect(failure?.message.contains(name) == true, "\(String(describing: failure))")
        if refuses {
            #expect(failure?.code == .tlsFailed && failure?.isPermanent == true, "\(String(describing: failure))")
        } else {
            #expect(failure?.code == .connectionClosed && failure?.isPermanent == false, "\(String(describing: failure))")
        }
    }

    @Test("a TLS server at maxclients, which closes new connections before their handshake, fails a connect as closed (transient), not as a TLS failure; once a client leaves, the next command connects")
    func fullTLSServerIsTransient() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates, arguments: ["--maxclients", "1"]) { server in
                let first = RedisConnection(configuration: configuration(server, certificates))
                #expect(try await first.send(RedisCommand("PING")) == .simpleString("PONG"))
                let second = RedisConnection(configuration: configuration(server, certificates))
                let refused = await #expect(throws: RedisError.self) { try await second.send(RedisCommand("PING")) }
                #expect(refused?.code == .connectionClosed && refused?.isPermanent == false, "\(String(describing: refused))")
                await first.shutdown()
                var reply: RedisValue?
                let waited = ContinuousClock.now
                while reply == nil, waited.duration(to: .now) < .seconds(3) {
                    reply = try? await second.send(RedisCommand("PING"))
                    if reply == nil { try await Task.sleep(for: .milliseconds(20)) }
                }
                #expect(reply == .simpleString("PONG"))
                #expect(waited.duration(to: .now) < .milliseconds(900), "the close was held like a TLS failure")
                await second.shutdown()
            }
        }
    }

    @Test("over TLS, a server that answers the hello in RESP fails the connect at once, for good; one that answers nothing but a plain PING on a second connection (sent at half the connect timeout) times out saying so; the second connection is closed either way")
    func plainPortPaths() async throws {
        let erring = try GarbageServer.start(reply: "-ERR unknown command\r\n")
        defer { erring.stop() }
        var settings = RedisConnectionConfiguration(endpoint: erring.endpoint, connectTimeout: .seconds(1), tls: RedisTLSConfiguration())
        var started = ContinuousClock.now
        let answered = await pingError(settings)
        #expect(answered?.code == .tlsFailed, "\(String(describing: answered))")
        #expect(answered?.message.contains("plain RESP (\"-ERR unknown command\")") == true, "\(String(describing: answered))")
        #expect(started.duration(to: .now) < .milliseconds(900))
        #expect(erring.acceptedCount == 1, "no second connection was needed")

        // A hello gets nothing, a PING its answer.
        let ping = Array("*1\r\n$4\r\nPING\r\n".utf8)
        let answersPings: @Sendable (GarbageServer.Peer, Int) -> Bool = { peer, _ in
            if peer.bytes == ping { peer.send("+PONG\r\n") }
            return true
        }
        let pinged = try GarbageServer.start(responding: answersPings)
        defer { pinged.stop() }
        settings.endpoint = pinged.endpoint
        started = ContinuousClock.now
        let probed = await pingError(settings)
        let took = started.duration(to: .now)
        #expect(probed?.code == .timeout, "\(String(describing: probed))")
        #expect(probed?.message.contains("a plain PING on a second connection got \"+PONG\"") == true, "\(String(describing: probed))")
        #expect(took >= .milliseconds(950) && took < .milliseconds(1_800), "took \(took)")
        #expect(pinged.acceptedCount == 2)
        #expect(pinged.reads.count == 2 && pinged.reads[1].first == ping, "\(pinged.reads)")


        // The second connection is closed on every path: five more such connects (with a short
        // connect timeout; a server whose every connection answers PINGs alone) leave no
        // descriptor open once that server has closed its side.
        let before = openDescriptorCount()
        let pingOnly = try GarbageServer.start(responding: answersPings)
        settings = RedisConnectionConfiguration(endpoint: pingOnly.endpoint, connectTimeout: .milliseconds(400), tls: RedisTLSConfiguration())
        for attempt in 0..<5 {
            let again = await pingError(settings)
            #expect(again?.code == .timeout && again?.message.contains("+PONG") == true, "\(attempt): \(String(describing: again))")
        }
        #expect(pingOnly.acceptedCount == 10, "not every connect sent its PING: the test tests nothing")
        pingOnly.stop()
        #expect(await eventually { openDescriptorCount() <= before }, "\(openDescriptorCount()) descriptors open, \(before) before")
    }

    @Test("a plain server that closes a connection before any reply and does not answer a TLS hello either keeps its close transient, and the look for TLS costs at most a second or eight times the connect so far, not the connect timeout")
    func silentCloseOfAPlainServer() async throws {
        // Plain bytes get the end of the stream at once; a TLS hello (a record opens with 0x16)
        // gets nothing.
        let closing = try GarbageServer.start { peer, _ in
            if peer.bytes.first == 0x16 { return true }
            peer.endStream()
            return false
        }
        defer { closing.stop() }
        let settings = RedisConnectionConfiguration(endpoint: closing.endpoint, connectTimeout: .seconds(5), commandTimeout: .seconds(5))
        let started = ContinuousClock.now
        let closed = await pingError(settings)
        let took = started.duration(to: .now)
        #expect(closed?.code == .connectionClosed && closed?.isPermanent == false, "\(String(describing: closed))")
        #expect(took < .milliseconds(2_500), "took \(took)")
        #expect(closing.acceptedCount >= 2, "no TLS hello on a second connection: the test tests nothing")
    }

    @Test("a plain client on a port whose TLS side completes handshakes but answers no PING (a TLS-terminating proxy without its backend) keeps its close transient: the port is not taken for a TLS-only Redis")
    func tlsWithoutRESPIsNotATLSPort() async throws {
        try await withCertificates { certificates in
            let server = try await NonRESPTLSServer.start(certificates)
            try await withTeardown {
                let started = ContinuousClock.now
                let closed = await pingError(RedisConnectionConfiguration(endpoint: server.endpoint, connectTimeout: .seconds(3), commandTimeout: .seconds(3)))
                let took = started.duration(to: .now)
                #expect(closed?.code == .connectionClosed && closed?.isPermanent == false, "\(String(describing: closed))")
                // The PING over TLS waits for a second at most, not for the connect timeout.
                #expect(took < .milliseconds(2_500), "took \(took)")
                // The TLS side does complete a handshake (the premise).
                var tls = RedisConnectionConfiguration(endpoint: server.endpoint, connectTimeout: .seconds(2), commandTimeout: .milliseconds(300), tls: RedisTLSConfiguration())
                tls.tls?.verifiesCertificate = false
                let silent = await pingError(tls)
                #expect(silent?.code == .timeout, "\(String(describing: silent))")
            } teardown: {
                await server.stop()
            }
        }
    }

    @Test("a TLS server slower than half the connect timeout still connects: the plain PING on a second connection gets no RESP answer from a TLS port, the handshake goes on, and the second connection is closed")
    func slowTLSServerConnects() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates) { server in
                // Once direct: the connections' shared event loop exists before the count.
                #expect(await pingError(configuration(server, certificates)) == nil)
                let before = openDescriptorCount()
                do {
                    let proxy = try FaultProxy.start(to: server.endpoint)
                    defer { proxy.stop() }
                    // Each way 600 ms: the hello's first answer comes after 1.2 s, the PING goes
                    // at 1 s (half the connect timeout; 200 ms apart, so a loaded machine's late
                    // wake-up does not find the answer there first and skip the PING).
                    proxy.set(.latency(.milliseconds(600)))
                    var settings = configuration(server, certificates)
                    settings.endpoint = proxy.endpoint
                    settings.connectTimeout = .seconds(2)
                    settings.commandTimeout = .seconds(5)
                    settings.tls?.verifiesHostname = false
                    for attempt in 0..<2 {
                        #expect(await pingError(settings) == nil, "\(attempt)")
                    }
                    #expect(proxy.acceptedCount == 4, "no PING on a second connection: the test tests nothing")
                }
                // The proxy's listener closes with the proxy.
                #expect(await eventually { openDescriptorCount() <= before }, "\(openDescriptorCount()) descriptors open, \(before) before")
            }
        }
    }

    @Test("a handshake that stalls fails with a timeout within the connect timeout; a missing CA file is a TLS error naming it")
    func stalledHandshakeAndBadFiles() async throws {
        let before = openDescriptorCount()
        let silent = try GarbageServer.start(reply: nil)
        defer { silent.stop() }
        var settings = RedisConnectionConfiguration(endpoint: silent.endpoint, connectTimeout: .milliseconds(300), tls: RedisTLSConfiguration())
        settings.tls?.verifiesCertificate = false
        for attempt in 0..<3 {
            let started = ContinuousClock.now
            let stalled = await pingError(settings)
            let took = started.duration(to: .now)
            #expect(stalled?.code == .timeout, "\(attempt): \(String(describing: stalled))")
            #expect(took >= .milliseconds(250) && took < .seconds(2), "\(attempt): took \(took)")
        }
        // The plain PING on a second connection (sent at half the timeout) went unanswered, and
        // that connection was closed too.
        #expect(silent.acceptedCount == 6, "no PING on a second connection: the test tests nothing")
        silent.stop()
        #expect(await eventually { openDescriptorCount() <= before }, "\(openDescriptorCount()) descriptors open, \(before) before")

        let missing = RedisConnectionConfiguration(
            endpoint: silent.endpoint, tls: RedisTLSConfiguration(trustedCertificatesFile: "/nonexistent/ca.pem")
        )
        let failure = await pingError(missing)
        #expect(failure?.code == .tlsFailed)
        #expect(failure?.message.contains("/nonexistent/ca.pem") == true, "\(String(describing: failure))")
        #expect(failure?.isPermanent == true)
    }

    @Test("loadFiles tells at start-up, without connecting, what a first connect would fail with: a CA file with no certificate in it, a client key that is not the certificate's, a key without a certificate, an encrypted key (no passphrase prompt), a pipe or a directory for a file; good files and the system's trust store load; a connect with the same files fails the same way, naming the file", .timeLimit(.minutes(1)))
    func loadFilesWithoutConnecting() async throws {
        try await withCertificates { certificates in
            let endpoint = RedisEndpoint.hostname("127.0.0.1", port: 1)
            let garbage = certificates.directory + "/garbage.pem"
            try Data("not a certificate\n".utf8).write(to: URL(fileURLWithPath: garbage))
            // A FIFO without a writer: opening it would block the connector thread.
            let fifo = certificates.directory + "/ca-fifo.pem"
            #expect(mkfifo(fifo, 0o600) == 0)
            let bad: [(String, RedisTLSConfiguration, String)] = [
                ("no PEM in the CA file", RedisTLSConfiguration(trustedCertificatesFile: garbage), garbage),
                ("another certificate's key", RedisTLSConfiguration(
                    trustedCertificatesFile: certificates.ca.certificate,
                    certificateFile: certificates.client.certificate, privateKeyFile: certificates.server.key
                ), certificates.server.key),
                ("a key alone", RedisTLSConfiguration(privateKeyFile: certificates.client.key), certificates.client.key),
                // OpenSSL's default would ask for the passphrase on the terminal (from several
                // connector threads at once: a corrupted heap), or fail with a UI error.
                ("an encrypted key", RedisTLSConfiguration(
                    trustedCertificatesFile: certificates.ca.certificate,
                    certificateFile: certificates.client.certificate, privateKeyFile: certificates.encryptedClientKey
                ), "\(certificates.encryptedClientKey) is encrypted"),
                ("a pipe for the CA file", RedisTLSConfiguration(trustedCertificatesFile: fifo), "\(fifo) is not a regular file"),
                ("a directory for the key", RedisTLSConfiguration(
                    certificateFile: certificates.client.certificate, privateKeyFile: certificates.directory
                ), "\(certificates.directory) is a directory"),
            ]
            for (what, tls, file) in bad {
                var thrown: RedisError?
                do throws(RedisError) { try tls.loadFiles(for: endpoint) } catch { thrown = error }
                #expect(thrown?.code == .tlsFailed && thrown?.isPermanent == true, "\(what): \(String(describing: thrown))")
                #expect(thrown?.message.contains(file) == true && thrown?.endpoint == endpoint, "\(what): \(String(describing: thrown))")
                // What a connection meets on its first connect is the same failure.
                let connecting = await pingError(RedisConnectionConfiguration(endpoint: endpoint, tls: tls))
                #expect(connecting?.code == .tlsFailed && connecting?.message == thrown?.message, "\(what): \(String(describing: connecting))")
            }
            let good = RedisTLSConfiguration(
                trustedCertificatesFile: certificates.ca.certificate,
                certificateFile: certificates.client.certificate, privateKeyFile: certificates.client.key
            )
            #expect(throws: Never.self) { try good.loadFiles(for: endpoint) }
            #expect(throws: Never.self) { try RedisTLSConfiguration().loadFiles(for: endpoint) }
        }
    }

    @Test("an error other code on the event loop's thread left on its OpenSSL error queue is not the connection's: TLS reads that wait for the rest of a record go on")
    func staleOpenSSLError() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates) { server in
                let proxy = try FaultProxy.start(to: server.endpoint)
                defer { proxy.stop() }
                let loop = RedisEventLoop(name: "stale-error")
                let connection = RedisConnection(configuration: RedisConnectionConfiguration(
                    endpoint: proxy.endpoint, connectTimeout: .seconds(3), commandTimeout: .seconds(3),
                    tls: RedisTLSConfiguration(trustedCertificatesFile: certificates.ca.certificate)
                ), eventLoop: loop)
                #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
                // Replies come in pieces of 1 to 3 bytes: most reads find part of a record and
                // end in SSL_ERROR_WANT_READ, which OpenSSL reports as SSL_ERROR_SSL when the
                // thread's queue holds an error.
                proxy.set(.fragment(.toClient, maxBytes: 3, pause: .milliseconds(1)))
                // Between the loop's turns, a task on its thread leaves an error on the queue.
                let stop = Atomic(false)
                let left = Atomic(0)
                let leaver = Task {
                    await withTaskExecutorPreference(loop) {
                        while !stop.load(ordering: .relaxed) {
                            if leaveStaleOpenSSLError() { left.add(1, ordering: .relaxed) }
                            await Task.yield()
                        }
                    }
                }
                for index in 0..<10 {
                    #expect(try await connection.send(RedisCommand("ECHO", "reply \(index)")) == .bulkString(Array("reply \(index)".utf8)))
                }
                stop.store(true, ordering: .relaxed)
                await leaver.value
                #expect(left.load(ordering: .relaxed) > 10)
                #expect(connection.connectionGeneration == 1, "no reconnect")
                await connection.shutdown()
                await loop.shutdown()
            }
        }
    }

    @Test("over TLS 1.2 and 1.3, replies of sizes around the 16 KiB record boundaries, many at once and then one alone, arrive whole on one connection, directly and cut into pieces of 1 to 40 bytes: a read that stops at a short read of the socket leaves no record behind", arguments: [(false, false), (true, false), (false, true), (true, true)])
    func recordBoundaries(tls12: Bool, fragmented: Bool) async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates, arguments: onlyTLS(tls12)) { server in
                let proxy = try FaultProxy.start(to: server.endpoint)
                defer { proxy.stop() }
                // A reply left behind would fail at the 3 s command timeout.
                let connection = RedisConnection(configuration: RedisConnectionConfiguration(
                    endpoint: fragmented ? proxy.endpoint : server.endpoint, connectTimeout: .seconds(3), commandTimeout: .seconds(3),
                    tls: RedisTLSConfiguration(trustedCertificatesFile: certificates.ca.certificate)
                ))
                let sizes = [0, 1, 16_370, 16_377, 16_379, 16_384, 16_385, 16_400, 32_752, 32_768, 49_152, 100_000]
                for size in sizes {
                    #expect(try await connection.send(RedisCommand("SET", "k\(size)", String(decoding: letters(size, seed: size), as: UTF8.self))) == .simpleString("OK"))
                }
                if fragmented { proxy.set(.fragment(.toClient, maxBytes: 40, pause: .zero)) }
                for round in 0..<(fragmented ? 3 : 12) {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for (index, size) in sizes.enumerated() where (index + round) % 3 != 0 || round % 2 == 0 {
                            group.addTask { () async throws -> Void in
                                #expect(try await connection.send(RedisCommand("GET", "k\(size)")) == .bulkString(letters(size, seed: size)), "\(size) bytes")
                            }
                        }
                        try await group.waitForAll()
                    }
                    // One reply alone, nothing after it.
                    let size = sizes[round % sizes.count]
                    #expect(try await connection.send(RedisCommand("GET", "k\(size)")) == .bulkString(letters(size, seed: size)), "\(size) bytes, alone")
                }
                #expect(connection.connectionGeneration == 1, "no reconnect")
                await connection.shutdown()
            }
        }
    }

    @Test("over TLS 1.2 and 1.3, bursts of pub/sub messages (one script publishes each, back to back, of sizes around the record boundaries) reach the subscriber whole and in order, directly and cut into pieces, with nothing sent after a burst to raise another event", arguments: [(false, false), (true, false), (false, true)])
    func pubSubBursts(tls12: Bool, fragmented: Bool) async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates, arguments: onlyTLS(tls12)) { server in
                let proxy = try FaultProxy.start(to: server.endpoint)
                defer { proxy.stop() }
                if fragmented { proxy.set(.fragment(.toClient, maxBytes: 2_000, pause: .microseconds(10))) }
                let tls = RedisTLSConfiguration(trustedCertificatesFile: certificates.ca.certificate)
                // The messages heard, and the event of the current burst's last one arriving.
                let heard = Mutex<(messages: [[UInt8]], target: Int, reached: OneTimeEvent<Bool>?)>(([], 0, nil))
                let subscribed = OneTimeEvent<Void>()
                let subscriber = RedisSubscriber(
                    configuration: RedisConnectionConfiguration(endpoint: fragmented ? proxy.endpoint : server.endpoint, connectTimeout: .seconds(3), tls: tls),
                    onSubscribed: { _ in subscribed.fire() },
                    onMessage: { _, payload in
                        let reached = heard.withLock { heard -> OneTimeEvent<Bool>? in
                            heard.messages.append(payload)
                            guard heard.messages.count >= heard.target, let reached = heard.reached else { return nil }
                            heard.reached = nil
                            return reached
                        }
                        reached?.fire(true)
                    }
                )
                subscriber.subscribe("burst")
                await subscribed.wait()
                let publisher = RedisConnection(configuration: RedisConnectionConfiguration(endpoint: server.endpoint, tls: tls))
                let sizes = [1, 5, 100, 16_300, 16_350, 16_384, 16_400, 20_000, 32_768, 3, 8_000]
                var expected: [[UInt8]] = []
                for burst in 0..<30 {
                    let burstSizes = (0..<(burst % 7 + 1) * 3).map { index in
                        burst % 3 == 0 ? sizes[(burst + index) % sizes.count] : Int.random(in: 1...20_000)
                    }
                    let messages = burstSizes.enumerated().map { letters($0.element, seed: burst * 31 + $0.offset) }
                    expected += messages
                    let reached = OneTimeEvent<Bool>()
                    heard.withLock { heard in
                        heard.target = expected.count
                        heard.reached = reached
                    }
                    let script = "for i = 1, #ARGV do redis.call('PUBLISH', 'burst', ARGV[i]) end return #ARGV"
                    let published = try await publisher.send(RedisCommand(["EVAL", script, "0"] + messages.map { String(decoding: $0, as: UTF8.self) }))
                    #expect(published == .integer(Int64(messages.count)))
                    // The burst's last message within 5 s: one left behind never comes.
                    let timer = Task {
                        try? await Task.sleep(for: .seconds(5))
                        reached.fire(false)
                    }
                    let arrived = await reached.wait()
                    timer.cancel()
                    let count = heard.withLock { $0.messages.count }
                    #expect(arrived, "burst \(burst): \(count) of \(expected.count) messages within 5 s")
                    if !arrived { break }
                }
                #expect(heard.withLock { $0.messages } == expected, "messages out of order or cut")
                await subscriber.shutdown()
                await publisher.shutdown()
            }
        }
    }
}

/// Polls `condition` every 10 ms until it holds or `limit` passes.
private func becomesTrue(within limit: Duration, _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return await condition()
}

extension RedisServer {
    /// `blocked_clients` from `INFO clients`, asked over the server's plain Unix socket.
    func blockedClients() async -> Int {
        let admin = RedisConnection(endpoint: unixSocketEndpoint)
        defer { Task { await admin.shutdown() } }
        guard case let .bulkString(bytes) = try? await admin.send(RedisCommand("INFO", "clients")) else { return -1 }
        let line = String(decoding: bytes, as: UTF8.self).split(separator: "\r\n").first { $0.hasPrefix("blocked_clients:") }
        return line.flatMap { Int($0.dropFirst("blocked_clients:".count)) } ?? -1
    }
}
