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
        let woken: UnsafeContinuation<Void, Never>? = entries.withLock { entries in
            guard var entry = entries[name] else { return nil }
            guard !entry.lastRelease.elementsEqual(release) || release.isEmpty else { return nil }
            entry.lastRelease = Array(release)
            entry.generation &+= 1
            // Waiters that timed out are skipped: the release goes to one that still waits.
            var woken: UnsafeContinuation<Void, Never>?
            while woken == nil, !entry.waiters.isEmpty {
                woken = entry.waiters.removeFirst().claim()
            }
            entries[name] = entry
            return woken
        }
        woken?.resume()
    }

    /// Returns when a release of `name` after `generation` is heard (and this caller is the one
    /// woken), `timeout` passes, or the task is cancelled, whichever comes first.
    ///
    /// The waiting task is resumed directly by whichever comes first, with no task of its own
    /// for the timeout.
    func wait(for name: String, after generation: UInt64, timeout: Duration) async {
        let waiter = ReleaseWaiter()
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                waiter.install(continuation)
                let waiting = entries.withLock { entries in
                    guard entries[name]?.generation == generation else { return false }
                    entries[name]?.waiters.append(waiter)
                    return true
                }
                if waiting { timer.schedule(waiter, after: timeout) } else { waiter.expire() }
            }
        } onCancel: {
            waiter.expire()
        }
        entries.withLock { entries in
            entries[name]?.waiters.removeAll { $0 === waiter }
        }
    }

    /// Drops what is known of `name` once nobody listens for it (waiters still waiting are woken).
    func forget(_ name: String) {
        let woken = entries.withLock { entries in
            (entries.removeValue(forKey: name)?.waiters ?? []).compactMap { $0.claim() }
        }
        for continuation in woken { continuation.resume() }
    }
}

/// One `lock()` waiting for a release: resumed exactly once, by the release, its timeout or
/// its cancellation, whichever claims it first.
final class ReleaseWaiter: Expiring {
    private struct State {
        var continuation: UnsafeContinuation<Void, Never>?
        var finished = false
    }

    private let state = Mutex(State())
    private let finishedFlag = Atomic<Bool>(false)

    var isFinished: Bool { finishedFlag.load(ordering: .acquiring) }

    /// Hands over the waiting task's continuation; resumes it at once when already ended.
    func install(_ continuation: UnsafeContinuation<Void, Never>) {
        let endedEarly = state.withLock { state in
            if state.finished { return true }
            state.continuation = continuation
            return false
        }
        if endedEarly { continuation.resume() }
    }

    /// Ends the wait; returns the continuation to resume (outside any lock), or nil when the wait
    /// had already ended or its continuation is not installed yet (then ``install(_:)`` resumes it).
    func claim() -> UnsafeContinuation<Void, Never>? {
        state.withLock { state in
            guard !state.finished else { return nil }
            state.finished = true
            finishedFlag.store(true, ordering: .releasing)
            defer { state.continuation = nil }
            return state.continuation
        }
    }

    func expire() {
        claim()?.resume()
    }
}
