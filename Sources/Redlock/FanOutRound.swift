import RedlockTransport
import Synchronization

/// One fan-out in flight: collects the nodes' votes as their replies arrive (on the thread
/// that read them: the event loop, or a caller writing to that connection) and resumes the
/// waiting caller exactly once, when every node answered, the
/// outcome is decided (if asked), the budget ran out or the caller was cancelled. A decided
/// failure waits for the answers still out (within the budget) when they can change what the
/// failure is, which must not depend on which node answered first: while a node refused for
/// good (``Vote/isPermanentRefusal``), when they decide whether too few nodes are left for any
/// retry to succeed; when they could still show the key another holder's or gone on a quorum
/// (`taken`, `missing`: not a failure of the nodes).
///
/// No task is made per node or for the budget: replies come through handlers and the budget is
/// kept by the client's ``DeadlineTimer``.
final class FanOutRound: Expiring {
    private struct State {
        var votes: [Vote?]
        var tally: Tally
        var unanswered: Int
        var continuation: UnsafeContinuation<[Vote?], Never>?
        var finished = false
        /// While its commands are being queued (from its making with `sending: true` until
        /// ``sent()``; ``FanOutSender`` calls it once it has queued them): a command a
        /// connection refuses at once (a full queue) is answered then, and the round does not
        /// decide before every node's command was queued or refused, so that such a refusal is
        /// its node's vote, not `.unsettled` (which would send that node a clean-up).
        var sending = false
        /// The nodes whose command itself was never written (``RedisError/neverWritten``): not a
        /// later command's failure that replaced a vote (a fencing raise, a restart guard's
        /// `INFO`, a `WAIT`), which says nothing of whether the command ran.
        var neverWritten = NodeMask.none
        /// Called once when the round finishes (see ``whenFinished(_:)``).
        var onFinish: (@Sendable () -> Void)?
    }

    private let state: Mutex<State>
    /// Mirrors `State.finished` so the deadline timer can drop finished rounds without the lock.
    private let finishedFlag = Atomic<Bool>(false)
    private let returnWhenDecided: Bool
    /// Given (outside the lock) each vote that comes after the round finished.
    private let lateVotes: (any LateVotes)?
    /// An acquire's round: the client's shutdown ends it at once (``Expiring/endsAtShutdown``).
    let endsAtShutdown: Bool

    /// A round asking the nodes in `order`; every other node's vote stays nil and counts as refused.
    /// `lateVotes` is given each vote that comes after the round finished.
    /// `sending`: its commands are about to be queued; it decides only after ``sent()``.
    /// `endsAtShutdown`: see ``Expiring/endsAtShutdown``.
    init(
        nodeCount: Int, order: [Int], returnWhenDecided: Bool, lateVotes: (any LateVotes)? = nil, sending: Bool = false,
        endsAtShutdown: Bool = false
    ) {
        // Appended rather than `init(repeating:count:)`, whose unspecialized allocation looks
        // up the array's generic metadata on every call.
        var votes: [Vote?] = []
        votes.reserveCapacity(nodeCount)
        for _ in 0..<nodeCount { votes.append(nil) }
        var tally = Tally(nodeCount: nodeCount)
        for _ in 0..<(nodeCount - order.count) { tally.record(granted: false) }
        for index in order { votes[index] = .refused(.noAnswer) }
        state = Mutex(State(votes: votes, tally: tally, unanswered: order.count, sending: sending))
        self.returnWhenDecided = returnWhenDecided
        self.lateVotes = lateVotes
        self.endsAtShutdown = endsAtShutdown
    }

    /// Whether the caller has its votes (or will get them the moment it installs its continuation).
    var isFinished: Bool { finishedFlag.load(ordering: .acquiring) }

    /// Hands over the caller's continuation; resumes it at once when the round already finished.
    func install(_ continuation: UnsafeContinuation<[Vote?], Never>) {
        let finishing: Finishing? = state.withLock { state in
            if state.finished { return Finishing(continuation: continuation, votes: state.votes, onFinish: nil) }
            state.continuation = continuation
            // A round that asks nobody has nothing to wait for (once sent).
            return state.unanswered == 0 && !state.sending ? finish(&state) : nil
        }
        finishing?.deliver()
    }

    /// Records node `index`'s vote; once the round finished, passes it to `lateVotes`.
    func record(_ vote: Vote, from index: Int) {
        var late = false
        let resume = state.withLock { state -> Finishing? in
            guard !state.finished else {
                late = true
                return nil
            }
            state.votes[index] = vote
            state.unanswered -= 1
            state.tally.record(granted: vote.isGranted)
            return finishIfDone(&state)
        }
        resume?.deliver()
        if late, let lateVotes { lateVotes.late(index, vote) }
    }

    /// Notes that node `index`'s command was never written (its connection refused it or failed
    /// before writing it): the node cannot have run it.
    func neverWritten(by index: Int) {
        state.withLock { $0.neverWritten.insert(index) }
    }

    /// The nodes a round with `votes` asked (every one with a vote, `.refused(.noAnswer)`
    /// included) whose command may have run: all but those in `neverWritten`
    /// (``neverWrittenNodes``).
    static func mayHaveRun(votes: [Vote?], neverWritten: NodeMask) -> NodeMask {
        var mask = NodeMask.none
        // (By index: an enumeration copies each vote, payload and all.)
        for index in votes.indices where votes[index] != nil && !neverWritten.containsExactly(index) { mask.insert(index) }
        return mask
    }

    /// The nodes whose command was never written.
    var neverWrittenNodes: NodeMask { state.withLock { $0.neverWritten } }

    /// Every node's command was queued (or refused): the round may decide now.
    func sent() {
        let resume = state.withLock { state -> Finishing? in
            guard !state.finished, state.sending else { return nil }
            state.sending = false
            return finishIfDone(&state)
        }
        resume?.deliver()
    }

    /// Finishes the round when every node answered, or when the outcome is decided and the
    /// caller asked to return then; not while its commands are being queued.
    private func finishIfDone(_ state: inout State) -> Finishing? {
        guard !state.sending else { return nil }
        if state.unanswered == 0 { return finish(&state) }
        if returnWhenDecided, state.tally.isDecided, !Self.awaitsDecidingAnswers(state) {
            // Nodes still silent did not matter: unsettled, not failed.
            for index in state.votes.indices {
                if case .refused(.noAnswer)? = state.votes[index] { state.votes[index] = .unsettled }
            }
            return finish(&state)
        }
        return nil
    }

    /// Ends the round now: the budget ran out or the caller was cancelled. Nodes still silent
    /// keep `.refused(.noAnswer)`.
    func expire() {
        let resume = state.withLock { state -> Finishing? in
            guard !state.finished else { return nil }
            return finish(&state)
        }
        resume?.deliver()
    }

    /// Calls `action` once the round has finished (at once if it has): e.g. to wake the task
    /// that will collect the votes only when they are all in.
    func whenFinished(_ action: @escaping @Sendable () -> Void) {
        let finishing: Finishing? = state.withLock { state in
            if state.finished { return Finishing(continuation: nil, votes: [], onFinish: action) }
            state.onFinish = action
            return state.unanswered == 0 ? finish(&state) : nil
        }
        finishing?.deliver()
    }

    /// Whether a failure decided now waits for the answers still out, because they can change
    /// what the failure is (a success never waits; nor a failure they cannot tip, so that a
    /// silent node then costs nothing):
    /// - some node refused for good, and only those answers tell whether more than `N − quorum`
    ///   nodes do (then no retry can succeed);
    /// - fewer than a quorum refused as "not ours" — the key another holder's (`taken`) or gone
    ///   (`missing`, extending or releasing) — and those answers could make a quorum: the lock's
    ///   or the lease's state, not a failure of the nodes. Two of five nodes down and the key
    ///   held on the other three: their refusals, which come first, must not make it a failure
    ///   of the nodes. (With an even node count, refusals that are all `taken` make a quorum
    ///   impossible before they are one.)
    private static func awaitsDecidingAnswers(_ state: State) -> Bool {
        guard state.tally.cannotSucceed else { return false }
        var permanent = 0
        var notOurs = 0
        for vote in state.votes {
            guard case let .refused(cause)? = vote else { continue }
            if cause.isPermanent { permanent += 1 }
            if cause == .taken || cause == .missing { notOurs += 1 }
        }
        let quorum = state.tally.quorum
        let spare = state.votes.count - quorum
        let permanentUndecided = permanent > 0 && permanent <= spare && permanent + state.unanswered > spare
        let notOursUndecided = notOurs < quorum && notOurs + state.unanswered >= quorum
        return permanentUndecided || notOursUndecided
    }

    /// What finishing hands out, to be delivered outside the lock.
    private struct Finishing {
        let continuation: UnsafeContinuation<[Vote?], Never>?
        let votes: [Vote?]
        let onFinish: (@Sendable () -> Void)?

        func deliver() {
            continuation?.resume(returning: votes)
            onFinish?()
        }
    }

    /// Marks the round finished; returns what to deliver outside the lock.
    private func finish(_ state: inout State) -> Finishing {
        state.finished = true
        finishedFlag.store(true, ordering: .releasing)
        defer {
            state.continuation = nil
            state.onFinish = nil
        }
        return Finishing(continuation: state.continuation, votes: state.votes, onFinish: state.onFinish)
    }
}

/// What takes the votes that come after a ``FanOutRound`` finished (``LineLeave``): called on the
/// thread that read the reply, outside the round's lock; it must be quick.
protocol LateVotes: AnyObject, Sendable {
    func late(_ index: Int, _ vote: Vote)
}
