@testable import Redlock
import RedlockTransport
import Testing

@Suite("The decision of an acquire attempt (no Redis, no clock)")
struct AcquireDecisionTests {
    private let start = ContinuousClock.now
    private let endpoint = RedisEndpoint.hostname("127.0.0.1", port: 6379)

    private func decide(
        _ votes: [Vote?], after elapsed: Duration = .milliseconds(10), cancelled: Bool = false, fenceShortfall: String? = nil,
        countsHandoffs: Bool = false, down: Set<Int> = [], neverWritten: [Int] = []
    ) -> AcquireDecision<ContinuousClock.Instant> {
        var mask = NodeMask.none
        for index in neverWritten { mask.insert(index) }
        return AcquireDecision.decide(
            votes: votes, quorum: Timing.quorum(nodeCount: votes.count), start: start, end: start + elapsed,
            expiry: .seconds(10), driftFactor: 0.01, cancelled: cancelled, fenceShortfall: fenceShortfall, countsHandoffs: countsHandoffs,
            down: down, neverWritten: mask
        )
    }

    private func code(_ decision: AcquireDecision<ContinuousClock.Instant>) -> RedlockError.Code? {
        if case let .failed(code, _) = decision.outcome { return code }
        return nil
    }

    @Test("a quorum with time left is a lease valid until start + expiry − drift − 2 ms, counted from the attempt's start")
    func acquired() {
        let decision = decide([.granted(0), .granted(0), .granted(0), .refused(.taken), .refused(.noAnswer)])
        // 10 s − 10 ms elapsed − 100 ms drift − 2 ms, after the end at 10 ms.
        #expect(decision.outcome == .acquired(validUntil: start + .seconds(10) - .milliseconds(102)))
        #expect(decision.releaseAwaited.isEmpty && decision.releaseQueued.isEmpty)
    }

    @Test("a quorum that took longer than the expiry allows is validityExhausted, released where granted")
    func exhausted() {
        let decision = decide([.granted(0), .granted(0), .granted(0)], after: .seconds(10))
        #expect(code(decision) == .validityExhausted)
        #expect(decision.releaseAwaited == [0, 1, 2])
    }

    @Test("when no node answered within the budget, the error names the budget (a tiny expiry makes it too short); one that answered leaves it out")
    func silentNodesNameTheBudget() {
        let silent = AcquireDecision.decide(
            votes: [.refused(.noAnswer), .refused(.noAnswer), .refused(.noAnswer)], quorum: 2, start: start, end: start + .microseconds(600),
            expiry: .milliseconds(10), driftFactor: 0.01, cancelled: false, budget: .microseconds(500)
        )
        guard case let .failed(code, message) = silent.outcome else { Issue.record("acquired"); return }
        #expect(code == .noQuorum)
        #expect(message.contains("no node answered within the attempt's time budget of 0.0005 seconds"), "\(message)")
        let answered = AcquireDecision.decide(
            votes: [.refused(.noAnswer), .refused(.noAnswer), .refused(.error(RedisError(code: .timeout, endpoint: endpoint, message: "x")))],
            quorum: 2, start: start, end: start + .milliseconds(1), expiry: .seconds(10), driftFactor: 0.01, cancelled: false, budget: .milliseconds(500)
        )
        guard case let .failed(_, other) = answered.outcome else { Issue.record("acquired"); return }
        #expect(!other.contains("no node answered"), "\(other)")
        let oneGranted = AcquireDecision.decide(
            votes: [.granted(0), .refused(.noAnswer), .refused(.noAnswer)], quorum: 2, start: start, end: start + .milliseconds(1),
            expiry: .seconds(10), driftFactor: 0.01, cancelled: false, budget: .milliseconds(100)
        )
        guard case let .failed(_, granted) = oneGranted.outcome else { Issue.record("acquired"); return }
        #expect(!granted.contains("no node answered"), "\(granted)")
    }

    @Test("taken on a quorum is taken; a split vote is noQuorum; both release where granted and queue the silent nodes' releases")
    func failures() {
        let taken = decide([.granted(0), .refused(.taken), .refused(.taken), .refused(.taken), .refused(.noAnswer)])
        #expect(code(taken) == .taken)
        #expect(taken.releaseAwaited == [0])
        #expect(taken.releaseQueued == [4])
        let split = decide([.granted(0), .granted(0), .refused(.taken), .refused(.noAnswer), .refused(.noAnswer)])
        #expect(code(split) == .noQuorum)
        #expect(split.releaseAwaited == [0, 1])
        #expect(split.releaseQueued == [3, 4])
        // Every refusal a holder's: taken, even below a quorum of refusals.
        #expect(code(decide([.granted(0), .granted(0), .refused(.taken), nil, nil])) == .taken)
    }

    @Test("a noQuorum decided before some nodes answered says how many had not: they are in no node list")
    func unsettledNodesAreNamed() {
        let refused = Vote.refused(.error(RedisError(code: .connectionRefused, endpoint: endpoint, message: "refused")))
        guard case let .failed(code, message) = decide([.unsettled, refused, refused]).outcome else {
            Issue.record("decided as acquired")
            return
        }
        #expect(code == .noQuorum)
        #expect(message == "0 of 3 nodes granted (node 0 had not answered when the refusals made a quorum impossible), 2 needed")
        guard case let .failed(_, settled) = decide([refused, refused, refused]).outcome else { return }
        #expect(settled == "0 of 3 nodes granted, 2 needed")
    }

    @Test("refusals that set nothing are not released; a refused connection neither, nor a command never written; a node error that may have set the key is; a node known down is never awaited")
    func releasePlan() {
        let errors: [Vote?] = [
            .refused(.epochTooYoung), .refused(.error(RedisError(code: .connectionRefused, endpoint: endpoint, message: "refused"))),
            .refused(.error(RedisError(code: .timeout, endpoint: endpoint, message: "slow"))),
            .refused(.error(RedisError(code: .io, endpoint: endpoint, message: "reset"))), .unsettled,
        ]
        // The refused connection's command was never written (the connection says so).
        let decision = decide(errors, neverWritten: [1])
        #expect(code(decision) == .noQuorum)
        #expect(decision.releaseAwaited == [3])
        // Not answered yet when the refusals decided it: released without waiting, as silent ones,
        // unless the caller counts handoffs (the answer says whether the node still counts).
        #expect(decision.releaseQueued == [2, 4])
        let counting = decide(errors, countsHandoffs: true, neverWritten: [1])
        #expect(counting.releaseAwaited == [3, 4])
        #expect(counting.releaseQueued == [2])
        // A node known down is not awaited even then: it would hold up the caller for the budget.
        let down = decide(errors, countsHandoffs: true, down: [4], neverWritten: [1])
        #expect(down.releaseAwaited == [3])
        #expect(down.releaseQueued == [2, 4])
        // Cancelled: the caller returns once the nodes that answered confirm; on those that did
        // not (a frozen one would never confirm), the release runs behind the acquire, also when
        // the caller counts handoffs (the call ends).
        for countsHandoffs in [false, true] {
            let cancelled = decide(errors, cancelled: true, countsHandoffs: countsHandoffs, neverWritten: [1])
            #expect(code(cancelled) == .cancelled)
            #expect(cancelled.releaseAwaited == [3])
            #expect(cancelled.releaseQueued == [2, 4])
        }
        // Refused before it was written (a full queue, a connection shut down): nothing to release,
        // which would only add to that queue. A shutdown after the write may have let it run, and
        // so may a grant whose vote a later command's failure replaced (a fencing raise, a restart
        // guard's INFO), whatever that failure says of its own command.
        let unwritten = RedisError(code: .overloaded, endpoint: endpoint, message: "full").unwritten
        let unsent = decide(
            [
                .refused(.error(unwritten)), .refused(.error(unwritten)), .granted(1),
                .refused(.error(RedisError(code: .shutdown, endpoint: endpoint, message: "before the server answered"))),
                .refused(.error(RedisError(code: .connectionRefused, endpoint: endpoint, message: "the raise's connect").unwritten)),
            ],
            neverWritten: [0, 1]
        )
        #expect(unsent.releaseAwaited == [2, 3, 4] && unsent.releaseQueued.isEmpty)
    }

    @Test("a cancelled caller gets no lease even with a quorum; a failed fencing round is noQuorum; exhausted counters on a blocking minority are named")
    func overrides() {
        let quorum: [Vote?] = [.granted(3), .granted(4), .granted(5)]
        #expect(code(decide(quorum, cancelled: true)) == .cancelled)
        #expect(decide(quorum, cancelled: true).releaseAwaited == [0, 1, 2])
        #expect(code(decide(quorum, fenceShortfall: "the fencing round reached 1 of 3 nodes, 2 needed")) == .noQuorum)
        let counters = decide([.granted(7), .refused(.fencingCounterExhausted), .refused(.fencingCounterExhausted)])
        #expect(code(counters) == .fencingCounterExhausted)
        #expect(counters.releaseAwaited == [0])
    }
}
