import Foundation
import Synchronization

/// Something the event loop drives: a connection or a subscriber. Its methods run on the loop's
/// thread, must be quick and must never block.
protocol EventLoopSource: AnyObject, Sendable {
    /// The socket registered with ``RedisEventLoop/watch(_:descriptor:writable:)`` is ready;
    /// with `readToEnd` (a hang-up, an error or urgent data) a short read does not show it
    /// drained (see ``NodeSocket/read(toEndOfStream:)``).
    func handle(readable: Bool, writable: Bool, readToEnd: Bool)
    /// Acts on whatever came due by `now` (a command timeout, a reconnect) and returns the next
    /// instant it needs to be asked again, if any.
    func checkDeadlines(now: ContinuousClock.Instant) -> ContinuousClock.Instant?
}

/// A deadline that a thread sleeping elsewhere must hear of, unless it is settled first: the
/// event loop keeps it for a caller on its own thread (``RedisEventLoop/remind(_:at:)``), so
/// that a deadline set while handling a reply or a message wakes nobody when the wait it
/// guards ends before it, as such waits mostly do.
package protocol LoopReminder: AnyObject, Sendable {
    /// Whether the wait it stands for has ended: the loop then drops it without a word.
    var isSettled: Bool { get }
    /// Its deadline passed with the wait still on (or the loop is exiting): tell whoever
    /// must act. Runs on the loop's thread; must be quick and must never block.
    func remind()
}

/// One thread that waits in `epoll` on the sockets of many connections and delivers their
/// replies: a client's connections share one, so a fan-out to five nodes wakes one thread, not
/// five, and callers write their commands to the socket themselves.
///
/// It is also a `TaskExecutor` (SE-0417, task executor preference): a task that prefers it runs
/// on the loop's thread between turns, so a reply that completes what the task awaits resumes it
/// on the thread that read the reply, with no wake-up of a thread of the global pool.
///
/// Deadlines (command timeouts, reconnect back-offs) are checked when one is due, when a source
/// registers, and at least every check interval of the registered sources (the shortest), so a
/// command written by a caller while the loop sleeps is timed out at most one interval late.
///
/// With a ``busyPoll`` budget the thread, for that long after a turn that handled an event or ran
/// a job, polls its sockets without blocking (calling `sched_yield()` between polls, so other
/// threads runnable on its CPU go first) rather than block in `epoll_wait`: an event that comes
/// meanwhile is read by a running thread. An idle loop sleeps.
package final class RedisEventLoop: Sendable {
    private struct Registry {
        var sources: [UInt64: (source: any EventLoopSource, interval: Duration)] = [:]
        /// What the loop reads on every turn, derived from `sources` when they change (rarely:
        /// once per connect): the sources, and the shortest check interval.
        var snapshot: (sources: [any EventLoopSource], interval: Duration?) = ([], nil)
        var nextToken: UInt64 = 1
        var stopping = false
        /// A source registered since the loop last looked: check deadlines on the next turn.
        var registered = false

        mutating func takeSnapshot() {
            snapshot = (sources.values.map(\.source), sources.values.map(\.interval).min())
        }
    }

    /// The `epoll` instance and waker, once made; the thread runs from then on.
    private let started = AtomicLazyReference<Poller>()
    /// Set once `started` holds the poller: the check every command makes (a load of
    /// `started` costs hundreds of instructions, its generic code being unspecialized).
    private let running = Atomic<Bool>(false)
    /// Whether the loop was shut down (then it is never started); taken while starting or
    /// stopping, so neither misses the other.
    private let startup = Mutex(false)
    private let name: String
    private let registry = Mutex(Registry())
    private let exited = OneTimeEvent<Void>()
    /// The loop thread's `pthread_self()` once it runs (0 before).
    private let thread = Atomic<UInt>(0)
    private let jobs = Mutex(Jobs())
    /// How long the thread polls without blocking after a turn that did something (zero: it
    /// blocks at once). See the type's documentation.
    package let busyPoll: Duration
    /// How many times the thread called `epoll_wait` with a timeout other than zero, a wait that
    /// could block (for tests: a reply read while polling busily costs none).
    private let blockingWaits = Atomic<Int>(0)
    /// How many busy polls the thread began (for tests).
    private let busyPolls = Atomic<Int>(0)
    /// While the thread runs a turn's jobs: when it began them, a ``BootClock`` reading plus
    /// one; zero otherwise (``heldByJobs``).
    private let jobsRunningSince = Atomic<Int64>(0)
    /// When the thread last asked `epoll_wait` for its sockets' events: a ``BootClock`` reading
    /// plus one, 0 before the first (``lookedAtSockets(within:)``).
    private let socketsLookedAt = Atomic<Int64>(0)
    /// Told, on the loop's thread, of each turn whose jobs held the thread ``longHold`` or more.
    private let longHoldReport = Mutex<(@Sendable (Duration) -> Void)?>(nil)

    private struct KeptReminder {
        let deadline: ContinuousClock.Instant
        let reminder: any LoopReminder
        /// Found due at the start of a turn: reminded at the next, unless the events that turn
        /// polls settle it.
        var due = false
    }

    /// The jobs of tasks that prefer this loop as their executor, run on the loop's thread after
    /// each turn's events, and the deadlines it keeps (``remind(_:at:)``): both looked at once
    /// per turn, under one lock.
    private struct Jobs {
        var queue: [UnownedJob] = []
        /// The thread is about to wait, or waits, in `epoll` with no job queued: the next
        /// enqueue wakes it.
        var sleeping = false
        /// The thread has exited: jobs go to the global executor, reminders are refused (a
        /// later thread may reuse its `pthread_t`).
        var closed = false
        /// Unordered: a few at a time.
        var reminders: [KeptReminder] = []

        /// Drops the settled reminders, moves those found due at the start of the turn before
        /// (the events polled since did not settle them) to `due`, and marks those due by
        /// `now`; returns when the loop must look again: `now` when some were just found due
        /// (poll the events ready, then remind), else the earliest deadline left.
        mutating func sweepReminders(now: ContinuousClock.Instant, due: inout [any LoopReminder]) -> ContinuousClock.Instant? {
            guard !reminders.isEmpty else { return nil }
            reminders.removeAll { entry in
                if entry.reminder.isSettled { return true }
                if entry.due { due.append(entry.reminder) }
                return entry.due
            }
            var next: ContinuousClock.Instant?
            for index in reminders.indices {
                let deadline = max(reminders[index].deadline, now)
                reminders[index].due = deadline == now
                next = earliest(next, deadline)
            }
            return next
        }
    }

    /// The loop that connections made without one share: started on first use, never stopped.
    package static let shared = RedisEventLoop(name: "redis-loop")

    /// Creates a loop and starts its thread. If the system refuses the `epoll` instance or the
    /// eventfd (no descriptor left: `EMFILE`), the loop has no thread yet: each command sent
    /// through it tries again (``startIfNeeded()``), and fails with that error until one succeeds.
    /// `busyPoll`: see the type's documentation; negative counts as zero.
    package init(name: String = "redis-loop", busyPoll: Duration = .zero) {
        self.name = name
        self.busyPoll = max(.zero, busyPoll)
        _ = startIfNeeded()
    }

    /// Nil once the loop runs; else tries to start it now (an `epoll_create1` and an `eventfd`)
    /// and returns why that failed, or a shutdown error once the loop was shut down unstarted.
    /// An atomic load once started.
    func startIfNeeded() -> RedisError? {
        if running.load(ordering: .acquiring) { return nil }
        return startup.withLock { stopping -> RedisError? in
            if started.load() != nil { return nil }
            if stopping { return Self.shutDown }
            let poller: Poller
            do throws(RedisError) {
                poller = try Poller()
            } catch {
                return error
            }
            let stored = started.storeIfNil(poller)
            running.store(true, ordering: .releasing)
            startNamedThread(name, stackSize: 512 * 1024) { [self] in run(stored) }
            return nil
        }
    }

    private var poller: Poller? { started.load() }

    /// Changes the running loop's watch of a descriptor (`change`), starting the loop first if
    /// need be; returns why that failed.
    private func control(_ change: Poller.Change, descriptor: Int32, writable: Bool, token: UInt64) -> RedisError? {
        if let error = startIfNeeded() { return error }
        return poller?.control(change, descriptor: descriptor, writable: writable, token: token)
    }

    private static let shutDown = RedisError(code: .shutdown, endpoint: nil, message: "the event loop was shut down")

    /// Registers a source for deadline checks; `checkInterval` bounds how long the loop sleeps
    /// between checks while it is registered. Returns its token, or the loop's startup error.
    func register(_ source: any EventLoopSource, checkInterval: Duration) -> Result<UInt64, RedisError> {
        if let error = startIfNeeded() { return .failure(error) }
        defer {
            // The thread may sleep with a longer timeout, or none, computed before this source
            // came: it recomputes when woken. A registration is rare (one per connect).
            poller?.wake()
        }
        return registry.withLock { registry in
            if registry.stopping { return .failure(Self.shutDown) }
            let token = registry.nextToken
            registry.nextToken += 1
            registry.sources[token] = (source, checkInterval)
            registry.takeSnapshot()
            registry.registered = true
            return .success(token)
        }
    }

    /// Forgets a source (call after its socket is no longer watched).
    func deregister(_ token: UInt64) {
        registry.withLock { registry in
            guard registry.sources.removeValue(forKey: token) != nil else { return }
            registry.takeSnapshot()
        }
    }

    /// Starts watching `descriptor` for the source with `token` (reads and hang-ups, and writes
    /// when `writable`). Safe from any thread.
    func watch(_ token: UInt64, descriptor: Int32, writable: Bool) -> RedisError? {
        control(.add, descriptor: descriptor, writable: writable, token: token)
    }

    /// Changes whether writes are watched.
    func update(_ token: UInt64, descriptor: Int32, writable: Bool) -> RedisError? {
        control(.modify, descriptor: descriptor, writable: writable, token: token)
    }

    /// Stops watching `descriptor` (call before closing it).
    func unwatch(_ token: UInt64, descriptor: Int32) {
        _ = poller?.control(.remove, descriptor: descriptor, writable: false, token: token)
    }

    /// Stops the thread once its sources are gone and returns when it has exited. Sources still
    /// registered are no longer served.
    package func shutdown() async {
        beginShutdown()
        await exited.wait()
    }

    /// Asks the thread to stop, without waiting for it.
    package func beginShutdown() {
        let alreadyStopping = registry.withLock { registry in
            defer { registry.stopping = true }
            return registry.stopping
        }
        guard !alreadyStopping else { return }
        // Never started: it never will be, and there is no thread to wait for (jobs enqueued
        // from now on find startIfNeeded() refusing, and go to the global executor).
        let unstarted = startup.withLock { stopping in
            stopping = true
            return started.load() == nil
        }
        if unstarted { exited.fire() } else { poller?.wake() }
    }

    /// Whether the caller runs on the loop's thread (in a source's handler, or a task that
    /// prefers the loop as its executor): the loop then handles no event until it returns.
    package var isCurrentThread: Bool {
        thread.load(ordering: .relaxed) == UInt(pthread_self())
    }

    /// Keeps `reminder` until `deadline`: the loop calls its ``LoopReminder/remind()`` once the
    /// deadline has passed with it unsettled (waking for it if it sleeps), or when the loop
    /// exits, and drops it once settled (at its next turn). Only for a caller on the loop's own
    /// thread, which recomputes its sleep before it waits again; returns false (keeping
    /// nothing) for any other caller, and once the loop has exited.
    ///
    /// What it saves: a deadline set while handling a reply or a message no longer wakes a
    /// timer's thread at once, during the very exchange the wait is for, and not at all when
    /// the wait ends first. Before it reminds a reminder come due, the loop reads the events
    /// ready by then (a turn with a zero timeout), so a reply already in a socket settles it
    /// first. The cost: a reminder comes up to about a millisecond late (`epoll_wait` sleeps
    /// in whole milliseconds), and as late as the loop when a task on it runs without
    /// suspending.
    package func remind(_ reminder: any LoopReminder, at deadline: ContinuousClock.Instant) -> Bool {
        guard isCurrentThread else { return false }
        return jobs.withLock { jobs in
            guard !jobs.closed else { return false }
            jobs.reminders.append(KeptReminder(deadline: deadline, reminder: reminder))
            return true
        }
    }

    /// How long the jobs of tasks that prefer this loop as their executor have held its thread
    /// in the turn now under way, or nil while it runs none (it handles events, or waits). The
    /// thread reads no socket and checks no deadline meanwhile: a task there that computes for
    /// long without suspending leaves every reply of the loop's connections unread. Wall time:
    /// a pause of the thread by the system while it runs them counts too.
    package var heldByJobs: Duration? {
        let since = jobsRunningSince.load(ordering: .relaxed)
        guard since != 0 else { return nil }
        return .nanoseconds(max(0, BootClock.now() - (since - 1)))
    }

    /// Whether the thread asked `epoll_wait` for its sockets' events at most `window`
    /// nanoseconds ago: a close by a server before then is known to the loop (a hang-up is
    /// handled in the turn that reads it, before the turn's jobs run). False when the thread
    /// has never asked. For a caller on the loop's thread, which holds it meanwhile.
    package func lookedAtSockets(within window: Int64) -> Bool {
        let lookedAt = socketsLookedAt.load(ordering: .relaxed)
        return lookedAt != 0 && BootClock.now() - (lookedAt - 1) <= window
    }

    /// How long a turn's jobs must hold the thread for ``reportLongHolds(_:)``'s closure to hear
    /// of it: 100 ms, a thousand round trips on a local network.
    package static let longHold: Duration = .milliseconds(100)

    /// Has `report` called, on the loop's thread, with how long the jobs held it after each turn
    /// whose jobs held it ``longHold`` or more (replacing any closure given before). It must be
    /// quick and must never block.
    package func reportLongHolds(_ report: @escaping @Sendable (Duration) -> Void) {
        longHoldReport.withLock { $0 = report }
    }

    /// How many times the thread has called `epoll_wait` with a timeout other than zero.
    package var blockingWaitCount: Int { blockingWaits.load(ordering: .relaxed) }
    /// How many busy polls the thread has begun.
    package var busyPollCount: Int { busyPolls.load(ordering: .relaxed) }

    /// Waits for events for at most `timeout` (nil: until one comes; zero: only a look). Until
    /// `pollUntil` (the end of the busy poll, if any) it polls without blocking, yielding the CPU
    /// between polls, until an event or `wakeAt` (the instant `timeout` ends); then it blocks for
    /// what is left. Returns whether `epoll_wait` failed.
    private func wait(
        _ poller: Poller, into events: inout [Poller.Event], timeout: Duration?, wakeAt: ContinuousClock.Instant?,
        pollUntil: ContinuousClock.Instant?
    ) -> Bool {
        var timeout = timeout
        if timeout != .zero, let pollUntil, case let now = ContinuousClock.now, pollUntil > now {
            busyPolls.add(1, ordering: .relaxed)
            let end = wakeAt.map { min($0, pollUntil) } ?? pollUntil
            while true {
                if poller.wait(into: &events, timeout: .zero) != nil { return true }
                if !events.isEmpty { return false }
                let polled = ContinuousClock.now
                if polled >= end {
                    timeout = wakeAt.map { max(.zero, polled.duration(to: $0)) }
                    break
                }
                sched_yield()
            }
        }
        if timeout != .zero { blockingWaits.add(1, ordering: .relaxed) }
        return poller.wait(into: &events, timeout: timeout) != nil
    }

    private func run(_ poller: Poller) {
        thread.store(UInt(pthread_self()), ordering: .relaxed)
        var events: [Poller.Event] = []
        events.reserveCapacity(64)
        var running: [UnownedJob] = []
        running.reserveCapacity(16)
        var due: [any LoopReminder] = []
        let executor = asUnownedTaskExecutor()
        // Deadlines are checked when one is due, when a source registered, and at least every
        // check interval; not on every event or job, which would take every source's lock.
        var nextCheck = ContinuousClock.now
        // The end of the busy poll: `busyPoll` after the last turn that handled an event or ran
        // a job (an idle loop sleeps).
        var pollUntil: ContinuousClock.Instant?
        while true {
            let (snapshot, stopping, registered) = registry.withLock { registry in
                defer { registry.registered = false }
                return (registry.snapshot, registry.stopping, registry.registered)
            }
            let (sources, interval) = snapshot
            if stopping { break }
            var now = ContinuousClock.now
            if registered { nextCheck = now }
            if now >= nextCheck {
                var next: ContinuousClock.Instant? = interval.map { now + $0 }
                for source in sources {
                    if let due = source.checkDeadlines(now: now), next.map({ due < $0 }) ?? true { next = due }
                }
                nextCheck = next ?? .now + .seconds(3_600)
                now = .now
            }
            let (idle, reminderAt) = jobs.withLock { jobs in
                let reminderAt = jobs.sweepReminders(now: now, due: &due)
                jobs.sleeping = jobs.queue.isEmpty
                return (jobs.sleeping, reminderAt)
            }
            for reminder in due { reminder.remind() }
            due.removeAll(keepingCapacity: true)
            let wakeAt = earliest(reminderAt, sources.isEmpty ? nil : nextCheck)
            let timeout: Duration? = !idle ? .zero : wakeAt.map { max(.zero, now.duration(to: $0)) }
            let failed = wait(poller, into: &events, timeout: timeout, wakeAt: wakeAt, pollUntil: pollUntil)
            socketsLookedAt.store(BootClock.now() + 1, ordering: .relaxed)
            jobs.withLock { $0.sleeping = false }
            if failed {
                // epoll_wait failed for a reason other than a signal: back off, then try again.
                Thread.sleep(forTimeInterval: 0.01)
                continue
            }
            for event in events {
                if event.token == Poller.wakerToken {
                    // A registration, a stop or a job: each is looked at on the next turn.
                    poller.drainWakeups()
                    continue
                }
                let source = registry.withLock { $0.sources[event.token]?.source }
                source?.handle(readable: event.readable, writable: event.writable, readToEnd: event.readToEnd)
            }
            // The jobs queued until now (those they queue wait for the next turn, so a task that
            // keeps yielding cannot starve the sockets).
            jobs.withLock { swap(&$0.queue, &running) }
            let worked = !events.isEmpty || !running.isEmpty
            if !running.isEmpty {
                let began = BootClock.now()
                jobsRunningSince.store(began + 1, ordering: .relaxed)
                for job in running { job.runSynchronously(on: executor) }
                jobsRunningSince.store(0, ordering: .relaxed)
                running.removeAll(keepingCapacity: true)
                let held = Duration.nanoseconds(max(0, BootClock.now() - began))
                if held >= Self.longHold, let report = longHoldReport.withLock({ $0 }) { report(held) }
            }
            // Counted from the end of the turn: a job that sent a command then waits its reply.
            if busyPoll > .zero, worked { pollUntil = .now + busyPoll }
        }
        let (left, kept) = jobs.withLock { jobs in
            jobs.closed = true
            defer { (jobs.queue, jobs.reminders) = ([], []) }
            return (jobs.queue, jobs.reminders)
        }
        for job in left { Self.runElsewhere(job) }
        // Nobody will look at the reminders kept: tell each now (a remind early is only a look).
        for entry in kept where !entry.reminder.isSettled { entry.reminder.remind() }
        poller.close()
        exited.fire()
    }

    /// Hands a job the loop will not run to the global executor: its task keeps its preference,
    /// so each later resumption comes back here and is passed on again.
    private static func runElsewhere(_ job: UnownedJob) {
        globalConcurrentExecutor.enqueue(ExecutorJob(job))
    }
}

extension RedisEventLoop: TaskExecutor {
    /// Queues `job` to run on the loop's thread after the current turn's events (waking the
    /// thread when it waits). A loop that cannot start (no descriptor for `epoll`) or was shut
    /// down passes the job to the global executor, so a task that prefers it never hangs.
    package func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        guard startIfNeeded() == nil else { return Self.runElsewhere(job) }
        let (accepted, wake) = jobs.withLock { jobs -> (Bool, Bool) in
            if jobs.closed { return (false, false) }
            jobs.queue.append(job)
            defer { jobs.sleeping = false }
            return (true, jobs.sleeping)
        }
        if !accepted {
            Self.runElsewhere(job)
        } else if wake {
            poller?.wake()
        }
    }
}

/// The earlier of two instants, either of which may be missing.
private func earliest(_ first: ContinuousClock.Instant?, _ second: ContinuousClock.Instant?) -> ContinuousClock.Instant? {
    guard let first else { return second }
    guard let second else { return first }
    return min(first, second)
}
