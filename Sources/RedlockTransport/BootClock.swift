#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `CLOCK_BOOTTIME` read directly, in nanoseconds: the clock of `ContinuousClock` on Linux
/// (`swift_get_time` reads it for the continuous clock), as one `Int64` rather than a
/// `ContinuousClock.Instant`, whose layout is opaque outside the standard library (each copy or
/// comparison of one goes through its type's value witnesses, and turning one into a number
/// divides 128-bit integers). For hot paths that compare readings with each other.
package enum BootClock {
    /// Whether `CLOCK_BOOTTIME` can be read here, decided at the first reading.
    private static let readable = reading() != nil
    /// What readings count from where it cannot be.
    private static let origin = ContinuousClock.now

    /// Now, in nanoseconds: since boot, or (where `CLOCK_BOOTTIME` cannot be read)
    /// `ContinuousClock` since this type's first use. Never decreases.
    package static func now() -> Int64 {
        if readable, let reading = reading() { return reading }
        return origin.duration(to: .now).wholeNanoseconds
    }

    private static func reading() -> Int64? {
        #if os(Linux)
        var time = timespec()
        guard clock_gettime(CLOCK_BOOTTIME, &time) == 0 else { return nil }
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
        #else
        return nil
        #endif
    }
}
