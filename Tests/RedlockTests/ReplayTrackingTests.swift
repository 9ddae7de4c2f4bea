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

    @Test("a lease released through a lock on the other connections (replicaAcknowledgements) while its acquire to a frozen node still waits for a connect: the release goes on the lease's own connections, behind that acquire, and the node runs it after the acquire")
    func releaseOnTheOtherLane() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .seconds(10), commandTimeout: .seconds(5)) })
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
                try await waitForAConnect(client.nodes[2], on: servers[2])
                let lease = try await a.lock()
                try await b.unlock(lease)
                // Node 2's release is queued or written (on one lane or the other).
                #expect(await eventually { client.nodes[2].waitingCommands + client.acknowledgedNodes[2].waitingCommands >= 2 })
                try servers[2].resume()
                #expect(await eventually(within: .seconds(10)) {
                    client.nodes[2].waitingCommands == 0 && client.acknowledgedNodes[2].waitingCommands == 0
                })
                #expect(try await servers[2].value(of: "lanes") == nil, "node 2 kept the unlocked lease's key")
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("a lease made on the acknowledged connections, released through a lock on the shared ones to a waiter there: the waiter's handed attempt goes once the release is decided, and gets the lock")
    func handoffToAWaiterOnTheOtherLane() async throws {
        try await withRedisServers(3) { servers throws in
            let client = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .seconds(2), commandTimeout: .seconds(5)) })
            try await withTeardown {
                let shared = try client.makeLock("hand", options: LockOptions(expiry: .seconds(30), tries: 1))
                // Two tries: the first is refused (held); the second is the one handed over, and
                // nothing else would come within the test (a minute's retry delay, no messages).
                var waiterOptions = LockOptions(expiry: .seconds(30), tries: 2)
                waiterOptions.retryDelay = RetryDelay { _ in .seconds(60) }
                waiterOptions.fastHandoff = false
                let waiterLock = try client.makeLock("hand", options: waiterOptions)
                // As a lock() on the acknowledged connections makes it (these nodes have no replicas).
                var lease = try await shared.lock()
                lease.origin = Lease.Origin(client: client.serial, lane: .acknowledged)
                let waiter = Task { try await waiterLock.unlock(try await waiterLock.lock()) }
                #expect(await eventually { client.coordination.waiterCount(of: "hand") == 1 })
                // The acknowledged connections are busy (another lock's WAIT) when the release
                // goes there.
                for node in client.acknowledgedNodes {
                    _ = try await node.send(RedisCommand("PING"))
                    node.send(RedisCommand("WAIT", "5", "500")) { _ in }
                }
                try await shared.unlock(lease)
                await #expect(throws: Never.self) { try await waiter.value }
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("a lease released through another client's lock while its acquire to a frozen node still waits for a connect: the release, lost, is kept and deletes the key the acquire sets once the node wakes")
    func releaseThroughAnotherClient() async throws {
        try await withRedisServers(3) { servers throws in
            let configurations = servers.map { $0.configuration(connectTimeout: .seconds(10), commandTimeout: .milliseconds(300)) }
            let (acquirer, releaser) = (try RedlockClient(nodes: configurations), try RedlockClient(nodes: configurations))
            try await withTeardown {
                let a = try acquirer.makeLock("clients", options: LockOptions(expiry: .seconds(30), tries: 1))
                let b = try releaser.makeLock("clients", options: LockOptions(expiry: .seconds(30), tries: 1))
                _ = try await acquirer.nodes[2].send(RedisCommand("PING"))
                _ = try await releaser.nodes[2].send(RedisCommand("PING"))
                try await waitForAConnect(acquirer.nodes[2], on: servers[2])
                let lease = try await a.lock()
                try await b.unlock(lease)
                // Lost to the command timeout.
                #expect(await eventually { releaser.nodes[2].waitingCommands == 0 })
                try servers[2].resume()
                // The acquire is written and run.
                #expect(await eventually(within: .seconds(10)) { acquirer.nodes[2].waitingCommands == 0 })
                #expect(await answersAgain(releaser.nodes[2]))
                #expect(try await servers[2].value(of: "clients") == nil, "node 2 kept the unlocked lease's key")
            } teardown: {
                await acquirer.shutdown()
                await releaser.shutdown()
            }
        }
    }

    @Test("a lease released through a client that lists the nodes in another order goes to every node: its node set counts the other client's nodes")
    func releaseThroughAnotherNodeOrder() async throws {
        try await withRedisServers(3) { servers throws in
            let proxy = try FaultProxy.start(to: servers[2].endpoint)
            defer { proxy.stop() }
            // The acquirer lists [2 (behind the proxy), 0, 1]; the releaser [0, 1, 2].
            let acquirer = try RedlockClient(nodes: [
                RedisConnectionConfiguration(endpoint: proxy.endpoint, connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(500)),
            ] + servers.dropLast().map { $0.configuration() })
            let releaser = try RedlockClient(nodes: servers.map { $0.configuration() })
            try await withTeardown {
                _ = await acquirer.checkNodes()
                // Server 2 (the acquirer's node 0) never gets the acquire: the lease's node set
                // is the acquirer's nodes 1 and 2 (servers 0 and 1).
                proxy.set(.hangUp(afterBytes: 0))
                #expect(await eventually { acquirer.nodes[0].orderBarrierClients.open == nil })
                var everyAnswer = LockOptions(expiry: .seconds(30), tries: 1)
                everyAnswer.failFast = false
                let lease = try await acquirer.makeLock("order", options: everyAnswer).lock()
                #expect(try await servers[0].value(of: "order") == lease.value)
                try await releaser.makeLock("order", options: everyAnswer).unlock(lease)
                for index in servers.indices {
                    #expect(try await servers[index].value(of: "order") == nil, "server \(index) kept the unlocked lease's key")
                }
            } teardown: {
                await acquirer.shutdown()
                await releaser.shutdown()
            }
        }
    }
}

/// Ends `connection`'s current connection (on the server) and freezes the server: the next
/// command on it waits for a connect, which completes once the server is resumed.
private func waitForAConnect(_ connection: RedisConnection, on server: RedisServer) async throws {
    let id = try #require(connection.orderBarrierClients.open)
    _ = try await server.run(RedisCommand("CLIENT", "KILL", "ID", String(id)))
    #expect(await eventually { connection.orderBarrierClients.open == nil })
    try await server.pause()
}
