import MetricsTestKit
import Redlock
import RedlockTestSupport
import RedlockTransport
import Testing

@Suite("A port that speaks the other protocol")
struct MismatchedPortTests {
    /// Runs `body` with three TLS-only servers and certificates made for this test.
    private func withTLSServers(_ body: (TLSCertificates, [RedisServer]) async throws -> Void) async throws {
        let certificates = try await TLSCertificates.generate()
        defer { certificates.remove() }
        let servers = try await RedisServer.start(count: 3, tls: .init(certificates: certificates))
        try await withTeardown {
            try await body(certificates, servers)
        } teardown: {
            for server in servers { await server.terminate() }
        }
    }

    /// `lock()` over `nodes` fails within 1.5 s although its options would retry for seconds,
    /// after one attempt, every node's cause a permanent TLS failure whose message holds `hint`.
    private func expectFailsAtOnce(_ nodes: [RedisConnectionConfiguration], hint: String) async throws {
        let client = try RedlockClient(nodes: nodes)
        let lock = try client.makeLock("mismatched", options: LockOptions(tries: 32, retryDelay: .constant(.milliseconds(200))))
        let started = ContinuousClock.now
        let error = await #expect(throws: RedlockError.self) { try await lock.lock() }
        let took = started.duration(to: .now)
        #expect(took < .milliseconds(1_500), "retried a permanent failure for \(took): \(String(describing: error))")
        #expect(error?.code == .noQuorum, "\(String(describing: error))")
        let causes = error?.nodes ?? []
        #expect(causes.count >= 2, "\(causes)")
        #expect(causes.allSatisfy { $0.cause.error?.code == .tlsFailed && $0.cause.error?.isPermanent == true }, "\(causes)")
        #expect(causes.allSatisfy { $0.description.contains(hint) }, "\(causes)")
        await client.shutdown()
    }

    @Test("lock() on TLS ports configured as plain fails at once, each node's cause a permanent TLS failure that says to use rediss://, not retried for the lock's timeout")
    func plainClientOnTLSPorts() async throws {
        try await withTLSServers { _, servers in
            try await expectFailsAtOnce(servers.map { $0.configuration(connectTimeout: .seconds(1)) }, hint: "use rediss://")
        }
    }

    @Test("lock() without a client certificate on TLS nodes that require one fails at once, with TLS 1.2 (the alert comes in the handshake) and TLS 1.3 (on the first read after it: before, a transient close, retried for the lock's whole timeout), each node's cause a permanent TLS failure naming the server's alert; with the certificate it locks", arguments: [true, false])
    func clientCertificateRequired(tls12: Bool) async throws {
        let certificates = try await TLSCertificates.generate()
        defer { certificates.remove() }
        let servers = try await RedisServer.start(
            count: 3, tls: .init(certificates: certificates, clientAuthentication: .required),
            arguments: ["--tls-protocols", tls12 ? "TLSv1.2" : "TLSv1.3"]
        )
        try await withTeardown {
            var nodes = servers.map {
                var node = $0.configuration(connectTimeout: .seconds(1))
                node.tls = RedisTLSConfiguration(trustedCertificatesFile: certificates.ca.certificate)
                return node
            }
            try await expectFailsAtOnce(nodes, hint: " alert ")
            for index in nodes.indices {
                nodes[index].tls?.certificateFile = certificates.client.certificate
                nodes[index].tls?.privateKeyFile = certificates.client.key
            }
            let client = try RedlockClient(nodes: nodes)
            let lock = try client.makeLock("mismatched")
            try await lock.unlock(try await lock.lock())
            await client.shutdown()
        } teardown: {
            for server in servers { await server.terminate() }
        }
    }

    @Test("lock() on plain ports configured with TLS fails when its tries run out (a silence is no proof: the port may speak both), each node's connection failure a timeout that says to use redis://")
    func tlsClientOnPlainPorts() async throws {
        try await withRedisServers(3) { servers in
            let nodes = servers.map {
                var configuration = $0.configuration(connectTimeout: .milliseconds(600))
                configuration.tls = RedisTLSConfiguration()
                return configuration
            }
            let client = try RedlockClient(nodes: nodes)
            let lock = try client.makeLock("mismatched", options: LockOptions(tries: 3, retryDelay: .constant(.milliseconds(500))))
            let error = await #expect(throws: RedlockError.self) { try await lock.lock() }
            let failures = error?.nodes.compactMap(\.connectionFailure) ?? []
            #expect(failures.count == 3, "\(String(describing: error))")
            #expect(failures.allSatisfy { $0.code == .timeout && $0.message.contains("use redis://") }, "\(failures)")
            await client.shutdown()
        }
    }

    @Test("a node whose connect fails for good, slower than an attempt's budget, counts as refusing for good once its connection failed: lock() stops after its second attempt even when the retry delay outlasts the failure's hold")
    func slowPermanentConnectFailure() async throws {
        try await withTLSServers { _, servers in
            // 150 ms each way: finding that the port speaks TLS takes several round trips, well
            // over an attempt's budget (400 ms).
            let proxies = try servers.map { try FaultProxy.start(to: $0.endpoint) }
            defer { for proxy in proxies { proxy.stop() } }
            for proxy in proxies { proxy.set(.latency(.milliseconds(150))) }
            let nodes = proxies.map { RedisConnectionConfiguration(endpoint: $0.endpoint, connectTimeout: .seconds(3), commandTimeout: .seconds(3)) }
            let metrics = TestMetrics()
            let client = try RedlockClient(nodes: nodes, metrics: metrics)
            let lock = try client.makeLock("slow-mismatch", options: LockOptions(tries: 3, retryDelay: .constant(.seconds(5))))
            let error = await #expect(throws: RedlockError.self) { try await lock.lock() }
            #expect(metrics.counterTotal(label: "redlock_acquire_attempts_total") == 2, "\(String(describing: error))")
            #expect(error?.message.contains("not retried") == true, "\(String(describing: error))")
            // The second attempt connected again (the hold was over) and ended silent.
            let causes = error?.nodes ?? []
            #expect(causes.count >= 2 && causes.allSatisfy { $0.cause == .noAnswer && $0.connectionFailure?.code == .tlsFailed }, "\(causes)")
            await client.shutdown()
        }
    }
}
