import Redlock
import RedlockTestSupport
import RedlockTransport

/// A waiter that begins just before a release, in another client (as in another process): each
/// round the bench's client takes the lock, a `lock()` of a second client (its own connections
/// and subscriptions) begins, 0–1 ms later (uniform) the holder releases, and the latency runs
/// from the start of that release to the waiter's `lock()` returning. The waiter's retry delay is
/// 1 s, so a release it missed shows as a second, not as a few hundred µs.
///
/// Variant `fresh`: a new name every round, so the waiter subscribes only after its first failed
/// attempt and every node's confirmation counts as a release (the retry that follows). Variant
/// `subscribed`: one name for every round, so the subscription lingers from the round before
/// and the release itself is heard. With `fair`, both locks are fair (``LockOptions/fair``): the
/// release hands the lock to the waiter, whose quorum of handoff messages is its grant; they come
/// on the waiter's client's own channel, subscribed from its first `lock()` on, so a fresh name
/// needs no subscription of its own for them. With `onExecutors`, the rounds run on the holder's
/// client's executor and the waiter's `lock()` on its own client's (``RedlockClient/executor``):
/// the message that wakes the waiter is read on the thread its task resumes on.
enum MissedRelease {
    /// Rounds of `duration` (wall time) on `holderClient`'s nodes, the waiter's client over
    /// `configurations` (the same nodes); names start with `name`.
    static func measure(
        holderClient: RedlockClient, configurations: [RedisConnectionConfiguration], name: String, freshNames: Bool, fair: Bool,
        onExecutors: Bool = false, duration: Duration
    ) async throws -> BenchMeasurement {
        guard onExecutors else {
            return try await rounds(holderClient: holderClient, configurations: configurations, name: name, freshNames: freshNames, fair: fair, onExecutors: false, duration: duration)
        }
        return try await withTaskExecutorPreference(holderClient.executor) {
            try await rounds(holderClient: holderClient, configurations: configurations, name: name, freshNames: freshNames, fair: fair, onExecutors: true, duration: duration)
        }
    }

    private static func rounds(
        holderClient: RedlockClient, configurations: [RedisConnectionConfiguration], name: String, freshNames: Bool, fair: Bool,
        onExecutors: Bool, duration: Duration
    ) async throws -> BenchMeasurement {
        let waiterClient = try RedlockClient(nodes: configurations)
        return try await withTeardown {
            let waiterOptions = LockOptions(tries: 1_000, retryDelay: .constant(.seconds(1)), fair: fair)
            let holderOptions = LockOptions(fair: fair)
            var measurement = BenchMeasurement()
            let started = ContinuousClock.now
            var round = 0
            while started.duration(to: .now) < duration {
                try Task.checkCancellation()
                let lockName = freshNames ? "\(name):\(round)" : name
                round += 1
                let holder = try holderClient.makeLock(lockName, options: holderOptions)
                let waiter = try waiterClient.makeLock(lockName, options: waiterOptions)
                let lease = try await holder.lock()
                let waiting = Task(executorPreference: onExecutors ? waiterClient.executor : nil) {
                    let lease = try await waiter.lock()
                    return (lease, acquiredAt: ContinuousClock.now)
                }
                try await Task.sleep(for: .microseconds(Int64.random(in: 0...1_000)))
                let releasing = ContinuousClock.now
                try await holder.unlock(lease)
                let (handed, acquiredAt) = try await waiting.value
                measurement.record(releasing.duration(to: acquiredAt))
                try await waiter.unlock(handed)
            }
            measurement.elapsed = started.duration(to: .now)
            return measurement
        } teardown: {
            await waiterClient.shutdown()
        }
    }
}
