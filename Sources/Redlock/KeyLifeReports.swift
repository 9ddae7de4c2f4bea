import Synchronization

/// The holder's key lives that a fair waiter's attempts heard from nodes where it is first in
/// line (``Scripts/acquireFair``'s `{0, PTTL}`), as the latest instant one of those keys
/// expires. Written by the attempts' reply handlers, taken by the waiter after each attempt.
final class KeyLifeReports: Sendable {
    private let latestEnd = Mutex<ContinuousClock.Instant?>(nil)

    /// Records a key that lives `life` from now.
    func record(_ life: Duration) {
        let end = ContinuousClock.now + life
        latestEnd.withLock { $0 = Swift.max($0 ?? end, end) }
    }

    /// When the last key reported since the previous take expires, or nil; clears the reports.
    func take() -> ContinuousClock.Instant? {
        latestEnd.withLock { latest in
            defer { latest = nil }
            return latest
        }
    }
}
