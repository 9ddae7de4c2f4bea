import RedlockTransport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The machine-wide monotonic clock, `CLOCK_BOOTTIME`, in nanoseconds: the one timeline every
/// process on the machine shares, for comparing timestamps across processes.
///
/// On Linux `ContinuousClock` reads `CLOCK_BOOTTIME` too, so instants convert exactly (up to the
/// microseconds between the two reads that anchor the conversion).
public enum MachineClock {
    /// `CLOCK_BOOTTIME` now, in nanoseconds.
    public static func nowNanoseconds() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_BOOTTIME, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }

    /// `instant` on the machine-wide clock, in nanoseconds.
    public static func nanoseconds(_ instant: ContinuousClock.Instant) -> Int64 {
        anchor.nanoseconds + anchor.instant.duration(to: instant).wholeNanoseconds
    }

    /// One reading of both clocks, taken once: boot time between two reads of it, paired with
    /// `ContinuousClock.now` in the middle.
    private static let anchor: (nanoseconds: Int64, instant: ContinuousClock.Instant) = {
        let before = nowNanoseconds()
        let instant = ContinuousClock.now
        let after = nowNanoseconds()
        return (before + (after - before) / 2, instant)
    }()
}
