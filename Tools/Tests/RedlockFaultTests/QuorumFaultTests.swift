import Redlock
import RedlockTestSupport
import Testing

extension FaultTests {
    /// Dead, frozen and slow nodes: a minority costs nothing, a majority fails fast and says why.
    @Suite("Quorum under node faults")
    struct Quorum {
        @Test("with 2 of 5 nodes killed, lock, extend and unlock keep working on the other 3")
        func minorityKilled() async throws {
            try await withCluster(5) { cluster in
                let servers = cluster.servers
                let client = try await cluster.makeClient()
                await servers[1].kill()
                await servers[3].kill()
                let live = [servers[0], servers[2], servers[4]]

                let lock = try client.makeLock("minority-killed", options: LockOptions(expiry: .seconds(2), tries: 3, timeoutFactor: 0.1))
                let lease = try await lock.lock()
                #expect(try await values(of: lock.name, on: live) == [lease.value, lease.value, lease.value])

                let extended = try await lock.extend(lease)
                #expect(extended.value == lease.value)
                #expect(extended.validUntil > lease.validUntil)

                // A rival is refused. Which code it gets depends on who answers first: the dead
                // nodes' refusals can decide the attempt (noQuorum) before a quorum said taken.
                let rival = await #expect(throws: RedlockError.self) {
                    try await client.makeLock("minority-killed", options: LockOptions(tries: 1)).tryLock()
                }
                #expect(rival?.code == .taken || rival?.code == .noQuorum)
                #expect(rival?.nodes.allSatisfy { $0.cause == .taken ? [0, 2, 4].contains($0.node) : [1, 3].contains($0.node) } == true)
                #expect(try await values(of: lock.name, on: live) == [lease.value, lease.value, lease.value])

                try await lock.unlock(extended)
                #expect(try await values(of: lock.name, on: live) == [nil, nil, nil])
            }
        }

        @Test("with 1 of 3 nodes stopped (SIGSTOP), lock, extend and unlock keep working, each well within the attempt budget")
        func minorityStopped() async throws {
            try await withCluster(3) { cluster in
                let servers = cluster.servers
                let client = try await cluster.makeClient(commandTimeout: .seconds(5))
                try await servers[2].pause()
                // Budget 1 s per attempt; the frozen node's command timeout (5 s) is longer still.
                let options = LockOptions(expiry: .seconds(5), tries: 3, timeoutFactor: 0.2)
                let lock = try client.makeLock("minority-stopped", options: options)

                let (lease, lockTime) = try await measure { try await lock.lock() }
                #expect(try await values(of: lock.name, on: [servers[0], servers[1]]) == [lease.value, lease.value])
                let (extended, extendTime) = try await measure { try await lock.extend(lease) }
                #expect(extended.validUntil > lease.validUntil)
                let (_, unlockTime) = try await measure { try await lock.unlock(extended) }
                #expect(try await values(of: lock.name, on: [servers[0], servers[1]]) == [nil, nil])

                print("minority stopped (1 of 3): lock \(lockTime.formatted), extend \(extendTime.formatted), unlock \(unlockTime.formatted); budget \(options.attemptBudget.formatted)")
                for time in [lockTime, extendTime, unlockTime] {
                    #expect(time < .milliseconds(500), "an operation waited for the stopped node")
                }
                #expect(servers[2].isPaused, "the node stayed stopped throughout")
            }
        }

        @Test("with 3 of 5 nodes killed, lock() fails with noQuorum naming each dead node's cause, within tries × (budget + max delay)")
        func majorityKilled() async throws {
            try await withCluster(5) { cluster in
                let servers = cluster.servers
                let client = try await cluster.makeClient()
                let dead = [0, 2, 4]
                for index in dead { await servers[index].kill() }

                let tries = 4
                let minimumDelay = Duration.milliseconds(20)
                let maximumDelay = Duration.milliseconds(60)
                let options = LockOptions(
                    expiry: .seconds(1), tries: tries, retryDelay: .random(in: minimumDelay...maximumDelay), timeoutFactor: 0.1
                )
                let lock = try client.makeLock("majority-killed", options: options)
                let (error, elapsed) = await measure { await #expect(throws: RedlockError.self) { try await lock.lock() } }

                #expect(error?.code == .noQuorum)
                #expect(error?.message.contains("after \(tries) attempts") == true)
                let failures = error?.nodes ?? []
                #expect(failures.map(\.node).sorted() == dead, "exactly the dead nodes fail; the live ones granted")
                for failure in failures {
                    guard let cause = failure.cause.error else {
                        Issue.record("node \(failure.node) should carry its connection error, got \(failure.cause)")
                        continue
                    }
                    #expect(cause.code == .connectionRefused)
                    #expect(cause.endpoint == servers[failure.node].endpoint)
                    #expect(failure.endpoint == servers[failure.node].endpoint)
                }
                // Every failed attempt released the keys it set on the live nodes. A node that
                // granted after the attempt was decided has its release queued, not awaited: it
                // lands soon after lock() returned.
                var left = try await values(of: lock.name, on: [servers[1], servers[3]])
                let giveUp = ContinuousClock.now + .seconds(2)
                while left != [nil, nil], ContinuousClock.now < giveUp {
                    try await Task.sleep(for: .milliseconds(5))
                    left = try await values(of: lock.name, on: [servers[1], servers[3]])
                }
                #expect(left == [nil, nil])

                // Refused connects fail at once, so every attempt (and its release) ends long before
                // its budget: the bound holds with the margin left for a loaded machine.
                let bound = (options.attemptBudget + maximumDelay) * tries
                let margin = Duration.milliseconds(250)
                print("majority killed (3 of 5): lock() failed after \(elapsed.formatted); bound tries × (budget + max delay) = \(bound.formatted) (+ \(margin.formatted) margin)")
                #expect(elapsed < bound + margin)
                #expect(elapsed >= minimumDelay * (tries - 1), "lock() made all \(tries) attempts, with their delays")
            }
        }

        @Test("with 3 of 5 nodes stopped, lock() fails with noQuorum (no answer) once every attempt's budget ran out")
        func majorityStopped() async throws {
            try await withCluster(5) { cluster in
                let servers = cluster.servers
                let client = try await cluster.makeClient(commandTimeout: .seconds(5))
                let frozen = [0, 2, 4]
                for index in frozen { try await servers[index].pause() }

                let tries = 4
                let maximumDelay = Duration.milliseconds(60)
                // Budgets of 200 ms: the live nodes answer within each on a loaded machine too
                // (one that did not would be named among the failures).
                let options = LockOptions(
                    expiry: .seconds(2), tries: tries, retryDelay: .random(in: .milliseconds(20)...maximumDelay), timeoutFactor: 0.1
                )
                let lock = try client.makeLock("majority-stopped", options: options)
                let (error, elapsed) = await measure { await #expect(throws: RedlockError.self) { try await lock.lock() } }

                #expect(error?.code == .noQuorum)
                let failures = error?.nodes ?? []
                #expect(failures.map(\.node).sorted() == frozen)
                #expect(failures.allSatisfy { $0.cause == .noAnswer })

                // A frozen node never answers, so each attempt waits out its whole budget; the
                // release after a failed attempt has a budget of its own (on the frozen nodes it
                // waits that out too). Honest bound: tries × 2 × budget + (tries − 1) × max delay.
                let budget = options.attemptBudget
                let simpleBound = (budget + maximumDelay) * tries
                let honestBound = budget * (2 * tries) + maximumDelay * (tries - 1)
                let margin = Duration.milliseconds(500)
                print("majority stopped (3 of 5): lock() failed after \(elapsed.formatted); tries × (budget + max delay) = \(simpleBound.formatted), with releases \(honestBound.formatted) (+ \(margin.formatted) margin)")
                #expect(elapsed >= budget * tries, "every attempt waited for the frozen nodes until its budget ran out")
                #expect(elapsed < honestBound + margin)
            }
        }

        @Test("with 1 of 5 nodes stopped, acquire succeeds without waiting for it: far below the 2 s attempt budget")
        func stoppedNodeIsNotAwaited() async throws {
            try await withCluster(5) { cluster in
                let servers = cluster.servers
                // The frozen node's command timeout (5 s) and the attempt budget (10 s × 0.2 = 2 s)
                // are both far above what an acquire may take here.
                let client = try await cluster.makeClient(commandTimeout: .seconds(5))
                let options = LockOptions(expiry: .seconds(10), tries: 1, timeoutFactor: 0.2)
                #expect(options.attemptBudget == .seconds(2))
                let lock = try client.makeLock("stopped-node", options: options)
                try await servers[4].pause()

                var times: [Duration] = []
                for round in 0..<20 {
                    let (lease, elapsed) = try await measure { try await lock.lock() }
                    times.append(elapsed)
                    if round == 0 {
                        // A quorum (3) of the 4 live nodes at least; the acquire does not wait for more.
                        #expect(try await values(of: lock.name, on: Array(servers[0..<4])).filter { $0 == lease.value }.count >= 3)
                    }
                    try await lock.unlock(lease)
                }
                let p50 = quantile(0.5, of: times)
                let maximum = quantile(1, of: times)
                print("stopped node (1 of 5): 20 acquires, p50 \(p50.formatted), max \(maximum.formatted); budget \(options.attemptBudget.formatted)")
                #expect(maximum < .seconds(1))
                #expect(servers[4].isPaused, "the node stayed stopped throughout")
            }
        }

        @Test("with 1 of 5 nodes slow (DEBUG SLEEP 3 s), acquire does not wait for it, and its late SETs leave no key behind")
        func slowNodeIsNotAwaited() async throws {
            try await withCluster(5) { cluster in
                let servers = cluster.servers
                let client = try await cluster.makeClient(commandTimeout: .seconds(5))
                let options = LockOptions(expiry: .seconds(10), tries: 1, timeoutFactor: 0.2)
                let lock = try client.makeLock("slow-node", options: options)
                let stall = try await servers[0].stall(for: .seconds(3))

                var times: [Duration] = []
                for _ in 0..<10 {
                    let (lease, elapsed) = try await measure { try await lock.lock() }
                    times.append(elapsed)
                    try await lock.unlock(lease)
                }
                #expect(!stall.isOver, "the acquires ran while the node was asleep")
                let maximum = quantile(1, of: times)
                print("slow node (1 of 5): 10 acquires, p50 \(quantile(0.5, of: times).formatted), max \(maximum.formatted)")
                #expect(maximum < .seconds(1))

                // Once it wakes, the node runs what queued up: the first SET, then the releases
                // (one connection keeps them in order). A PING through the client's own connection
                // answers after all of them.
                await stall.waitUntilOver()
                try await client.nodes[0].ping()
                #expect(try await servers[0].value(of: lock.name) == nil, "a late SET left a stray key")
            }
        }
    }
}
