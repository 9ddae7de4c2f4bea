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
}
