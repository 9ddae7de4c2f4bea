import Synchronization

/// Where a client's subscribers announce releases and its waiting `lock()` calls listen.
///
/// Each lock name has a generation that every release increments. A waiter notes the generation
/// before an attempt and, after a failed attempt, waits until it moves on or its retry delay runs
/// out, so a release that arrives in between is never missed. A release wakes one waiter of this
/// process (the longest waiting): only one can win the lock, and the others would only add load;
/// they keep their retry delay as the fallback. The same release heard from several nodes counts
/// once.
final class ReleaseBoard: Sendable {
    private struct Entry {
        var generation: UInt64 = 0
        var lastRelease: [UInt8] = []
        /// Longest waiting first; may hold waiters that already ended (they remove themselves).
        var waiters: [Waiter] = []

        /// Counts a release of the lease whose value is `release`.
        mutating func count(_ release: some Collection<UInt8>) {
            lastRelease = Array(release)
            generation &+= 1
        }

        /// Takes the longest-waiting waiter that still waits out of the line and claims it;
        /// waiters that timed out meanwhile are skipped.
        mutating func claimLongestWaiting() -> Claimed? {
            while !waiters.isEmpty {
                let waiter = waiters.removeFirst()
                if let continuation = waiter.claim(byRelease: true) { return Claimed(waiter: waiter, continuation: continuation) }
            }
            return nil
        }
    }

    private let entries = Mutex<[LockKey: Entry]>([:])
    /// Ends waits whose timeout passed.
    private let timer: DeadlineTimer

    init(timer: DeadlineTimer) {
        self.timer = timer
    }

    /// How many `lock()` calls wait for a release of `name` now.
    func waiterCount(of name: String) -> Int {
        entries.withLock { $0[LockKey(name)]?.waiters.count ?? 0 }
    }

    /// The number of releases of `name` heard so far.
    func generation(of name: String) -> UInt64 {
        entries.withLock { $0[LockKey(name)]?.generation ?? 0 }
    }

    /// Starts keeping count of the releases of `name` (a no-op when already counting). Only
    /// watched names are counted, so a process that locks many names keeps nothing for them.
    func track(_ name: String) {
        entries.withLock { entries in
            if entries[LockKey(name)] == nil { entries[LockKey(name)] = Entry() }
        }
    }

    /// Records the release `release` (the released lease's value) of a tracked `name` and wakes
    /// the longest-waiting waiter. Releases of names nobody tracks are ignored.
    func announce(_ name: String, release: some Collection<UInt8>) {
        if let claimed = claimNext(name, release: release) { claimed.waiter.resume(claimed.continuation, handedOverAt: nil) }
    }

    /// A waiter claimed by ``handOff(_:release:)``: resume it with ``Waiter/resume(_:handedOverAt:)``
    /// once its prepared attempt, if any, is sent.
    struct Claimed {
        let waiter: Waiter
        let continuation: UnsafeContinuation<Void, Never>
    }

    /// For a release being made in this process: claims the longest-waiting waiter of `name`
    /// still waiting, and returns it rather than waking it, so that the releaser can send the
    /// waiter's prepared attempt right behind its own deletes, then resume it. Returns nil (and
    /// counts nothing) when no waiter waits: the releaser then announces its release once made.
    func handOff(_ name: String, release: some Collection<UInt8>) -> Claimed? {
        entries.withLock { entries in
            guard let claimed = entries[LockKey(name)]?.claimLongestWaiting() else { return nil }
            // Counted once: the deletes are not published when they hand over.
            entries[LockKey(name)]?.count(release)
            return claimed
        }
    }

    /// Counts the release (once per value) and claims the longest-waiting waiter still waiting.
    private func claimNext(_ name: String, release: some Collection<UInt8>) -> Claimed? {
        entries.withLock { entries in
            guard entries[LockKey(name)]?.lastRelease.elementsEqual(release) == false || (entries[LockKey(name)] != nil && release.isEmpty) else {
                return nil
            }
            entries[LockKey(name)]?.count(release)
            return entries[LockKey(name)]?.claimLongestWaiting()
        }
    }

    /// Returns when a release of `name` after `generation` is heard (and this caller is the one
    /// woken), `timeout` passes, or the task is cancelled, whichever comes first.
    ///
    /// The waiting task is resumed directly by whichever comes first, with no task of its own
    /// for the timeout. With `next`, the waiter's next attempt, a release made in this process
    /// sends it right behind its deletes (see ``handOff(_:release:)``).
    ///
    /// - Returns: How the wait ended: by a release, also one heard since `generation` before the
    ///   wait began (and when `next` was sent for it, if it was), or not (timeout, cancellation).
    @discardableResult
    func wait(for name: String, after generation: UInt64, timeout: Duration, next: PreparedFanOut? = nil) async -> WaitOutcome {
        let waiter = Waiter(next: next)
        await waiter.wait(timer: timer, deadline: .now + timeout) {
            entries.withLock { entries in
                // A release heard since `generation` is as good as one heard now.
                guard entries[LockKey(name)]?.generation == generation else { return false }
                entries[LockKey(name)]?.waiters.append(waiter)
                return true
            }
        }
        entries.withLock { entries in
            entries[LockKey(name)]?.waiters.removeAll { $0 === waiter }
        }
        return waiter.outcome
    }

    /// Drops what is known of `name` once nobody listens for it (waiters still waiting are woken).
    func forget(_ name: String) {
        let woken = entries.withLock { entries in
            (entries.removeValue(forKey: LockKey(name))?.waiters ?? []).compactMap { $0.claim(byRelease: false) }
        }
        for continuation in woken { continuation.resume() }
    }
}
