import RedlockTransport
import Synchronization

/// One reading of a node's wall clock: the node's `TIME` (in µs) from an acquire's reply, and
/// when, on this client's monotonic clock, the request was sent and the reply received. The node
/// read its clock somewhere between the two.
struct ClockObservation: Sendable, Equatable {
    var nodeMicroseconds: Int64
    var sentAt: ContinuousClock.Instant
    var receivedAt: ContinuousClock.Instant
}

/// What two readings of one node's clock say about it (``LockOptions/clockGuard``).
enum ClockVerdict: Sendable, Equatable {
    /// The node's clock advanced by no more than this client's did (within the allowance).
    case consistent
    /// The node's clock advanced by more than this client's could have, by `excess`: it runs
    /// fast or stepped forward, so it may have expired keys early.
    case ranAhead(excess: Duration)
    /// The node's clock advanced by less than this client's must have: it stepped back (or runs
    /// slow). Keys then live longer, which costs availability, not safety.
    case wentBack

    /// Compares `later` with `earlier`, two readings of one node's clock.
    ///
    /// The client's elapsed time between the node's two reads lies between
    /// `later.sentAt − earlier.receivedAt` and `later.receivedAt − earlier.sentAt`; the node's is
    /// the difference of its readings. Beyond that uncertainty the node may differ by
    /// `driftFactor` × the elapsed time plus 2 ms (the same allowance validity subtracts, and
    /// `TIME`'s granularity).
    static func of(earlier: ClockObservation, later: ClockObservation, driftFactor: Double) -> ClockVerdict {
        let node = Duration.microseconds(later.nodeMicroseconds - earlier.nodeMicroseconds)
        let longest = earlier.sentAt.duration(to: later.receivedAt)
        let shortest = max(.zero, earlier.receivedAt.duration(to: later.sentAt))
        let allowance = longest * driftFactor + Timing.fixedDriftAllowance
        if node > longest + allowance { return .ranAhead(excess: node - longest) }
        if node < shortest - allowance { return .wentBack }
        return .consistent
    }
}

/// What a client knows of each node's wall clock, to refuse the votes of a node whose clock ran
/// ahead (``LockOptions/clockGuard``).
///
/// Each reading is judged against the node's previous reading (a step shows at once, with the
/// allowance of a short interval) and against a baseline no older than the window (a clock a
/// little fast shows as time passes; the allowance grows with the interval, so the baseline
/// moves on once it is older than the window). A reading that ran ahead makes the node
/// untrusted from then on for whatever hold-off the asking lock uses (every lease the node may
/// have cut short has ended by then), and becomes the new reference; a clock that keeps running
/// fast keeps it untrusted. A reading that went back becomes the new reference too. Readings
/// that finish out of order (concurrent attempts) are judged only against older ones.
///
/// A client's first reading of a node judges nothing: a node that jumped before a client first
/// saw it is outside its reach. (A clock set back is the node's own check: the acquire script
/// refuses while its clock is behind the latest time it showed.)
final class NodeClocks: Sendable {
    private struct Entry {
        var previous: ClockObservation
        var baseline: ClockObservation
        /// When a reading last showed the clock running ahead, and by how much.
        var ranAheadAt: ContinuousClock.Instant?
        var excess: Duration = .zero
    }

    private struct State {
        var entries: [Entry?]
        /// The oldest a baseline may be: the longest window any lock asked for, so that a lock
        /// with a short hold-off does not keep the baseline too young for a long one.
        var window: Duration = .zero
    }

    private let state: Mutex<State>

    init(nodeCount: Int) {
        state = Mutex(State(entries: Array(repeating: nil, count: nodeCount)))
    }

    /// Records `observation` of node `index`; returns how far its clock ran ahead when the node
    /// is not to be trusted now by a lock whose hold-off is `holdOff` (and whether this reading
    /// showed it newly), else nil.
    ///
    /// - Parameters:
    ///   - driftFactor: The allowed rate difference (``LockOptions/driftFactor``).
    ///   - holdOff: How long after a reading that ran ahead the node stays refused for the asking
    ///     lock: its ``LockOptions/epochGuard``, or its expiry.
    ///   - window: The asking lock's longest useful baseline age (its hold-off); the baseline
    ///     moves on only once it is older than the longest window any lock has given.
    func observe(
        _ observation: ClockObservation, node index: Int, driftFactor: Double, holdOff: Duration, window: Duration
    ) -> (excess: Duration, newlySeen: Bool)? {
        state.withLock { state -> (excess: Duration, newlySeen: Bool)? in
            state.window = max(state.window, window)
            let window = state.window
            guard var entry = state.entries[index] else {
                state.entries[index] = Entry(previous: observation, baseline: observation)
                return nil
            }
            var newlySeen = false
            var ranAhead: Duration?
            var wentBack = false
            for reference in [entry.previous, entry.baseline] where reference.sentAt <= observation.sentAt {
                switch ClockVerdict.of(earlier: reference, later: observation, driftFactor: driftFactor) {
                case let .ranAhead(excess): ranAhead = max(ranAhead ?? .zero, excess)
                case .wentBack: wentBack = true
                case .consistent: break
                }
            }
            if let excess = ranAhead {
                newlySeen = entry.ranAheadAt.map { observation.receivedAt >= $0 + holdOff } ?? true
                entry.ranAheadAt = max(entry.ranAheadAt ?? observation.receivedAt, observation.receivedAt)
                entry.excess = excess
                entry.previous = observation
                entry.baseline = observation
            } else if wentBack {
                entry.previous = observation
                entry.baseline = observation
            } else if observation.sentAt >= entry.previous.sentAt {
                entry.previous = observation
                if entry.baseline.receivedAt.duration(to: observation.sentAt) > window { entry.baseline = observation }
            }
            state.entries[index] = entry
            if let ranAheadAt = entry.ranAheadAt, observation.receivedAt < ranAheadAt + holdOff {
                return (entry.excess, newlySeen)
            }
            return nil
        }
    }
}

/// The clock guard's check of one acquire attempt's replies, made in each reply's handler so
/// that the round is decided on votes already judged: when the attempt was sent, and how a node's
/// reading is judged (``NodeClocks/observe(_:node:driftFactor:holdOff:window:)``, logging).
final class ClockCheck: Sendable {
    private let sent = Mutex<ContinuousClock.Instant?>(nil)
    /// Judges node `index`'s reading; returns the excess when the node is not to be trusted.
    let judge: @Sendable (_ index: Int, _ observation: ClockObservation) -> Duration?

    init(judge: @escaping @Sendable (_ index: Int, _ observation: ClockObservation) -> Duration?) {
        self.judge = judge
    }

    /// Notes that the attempt is being sent now (the first time only).
    func markSent() {
        let now = ContinuousClock.now
        sent.withLock { if $0 == nil { $0 = now } }
    }

    /// Node `index`'s vote once its reading is judged: a grant from a node whose clock ran ahead
    /// becomes a refusal (its key is released with the attempt's clean-up when the attempt fails;
    /// when it succeeds, the key stays until the unlock, uncounted).
    func vote(_ vote: Vote, reply: RedisValue, from index: Int) -> Vote {
        guard let micros = Self.nodeMicroseconds(in: reply), let sentAt = sent.withLock({ $0 }) else { return vote }
        let observation = ClockObservation(nodeMicroseconds: micros, sentAt: sentAt, receivedAt: .now)
        guard let excess = judge(index, observation), vote.isGranted else { return vote }
        return .refused(.clockRanAhead(by: excess))
    }

    /// The node's `TIME` in µs from a reply `{code, seconds, microseconds}`; nil for any other
    /// reply or one that overflows.
    static func nodeMicroseconds(in reply: RedisValue) -> Int64? {
        guard case let .array(items) = reply, items.count >= 3,
              let seconds = items[1].integer, let microseconds = items[2].integer
        else { return nil }
        let (total, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000)
        guard !overflow else { return nil }
        let (sum, sumOverflow) = total.addingReportingOverflow(microseconds)
        return sumOverflow ? nil : sum
    }
}
