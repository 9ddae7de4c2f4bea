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
        var waiters: [ReleaseWaiter] = []
    }

    private let entries = Mutex<[String: Entry]>([:])
    /// Ends waits whose timeout passed.
    private let timer: DeadlineTimer

    init(timer: DeadlineTimer) {
        self.timer = timer
    }

    /// The number of releases of `name` heard so far.
    func generation(of name: String) -> UInt64 {
        entries.withLock { $0[name]?.generation ?? 0 }
    }

    /// Starts keeping count of the releases of `name` (a no-op when already counting). Only
    /// watched names are counted, so a process that locks many names keeps nothing for them.
    func track(_ name: String) {
        entries.withLock { entries in
            if entries[name] == nil { entries[name] = Entry() }
        }
    }

    /// Records the release `release` (the released lease's value) of a tracked `name` and wakes
    /// the longest-waiting waiter. Releases of names nobody tracks are ignored.
    func announce(_ name: String, release: some Collection<UInt8>) {
        if let claimed = claimNext(name, release: release) { claimed.waiter.resume(claimed.continuation, handedOverAt: nil) }
    }

    /// A waiter claimed by ``handOff(_:release:)``: resume it with ``ReleaseWaiter/resume(_:handedOverAt:)``
    /// once its prepared attempt, if any, is sent.
    struct Claimed {
        let waiter: ReleaseWaiter
        let continuation: UnsafeContinuation<Void, Never>
    }

    /// For a release being made in this process: claims the longest-waiting waiter of `name`
    /// still waiting, and returns it rather than waking it, so that the releaser can send the
    /// waiter's prepared attempt right behind its own deletes, then resume it. Returns nil (and
    /// counts nothing) when no waiter waits: the releaser then announces its release once made.
    func handOff(_ name: String, release: some Collection<UInt8>) -> Claimed? {
        entries.withLock { entries in
            guard entries[name] != nil else { return nil }
            while let waiter = entries[name]?.waiters.first {
                entries[name]?.waiters.removeFirst()
                if let continuation = waiter.claim(byRelease: true) {
                    // Counted once: the deletes are not published when they hand over.
                    entries[name]?.lastRelease = Array(release)
                    entries[name]?.generation &+= 1
                    return Claimed(waiter: waiter, continuation: continuation)
                }
            }
            return nil
        }
    }

    /// Counts the release (once per value) and claims the longest-waiting waiter still waiting.
    private func claimNext(_ name: String, release: some Collection<UInt8>) -> Claimed? {
        entries.withLock { entries in
            guard entries[name] != nil else { return nil }
            guard entries[name]?.lastRelease.elementsEqual(release) == false || release.isEmpty else { return nil }
            entries[name]?.lastRelease = Array(release)
            entries[name]?.generation &+= 1
            // Waiters that timed out are skipped: the release goes to one that still waits.
            while let waiter = entries[name]?.waiters.first {
                entries[name]?.waiters.removeFirst()
                if let continuation = waiter.claim(byRelease: true) { return Claimed(waiter: waiter, continuation: continuation) }
            }
            return nil
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
        let waiter = ReleaseWaiter(next: next)
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                waiter.install(continuation)
                let waiting = entries.withLock { entries in
                    guard entries[name]?.generation == generation else { return false }
                    entries[name]?.waiters.append(waiter)
                    return true
                }
                if waiting {
                    // The heap, not a lane: retry delays vary from wait to wait.
                    timer.schedule(waiter, at: .now + timeout)
                } else {
                    // A release was heard since `generation`: as good as one heard now.
                    waiter.claim(byRelease: true)?.resume()
                }
            }
        } onCancel: {
            waiter.expire()
        }
        entries.withLock { entries in
            entries[name]?.waiters.removeAll { $0 === waiter }
        }
        return waiter.outcome
    }

    /// Drops what is known of `name` once nobody listens for it (waiters still waiting are woken).
    func forget(_ name: String) {
        let woken = entries.withLock { entries in
            (entries.removeValue(forKey: name)?.waiters ?? []).compactMap { $0.claim(byRelease: false) }
        }
        for continuation in woken { continuation.resume() }
    }
}

/// How a wait for a release ended.
struct WaitOutcome: Sendable, Equatable {
    /// Whether a release announced while waiting ended it.
    var woken: Bool
    /// When a releaser in this process sent the waiter's prepared attempt for it; nil otherwise.
    var handedOverAt: ContinuousClock.Instant?
}

/// One `lock()` waiting for a release: resumed exactly once, by the release, its timeout or
/// its cancellation, whichever claims it first.
final class ReleaseWaiter: Expiring {
    private struct State {
        var continuation: UnsafeContinuation<Void, Never>?
        var finished = false
        var outcome = WaitOutcome(woken: false)
    }

    /// The waiter's next attempt, for a releaser in this process to send.
    let next: PreparedFanOut?
    private let state = Mutex(State())
    private let finishedFlag = Atomic<Bool>(false)

    init(next: PreparedFanOut? = nil) {
        self.next = next
    }

    var isFinished: Bool { finishedFlag.load(ordering: .acquiring) }

    /// How the wait ended (read once it has).
    var outcome: WaitOutcome { state.withLock { $0.outcome } }

    /// Hands over the waiting task's continuation; resumes it at once when already ended.
    func install(_ continuation: UnsafeContinuation<Void, Never>) {
        let endedEarly = state.withLock { state in
            if state.finished { return true }
            state.continuation = continuation
            return false
        }
        if endedEarly { continuation.resume() }
    }

    /// Ends the wait, by a release or not; returns the continuation to resume (outside any
    /// lock), or nil when the wait had already ended or its continuation is not installed yet
    /// (then ``install(_:)`` resumes it).
    func claim(byRelease: Bool) -> UnsafeContinuation<Void, Never>? {
        state.withLock { state in
            guard !state.finished else { return nil }
            state.finished = true
            state.outcome.woken = byRelease
            finishedFlag.store(true, ordering: .releasing)
            defer { state.continuation = nil }
            return state.continuation
        }
    }

    /// Resumes a claimed waiter, noting when its next attempt was sent for it (nil: not sent).
    func resume(_ continuation: UnsafeContinuation<Void, Never>, handedOverAt: ContinuousClock.Instant?) {
        state.withLock { $0.outcome.handedOverAt = handedOverAt }
        continuation.resume()
    }

    func expire() {
        claim(byRelease: false)?.resume()
    }
}
