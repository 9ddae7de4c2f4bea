import RedlockTransport

/// The quorum rule and validity formula, written once, as pure functions of their inputs.
enum Timing {
    /// The fixed allowance subtracted from every validity, on top of the drift factor.
    static let fixedDriftAllowance: Duration = .milliseconds(2)

    /// A strict majority of `nodeCount`: `nodeCount / 2 + 1`.
    static func quorum(nodeCount: Int) -> Int {
        nodeCount / 2 + 1
    }

    /// How long a lease stays valid after an operation that took `elapsed`:
    /// `expiry − elapsed − expiry × driftFactor − 2 ms`. Zero or negative means not valid.
    static func validity(expiry: Duration, elapsed: Duration, driftFactor: Double) -> Duration {
        expiry - elapsed - expiry * driftFactor - fixedDriftAllowance
    }

    /// The instant a lease acquired by an operation from `start` to `end` stops being valid,
    /// or `nil` when the validity is not positive.
    static func validUntil<Instant: InstantProtocol>(
        start: Instant, end: Instant, expiry: Duration, driftFactor: Double
    ) -> Instant? where Instant.Duration == Duration {
        let remaining = validity(expiry: expiry, elapsed: start.duration(to: end), driftFactor: driftFactor)
        guard remaining > .zero else { return nil }
        return end.advanced(by: remaining)
    }

    /// The time budget of one attempt: `expiry × timeoutFactor`.
    static func attemptBudget(expiry: Duration, timeoutFactor: Double) -> Duration {
        expiry * timeoutFactor
    }
}

/// Running counts of node outcomes during one fan-out, and whether the outcome is decided.
struct Tally: Sendable, Equatable {
    let quorum: Int
    private(set) var granted = 0
    private(set) var pending: Int

    init(nodeCount: Int) {
        quorum = Timing.quorum(nodeCount: nodeCount)
        pending = nodeCount
    }

    mutating func record(granted wasGranted: Bool) {
        pending -= 1
        if wasGranted { granted += 1 }
    }

    /// A quorum granted.
    var succeeded: Bool { granted >= quorum }
    /// Even if every pending node granted, there would be no quorum.
    var cannotSucceed: Bool { granted + pending < quorum }
    /// Nothing the pending nodes answer can change the outcome.
    var isDecided: Bool { succeeded || cannotSucceed }
}

extension Duration {
    /// The duration in whole milliseconds, rounded up, at least 1.
    var millisecondsRoundedUp: Int64 {
        let nanos = wholeNanoseconds
        return Swift.max(1, (nanos + 999_999) / 1_000_000)
    }
}
