@testable import Redlock
import Dispatch
import Logging
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

@Suite("Local coordination")
struct LocalCoordinationTests {
    /// A coordination of `nodes` nodes never connected to (nothing is subscribed to or sent),
    /// and its timer.
    private func coordination(nodes: Int = 0) -> (LocalCoordination, DeadlineTimer) {
        let timer = DeadlineTimer()
        let connections = (0..<nodes).map { _ in
            RedisConnection(configuration: RedisConnectionConfiguration(endpoint: .hostname("127.0.0.1", port: 1)))
        }
        return (LocalCoordination(nodes: connections, sender: FanOutSender(nodes: [], acknowledgedNodes: [], deadlines: timer), timer: timer), timer)
    }

    /// An attempt that asks no node: sending it finishes it at once.
    private func emptyAttempt() -> PreparedFanOut {
        PreparedFanOut(
            round: FanOutRound(nodeCount: 0, order: [], returnWhenDecided: true), command: RedisCommand("PING"), script: nil, order: [],
            budget: .seconds(1), classify: Vote.ofSetNX, confirm: nil, health: NodeHealth(endpoints: [], logger: Logger(label: "test"))
        )
    }

    @Test("local tables key names by their bytes: equal bytes are one key; canonically equivalent names of the same length, or different names of one length, are two")
    func keysCompareBytes() {
        // Both are d with a dot below and a dot above, 5 bytes each, composed differently.
        let first = "\u{1E0B}\u{323}"
        let second = "\u{1E0D}\u{307}"
        #expect(first == second, "Swift compares by canonical equivalence")
        #expect(first.utf8.count == second.utf8.count)
        #expect(LockKey(first) != LockKey(second))
        #expect(LockKey("lock-a") != LockKey("lock-b"))
        #expect(LockKey("lock-a") != LockKey("lock-ab"))
        #expect(LockKey(String("lock-" + "a")) == LockKey("lock-a"))
        #expect(LockKey("") == LockKey(""))
        #expect(Set([LockKey(first), LockKey(second), LockKey(first)]).count == 2)
    }

    @Test("a name's set of connection lanes counts each lane once")
    func laneSet() {
        var lanes = LocalCoordination.LaneSet()
        #expect(lanes.count == 0)
        lanes.insert(.shared)
        lanes.insert(.shared)
        #expect(lanes.count == 1)
        lanes.insert(.acknowledged)
        #expect(lanes.count == 2)
        var other = LocalCoordination.LaneSet()
        other.insert(.acknowledged)
        #expect(other.count == 1)
    }

    @Test("a confirmation of the release channel neither wakes a fair waiter with this client's tag nor ends its wait when it came first; it wakes an untagged one, and a handoff channel's confirmation wakes both")
    func taggedFairWaiterIgnoresReleaseChannelConfirmations() async throws {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        let name = "confirm"
        coordination.beginAcquiring(LockKey(name))
        defer { coordination.endAcquiring(LockKey(name)) }
        coordination.listen(name)
        let tagged = coordination.taggedValue("v")
        // A confirmation that came after the waiter read the generation, before it waits.
        let read = coordination.generation(of: LockKey(name))
        coordination.confirmed(name)
        let waiting = Task { await coordination.waitForRelease(of: name, after: read, timeout: .seconds(30), next: nil, value: tagged) }
        try #require(await eventually { coordination.waiterCount(of: name) == 1 }, "it waits")
        // Waiting, it is not woken by another (the wake is done under the lock, before this returns).
        coordination.confirmed(name)
        #expect(coordination.waiterCount(of: name) == 1)
        // A waiter without the tag is woken by the same confirmation, and ends at once after one.
        let untagged = Task { await coordination.waitForRelease(of: name, after: coordination.generation(of: LockKey(name)), timeout: .seconds(30), next: nil, value: "v") }
        try #require(await eventually { coordination.waiterCount(of: name) == 2 })
        let beforeUntagged = coordination.generation(of: LockKey(name))
        coordination.confirmed(name)
        #expect(await untagged.value == WaitOutcome(woken: false, confirmed: true))
        #expect(await coordination.waitForRelease(of: name, after: beforeUntagged, timeout: .seconds(30), next: nil, value: "v") == WaitOutcome(woken: false, confirmed: true))
        #expect(coordination.waiterCount(of: name) == 1)
        // A handoff channel's confirmation is heeded by every waiter.
        coordination.listen(name, handoffChannel: Scripts.handoffChannel(name))
        coordination.confirmed(name, handoffs: true)
        #expect(await waiting.value == WaitOutcome(woken: false, confirmed: true))
        #expect(await coordination.waitForRelease(of: name, after: read, timeout: .seconds(30), next: nil, value: tagged) == WaitOutcome(woken: false, confirmed: true))
    }

    @Test("a value's bytes compare equal only to the same bytes, from a string, an array or a collection that is not contiguous")
    func sameBytes() {
        let value = Array("v-\u{1E0B}\u{323}-42".utf8)
        #expect(value.hasSameBytes(as: "v-\u{1E0B}\u{323}-42".utf8))
        #expect(!value.hasSameBytes(as: "v-\u{1E0D}\u{307}-42".utf8), "canonically equivalent, other bytes")
        #expect(value.hasSameBytes(as: value))
        #expect(!value.hasSameBytes(as: value.dropLast()))
        #expect(!value.hasSameBytes(as: value + [0]))
        #expect(value.hasSameBytes(as: value.lazy.map { $0 }), "not contiguous: compared element by element")
        #expect(!value.hasSameBytes(as: value.lazy.map { $0 ^ 1 }))
        #expect([UInt8]().hasSameBytes(as: "".utf8))
        #expect(![UInt8]().hasSameBytes(as: "x".utf8))
        #expect(!Array("x".utf8).hasSameBytes(as: [UInt8]()))
    }

    @Test("only names being acquired are counted, the releaser's own report of a release heard counts nothing, and the last acquirer drops the name")
    func counting() {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.announce(LockKey("idle"), release: Array("v1".utf8))
        #expect(coordination.generation(of: LockKey("idle")) == 0)

        coordination.beginAcquiring(LockKey("busy"))
        coordination.beginAcquiring(LockKey("busy"))
        coordination.announce(LockKey("busy"), release: Array("v1".utf8), node: 3)
        coordination.announce(LockKey("busy"), release: Array("v1".utf8))
        #expect(coordination.generation(of: LockKey("busy")) == 1)
        coordination.announce(LockKey("busy"), release: Array("v2".utf8))
        #expect(coordination.generation(of: LockKey("busy")) == 2)

        coordination.endAcquiring(LockKey("busy"))
        #expect(coordination.generation(of: LockKey("busy")) == 2)
        coordination.endAcquiring(LockKey("busy"))
        #expect(coordination.generation(of: LockKey("busy")) == 0)
        coordination.announce(LockKey("busy"), release: Array("v3".utf8))
        #expect(coordination.generation(of: LockKey("busy")) == 0)
    }

    @Test("a release heard from several nodes: the first message wakes the longest waiting, each later one a waiter whose attempt went out after the first (it may have found that node still taken), never one that waited before; the same value again from a node already heard is a new release")
    func releaseHeardFromSeveralNodes() async throws {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        let released = Array("v1".utf8)
        let first = Task { await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(30), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        let second = Task { await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(31), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 2 })

        coordination.announce(LockKey("name"), release: released, node: 0)
        #expect(await first.value == WaitOutcome(woken: true))
        #expect(coordination.generation(of: LockKey("name")) == 1)
        // Node 1's message advances the generation, and wakes nobody: `second` waited before
        // the release, and the waiter woken for it is trying.
        coordination.announce(LockKey("name"), release: released, node: 1)
        #expect(coordination.generation(of: LockKey("name")) == 2)
        #expect(coordination.waiterCount(of: "name") == 1)
        #expect(coordination.released(LockKey("name"), since: 1))

        // A waiter whose attempt went out after the first message (generation 2): node 2's
        // message wakes it, ahead of `second`.
        let late = Task { await coordination.waitForRelease(of: "name", after: 2, timeout: .seconds(32), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 2 })
        coordination.announce(LockKey("name"), release: released, node: 2)
        #expect(await late.value == WaitOutcome(woken: true))
        #expect(coordination.generation(of: LockKey("name")) == 3)
        #expect(coordination.waiterCount(of: "name") == 1)

        // The releaser's report of the same release counts nothing; the same value from node 0
        // again is another release (a value of the caller's own), which wakes `second`.
        coordination.announce(LockKey("name"), release: released)
        #expect(coordination.generation(of: LockKey("name")) == 3)
        coordination.announce(LockKey("name"), release: released, node: 0)
        #expect(await second.value == WaitOutcome(woken: true))
        #expect(coordination.generation(of: LockKey("name")) == 4)
    }

    @Test("a release made in this process is not news when its nodes' messages come, before or after the releaser's report")
    func releaserEchoes() async throws {
        let (coordination, timer) = coordination(nodes: 5)
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        let first = Array("v1".utf8)
        coordination.announce(LockKey("name"), release: first)
        #expect(coordination.generation(of: LockKey("name")) == 1)
        let late = Task { await coordination.waitForRelease(of: "name", after: 1, timeout: .seconds(30), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        for node in 0..<5 { coordination.announce(LockKey("name"), release: first, node: node) }
        #expect(coordination.generation(of: LockKey("name")) == 1)
        #expect(coordination.waiterCount(of: "name") == 1)

        // Heard from a node before the releaser's report: the other nodes' messages are echoes.
        let second = Array("v2".utf8)
        coordination.announce(LockKey("name"), release: second, node: 4)
        #expect(await late.value == WaitOutcome(woken: true))
        #expect(coordination.generation(of: LockKey("name")) == 2)
        let later = Task { await coordination.waitForRelease(of: "name", after: 2, timeout: .seconds(31), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        coordination.announce(LockKey("name"), release: second)
        for node in 0..<4 { coordination.announce(LockKey("name"), release: second, node: node) }
        #expect(coordination.generation(of: LockKey("name")) == 2)
        #expect(coordination.waiterCount(of: "name") == 1)
        // Once heard, node 4's message of the same value is another release.
        coordination.announce(LockKey("name"), release: second, node: 4)
        #expect(await later.value == WaitOutcome(woken: true))
        #expect(coordination.generation(of: LockKey("name")) == 3)
    }

    @Test("a release this process publishes is news at its first node's message, before the releaser's report; its other nodes' messages are not")
    func ownReleaseHeardFirst() async throws {
        let (coordination, timer) = coordination(nodes: 5)
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        let released = Array("v1".utf8)
        // Nobody waits: the releaser publishes.
        #expect(coordination.handOff(LockKey("name"), release: released) == nil)
        let waiting = Task { await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(30), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        coordination.announce(LockKey("name"), release: released, node: 2)
        #expect(await waiting.value == WaitOutcome(woken: true))
        let late = Task { await coordination.waitForRelease(of: "name", after: 1, timeout: .seconds(31), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        for node in [0, 1, 3, 4] { coordination.announce(LockKey("name"), release: released, node: node) }
        coordination.announce(LockKey("name"), release: released)
        #expect(coordination.generation(of: LockKey("name")) == 1)
        #expect(coordination.waiterCount(of: "name") == 1)
        late.cancel()
        #expect(await late.value == WaitOutcome(woken: false))
    }

    @Test("with calls of a name on two connection lanes, the messages of a release made in this process count like another process's: an attempt on the other lane may reach a node before the release")
    func twoLanesCountEveryMessage() async throws {
        let (coordination, timer) = coordination(nodes: 5)
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"), lane: .acknowledged)
        defer { coordination.endAcquiring(LockKey("name")) }
        let released = Array("v1".utf8)
        #expect(coordination.handOff(LockKey("name"), release: released, lane: .shared) == nil)
        coordination.announce(LockKey("name"), release: released, node: 2)
        let late = Task { await coordination.waitForRelease(of: "name", after: 1, timeout: .seconds(30), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        coordination.announce(LockKey("name"), release: released)
        coordination.announce(LockKey("name"), release: released, node: 0)
        #expect(await late.value == WaitOutcome(woken: true))
        #expect(coordination.generation(of: LockKey("name")) == 2)
    }

    @Test("a value released again in this process: the releaser's report of the second release is news, though the first had that value")
    func repeatedValueReportCounts() async throws {
        let (coordination, timer) = coordination(nodes: 3)
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        let value = Array("fixed".utf8)
        #expect(coordination.handOff(LockKey("name"), release: value) == nil)
        coordination.announce(LockKey("name"), release: value)
        for node in 0..<3 { coordination.announce(LockKey("name"), release: value, node: node) }
        #expect(coordination.generation(of: LockKey("name")) == 1)
        // The same value acquired and released again while a caller's attempt is out (nobody
        // waits yet: published); the caller then waits, and the releaser's report says the
        // lock is free (with fast handoff off, nothing else would).
        #expect(coordination.handOff(LockKey("name"), release: value) == nil)
        let waiting = Task { await coordination.waitForRelease(of: "name", after: 1, timeout: .seconds(30), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        coordination.announce(LockKey("name"), release: value)
        #expect(await waiting.value == WaitOutcome(woken: true))
        #expect(coordination.generation(of: LockKey("name")) == 2)
        // Its report again (or its nodes' messages, echoes) is not news.
        coordination.announce(LockKey("name"), release: value)
        #expect(coordination.generation(of: LockKey("name")) == 2)
    }

    @Test("a release made before the name's first lock() here began counts its lane from the releaser's report: with a lock() on the other lane, its later messages are news")
    func reportCarriesTheLane() async throws {
        let (coordination, timer) = coordination(nodes: 5)
        defer { timer.stop() }
        let released = Array("v1".utf8)
        // Nobody acquires the name yet: the releaser publishes, and no lane is recorded.
        #expect(coordination.handOff(LockKey("name"), release: released, lane: .shared) == nil)
        coordination.beginAcquiring(LockKey("name"), lane: .acknowledged)
        defer { coordination.endAcquiring(LockKey("name")) }
        coordination.announce(LockKey("name"), release: released, lane: .shared)
        #expect(coordination.generation(of: LockKey("name")) == 1)
        let late = Task { await coordination.waitForRelease(of: "name", after: 1, timeout: .seconds(30), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        coordination.announce(LockKey("name"), release: released, node: 3)
        #expect(await late.value == WaitOutcome(woken: true))
        #expect(coordination.generation(of: LockKey("name")) == 2)
    }

    @Test("a woken waiter that gives up passes the wake on to the longest waiting left")
    func passOn() async throws {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        let waiting = Task { await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(30), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        coordination.passOn("name")
        #expect(await waiting.value == WaitOutcome(woken: true))
        coordination.passOn("name")
        coordination.passOn("unknown")
    }

    @Test("a later node's message of a release passes over a waiter whose last attempt was sent for that release: it retries with the short delay after a release")
    func laterMessagePassesOverItsOwnClaim() async throws {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        let released = Array("v1".utf8)
        coordination.announce(LockKey("name"), release: released, node: 0)
        let claimedBefore = Task {
            await coordination.waitForRelease(of: "name", after: 1, timeout: .milliseconds(300), next: nil, handedBy: 1)
        }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        let other = Task { await coordination.waitForRelease(of: "name", after: 1, timeout: .seconds(30), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 2 })
        coordination.announce(LockKey("name"), release: released, node: 1)
        #expect(await other.value == WaitOutcome(woken: true))
        coordination.announce(LockKey("name"), release: released, node: 2)
        #expect(coordination.generation(of: LockKey("name")) == 3)
        #expect(await claimedBefore.value == WaitOutcome(woken: false), "its timeout ends it")
    }

    @Test("a release handed over in this process is not published: a message of its value from a node is another release")
    func handedOverReleaseIsNotEchoed() async throws {
        let (coordination, timer) = coordination(nodes: 1)
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        let handed = Task { await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(30), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        let next = Task { await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(31), next: nil) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 2 })
        let claimed = try #require(coordination.handOff(LockKey("name"), release: Array("v1".utf8)))
        claimed.resume(sentAt: .now)
        #expect(await handed.value.woken)
        #expect(coordination.waiterCount(of: "name") == 1)
        // Heard as a later node's message of the same release, it would wake only waiters whose
        // attempt went out after the handoff: not `next`, which waited before.
        coordination.announce(LockKey("name"), release: Array("v1".utf8), node: 0)
        #expect(await next.value == WaitOutcome(woken: true))
        #expect(coordination.generation(of: LockKey("name")) == 2)
    }

    @Test("a waiter returns at once for a release it missed, and at its timeout without one")
    func waiting() async {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        coordination.announce(LockKey("name"), release: Array("v1".utf8))
        let started = ContinuousClock.now
        #expect(await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(30), next: nil) == WaitOutcome(woken: true))
        #expect(started.duration(to: .now) < .seconds(5))
        let quiet = ContinuousClock.now
        #expect(await coordination.waitForRelease(of: "name", after: 1, timeout: .milliseconds(50), next: nil) == WaitOutcome(woken: false))
        #expect(quiet.duration(to: .now) >= .milliseconds(50))
    }

    @Test("a wait that registers after shutdown ends at once: nothing would wake it later")
    func waitAfterShutdown() async {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        coordination.closeGates()
        let started = ContinuousClock.now
        let outcome = await coordination.waitForRelease(
            of: "name", after: 0, timeout: .seconds(30), next: nil, holderHereUntil: .now + .seconds(30)
        )
        #expect(outcome == WaitOutcome(woken: false))
        #expect(started.duration(to: .now) < .seconds(5), "waited \(started.duration(to: .now)) after shutdown")
    }

    @Test("a lease released here and handed to a waiter counts as held until the attempt sent for that waiter ends, so the other waiters stay parked meanwhile")
    func handedLeaseHeldUntilItsAttemptEnds() async {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        coordination.beginAcquiring(LockKey("name"))
        defer {
            coordination.endAcquiring(LockKey("name"))
            coordination.endAcquiring(LockKey("name"))
        }
        let validUntil = ContinuousClock.now + .seconds(30)
        coordination.holding("name", value: "held", until: validUntil)
        let first = Task { await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(30), next: nil) }
        #expect(await eventually { coordination.waiterCount(of: "name") == 1 })
        // The holder's unlock hands the release to the waiter (its attempt goes out behind it).
        let claimed = coordination.handOff(LockKey("name"), release: Array("held".utf8))
        let release = claimed?.release
        #expect(release != nil)
        claimed?.resume(sentAt: .now)
        #expect(await first.value.woken)
        // While the attempt sent for it is out, the lease still counts (a waiter now would park).
        #expect(coordination.holdEnd(of: "name") == validUntil)
        #expect(coordination.heldCount(of: "name") == 1)
        // The attempt failed (another process got the lock): nothing is held here any more.
        coordination.attemptEnded(LockKey("name"), value: "other", acquired: nil, handedFor: release)
        #expect(coordination.holdEnd(of: "name") == nil)
        #expect(coordination.heldCount(of: "name") == 0)
    }

    @Test("a lease acquired here ends the name's other records, but an extension handled after its lease was handed to a waiter here keeps the waiter's new lease recorded")
    func lateExtensionKeepsNewLease() async {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        let key = LockKey("name")
        coordination.beginAcquiring(key)
        coordination.beginAcquiring(key)
        defer {
            coordination.endAcquiring(key)
            coordination.endAcquiring(key)
        }
        let soon = ContinuousClock.now + .seconds(1)
        let later = ContinuousClock.now + .seconds(30)
        // A lease released elsewhere (handed over), then a new one acquired here: one record.
        coordination.attemptEnded(key, value: "released-elsewhere", acquired: later, handedFor: nil)
        coordination.attemptEnded(key, value: "new", acquired: later, handedFor: nil)
        #expect(coordination.heldCount(of: "name") == 1)
        // "new" is released here and handed to a waiter, whose attempt wins "next".
        let waiter = Task { await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(30), next: nil) }
        #expect(await eventually { coordination.waiterCount(of: "name") == 1 })
        let claimed = coordination.handOff(key, release: Array("new".utf8))
        claimed?.resume(sentAt: .now)
        #expect(await waiter.value.woken)
        coordination.attemptEnded(key, value: "next", acquired: later, handedFor: claimed?.release)
        // An extension of "new" whose reply is handled only now: "next" stays recorded.
        coordination.holding("name", value: "new", until: soon)
        #expect(coordination.holdEnd(of: "name") == later)
        #expect(coordination.heldCount(of: "name") == 2)
    }

    @Test("a release made in this process hands the waiter's prepared attempt to the releaser; one heard from a node is sent by whoever heard it")
    func handOff() async throws {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("name"))
        defer { coordination.endAcquiring(LockKey("name")) }
        // With nobody waiting nothing is handed over, and nothing counted: the releaser
        // announces its release once it is made.
        #expect(coordination.handOff(LockKey("name"), release: Array("v0".utf8)) == nil)
        #expect(coordination.generation(of: LockKey("name")) == 0)
        let attempt = emptyAttempt()
        let waiting = Task { await coordination.waitForRelease(of: "name", after: 0, timeout: .seconds(30), next: attempt) }
        // The waiter is in line once its timeout is scheduled (nothing else signals it).
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        let claimed = try #require(coordination.handOff(LockKey("name"), release: Array("v1".utf8)))
        #expect(claimed.next?.round === attempt.round)
        let sentAt = ContinuousClock.now
        claimed.waiter.resume(claimed.continuation, handedOverAt: sentAt)
        #expect(await waiting.value == WaitOutcome(woken: true, handedOverAt: sentAt))
        #expect(coordination.generation(of: LockKey("name")) == 1)

        // Heard from a node instead: the coordination sends the attempt itself and resumes the
        // waiter once its votes are in.
        let second = emptyAttempt()
        let heard = Task { await coordination.waitForRelease(of: "name", after: 1, timeout: .seconds(31), next: second) }
        try #require(await eventually { coordination.waiterCount(of: "name") == 1 })
        let before = ContinuousClock.now
        coordination.announce(LockKey("name"), release: Array("v2".utf8))
        let outcome = await heard.value
        #expect(outcome.woken)
        #expect(second.round.isFinished)
        #expect(try #require(outcome.handedOverAt) >= before)

        // Without a prepared attempt a release only wakes.
        let plain = Task { await coordination.waitForRelease(of: "name", after: 2, timeout: .seconds(32), next: nil) }
        coordination.announce(LockKey("name"), release: Array("v3".utf8))
        #expect(await plain.value == WaitOutcome(woken: true, handedOverAt: nil))
    }

    @Test("a handoff message says the key's life and the waiter's value; one of the value alone (an earlier release) or a value with spaces reads as before")
    func handoffMessages() {
        let waiter = Array("abc".utf8)
        let current = HandoffMessage(Array("8000 abc".utf8))
        #expect(current.handsOver(to: waiter))
        #expect(current.life(for: waiter) == .milliseconds(8_000))
        #expect(!current.handsOver(to: Array("ab".utf8)))
        let alone = HandoffMessage(waiter)
        #expect(alone.handsOver(to: waiter))
        #expect(alone.life(for: waiter) == nil)
        // An earlier release's message of a value that starts like a life: the value, no life.
        let spaced = Array("12 monkeys".utf8)
        #expect(HandoffMessage(spaced).handsOver(to: spaced))
        #expect(HandoffMessage(spaced).life(for: spaced) == nil)
        for odd in ["", " abc", "0 abc", "-5 abc", "12345678901 abc", "x1 abc"] {
            #expect(HandoffMessage(Array(odd.utf8)).life(for: waiter) == nil, "\(odd)")
        }
    }

    @Test("a handoff on a client channel names its lock by length, so names and values may hold spaces; anything else is not one")
    func addressedHandoffs() throws {
        let parsed = try #require(AddressedHandoff(Array("8000 9 a b ~ c d ab~x y".utf8)))
        #expect(parsed.name == "a b ~ c d")
        #expect(parsed.message.life(for: Array("ab~x y".utf8)) == .milliseconds(8000))
        let empty = try #require(AddressedHandoff(Array("5 0  v".utf8)))
        #expect(empty.name == "" && empty.message.life(for: Array("v".utf8)) == .milliseconds(5))
        let unicode = try #require(AddressedHandoff(Array("7 2 é v".utf8)))
        #expect(unicode.name == "é")
        for odd in ["", "8000", "8000 ", "8000 3 abc", "8000 3 abc ", "8000 4 abc v", "8000 2 abc v", "x 3 abc v", "8000 -3 abc v",
                    "8000 3x abc v", "8000 99999999999 abc v", " 3 abc v", "8000  abc v"] {
            #expect(AddressedHandoff(Array(odd.utf8)) == nil, "\(odd.debugDescription)")
        }
    }

    @Test("single-flight: a caller that finds the owner's lease over before its lease-end action ran (the timer's thread busy) does not jump the line: the longest-waiting caller gets the gate, and a tryLock fails")
    func gateAtExpiryKeepsOrder() async throws {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        // The timer's thread is held up, so the lease-end action cannot run.
        let busy = BusyTimerEntry()
        timer.schedule(busy, at: .now)
        try #require(await eventually { busy.running.load(ordering: .acquiring) })
        defer { busy.release() }
        let owner = try #require(coordination.tryEnterGate("g", value: "a"))
        var lease = Lease(name: "g", value: "a", expiry: .seconds(1), acquiredAt: .now, validUntil: .now + .milliseconds(20))
        lease.gateTicket = owner
        #expect(coordination.gateHolder(lease, valuesMayRepeat: false))
        let waiting = Task { try await coordination.enterGate("g", value: "b", giveUpAt: nil) }
        try #require(await eventually { coordination.gateQueueLength(of: "g") == 1 })
        try await Task.sleep(until: lease.validUntil + .milliseconds(5))
        // The newcomer hands the gate to the waiter instead of taking it.
        let newcomer = coordination.tryEnterGate("g", value: "c")
        #expect(newcomer == nil, "the newcomer jumped the line")
        // (Should it have, it passes the gate on, so the waiter ends.)
        if let newcomer { coordination.leaveGate("g", ticket: newcomer) }
        let waiter = try #require(try await waiting.value)
        #expect(coordination.gateQueueLength(of: "g") == 0)
        coordination.leaveGate("g", ticket: waiter)
        #expect(coordination.gateQueueLength(of: "g") == nil)
    }

    @Test("a fair value's tag (lowercase hex digits, then ~) picks the client's own handoff channel; any other value the shared one")
    func handoffChannels() {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        let tag = coordination.handoffTag
        #expect(tag.utf8.count == 16 && Scripts.handoffTag(of: tag + "~x").map(String.init) == tag)
        let tagged = coordination.taggedValue("c2VjcmV0")
        #expect(tagged == tag + "~c2VjcmV0")
        #expect(Scripts.handoffChannel("jobs", value: tagged) == "redlock:handoff:~" + tag)
        #expect(coordination.ownHandoffChannel == "redlock:handoff:~" + tag)
        #expect(Scripts.handoffChannel("a~b", value: "0~") == "redlock:handoff:~0")
        for untagged in ["plain", "~x", "ABC~x", "12g~x", "ab c~x", "é~x", ""] {
            #expect(Scripts.handoffChannel("jobs", value: untagged) == "redlock:handoff:jobs", "\(untagged)")
        }
        // Two clients, two tags.
        let (other, otherTimer) = self.coordination()
        defer { otherTimer.stop() }
        #expect(other.handoffTag != tag)
    }

    @Test("the release script's tag pattern, run by a real server, reads the same tag as the client for every kind of value")
    func tagPatternAgrees() async throws {
        try await withRedisServers(1) { servers in
            let values = [
                "0123456789abcdef~x", "0~", "ab~~", "a~b~c", "~x", "ABC~x", "aBc~x", "12g~x", "ab c~x", "é~x", "x",
                "", "ab", "ab\u{0}~x", "\u{0}ab~x", "abc~é", "f" + String(repeating: "0", count: 200) + "~",
            ]
            for value in values {
                let reply = try await servers[0].run(RedisCommand(
                    "EVAL", "return string.match(ARGV[1], ARGV[2]) or false", "0", value, Scripts.handoffTagPattern
                ))
                let lua: String? = reply.isNull ? nil : reply.string
                #expect(lua == Scripts.handoffTag(of: value).map(String.init), "\(value.debugDescription): Lua \(String(describing: lua))")
            }
        }
    }

    @Test("handoffs count as grants once from each node a clean-up never went to and only when the key lives no longer than the waiter's expiry; a quorum gives the shortest life")
    func handoffCounting() {
        var watch = LocalCoordination.HandoffWatch(excluded: [1], quorum: 3, claimAfter: .milliseconds(2), longestLife: .seconds(10))
        #expect(watch.count(node: 1, life: .seconds(8)) == nil)
        #expect(watch.count(node: 0, life: .seconds(8)) == nil)
        #expect(watch.count(node: 0, life: .seconds(8)) == nil)
        #expect(watch.count(node: 2, life: .seconds(5)) == nil)
        #expect(watch.counted == [0, 2])
        #expect(watch.count(node: 4, life: .seconds(9)) == HandoffGrant(nodes: [0, 2, 4], expiry: .seconds(5)))
        // A key that outlives the waiter's own expiry is not counted: the waiter claims instead.
        var short = LocalCoordination.HandoffWatch(excluded: [], quorum: 2, claimAfter: .milliseconds(2), longestLife: .seconds(1))
        #expect(short.count(node: 0, life: .milliseconds(1_001)) == nil)
        #expect(short.counted.isEmpty)
        #expect(short.count(node: 1, life: .seconds(1)) == nil)
        #expect(short.count(node: 2, life: .milliseconds(800)) == HandoffGrant(nodes: [1, 2], expiry: .milliseconds(800)))
    }

    @Test("a clean-up excludes every node it went to but those that answered it deleted nothing")
    func cleanUpExclusions() {
        let answers: [Vote?] = [.refused(.taken), .refused(.missing), .granted(1), .refused(.noAnswer), nil]
        #expect(LocalCoordination.HandoffWatch.excluded(byCleanUpOn: [0, 1, 2, 3, 4], answers: answers) == [2, 3, 4])
        #expect(LocalCoordination.HandoffWatch.excluded(byCleanUpOn: [0, 1], answers: []) == [0, 1])
    }

    @Test("handoffs heard before the waiter waits count too: a quorum ends the wait at once, fewer make it claim after claimAfter, an excluded node's at once")
    func rememberedHandoffs() async {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("fair"))
        defer { coordination.endAcquiring(LockKey("fair")) }
        for node in [0, 1, 2] { coordination.handedOff("fair", message: HandoffMessage(Array("6000 early".utf8)), node: node) }
        let watch = LocalCoordination.HandoffWatch(excluded: [], quorum: 3, claimAfter: .seconds(30), longestLife: .seconds(10))
        let early = await coordination.waitForRelease(of: "fair", after: 0, timeout: .seconds(30), next: emptyAttempt(), value: "early", watch: watch)
        #expect(early.woken && early.handoff == HandoffGrant(nodes: [0, 1, 2], expiry: .seconds(6)))

        coordination.handedOff("fair", message: HandoffMessage(Array("6000 some".utf8)), node: 1)
        let impatient = LocalCoordination.HandoffWatch(excluded: [], quorum: 3, claimAfter: .milliseconds(20), longestLife: .seconds(10))
        let started = ContinuousClock.now
        let some = await coordination.waitForRelease(of: "fair", after: 0, timeout: .seconds(30), next: emptyAttempt(), value: "some", watch: impatient)
        #expect(some.woken && some.handoff == nil && some.handedOverAt != nil)
        #expect(started.duration(to: .now) >= .milliseconds(20) && started.duration(to: .now) < .seconds(10))

        coordination.handedOff("fair", message: HandoffMessage(Array("6000 cleaned".utf8)), node: 2)
        let excluded = LocalCoordination.HandoffWatch(excluded: [2], quorum: 3, claimAfter: .seconds(30), longestLife: .seconds(10))
        let cleaned = await coordination.waitForRelease(of: "fair", after: 0, timeout: .seconds(30), next: emptyAttempt(), value: "cleaned", watch: excluded)
        // Woken to claim at once (its task sends the attempt): the node cannot count.
        #expect(cleaned.woken && cleaned.handoff == nil && cleaned.handedOverAt == nil)
        #expect(coordination.waiterCount(of: "fair") == 0)
    }

    @Test("a waiter that counts handoffs resumes with the grant once a quorum handed over, sending nothing; short of a quorum it claims after claimAfter")
    func handoffWaiter() async {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        coordination.beginAcquiring(LockKey("fair"))
        defer { coordination.endAcquiring(LockKey("fair")) }
        let watch = LocalCoordination.HandoffWatch(excluded: [3], quorum: 3, claimAfter: .seconds(30), longestLife: .seconds(10))
        let waiting = Task {
            await coordination.waitForRelease(of: "fair", after: 0, timeout: .seconds(30), next: emptyAttempt(), value: "w1", watch: watch)
        }
        #expect(await eventually(within: .seconds(5)) { coordination.waiterCount(of: "fair") == 1 })
        for node in [0, 3, 1] { coordination.handedOff("fair", message: HandoffMessage(Array("8000 w1".utf8)), node: node) }
        // Two counted, node 3 excluded: still waiting.
        try? await Task.sleep(for: .milliseconds(50))
        #expect(coordination.waiterCount(of: "fair") == 1)
        coordination.handedOff("fair", message: HandoffMessage(Array("7000 w1".utf8)), node: 4)
        let outcome = await waiting.value
        #expect(outcome.woken)
        #expect(outcome.handedOverAt == nil)
        #expect(outcome.handoff == HandoffGrant(nodes: [0, 1, 4], expiry: .seconds(7)))

        let impatient = LocalCoordination.HandoffWatch(excluded: [], quorum: 3, claimAfter: .milliseconds(20), longestLife: .seconds(10))
        let claiming = Task {
            await coordination.waitForRelease(of: "fair", after: 0, timeout: .seconds(30), next: emptyAttempt(), value: "w2", watch: impatient)
        }
        #expect(await eventually(within: .seconds(5)) { coordination.waiterCount(of: "fair") == 1 })
        let heard = ContinuousClock.now
        coordination.handedOff("fair", message: HandoffMessage(Array("8000 w2".utf8)), node: 0)
        let claimed = await claiming.value
        #expect(claimed.woken && claimed.handoff == nil && claimed.handedOverAt != nil)
        #expect(heard.duration(to: .now) >= .milliseconds(20))
        #expect(heard.duration(to: .now) < .seconds(10))
    }

    @Test("single-flight gates pass first come first served, skip waiters that gave up, and drop the name when empty")
    func gates() async throws {
        let (coordination, timer) = coordination()
        defer { timer.stop() }
        let first = try #require(coordination.tryEnterGate("g", value: "v"))
        #expect(coordination.tryEnterGate("g", value: "v") == nil)
        #expect(try await coordination.enterGate("g", value: "v", giveUpAt: .now + .milliseconds(20)) == nil)
        let second = Task { try await coordination.enterGate("g", value: "v", giveUpAt: nil) }
        try #require(await eventually { coordination.gateQueueLength(of: "g") == 1 })
        coordination.leaveGate("g", ticket: first + 1_000)
        #expect(coordination.gateQueueLength(of: "g") == 1, "a caller without the gate passed it on")
        coordination.leaveGate("g", ticket: first)
        let secondTicket = try #require(try await second.value)
        coordination.leaveGate("g", ticket: first)
        #expect(coordination.gateQueueLength(of: "g") == 0, "the first caller passed on its successor's gate")
        coordination.leaveGate("g", ticket: secondTicket)
        #expect(coordination.gateQueueLength(of: "g") == nil)
        let third = try #require(coordination.tryEnterGate("g", value: "v"))
        coordination.leaveGate("g", ticket: third)
    }
}

/// A timer entry that holds the timer's thread until released (to keep other entries from
/// running).
private final class BusyTimerEntry: Expiring {
    let running = Atomic<Bool>(false)
    private let gate = DispatchSemaphore(value: 0)
    private let done = Atomic<Bool>(false)

    var isFinished: Bool { done.load(ordering: .acquiring) }

    func expire() {
        running.store(true, ordering: .releasing)
        gate.wait()
        done.store(true, ordering: .releasing)
    }

    func release() { gate.signal() }
}
