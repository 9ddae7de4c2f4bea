import MetricsTestKit
import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

@Suite("Fair locks: first come, first served across clients", .timeLimit(.minutes(2)))
struct FairLockTests {
    /// Fair options with a retry delay long enough that only a handoff can wake a waiter in time.
    private func patient(_ delay: Duration = .seconds(10)) -> LockOptions {
        LockOptions(expiry: .seconds(5), tries: 100, retryDelay: .constant(delay), timeoutFactor: 0.2, fair: true)
    }

    /// A releaser's and a waiter's options, 20 s and 1 s expiries: a key handed over lives the
    /// releaser's expiry, longer than the waiter's lease.
    private let longerExpiry = LockOptions(expiry: .seconds(20), tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.02, fair: true)
    private let shorterExpiry = LockOptions(expiry: .seconds(1), tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.2, fair: true)

    /// Returns once every node has run what `clients` sent it so far: a PING behind it on each
    /// client's connection to the node (the connections every lock of these tests uses) is
    /// answered. A `lock()` or `unlock()` returns once a quorum answered; its commands to the
    /// other nodes may still be on their way.
    private func settle(_ clients: [RedlockClient]) async throws {
        for client in clients {
            for node in client.nodes { _ = try await node.send(RedisCommand("PING")) }
        }
    }

    /// `lock`'s `lock()`, once its commands reached every node (``settle(_:)`` of `client`): its
    /// `SET` on a node that answered after the quorum could otherwise land after a waiter's first
    /// attempt there, and queue the holder or be taken by that attempt's clean-up.
    private func locked(_ lock: DistributedLock, in client: RedlockClient) async throws -> Lease {
        let lease = try await lock.lock()
        try await settle([client])
        return lease
    }

    /// The library's keys left on `servers` (the queue's keys go with their last entry), once
    /// `clients`' commands are done.
    private func leftovers(on servers: [RedisServer], after clients: [RedlockClient]) async throws -> [String] {
        try await settle(clients)
        var keys: [String] = []
        for server in servers {
            if case let .array(items) = try await server.run(RedisCommand("KEYS", "*")) { keys += items.compactMap(\.string) }
        }
        return keys
    }

    @Test("waiters in three other clients get the lock in the order their lock() began, each from the release that hands it over, and nothing is left behind")
    func order() async throws {
        try await withLockNodes(5) { client, servers in
            let others = try (0..<3).map { _ in try RedlockClient(nodes: servers.map { $0.configuration() }) }
            try await withTeardown {
                let holder = try client.makeLock("fair", options: patient())
                var lease = try await locked(holder, in: client)
                var waiting: [Task<ContinuousClock.Instant, any Error>] = []
                for other in others {
                    let lock = try other.makeLock("fair", options: patient())
                    waiting.append(Task {
                        let lease = try await lock.lock()
                        let acquiredAt = ContinuousClock.now
                        try await Task.sleep(for: .milliseconds(20))
                        try await lock.unlock(lease)
                        return acquiredAt
                    })
                    // In line (and its ticket taken) before the next one starts.
                    #expect(await eventually(within: .seconds(5)) { other.waitingLockCalls(for: "fair") == 1 })
                }
                let started = ContinuousClock.now
                try await holder.unlock(lease)
                var acquired: [ContinuousClock.Instant] = []
                for task in waiting { acquired.append(try await task.value) }
                // A waiter missed would sleep out 10 s.
                #expect(started.duration(to: .now) < .seconds(5))
                #expect(acquired == acquired.sorted(), "acquired out of line: \(acquired.map { started.duration(to: $0) })")
                // The holder is no exception: it queues behind nobody now, and the queue is gone.
                lease = try await holder.lock()
                try await holder.unlock(lease)
                do { let left = try await leftovers(on: servers, after: [client] + others); #expect(left == [], "\(left)") }
            } teardown: {
                for other in others { await other.shutdown() }
            }
        }
    }

    @Test("a waiter that gives up leaves the line: the next one gets the release, not the key handed to a caller that is gone")
    func giveUp() async throws {
        try await withLockNodes(5) { client, servers in
            let others = try (0..<2).map { _ in try RedlockClient(nodes: servers.map { $0.configuration() }) }
            try await withTeardown {
                let holder = try client.makeLock("fair-leave", options: patient())
                let lease = try await locked(holder, in: client)
                let quitter = try others[0].makeLock("fair-leave", options: patient())
                let quitting = Task { try await quitter.lock(timeout: .milliseconds(300)) }
                #expect(await eventually(within: .seconds(5)) { others[0].waitingLockCalls(for: "fair-leave") == 1 })
                let patientLock = try others[1].makeLock("fair-leave", options: patient())
                let next = Task { try await patientLock.lock() }
                #expect(await eventually(within: .seconds(5)) { others[1].waitingLockCalls(for: "fair-leave") == 1 })
                await #expect(throws: RedlockError.self) { try await quitting.value }
                // The first in line gave up; its leaving went out without waiting, so give it a
                // moment to land before the release.
                try await Task.sleep(for: .milliseconds(50))
                let released = ContinuousClock.now
                try await holder.unlock(lease)
                let handed = try await next.value
                // Handed to the quitter instead, the key would sit for 2 s, then wait out 10 s.
                #expect(released.duration(to: .now) < .seconds(1), "took \(released.duration(to: .now))")
                try await patientLock.unlock(handed)
                do { let left = try await leftovers(on: servers, after: [client] + others); #expect(left == [], "\(left)") }
            } teardown: {
                for other in others { await other.shutdown() }
            }
        }
    }

    /// How many of `servers` hold `lease`'s value with a life that reaches its `validUntil`.
    private func holding(_ lease: Lease, on servers: [RedisServer]) async throws -> Int {
        try await holdingReport(lease, on: servers).count
    }

    /// Per node: nil where `lease` is held as ``holding(_:on:)`` counts it, else what is there
    /// (the value and its time to live, for a failure's message).
    private func holdingReport(_ lease: Lease, on servers: [RedisServer]) async throws -> (count: Int, nodes: [String?]) {
        var nodes: [String?] = []
        for server in servers {
            let value = try await send("GET", lease.name, to: server).string
            let life = try await send("PTTL", lease.name, to: server).integer ?? -1
            let remaining = ContinuousClock.now.duration(to: lease.validUntil)
            nodes.append(value == lease.value && .milliseconds(life) >= remaining ? nil : "\(value ?? "nil") PTTL \(life) ms, lease \(remaining)")
        }
        return (nodes.filter { $0 == nil }.count, nodes)
    }

    /// One command on `server`, on a connection of its own.
    private func send(_ arguments: String..., to server: RedisServer) async throws -> RedisValue {
        try await server.run(RedisCommand(arguments))
    }

    /// How many scripts (`EVALSHA` and `EVAL` calls) `server` has run.
    private func scriptCalls(on server: RedisServer) async throws -> Int {
        try await calls(of: ["evalsha", "eval"], on: server)
    }

    /// How many calls of `commands` (lowercase names) `server` has run, those of scripts included.
    private func calls(of commands: [String], on server: RedisServer) async throws -> Int {
        let info = try await send("INFO", "commandstats", to: server).string ?? ""
        var calls = 0
        for line in info.split(whereSeparator: \.isNewline) {
            for command in commands.map({ "cmdstat_\($0):calls=" }) where line.hasPrefix(command) {
                calls += Int(line.dropFirst(command.count).prefix { $0.isNumber }) ?? 0
            }
        }
        return calls
    }

    /// A waiter in `other` for `name` with `options`, in line once this returns: with fast
    /// handoff, waiting again after every node confirmed each subscription its call makes
    /// (`channels`: by default both of a fair lock's, the release channel and the handoff one;
    /// a confirmation wakes it for one more attempt, but a fair waiter with a random value is
    /// not woken by its release channel's).
    private func waiter(
        in other: RedlockClient, for name: String, options: LockOptions, nodes: Int, channels: Int? = nil, ownValue: Bool = false
    ) async throws -> (DistributedLock, Task<Lease, any Error>) {
        try await queued(in: other, for: name, options: options, nodes: nodes, channels: channels, ownValue: ownValue) { try await $0.lock() }
    }

    /// ``waiter(in:for:options:nodes:channels:ownValue:)`` for a call of the caller's own on
    /// the lock (`call`: a `withLock`, say) that waits in `lock()`.
    private func queued<T: Sendable>(
        in other: RedlockClient, for name: String, options: LockOptions, nodes: Int, channels: Int? = nil, ownValue: Bool = false,
        _ call: @escaping @Sendable (DistributedLock) async throws -> T
    ) async throws -> (DistributedLock, Task<T, any Error>) {
        let before = other.subscriptionConfirmations(for: name)
        // Every waiter listens on the name's release channel; a fair one with a random value also
        // on its client's channel (confirmed once per client), one with a value of the caller's
        // own (`ownValue`) on its value's handoff channel. Tests whose calls share a channel
        // pass `channels`.
        let perNode = channels ?? (options.fair ? (ownValue || !other.listensForOwnHandoffs ? 2 : 1) : 1)
        let lock = try other.makeLock(name, options: options)
        let waiting = Task { try await call(lock) }
        let confirmations = options.fastHandoff ? perNode * nodes : 0
        #expect(await eventually(within: .seconds(5)) {
            other.subscriptionConfirmations(for: name) >= before + confirmations && other.waitingLockCalls(for: name) == 1
        })
        // Waiting after every confirmation: it waits out its retry delay (a confirmation's wake
        // is no release's, so no short retry follows its failed attempt to race the release).
        // Its attempts' last commands (a node that answered after the quorum, and the clean-up
        // behind it) are done too: else a release could pass over a node where it is not in
        // line yet. A look it makes meanwhile (a confirmation counted while it was between
        // attempts ends its next wait at once) is waited out the same way.
        var inLine = false
        for _ in 0..<3 where !inLine {
            try await settle([other])
            inLine = other.waitingLockCalls(for: name) == 1
            if !inLine { _ = await eventually(within: .seconds(5)) { other.waitingLockCalls(for: name) == 1 } }
        }
        #expect(inLine)
        return (lock, waiting)
    }

    /// Releases `lease` through `holder` and returns what `waiting` (a patient waiter) got: within
    /// 5 s, as a waiter that missed the handoff would sleep out its 10 s retry delay.
    private func handOver(_ lease: Lease, by holder: DistributedLock, to waiting: Task<Lease, any Error>, _ label: String) async throws -> Lease {
        let released = ContinuousClock.now
        try await holder.unlock(lease)
        let handed = try await waiting.value
        #expect(released.duration(to: .now) < .seconds(5), "\(label): took \(released.duration(to: .now))")
        return handed
    }

    @Test("a fair waiter hears the release of a lock object of the name that is not fair, in another client, rather than sleeping out its retry delay")
    func fairWaiterHearsPlainRelease() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                let name = "fair-after-plain"
                let plain = try client.makeLock(name, options: testOptions(expiry: .seconds(10)))
                let lease = try await locked(plain, in: client)
                // A plain release hands nothing over: it deletes and publishes on the release
                // channel only. The waiter's retry delay is 10 s.
                let (fair, waiting) = try await waiter(in: other, for: name, options: patient(), nodes: servers.count)
                let handed = try await handOver(lease, by: plain, to: waiting, "plain release")
                try await fair.unlock(handed)
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("a fair waiter in line is not woken for another attempt when the nodes confirm its name's subscription: it waits after its one attempt, and the release's handoff reaches it")
    func inLineWaiterIgnoresConfirmations() async throws {
        try await withLockNodes(3) { client, servers in
            let metrics = TestMetrics()
            try await withSecondClient(on: servers, metrics: metrics) { other in
                func attempts() -> Int64 { metrics.counterTotal(label: "redlock_acquire_attempts_total") }
                // A first wait subscribes the client's own channel; its confirmations wake every
                // waiter of the client, as they must (a handoff sent before them went unheard).
                let warmHolder = try client.makeLock("fair-confirm-warm", options: patient())
                let warmLease = try await locked(warmHolder, in: client)
                let (warm, warmWaiting) = try await waiter(in: other, for: "fair-confirm-warm", options: patient(), nodes: servers.count)
                try await warm.unlock(try await handOver(warmLease, by: warmHolder, to: warmWaiting, "warm-up"))
                #expect(other.listensForOwnHandoffs)

                let name = "fair-confirm"
                let holder = try client.makeLock(name, options: patient())
                let lease = try await locked(holder, in: client)
                let before = attempts()
                // Waiting once every node confirmed the name's release channel (the handoffs come
                // on the client's channel, confirmed already).
                let (lock, waiting) = try await waiter(in: other, for: name, options: patient(), nodes: servers.count)
                #expect(attempts() - before == 1, "woken for another attempt by the subscription's confirmations")
                let handed = try await handOver(lease, by: holder, to: waiting, "release")
                try await lock.unlock(handed)
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("a waiter that a quorum handed the lock to holds it without an attempt of its own, valid from its first attempt, and leaves nothing behind; its claim delay, set on the event loop's thread, never wakes the timer's")
    func handoffIsAGrant() async throws {
        try await withLockNodes(5) { client, servers in
            let metrics = TestMetrics()
            try await withSecondClient(on: servers, metrics: metrics) { other in
                // The waiter takes the handoffs as its grant when a quorum of them comes within
                // 2 ms of the first (else it claims by an attempt, as it should): on a loaded
                // machine the releaser's five writes can spread wider, so up to three rounds. A
                // round counts when it is a grant and its claim delay (set on the event loop's
                // thread by the first message) never woke the timer's thread: unless the quorum
                // came within the delay, the loop wakes the timer and the grant may still win.
                var outcome: (holder: DistributedLock, lock: DistributedLock, handed: Lease, lockedAt: ContinuousClock.Instant, released: ContinuousClock.Instant, round: Int)?
                var timerSignals = 0
                var grants: Int64 = 0
                for round in 1...3 {
                    let grantsBefore = metrics.counterTotal(label: "redlock_acquire_handoff_grants_total")
                    let holder = try client.makeLock("fair-grant-\(round)", options: patient())
                    let lease = try await locked(holder, in: client)
                    let lockedAt = ContinuousClock.now
                    let (lock, waiting) = try await waiter(in: other, for: "fair-grant-\(round)", options: patient(), nodes: servers.count)
                    let signalsBefore = other.timerSignalsFromLoop
                    let released = ContinuousClock.now
                    try await holder.unlock(lease)
                    let handed = try await waiting.value
                    // Past the 2 ms claim delay the first message set, and a turn of the loop.
                    try await Task.sleep(for: .milliseconds(20))
                    try await settle([other])
                    timerSignals = other.timerSignalsFromLoop - signalsBefore
                    grants = metrics.counterTotal(label: "redlock_acquire_handoff_grants_total") - grantsBefore
                    outcome = (holder, lock, handed, lockedAt, released, round)
                    if grants > 0, timerSignals == 0 { break }
                    try await lock.unlock(handed)
                }
                guard let (holder, lock, handed, lockedAt, released, round) = outcome else { return }
                // The claim delay was set on the event loop's thread (the messages' handler) and
                // ended with the wait: the loop never woke the waiter's timer thread for it.
                #expect(timerSignals == 0, "the loop signalled the timer's thread \(timerSignals) times in each of \(round) rounds")
                // Valid from its first attempt, before the release (a claim's lease would count
                // from the claim, after it), held from the handoff (a maximumHoldTime counts the
                // hold, not the wait in line).
                #expect(handed.acquiredAt > released, "held from the handoff")
                #expect(grants == 1, "no handoff grant in \(round) rounds")
                #expect(handed.validUntil <= released + .seconds(5) && handed.validUntil > lockedAt + .seconds(4), "valid from its first attempt")
                #expect(handed.validUntil > .now + .seconds(2))
                // Each node's key lives at least as long as the lease says: it was handed for the
                // releaser's expiry (5 s) since the release, after the lease's start.
                try await settle([client])
                let report = try await holdingReport(handed, on: servers)
                #expect(report.count == servers.count, "\(report.nodes) (lease \(handed.value), round \(round))")
                // It holds: nobody else gets it, and its unlock frees it for the next.
                await #expect(throws: RedlockError.self) { try await holder.tryLock() }
                try await lock.unlock(handed)
                try await holder.unlock(try await holder.tryLock())
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("handoffs from nodes a waiter's clean-up went to do not count: that clean-up lands after the handoff and deletes the key, and the waiter claims instead of taking the handoffs as grants")
    func cleanUpExcludesHandoffs() async throws {
        try await withLockNodes(3) { client, servers in
            // The waiter reaches every node through a proxy that can hold its commands back.
            let proxies = try servers.map { try FaultProxy.start(to: $0.endpoint) }
            defer { for proxy in proxies { proxy.stop() } }
            let metrics = TestMetrics()
            let other = try RedlockClient(nodes: proxies.map { RedisConnectionConfiguration(endpoint: $0.endpoint) }, metrics: metrics)
            try await withTeardown {
                let name = "fair-clean-up"
                let holder = try client.makeLock(name, options: patient())
                let lease = try await locked(holder, in: client)
                // Attempts every 300 ms, each at most 1 s (its budget); a place in line lives
                // 2.4 s past each attempt.
                let (lock, waiting) = try await waiter(in: other, for: name, options: patient(.milliseconds(300)), nodes: servers.count)
                func attempts() -> Int64 { metrics.counterTotal(label: "redlock_acquire_attempts_total") }
                let before = attempts()
                // The waiter's next attempt reaches no node (its commands are held; replies and
                // messages still flow): at its budget it fails, and its clean-up goes to every
                // node, held behind it.
                for proxy in proxies { proxy.set(.stall([.toNode])) }
                #expect(await eventually(within: .seconds(5)) { attempts() > before })
                // Meanwhile the release hands the lock to the waiter on every node (in line from
                // the attempt before); the messages come while that attempt is out, all at once.
                let heardBefore = other.handoffMessagesHeard
                try await holder.unlock(lease)
                try await settle([client])
                #expect(await eventually(within: .seconds(5)) { other.handoffMessagesHeard - heardBefore >= servers.count })
                // Every node had a clean-up of this lock() sent its way, so no handoff counts: the
                // waiter claims (an attempt of its own, held too). Counting them as grants, it
                // would return now with a lease whose keys its clean-ups are about to delete.
                #expect(await eventually(within: .seconds(5)) { attempts() >= before + 2 }, "no claim")
                for proxy in proxies { proxy.set(.none) }
                let handed = try await waiting.value
                #expect(metrics.counterTotal(label: "redlock_acquire_handoff_grants_total") == 0, "it claimed")
                try await settle([other])
                #expect(try await holding(handed, on: servers) >= 2, "a quorum holds the lease's key")
                try await lock.unlock(handed)
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            } teardown: {
                for proxy in proxies { proxy.set(.none) }
                await other.shutdown()
            }
        }
    }

    @Test("a free fair lock with nobody in line is granted and released without the line's commands; a caller that must queue uses them")
    func freeLockSkipsTheLine() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                let line = ["zadd", "zrem", "zscore", "time", "pttl"]
                func lineCalls() async throws -> Int {
                    var total = 0
                    for server in servers { total += try await calls(of: line, on: server) }
                    return total
                }
                for server in servers { _ = try await send("CONFIG", "RESETSTAT", to: server) }
                let lock = try client.makeLock("fair-free", options: patient())
                let lease = try await lock.lock()
                try await lock.unlock(lease)
                try await settle([client])
                #expect(try await lineCalls() == 0)
                #expect(try await calls(of: ["set"], on: servers[0]) == 1)
                #expect(try await calls(of: ["del"], on: servers[0]) == 1)
                // Taken: the attempt enters the line (and a single one leaves it again).
                let held = try await lock.lock()
                await #expect(throws: RedlockError.self) { try await other.makeLock("fair-free", options: patient()).tryLock() }
                try await settle([other])
                #expect(try await lineCalls() > 0)
                try await lock.unlock(held)
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("a handoff is published on the waiter's client's channel alone: another client waiting for the name reads none of it")
    func handoffReachesItsWaiterOnly() async throws {
        try await withLockNodes(5) { client, servers in
            let others = try (0..<2).map { _ in try RedlockClient(nodes: servers.map { $0.configuration() }) }
            try await withTeardown {
                let name = "fair-direct"
                let holder = try client.makeLock(name, options: patient())
                let lease = try await locked(holder, in: client)
                let (first, firstWaiting) = try await waiter(in: others[0], for: name, options: patient(), nodes: servers.count)
                let (second, secondWaiting) = try await waiter(in: others[1], for: name, options: patient(), nodes: servers.count)
                // Each client listens on its own channel (for every name); nobody on the shared one.
                for server in servers {
                    let shared = try await send("PUBSUB", "NUMSUB", "redlock:handoff:\(name)", to: server)
                    #expect(shared == .array([.bulkString(Array("redlock:handoff:\(name)".utf8)), .integer(0)]))
                    let own = try await send("PUBSUB", "CHANNELS", "redlock:handoff:~*", to: server)
                    guard case let .array(channels) = own else { Issue.record("\(own)"); continue }
                    let listened = Set(channels.compactMap(\.string))
                    #expect(others.allSatisfy { listened.contains($0.ownHandoffChannel) }, "\(listened)")
                }
                let heardBefore = others.map(\.handoffMessagesHeard)
                try await holder.unlock(lease)
                let firstLease = try await firstWaiting.value
                try await first.unlock(firstLease)
                let secondLease = try await secondWaiting.value
                // On each node the first handoff came before the second on the same connection: on
                // a shared channel the second client would have read the first one's message on
                // every node it heard the second on (a quorum, or one when it claims after 2 ms),
                // not at most one message per node.
                let heard = others[1].handoffMessagesHeard - heardBefore[1]
                #expect(heard >= 1 && heard <= servers.count, "\(heard) messages")
                #expect(others[0].handoffMessagesHeard - heardBefore[0] <= servers.count)
                try await second.unlock(secondLease)
                do { let left = try await leftovers(on: servers, after: [client] + others); #expect(left == [], "\(left)") }
            } teardown: {
                for other in others { await other.shutdown() }
            }
        }
    }

    @Test("a value of the caller's own goes to the channel its tag picks, in the script and in the client alike: its waiter hears the handoff")
    func customValueChannels() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                for (index, value) in ["0a1b~mine", "ABC~mine", "plain"].enumerated() {
                    let name = "fair-custom-\(index)"
                    let holder = try client.makeLock(name, options: patient())
                    let lease = try await locked(holder, in: client)
                    var options = patient()
                    options.value = .fixed(value)
                    let (lock, waiting) = try await waiter(in: other, for: name, options: options, nodes: servers.count, ownValue: true)
                    let heardBefore = other.handoffMessagesHeard
                    let handed = try await handOver(lease, by: holder, to: waiting, value)
                    #expect(other.handoffMessagesHeard - heardBefore >= 1, "\(value)")
                    try await lock.unlock(handed)
                }
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("values of a generator of the caller's own, each with a tag of its own, hear their handoffs, and each call's channel is unsubscribed when it returns")
    func generatorChannelsDoNotGrow() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                let name = "fair-generated"
                let counter = Counter()
                var options = patient()
                options.value = LockValue { String(counter.next(), radix: 16) + "~worker" }
                let holder = try client.makeLock(name, options: patient())
                for round in 0..<8 {
                    let lease = try await locked(holder, in: client)
                    // Later rounds subscribe the new value's handoff channel only: the release
                    // channel stays subscribed while the name is in use.
                    let (lock, waiting) = try await waiter(
                        in: other, for: name, options: options, nodes: servers.count, channels: round == 0 ? 2 : 1
                    )
                    let handed = try await handOver(lease, by: holder, to: waiting, "round \(round)")
                    try await lock.unlock(handed)
                }
                // Each call's channel went with it, well before the name's subscriptions linger out
                // (2 s after its last lock() returned; they would take every channel with them).
                let lingerNotOver = ContinuousClock.now + .seconds(1)
                for server in servers {
                    let stillThere = lingerNotOver
                    var channels: [String] = []
                    repeat {
                        guard case let .array(items) = try await send("PUBSUB", "CHANNELS", "redlock:handoff:~*", to: server) else { break }
                        // The holder's client listens on its own channel until it shuts down.
                        channels = items.compactMap(\.string).filter { $0 != client.ownHandoffChannel }
                        if channels.isEmpty { break }
                        try await Task.sleep(for: .milliseconds(5))
                    } while ContinuousClock.now < stillThere
                    #expect(channels == [], "\(channels)")
                }
            }
        }
    }

    @Test("two names that are one text in two Unicode forms are two locks with their own channels: each waiter hears its own handoff")
    func equivalentNames() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                for fair in [true, false] {
                    var options = patient()
                    options.fair = fair
                    let names = ["caf\u{E9}-\(fair)", "cafe\u{301}-\(fair)"]
                    var leases: [(DistributedLock, Lease)] = []
                    var waiting: [(DistributedLock, Task<Lease, any Error>)] = []
                    for name in names {
                        let holder = try client.makeLock(name, options: options)
                        leases.append((holder, try await locked(holder, in: client)))
                        waiting.append(try await waiter(in: other, for: name, options: options, nodes: servers.count))
                    }
                    for (index, (holder, lease)) in leases.enumerated() {
                        let handed = try await handOver(lease, by: holder, to: waiting[index].1, "\(names[index].unicodeScalars.map(\.value))")
                        try await waiting[index].0.unlock(handed)
                    }
                }
            }
        }
    }

    @Test("a waiter handed the lock after more than half its validity claims it instead: its lease counts from the claim")
    func longWaitClaims() async throws {
        try await withLockNodes(3) { client, servers in
            let metrics = TestMetrics()
            try await withSecondClient(on: servers, metrics: metrics) { other in
                let options = LockOptions(expiry: .seconds(2), tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.2, fair: true)
                let holder = try client.makeLock("fair-late", options: options)
                let lease = try await locked(holder, in: client)
                let (lock, waiting) = try await waiter(in: other, for: "fair-late", options: options, nodes: servers.count)
                // Its first attempt is over 1.1 s old at the handoff: less than half of 2 s left.
                try await Task.sleep(for: .milliseconds(1_100))
                let released = ContinuousClock.now
                try await holder.unlock(lease)
                let handed = try await waiting.value
                // A grant's validity would count from the first attempt, 1.1 s before the release.
                #expect(handed.acquiredAt >= released && handed.validUntil > released + .seconds(1), "dated from the claim")
                #expect(metrics.counterTotal(label: "redlock_acquire_handoff_grants_total") == 0)
                #expect(handed.validUntil > .now + .seconds(1))
                try await lock.unlock(handed)
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("withLock on a lease a fair release handed over with the releaser's shorter expiry extends it in time (it was extended at a third of the releaser's expiry, past the safety margin's deadline, and lost), and its maximumHoldTime counts from the handoff, not from the wait in line (it counted the wait)", arguments: [
        // Handed for 1.2 s at once (over half the waiter's 2 s: a grant): the first extension
        // is due a third of 2 s before the deadline, 667 ms; a third of 1.2 s, 400 ms, came
        // after the watch's 500 ms margin.
        (releaser: 1_200, waitInLine: 0, safetyMargin: 500),
        // 400 ms in line, then handed for 2 s: the 1.5 s cap ended the body at 1.1 s.
        (releaser: 2_000, waitInLine: 400, safetyMargin: 0),
    ])
    func handedScope(_ setting: (releaser: Int, waitInLine: Int, safetyMargin: Int)) async throws {
        try await withLockNodes(3) { client, servers in
            let metrics = TestMetrics()
            try await withSecondClient(on: servers, metrics: metrics) { other in
                let releasing = LockOptions(
                    expiry: .milliseconds(setting.releaser), tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.2, fair: true
                )
                let waiting = LockOptions(expiry: .seconds(2), tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.2, fair: true)
                let margin: Duration? = setting.safetyMargin > 0 ? .milliseconds(setting.safetyMargin) : nil
                var granted = false
                // A grant needs a quorum of handoffs within 2 ms (else the waiter claims, and
                // the lease is its own): up to three rounds on a loaded machine.
                for round in 1...3 where !granted {
                    let grantsBefore = metrics.counterTotal(label: "redlock_acquire_handoff_grants_total")
                    let name = "fair-scope-\(round)"
                    let holder = try client.makeLock(name, options: releasing)
                    let lease = try await locked(holder, in: client)
                    let seen = ScopeSample()
                    let (_, scope) = try await queued(in: other, for: name, options: waiting, nodes: servers.count) { lock in
                        do {
                            try await lock.withLock(maximumHoldTime: .milliseconds(1_500), safetyMargin: margin) { held in
                                seen.began.withLock { $0 = .now }
                                var last = held.lease.validUntil
                                while true {
                                    try await Task.sleep(for: .milliseconds(20))
                                    if held.lease.validUntil != last { seen.extensions.add(1, ordering: .relaxed); last = held.lease.validUntil }
                                }
                            }
                            return (RedlockError.Code?.none, Duration.zero)
                        } catch let error as RedlockError {
                            return (error.code, seen.began.withLock { $0 }.map { $0.duration(to: .now) } ?? .zero)
                        }
                    }
                    if setting.waitInLine > 0 { try await Task.sleep(for: .milliseconds(setting.waitInLine)) }
                    try await holder.unlock(lease)
                    let (code, ran) = try await scope.value
                    granted = metrics.counterTotal(label: "redlock_acquire_handoff_grants_total") > grantsBefore
                    #expect(code == .holdTimeExceeded, "round \(round): \(String(describing: code)) after \(ran)")
                    #expect(ran >= .milliseconds(1_450), "round \(round): the body ran \(ran)")
                    #expect(seen.extensions.load(ordering: .relaxed) >= 1, "round \(round)")
                }
                #expect(granted, "no handoff grant in 3 rounds")
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("a waiter whose expiry is shorter than the releaser's claims what it is handed: the keys live its own expiry, so a waiter that dies holds the name no longer than that")
    func shortExpiryWaiterClaims() async throws {
        try await withLockNodes(3) { client, servers in
            let metrics = TestMetrics()
            try await withSecondClient(on: servers, metrics: metrics) { other in
                let (long, short) = (longerExpiry, shorterExpiry)
                let holder = try client.makeLock("fair-short", options: long)
                let lease = try await locked(holder, in: client)
                let (lock, waiting) = try await waiter(in: other, for: "fair-short", options: short, nodes: servers.count)
                try await holder.unlock(lease)
                let handed = try await waiting.value
                #expect(metrics.counterTotal(label: "redlock_acquire_handoff_grants_total") == 0, "counted a 20 s key as a grant")
                // Equal expiries that are no whole number of ms (the message says whole ms,
                // rounded up) still count as grants. (A quorum of messages must come within 2 ms:
                // on a loaded machine that may take a few rounds, as in handoffIsAGrant.)
                let odd = LockOptions(expiry: .microseconds(5_000_500), tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.2, fair: true)
                for round in 1...3 where metrics.counterTotal(label: "redlock_acquire_handoff_grants_total") == 0 {
                    let oddHolder = try client.makeLock("fair-odd-\(round)", options: odd)
                    let oddLease = try await locked(oddHolder, in: client)
                    let (oddLock, oddWaiting) = try await waiter(in: other, for: "fair-odd-\(round)", options: odd, nodes: servers.count)
                    try await oddHolder.unlock(oddLease)
                    try await oddLock.unlock(try await oddWaiting.value)
                }
                #expect(metrics.counterTotal(label: "redlock_acquire_handoff_grants_total") == 1, "equal expiries counted no grant in 3 rounds")
                // Each node's key lives the waiter's expiry (1 s), not the releaser's 20 s; a node
                // the release reached after the waiter's claim has none (the waiter left the line
                // there: lateHandoffIsTrimmed).
                try await settle([client, other])
                for server in servers {
                    let life = try await server.run(RedisCommand("PTTL", "fair-short")).integer ?? -1
                    #expect(life == -2 || (life > 0 && life <= 1_000), "PTTL \(life) ms on \(server.port)")
                }
                try await lock.unlock(handed)
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("a waiter that got the lock leaves the line where its claim was refused: a release reaching such a node later hands it no key that outlives the waiter's expiry")
    func lateHandoffIsTrimmed() async throws {
        try await withLockNodes(3) { client, servers in
            let (long, short) = (longerExpiry, shorterExpiry)
            // Two holders with a 20 s expiry: one on nodes 0 and 1, one on node 2 alone.
            let pair = try RedlockClient(nodes: servers.prefix(2).map { $0.configuration() })
            let single = try RedlockClient(nodes: [servers[2].configuration()])
            try await withTeardown {
                try await withSecondClient(on: servers) { other in
                    let first = try pair.makeLock("fair-late", options: long)
                    let firstLease = try await locked(first, in: pair)
                    let second = try single.makeLock("fair-late", options: long)
                    let secondLease = try await locked(second, in: single)
                    let (lock, waiting) = try await waiter(in: other, for: "fair-late", options: short, nodes: servers.count)
                    // Nodes 0 and 1 hand over a 20 s key, which the waiter claims (1 s); node 2
                    // refuses the claim: the lock is the waiter's on two of three.
                    try await first.unlock(firstLease)
                    let handed = try await waiting.value
                    try await settle([other])
                    // Node 2's holder releases afterwards: the waiter is no longer in line there.
                    try await second.unlock(secondLease)
                    try await settle([single])
                    let value = try await servers[2].run(RedisCommand("GET", "fair-late")).string
                    let life = try await servers[2].run(RedisCommand("PTTL", "fair-late")).integer ?? -1
                    #expect(value == nil || (value == handed.value && life <= 1_000), "\(value ?? "nil"), PTTL \(life) ms on node 2")
                    try await lock.unlock(handed)
                    do { let left = try await leftovers(on: servers, after: [client, other, pair, single]); #expect(left == [], "\(left)") }
                }
            } teardown: {
                await pair.shutdown()
                await single.shutdown()
            }
        }
    }

    @Test("a fair lock() that gets the lock at its first attempt leaves the line where that attempt was refused, whether those nodes answered before the quorum or after: a holder's release there hands it nothing")
    func firstAttemptLeavesTheLine() async throws {
        try await withLockNodes(5) { client, servers in
            let (long, short) = (longerExpiry, shorterExpiry)
            // A holder with a 20 s expiry on nodes 3 and 4 only; nodes 0 to 2 are free.
            let pair = try RedlockClient(nodes: servers.suffix(2).map { $0.configuration() })
            try await withTeardown {
                try await withSecondClient(on: servers) { other in
                    let holder = try pair.makeLock("fair-first", options: long)
                    let holderLease = try await locked(holder, in: pair)
                    let lock = try other.makeLock("fair-first", options: short)
                    let lease = try await lock.lock()
                    // Its leave goes out when nodes 3 and 4 answer, which may be after lock()
                    // returned: once all its commands so far are done, those it sent then are too.
                    try await settle([other])
                    try await settle([other])
                    try await holder.unlock(holderLease)
                    try await settle([pair])
                    for server in servers.suffix(2) {
                        let value = try await server.run(RedisCommand("GET", "fair-first")).string
                        let life = try await server.run(RedisCommand("PTTL", "fair-first")).integer ?? -1
                        #expect(value == nil, "\(value ?? "nil"), PTTL \(life) ms on \(server.port): handed to a caller that holds the lock")
                    }
                    try await lock.unlock(lease)
                    do { let left = try await leftovers(on: servers, after: [client, other, pair]); #expect(left == [], "\(left)") }
                }
            } teardown: {
                await pair.shutdown()
            }
        }
    }

    @Test("a fair lock() leaves the line also where its winning attempt ran but the reply never came (held by the network past the reply timeout): the leave, lost with the connection, goes first on the next one, and a release there later hands it nothing")
    func timedOutNodeLeavesTheLine() async throws {
        try await withLockNodes(3) { client, servers in
            // The waiter reaches node 2 through a proxy that can hold the node's replies back
            // while its commands still get through (they run on the node at once).
            let proxy = try FaultProxy.start(to: servers[2].endpoint)
            defer { proxy.stop() }
            let nodes = servers.prefix(2).map { $0.configuration() } + [RedisConnectionConfiguration(endpoint: proxy.endpoint)]
            let other = try RedlockClient(nodes: nodes)
            let single = try RedlockClient(nodes: [servers[2].configuration()])
            try await withTeardown {
                // A holder with a 20 s expiry on node 2 alone.
                let holder = try single.makeLock("fair-timed-out", options: longerExpiry)
                let holderLease = try await locked(holder, in: single)
                _ = try await other.nodes[2].send(RedisCommand("PING"))
                proxy.set(.stall([.toClient]))
                // Nodes 0 and 1 grant; node 2 runs the attempt (which puts the caller in line) but
                // its answer is held until the reply timeout (1 s) ends the connection.
                // (A 6 s lease: it outlasts the wait for that timeout and the failed connect.)
                var waiterOptions = shorterExpiry
                waiterOptions.expiry = .seconds(6)
                let lock = try other.makeLock("fair-timed-out", options: waiterOptions)
                let lease = try await lock.lock()
                func inLine() async throws -> Bool {
                    try await servers[2].run(RedisCommand("ZSCORE", "redlock:queue:fair-timed-out", lease.value)).string != nil
                }
                // The attempt reaches node 2 through the proxy's thread, maybe after lock()
                // returned (on a loaded machine it did): the test looks every 5 ms, for at most
                // 5 s, well within the 1 s reply timeout before the leave unless the machine
                // stalls that long.
                let queuedBy = ContinuousClock.now + .seconds(5)
                while try await !inLine(), ContinuousClock.now < queuedBy { try await Task.sleep(for: .milliseconds(5)) }
                #expect(try await inLine(), "the attempt queued on node 2")
                // The leave is queued once the timeout counts as node 2's late answer, and lost
                // with the connect that cannot complete its handshake while the replies are held
                // (no event tells the test: it looks every 5 ms). The path heals; the next
                // command on that connection sends the leave first.
                #expect(await eventually(within: .seconds(10)) { other.nodes[2].pendingReplays > 0 }, "the leave waits for the next connection")
                proxy.set(.none)
                #expect(try await other.nodes[2].send(RedisCommand("PING")) == .simpleString("PONG"))
                #expect(other.nodes[2].pendingReplays == 0)
                let giveUp = ContinuousClock.now + .seconds(5)
                while try await inLine(), ContinuousClock.now < giveUp { try await Task.sleep(for: .milliseconds(5)) }
                #expect(try await !inLine(), "still in line on node 2 (the entry lives 11 s)")
                try await holder.unlock(holderLease)
                try await settle([single])
                let value = try await servers[2].run(RedisCommand("GET", "fair-timed-out")).string
                let life = try await servers[2].run(RedisCommand("PTTL", "fair-timed-out")).integer ?? -1
                #expect(value == nil, "\(value ?? "nil"), PTTL \(life) ms on node 2: handed to a caller that holds the lock")
                try await lock.unlock(lease)
                do { let left = try await leftovers(on: servers, after: [client, other, single]); #expect(left == [], "\(left)") }
            } teardown: {
                proxy.set(.none)
                await other.shutdown()
                await single.shutdown()
            }
        }
    }

    @Test("a holder that died hands nothing over: the first in line, told how long its key lives, gets the lock when the key expires, not at its 10 s retry delay; the one behind it keeps waiting")
    func deadHolderFirstInLine() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                // The dead holder: its key, on every node, with 1.5 s to live from after `started`
                // (counted before the SETs: each goes over a new connection, which takes its time).
                let started = ContinuousClock.now
                for server in servers { _ = try await server.run(RedisCommand("SET", "fair-dead", "gone", "PX", "1500")) }
                let (lock, waiting) = try await waiter(in: client, for: "fair-dead", options: patient(), nodes: servers.count)
                let (_, behind) = try await waiter(in: other, for: "fair-dead", options: patient(), nodes: servers.count)
                let lease = try await waiting.value
                let took = started.duration(to: .now)
                #expect(took >= .milliseconds(1_400) && took < .seconds(5), "got it after \(took)")
                // Second in line: refused while the first's entry lives, it was told nothing and sleeps on.
                #expect(other.waitingLockCalls(for: "fair-dead") == 1)
                try await lock.unlock(lease)
                let next = try await behind.value
                try await other.makeLock("fair-dead", options: patient()).unlock(next)
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("behind a live holder that extends, the first in line looks at each end of the key's life, but those looks are no tries: tries × retry delay still bounds its lock()")
    func keyLooksAreNoTries() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                let holder = try client.makeLock("fair-live", options: LockOptions(expiry: .milliseconds(600), timeoutFactor: 0.5, fair: true))
                let lease = try await locked(holder, in: client)
                // Extended every 50 ms, a failed extension tried again at the next (a loaded
                // machine may hold one up): the key lapses only after a 550 ms stall.
                let extending = Task {
                    var current = lease
                    while !Task.isCancelled {
                        try await Task.sleep(for: .milliseconds(50))
                        if let extended = try? await holder.extend(current) { current = extended }
                    }
                    return current
                }
                let started = ContinuousClock.now
                let options = LockOptions(expiry: .seconds(5), tries: 3, retryDelay: .constant(.seconds(1)), timeoutFactor: 0.2, fair: true)
                let error = await #expect(throws: RedlockError.self) { try await other.makeLock("fair-live", options: options).lock() }
                let took = started.duration(to: .now)
                #expect(error?.code == .taken, "\(String(describing: error))")
                // Three tries, two waits of 1 s between them: the looks every ≤ 600 ms in those
                // waits did not use the tries up.
                #expect(took >= .milliseconds(1_950), "gave up after \(took)")
                extending.cancel()
                if let current = try? await extending.value { try? await holder.unlock(current) }
            }
        }
    }

    @Test("a stopped node known down does not hold up a fair waiter's failed attempt for a budget: the handoff of the nodes that answer reaches it at once")
    func stoppedNodeDoesNotHoldUpTheWaiter() async throws {
        try await withLockNodes(3) { client, servers in
            let metrics = TestMetrics()
            try await withSecondClient(on: servers, metrics: metrics) { other in
                // A 2 s attempt budget.
                let options = LockOptions(expiry: .seconds(5), tries: 100, retryDelay: .constant(.seconds(10)), timeoutFactor: 0.4, fair: true)
                try await servers[2].pause()
                // The waiter's client learns that node 2 does not answer: a command there times out.
                _ = try? await other.makeLock("fair-stopped-probe", options: LockOptions(expiry: .seconds(5), timeoutFactor: 0.4)).tryLock()
                #expect(await eventually(within: .seconds(10)) { other.nodeIsDown(2) })
                // The handoffs of nodes 0 and 1 are the waiter's grant when both come within 2 ms
                // of the first. Else it claims by an attempt, which may reach node 1 before the
                // release there: one grant, one refusal, and such a split waits for node 2's 1 s
                // reply timeout, as README says. On a loaded machine the two writes can spread
                // wider, so up to three rounds; a round counts when the handoffs were the grant.
                var granted = false
                for round in 1...3 {
                    let name = "fair-stopped-\(round)"
                    let grantsBefore = metrics.counterTotal(label: "redlock_acquire_handoff_grants_total")
                    let holder = try client.makeLock(name, options: options)
                    let lease = try await holder.lock()
                    for node in client.nodes.prefix(2) { _ = try await node.send(RedisCommand("PING")) }
                    let waiting = Task { try await other.makeLock(name, options: options).lock() }
                    // In line on the two nodes that answer, once its first attempt failed there, and
                    // subscribed there (its client's channel and the name's release channel).
                    var inLine = false
                    let giveUp = ContinuousClock.now + .seconds(5)
                    while !inLine, ContinuousClock.now < giveUp {
                        var count = 0
                        for server in servers.prefix(2) where try await server.run(RedisCommand("ZCARD", "redlock:queue:\(name)")).integer == 1 {
                            count += 1
                        }
                        inLine = count == 2 && other.subscriptionConfirmations(for: name) >= (round == 1 ? 4 : 2)
                        if !inLine { try await Task.sleep(for: .milliseconds(5)) }
                    }
                    #expect(inLine, "round \(round)")
                    // No attempt in flight (each confirmation prompts a look): one the release met on
                    // its way would be granted by one node and refused by the other, and such a split
                    // waits for node 2's answer (its 1 s reply timeout). Quiet: the waiter is back in
                    // its wait, and no attempt began across a round trip to the nodes that answer.
                    var quiet = false
                    while !quiet, ContinuousClock.now < giveUp {
                        let attempts = metrics.counterTotal(label: "redlock_acquire_attempts_total")
                        for node in other.nodes.prefix(2) { _ = try await node.send(RedisCommand("PING")) }
                        quiet = other.waitingLockCalls(for: name) == 1
                            && metrics.counterTotal(label: "redlock_acquire_attempts_total") == attempts
                    }
                    #expect(quiet, "round \(round)")
                    let released = ContinuousClock.now
                    try await holder.unlock(lease)
                    let handed = try await waiting.value
                    let took = released.duration(to: .now)
                    granted = metrics.counterTotal(label: "redlock_acquire_handoff_grants_total") > grantsBefore
                    if granted {
                        // Awaiting the clean-up of its failed attempt on node 2 would have held it
                        // up for the budget, or the connection's 1 s reply timeout, whichever
                        // ends first.
                        #expect(took < .milliseconds(500), "round \(round): \(took)")
                    }
                    try await other.makeLock(name, options: options).unlock(handed)
                    if granted { break }
                }
                #expect(granted, "no round's handoffs made a grant")
                try servers[2].resume()
            }
        }
    }

    @Test("a handoff nobody hears lives twice the attempt budget, not a whole expiry, until the waiter claims it at its retry")
    func unheardHandoffIsShort() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                let holder = try client.makeLock("fair-deaf", options: patient())
                let lease = try await locked(holder, in: client)
                // This waiter does not listen (no subscription anywhere): it claims at its retry.
                var deaf = patient(.seconds(3))
                deaf.fastHandoff = false
                let (lock, waiting) = try await waiter(in: other, for: "fair-deaf", options: deaf, nodes: servers.count)
                try await holder.unlock(lease)
                for server in servers {
                    // unlock() returns once a quorum released: a node may run the release after
                    // this connection's first read. Read once the key there is no longer the holder's.
                    let handedOver = ContinuousClock.now.advanced(by: .seconds(2))
                    while try await send("GET", "fair-deaf", to: server).string == lease.value, ContinuousClock.now < handedOver {
                        try await Task.sleep(for: .milliseconds(1))
                    }
                    let life = try await send("PTTL", "fair-deaf", to: server).integer ?? -1
                    // Budget 1 s (5 s × 0.2): 2 s, not 5 s.
                    #expect(life > 0 && life <= 2_000, "\(life) ms")
                }
                let handed = try await waiting.value
                try await lock.unlock(handed)
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("tryLock() never enters the line: a failed one leaves no entry behind, a waiter after it gets the release, and a tryLock() loop succeeds once the lock is free")
    func tryLockDoesNotQueue() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                let holder = try client.makeLock("fair-try", options: patient())
                let lease = try await locked(holder, in: client)
                let trying = try other.makeLock("fair-try", options: patient())
                for _ in 0..<5 { await #expect(throws: RedlockError.self) { try await trying.tryLock() } }
                for server in servers {
                    let entries = try await send("ZRANGE", "redlock:queue:fair-try", "0", "-1", "WITHSCORES", to: server)
                    #expect(entries == .array([]), "\(entries)")
                }
                let waiter = try other.makeLock("fair-try", options: patient())
                let waiting = Task { try await waiter.lock() }
                #expect(await eventually(within: .seconds(5)) { other.waitingLockCalls(for: "fair-try") == 1 })
                let released = ContinuousClock.now
                try await holder.unlock(lease)
                let next = try await waiting.value
                #expect(released.duration(to: .now) < .seconds(2), "handed to a tryLock() that was gone")
                try await waiter.unlock(next)
                // Free now: the first tryLock() gets it.
                try await trying.unlock(try await trying.tryLock())
                do { let left = try await leftovers(on: servers, after: [client, other]); #expect(left == [], "\(left)") }
            }
        }
    }

    @Test("a handoff heard from every node while the claim is in flight wakes the waiter once more at most: it does not spin when the claim fails")
    func handoffHeardOnce() async throws {
        try await withLockNodes(3) { client, servers in
            try await withSecondClient(on: servers) { other in
                let holder = try client.makeLock("fair-spin", options: patient())
                let lease = try await locked(holder, in: client)
                var options = patient(.milliseconds(500))
                options.value = .fixed("W")
                let waiter = try other.makeLock("fair-spin", options: options)
                let waiting = Task { try await waiter.lock(timeout: .seconds(30)) }
                #expect(await eventually(within: .seconds(5)) { other.waitingLockCalls(for: "fair-spin") == 1 })
                // A handoff that did not happen (the holder still holds): each claim fails.
                let before = try await scriptCalls(on: servers[0])
                for server in servers { _ = try await send("PUBLISH", "redlock:handoff:fair-spin", "W", to: server) }
                try await Task.sleep(for: .milliseconds(1_500))
                let calls = try await scriptCalls(on: servers[0]) - before
                // About one attempt per 500 ms retry delay, a few more for the wake-ups; spinning
                // makes thousands.
                #expect(calls < 20, "\(calls) scripts in 1.5 s")
                try await holder.unlock(lease)
                try await waiter.unlock(try await waiting.value)
            }
        }
    }

    @Test("a waiter cancelled while its claim is in flight passes the lock on to the next in line")
    func cancelledClaimPassesOn() async throws {
        try await withLockNodes(3) { client, servers in
            let others = try (0..<2).map { _ in try RedlockClient(nodes: servers.map { $0.configuration() }) }
            try await withTeardown {
                for round in 0..<6 {
                    let name = "fair-cancel-\(round)"
                    let holder = try client.makeLock(name, options: patient())
                    let lease = try await locked(holder, in: client)
                    let first = try others[0].makeLock(name, options: patient())
                    let cancelled = Task { try await first.lock() }
                    #expect(await eventually(within: .seconds(5)) { others[0].waitingLockCalls(for: name) == 1 })
                    let second = try others[1].makeLock(name, options: patient())
                    let next = Task { try await second.lock() }
                    #expect(await eventually(within: .seconds(5)) { others[1].waitingLockCalls(for: name) == 1 })
                    let released = ContinuousClock.now
                    try await holder.unlock(lease)
                    cancelled.cancel()
                    if let won = try? await cancelled.value { try await first.unlock(won) }
                    let lease2 = try await next.value
                    #expect(released.duration(to: .now) < .seconds(3), "round \(round): the lock sat \(released.duration(to: .now))")
                    try await second.unlock(lease2)
                }
                do { let left = try await leftovers(on: servers, after: [client] + others); #expect(left == [], "\(left)") }
            } teardown: {
                for other in others { await other.shutdown() }
            }
        }
    }

    @Test("48 contenders in 4 clients, 20 ms holds, default retry delays: nobody gives up, and the longest wait is at most twice the mean")
    func fairness() async throws {
        try await withLockNodes(5) { client, servers in
            let others = try (0..<3).map { _ in try RedlockClient(nodes: servers.map { $0.configuration() }) }
            try await withTeardown {
                let clients = [client] + others
                let until = ContinuousClock.now + .seconds(3)
                let locks = try (0..<48).map { try clients[$0 % clients.count].makeLock("fair-48", options: LockOptions(fair: true)) }
                let (all, failures) = await withTaskGroup(of: ([Duration], String?).self) { group in
                    for lock in locks {
                        group.addTask {
                            var waits: [Duration] = []
                            while ContinuousClock.now < until {
                                let asked = ContinuousClock.now
                                do {
                                    let lease = try await lock.lock()
                                    waits.append(asked.duration(to: .now))
                                    try await Task.sleep(for: .milliseconds(20))
                                    try await lock.unlock(lease)
                                } catch {
                                    return (waits, "\(error)")
                                }
                            }
                            return (waits, nil)
                        }
                    }
                    var all: [Duration] = []
                    var failures: [String] = []
                    for await (waits, failure) in group {
                        all += waits
                        if let failure { failures.append(failure) }
                    }
                    return (all, failures)
                }
                #expect(failures == [])
                let mean = all.reduce(Duration.zero, +) / all.count
                let longest = all.max() ?? .zero
                print("fair, 48 contenders: \(all.count) acquisitions, mean wait \(mean), longest \(longest)")
                #expect(all.count >= 48)
                #expect(longest <= mean * 2, "longest wait \(longest), mean \(mean)")
                do { let left = try await leftovers(on: servers, after: [client] + others); #expect(left == [], "\(left)") }
            } teardown: {
                for other in others { await other.shutdown() }
            }
        }
    }
}

/// A thread-safe counter for value generators.
private final class Counter: Sendable {
    private let value = Mutex(0)
    func next() -> Int { value.withLock { $0 += 1; return $0 } }
}

/// Runs `body` with a second client on `servers` (as another process would have), with
/// `metrics` when given and a reply timeout of `commandTimeout`, and shuts it down after.
/// What a scope's body saw: when it began, and how many extensions it noticed.
private final class ScopeSample: Sendable {
    let began = Mutex<ContinuousClock.Instant?>(nil)
    let extensions = Atomic<Int>(0)
}

func withSecondClient<T>(
    on servers: [RedisServer], metrics: TestMetrics? = nil, commandTimeout: Duration = .seconds(1), _ body: (RedlockClient) async throws -> T
) async throws -> T {
    let nodes = servers.map { $0.configuration(commandTimeout: commandTimeout) }
    let other = try metrics.map { try RedlockClient(nodes: nodes, metrics: $0) } ?? RedlockClient(nodes: nodes)
    return try await withTeardown {
        try await body(other)
    } teardown: {
        await other.shutdown()
    }
}
