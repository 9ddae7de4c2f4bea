import Foundation
import Redlock
import RedlockTestSupport
import RedlockTransport
import Testing

@Suite("Node audit (redlock doctor)")
struct DoctorTests {
    private func send(_ command: RedisCommand, to server: RedisServer) async throws -> RedisValue {
        let connection = RedisConnection(configuration: server.configuration())
        defer { Task { await connection.shutdown() } }
        return try await connection.send(command)
    }

    private func verdict(_ name: String, in audit: RedlockClient.NodeAudit) -> RedlockClient.AuditCheck.Verdict? {
        audit.checks.first { $0.name == name }?.verdict
    }

    @Test("each misconfiguration fails its own check: no persistence, an evicting policy, a replica, cluster mode, one server twice, a missing permission")
    func audit() async throws {
        try await withRedisServers(1, persistence: .appendOnlyFsyncAlways) { safe throws in
            try await withRedisServers(2) { plain throws in
                // The cluster bus port would be port + 10000, which a high free port cannot take.
                let bus = try freeLoopbackPort()
                try await withRedisServers(1, arguments: ["--cluster-enabled", "yes", "--cluster-port", String(bus)]) { cluster throws in
                    let (good, evicting, replica) = (safe[0], plain[0], plain[1])
                    _ = try await send(RedisCommand("CONFIG", "SET", "maxmemory", "100mb"), to: evicting)
                    _ = try await send(RedisCommand("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"), to: evicting)
                    _ = try await send(RedisCommand("REPLICAOF", "127.0.0.1", String(evicting.port)), to: replica)
                    _ = try await send(RedisCommand("ACL", "SETUSER", "default", "resetchannels"), to: good)
                    let client = try RedlockClient(nodes: [
                        good.configuration(), RedisConnectionConfiguration(endpoint: good.unixSocketEndpoint),
                        evicting.configuration(), replica.configuration(), cluster[0].configuration(),
                    ])
                    let audits = await client.audit(for: try client.makeLock("doctor"))
                    let text = audits.map { "\($0.endpoint): \($0.checks.map(\.description))" }.joined(separator: "\n")
                    #expect(audits.count == 5)
                    // One server over TCP and its Unix socket: whichever address connected first
                    // is audited (and fails "distinct"); the other was refused by the client's
                    // vet (its run_id): its one check, "distinct", names the first (before, a
                    // "reachable" failure did, for a node that answers).
                    let pair = audits.prefix(2)
                    let reached = try #require(pair.first { $0.checks.first?.verdict == .pass }, "\(text)")
                    let refused = try #require(pair.first { $0.node != reached.node }, "\(text)")
                    #expect(refused.checks.map(\.name) == ["distinct"] && verdict("distinct", in: refused) == .fail, "\(text)")
                    #expect(refused.checks.first?.detail.contains("the same server as node \(reached.node)") == true, "\(text)")
                    #expect(verdict("persistence", in: reached) == .pass, "\(text)")
                    #expect(verdict("eviction", in: reached) == .pass, "\(text)")
                    #expect(verdict("clock", in: reached) == .pass, "\(text)")
                    #expect(verdict("version", in: reached) == .pass, "\(text)")
                    #expect(verdict("distinct", in: reached) == .fail, "\(text)")
                    #expect(verdict("permissions", in: reached) == .fail, "\(text)")
                    #expect(reached.checks.first { $0.name == "permissions" }?.detail.contains("redlock:released:doctor") == true, "\(text)")
                    #expect(verdict("persistence", in: audits[2]) == .fail, "\(text)")
                    #expect(verdict("eviction", in: audits[2]) == .fail, "\(text)")
                    #expect(verdict("role", in: audits[3]) == .fail, "\(text)")
                    #expect(verdict("cluster", in: audits[4]) == .fail, "\(text)")
                    #expect(verdict("distinct", in: audits[2]) == .pass, "\(text)")
                    // The master of the replica: a failover could lose keys.
                    let masterWarned = await {
                        for _ in 0..<100 {
                            let again = await client.audit(for: try! client.makeLock("doctor"))
                            if verdict("role", in: again[2]) == .warn { return true }
                            try? await Task.sleep(for: .milliseconds(50))
                        }
                        return false
                    }()
                    #expect(masterWarned, "\(text)")
                    #expect(try await send(RedisCommand("KEYS", "*"), to: evicting) == .array([]), "the audit left keys behind")
                    // With the restart guard, a node without persistence is a caveat, not a failure.
                    let guarded = await client.audit(for: try client.makeLock("doctor", options: LockOptions(restartGuard: .seconds(30))))
                    #expect(verdict("persistence", in: guarded[2]) == .warn, "\(guarded[2].checks)")
                    await client.shutdown()
                }
            }
        }
    }

    @Test("a node refusing the lock's commands for its state is a failed 'state', not missing permissions (NOREPLICAS); one answering INFO with BUSY is not 'reachable' (before: 'pass' with every permission 'refused')")
    func stateIsNotPermission() async throws {
        try await withRedisServers(3) { servers throws in
            _ = try await send(RedisCommand("CONFIG", "SET", "min-replicas-to-write", "1"), to: servers[1])
            _ = try await send(RedisCommand("CONFIG", "SET", "busy-reply-threshold", "10"), to: servers[2])
            // A script that never ends keeps node 2 busy until SCRIPT KILL, sent on a connection
            // made before (a new one's handshake is refused BUSY).
            let killer = RedisConnection(configuration: servers[2].configuration())
            _ = try await killer.send(RedisCommand("PING"))
            let looping = RedisConnection(configuration: servers[2].configuration(commandTimeout: .seconds(60)))
            let loop = Task { try? await looping.send(RedisCommand("EVAL", "while true do end", "0")) }
            var busy = false
            for _ in 0..<200 where !busy {
                do { _ = try await send(RedisCommand("PING"), to: servers[2]) } catch let error as RedisError {
                    busy = error.message.contains("BUSY")
                }
            }
            try #require(busy, "node 2 never answered BUSY")
            let client = try RedlockClient(nodes: servers.map { $0.configuration() })
            let audits = await client.audit(for: try client.makeLock("state"))
            let text = audits.map { "\($0.endpoint): \($0.checks.map(\.description))" }.joined(separator: "\n")
            _ = try await killer.send(RedisCommand("SCRIPT", "KILL"))
            _ = await loop.value
            await looping.shutdown()
            await killer.shutdown()
            _ = try await send(RedisCommand("CONFIG", "SET", "min-replicas-to-write", "0"), to: servers[1])
            #expect(verdict("state", in: audits[0]) == .pass && verdict("permissions", in: audits[0]) == .pass, "\(text)")
            #expect(verdict("state", in: audits[1]) == .fail, "\(text)")
            #expect(audits[1].checks.first { $0.name == "state" }?.detail.contains("NOREPLICAS") == true, "\(text)")
            #expect(verdict("permissions", in: audits[1]) == .unknown, "\(text)")
            #expect(verdict("reachable", in: audits[2]) == .fail, "\(text)")
            #expect(audits[2].checks.first?.detail.contains("BUSY") == true, "\(text)")
            // A refusal that is no error reply of the node (too few replicas for WAIT) is not its state.
            let acknowledged = await client.audit(for: try client.makeLock("state", options: LockOptions(replicaAcknowledgements: 1)))
            #expect(verdict("state", in: acknowledged[0]) == .pass, "\(acknowledged[0].checks)")
            #expect(acknowledged[0].checks.first { $0.name == "permissions" }?.detail.contains("WAIT") == true, "\(acknowledged[0].checks)")
            await client.shutdown()
        }
    }

}
