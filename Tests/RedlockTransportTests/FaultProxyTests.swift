import Foundation
import RedlockTestSupport
import RedlockTransport
import Testing

/// Sends PING and returns how long it took and its outcome.
private func timedPing(_ connection: RedisConnection) async -> (Duration, Result<RedisValue, RedisError>) {
    let started = ContinuousClock.now
    do {
        let reply = try await connection.send(RedisCommand("PING"))
        return (started.duration(to: .now), .success(reply))
    } catch let error as RedisError {
        return (started.duration(to: .now), .failure(error))
    } catch {
        return (started.duration(to: .now), .failure(RedisError(code: .io, endpoint: nil, message: "\(error)")))
    }
}

/// `timedPing`, given up (cancelled) after `limit`: a wedged loop must fail the test, not hang it.
private func timedPing(_ connection: RedisConnection, within limit: Duration) async -> (Duration, Result<RedisValue, RedisError>) {
    await withTaskGroup(of: (Duration, Result<RedisValue, RedisError>)?.self) { group in
        group.addTask { await timedPing(connection) }
        group.addTask {
            try? await Task.sleep(for: limit)
            return nil
        }
        var outcome: (Duration, Result<RedisValue, RedisError>)?
        for await finished in group {
            if let finished {
                outcome = finished
                break
            }
            group.cancelAll()
        }
        group.cancelAll()
        return outcome ?? (limit, .failure(RedisError(code: .timeout, endpoint: connection.configuration.endpoint, message: "no outcome within \(limit)")))
    }
}

@Suite("Network faults through the loopback proxy")
struct FaultProxyTests {
    @Test("latency is added; a stalled reply direction times out while the node runs on; a reset is a closed connection; each heals")
    func faults() async throws {
        try await withRedisServers(1) { servers throws in
            let proxy = try FaultProxy.start(to: servers[0].endpoint)
            defer { proxy.stop() }
            let connection = RedisConnection(configuration: RedisConnectionConfiguration(endpoint: proxy.endpoint, commandTimeout: .milliseconds(300)))
            let direct = RedisConnection(configuration: servers[0].configuration())

            let (quick, first) = await timedPing(connection)
            #expect(try first.get() == .simpleString("PONG"))

            proxy.set(.latency(.milliseconds(40)))
            let (slow, delayed) = await timedPing(connection)
            #expect(try delayed.get() == .simpleString("PONG"))
            #expect(slow >= .milliseconds(70) && slow > quick, "took \(slow)")

            // Replies held: the command times out, yet the node ran it (and runs on).
            proxy.set(.stall([.toClient]))
            let started = ContinuousClock.now
            let stalled = await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("SET", "through-stall", "1")) }
            #expect(stalled?.code == .timeout)
            #expect(started.duration(to: .now) < .seconds(2))
            #expect(try await direct.send(RedisCommand("GET", "through-stall")) == .bulkString(Array("1".utf8)))

            proxy.set(.none)
            let (_, healed) = await timedPing(connection)
            #expect(try healed.get() == .simpleString("PONG"))

            let acceptedBefore = proxy.acceptedCount
            proxy.resetConnections()
            let reset = await #expect(throws: RedisError.self) {
                // The reset reaches the client within the proxy's 20 ms poll: a few tries at most.
                for _ in 0..<50 {
                    _ = try await connection.send(RedisCommand("PING"))
                    try await Task.sleep(for: .milliseconds(10))
                }
            }
            #expect(reset?.code == .connectionClosed, "\(String(describing: reset))")
            let (_, reconnected) = await timedPing(connection)
            #expect(try reconnected.get() == .simpleString("PONG"))
            #expect(proxy.acceptedCount == acceptedBefore + 1)
            await connection.shutdown()
            await direct.shutdown()
        }
    }

    @Test("half a TLS record, then silence: that command times out in bounded time and the loop keeps serving other connections")
    func partialTLSRecord() async throws {
        let certificates = try await TLSCertificates.generate()
        defer { certificates.remove() }
        let tlsServer = try await RedisServer.start(tls: .init(certificates: certificates))
        try await withTeardown {
            try await withRedisServers(1) { plainServers throws in
                let proxy = try FaultProxy.start(to: tlsServer.endpoint)
                defer { proxy.stop() }
                let loop = RedisEventLoop(name: "partial-record")
                let secure = RedisConnection(
                    configuration: RedisConnectionConfiguration(
                        endpoint: proxy.endpoint, commandTimeout: .milliseconds(500),
                        tls: RedisTLSConfiguration(trustedCertificatesFile: certificates.ca.certificate)
                    ),
                    eventLoop: loop
                )
                let plain = RedisConnection(configuration: plainServers[0].configuration(), eventLoop: loop)
                #expect(try await secure.send(RedisCommand("PING")) == .simpleString("PONG"))
                #expect(try await plain.send(RedisCommand("PING")) == .simpleString("PONG"))

                proxy.set(.cut(.toClient, afterBytes: 10))
                let waiting = Task { await timedPing(secure, within: .seconds(5)) }
                // Meanwhile the same loop serves the other connection promptly.
                for _ in 0..<20 {
                    let (took, reply) = await timedPing(plain, within: .seconds(2))
                    #expect(try reply.get() == .simpleString("PONG"))
                    #expect(took < .milliseconds(250), "the loop stalled for \(took)")
                    try await Task.sleep(for: .milliseconds(25))
                }
                let (took, outcome) = await waiting.value
                guard case let .failure(error) = outcome else {
                    Issue.record("a reply came through a cut stream: \(outcome)")
                    return
                }
                #expect(error.code == .timeout, "\(error)")
                #expect(took < .seconds(2), "took \(took)")
                #expect(!error.message.hasPrefix("no outcome"), "the connection never failed: the loop is wedged")
                await secure.shutdown()
                await plain.shutdown()
                await loop.shutdown()
            }
        } teardown: {
            await tlsServer.terminate()
        }
    }

    @Test("replies cut at random points, several records or replies in one read, arrive whole and in order, over TLS and plain TCP, from many callers at once: a read that stops at a short read leaves nothing behind that no event announces", arguments: [true, false])
    func fragmentedReplies(overTLS: Bool) async throws {
        let certificates = try await TLSCertificates.generate()
        defer { certificates.remove() }
        let server = try await overTLS ? RedisServer.start(tls: .init(certificates: certificates)) : RedisServer.start()
        try await withTeardown {
            let proxy = try FaultProxy.start(to: server.endpoint)
            defer { proxy.stop() }
            // A stuck reply would wait for the command timeout, then fail: 5 s is far beyond
            // what the whole exchange takes (about a second).
            let connection = RedisConnection(configuration: RedisConnectionConfiguration(
                endpoint: proxy.endpoint, connectTimeout: .seconds(5), commandTimeout: .seconds(5),
                tls: overTLS ? RedisTLSConfiguration(trustedCertificatesFile: certificates.ca.certificate) : nil
            ))
            let value = String((0..<30_000).map { Character(UnicodeScalar(UInt8(97 + $0 % 26))) })
            #expect(try await connection.send(RedisCommand("SET", "fragmented", value)) == .simpleString("OK"))
            proxy.set(.fragment(.toClient, maxBytes: 300, pause: .microseconds(20)))
            // Large replies among many (each large one many records, cut anywhere), then small
            // batches: the last read of a batch often holds the ends of two replies, and nothing
            // comes after it to raise another event.
            for batch in 0..<202 {
                let (callers, large) = batch < 2 ? (48, 12) : (3, 0)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<callers {
                        group.addTask { () async throws -> Void in
                            if large > 0, index % large == 0 {
                                #expect(try await connection.send(RedisCommand("GET", "fragmented")) == .bulkString(Array(value.utf8)))
                            } else {
                                #expect(try await connection.send(RedisCommand("ECHO", "reply \(index)")) == .bulkString(Array("reply \(index)".utf8)))
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            #expect(connection.connectionGeneration == 1, "no reconnect: every reply came on the first connection")
            await connection.shutdown()
        } teardown: {
            await server.terminate()
        }
    }

    @Test("a command queued while the connection is being made (its TLS handshake stalled) still reaches the node once it is made, after shutdown() returned or after the connection object was dropped, exactly once; its caller has its answer (after shutdown(), at once), and the socket then closes", arguments: [false, true])
    func queuedWhileConnectingReachesTheNode(dropped: Bool) async throws {
        let certificates = try await TLSCertificates.generate()
        defer { certificates.remove() }
        let server = try await RedisServer.start(tls: .init(certificates: certificates))
        try await withTeardown {
            let proxy = try FaultProxy.start(to: server.endpoint)
            defer { proxy.stop() }
            let tls = RedisTLSConfiguration(trustedCertificatesFile: certificates.ca.certificate)
            let admin = RedisConnection(configuration: RedisConnectionConfiguration(endpoint: server.endpoint, tls: tls))
            #expect(try await admin.send(RedisCommand("PING")) == .simpleString("PONG"))
            // The server's replies are held: the handshake cannot finish until the stall ends.
            proxy.set(.stall([.toClient]))
            let answered = OneTimeEvent<Result<RedisValue, RedisError>>()
            let started = ContinuousClock.now
            do {
                let connection = RedisConnection(
                    configuration: RedisConnectionConfiguration(endpoint: proxy.endpoint, connectTimeout: .seconds(10), commandTimeout: .seconds(2), tls: tls)
                )
                connection.send([QueuedCommand(RedisCommand("INCR", "queued-while-connecting"), handler: { answered.fire($0) })])
                if !dropped { await connection.shutdown() }
            }
            if dropped {
                // Nobody can shut it down: its caller is answered once the command was written.
                #expect(try await admin.send(RedisCommand("GET", "queued-while-connecting")) == .null, "written before the connection was made")
                proxy.set(.none)
            }
            // After shutdown(), the caller's answer comes without waiting for the connect, at
            // the grace period's end (500 ms).
            let reply = await answered.wait()
            let waited = started.duration(to: .now)
            guard case let .failure(error) = reply else {
                Issue.record("the command was answered by a connection shut down or dropped before it was made: \(reply)")
                return
            }
            #expect(error.code == .shutdown, "\(error)")
            #expect(waited < .seconds(5), "answered after \(waited), not at once")
            if !dropped {
                #expect(try await admin.send(RedisCommand("GET", "queued-while-connecting")) == .null, "written before the connection was made")
                proxy.set(.none)
            }
            // Once the handshake finishes the command goes out, then the socket closes: wait
            // (at most 10 s) for both, as the node sees them.
            var count: RedisValue = .null
            var clients = 0
            for _ in 0..<500 {
                count = try await admin.send(RedisCommand("GET", "queued-while-connecting"))
                guard case let .bulkString(list) = try await admin.send(RedisCommand("CLIENT", "LIST")) else { break }
                clients = String(decoding: list, as: UTF8.self).split(separator: "\n").count
                if count != .null, clients == 1 { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(count == .bulkString(Array("1".utf8)), "the queued INCR reached the node once")
            #expect(clients == 1, "the connection's socket was closed once written (clients left: \(clients))")
            await admin.shutdown()
        } teardown: {
            await server.terminate()
        }
    }
}
