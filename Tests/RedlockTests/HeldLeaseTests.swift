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
}
