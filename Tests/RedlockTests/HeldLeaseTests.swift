@testable import Redlock
import Testing

@Suite("Held lease deadlines")
struct HeldLeaseTests {
    private func lease(startingAt start: ContinuousClock.Instant, expiry: Duration = .seconds(2)) -> Lease {
        Lease(name: "job", value: "v", expiry: expiry, acquiredAt: start, validUntil: start.advanced(by: expiry - .milliseconds(22)))
    }

    @Test("the default safety margin is 5 % of the expiry, within 5 ms and 250 ms")
    func defaultMargin() {
        #expect(HeldLease.defaultSafetyMargin(expiry: .seconds(2)) == .milliseconds(100))
        #expect(HeldLease.defaultSafetyMargin(expiry: .seconds(8)) == .milliseconds(250))
        #expect(HeldLease.defaultSafetyMargin(expiry: .milliseconds(50)) == .milliseconds(5))
    }

    @Test("the deadline is validUntil minus the margin, and a confirmed extension moves it")
    func deadlineMoves() {
        let start = ContinuousClock.now
        let held = HeldLease(lease(startingAt: start), safetyMargin: .milliseconds(100))
        #expect(held.deadline == start.advanced(by: .milliseconds(1_878)))
        #expect(held.protects(until: start.advanced(by: .milliseconds(1_877))))
        #expect(!held.protects(until: start.advanced(by: .milliseconds(1_878))))
        held.update(lease(startingAt: start.advanced(by: .seconds(1))))
        #expect(held.protects(until: start.advanced(by: .milliseconds(2_877))))
        #expect(!held.hasLapsed)
    }

    @Test("an extension that started after the deadline leaves the lease lapsed for good")
    func lateExtensionLapses() {
        let start = ContinuousClock.now.advanced(by: .seconds(-10))
        let held = HeldLease(lease(startingAt: start), safetyMargin: .milliseconds(100))
        held.update(lease(startingAt: start.advanced(by: .milliseconds(1_900))))
        #expect(held.hasLapsed)
        #expect(!held.protects(until: start.advanced(by: .milliseconds(1_950))))
        #expect(!held.isValid)
        #expect(held.remainingValidity == .zero)
    }

    @Test("a scope's watch that looks late, past both the lease's deadline and the hold-time cap, reports whichever came first (before: the cap, also for a lease that had lapsed first); within both it looks again later; for a lease the scope ended already it reports nothing")
    func watchReportsTheEarlier() {
        let start = ContinuousClock.now.advanced(by: .seconds(-10))
        let timer = DeadlineTimer()
        func outcome(capAfter cap: Duration?, startingAt begun: ContinuousClock.Instant = start, ended: Bool = false) -> String? {
            let held = HeldLease(lease(startingAt: begun), safetyMargin: .milliseconds(100))
            if ended { held.end() }
            let reported = Locked<String?>(nil)
            let watch = LeaseWatch(
                held, capAt: cap.map { begun.advanced(by: $0) }, timer: timer,
                onLapse: { reported.update { $0 = "lapse" } }, onCap: { reported.update { $0 = "cap" } }
            )
            watch.expire()
            watch.cancel()
            return reported.value
        }
        // The deadline at 1.878 s: the cap at 1.5 s came first, at 3 s after it.
        #expect(outcome(capAfter: .milliseconds(1_500)) == "cap")
        #expect(outcome(capAfter: .seconds(3)) == "lapse")
        #expect(outcome(capAfter: nil) == "lapse")
        #expect(outcome(capAfter: .seconds(3), ended: true) == nil)
        // Neither has come: nothing yet.
        #expect(outcome(capAfter: .seconds(3), startingAt: .now) == nil)
    }
}
