import Foundation
import Redlock
import RedlockTestSupport
import Testing

extension FaultTests {
    /// A majority of nodes failing over to replicas that lag, seen by separate lock processes:
    /// without replica acknowledgements a second holder gets in during the first one's lease, or
    /// with a fencing token lower than one already handed out (the hazard, shown to be
    /// reproduced); with them, never.
    @Suite("Failover")
    struct Failover {
        /// A node that is a master with a replica behind a failover: clients reach it through
        /// `address` (what a failover moves to the promoted replica); the replica replicates
        /// through `link`, which can hold the master's stream back.
        struct FailoverNode {
            var master: RedisServer
            var link: FaultProxy
            var replica: RedisServer
            let address: FaultProxy

            static func start(master: RedisServer) async throws -> FailoverNode {
                let link = try FaultProxy.start(to: master.endpoint)
                do {
                    let replica = try await master.startReplica(through: link.port)
                    return FailoverNode(master: master, link: link, replica: replica, address: try FaultProxy.start(to: master.endpoint))
                } catch {
                    link.stop()
                    throw error
                }
            }

            /// Replication lags from now on: what the master writes stays with it.
            func lag() {
                link.set(.stall([.toClient]))
            }

            /// The master dies (what its link held back is lost with it), the replica is promoted
            /// and the address leads to it. Returns the dead master; ``addReplica()`` gives the new
            /// one a replica.
            mutating func failOver() async throws -> RedisServer {
                let dead = master
                await master.kill()
                link.stop()
                try await replica.promote()
                try address.retarget(to: replica.endpoint)
                master = replica
                return dead
            }

            /// A replica for the master promoted by ``failOver()``.
            mutating func addReplica() async throws {
                link = try FaultProxy.start(to: master.endpoint)
                replica = try await master.startReplica(through: link.port)
            }
        }

        @Test(
            "4 worker processes on one lock while a majority fails over to replicas that lag: replicaAcknowledgements off shows overlapping leases or fencing tokens going back, on shows neither",
            arguments: [false, true]
        )
        func failoverUnderContention(acknowledged: Bool) async throws {
            let expiryMilliseconds = 1_000
            try await withRedisServers(3) { masters in
                var nodes: [FailoverNode] = []
                var others: [RedisServer] = []
                try await withTeardown {
                    for index in 0..<2 { nodes.append(try await FailoverNode.start(master: masters[index])) }
                    // Node 2 does not fail over; a replica lets it acknowledge.
                    others.append(try await masters[2].startReplica())
                    let addresses = nodes.map { "127.0.0.1:\($0.address.port)" } + ["127.0.0.1:\(masters[2].port)"]
                    let cluster = Cluster(servers: masters, nodeList: addresses.joined(separator: ","))
                    try await withTeardown {
                        let run = try await contendUnderFault(
                            cluster: cluster, lock: "failover",
                            arguments: [
                                "--expiry-ms", String(expiryMilliseconds), "--timeout-factor", "0.1",
                                "--connect-timeout-ms", "100", "--command-timeout-ms", "200",
                                // The replicas keep the key that was there when they began to lag
                                // until it expires: a holder after it must hold past that expiry.
                                "--hold-min-ms", "600", "--hold-max-ms", "800", "--retry-min-ms", "2", "--retry-max-ms", "10", "--extend-every", "3",
                                "--fencing",
                            ] + (acknowledged ? ["--replica-acknowledgements", "1"] : []),
                            rounds: acknowledged ? 4 : 20, stopAtFirstViolation: !acknowledged,
                            settle: .milliseconds(expiryMilliseconds + 500), watched: 2
                        ) { _ in
                            let before = try await masters[2].value(of: "failover")
                            for node in nodes { node.lag() }
                            if acknowledged {
                                // Nobody can acquire while the replicas lag: the failover comes
                                // while the holder from before holds, whose lease the promoted
                                // replicas must keep.
                                try await Task.sleep(for: .milliseconds(50))
                            } else {
                                // A holder that acquired while the replicas lag.
                                _ = await waitForNewHolder(of: "failover", on: masters[2], besides: before, within: .seconds(1))
                            }
                            // Both fail over at once, then get replicas (a synchronisation takes a while).
                            for index in nodes.indices { others.append(try await nodes[index].failOver()) }
                            for index in nodes.indices { try await nodes[index].addReplica() }
                        }
                        run.check(guardOn: acknowledged, rounds: 4, label: "failover")
                    } teardown: {
                        await cluster.tearDown()
                    }
                } teardown: {
                    for node in nodes {
                        node.address.stop()
                        node.link.stop()
                        await node.replica.terminate()
                        await node.master.terminate()
                    }
                    for server in others { await server.terminate() }
                }
            }
        }
    }
}

/// Polls (every 1 ms) until `name` on `server` holds a value other than `earlier`: someone
/// else acquired. Returns whether that happened within `limit`.
private func waitForNewHolder(of name: String, on server: RedisServer, besides earlier: String?, within limit: Duration) async -> Bool {
    let giveUp = ContinuousClock.now + limit
    while ContinuousClock.now < giveUp {
        if let value = try? await server.value(of: name), value != earlier { return true }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return false
}
