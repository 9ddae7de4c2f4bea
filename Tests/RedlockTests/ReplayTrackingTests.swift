import Foundation
@testable import Redlock
import RedlockTestSupport
import RedlockTransport
import Testing

/// A lost release is kept for a node only where the lease's value may be set: its `lock()`'s
/// acquires, and anything else that may set it (an extend that re-creates keys, a release on
/// other connections than the acquires').
@Suite("Lost releases, where the value may be set")
struct ReplayTrackingTests {
    @Test("a key re-created by an extend with setNXOnExtend (through another lock object) on a node the acquire never reached: its release, lost there, is kept and deletes it")
    func extendRecreatesWhereNoAcquireWent() async throws {
        try await withRedisServers(3) { servers throws in
            let proxy = try FaultProxy.start(to: servers[2].endpoint)
            defer { proxy.stop() }
            let client = try RedlockClient(nodes: servers.dropLast().map { $0.configuration() } + [
                RedisConnectionConfiguration(endpoint: proxy.endpoint, connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(500)),
            ])
            try await withTeardown {
                _ = await client.checkNodes()
                // Node 2 goes away: its acquire waits for a connect that fails, never written.
                proxy.set(.hangUp(afterBytes: 0))
                #expect(await eventually { client.nodes[2].orderBarrierClients.open == nil })
                let accepted = proxy.acceptedCount
                let a = try client.makeLock("recreated", options: LockOptions(expiry: .seconds(30), tries: 1))
                let lease = try await a.lock()
                // (It went on a new connection, which the proxy closes at once.)
                #expect(await eventually { proxy.acceptedCount > accepted }, "the acquire went on the old connection: the test tests nothing")
                // (Failed with that connect, before the proxy lets the next one through.)
                #expect(await eventually { client.nodes[2].waitingCommands == 0 })
                proxy.set(.none)
                var options = LockOptions(expiry: .seconds(30), tries: 1)
                options.setNXOnExtend = true
                let extended = try await client.makeLock("recreated", options: options).extend(lease)
                // (Node 2's answer to this comes after the extend's.)
                _ = try await client.nodes[2].send(RedisCommand("PING"))
                #expect(try await servers[2].value(of: "recreated") == lease.value)
                // The release to node 2 is lost the same way.
                proxy.set(.hangUp(afterBytes: 0))
                #expect(await eventually { client.nodes[2].orderBarrierClients.open == nil })
                try await a.unlock(extended)
                #expect(await eventually { client.nodes[2].waitingCommands == 0 })
                proxy.set(.none)
                // The node's next answer comes after what was kept for it.
                #expect(await answersAgain(client.nodes[2]))
                #expect(try await servers[2].value(of: "recreated") == nil, "node 2 kept the unlocked lease's key")
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("a lease released through a lock on the other connections (replicaAcknowledgements) while its acquire to a frozen node still waits for a connect: the release, lost, is kept and deletes the key the acquire sets once the node wakes")
    func releaseOnTheOtherLane() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .seconds(10), commandTimeout: .milliseconds(300)) })
            try await withTeardown {
                let a = try client.makeLock("lanes", options: LockOptions(expiry: .seconds(30), tries: 1))
                var acknowledged = LockOptions(expiry: .seconds(30), tries: 1)
                acknowledged.replicaAcknowledgements = 1
                let b = try client.makeLock("lanes", options: acknowledged)
                // Both lanes' connections to node 2 open.
                _ = try await client.nodes[2].send(RedisCommand("PING"))
                _ = try await client.acknowledgedNodes[2].send(RedisCommand("PING"))
                // The shared lane's connection to node 2 ends; then node 2 freezes: the acquire
                // waits for a connect, while the other lane's connection is open.
                let id = try #require(client.nodes[2].orderBarrierClients.open)
                _ = try await servers[2].run(RedisCommand("CLIENT", "KILL", "ID", String(id)))
                #expect(await eventually { client.nodes[2].orderBarrierClients.open == nil })
                try await servers[2].pause()
                let lease = try await a.lock()
                try await b.unlock(lease)
                // Lost to the command timeout.
                #expect(await eventually { client.acknowledgedNodes[2].waitingCommands == 0 })
                try servers[2].resume()
                // The acquire is written and run.
                #expect(await eventually(within: .seconds(10)) { client.nodes[2].waitingCommands == 0 })
                // The other lane's next command goes after what was kept for it.
                #expect(await answersAgain(client.acknowledgedNodes[2]))
                #expect(try await servers[2].value(of: "lanes") == nil, "node 2 kept the unlocked lease's key")
            } teardown: {
                await client.shutdown()
            }
        }
    }
}
