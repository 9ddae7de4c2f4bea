import Foundation
import Redlock
import RedlockTestSupport
import RedlockTransport
import Testing

@Suite("Epoch guard: a node that lost its data does not vote until every lease it held is over")
struct EpochGuardTests {
    /// Options with the epoch guard on (and a client-side acquire timeout long enough to wait
    /// it out).
    private func guarded(expiry: Duration, guard epochGuard: Duration, fencing: Bool = false) -> LockOptions {
        var options = testOptions(expiry: expiry, tries: .max)
        options.acquireTimeout = epochGuard * 4
        options.epochGuard = epochGuard
        options.fencing = fencing
        return options
    }

    /// The marker's `EPOCH` (ms) on each server.
    private func epochs(on servers: [RedisServer]) async throws -> [Int64?] {
        try await values(of: "redlock:epoch", on: servers).map { $0.flatMap { $0.split(separator: " ").first }.flatMap { Int64($0) } }
    }

    @Test("a node without a marker makes one and votes young; once the marker is as old as the guard, the lock is granted")
    func newNodeWaitsOutTheGuard() async throws {
        try await withLockNodes(3) { client, servers in
            // Each node's first answer (a connect, the script sent twice: NOSCRIPT, then EVAL)
            // has 240 ms, so that a loaded machine does not make one a silent node.
            var options = guarded(expiry: .milliseconds(300), guard: .milliseconds(400))
            options.timeoutFactor = 0.8
            let lock = try client.makeLock("fresh", options: options)
            let first = ContinuousClock.now
            let young = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            #expect(young?.code == .noQuorum)
            #expect(young?.nodes.map(\.cause) == [.epochTooYoung, .epochTooYoung, .epochTooYoung], "\(String(describing: young))")
            // Young votes set nothing: no lock key, but a marker on every node.
            #expect(try await values(of: "fresh", on: servers) == [nil, nil, nil])
            #expect(try await epochs(on: servers).allSatisfy { $0 != nil })

            let lease = try await lock.lock()
            let waited = first.duration(to: .now)
            print("epoch guard: a new node's first lease after \(waited) (guard 400 ms)")
            #expect(waited >= .milliseconds(390), "granted after \(waited), before the 400 ms guard")
            // A node whose marker was made a moment after the others' may still be young.
            #expect(try await values(of: "fresh", on: servers).filter { $0 == lease.value }.count >= 2)
            try await lock.unlock(lease)
            // The marker stays: the next acquire is immediate, also when the node has to be
            // sent the script again (NOSCRIPT, then EVAL).
            for server in servers {
                let admin = RedisConnection(configuration: server.configuration())
                _ = try await admin.send(RedisCommand("SCRIPT", "FLUSH"))
                await admin.shutdown()
            }
            let again = try await lock.tryLock()
            try await lock.unlock(again)
        }
    }

    @Test("FLUSHALL while a lease is held: without the guard a second holder gets in at once; with it, only after the first lease ended, with a greater token", arguments: [false, true])
    func flushWhileHeld(guardOn: Bool) async throws {
        try await withLockNodes(3) { client, servers in
            let expiry = Duration.milliseconds(600)
            let options = guardOn ? guarded(expiry: expiry, guard: expiry, fencing: true) : {
                var options = testOptions(expiry: expiry, tries: .max)
                options.acquireTimeout = .seconds(3)
                options.fencing = true
                return options
            }()
            let lock = try client.makeLock("flushed", options: options)
            let first = try await lock.lock()
            for server in servers { try await server.flushAll() }
            let second = try await lock.lock()
            let firstToken = try #require(first.fencingToken)
            let secondToken = try #require(second.fencingToken)
            let overlap = first.validUntil > .now
            print("epoch guard \(guardOn ? "on" : "off"): after FLUSHALL, tokens \(firstToken) → \(secondToken); first lease still valid at the second's grant: \(overlap)")
            if guardOn {
                #expect(!overlap, "a second holder while the first lease was valid")
                #expect(secondToken > firstToken, "the token went backwards across the flush")
            } else {
                // The hazard the guard closes, reproduced.
                #expect(overlap, "no second holder during the first lease: the fault did not take")
                #expect(secondToken <= firstToken)
            }
            try await lock.unlock(second)
        }
    }

    @Test("a majority restarted without persistence while a lease is held: with the guard, nobody gets in before that lease ended")
    func restartWithoutData() async throws {
        try await withLockNodes(3) { client, servers in
            let expiry = Duration.milliseconds(600)
            let lock = try client.makeLock("restarted", options: guarded(expiry: expiry, guard: expiry))
            let first = try await lock.lock()
            try await servers[0].restart(keepingData: false)
            try await servers[1].restart(keepingData: false)
            let second = try await lock.lock()
            #expect(first.validUntil <= .now, "a second holder while the first lease was valid")
            try await lock.unlock(second)
        }
    }

    @Test("a node that loses its data seeds its counter from a clock behind the one that issued the last token: a quorum with a node that refused that acquire still issues a larger token")
    func seedBehindAnEarlierToken() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("floor", options: guarded(expiry: .milliseconds(300), guard: .milliseconds(300), fencing: true))
            let settled = try await lock.lock()
            try await lock.unlock(settled)
            // Node 0's counter far ahead of the others', as after tokens issued from a clock
            // that ran 10,000 s ahead; node 2 taken by someone else, so it does not grant.
            let high = try #require(settled.fencingToken) + 10_000_000_000
            try await servers[0].set("redlock:fence", to: String(high))
            try await servers[2].set("floor", to: "someone else")
            let first = try await lock.lock()
            let firstToken = try #require(first.fencingToken)
            #expect(firstToken > high)
            try await lock.unlock(first)
            _ = try await servers[2].run(RedisCommand("DEL", "floor"))
            // Node 1, of that quorum, loses its data (its clock's seed is below the token), and
            // node 0, the other one, is taken: the next quorum is {1, 2}.
            try await servers[1].flushAll()
            try await servers[0].set("floor", to: "someone else")
            let second = try await lock.lock()
            let secondToken = try #require(second.fencingToken)
            print("fencing floor: tokens \(firstToken) → \(secondToken) across a data loss with a seed behind")
            #expect(secondToken > firstToken, "the token went backwards: node 2 was not raised to the token it did not grant")
            try await lock.unlock(second)
            _ = try await servers[0].run(RedisCommand("DEL", "floor"))
        }
    }

    @Test(
        "a node without a marker whose counter holds no integer (or a negative one) refuses for good, naming the counter, as the grant would: the seeding leaves the counter as it was",
        arguments: ["abc", "-1", " 5", "007", "1e3"]
    )
    func seedOverNoInteger(held: String) async throws {
        try await withLockNodes(3) { client, servers in
            for server in servers.prefix(2) { try await server.set("redlock:fence", to: held) }
            var options = guarded(expiry: .milliseconds(300), guard: .milliseconds(300), fencing: true)
            options.retryDelay = .constant(.milliseconds(50))
            let error = await #expect(throws: RedlockError.self) { try await client.makeLock("seeded", options: options).lock() }
            #expect(error?.message.contains("not retried: nodes refused for good") == true, "\(String(describing: error))")
            let causes = error?.nodes.filter { $0.node < 2 }.compactMap(\.cause.error) ?? []
            #expect(causes.count == 2 && causes.allSatisfy { $0.isPermanent && $0.message.contains("redlock:fence") }, "\(causes)")
            #expect(try await values(of: "redlock:fence", on: Array(servers.prefix(2))) == [held, held], "the counter was changed")
            #expect(try await values(of: "seeded", on: servers) == [nil, nil, nil])
        }
    }

    @Test("a marker of another type (a list) refuses for good naming the marker, on two nodes of three: not retried, no key set, the list left as it was (before: Redis's bare WRONGTYPE with the script's hash and line)")
    func markerOfAnotherType() async throws {
        try await withLockNodes(3) { client, servers in
            for server in servers.prefix(2) { _ = try await server.run(RedisCommand("RPUSH", "redlock:epoch", "x")) }
            var options = guarded(expiry: .milliseconds(300), guard: .milliseconds(300))
            options.retryDelay = .constant(.milliseconds(50))
            let error = await #expect(throws: RedlockError.self) { try await client.makeLock("listed", options: options).lock() }
            #expect(error?.message.contains("not retried: nodes refused for good") == true, "\(String(describing: error))")
            let causes = error?.nodes.filter { $0.node < 2 }.compactMap(\.cause.error) ?? []
            #expect(
                causes.count == 2 && causes.allSatisfy { $0.isPermanent && $0.message.contains("the epoch marker redlock:epoch holds another type") },
                "\(causes)"
            )
            for server in servers.prefix(2) {
                #expect(try await server.run(RedisCommand("LRANGE", "redlock:epoch", "0", "-1")) == .array([.bulkString(Array("x".utf8))]))
            }
            #expect(try await values(of: "listed", on: servers) == [nil, nil, nil])
        }
    }

    @Test(
        "a marker that is not two whole numbers (text, nan, inf, a float, a negative) is replaced and the node is young; a latest time in the future (the clock was set back) refuses until the clock passes it",
        arguments: ["not a number", "nan", "nan nan", "inf inf", "-5 -5", "1e3 1e3", "1700000000000"]
    )
    func oddMarkers(marker: String) async throws {
        try await withLockNodes(3) { client, servers in
            // The whole expiry as the attempt's budget: the refusals of nodes 0 and 1 must come
            // within it (40 ms, the suite's share, a loaded machine's late reply could miss).
            var options = guarded(expiry: .milliseconds(200), guard: .milliseconds(200))
            options.timeoutFactor = 1
            let lock = try client.makeLock("odd", options: options)
            // Settle every node's marker first. lock() returns once a quorum is old enough: a
            // node whose first script ran later (slow to connect on a loaded machine) is younger.
            let settled = try await lock.lock()
            try await lock.unlock(settled)
            let giveUp = ContinuousClock.now + .seconds(5)
            while try await epochs(on: servers).contains(where: { Int64(Date().timeIntervalSince1970 * 1000) - ($0 ?? .max) < 250 }) {
                try #require(ContinuousClock.now < giveUp, "a node's marker stays young")
                try await Task.sleep(for: .milliseconds(10))
            }
            try await servers[0].set("redlock:epoch", to: marker)
            try await servers[1].set("redlock:epoch", to: "1000 99999999999999")
            let error = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
            #expect(error?.code == .noQuorum)
            // Nodes 0 and 1 refuse; node 2 grants, or on a loaded machine may miss the budget,
            // which is no part of what is tested here.
            let failed = error?.nodes ?? []
            #expect(failed.filter { $0.node != 2 }.map(\.node) == [0, 1], "\(String(describing: error))")
            #expect(failed.allSatisfy { $0.node != 2 || $0.cause == .noAnswer }, "\(String(describing: error))")
            #expect(failed.first { $0.node == 0 }?.cause == .epochTooYoung, "\(String(describing: error))")
            #expect(failed.first { $0.node == 1 }?.cause.clockBehind ?? .zero > .seconds(1_000_000), "\(String(describing: error))")
            // The odd marker was replaced by a fresh one (made now); the one whose latest time
            // lies ahead is kept.
            let fresh = try #require(try await epochs(on: [servers[0]]).first ?? nil)
            #expect(abs(fresh - Int64(Date().timeIntervalSince1970 * 1000)) < 5_000)
            #expect(try await servers[1].value(of: "redlock:epoch") == "1000 99999999999999")
            #expect(try await values(of: "odd", on: servers) == [nil, nil, nil], "a refused attempt is released")
        }
    }

    @Test("an epoch guard shorter than the expiry, or not positive, is rejected before any node is asked")
    func validation() async throws {
        try await withLockNodes(1) { client, _ in
            for epochGuard in [Duration.milliseconds(100), .zero, .milliseconds(-1)] {
                var options = LockOptions(expiry: .milliseconds(500))
                options.epochGuard = epochGuard
                let error = #expect(throws: RedlockError.self) { try client.makeLock("bad", options: options) }
                #expect(error?.code == .invalidConfiguration)
                #expect(error?.message.contains("epochGuard") == true)
            }
        }
    }
}
