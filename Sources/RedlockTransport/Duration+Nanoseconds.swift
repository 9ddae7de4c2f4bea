extension Duration {
    /// The duration in whole nanoseconds, saturating at the ends of `Int64` (also for durations
    /// past `Int64.max` seconds, where `components` itself would trap).
    package var wholeNanoseconds: Int64 {
        if self >= .nanoseconds(Int64.max) { return .max }
        if self <= .nanoseconds(Int64.min) { return .min }
        // Within about ±292 years: neither the product nor the sum can overflow.
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// The duration in whole nanoseconds rounded up (toward the future), saturating like
    /// ``wholeNanoseconds``: a deadline made of it never comes before the instant it stands for.
    package var nanosecondsRoundedUp: Int64 {
        // `wholeNanoseconds` truncates toward zero: one more when a fraction was cut off above.
        let whole = wholeNanoseconds
        return whole < .max && self > .nanoseconds(whole) ? whole + 1 : whole
    }
}
