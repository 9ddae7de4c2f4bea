import Dispatch
import Foundation
import RedlockTransport
import Synchronization

/// Something waiting that a ``DeadlineTimer`` ends when its time is up: a fan-out round (its
/// budget) or a waiter for a release (its retry delay).
protocol Expiring: AnyObject, Sendable {
    /// Whether it already ended by other means; the timer then forgets it.
    var isFinished: Bool { get }
    /// Ends it now, from the timer's thread; must be quick.
    func expire()
}

/// Ends waits whose time is up, on one thread per client: the budget of every fan-out and the
/// retry delay of every `lock()` waiting for a release, without a task or a timer per wait.
///
/// A min-heap of deadlines. Finished waits are not removed eagerly: each ``schedule(_:at:)``
/// first drops finished waits from the top, so the heap holds about the waits started since the
/// oldest one still running. The thread sleeps until the earliest deadline and is signalled only
/// when a new deadline is earlier than the one it sleeps toward; fan-outs of one lock share a
/// budget, so their deadlines arrive in order and signals are rare.
///
/// The thread starts with the first wait. After ``stop()`` it ends once the waits it holds are
/// finished or expired; a wait scheduled later starts it again for as long as it needs.
final class DeadlineTimer: Sendable {
    private struct Entry {
        let deadline: ContinuousClock.Instant
        let waiter: any Expiring
    }

    private struct State {
        var heap: [Entry] = []
        var threadRunning = false
        var stopped = false
        /// Whether the thread sleeps (or is about to), and until when; nil: until signalled.
        var sleeping = false
        var wakeAt: ContinuousClock.Instant?

        mutating func push(_ entry: Entry) {
            heap.append(entry)
            var child = heap.count - 1
            while child > 0 {
                let parent = (child - 1) / 2
                guard heap[child].deadline < heap[parent].deadline else { break }
                heap.swapAt(child, parent)
                child = parent
            }
        }

        mutating func popMin() -> Entry? {
            guard !heap.isEmpty else { return nil }
            heap.swapAt(0, heap.count - 1)
            let min = heap.removeLast()
            var parent = 0
            while true {
                let left = 2 * parent + 1
                let right = left + 1
                var smallest = parent
                if left < heap.count, heap[left].deadline < heap[smallest].deadline { smallest = left }
                if right < heap.count, heap[right].deadline < heap[smallest].deadline { smallest = right }
                guard smallest != parent else { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
            return min
        }

        mutating func dropFinishedOnTop() {
            while let top = heap.first, top.waiter.isFinished { _ = popMin() }
        }
    }

    private let state = Mutex(State())
    /// Signalled when the sleeping thread must look again.
    private let wakeup = DispatchSemaphore(value: 0)

    /// Expires `waiter` at `deadline` unless it finished before.
    func schedule(_ waiter: any Expiring, at deadline: ContinuousClock.Instant) {
        enum Action { case none, signal, start }
        let action: Action = state.withLock { state in
            state.dropFinishedOnTop()
            state.push(Entry(deadline: deadline, waiter: waiter))
            if !state.threadRunning {
                state.threadRunning = true
                return .start
            }
            guard state.sleeping, state.wakeAt.map({ deadline < $0 }) ?? true else { return .none }
            state.wakeAt = deadline
            return .signal
        }
        switch action {
        case .none: break
        case .signal: wakeup.signal()
        case .start:
            let thread = Thread { [self] in run() }
            thread.name = "redlock-timer"
            thread.stackSize = 128 * 1024
            thread.start()
        }
    }

    /// Lets the thread end once the waits it holds are finished or expired.
    func stop() {
        let wake = state.withLock { state in
            state.stopped = true
            return state.sleeping
        }
        if wake { wakeup.signal() }
    }

    /// How many waits the heap holds, finished ones included (for tests).
    var count: Int { state.withLock { $0.heap.count } }

    /// Whether the thread is running (for tests).
    var isRunning: Bool { state.withLock { $0.threadRunning } }

    private func run() {
        enum Next { case sleep(until: ContinuousClock.Instant), sleepUntilSignalled, exit }
        var due: [any Expiring] = []
        while true {
            let next: Next = state.withLock { state in
                state.sleeping = false
                let now = ContinuousClock.now
                while let top = state.heap.first, top.waiter.isFinished || top.deadline <= now {
                    if let entry = state.popMin(), !entry.waiter.isFinished { due.append(entry.waiter) }
                }
                if let top = state.heap.first {
                    state.sleeping = true
                    state.wakeAt = top.deadline
                    return .sleep(until: top.deadline)
                }
                if state.stopped {
                    state.threadRunning = false
                    return .exit
                }
                state.sleeping = true
                state.wakeAt = nil
                return .sleepUntilSignalled
            }
            for waiter in due { waiter.expire() }
            due.removeAll(keepingCapacity: true)
            switch next {
            case .exit:
                return
            case .sleepUntilSignalled:
                wakeup.wait()
            case let .sleep(until: deadline):
                // The loop checks the deadline against the clock again, so an early wake-up
                // never expires a wait early.
                let nanoseconds = max(0, ContinuousClock.now.duration(to: deadline).wholeNanoseconds)
                _ = wakeup.wait(timeout: .now() + .nanoseconds(Int(clamping: nanoseconds)))
            }
        }
    }
}
