import RedlockTransport

/// How long `lock()` waits before its next attempt, as a function of the attempts made so far.
public struct RetryDelay: Sendable {
    private let delay: @Sendable (_ failedAttempts: Int) -> Duration
    /// The longest delay `delay` can give after so many failed attempts (its range's upper bound,
    /// the cap before jitter); nil for a delay of the caller's own, whose bound is unknown.
    private let bound: (@Sendable (_ failedAttempts: Int) -> Duration)?
    /// Whether `bound` is the same after any number of failed attempts (a random range, a
    /// constant): then a caller's pace does not change while it waits.
    let hasFixedPace: Bool

    /// A delay computed by `delay`, called with the number of failed attempts so far
    /// (1 before the second attempt). Negative results count as zero.
    public init(_ delay: @escaping @Sendable (_ failedAttempts: Int) -> Duration) {
        self.delay = delay
        bound = nil
        hasFixedPace = false
    }

    private init(
        _ delay: @escaping @Sendable (_ failedAttempts: Int) -> Duration, bound: @escaping @Sendable (_ failedAttempts: Int) -> Duration,
        fixed: Bool
    ) {
        self.delay = delay
        self.bound = bound
        hasFixedPace = fixed
    }

    /// The delay before the attempt that follows `failedAttempts` failed ones.
    public func delay(afterFailedAttempts failedAttempts: Int) -> Duration {
        Swift.max(.zero, delay(failedAttempts))
    }

    /// How often a caller with this delay looks at the nodes after `failedAttempts` failed
    /// attempts, as one figure that does not vary from draw to draw: the longest delay it can
    /// draw (a random range's upper bound, an exponential delay's cap before jitter), or `drawn`
    /// for a delay of the caller's own. Waiters of one name compare it to decide which of them
    /// polls for the others (``LocalCoordination``); only a fixed pace (``hasFixedPace``) is
    /// compared again later, since a waiter that does not poll does not back off.
    func pace(afterFailedAttempts failedAttempts: Int, drawn: Duration) -> Duration {
        bound.map { Swift.max(.zero, $0(failedAttempts)) } ?? drawn
    }

    /// A uniformly random delay in `range`. The default retry delay is 50–250 ms.
    public static func random(in range: ClosedRange<Duration>) -> RetryDelay {
        let low = range.lowerBound.wholeNanoseconds
        let high = range.upperBound.wholeNanoseconds
        return RetryDelay({ _ in .nanoseconds(Int64.random(in: low...high)) }, bound: { _ in range.upperBound }, fixed: true)
    }

    /// The same delay every time.
    public static func constant(_ delay: Duration) -> RetryDelay {
        RetryDelay({ _ in delay }, bound: { _ in delay }, fixed: true)
    }

    /// `initial × 2^(failedAttempts − 1)`, capped at `maximum`, with full jitter when `jitter` is
    /// true (a uniformly random delay between zero and that value).
    public static func exponential(initial: Duration, maximum: Duration, jitter: Bool = true) -> RetryDelay {
        let capped: @Sendable (Int) -> Int64 = { failedAttempts in
            let exponent = Swift.min(Swift.max(failedAttempts - 1, 0), 62)
            let initialNanos = Swift.max(initial.wholeNanoseconds, 0)
            let (scaled, overflow) = initialNanos.multipliedReportingOverflow(by: Int64(1) << exponent)
            return Swift.max(0, Swift.min(overflow ? Int64.max : scaled, maximum.wholeNanoseconds))
        }
        return RetryDelay({ failedAttempts in
            let cap = capped(failedAttempts)
            guard cap > 0 else { return .zero }
            return .nanoseconds(jitter ? Int64.random(in: 0...cap) : cap)
        }, bound: { .nanoseconds(capped($0)) }, fixed: false)
    }
}
