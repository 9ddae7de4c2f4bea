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

extension Duration {
    /// The duration in milliseconds with at most three decimals, for messages: `250 ms`,
    /// `1.667 ms` (cut, not rounded, at the microsecond).
    var millisecondsDescription: String {
        let micros = wholeNanoseconds / 1_000
        let sign = micros < 0 ? "-" : ""
        let whole = (micros / 1_000).magnitude
        var digits = String((micros % 1_000).magnitude)
        guard digits != "0" else { return "\(sign)\(whole) ms" }
        while digits.count < 3 { digits = "0" + digits }
        while digits.hasSuffix("0") { digits.removeLast() }
        return "\(sign)\(whole).\(digits) ms"
    }

    /// The duration for messages, in the unit that reads best: `millisecondsDescription` under
    /// a second, else seconds to three decimals (`1582.992 s`; a `Duration`'s own description
    /// prints every digit of a `Double`: `1582.9922126449999 seconds`).
    var readableDescription: String {
        let nanos = wholeNanoseconds
        guard nanos.magnitude >= 1_000_000_000 else { return millisecondsDescription }
        let millis = nanos / 1_000_000
        var fraction = String((millis % 1_000).magnitude)
        while fraction.count < 3 { fraction = "0" + fraction }
        return "\(millis < 0 ? "-" : "")\((millis / 1_000).magnitude).\(fraction) s"
    }

    /// The duration in whole milliseconds, rounded up, at least 1 (saturating: the longest
    /// durations give `Int64.max / 1_000_000` or one more, never a trap).
    var millisecondsRoundedUp: Int64 {
        let nanos = wholeNanoseconds
        return Swift.max(1, nanos / 1_000_000 + (nanos % 1_000_000 > 0 ? 1 : 0))
    }
}
