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
    /// Whether the client's ``RedlockClient/shutdown()`` ends it at once rather than at its
    /// deadline (``DeadlineTimer/endAtShutdown()``): an acquire's budget, so that its attempt
    /// is decided on the answers in and its clean-up goes out while the connections are open.
    var endsAtShutdown: Bool { get }
}

extension Expiring {
    var endsAtShutdown: Bool { false }
}

/// Ends waits whose time is up, on one thread per client: the budget of every fan-out and the
/// retry delay of every `lock()` waiting for a release, without a task or a timer per wait.
///
/// Waits scheduled with ``schedule(_:after:)`` (fan-out budgets) go to a lane of their own
/// timeout, a FIFO in which deadlines only grow (each is computed under the lock): fan-outs of
/// one lock share a budget, so each is an append. A few lanes exist at a time; further timeouts,
/// and waits of ``schedule(_:at:)`` (retry delays, scoped locks' deadline watches, a gate's
/// lease end; these vary), go to a min-heap. Finished waits are not removed eagerly: each
/// schedule first drops the finished waits at the front of its lane (or the top of the heap),
/// and the thread drops what it passes. Behind a wait still running, finished ones can pile up
/// (a scoped lock's deadline watch, scheduled at a 30 s lease's deadline, is finished when its
/// body returns a millisecond later), so a lane or the heap that has doubled since it was last
/// swept is swept whole: each lane and the heap holds at most about twice the most waits that
/// ran in it at once, or 64, at an amortized constant cost per schedule (a sweep itself is
/// linear in what it holds, under the timer's lock).
///
/// The thread sleeps until the earliest deadline and is signalled only when a new deadline is
/// earlier than the one it sleeps toward, or when it sleeps with nothing to wait for. Such a
/// deadline set on the thread of the client's event loop (the loop of its first node's
/// connection: a handoff message's claim delay, an attempt sent from a reply's handler or by a
/// task on ``RedlockClient/executor``) signals nobody at once: the loop keeps it
/// (``RedisEventLoop/remind(_:at:)``) and signals the thread only if the deadline passes with
/// the wait still on, or when the loop exits. Such waits mostly end first, within the exchange
/// they guard, where waking another thread would take a core from it. One that does not ends
/// up to about a millisecond late (the loop sleeps in whole milliseconds), and as late as the
/// loop when a task on it runs without suspending.
///
/// The thread starts with the first wait. After ``stop()`` it ends once the waits it holds are
/// finished or expired; a wait scheduled later starts it again for as long as it needs.
final class DeadlineTimer: Sendable {
    /// Instants as nanoseconds on `CLOCK_BOOTTIME` (``BootClock``, ``now()``), the clock of
    /// `ContinuousClock` on Linux. An entry holding a `ContinuousClock.Instant` would be copied,
    /// compared and destroyed through value witnesses, and an array of them through
    /// unspecialized code.
    private typealias Nanoseconds = Int64

    private struct Entry {
        let deadline: Nanoseconds
        let waiter: any Expiring
    }

    /// Waits of one timeout, in the order of their deadlines.
    private struct Lane {
        let timeout: Duration
        /// ``timeout`` in nanoseconds.
        let timeoutNanoseconds: Nanoseconds
        var entries: [Entry] = []
        /// Entries before it are gone (finished or expired).
        var head = 0

        /// The count at which ``append(_:)`` sweeps out finished waits.
        var sweepAt = DeadlineTimer.minimumSweep

        var first: Entry? { head < entries.count ? entries[head] : nil }
        var count: Int { entries.count - head }

        /// Adds `entry` at the back (its deadline is the latest), first sweeping out the
        /// finished waits when the lane has doubled since its last sweep.
        mutating func append(_ entry: Entry) {
            if count >= sweepAt {
                entries = entries[head...].filter { !$0.waiter.isFinished }
                head = 0
                sweepAt = DeadlineTimer.nextSweep(leaving: entries.count)
            }
            entries.append(entry)
        }

        mutating func removeFirst() {
            head += 1
            if head == entries.count {
                entries.removeAll(keepingCapacity: true)
                head = 0
            } else if head >= 64, head * 2 >= entries.count {
                entries.removeFirst(head)
                head = 0
            }
        }

        init(timeout: Duration) {
            self.timeout = timeout
            timeoutNanoseconds = timeout.nanosecondsRoundedUp
        }

        /// The deadline of a wait of this lane that starts at `now`.
        func deadline(from now: Nanoseconds) -> Nanoseconds {
            let (sum, overflow) = now.addingReportingOverflow(timeoutNanoseconds)
            return overflow ? .max : sum
        }

        mutating func dropFinishedAtFront() {
            while let first, first.waiter.isFinished { removeFirst() }
        }
    }

    /// At most this many lanes at once; further timeouts use the heap.
    private static let maximumLanes = 4

    /// Below this many waits, a lane or the heap is never swept whole.
    fileprivate static let minimumSweep = 64

    /// The count at which a lane or the heap that a sweep left with `kept` waits is swept next:
    /// once it has doubled, and not below ``minimumSweep``.
    fileprivate static func nextSweep(leaving kept: Int) -> Int {
        Swift.max(minimumSweep, 2 * kept)
    }

    private struct State {
        var heap: [Entry] = []
        var lanes: [Lane] = []
        var threadRunning = false
        /// Callers of ``shutdown()`` waiting for the thread to end.
        var exitWaiters: [CheckedContinuation<Void, Never>] = []
        /// Set by ``shutdown()``: every wait held is due now.
        var expireAll = false
        /// Set by ``endAtShutdown()``: a wait that ends at shutdown is ended as it is scheduled.
        var endingAtShutdown = false
        /// Whether the thread sleeps (or is about to), and until when; nil: until signalled.
        var sleeping = false
        var wakeAt: Nanoseconds?

        /// The heap's count at which ``push(_:)`` sweeps out finished waits.
        var heapSweepAt = DeadlineTimer.minimumSweep

        /// The unfinished waits held, in the heap and the lanes, that `include` picks.
        func held(where include: (any Expiring) -> Bool) -> [any Expiring] {
            heap.map(\.waiter).filter { !$0.isFinished && include($0) }
                + lanes.flatMap { $0.entries[$0.head...].map(\.waiter) }.filter { !$0.isFinished && include($0) }
        }

        mutating func push(_ entry: Entry) {
            if heap.count >= heapSweepAt { sweepHeap() }
            heap.append(entry)
            siftUp(heap.count - 1)
        }

        private mutating func siftUp(_ index: Int) {
            var child = index
            while child > 0 {
                let parent = (child - 1) / 2
                guard heap[child].deadline < heap[parent].deadline else { break }
                heap.swapAt(child, parent)
                child = parent
            }
        }

        /// Drops every finished wait and restores the heap (bottom-up, linear in its size).
        private mutating func sweepHeap() {
            heap.removeAll { $0.waiter.isFinished }
            for index in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(index) }
            heapSweepAt = DeadlineTimer.nextSweep(leaving: heap.count)
        }

        private mutating func siftDown(_ index: Int) {
            var parent = index
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
        }

        mutating func popMin() -> Entry? {
            guard !heap.isEmpty else { return nil }
            heap.swapAt(0, heap.count - 1)
            let min = heap.removeLast()
            siftDown(0)
            return min
        }

        mutating func dropFinishedOnTop() {
            while let top = heap.first, top.waiter.isFinished { _ = popMin() }
        }

        /// The earliest deadline held, finished waits included.
        var earliest: Nanoseconds? {
            var earliest = heap.first?.deadline
            for lane in lanes {
                if let first = lane.first, earliest.map({ first.deadline < $0 }) ?? true { earliest = first.deadline }
            }
            return earliest
        }
    }

    private let state = Mutex(State())
    /// An instant and its reading in ``Nanoseconds``, for instants given as
    /// `ContinuousClock.Instant` (``nanoseconds(_:)``). The reading is taken just after the
    /// instant, and conversions round up, so a converted deadline is never earlier than the
    /// instant it stands for (it may be later by the time between the two readings, well under a
    /// microsecond).
    private let origin: ContinuousClock.Instant
    private let originReading: Nanoseconds
    private let stopRequested = Atomic<Bool>(false)
    /// Signalled when the sleeping thread must look again.
    private let wakeup = DispatchSemaphore(value: 0)
    /// The client's event loop, which keeps early deadlines set on its thread.
    private let loop: RedisEventLoop?
    /// How often the thread was signalled for an earlier deadline, in all and from the loop's
    /// thread (for tests).
    private let signals = Atomic<Int>(0)
    private let signalsFromLoop = Atomic<Int>(0)

    /// A timer whose early deadlines set on `loop`'s thread wait there (see the type's notes);
    /// without a loop, each signals the thread at once.
    init(loop: RedisEventLoop? = nil) {
        self.loop = loop
        origin = .now
        originReading = BootClock.now()
    }

    /// Now in ``Nanoseconds``.
    private func now() -> Nanoseconds {
        BootClock.now()
    }

    /// Expires `waiter` at `deadline` unless it finished before. With `keptByLoop` false, a
    /// deadline set on the event loop's thread signals the timer's thread at once rather than
    /// being kept by the loop (see the type's notes): for a wait that must end on time even while
    /// tasks on ``RedlockClient/executor`` hold the loop (a scoped lock's deadline watch).
    func schedule(_ waiter: any Expiring, at deadline: ContinuousClock.Instant, keptByLoop: Bool = true) {
        let at = nanoseconds(deadline)
        let action = state.withLock { state in
            if state.endingAtShutdown, waiter.endsAtShutdown { return Action.expireNow }
            state.dropFinishedOnTop()
            state.push(Entry(deadline: at, waiter: waiter))
            return Self.action(after: at, in: &state)
        }
        perform(action, for: waiter, at: at, keptByLoop: keptByLoop)
    }

    /// `instant` in ``Nanoseconds``, saturating.
    private func nanoseconds(_ instant: ContinuousClock.Instant) -> Nanoseconds {
        let (sum, overflow) = originReading.addingReportingOverflow(origin.duration(to: instant).nanosecondsRoundedUp)
        return overflow ? (instant > origin ? .max : .min) : sum
    }

    /// The instant of ``Nanoseconds`` `nanoseconds`.
    private func instant(_ nanoseconds: Nanoseconds) -> ContinuousClock.Instant {
        let (sinceOrigin, overflow) = nanoseconds.subtractingReportingOverflow(originReading)
        return origin + .nanoseconds(overflow ? (nanoseconds < 0 ? .min : .max) : sinceOrigin)
    }

    /// Expires `waiter` once `timeout` has passed from now, unless it finished before.
    func schedule(_ waiter: any Expiring, after timeout: Duration) {
        let (action, deadline) = state.withLock { state in
            // Read under the lock: a lane's deadlines only grow.
            let now = now()
            if state.endingAtShutdown, waiter.endsAtShutdown { return (Action.expireNow, now) }
            let deadline: Nanoseconds
            if let index = state.lanes.firstIndex(where: { $0.timeout == timeout }) {
                deadline = state.lanes[index].deadline(from: now)
                state.lanes[index].dropFinishedAtFront()
                state.lanes[index].append(Entry(deadline: deadline, waiter: waiter))
            } else if state.lanes.count < Self.maximumLanes {
                let lane = Lane(timeout: timeout)
                deadline = lane.deadline(from: now)
                state.lanes.append(lane)
                state.lanes[state.lanes.count - 1].append(Entry(deadline: deadline, waiter: waiter))
            } else {
                deadline = Lane(timeout: timeout).deadline(from: now)
                state.dropFinishedOnTop()
                state.push(Entry(deadline: deadline, waiter: waiter))
            }
            return (Self.action(after: deadline, in: &state), deadline)
        }
        perform(action, for: waiter, at: deadline)
    }

    private enum Action {
        case none, earlier, start
        /// The client shuts down and the wait ends then (``endAtShutdown()``): ended at once.
        case expireNow
    }

    /// What the thread needs after a wait with `deadline` was added: `.earlier` when it sleeps
    /// past it (nothing changed yet: the loop may keep the deadline, see ``perform(_:for:at:)``).
    private static func action(after deadline: Nanoseconds, in state: inout State) -> Action {
        if !state.threadRunning {
            state.threadRunning = true
            return .start
        }
        return sleepsPast(deadline, state) ? .earlier : .none
    }

    /// Whether the thread sleeps (or is about to) beyond `deadline`.
    private static func sleepsPast(_ deadline: Nanoseconds, _ state: State) -> Bool {
        state.sleeping && (state.wakeAt.map { deadline < $0 } ?? true)
    }

    /// Acts on `action` outside the lock. An earlier deadline set on the loop's thread is kept
    /// there (the loop refuses once it has exited); any other signals the thread, which is
    /// looked at again under the lock: it may have woken meanwhile. Only this rarer path asks
    /// which thread the caller is on.
    private func perform(_ action: Action, for waiter: any Expiring, at deadline: Nanoseconds, keptByLoop: Bool = true) {
        switch action {
        case .none: break
        case .earlier:
            if keptByLoop, let loop, loop.isCurrentThread, loop.remind(Reminder(timer: self, waiter: waiter, deadline: deadline), at: instant(deadline)) {
                return
            }
            wake(dueBy: deadline)
        case .expireNow:
            waiter.expire()
        case .start:
            startNamedThread("redlock-timer", stackSize: 128 * 1024) { [self] in run() }
        }
    }

    /// Signals the thread when it sleeps past `deadline` (an earlier deadline was set, or one
    /// the loop kept came due).
    private func wake(dueBy deadline: Nanoseconds) {
        let needed = state.withLock { state in
            guard Self.sleepsPast(deadline, state) else { return false }
            state.wakeAt = deadline
            return true
        }
        guard needed else { return }
        signals.wrappingAdd(1, ordering: .relaxed)
        if loop?.isCurrentThread == true { signalsFromLoop.wrappingAdd(1, ordering: .relaxed) }
        wakeup.signal()
    }

    /// A deadline the loop keeps for the timer: settled with its wait, due with the thread
    /// signalled.
    private final class Reminder: LoopReminder {
        let timer: DeadlineTimer
        let waiter: any Expiring
        let deadline: Nanoseconds

        init(timer: DeadlineTimer, waiter: any Expiring, deadline: Nanoseconds) {
            self.timer = timer
            self.waiter = waiter
            self.deadline = deadline
        }

        var isSettled: Bool { waiter.isFinished }

        func remind() { timer.wake(dueBy: deadline) }
    }

    /// Lets the thread end once the waits it holds are finished or expired.
    ///
    /// Takes no lock: it runs from the client's `deinit`, which can run on the timer's own
    /// thread while it holds its lock (when a dropped wait held the last reference to the client).
    func stop() {
        stopRequested.store(true, ordering: .releasing)
        wakeup.signal()
    }

    /// For the client's `shutdown()`, before its connections close: ends every wait held that
    /// ends at shutdown (``Expiring/endsAtShutdown``), and each such wait scheduled from now on
    /// as it is scheduled. The others keep their deadlines.
    func endAtShutdown() {
        let ending = state.withLock { state in
            state.endingAtShutdown = true
            return state.held(where: \.endsAtShutdown)
        }
        for waiter in ending { waiter.expire() }
    }

    /// For the client's `shutdown()`, once its connections are closed: every wait still held
    /// is due at once (a subscription's linger, a parked waiter's next poll: nothing is left
    /// for them to do), and the call returns once the thread has ended.
    func shutdown() async {
        stopRequested.store(true, ordering: .releasing)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let running = state.withLock { state in
                guard state.threadRunning else { return false }
                state.expireAll = true
                state.exitWaiters.append(continuation)
                return true
            }
            if running { wakeup.signal() } else { continuation.resume() }
        }
    }

    /// Whether ``stop()`` or ``shutdown()`` was called: a wait that would schedule itself again
    /// (``LeaseWatch``) does not, so the thread can end.
    var isStopping: Bool { stopRequested.load(ordering: .acquiring) }

    /// How many waits the timer holds, finished ones included (for tests).
    var count: Int { state.withLock { state in state.lanes.reduce(state.heap.count) { $0 + $1.count } } }

    /// Whether the thread is running (for tests).
    var isRunning: Bool { state.withLock { $0.threadRunning } }

    /// How often the thread was signalled for an earlier deadline (for tests).
    var signalCount: Int { signals.load(ordering: .relaxed) }

    /// How often it was signalled from the loop's thread: for a deadline set there the moment
    /// it was set, or when it came due unsettled (for tests).
    var signalsFromLoopCount: Int { signalsFromLoop.load(ordering: .relaxed) }

    private func run() {
        enum Next { case sleep(until: Nanoseconds), sleepUntilSignalled, exit }
        var due: [any Expiring] = []
        while true {
            var exitWaiters: [CheckedContinuation<Void, Never>] = []
            let next: Next = state.withLock { state in
                state.sleeping = false
                if state.expireAll {
                    due += state.held { _ in true }
                    state.heap.removeAll()
                    state.lanes.removeAll()
                }
                let now = now()
                while let top = state.heap.first, top.waiter.isFinished || top.deadline <= now {
                    if let entry = state.popMin(), !entry.waiter.isFinished { due.append(entry.waiter) }
                }
                for index in state.lanes.indices {
                    while let first = state.lanes[index].first, first.waiter.isFinished || first.deadline <= now {
                        state.lanes[index].removeFirst()
                        if !first.waiter.isFinished { due.append(first.waiter) }
                    }
                }
                state.lanes.removeAll { $0.count == 0 }
                if let earliest = state.earliest {
                    state.sleeping = true
                    state.wakeAt = earliest
                    return .sleep(until: earliest)
                }
                if stopRequested.load(ordering: .acquiring) {
                    state.threadRunning = false
                    state.expireAll = false
                    swap(&exitWaiters, &state.exitWaiters)
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
                for waiter in exitWaiters { waiter.resume() }
                return
            case .sleepUntilSignalled:
                wakeup.wait()
            case let .sleep(until: deadline):
                // The loop checks the deadline against the clock again, so an early wake-up
                // never expires a wait early.
                let now = now()
                let left = deadline > now ? deadline - now : 0
                _ = wakeup.wait(timeout: .now() + .nanoseconds(Int(clamping: left)))
            }
        }
    }
}

/// A deadline-timer entry that runs `action` once, when its time comes: unless, for one made
/// `until` a waiter, that waiter's wait ended first (its action would find nothing to do), so
/// the timer, and the event loop that may keep the deadline, drop it unrun.
final class TimerAction: Expiring {
    private let action: @Sendable () -> Void
    private let done = Atomic<Bool>(false)
    private let waiter: Waiter?

    init(until waiter: Waiter? = nil, _ action: @escaping @Sendable () -> Void) {
        self.waiter = waiter
        self.action = action
    }

    var isFinished: Bool { done.load(ordering: .acquiring) || waiter?.isFinished == true }

    func expire() {
        guard done.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        action()
    }

    /// The action will not run; the timer drops it.
    func cancel() {
        done.store(true, ordering: .releasing)
    }
}
