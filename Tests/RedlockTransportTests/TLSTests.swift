import Foundation
import RedlockTestSupport
import RedlockTransport
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
    _ body: (RedisServer) async throws -> Void
) async throws {
    let server = try await RedisServer.start(tls: .init(certificates: certificates, serverCertificate: certificate, clientAuthentication: clients))
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

    @Test("over TLS, a socket's peer carries the server name the handshake sent: one address reached under two names counts as two (a gateway may route each name to another server); an IP address sends none, so 127.0.0.1 and ::ffff:127.0.0.1 are one")
    func peerCarriesServerName() async throws {
        try await withCertificates { certificates throws in
            try await withTLSServer(certificates) { server throws in
                var peers: [String?] = []
                for (host, name) in [("127.0.0.1", nil), ("127.0.0.1", "gateway-routed.example"), ("::ffff:127.0.0.1", nil)] {
                    let seen = OneTimeEvent<String>()
                    let settings = configuration(server, certificates, host: host) { tls in
                        if let name { tls.serverName = name }
                        if name != nil || host.contains(":") { tls.verifiesHostname = false }
                    }
                    let connection = RedisConnection(configuration: settings, eventLoop: .shared) { peer in
                        seen.fire(peer)
                        return .success {}
                    }
                    let answered = (try? await connection.send(RedisCommand("PING"))) == .simpleString("PONG")
                    // The IPv4-mapped address needs IPv6 sockets, which a system may lack.
                    #expect(answered || host.contains(":"), "PING over TLS to \(host)")
                    if answered { peers.append(await seen.wait()) }
                    await connection.shutdown()
                }
                let address = "127.0.0.1:\(server.port)"
                #expect(Array(peers.prefix(2)) == [address, address + " sni=gateway-routed.example"])
                #expect(peers.dropFirst(2).allSatisfy { $0 == address }, "\(peers)")
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
                let code = try #require(refused?.code)
                #expect([.tlsFailed, .connectionClosed].contains(code), "\(String(describing: refused))")
                #expect(refused?.endpoint == .hostname("127.0.0.1", port: server.port))
                let accepted = await pingError(configuration(server, certificates) {
                    $0.certificateFile = certificates.client.certificate
                    $0.privateKeyFile = certificates.client.key
                })
                #expect(accepted == nil)
            }
        }
    }

    @Test("a certificate from an unknown CA, an expired one and one for another host are rejected, naming node and reason")
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
                // The name the certificate was issued for, as SNI and for verification, is accepted.
                #expect(await pingError(configuration(server, certificates) { $0.serverName = "wrong.example" }) == nil)
                // Hostname verification off: the chain alone decides.
                #expect(await pingError(configuration(server, certificates) { $0.verifiesHostname = false }) == nil)
            }
        }
    }

    @Test("a TLS port spoken to in plain RESP, and a plain port spoken to in TLS, fail with typed errors in bounded time")
    func mismatchedPorts() async throws {
        try await withCertificates { certificates in
            try await withTLSServer(certificates) { server in
                let started = ContinuousClock.now
                let plain = await pingError(RedisConnectionConfiguration(endpoint: server.endpoint, commandTimeout: .seconds(1)))
                let code = try #require(plain?.code)
                #expect([.connectionClosed, .protocolError].contains(code), "\(String(describing: plain))")
                #expect(plain?.message.contains("rediss://") == true, "\(String(describing: plain))")
                #expect(started.duration(to: .now) < .seconds(3))
            }
            try await withRedisServers(1) { servers in
                let started = ContinuousClock.now
                // A plain server waits for the end of a line that never comes: the handshake times out.
                let tls = await pingError(configuration(servers[0], certificates))
                let code = try #require(tls?.code)
                #expect([.tlsFailed, .connectionClosed, .timeout].contains(code), "\(String(describing: tls))")
                #expect(tls?.message.contains("TLS") == true, "\(String(describing: tls))")
                #expect(started.duration(to: .now) < .seconds(3))
            }
        }
    }

    @Test("a handshake that stalls fails with a timeout within the connect timeout; a missing CA file is a TLS error naming it")
    func stalledHandshakeAndBadFiles() async throws {
        let silent = try GarbageServer.start(reply: nil)
        defer { silent.stop() }
        var settings = RedisConnectionConfiguration(endpoint: silent.endpoint, connectTimeout: .milliseconds(300), tls: RedisTLSConfiguration())
        settings.tls?.verifiesCertificate = false
        let started = ContinuousClock.now
        let stalled = await pingError(settings)
        let took = started.duration(to: .now)
        #expect(stalled?.code == .timeout, "\(String(describing: stalled))")
        #expect(took >= .milliseconds(250) && took < .seconds(2), "took \(took)")

        let missing = RedisConnectionConfiguration(
            endpoint: silent.endpoint, tls: RedisTLSConfiguration(trustedCertificatesFile: "/nonexistent/ca.pem")
        )
        let failure = await pingError(missing)
        #expect(failure?.code == .tlsFailed)
        #expect(failure?.message.contains("/nonexistent/ca.pem") == true, "\(String(describing: failure))")
        #expect(failure?.isPermanent == true)
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
