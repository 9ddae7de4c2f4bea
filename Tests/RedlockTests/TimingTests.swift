@testable import Redlock
import Testing

@Suite("Quorum, validity and delay arithmetic")
struct TimingTests {
    @Test("quorum is a strict majority", arguments: [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
    func quorum(nodes: Int, expected: Int) {
        #expect(Timing.quorum(nodeCount: nodes) == expected)
    }

    @Test("validity subtracts elapsed time, the drift share and 2 ms")
    func validity() {
        let validity = Timing.validity(expiry: .seconds(8), elapsed: .milliseconds(30), driftFactor: 0.01)
        #expect(validity == .milliseconds(8_000 - 30 - 80 - 2))
        #expect(Timing.validity(expiry: .milliseconds(100), elapsed: .milliseconds(97), driftFactor: 0.01) == .milliseconds(0))
    }

    @Test("validUntil is measured from the end of the operation on the injected instants")
    func validUntil() {
        let start = ContinuousClock.now
        let end = start.advanced(by: .milliseconds(10))
        let until = Timing.validUntil(start: start, end: end, expiry: .milliseconds(1_000), driftFactor: 0.01)
        #expect(until == start.advanced(by: .milliseconds(1_000 - 10 - 2)))
        #expect(until.map { end.duration(to: $0) } == .milliseconds(1_000 - 10 - 10 - 2))
    }

    @Test("no validity when the operation took the whole expiry")
    func exhausted() {
        let start = ContinuousClock.now
        #expect(Timing.validUntil(start: start, end: start.advanced(by: .milliseconds(988)), expiry: .seconds(1), driftFactor: 0.01) == nil)
        #expect(Timing.validUntil(start: start, end: start.advanced(by: .milliseconds(987)), expiry: .seconds(1), driftFactor: 0.01) != nil)
    }

    @Test("the tally decides as soon as a quorum granted or became impossible")
    func tally() {
        var tally = Tally(nodeCount: 5)
        #expect(!tally.isDecided)
        tally.record(granted: true)
        tally.record(granted: true)
        #expect(!tally.isDecided)
        tally.record(granted: true)
        #expect(tally.succeeded && tally.isDecided)

        var failing = Tally(nodeCount: 5)
        failing.record(granted: false)
        failing.record(granted: false)
        #expect(!failing.isDecided)
        failing.record(granted: false)
        #expect(failing.cannotSucceed && failing.isDecided && !failing.succeeded)
    }

    @Test("random delays stay in range; constant and exponential follow their formula")
    func delays() {
        let random = RetryDelay.random(in: .milliseconds(50)...(.milliseconds(250)))
        for attempt in 1...500 {
            let delay = random.delay(afterFailedAttempts: attempt)
            #expect(delay >= .milliseconds(50) && delay <= .milliseconds(250))
        }
        #expect(RetryDelay.constant(.milliseconds(7)).delay(afterFailedAttempts: 3) == .milliseconds(7))
        let exponential = RetryDelay.exponential(initial: .milliseconds(10), maximum: .milliseconds(100), jitter: false)
        #expect((1...6).map { exponential.delay(afterFailedAttempts: $0) } == [10, 20, 40, 80, 100, 100].map { .milliseconds($0) })
        #expect(exponential.delay(afterFailedAttempts: 1_000) == .milliseconds(100))
        let jittered = RetryDelay.exponential(initial: .milliseconds(10), maximum: .milliseconds(100))
        #expect((1...200).allSatisfy { _ in jittered.delay(afterFailedAttempts: 4) <= .milliseconds(80) })
        #expect(RetryDelay { _ in .seconds(-1) }.delay(afterFailedAttempts: 1) == .zero)
    }

    @Test("a delay's pace is the longest it can draw: a range's upper bound, an exponential's cap before jitter; the draw for a delay of the caller's own")
    func paces() {
        let random = RetryDelay.random(in: .milliseconds(50)...(.milliseconds(250)))
        #expect(random.pace(afterFailedAttempts: 3, drawn: .milliseconds(60)) == .milliseconds(250))
        #expect(RetryDelay.constant(.milliseconds(7)).pace(afterFailedAttempts: 9, drawn: .milliseconds(7)) == .milliseconds(7))
        for jitter in [false, true] {
            let exponential = RetryDelay.exponential(initial: .milliseconds(10), maximum: .milliseconds(100), jitter: jitter)
            #expect((1...6).map { exponential.pace(afterFailedAttempts: $0, drawn: .zero) } == [10, 20, 40, 80, 100, 100].map { .milliseconds($0) })
        }
        #expect(RetryDelay { _ in .seconds(1) }.pace(afterFailedAttempts: 1, drawn: .milliseconds(3)) == .milliseconds(3))
        #expect(RetryDelay.exponential(initial: .seconds(-1), maximum: .seconds(1)).pace(afterFailedAttempts: 2, drawn: .seconds(1)) == .zero)
        #expect(random.hasFixedPace && RetryDelay.constant(.seconds(1)).hasFixedPace)
        #expect(!RetryDelay.exponential(initial: .seconds(1), maximum: .seconds(1)).hasFixedPace && !RetryDelay { _ in .zero }.hasFixedPace)
    }

    @Test("durations beyond Int64 nanoseconds saturate: a huge maximum or range bound neither wraps to zero nor traps")
    func hugeDelays() {
        let huge = Duration.seconds(9_223_372_036) + .milliseconds(900)
        #expect(huge.wholeNanoseconds == .max && (.zero - huge).wholeNanoseconds == .min)
        // Past Int64.max seconds (where `components` traps) too, and exactly at the ends.
        let vast = Duration.seconds(Int64.max) + .seconds(Int64.max)
        #expect(vast.wholeNanoseconds == .max && (.zero - vast).wholeNanoseconds == .min)
        #expect(Duration.seconds(Int64.max).millisecondsRoundedUp == Int64.max / 1_000_000 + 1)
        #expect(Duration.nanoseconds(Int64.max).wholeNanoseconds == .max)
        #expect(Duration.nanoseconds(Int64.max - 1).wholeNanoseconds == .max - 1)
        #expect(Duration.nanoseconds(Int64.min + 1).wholeNanoseconds == .min + 1)
        #expect(Duration.milliseconds(-1_500).wholeNanoseconds == -1_500_000_000)
        #expect(Duration.nanoseconds(1).millisecondsRoundedUp == 1 && Duration.milliseconds(2).millisecondsRoundedUp == 2)
        #expect(RetryDelay.exponential(initial: .seconds(1), maximum: huge, jitter: false).delay(afterFailedAttempts: 3) == .seconds(4))
        #expect(RetryDelay.random(in: .zero...huge).delay(afterFailedAttempts: 1) >= .zero)
    }

    @Test("durations in messages: milliseconds with at most three decimals, cut at the microsecond, signed, and never a trap at the ends")
    func millisecondsInMessages() {
        let cases: [(Duration, String)] = [
            (.milliseconds(250), "250 ms"), (.microseconds(1_667), "1.667 ms"), (.microseconds(4_200), "4.2 ms"),
            (.microseconds(1_050), "1.05 ms"), (.nanoseconds(1_666_999), "1.666 ms"), (.zero, "0 ms"), (.nanoseconds(999), "0 ms"),
            (.microseconds(-1_500), "-1.5 ms"), (.microseconds(-200), "-0.2 ms"), (.seconds(2), "2000 ms"),
        ]
        for (duration, text) in cases {
            #expect(duration.millisecondsDescription == text, "\(duration)")
        }
        #expect(Duration.seconds(Int64.max).millisecondsDescription == "\(Int64.max / 1_000_000).775 ms")
        #expect(!(Duration.zero - .seconds(Int64.max)).millisecondsDescription.isEmpty)
        // Past a second, seconds to three decimals (a Duration printed `1582.9922126449999 seconds`).
        let readable: [(Duration, String)] = [
            (.nanoseconds(1_582_992_212_644), "1582.992 s"), (.seconds(30) + .microseconds(61), "30.000 s"), (.seconds(1), "1.000 s"),
            (.milliseconds(999), "999 ms"), (.microseconds(1_667), "1.667 ms"), (.milliseconds(-2_500), "-2.500 s"),
        ]
        for (duration, text) in readable {
            #expect(duration.readableDescription == text, "\(duration)")
        }
        #expect(!Duration.seconds(Int64.max).readableDescription.isEmpty && !(Duration.zero - .seconds(Int64.max)).readableDescription.isEmpty)
    }

    @Test("lock values are 16 random bytes in base64, different each time")
    func values() {
        let values = (0..<1_000).map { _ in LockValue.random.next() }
        #expect(Set(values).count == 1_000)
        #expect(values.allSatisfy { $0.count == 24 && $0.hasSuffix("==") })
        #expect(base64(Array("Man".utf8)) == "TWFu")
        #expect(base64(Array("Ma".utf8)) == "TWE=")
        #expect(base64(Array("M".utf8)) == "TQ==")
        #expect(LockValue.fixed("x").next() == "x")
    }

    @Test("durations convert to whole milliseconds for PX, rounding up")
    func milliseconds() {
        #expect(Duration.milliseconds(50).millisecondsRoundedUp == 50)
        #expect(Duration.microseconds(50_001).millisecondsRoundedUp == 51)
        #expect(Duration.nanoseconds(1).millisecondsRoundedUp == 1)
    }
}
