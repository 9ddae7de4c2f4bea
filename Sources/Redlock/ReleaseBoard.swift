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
    private struct Waiter {
        let id: Int
        let continuation: CheckedContinuation<Void, Never>
    }

    private struct Entry {
        var generation: UInt64 = 0
        var lastRelease: [UInt8] = []
        var waiters: [Waiter] = []
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    /// The number of releases of `name` heard so far.
    func generation(of name: String) -> UInt64 {
        state.withLock { $0.entries[name]?.generation ?? 0 }
    }

    /// Starts keeping count of the releases of `name` (a no-op when already counting). Only
    /// watched names are counted, so a process that locks many names keeps nothing for them.
    func track(_ name: String) {
        state.withLock { state in
            if state.entries[name] == nil { state.entries[name] = Entry() }
        }
    }

    /// Records the release `release` (the released lease's value) of a tracked `name` and wakes
    /// the longest-waiting waiter. Releases of names nobody tracks are ignored.
    func announce(_ name: String, release: [UInt8]) {
        let waiter: Waiter? = state.withLock { state in
            guard var entry = state.entries[name] else { return nil }
            guard entry.lastRelease != release || release.isEmpty else { return nil }
            entry.lastRelease = release
            entry.generation &+= 1
            let first = entry.waiters.isEmpty ? nil : entry.waiters.removeFirst()
            state.entries[name] = entry
            return first
        }
        waiter?.continuation.resume()
    }

    /// Returns when a release of `name` after `generation` is heard (and this caller is the one
    /// woken), `timeout` passes, or the task is cancelled, whichever comes first.
    func wait(for name: String, after generation: UInt64, timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: timeout) }
            group.addTask { await self.release(of: name, after: generation) }
            await group.next()
            group.cancelAll()
        }
    }

    private func release(of name: String, after generation: UInt64) async {
        let id = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state in
                    if Task.isCancelled { return true }
                    guard let entry = state.entries[name], entry.generation == generation else { return true }
                    state.entries[name]?.waiters.append(Waiter(id: id, continuation: continuation))
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                guard let index = state.entries[name]?.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.entries[name]?.waiters.remove(at: index)
            }
            waiter?.continuation.resume()
        }
    }

    /// Drops what is known of `name` once nobody listens for it (waiters still waiting are woken).
    func forget(_ name: String) {
        let waiters = state.withLock { state in state.entries.removeValue(forKey: name)?.waiters ?? [] }
        for waiter in waiters { waiter.continuation.resume() }
    }
}
