import Synchronization

/// The line a fair lock's attempt leaves once it got the lock: the nodes that refused it as
/// taken (``Scripts/acquireFair`` put the caller in line there), whether they answered before
/// the attempt was decided or after, and the nodes whose late answer is no grant at all (a
/// reply timeout or a broken connection: the attempt may have run there). Each such node is
/// sent ``Scripts/leaveLineHolding``, behind the attempt on its connection; otherwise a release
/// reaching that node later would hand the caller a key that lives the releaser's expiry. The
/// script touches only the caller's own entry and key, so sending it where the attempt did not
/// queue costs a round trip and nothing else. A failed attempt leaves nothing: its caller
/// stays in line.
///
/// Votes that come after the decision arrive through ``late(_:_:)`` (the round's late-vote
/// hook, on whichever thread read the reply); the decision through ``decided(acquired:votes:)``,
/// once. Nothing is sent for an attempt every node granted: an uncontended `lock()` pays
/// nothing.
final class LineLeave: LateVotes {
    private enum Outcome {
        /// Not decided yet: the nodes that refused late so far.
        case pending([Int])
        case acquired
        case failed
    }

    private let outcome = Mutex(Outcome.pending([]))
    /// Sends the leave to the given nodes.
    private let leave: @Sendable ([Int]) -> Void

    init(leave: @escaping @Sendable ([Int]) -> Void) {
        self.leave = leave
    }

    /// Node `index`'s vote, come after the attempt was decided: anything but a grant may have
    /// left the caller in line there.
    func late(_ index: Int, _ vote: Vote) {
        guard !vote.isGranted else { return }
        let sendNow = outcome.withLock { outcome -> Bool in
            switch outcome {
            case var .pending(nodes):
                nodes.append(index)
                outcome = .pending(nodes)
                return false
            case .acquired:
                return true
            case .failed:
                return false
            }
        }
        if sendNow { leave([index]) }
    }

    /// The attempt's outcome, with the votes it was decided on.
    func decided(acquired: Bool, votes: [Vote?]) {
        let nodes = outcome.withLock { outcome -> [Int] in
            guard case let .pending(late) = outcome else { return [] }
            outcome = acquired ? .acquired : .failed
            return acquired ? votes.indices.filter { votes[$0] == .refused(.taken) } + late : []
        }
        if !nodes.isEmpty { leave(nodes) }
    }
}
