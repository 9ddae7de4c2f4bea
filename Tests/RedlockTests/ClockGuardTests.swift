@testable import Redlock
import Testing

@Suite("Clock guard: what two readings of a node's clock say")
struct ClockGuardTests {
    private let zero = ContinuousClock.now

    /// A reading: the node said `nodeMilliseconds`, asked at `sent` ms and answered at `received`
    /// ms after `zero`.
    private func reading(_ nodeMilliseconds: Int64, sent: Int64, received: Int64) -> ClockObservation {
        ClockObservation(
            nodeMicroseconds: nodeMilliseconds * 1_000,
            sentAt: zero + .milliseconds(sent), receivedAt: zero + .milliseconds(received)
        )
    }

    @Test("an honest clock is consistent, whatever the round trips, within the drift allowance")
    func honest() {
        let first = reading(1_000_000, sent: 0, received: 1)
        // 10 s later by the client; the node read its clock anywhere within each round trip.
        #expect(ClockVerdict.of(earlier: first, later: reading(1_010_000, sent: 10_000, received: 10_001), driftFactor: 0.01) == .consistent)
        #expect(ClockVerdict.of(earlier: first, later: reading(1_010_001, sent: 10_000, received: 10_001), driftFactor: 0.01) == .consistent)
        // 1 % fast over 10 s is within a drift factor of 0.01 (plus 2 ms).
        #expect(ClockVerdict.of(earlier: first, later: reading(1_010_100, sent: 10_000, received: 10_001), driftFactor: 0.01) == .consistent)
    }

    @Test("a clock 1.5× fast, or stepped forward, ran ahead by what the client could not have seen pass")
    func ranAhead() {
        let first = reading(1_000_000, sent: 0, received: 1)
        #expect(ClockVerdict.of(earlier: first, later: reading(1_000_150, sent: 100, received: 101), driftFactor: 0.01)
            == .ranAhead(excess: .milliseconds(49)))
        #expect(ClockVerdict.of(earlier: first, later: reading(1_020_010, sent: 10, received: 11), driftFactor: 0.01)
            == .ranAhead(excess: .milliseconds(19_999)))
        // At most 1,001 ms passed for the client; the allowance is 1 % of that plus 2 ms (12.01 ms).
        #expect(ClockVerdict.of(earlier: first, later: reading(1_001_001 + 13, sent: 1_000, received: 1_001), driftFactor: 0.01)
            == .ranAhead(excess: .milliseconds(13)))
        #expect(ClockVerdict.of(earlier: first, later: reading(1_001_001 + 12, sent: 1_000, received: 1_001), driftFactor: 0.01) == .consistent)
    }

    @Test("a clock that stepped back went back")
    func wentBack() {
        let first = reading(1_000_000, sent: 0, received: 1)
        #expect(ClockVerdict.of(earlier: first, later: reading(990_000, sent: 100, received: 101), driftFactor: 0.01) == .wentBack)
    }

    @Test("a node is judged from its second reading; once it ran ahead it is refused for the hold-off, then trusted again while it keeps time")
    func holdOff() {
        let clocks = NodeClocks(nodeCount: 1)
        let holdOff = Duration.seconds(2)
        func observe(_ observation: ClockObservation) -> Duration? {
            clocks.observe(observation, node: 0, driftFactor: 0.01, holdOff: holdOff, window: holdOff)?.excess
        }
        // A first reading that is already 20 s ahead cannot be told from an honest one.
        #expect(observe(reading(1_020_000, sent: 0, received: 1)) == nil)
        #expect(observe(reading(1_020_100, sent: 100, received: 101)) == nil)
        // A step of 10 s: refused (10.2 s of node time against at most 0.201 s of the client's,
        // from the first reading), and still refused 1 s later though the clock keeps time now.
        #expect(clocks.observe(reading(1_030_200, sent: 200, received: 201), node: 0, driftFactor: 0.01, holdOff: holdOff, window: holdOff)
            .map { [$0.excess == .milliseconds(9_999), $0.newlySeen] } == [true, true])
        #expect(clocks.observe(reading(1_031_200, sent: 1_200, received: 1_201), node: 0, driftFactor: 0.01, holdOff: holdOff, window: holdOff)
            .map { [$0.excess == .milliseconds(9_999), $0.newlySeen] } == [true, false], "seen once, not at every reading")
        // Trusted again once the hold-off has passed.
        #expect(observe(reading(1_032_300, sent: 2_300, received: 2_301)) == nil)
        // The baseline moved to the step: a clock that stepped back and then forward again by the
        // same amount is caught at the forward step.
        #expect(observe(reading(1_023_400, sent: 3_400, received: 3_401)) == nil)
        #expect(observe(reading(1_033_500, sent: 3_500, received: 3_501)) != nil)
    }

    @Test("a clock that keeps running fast stays refused")
    func keepsRunningFast() {
        let clocks = NodeClocks(nodeCount: 2)
        var refusedAt: [Int64] = []
        for step in Int64(0)...40 {
            let clientMilliseconds = step * 100
            let observation = reading(1_000_000 + clientMilliseconds * 3 / 2, sent: clientMilliseconds, received: clientMilliseconds + 1)
            if clocks.observe(observation, node: 1, driftFactor: 0.01, holdOff: .milliseconds(500), window: .milliseconds(500)) != nil { refusedAt.append(clientMilliseconds) }
        }
        // Refused from the first reading that shows it (the second) to the end, without a gap.
        #expect(refusedAt.first == 100)
        #expect(refusedAt.count == 40, "\(refusedAt)")
    }

    @Test("a node refused by one lock's short hold-off stays refused for a lock with a longer one")
    func holdOffPerLock() {
        let clocks = NodeClocks(nodeCount: 1)
        _ = clocks.observe(reading(1_000_000, sent: 0, received: 1), node: 0, driftFactor: 0.01, holdOff: .milliseconds(500), window: .seconds(6))
        // A step of 20 s, seen by a lock whose hold-off is 500 ms.
        #expect(clocks.observe(reading(1_020_100, sent: 100, received: 101), node: 0, driftFactor: 0.01, holdOff: .milliseconds(500), window: .seconds(6)) != nil)
        // 600 ms later the clock keeps time: the short lock trusts the node again, the long one
        // (hold-off 6 s) does not.
        #expect(clocks.observe(reading(1_020_700, sent: 700, received: 701), node: 0, driftFactor: 0.01, holdOff: .milliseconds(500), window: .seconds(6)) == nil)
        #expect(clocks.observe(reading(1_020_800, sent: 800, received: 801), node: 0, driftFactor: 0.01, holdOff: .seconds(6), window: .seconds(6)) != nil)
    }

    @Test("a lock with a short hold-off does not keep the baseline too young for a lock with a long one: a clock 2.5 % fast is still seen")
    func shortLockKeepsLongBaseline() {
        let clocks = NodeClocks(nodeCount: 1)
        var refusedForLong = 0
        // 120 s of readings every 100 ms, alternating a 100 ms lock and a 60 s lock.
        for step in Int64(0)...1_200 {
            let at = step * 100
            let (holdOff, window): (Duration, Duration) = step % 2 == 0 ? (.milliseconds(100), .milliseconds(100)) : (.seconds(60), .seconds(60))
            let observation = reading(1_000_000 + at * 1_025 / 1_000, sent: at, received: at + 1)
            if clocks.observe(observation, node: 0, driftFactor: 0.01, holdOff: holdOff, window: window) != nil, step % 2 == 1 {
                refusedForLong += 1
            }
        }
        #expect(refusedForLong > 0)
    }

    @Test("a small step after a long quiet time is judged against the previous reading, not only against an old baseline")
    func stepAfterLongQuiet() {
        let clocks = NodeClocks(nodeCount: 1)
        var refused = false
        // 30 s of readings every 200 ms, all honest.
        for step in Int64(0)...150 {
            let at = step * 200
            refused = refused || clocks.observe(
                reading(1_000_000 + at, sent: at, received: at + 1), node: 0, driftFactor: 0.01, holdOff: .seconds(1), window: .seconds(1)
            ) != nil
        }
        #expect(!refused)
        // Then a step of 250 ms: 1 % of 30 s would hide it; 1 % of 200 ms does not.
        #expect(clocks.observe(reading(1_030_450, sent: 30_200, received: 30_201), node: 0, driftFactor: 0.01, holdOff: .seconds(1), window: .seconds(1)) != nil)
    }

    @Test("readings that finish out of order are judged against older ones only: no false alarm")
    func outOfOrder() {
        let clocks = NodeClocks(nodeCount: 1)
        _ = clocks.observe(reading(1_000_000, sent: 0, received: 1), node: 0, driftFactor: 0.01, holdOff: .seconds(1), window: .seconds(1))
        // Two concurrent attempts: the later-sent one is recorded first.
        #expect(clocks.observe(reading(1_000_105, sent: 100, received: 110), node: 0, driftFactor: 0.01, holdOff: .seconds(1), window: .seconds(1)) == nil)
        #expect(clocks.observe(reading(1_000_052, sent: 50, received: 112), node: 0, driftFactor: 0.01, holdOff: .seconds(1), window: .seconds(1)) == nil)
        #expect(clocks.observe(reading(1_000_200, sent: 199, received: 201), node: 0, driftFactor: 0.01, holdOff: .seconds(1), window: .seconds(1)) == nil)
    }

    @Test("a clock set back is clockWentBack whatever the amount (==, hashing), its amount told by clockBehind; other causes with details compare them")
    func clockWentBackMatches() {
        #expect(NodeFailure.Cause.clockWentBack(by: .seconds(1)) == .clockWentBack)
        #expect(Set([NodeFailure.Cause.clockWentBack(by: .seconds(1)), .clockWentBack(by: .seconds(2)), .clockWentBack]).count == 1)
        #expect(NodeFailure.Cause.clockWentBack(by: .seconds(1)).clockBehind == .seconds(1))
        #expect(NodeFailure.Cause.clockRanAhead(by: .seconds(1)) != .clockRanAhead(by: .seconds(2)))
        #expect(NodeFailure.Cause.clockWentBack != .noAnswer)
    }

    @Test("an acquire reply with TIME is read by its code; its TIME is recorded as the node's reading")
    func replies() {
        let endpoint = RedisEndpoint.hostname("127.0.0.1", port: 1)
        let withTime = RedisValue.array([.integer(7), .integer(1_700_000_000), .integer(250_000)])
        #expect(Vote.ofAcquireScript(withTime, endpoint: endpoint) == .granted(7))
        #expect(Vote.ofAcquireScript(.array([.integer(-3), .integer(1), .integer(2)]), endpoint: endpoint) == .refused(.epochTooYoung))
        #expect(Vote.ofAcquireScript(.integer(0), endpoint: endpoint) == .refused(.taken))
        #expect(Vote.ofAcquireScript(.integer(-4), endpoint: endpoint) == .refused(.clockWentBack))
        #expect(Vote.ofAcquireScript(.array([.integer(-4), .integer(1_500)]), endpoint: endpoint) == .refused(.clockWentBack(by: .milliseconds(1_500))))
        #expect(
            Vote.ofAcquireScript(.array([.integer(-4), .integer(1_700_000_000), .integer(5), .integer(20)]), endpoint: endpoint)
                == .refused(.clockWentBack(by: .milliseconds(20)))
        )
        #expect(ClockCheck.nodeMicroseconds(in: withTime) == 1_700_000_000_250_000)
        #expect(ClockCheck.nodeMicroseconds(in: .integer(1)) == nil)
        #expect(ClockCheck.nodeMicroseconds(in: .array([.integer(1), .integer(Int64.max), .integer(0)])) == nil, "an overflowing TIME is ignored")
    }
}
