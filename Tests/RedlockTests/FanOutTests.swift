@testable import Redlock
import Logging
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

/// Waits for `round`'s votes the way the fan-out does: installs the continuation, then runs
/// `whileWaiting` (replies arriving, a deadline being scheduled) before suspending.
private func collectVotes(of round: FanOutRound, whileWaiting: () -> Void = {}) async -> [Vote?] {
    await withUnsafeContinuation { continuation in
        round.install(continuation)
        whileWaiting()
    }
}

/// The nodes whose votes came after their round finished, in order.
private final class LateNodes: LateVotes {
    private let nodes = Locked<[Int]>([])
    var value: [Int] { nodes.value }
    func late(_ index: Int, _ vote: Vote) { nodes.update { $0.append(index) } }
}

/// How long `operation` took.
private func timed(_ operation: () async -> Void) async -> Duration {
    let start = ContinuousClock.now
    await operation()
    return start.duration(to: .now)
}

/// Stands between a ``DeadlineTimer`` and a wait: counts how often the timer looked at the wait
/// and how often it ended it, and notes when it first did.
private final class WatchedWait: Expiring {
    private struct Record {
        var looks = 0
        var expiries = 0
        var expiredAt: ContinuousClock.Instant?
    }

    private let wait: any Expiring
    private let record = Mutex(Record())

    init(_ wait: any Expiring) {
        self.wait = wait
    }

    var isFinished: Bool {
        record.withLock { $0.looks += 1 }
        return wait.isFinished
    }

    func expire() {
        let now = ContinuousClock.now
        record.withLock { record in
            record.expiries += 1
            if record.expiredAt == nil { record.expiredAt = now }
        }
        wait.expire()
    }

    var looks: Int { record.withLock { $0.looks } }
    var expiries: Int { record.withLock { $0.expiries } }
    var expiredAt: ContinuousClock.Instant? { record.withLock { $0.expiredAt } }
}

@Suite("Fan-out rounds", .timeLimit(.minutes(1)))
struct FanOutRoundTests {
    @Test("deciding early: three grants of five finish the round and the two silent nodes are unsettled")
    func threeGrantsDecide() async {
        let round = FanOutRound(nodeCount: 5, order: [4, 2, 0, 1, 3], returnWhenDecided: true)
        let votes = await collectVotes(of: round) {
            round.record(.granted(1), from: 4)
            round.record(.granted(1), from: 0)
            #expect(!round.isFinished)
            round.record(.granted(1), from: 2)
            #expect(round.isFinished)
        }
        #expect(votes == [.granted(1), .unsettled, .granted(1), .unsettled, .granted(1)])
        #expect(grantedCount(votes) == 3)
    }

    @Test("a grant that waits for replicas counts once both replies are in, in either order; a refusal counts at once; too few acknowledgements refuse")
    func replicaWaitInEitherOrder() async throws {
        let client = try RedlockClient(endpoints: [.hostname("127.0.0.1", port: 1), .hostname("127.0.0.1", port: 2), .hostname("127.0.0.1", port: 3)])
        let wait = try #require(ReplicaWait(count: 1, budget: .milliseconds(400), commandTimeout: .seconds(1)))
        #expect(wait.timeoutMilliseconds == 200)
        #expect(ReplicaWait(count: 1, budget: .seconds(6), commandTimeout: .seconds(1))?.timeoutMilliseconds == 500)
        #expect(ReplicaWait(count: 0, budget: .seconds(6), commandTimeout: .seconds(1)) == nil)
        let fanOut = client.prepareFanOut(
            RedisCommand("SET"), classify: { reply, _ in reply == .simpleString("OK") ? .granted(1) : .refused(.taken) },
            order: [0, 1, 2], budget: .seconds(5), returnWhenDecided: false, replicaWait: wait, lane: .acknowledged
        )
        let requests = (0..<3).map { fanOut.requests(for: $0) }
        #expect(requests.allSatisfy { $0.count == 2 && $0[1].command == wait.command })
        // Node 0: WAIT first, then the grant. Node 1: the grant, then too few acknowledgements.
        // Node 2: refused; its WAIT comes later and changes nothing.
        requests[0][1].handler(.success(.integer(1)))
        requests[1][0].handler(.success(.simpleString("OK")))
        requests[2][0].handler(.success(.null))
        requests[0][0].handler(.success(.simpleString("OK")))
        requests[1][1].handler(.success(.integer(0)))
        requests[2][1].handler(.success(.integer(1)))
        // (Queued by hand here: the round decides once told its commands are all queued.)
        fanOut.round.sent()
        let votes = await client.votes(of: fanOut, cancellable: false)
        #expect(votes == [.granted(1), .refused(.notReplicated(acknowledged: 0, required: 1)), .refused(.taken)])
        await client.shutdown()
    }

    @Test("a round whose commands are being queued does not decide before they all are: a refusal answered while queuing (a full queue) is its node's vote, not unsettled")
    func decidesOnceSent() async {
        let round = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true, sending: true)
        let votes = await collectVotes(of: round) {
            round.record(.refused(.taken), from: 0)
            round.record(.refused(.taken), from: 1)
            #expect(!round.isFinished, "decided while its commands were still being queued")
            round.record(.refused(.error(RedisError(code: .overloaded, endpoint: nil, message: "full").unwritten)), from: 2)
            round.sent()
            #expect(round.isFinished)
        }
        #expect(votes[2] != .unsettled)
        let early = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true, sending: true)
        let decided = await collectVotes(of: early) {
            early.record(.granted(1), from: 0)
            early.record(.granted(1), from: 1)
            early.sent()
            #expect(early.isFinished)
        }
        #expect(decided == [.granted(1), .granted(1), .unsettled])
        #expect(FanOutRound.mayHaveRun(votes: decided, neverWritten: early.neverWrittenNodes).contains(2), "a node that may still answer may have run it")
    }

    @Test("which nodes may have run a fan-out's command comes from that command's own outcome: not written there (a full queue) rules a node out; a later command's failure in its vote's place (a WAIT never written) does not")
    func neverWrittenIsTheCommandsOwn() async throws {
        let client = try RedlockClient(endpoints: [.hostname("127.0.0.1", port: 1), .hostname("127.0.0.1", port: 2), .hostname("127.0.0.1", port: 3)])
        let wait = try #require(ReplicaWait(count: 1, budget: .milliseconds(400), commandTimeout: .seconds(1)))
        let fanOut = client.prepareFanOut(
            RedisCommand("SET"), classify: { reply, _ in reply == .simpleString("OK") ? .granted(1) : .refused(.taken) },
            order: [0, 1, 2], budget: .seconds(5), returnWhenDecided: false, replicaWait: wait, lane: .acknowledged
        )
        let requests = (0..<3).map { fanOut.requests(for: $0) }
        let unwritten = RedisError(code: .overloaded, endpoint: nil, message: "full").unwritten
        // Node 0: granted, then its WAIT was never written. Node 1: the SET itself was never
        // written. Node 2: granted and acknowledged.
        requests[0][0].handler(.success(.simpleString("OK")))
        requests[0][1].handler(.failure(unwritten))
        requests[1][0].handler(.failure(unwritten))
        requests[1][1].handler(.failure(unwritten))
        requests[2][0].handler(.success(.simpleString("OK")))
        requests[2][1].handler(.success(.integer(1)))
        fanOut.round.sent()
        let votes = await client.votes(of: fanOut, cancellable: false)
        #expect(!votes[0]!.isGranted && !votes[1]!.isGranted && votes[2]!.isGranted)
        let mayHaveRun = FanOutRound.mayHaveRun(votes: votes, neverWritten: fanOut.round.neverWrittenNodes)
        #expect(mayHaveRun.containsExactly(0) && !mayHaveRun.containsExactly(1) && mayHaveRun.containsExactly(2))
        await client.shutdown()
    }

    @Test("deciding early: three refusals of five finish the round as well")
    func threeRefusalsDecide() async {
        let round = FanOutRound(nodeCount: 5, order: [0, 1, 2, 3, 4], returnWhenDecided: true)
        let votes = await collectVotes(of: round) {
            round.record(.refused(.taken), from: 1)
            round.record(.granted(1), from: 2)
            round.record(.refused(.missing), from: 3)
            #expect(!round.isFinished)
            round.record(.refused(.missing), from: 4)
        }
        #expect(votes == [.unsettled, .refused(.taken), .granted(1), .refused(.missing), .refused(.missing)])
    }

    @Test("a failure decided by other refusals waits for the answers that could still show the key another holder's or gone on a quorum (taken, missing), and only for those; once they are a quorum, it decides")
    func takenWaitsOnlyWhenItCanBeAQuorum() async {
        let down = Vote.refused(.error(RedisError(code: .connectionRefused, endpoint: .hostname("127.0.0.1", port: 1), message: "down")))
        // Two of five down answer first; one taken makes a quorum impossible, but the two out
        // could make taken three: before, the round ended there and the failure read as the
        // nodes' (noQuorum) although the key is another holder's on three nodes.
        let held = FanOutRound(nodeCount: 5, order: [0, 1, 2, 3, 4], returnWhenDecided: true)
        let heldVotes = await collectVotes(of: held) {
            held.record(down, from: 3)
            held.record(down, from: 4)
            held.record(.refused(.taken), from: 0)
            #expect(!held.isFinished)
            held.record(.refused(.taken), from: 1)
            #expect(!held.isFinished)
            held.record(.refused(.taken), from: 2)
        }
        #expect(heldVotes == [.refused(.taken), .refused(.taken), .refused(.taken), down, down])
        // Once the answers out cannot make taken three, a silent node is not waited for.
        let mixed = FanOutRound(nodeCount: 5, order: [0, 1, 2, 3, 4], returnWhenDecided: true)
        let mixedVotes = await collectVotes(of: mixed) {
            mixed.record(down, from: 3)
            mixed.record(.refused(.taken), from: 0)
            mixed.record(down, from: 4)
            #expect(!mixed.isFinished)
            mixed.record(down, from: 1)
        }
        #expect(mixedVotes == [.refused(.taken), down, .unsettled, down, down])
        // Four nodes: two taken make a quorum impossible before they are one (three); the
        // answers out decide between held and failed (before, taken or noQuorum by answer order).
        let even = FanOutRound(nodeCount: 4, order: [0, 1, 2, 3], returnWhenDecided: true)
        let evenVotes = await collectVotes(of: even) {
            even.record(.refused(.taken), from: 0)
            even.record(.refused(.taken), from: 1)
            #expect(!even.isFinished)
            even.record(.refused(.taken), from: 2)
        }
        #expect(evenVotes == [.refused(.taken), .refused(.taken), .refused(.taken), .unsettled])
        // An extension: taken and missing on two of three decide (the lease is lost either
        // way), without the third; one missing and one down wait for it (expired, or a failure
        // of the nodes).
        let lost = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true)
        let lostVotes = await collectVotes(of: lost) {
            lost.record(.refused(.taken), from: 0)
            lost.record(.refused(.missing), from: 1)
        }
        #expect(lostVotes == [.refused(.taken), .refused(.missing), .unsettled])
        let expired = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true)
        let expiredVotes = await collectVotes(of: expired) {
            expired.record(down, from: 2)
            expired.record(.refused(.missing), from: 0)
            #expect(!expired.isFinished)
            expired.record(.refused(.missing), from: 1)
        }
        #expect(expiredVotes == [.refused(.missing), .refused(.missing), down])
    }

    @Test("a failure decided with a refusal for good waits for the answers that tell whether too few nodes are left, and only for those")
    func permanentRefusalsWaitOnlyWhenTheyCanTip() async {
        let refusal = Vote.refused(.error(RedisError(code: .invalidAddress, endpoint: .hostname("127.0.0.1", port: 1), message: "refused for good")))
        #expect(refusal.isPermanentRefusal)
        // Three nodes: a refusal for good and a taken decide it, but the third answer tells
        // whether two of three refuse for good (no retry can succeed then).
        let three = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true)
        let votes = await collectVotes(of: three) {
            three.record(refusal, from: 0)
            three.record(.refused(.taken), from: 1)
            #expect(!three.isFinished)
            three.record(refusal, from: 2)
        }
        #expect(votes == [refusal, .refused(.taken), refusal])
        // Five nodes, one refusal for good: once the answers still out cannot make it three, a
        // silent node is not waited for.
        let five = FanOutRound(nodeCount: 5, order: [0, 1, 2, 3, 4], returnWhenDecided: true)
        let fiveVotes = await collectVotes(of: five) {
            five.record(refusal, from: 0)
            five.record(.refused(.taken), from: 1)
            five.record(.refused(.taken), from: 2)
            #expect(!five.isFinished)
            five.record(.refused(.taken), from: 3)
        }
        #expect(fiveVotes == [refusal, .refused(.taken), .refused(.taken), .refused(.taken), .unsettled])
    }

    @Test("a vote that comes after the round finished goes to its late-vote hook, once; none before")
    func lateVotesReachTheHook() async {
        let late = LateNodes()
        let round = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true, lateVotes: late)
        let votes = await collectVotes(of: round) {
            round.record(.granted(1), from: 0)
            round.record(.granted(1), from: 1)
        }
        #expect(votes == [.granted(1), .granted(1), .unsettled])
        #expect(late.value == [])
        round.record(.refused(.taken), from: 2)
        #expect(late.value == [2])
    }

    @Test("a fair attempt leaves the line where it was refused as taken, before or after its decision, and where a late answer is no grant (a timeout: it may have queued there), only once it got the lock")
    func lineLeaveSendsWhereRefused() {
        let sent = Locked<[[Int]]>([])
        let acquired = LineLeave { nodes in sent.update { $0.append(nodes) } }
        acquired.late(4, .refused(.taken))
        acquired.late(3, .granted(1))
        #expect(sent.value == [], "nothing before the decision")
        acquired.decided(acquired: true, votes: [.granted(1), .refused(.taken), .granted(1), .unsettled, .unsettled])
        #expect(sent.value == [[1, 4]])
        acquired.late(3, .refused(.taken))
        acquired.late(2, .refused(.noAnswer))
        acquired.late(0, .granted(1))
        #expect(sent.value == [[1, 4], [3], [2]], "a late refusal or silence after the decision goes at once; a grant never")
        acquired.decided(acquired: true, votes: [.refused(.taken)])
        #expect(sent.value.count == 3, "decided once")
        // A failed attempt leaves nothing: its caller stays in line.
        let failed = LineLeave { nodes in sent.update { $0.append(nodes) } }
        failed.late(0, .refused(.taken))
        failed.decided(acquired: false, votes: [.refused(.taken), .refused(.taken), .granted(1)])
        failed.late(1, .refused(.taken))
        #expect(sent.value.count == 3)
        // No refusal, no leave: the uncontended lock().
        let free = LineLeave { nodes in sent.update { $0.append(nodes) } }
        free.decided(acquired: true, votes: [.granted(1), .granted(1), .unsettled])
        free.late(2, .granted(1))
        #expect(sent.value.count == 3)
    }

    @Test("without deciding early, the round waits for all five nodes even after a quorum granted")
    func waitsForAll() async {
        let round = FanOutRound(nodeCount: 5, order: [0, 1, 2, 3, 4], returnWhenDecided: false)
        let votes = await collectVotes(of: round) {
            for index in 0..<3 { round.record(.granted(1), from: index) }
            #expect(!round.isFinished)
            round.record(.refused(.taken), from: 3)
            #expect(!round.isFinished)
            round.record(.granted(7), from: 4)
            #expect(round.isFinished)
        }
        #expect(votes == [.granted(1), .granted(1), .granted(1), .refused(.taken), .granted(7)])
    }

    @Test("votes arriving at once from many threads are all counted")
    func concurrentVotes() async {
        let nodeCount = 64
        let round = FanOutRound(nodeCount: nodeCount, order: Array(0..<nodeCount), returnWhenDecided: false)
        let votes = await withTaskGroup(of: Void.self) { group in
            for index in 0..<nodeCount {
                group.addTask { round.record(index.isMultiple(of: 2) ? .granted(Int64(index)) : .refused(.taken), from: index) }
            }
            return await collectVotes(of: round)
        }
        let expected: [Vote?] = (0..<nodeCount).map { $0.isMultiple(of: 2) ? .granted(Int64($0)) : .refused(.taken) }
        #expect(votes == expected)
    }

    @Test("expiring a round leaves the silent nodes refused with no answer")
    func expireLeavesSilentRefused() async {
        let round = FanOutRound(nodeCount: 5, order: [0, 1, 2, 3, 4], returnWhenDecided: true)
        let votes = await collectVotes(of: round) {
            round.record(.granted(1), from: 0)
            round.record(.refused(.taken), from: 1)
            round.expire()
        }
        #expect(votes == [.granted(1), .refused(.taken), .refused(.noAnswer), .refused(.noAnswer), .refused(.noAnswer)])
        #expect(grantedCount(votes) == 1)
    }

    @Test("votes recorded after the round finished are ignored")
    func lateVotesIgnored() async {
        let round = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true)
        round.record(.granted(1), from: 0)
        round.expire()
        #expect(round.isFinished)
        round.record(.granted(1), from: 1)
        round.record(.granted(1), from: 2)
        round.expire()
        let votes = await collectVotes(of: round)
        #expect(votes == [.granted(1), .refused(.noAnswer), .refused(.noAnswer)])

        let decided = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true)
        let decidedVotes = await collectVotes(of: decided) {
            decided.record(.granted(1), from: 2)
            decided.record(.granted(1), from: 1)
            decided.record(.refused(.taken), from: 0)
        }
        #expect(decidedVotes == [.unsettled, .granted(1), .granted(1)])
        // The late vote did not land in the round either: a second look still shows the decision.
        #expect(await collectVotes(of: decided) == [.unsettled, .granted(1), .granted(1)])
    }

    @Test("installing after the round finished resumes at once with its votes")
    func installAfterFinish() async {
        let answered = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: false)
        answered.record(.granted(1), from: 0)
        answered.record(.refused(.missing), from: 1)
        answered.record(.granted(2), from: 2)
        #expect(answered.isFinished)
        #expect(await collectVotes(of: answered) == [.granted(1), .refused(.missing), .granted(2)])

        let decided = FanOutRound(nodeCount: 3, order: [2, 0, 1], returnWhenDecided: true)
        decided.record(.refused(.taken), from: 2)
        decided.record(.refused(.taken), from: 0)
        #expect(decided.isFinished)
        #expect(await collectVotes(of: decided) == [.refused(.taken), .unsettled, .refused(.taken)])

        let expired = FanOutRound(nodeCount: 2, order: [0, 1], returnWhenDecided: true)
        expired.expire()
        #expect(await collectVotes(of: expired) == [.refused(.noAnswer), .refused(.noAnswer)])
    }

    @Test("nodes left out of the order stay nil and count as refused")
    func nodesOutsideOrder() async {
        // Nodes 0 and 1 of 3 asked: one refusal already rules out a quorum of 2, because node 2
        // counts as refused. (A taken one waits for node 0, which could make taken two.)
        let down = Vote.refused(.error(RedisError(code: .connectionRefused, endpoint: .hostname("127.0.0.1", port: 1), message: "down")))
        let refused = FanOutRound(nodeCount: 3, order: [0, 1], returnWhenDecided: true)
        let refusedVotes = await collectVotes(of: refused) {
            refused.record(down, from: 1)
            #expect(refused.isFinished)
        }
        #expect(refusedVotes == [.unsettled, down, nil])
        let taken = FanOutRound(nodeCount: 3, order: [0, 1], returnWhenDecided: true)
        let takenVotes = await collectVotes(of: taken) {
            taken.record(.refused(.taken), from: 1)
            #expect(!taken.isFinished)
            taken.record(.refused(.taken), from: 0)
        }
        #expect(takenVotes == [.refused(.taken), .refused(.taken), nil])

        let granted = FanOutRound(nodeCount: 3, order: [0, 1], returnWhenDecided: true)
        let grantedVotes = await collectVotes(of: granted) {
            granted.record(.granted(1), from: 0)
            #expect(!granted.isFinished)
            granted.record(.granted(1), from: 1)
        }
        #expect(grantedVotes == [.granted(1), .granted(1), nil])
        #expect(grantedCount(grantedVotes) == 2)

        let nobody = FanOutRound(nodeCount: 3, order: [], returnWhenDecided: true)
        #expect(await collectVotes(of: nobody) == [nil, nil, nil])
    }
}

@Suite("The deadline timer", .timeLimit(.minutes(1)))
struct DeadlineTimerTests {
    @Test("a round is expired at its deadline, not before")
    func expiresAtDeadline() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let round = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true)
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(30)
        let votes = await collectVotes(of: round) {
            timer.schedule(round, at: deadline)
            round.record(.granted(1), from: 1)
        }
        let end = ContinuousClock.now
        #expect(end >= deadline)
        #expect(start.duration(to: end) >= .milliseconds(30))
        #expect(start.duration(to: end) < .seconds(5))
        #expect(votes == [.refused(.noAnswer), .granted(1), .refused(.noAnswer)])
    }

    @Test("a round that finished before its deadline keeps its recorded votes and is never expired")
    func finishedRoundNotExpired() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let round = FanOutRound(nodeCount: 3, order: [0, 1, 2], returnWhenDecided: true)
        let watched = WatchedWait(round)
        let deadline = ContinuousClock.now + .milliseconds(30)
        let votes = await collectVotes(of: round) {
            timer.schedule(watched, at: deadline)
            round.record(.granted(1), from: 0)
            round.record(.granted(1), from: 2)
        }
        #expect(votes == [.granted(1), .unsettled, .granted(1)])

        // A later round's expiry shows the timer went past the first round's deadline.
        let later = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        let laterDeadline = deadline + .milliseconds(30)
        let laterVotes = await collectVotes(of: later) { timer.schedule(later, at: laterDeadline) }
        #expect(laterVotes == [.refused(.noAnswer)])
        #expect(ContinuousClock.now >= laterDeadline)
        #expect(watched.looks >= 1)
        #expect(watched.expiries == 0)
        #expect(await collectVotes(of: round) == [.granted(1), .unsettled, .granted(1)])
    }

    @Test("deadlines become whole nanoseconds rounded toward the future: a wait never expires before its instant")
    func deadlinesRoundUp() {
        let fraction = Duration(secondsComponent: 0, attosecondsComponent: 999_999_999)
        #expect(Duration.nanoseconds(5).nanosecondsRoundedUp == 5)
        #expect((Duration.nanoseconds(5) + fraction).nanosecondsRoundedUp == 6)
        #expect((Duration.nanoseconds(5) + .init(secondsComponent: 0, attosecondsComponent: 1)).nanosecondsRoundedUp == 6)
        #expect((Duration.milliseconds(20) * 1.000_000_000_1).nanosecondsRoundedUp == 20_000_001)
        #expect(Duration.zero.nanosecondsRoundedUp == 0)
        #expect((Duration.nanoseconds(-5) - fraction).nanosecondsRoundedUp == -5)
        #expect(Duration.nanoseconds(-5).nanosecondsRoundedUp == -5)
        #expect(Duration.seconds(Int64.max).nanosecondsRoundedUp == .max)
        #expect(Duration.seconds(Int64.min).nanosecondsRoundedUp == .min)
    }

    @Test("endAtShutdown() ends the waits that end at shutdown (an acquire's rounds), in lanes and the heap, and each such wait scheduled later as it is scheduled; the others keep their deadlines")
    func endAtShutdownEndsAcquireRounds() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        func round(_ endsAtShutdown: Bool) -> FanOutRound {
            FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true, endsAtShutdown: endsAtShutdown)
        }
        let (laneAcquire, laneOther, heapAcquire, heapOther) = (round(true), round(false), round(true), round(false))
        timer.schedule(laneAcquire, after: .seconds(60))
        timer.schedule(laneOther, after: .seconds(60))
        timer.schedule(heapAcquire, at: ContinuousClock.now + .seconds(60))
        timer.schedule(heapOther, at: ContinuousClock.now + .seconds(60))
        #expect(!laneAcquire.isFinished && !heapAcquire.isFinished)
        timer.endAtShutdown()
        #expect(laneAcquire.isFinished && heapAcquire.isFinished)
        #expect(!laneOther.isFinished && !heapOther.isFinished)
        // A node that never answered counts as not answering.
        #expect(await collectVotes(of: laneAcquire) == [.refused(.noAnswer)])
        let (laterAcquire, laterOther) = (round(true), round(false))
        timer.schedule(laterAcquire, after: .seconds(60))
        timer.schedule(laterOther, after: .seconds(60))
        #expect(laterAcquire.isFinished)
        #expect(!laterOther.isFinished)
        for other in [laneOther, heapOther, laterOther] { other.expire() }
    }

    @Test("a finished round is dropped from the heap by the next schedule")
    func finishedRoundDropped() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let first = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        let watched = WatchedWait(first)
        timer.schedule(watched, at: ContinuousClock.now + .seconds(60))
        // Once the thread has looked at it, it sleeps toward its deadline; a later deadline does
        // not wake it, so only the schedule can drop the finished round.
        #expect(await eventually { watched.looks >= 1 })
        #expect(timer.count == 1)
        first.record(.granted(1), from: 0)
        #expect(first.isFinished)

        let second = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        timer.schedule(second, at: ContinuousClock.now + .seconds(120))
        #expect(timer.count == 1)
        #expect(watched.expiries == 0)
        #expect(await collectVotes(of: first) == [.granted(1)])
        // Nothing left pending, so stop() lets the thread end now.
        second.expire()
    }

    @Test("finished waits behind a running one are swept once the heap has doubled: 10,000 cancelled actions leave a bounded heap, and what still runs expires once")
    func heapSweepsFinishedWaits() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        // The earliest deadline is a running wait: the top of the heap is never finished.
        let running = (0...10).map { _ in watchedRound() }
        timer.schedule(running[0].1, at: ContinuousClock.now + .seconds(30))
        var peak = 0
        for index in 0..<10_000 {
            let action = TimerAction {}
            timer.schedule(action, at: ContinuousClock.now + .seconds(60))
            action.cancel()
            if index % 1_000 == 999 { timer.schedule(running[1 + index / 1_000].1, at: ContinuousClock.now + .seconds(60)) }
            peak = max(peak, timer.count)
        }
        // Before, every cancelled action stayed until its time: 10,011 entries.
        #expect(peak <= 2 * running.count + 64 + 1, "peak \(peak)")
        await timer.shutdown()
        for (round, watched) in running {
            #expect(round.isFinished)
            #expect(watched.expiries == 1)
        }
    }

    @Test("a heap swept many times over still expires each running wait once, not before its deadline, in deadline order; no finished one is expired")
    func sweptHeapKeepsOrder() async throws {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        // 400 deadlines 100–499 ms out in a scrambled order; every other one finishes at once.
        let offsets = (0..<400).map { ($0 * 137 % 400) + 100 }
        let waits = offsets.map { _ in watchedRound() }
        let start = ContinuousClock.now
        let deadlines = offsets.map { start + .milliseconds($0) }
        for index in offsets.indices {
            timer.schedule(waits[index].1, at: deadlines[index])
            if index.isMultiple(of: 2) { waits[index].0.record(.granted(1), from: 0) }
        }
        let allScheduled = ContinuousClock.now
        for (round, _) in waits { _ = await collectVotes(of: round) }
        let running = offsets.indices.filter { !$0.isMultiple(of: 2) }
        for index in offsets.indices where index.isMultiple(of: 2) {
            #expect(waits[index].1.expiries == 0)
        }
        var expiries: [(deadline: ContinuousClock.Instant, expiredAt: ContinuousClock.Instant)] = []
        for index in running {
            #expect(waits[index].1.expiries == 1)
            let expiredAt = try #require(waits[index].1.expiredAt)
            #expect(expiredAt >= deadlines[index], "offset \(offsets[index]) ms expired early")
            // Only deadlines still ahead when the last wait was scheduled sat in the heap
            // together (one that passed while a loaded machine held the loop up expires late).
            if deadlines[index] > allScheduled { expiries.append((deadlines[index], expiredAt)) }
        }
        #expect(expiries.count >= running.count / 2, "\(expiries.count) of \(running.count) deadlines still ahead once all were scheduled")
        let inDeadlineOrder = expiries.sorted { $0.deadline < $1.deadline }.map(\.expiredAt)
        let outOfOrder = zip(inDeadlineOrder, inDeadlineOrder.dropFirst()).filter { $0 > $1 }.count
        #expect(outOfOrder == 0)
    }

    @Test("finished waits behind a running one in a lane are swept once the lane has doubled; the lane keeps its order")
    func laneSweepsFinishedWaits() async throws {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let running = (0...10).map { _ in watchedRound() }
        timer.schedule(running[0].1, after: .seconds(60))
        var peak = 0
        for index in 0..<10_000 {
            let round = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
            timer.schedule(round, after: .seconds(60))
            round.record(.granted(1), from: 0)
            if index % 1_000 == 999 { timer.schedule(running[1 + index / 1_000].1, after: .seconds(60)) }
            peak = max(peak, timer.count)
        }
        #expect(peak <= 2 * running.count + 64 + 1, "peak \(peak)")
        // Shut down: every wait held is due at once, and a lane's in its order.
        await timer.shutdown()
        var expiries: [ContinuousClock.Instant] = []
        for (round, watched) in running {
            #expect(round.isFinished)
            #expect(watched.expiries == 1)
            expiries.append(try #require(watched.expiredAt))
        }
        #expect(expiries == expiries.sorted())
    }

    @Test("many deadlines scheduled out of order all fire, each not before its own, earliest first")
    func outOfOrderDeadlines() async throws {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        // 20, 105, 190, 75, … ms: a permutation of 20...215 in steps of 5.
        let offsets = (0..<40).map { ($0 * 17 % 40) * 5 + 20 }
        let rounds = offsets.map { _ in FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true) }
        let watched = rounds.map { WatchedWait($0) }
        let start = ContinuousClock.now
        let deadlines = offsets.map { start + .milliseconds($0) }
        for index in offsets.indices {
            timer.schedule(watched[index], at: deadlines[index])
        }
        let allScheduled = ContinuousClock.now

        for round in rounds {
            #expect(await collectVotes(of: round) == [.refused(.noAnswer)])
        }
        #expect(start.duration(to: .now) < .seconds(10))
        var expiries: [ContinuousClock.Instant] = []
        for index in offsets.indices {
            #expect(watched[index].expiries == 1)
            let expiredAt = try #require(watched[index].expiredAt)
            #expect(expiredAt >= deadlines[index], "offset \(offsets[index]) ms expired early")
            expiries.append(expiredAt)
        }
        // Deadlines still ahead when the last one was scheduled all sat in the heap together:
        // they expire in deadline order.
        let heldTogether = offsets.indices.filter { deadlines[$0] > allScheduled }.sorted { deadlines[$0] < deadlines[$1] }
        let inDeadlineOrder = heldTogether.map { expiries[$0] }
        #expect(inDeadlineOrder == inDeadlineOrder.sorted())
    }

    @Test("waits of one timeout share a lane: each expires after its timeout, in the order scheduled")
    func laneExpiresInOrder() async throws {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let rounds = (0..<20).map { _ in FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true) }
        let watched = rounds.map { WatchedWait($0) }
        var scheduledAt: [ContinuousClock.Instant] = []
        for wait in watched {
            scheduledAt.append(.now)
            timer.schedule(wait, after: .milliseconds(30))
        }
        // Finished waits in the lane are never expired.
        rounds[3].record(.granted(1), from: 0)
        rounds[11].record(.granted(1), from: 0)
        for round in rounds {
            _ = await collectVotes(of: round)
        }
        var expiries: [ContinuousClock.Instant] = []
        for index in rounds.indices where index != 3 && index != 11 {
            #expect(watched[index].expiries == 1)
            let expiredAt = try #require(watched[index].expiredAt)
            #expect(scheduledAt[index].duration(to: expiredAt) >= .milliseconds(30), "wait \(index) expired early")
            expiries.append(expiredAt)
        }
        #expect(expiries == expiries.sorted())
        #expect(watched[3].expiries == 0)
        #expect(watched[11].expiries == 0)
        #expect(await eventually { timer.count == 0 })
    }

    @Test("more distinct timeouts than lanes: the rest go to the heap and all expire, none early")
    func manyTimeouts() async throws {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let timeouts = (0..<12).map { Duration.milliseconds(20 + 7 * $0) }
        let rounds = timeouts.map { _ in FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true) }
        let watched = rounds.map { WatchedWait($0) }
        var scheduledAt: [ContinuousClock.Instant] = []
        for (wait, timeout) in zip(watched, timeouts) {
            scheduledAt.append(.now)
            timer.schedule(wait, after: timeout)
        }
        #expect(timer.count == timeouts.count)
        for round in rounds {
            #expect(await collectVotes(of: round) == [.refused(.noAnswer)])
        }
        for index in timeouts.indices {
            let expiredAt = try #require(watched[index].expiredAt)
            #expect(scheduledAt[index].duration(to: expiredAt) >= timeouts[index], "timeout \(timeouts[index]) expired early")
        }
    }

    @Test("stop lets the waits it holds still expire at their deadlines, then the thread ends")
    func stopKeepsPendingWaits() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let round = FanOutRound(nodeCount: 2, order: [0, 1], returnWhenDecided: true)
        let deadline = ContinuousClock.now + .milliseconds(50)
        let votes = await collectVotes(of: round) {
            timer.schedule(round, at: deadline)
            timer.stop()
        }
        #expect(ContinuousClock.now >= deadline)
        #expect(votes == [.refused(.noAnswer), .refused(.noAnswer)])
        #expect(await eventually { !timer.isRunning })
    }

    @Test("shutdown makes every wait held due at once (heap and lanes) and returns once the thread has ended; on a timer never started it returns at once")
    func shutdownEndsThread() async {
        let idle = DeadlineTimer()
        await idle.shutdown()
        #expect(!idle.isRunning)

        let timer = DeadlineTimer()
        let far = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        let lane = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        timer.schedule(far, at: ContinuousClock.now + .seconds(60))
        timer.schedule(lane, after: .seconds(60))
        #expect(timer.isRunning)
        // Without it, the thread sleeps toward the waits' deadline: the bound fails.
        let ended: Void? = await finished(within: .seconds(10)) { await timer.shutdown() }
        #expect(ended != nil)
        #expect(!timer.isRunning)
        #expect(far.isFinished && lane.isFinished)
    }

    @Test("a client's shutdown ends its timer's thread also while a subscription lingers (a lock() waited on a held name)")
    func clientShutdownEndsTimer() async throws {
        try await withLockNodes(3) { client, _ in
            let lock = try client.makeLock("lingers", options: testOptions())
            let lease = try await lock.lock()
            await #expect(throws: RedlockError.self) { try await lock.lock(timeout: .milliseconds(100)) }
            try await lock.unlock(lease)
            #expect(client.deadlines.isRunning)
            await client.shutdown()
            // The linger is 2 s: before, the thread ran on until then.
            #expect(!client.deadlines.isRunning)
        }
    }

    @Test("2,000 scoped locks of 30 s leases leave the client's timer holding a bounded number of waits, not one per scope until its deadline")
    func lockCyclesLeaveBoundedTimer() async throws {
        try await withLockNodes(1) { client, _ in
            let lock = try client.makeLock("bounded-timer", options: testOptions(expiry: .seconds(30)))
            // A scope whose watch runs throughout: the heap's earliest wait is never finished.
            try await lock.withLock { _ in
                var peak = 0
                let other = try client.makeLock("bounded-timer-cycles", options: testOptions(expiry: .seconds(30)))
                for _ in 0..<2_000 {
                    try await other.withLock { _ in }
                    peak = max(peak, client.deadlines.count)
                }
                // Before, each scope's deadline watch stayed scheduled until its time: over 2,000.
                #expect(peak < 200, "peak \(peak)")
            }
        }
    }

    @Test("after stop with nothing pending the thread ends, and a later schedule starts it again")
    func stopsAndRestarts() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        #expect(!timer.isRunning)
        let first = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        let firstVotes = await collectVotes(of: first) {
            timer.schedule(first, at: ContinuousClock.now + .milliseconds(10))
        }
        #expect(firstVotes == [.refused(.noAnswer)])
        // Not stopped: the thread waits for the next deadline.
        #expect(timer.isRunning)

        timer.stop()
        #expect(await eventually { !timer.isRunning })

        let second = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(30)
        let secondVotes = await collectVotes(of: second) {
            timer.schedule(second, at: deadline)
            #expect(timer.isRunning)
        }
        let end = ContinuousClock.now
        #expect(secondVotes == [.refused(.noAnswer)])
        #expect(end >= deadline)
        #expect(start.duration(to: end) < .seconds(5))
        // Still stopped: with nothing pending, the restarted thread ends on its own.
        #expect(await eventually { !timer.isRunning })
    }
    /// A new event loop, and a timer with it whose thread sleeps toward a far deadline (20 s
    /// out, past each test's 5 s bound), and that far wait; expire it to let the thread end.
    private func timerSleepingFar() async -> (RedisEventLoop, DeadlineTimer, FanOutRound) {
        let loop = RedisEventLoop(name: "timer-test")
        let timer = DeadlineTimer(loop: loop)
        let far = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        let watched = WatchedWait(far)
        timer.schedule(watched, at: ContinuousClock.now + .seconds(20))
        // It looked at the far wait under its lock, and sleeps toward it since that look.
        #expect(await eventually { watched.looks >= 1 })
        return (loop, timer, far)
    }

    /// Lets the far wait go, stops the timer and (unless it exited already) the loop.
    private func tearDown(_ loop: RedisEventLoop, _ timer: DeadlineTimer, _ far: FanOutRound) async {
        far.expire()
        timer.stop()
        await loop.shutdown()
    }

    /// A one-node round, watched.
    private func watchedRound() -> (FanOutRound, WatchedWait) {
        let round = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        return (round, WatchedWait(round))
    }

    /// `watched` was expired at or after `deadline`, and within 5 s of `start` (not at the
    /// far deadline the timer slept toward).
    private func expectExpiredOnTime(_ watched: WatchedWait, deadline: ContinuousClock.Instant, since start: ContinuousClock.Instant) throws {
        let expiredAt = try #require(watched.expiredAt)
        #expect(expiredAt >= deadline)
        #expect(start.duration(to: expiredAt) < .seconds(5))
    }

    @Test("an earlier deadline set on the event loop's thread that is settled before it comes wakes the timer's thread not at all; set elsewhere, it does")
    func settledOnLoopWakesNobody() async {
        let (loop, timer, far) = await timerSleepingFar()
        let near = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        let deadline = ContinuousClock.now + .milliseconds(80)
        // The same through a lane (a fan-out's budget).
        let budgeted = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        await Task(executorPreference: loop) {
            #expect(loop.isCurrentThread)
            timer.schedule(near, at: deadline)
            near.record(.granted(1), from: 0)
            timer.schedule(budgeted, after: .milliseconds(80))
            budgeted.record(.granted(1), from: 0)
        }.value
        #expect(await collectVotes(of: near) == [.granted(1)])
        #expect(await collectVotes(of: budgeted) == [.granted(1)])
        // Past the deadlines, and past two turns of the loop after them (a reminder found due is
        // reminded at the next turn's start).
        try? await Task.sleep(until: deadline + .milliseconds(100), clock: .continuous)
        await Task(executorPreference: loop) {}.value
        await Task(executorPreference: loop) {}.value
        #expect(timer.signalCount == 0)

        // The same from a thread of the pool signals it.
        let elsewhere = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        timer.schedule(elsewhere, at: ContinuousClock.now + .milliseconds(80))
        #expect(timer.signalCount == 1)
        elsewhere.record(.granted(1), from: 0)
        await tearDown(loop, timer, far)
    }

    @Test("an earlier deadline set on the event loop's thread and still unsettled when it comes expires its wait: the loop signals the timer's thread then, not before")
    func unsettledOnLoopExpires() async throws {
        let (loop, timer, far) = await timerSleepingFar()
        let (near, watched) = watchedRound()
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(50)
        let votes = await collectVotes(of: near) {
            Task(executorPreference: loop) {
                timer.schedule(watched, at: deadline)
                #expect(timer.signalCount == 0, "the loop keeps it")
            }
        }
        #expect(votes == [.refused(.noAnswer)])
        try expectExpiredOnTime(watched, deadline: deadline, since: start)
        #expect(timer.signalCount == 1)
        #expect(watched.expiries == 1)
        await tearDown(loop, timer, far)
    }

    @Test("a loop that shuts down passes the deadlines it keeps on to the timer: their waits still expire at their own time, not at the timer's far one")
    func loopShutdownHandsDeadlinesOver() async throws {
        let (loop, timer, far) = await timerSleepingFar()
        let (near, watched) = watchedRound()
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(150)
        await Task(executorPreference: loop) { timer.schedule(watched, at: deadline) }.value
        await loop.shutdown()
        #expect(await collectVotes(of: near) == [.refused(.noAnswer)])
        try expectExpiredOnTime(watched, deadline: deadline, since: start)
        // A deadline set after the loop exited is the timer's own again (the task ran elsewhere):
        // it expires at its time, not at the far one.
        let late = FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true)
        let lateStart = ContinuousClock.now
        let lateVotes = await collectVotes(of: late) {
            Task(executorPreference: loop) { timer.schedule(late, at: .now + .milliseconds(30)) }
        }
        #expect(lateVotes == [.refused(.noAnswer)])
        #expect(lateStart.duration(to: .now) < .seconds(5))
        await tearDown(loop, timer, far)
    }
}

@Suite("Release announcements wake waiters", .timeLimit(.minutes(1)))
struct ReleaseWakingTests {
    // Each waiter still waiting has its timeout scheduled on the coordination's timer, so the
    // timer's count tells when a waiter is in line.

    @Test("one release wakes only the longest-waiting of two waiters; the other waits out its timeout")
    func oneReleaseWakesOne() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let board = LocalCoordination(nodes: [], sender: FanOutSender(nodes: [], acknowledgedNodes: [], deadlines: timer), timer: timer)
        board.beginAcquiring(LockKey("name"))
        let longer = Task { await timed { _ = await board.waitForRelease(of: "name", after: 0, timeout: .seconds(20), next: nil) } }
        #expect(await eventually { timer.count == 1 })
        let shorter = Task { await timed { _ = await board.waitForRelease(of: "name", after: 0, timeout: .seconds(1), next: nil) } }
        #expect(await eventually { timer.count == 2 })

        board.announce(LockKey("name"), release: Array("v1".utf8))
        #expect(await longer.value < .seconds(10))
        #expect(await shorter.value >= .seconds(1))
        #expect(board.generation(of: LockKey("name")) == 1)
    }

    @Test("each release wakes the next waiter in line")
    func releasesWakeInTurn() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let board = LocalCoordination(nodes: [], sender: FanOutSender(nodes: [], acknowledgedNodes: [], deadlines: timer), timer: timer)
        board.beginAcquiring(LockKey("name"))
        let first = Task { await timed { _ = await board.waitForRelease(of: "name", after: 0, timeout: .seconds(20), next: nil) } }
        #expect(await eventually { timer.count == 1 })
        let second = Task { await timed { _ = await board.waitForRelease(of: "name", after: 0, timeout: .seconds(20), next: nil) } }
        #expect(await eventually { timer.count == 2 })

        board.announce(LockKey("name"), release: Array("v1".utf8))
        #expect(await first.value < .seconds(10))
        board.announce(LockKey("name"), release: Array("v2".utf8))
        #expect(await second.value < .seconds(10))
        #expect(board.generation(of: LockKey("name")) == 2)
    }

    @Test("a waiter whose task is cancelled returns promptly, and the next release goes to one still waiting")
    func cancelledWaiterReturns() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let board = LocalCoordination(nodes: [], sender: FanOutSender(nodes: [], acknowledgedNodes: [], deadlines: timer), timer: timer)
        board.beginAcquiring(LockKey("name"))
        let cancelled = Task { await timed { _ = await board.waitForRelease(of: "name", after: 0, timeout: .seconds(20), next: nil) } }
        #expect(await eventually { timer.count == 1 })
        let live = Task { await timed { _ = await board.waitForRelease(of: "name", after: 0, timeout: .seconds(20), next: nil) } }
        #expect(await eventually { timer.count == 2 })

        cancelled.cancel()
        #expect(await cancelled.value < .seconds(10))
        #expect(board.generation(of: LockKey("name")) == 0)
        board.announce(LockKey("name"), release: Array("v1".utf8))
        #expect(await live.value < .seconds(10))
    }

    @Test("every confirmation of the subscription (a node's first, or after a reconnect) wakes every waiter, not as a release, for one more attempt")
    func confirmationWakesAll() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let board = LocalCoordination(nodes: [], sender: FanOutSender(nodes: [], acknowledgedNodes: [], deadlines: timer), timer: timer)
        board.beginAcquiring(LockKey("name"))
        board.listen("name")
        let waiters = (0..<3).map { _ in
            Task { await board.waitForRelease(of: "name", after: 0, timeout: .seconds(20), next: nil) }
        }
        #expect(await eventually { timer.count == 3 })

        board.confirmed("name")
        for waiter in waiters {
            #expect(await waiter.value == WaitOutcome(woken: false, confirmed: true))
        }
        // A lock() whose attempt went out before the confirmation does not wait at all, and is
        // not woken as by a release (its next failed attempt waits in full, not briefly).
        #expect(board.generation(of: LockKey("name")) == 1)
        #expect(await board.waitForRelease(of: "name", after: 0, timeout: .seconds(20), next: nil) == WaitOutcome(woken: false, confirmed: true))
        // A release since then, with or without confirmations after it, does wake.
        board.announce(LockKey("name"), release: Array("v1".utf8))
        board.confirmed("name")
        #expect(await board.waitForRelease(of: "name", after: 1, timeout: .seconds(20), next: nil) == WaitOutcome(woken: true))
        #expect(await board.waitForRelease(of: "name", after: 2, timeout: .seconds(20), next: nil) == WaitOutcome(woken: false, confirmed: true))
        #expect(board.generation(of: LockKey("name")) == 3)
        // What a lock() asks after an attempt that a confirmation's wake let through: was there a
        // release since the wait began (the short retry), or only confirmations?
        #expect(board.released(LockKey("name"), since: 0) && board.released(LockKey("name"), since: 1))
        #expect(!board.released(LockKey("name"), since: 2) && !board.released(LockKey("name"), since: 3))
        // Another node's confirmation (or the same node's after a reconnect) counts again.
        let later = Task { await board.waitForRelease(of: "name", after: 3, timeout: .seconds(20), next: nil) }
        #expect(await eventually { board.waiterCount(of: "name") == 1 })
        board.confirmed("name")
        #expect(await later.value == WaitOutcome(woken: false, confirmed: true))
        #expect(board.generation(of: LockKey("name")) == 4)
        // A name that is not subscribed (or its handoff channel, not subscribed) counts nothing.
        board.confirmed("name", handoffs: true)
        board.confirmed("other")
        #expect(board.generation(of: LockKey("name")) == 4)
    }
}

@Suite("Vetting the nodes' addresses")
struct NodeAddressVettingTests {
    /// The refusal of `outcome`, nil when it let the socket through.
    private func refusal(_ outcome: Result<@Sendable () -> Void, RedisError>) -> RedisError? {
        if case let .failure(error) = outcome { return error }
        return nil
    }

    /// The close hook of `outcome`, which must let the socket through.
    private func admitted(_ outcome: Result<@Sendable () -> Void, RedisError>) -> (@Sendable () -> Void)? {
        if case let .success(closed) = outcome { return closed }
        Issue.record("refused: \(String(describing: refusal(outcome)))")
        return nil
    }

    @Test("an address is held by the node whose sockets reach it, for as long as any of them (either lane, its subscriber) is open, whether or not the node answers; a second node is refused meanwhile, naming both, and takes it once the last of them closed")
    func heldWhileAnySocketIsOpen() {
        let endpoints: [RedisEndpoint] = [.hostname("a.example", port: 6379), .hostname("b.example", port: 6379), .hostname("c.example", port: 6379)]
        let health = NodeHealth(endpoints: endpoints, logger: Logger(label: "test"))
        let address = "192.0.2.7:6379"
        let shared = admitted(health.vet(0, peer: address))
        let subscriber = admitted(health.vet(0, peer: address))
        _ = admitted(health.vet(2, peer: "192.0.2.9:6379"))
        let refused = refusal(health.vet(1, peer: address))
        #expect(refused?.code == .invalidAddress && refused?.isPermanent == true)
        #expect(refused?.message.hasPrefix("the same server as node 0 (a.example:6379): both reach 192.0.2.7:6379") == true, "\(String(describing: refused))")
        // Node 0 stops answering: its open subscriber still reaches the server, so node 1 may not.
        health.failed(0, RedisError(code: .timeout, endpoint: endpoints[0], message: "no answer"))
        shared?()
        #expect(refusal(health.vet(1, peer: address)) != nil)
        // Its last socket there closed: the address is free, node 1 takes it, node 0 is refused.
        subscriber?()
        let taken = admitted(health.vet(1, peer: address))
        #expect(refusal(health.vet(0, peer: address))?.message.hasPrefix("the same server as node 1") == true)
        taken?()
        // Another TLS server name is another server (a gateway routes by name).
        #expect(refusal(health.vet(0, peer: address + " sni=a.example")) == nil)
    }

    @Test("a server is held by its run_id too: a second node that reaches it at another address (its Unix socket) is refused naming the run_id, holds nothing after the refusal, and takes it once the first node's sockets closed")
    func heldByRunID() {
        let endpoints: [RedisEndpoint] = [.hostname("a.example", port: 6379), .unixDomainSocket(path: "/run/redis.sock"), .hostname("c.example", port: 6379)]
        let health = NodeHealth(endpoints: endpoints, logger: Logger(label: "test"))
        let first = admitted(health.vet(0, peer: "192.0.2.7:6379", server: "r1"))
        let refused = refusal(health.vet(1, peer: "unix:1:2", server: "r1"))
        #expect(refused?.code == .invalidAddress && refused?.isPermanent == true)
        #expect(refused?.message.hasPrefix("the same server as node 0 (a.example:6379): both reach the server with run_id r1") == true, "\(String(describing: refused))")
        // The refused socket's address was not taken: another node may reach it.
        admitted(health.vet(2, peer: "unix:1:2", server: "r2"))?()
        // Node 1's server told its run_id (to the refused socket): a socket of node 1 without
        // one is refused, for now (INFO closed on by a passing fault, +info revoked)...
        let unidentified = refusal(health.vet(1, peer: "unix:1:2", server: nil))
        #expect(unidentified?.code == .unexpectedReply && unidentified?.isPermanent == false, "\(String(describing: unidentified))")
        #expect(unidentified?.message.contains("told one before") == true, "\(String(describing: unidentified))")
        // ...and holds nothing: another node may reach that address.
        admitted(health.vet(2, peer: "unix:1:2", server: "r2"))?()
        first?()
        let taken = admitted(health.vet(1, peer: "unix:1:2", server: "r1"))
        #expect(refusal(health.vet(0, peer: "192.0.2.7:6379", server: "r1"))?.message.hasPrefix("the same server as node 1") == true)
        taken?()
    }

    @Test("a node whose server never told a run_id (a user without +info, a proxy that does not pass INFO) is vetted by its address alone; once it tells one, a socket of it without one is refused (transient) until a socket tells it again")
    func runIDOnceToldIsRequired() {
        let endpoints: [RedisEndpoint] = [.hostname("a.example", port: 6379), .hostname("b.example", port: 6379)]
        let records = Locked<[String]>([])
        let health = NodeHealth(endpoints: endpoints, logger: capturingLogger(into: records))
        let plain = admitted(health.vet(0, peer: "192.0.2.7:6379", server: nil))
        plain?()
        // No address either (the system would not tell): nothing to refuse it by.
        admitted(health.vet(1, peer: nil, server: nil))?()
        let told = admitted(health.vet(0, peer: "192.0.2.7:6379", server: "r1"))
        told?()
        let refused = refusal(health.vet(0, peer: "192.0.2.7:6379", server: nil))
        #expect(refused?.code == .unexpectedReply)
        #expect(refusal(health.vet(0, peer: nil, server: nil))?.code == .unexpectedReply)
        // The refusal counts neither as silence nor as an answer (another unexpected reply
        // would be one): the node's sockets let through before may still vote.
        if let refused { health.failed(0, refused) }
        #expect(!health.isDown(0))
        health.failed(0, RedisError(code: .timeout, endpoint: endpoints[0], message: "no answer"))
        if let refused { health.failed(0, refused) }
        #expect(health.isDown(0))
        health.failed(1, RedisError(code: .unexpectedReply, endpoint: endpoints[1], message: "odd reply"))
        #expect(!health.isDown(1))
        // Node 1 never told one: unaffected.
        admitted(health.vet(1, peer: "192.0.2.9:6379", server: nil))?()
        // Without an address, the run_id alone still tells one server from another.
        let byRunID = admitted(health.vet(1, peer: nil, server: "r2"))
        #expect(refusal(health.vet(0, peer: nil, server: "r2"))?.code == .invalidAddress)
        byRunID?()
        // Told again, but of the server node 1 holds (by r2): refused as the same server, with
        // no line saying node 0 is back.
        let byR2 = admitted(health.vet(1, peer: "192.0.2.9:6379", server: "r2"))
        #expect(refusal(health.vet(0, peer: "192.0.2.8:6379", server: "r2"))?.code == .invalidAddress)
        byR2?()
        #expect(!records.value.contains { $0.contains("tells its run_id again") }, "\(records.value)")
        // Told again and let through: logged once; the next failure of another kind is judged as before.
        admitted(health.vet(0, peer: "192.0.2.7:6379", server: "r1"))?()
        #expect(records.value.filter { $0.hasPrefix("error redlock node's server no longer tells its run_id") }.count == 1, "\(records.value)")
        #expect(records.value.filter { $0.contains("tells its run_id again") }.count == 1, "\(records.value)")
        // Still down from the timeout; an unexpected reply now is an answer again.
        #expect(health.isDown(0))
        health.failed(0, RedisError(code: .unexpectedReply, endpoint: endpoints[0], message: "odd reply"))
        #expect(!health.isDown(0))
        // A second episode is logged again.
        #expect(refusal(health.vet(0, peer: "192.0.2.7:6379", server: nil))?.code == .unexpectedReply)
        #expect(records.value.filter { $0.hasPrefix("error redlock node's server no longer tells its run_id") }.count == 2, "\(records.value)")
    }

    @Test("checkNodes(for:) judges INFO server by its run_id: a reply without one is named, as it cannot tell one server listed twice")
    func serverInfoJudged() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:0123456789abcdef0123456789abcdef01234567\r\nuptime_in_seconds:5\r\n"
        #expect(RedlockClient.judgeServerInfo(.bulkString(Array(info.utf8))) == nil)
        let withoutRunID = "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:5\r\n"
        #expect(RedlockClient.judgeServerInfo(.bulkString(Array(withoutRunID.utf8)))?.contains("without a run_id") == true)
        #expect(RedlockClient.judgeServerInfo(.integer(1))?.contains("unexpected reply") == true)
    }
}
