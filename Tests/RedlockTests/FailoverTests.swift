import Redlock
import RedlockTestSupport
import RedlockTransport
import Testing

/// Three nodes for failover tests: nodes 0 and 1 are masters with one replica each, reached
/// through a proxy each (the address a failover moves to the promoted replica); node 2 is a
/// master of its own. Each replica replicates through a proxy of its own (its link), which
/// can hold the master's stream back: replication lag.
private struct ReplicatedNodes {
    let masters: [RedisServer]
    let replicas: [RedisServer]
    let links: [FaultProxy]
    let proxies: [FaultProxy]

    /// Holds back (`true`) or lets through what the masters of nodes 0 and 1 send their replicas.
    func lag(_ lagging: Bool) {
        for link in links { link.set(lagging ? .stall([.toClient]) : .none) }
    }

    var configurations: [RedisConnectionConfiguration] {
        proxies.map { RedisConnectionConfiguration(endpoint: $0.endpoint, connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) }
            + [masters[2].configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1))]
    }

    /// Node `index`'s master dies and its replica is promoted in its place: `REPLICAOF NO ONE`,
    /// and the node's address now leads to it (open connections are reset).
    func failOver(_ index: Int) async throws {
        await masters[index].kill()
        links[index].stop()   // what it held back is lost with the master
        try await replicas[index].promote()
        try proxies[index].retarget(to: replicas[index].endpoint)
    }
}

/// Starts the nodes (see ``ReplicatedNodes``), waits until each replica has synchronised, runs
/// `body`, and stops everything afterwards.
private func withReplicatedNodes(_ body: (ReplicatedNodes) async throws -> Void) async throws {
    try await withRedisServers(3) { masters in
        var replicas: [RedisServer] = []
        var links: [FaultProxy] = []
        var proxies: [FaultProxy] = []
        try await withTeardown {
            for index in 0..<2 {
                links.append(try FaultProxy.start(to: masters[index].endpoint))
                replicas.append(try await masters[index].startReplica(through: links[index].port))
                proxies.append(try FaultProxy.start(to: masters[index].endpoint))
            }
            try await body(ReplicatedNodes(masters: masters, replicas: replicas, links: links, proxies: proxies))
        } teardown: {
            for proxy in proxies + links { proxy.stop() }
            for replica in replicas { await replica.terminate() }
        }
    }
}

/// Runs `body` with two clients over `nodes` (two processes of one service), shutting both
/// down afterwards.
private func withClients(_ nodes: ReplicatedNodes, _ body: (RedlockClient, RedlockClient) async throws -> Void) async throws {
    let first = try RedlockClient(nodes: nodes.configurations)
    let second = try RedlockClient(nodes: nodes.configurations)
    try await withTeardown {
        try await body(first, second)
    } teardown: {
        await first.shutdown()
        await second.shutdown()
    }
}

@Suite("Failover: a replica promoted in its master's place")
struct FailoverTests {
    private func options(acknowledgements: Int) -> LockOptions {
        var options = testOptions(expiry: .seconds(2), tries: 1)
        options.replicaAcknowledgements = acknowledgements
        return options
    }

    @Test("a majority fails over to replicas that had not received the key: without waiting for replicas a second holder gets in during the first lease")
    func laggingReplicasLoseTheLease() async throws {
        try await withReplicatedNodes { nodes in
            try await withClients(nodes) { first, second in
                nodes.lag(true)
                let lease = try await first.makeLock("failover", options: options(acknowledgements: 0)).lock()
                for index in 0..<2 { try await nodes.failOver(index) }
                let other = try await second.makeLock("failover", options: options(acknowledgements: 0)).lock()
                let overlap = lease.validUntil > .now
                print("failover without replica acknowledgements: second holder while the first lease was valid: \(overlap)")
                // The hazard, reproduced: the promoted replicas forgot the key.
                #expect(overlap, "no second holder during the first lease: the failover did not lose the key")
                #expect(other.value != lease.value)
            }
        }
    }

    @Test("with replicaAcknowledgements, a node whose replicas do not acknowledge refuses, naming the count; the attempt leaves no key and takes its budget, not more")
    func unacknowledgedVotesDoNotCount() async throws {
        try await withReplicatedNodes { nodes in
            try await withClients(nodes) { first, _ in
                nodes.lag(true)
                let lock = try first.makeLock("unreplicated", options: options(acknowledgements: 1))
                let started = ContinuousClock.now
                let error = await #expect(throws: RedlockError.self) { try await lock.lock() }
                let took = started.duration(to: .now)
                #expect(error?.code == .noQuorum, "\(String(describing: error))")
                let causes = error?.nodes.map(\.cause) ?? []
                #expect(causes.count == 3, "\(String(describing: error))")
                #expect(causes.prefix(2).allSatisfy { $0 == .notReplicated(acknowledged: 0, required: 1) }, "\(String(describing: error))")
                // Node 2 has no replica at all: it refuses the same way.
                #expect(causes.last == .notReplicated(acknowledged: 0, required: 1), "\(String(describing: error))")
                #expect(error?.description.contains("0 of its replicas acknowledged") == true, "\(String(describing: error))")
                #expect(took < lock.options.attemptBudget * 2 + .milliseconds(500), "the attempt took \(took)")
                let left = try await values(of: "unreplicated", on: nodes.masters)
                #expect(left == [nil, nil, nil], "keys left behind: \(left)")
            }
        }
    }

    @Test("a WAIT answered a server tick late is the node's answer, not silence: with a 50 ms command timeout, each node without replicas refuses as not replicated, ten tries in a row")
    func lateWaitIsAnAnswer() async throws {
        // A server tick of 67 ms (hz 15): WAIT 1 25 (half the command timeout) is answered 25–92
        // ms after it began (66 ms when the tries follow each other), past the 50 ms command
        // timeout, within the connection's 200 ms and the attempt's 400 ms budget. (At the
        // default hz 10, 25–125 ms: a loaded machine's late read could miss the 200 ms.)
        try await withRedisServers(3, arguments: ["--hz", "15"]) { servers in
            let client = try RedlockClient(nodes: servers.map { $0.configuration(commandTimeout: .milliseconds(50)) })
            try await withTeardown {
                let lock = try client.makeLock("late-wait", options: options(acknowledgements: 1))
                for attempt in 0..<10 {
                    let error = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
                    let causes = error?.nodes.map(\.cause) ?? []
                    #expect(
                        causes.count == 3 && causes.allSatisfy { $0 == .notReplicated(acknowledged: 0, required: 1) },
                        "try \(attempt): \(String(describing: error))"
                    )
                }
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("a lock that waits for replicas holds up no other lock of its client: while its WAIT blocks, another lock acquires, extends and releases within a 100 ms budget")
    func waitHoldsUpNoOtherLock() async throws {
        try await withRedisServers(3) { servers throws in
            // A 4 s reply timeout and a 2 s attempt budget: with no replicas each of the waiting
            // lock's WAITs blocks its connection for 1 s (half of the shorter), time for the
            // other lock's three rounds and the checks around them on a loaded machine. A round
            // written behind a WAIT would still miss its 100 ms budget.
            let client = try RedlockClient(nodes: servers.map { $0.configuration(commandTimeout: .seconds(4)) })
            try await withTeardown {
                var waitingOptions = testOptions(expiry: .seconds(10), tries: 1)
                waitingOptions.replicaAcknowledgements = 1
                let waiting = try client.makeLock("waiting", options: waitingOptions)
                let attempt = Task { try await waiting.tryLock() }
                func blockedInWait() async -> Bool {
                    let clients = (try? await servers[0].run(RedisCommand("CLIENT", "LIST")).string) ?? ""
                    return clients.contains("cmd=wait")
                }
                var blocked = false
                let giveUp = ContinuousClock.now + .seconds(5)
                while !blocked, ContinuousClock.now < giveUp { blocked = await blockedInWait() }
                #expect(blocked, "the waiting lock's WAIT never showed up")
                var quick = testOptions(expiry: .seconds(1), tries: 1, timeoutFactor: 0.1)
                quick.failFast = true
                let other = try client.makeLock("other", options: quick)
                let lease = try await other.lock()
                let extended = try await other.extend(lease)
                try await other.unlock(extended)
                #expect(await blockedInWait(), "the other lock's work was not done while the WAIT blocked")
                let refused = await #expect(throws: RedlockError.self) { try await attempt.value }
                #expect(refused?.nodes.allSatisfy { $0.cause.replicasAcknowledged == 0 } == true, "\(String(describing: refused))")
            } teardown: {
                await client.shutdown()
            }
        }
    }

    @Test("with restartGuard, a lock that waits for replicas asks a restarted node's uptime on its own connection: the restart is seen even when the shared connection has been idle since")
    func restartGuardOnTheOwnConnection() async throws {
        try await withRedisServers(1) { masters in
            let replica = try await masters[0].startReplica()
            try await withTeardown {
                let client = try RedlockClient(nodes: [masters[0].configuration(commandTimeout: .seconds(1))])
                try await withTeardown {
                    var guarded = options(acknowledgements: 1)
                    guarded.restartGuard = .seconds(5)
                    let replicated = try client.makeLock("guarded", options: guarded)
                    var plain = testOptions(expiry: .seconds(2), tries: 1)
                    plain.restartGuard = .seconds(5)
                    let shared = try client.makeLock("shared", options: plain)
                    // Both connections learn the uptime once the node has been up for 5 s (the
                    // replica then synchronises again within that guard after the restart). On a
                    // loaded machine the replica's first sync can take seconds: 20 s at most.
                    var granted = false
                    let giveUp = ContinuousClock.now + .seconds(20)
                    while !granted, ContinuousClock.now < giveUp {
                        if let lease = try? await shared.tryLock(), let other = try? await replicated.tryLock() {
                            try await shared.unlock(lease)
                            try await replicated.unlock(other)
                            granted = true
                        } else {
                            try await Task.sleep(for: .milliseconds(100))
                        }
                    }
                    try #require(granted, "the node never passed the 5 s restart guard")
                    // The node restarts empty; its replica synchronises again. Only the lock
                    // that waits for replicas talks to it afterwards.
                    try await masters[0].restart(keepingData: false)
                    _ = try await masters[0].run(RedisCommand("CONFIG", "SET", "repl-diskless-sync-delay", "0"))
                    try await masters[0].waitForReplica()
                    // The guard is asked once the replica acknowledged (a WAIT refusal comes
                    // first): tried again while the replica catches up, well within the guard.
                    var error: RedlockError?
                    let catchUp = ContinuousClock.now + .seconds(2)
                    repeat {
                        error = await #expect(throws: RedlockError.self) { try await replicated.tryLock() }
                    } while error?.nodes.first?.cause.replicasAcknowledged != nil && ContinuousClock.now < catchUp
                    #expect(error?.nodes.first?.cause.uptime != nil, "\(String(describing: error))")
                } teardown: {
                    await client.shutdown()
                }
            } teardown: {
                await replica.terminate()
            }
        }
    }

    @Test("the audit: a master with replicas is a caveat unless replicaAcknowledgements covers them; checkNodes names a node without enough replicas, and a replica")
    func audit() async throws {
        try await withReplicatedNodes { nodes in
            try await withClients(nodes) { client, _ in
                func roles(_ acknowledgements: Int) async throws -> [RedlockClient.AuditCheck] {
                    let lock = try client.makeLock("audited", options: options(acknowledgements: acknowledgements))
                    return await client.audit(for: lock).compactMap { $0.checks.first { $0.name == "role" } }
                }
                let unguarded = try await roles(0)
                #expect(unguarded.map(\.verdict) == [.warn, .warn, .pass], "\(unguarded)")
                #expect(unguarded.first?.detail.contains("replicaAcknowledgements is 0") == true, "\(unguarded)")
                let guarded = try await roles(1)
                // Node 2 has no replica: it can never grant.
                #expect(guarded.map(\.verdict) == [.pass, .pass, .fail], "\(guarded)")
                let tooMany = try await roles(2)
                #expect(tooMany.map(\.verdict) == [.fail, .fail, .fail], "\(tooMany)")
                let permissions = await client.checkNodes(for: try client.makeLock("audited", options: options(acknowledgements: 1)))
                #expect(permissions.map { $0.refused.map(\.permission) } == [[], [], ["WAIT"]], "\(permissions.map(\.refused))")
            }
            // A client pointed at a replica: WAIT is refused there.
            let misdirected = try RedlockClient(nodes: [nodes.replicas[0].configuration()])
            let lock = try misdirected.makeLock("audited", options: options(acknowledgements: 1))
            let refusal = await misdirected.checkNodes(for: lock).first?.refused.first { $0.permission == "WAIT" }?.refusal
            #expect(refusal?.contains("replica") == true, "\(String(describing: refusal))")
            await misdirected.shutdown()
        }
    }

    @Test("with replicaAcknowledgements, a majority failing over keeps the lease (acquired, then extended): nobody else gets in before it ends, and the promoted replicas carry the extended expiry")
    func acknowledgedLeaseSurvivesFailover() async throws {
        try await withReplicatedNodes { nodes in
            // Node 2 gets a replica too, so that every node can acknowledge.
            let third = try await nodes.masters[2].startReplica()
            try await withTeardown {
                try await withClients(nodes) { first, second in
                    var fenced = options(acknowledgements: 1)
                    fenced.fencing = true
                    // A 5 s expiry: its WAIT allows the replicas 500 ms (200 ms at 2 s, which a
                    // loaded machine's replica missed), and the lock retries a node whose replica
                    // was late.
                    fenced.expiry = .seconds(5)
                    fenced.tries = 3
                    let lock = try first.makeLock("kept", options: fenced)
                    let acquired = try await lock.lock()
                    let token = try #require(acquired.fencingToken)
                    let lease = try await lock.extend(acquired)
                    for index in 0..<2 { try await nodes.failOver(index) }
                    let remaining = try await nodes.replicas.asyncMap { try await $0.run(RedisCommand("PTTL", "kept")).integer ?? -2 }
                    // An extend's PEXPIRE reached the replicas: their expiry counts from it.
                    let sinceExtend = lease.acquiredAt.duration(to: .now)
                    for pttl in remaining {
                        #expect(Duration.milliseconds(pttl) > lease.expiry - sinceExtend - .milliseconds(50), "PTTL \(pttl) ms after the failover")
                    }
                    // So did the fencing counter: a later token still exceeds this one.
                    for replica in nodes.replicas {
                        let counter = try await replica.value(of: "redlock:fence").flatMap { Int64($0) } ?? 0
                        #expect(counter >= token, "the promoted replica's counter \(counter) is below the token \(token)")
                    }
                    let contender = try second.makeLock("kept", options: fenced)
                    let error = await #expect(throws: RedlockError.self) { try await contender.tryLock() }
                    #expect(error?.code == .taken, "\(String(describing: error))")
                    #expect(lease.validUntil > .now, "the check ran after the lease ended: it proves nothing")
                    try await lock.unlock(lease)
                }
            } teardown: {
                await third.terminate()
            }
        }
    }
}

extension Array {
    fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
