import RedlockTransport

/// How long `lock()` waits before its next attempt, as a function of the attempts made so far.
public struct RetryDelay: Sendable {
    private let delay: @Sendable (_ failedAttempts: Int) -> Duration

    /// A delay computed by `delay`, called with the number of failed attempts so far
    /// (1 before the second attempt). Negative results count as zero.
    public init(_ delay: @escaping @Sendable (_ failedAttempts: Int) -> Duration) {
        self.delay = delay
    }

    /// The delay before the attempt that follows `failedAttempts` failed ones.
    public func delay(afterFailedAttempts failedAttempts: Int) -> Duration {
        Swift.max(.zero, delay(failedAttempts))
    }

    /// A uniformly random delay in `range`. The default retry delay is 50–250 ms.
    public static func random(in range: ClosedRange<Duration>) -> RetryDelay {
        let low = range.lowerBound.wholeNanoseconds
        let high = range.upperBound.wholeNanoseconds
        return RetryDelay { _ in .nanoseconds(Int64.random(in: low...high)) }
    }

    /// The same delay every time.
    public static func constant(_ delay: Duration) -> RetryDelay {
        RetryDelay { _ in delay }
    }

    /// `initial × 2^(failedAttempts − 1)`, capped at `maximum`, with full jitter when `jitter` is
    /// true (a uniformly random delay between zero and that value).
    public static func exponential(initial: Duration, maximum: Duration, jitter: Bool = true) -> RetryDelay {
        RetryDelay { failedAttempts in
            let exponent = Swift.min(Swift.max(failedAttempts - 1, 0), 62)
            let initialNanos = Swift.max(initial.wholeNanoseconds, 0)
            let (scaled, overflow) = initialNanos.multipliedReportingOverflow(by: Int64(1) << exponent)
            let capped = Swift.min(overflow ? Int64.max : scaled, maximum.wholeNanoseconds)
            guard capped > 0 else { return .zero }
            return .nanoseconds(jitter ? Int64.random(in: 0...capped) : capped)
        }
    }
}
