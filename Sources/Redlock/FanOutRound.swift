import RedlockTransport
import Synchronization

/// One fan-out in flight: collects the nodes' votes as their replies arrive (on the connections'
/// I/O threads) and resumes the waiting caller exactly once, when every node answered, the
/// outcome is decided (if asked), the budget ran out or the caller was cancelled.
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
    }

    private let state: Mutex<State>
    /// Mirrors `State.finished` so the deadline timer can drop finished rounds without the lock.
    private let finishedFlag = Atomic<Bool>(false)
    private let returnWhenDecided: Bool

    /// A round asking the nodes in `order`; every other node's vote stays nil and counts as refused.
    init(nodeCount: Int, order: [Int], returnWhenDecided: Bool) {
        var votes = [Vote?](repeating: nil, count: nodeCount)
        var tally = Tally(nodeCount: nodeCount)
        for _ in 0..<(nodeCount - order.count) { tally.record(granted: false) }
        for index in order { votes[index] = .refused(.noAnswer) }
        state = Mutex(State(votes: votes, tally: tally, unanswered: order.count))
        self.returnWhenDecided = returnWhenDecided
    }

    /// Whether the caller has its votes (or will get them the moment it installs its continuation).
    var isFinished: Bool { finishedFlag.load(ordering: .acquiring) }

    /// Hands over the caller's continuation; resumes it at once when the round already finished.
    func install(_ continuation: UnsafeContinuation<[Vote?], Never>) {
        let votes: [Vote?]? = state.withLock { state in
            if state.finished || state.unanswered == 0 {
                state.finished = true
                finishedFlag.store(true, ordering: .releasing)
                return state.votes
            }
            state.continuation = continuation
            return nil
        }
        if let votes { continuation.resume(returning: votes) }
    }

    /// Records node `index`'s vote; ignored once the round finished.
    func record(_ vote: Vote, from index: Int) {
        let resume = state.withLock { state -> (UnsafeContinuation<[Vote?], Never>, [Vote?])? in
            guard !state.finished else { return nil }
            state.votes[index] = vote
            state.unanswered -= 1
            state.tally.record(granted: vote.isGranted)
            if state.unanswered == 0 { return finish(&state) }
            if returnWhenDecided, state.tally.isDecided {
                // Nodes still silent did not matter: unsettled, not failed.
                for index in state.votes.indices {
                    if case .refused(.noAnswer)? = state.votes[index] { state.votes[index] = .unsettled }
                }
                return finish(&state)
            }
            return nil
        }
        if let (continuation, votes) = resume { continuation.resume(returning: votes) }
    }

    /// Ends the round now: the budget ran out or the caller was cancelled. Nodes still silent
    /// keep `.refused(.noAnswer)`.
    func expire() {
        let resume = state.withLock { state -> (UnsafeContinuation<[Vote?], Never>, [Vote?])? in
            guard !state.finished else { return nil }
            return finish(&state)
        }
        if let (continuation, votes) = resume { continuation.resume(returning: votes) }
    }

    /// Marks the round finished; returns the continuation to resume (outside the lock), if installed.
    private func finish(_ state: inout State) -> (UnsafeContinuation<[Vote?], Never>, [Vote?])? {
        state.finished = true
        finishedFlag.store(true, ordering: .releasing)
        guard let continuation = state.continuation else { return nil }
        state.continuation = nil
        return (continuation, state.votes)
    }
}
