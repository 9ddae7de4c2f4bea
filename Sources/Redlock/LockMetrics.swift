import CoreMetrics
import Synchronization

/// The swift-metrics instruments of one client. With no metrics backend bootstrapped they cost
/// next to nothing.
///
/// - `redlock_acquire_attempts_total`: attempts (each try of `lock()`, or one `tryLock()`).
/// - `redlock_acquired_total`: successful acquires.
/// - `redlock_acquire_handoff_grants_total`: acquires of a fair lock that a quorum of nodes
///   handed over, with no attempt of their own (``LockOptions/fair``).
/// - `redlock_acquire_failures_total{cause}`: `lock()`/`tryLock()` calls that failed, by error code.
/// - `redlock_acquire_duration_seconds`: from the call to the lease, for successful acquires.
/// - `redlock_extensions_total{result}`: `extend()` calls, `ok` or the error code.
/// - `redlock_releases_total{result}`: `unlock()` calls, `ok` or the error code.
/// - `redlock_leases_lost_total`: scoped locks whose lease ran out while the body ran.
/// - `redlock_release_announcements_refused_total`: releases whose announcement a node refused
///   (the user may not publish on `redlock:released:*`); the key was deleted all the same.
/// - `redlock_node_clock_ahead_seconds{node}`: with ``LockOptions/clockGuard``, how far a node's
///   clock had run ahead of the client's at each reading while the node was refused for it;
///   `node` is the node's index.
/// - `redlock_node_failures_total{node,kind}`: per node (its index), each reply that did not
///   count: `noAnswer` (a connection-level failure: refused, timed out, closed), `errorReply`
///   (an error answer: `OOM`, `READONLY`, `NOPERM`, …), `late` (an answer after its attempt's
///   budget). Counted by ``NodeHealth``, which logs the first of each.
/// - `redlock_event_loop_held_seconds`: for a client that made its connections, each time tasks
///   on ``RedlockClient/executor`` held its event loop's thread for 100 ms or more without
///   suspending (the thread read no reply meanwhile), how long: wall time, so a pause of the
///   thread by the system (a CPU quota's throttling) while it ran them counts too.
struct LockMetrics: Sendable {
    let factory: any MetricsFactory
    let attempts: Counter
    let acquired: Counter
    let handoffGrants: Counter
    let acquireDuration: Timer
    let leasesLost: Counter
    let announcementsRefused: Counter
    let eventLoopHeld: Timer
    private let extendedOK: Counter
    private let releasedOK: Counter
    /// Counters with a code dimension, made once each, by label and code.
    private let byCode = CounterCache()
    /// The clock guard's recorders, made once each, by node index.
    private let clockAhead = RecorderCache()

    init(factory: any MetricsFactory) {
        self.factory = factory
        attempts = Counter(label: "redlock_acquire_attempts_total", factory: factory)
        acquired = Counter(label: "redlock_acquired_total", factory: factory)
        handoffGrants = Counter(label: "redlock_acquire_handoff_grants_total", factory: factory)
        acquireDuration = Timer(label: "redlock_acquire_duration_seconds", factory: factory)
        leasesLost = Counter(label: "redlock_leases_lost_total", factory: factory)
        announcementsRefused = Counter(label: "redlock_release_announcements_refused_total", factory: factory)
        eventLoopHeld = Timer(label: "redlock_event_loop_held_seconds", factory: factory)
        extendedOK = Counter(label: "redlock_extensions_total", dimensions: [("result", "ok")], factory: factory)
        releasedOK = Counter(label: "redlock_releases_total", dimensions: [("result", "ok")], factory: factory)
    }

    /// Records that node `index`'s clock ran `excess` ahead (``LockOptions/clockGuard``).
    func clockRanAhead(node index: Int, by excess: Duration) {
        let recorder = clockAhead.recorders.withLock { recorders in
            if let recorder = recorders[index] { return recorder }
            let recorder = Recorder(label: "redlock_node_clock_ahead_seconds", dimensions: [("node", "\(index)")], factory: factory)
            recorders[index] = recorder
            return recorder
        }
        let components = excess.components
        recorder.record(Double(components.seconds) + Double(components.attoseconds) / 1e18)
    }

    func acquireFailed(_ code: RedlockError.Code) {
        byCode.counter("redlock_acquire_failures_total", "cause", code, factory: factory).increment()
    }

    /// Counts an `extend()`: nil for success, else the error code.
    func extended(failure code: RedlockError.Code?) {
        guard let code else { return extendedOK.increment() }
        byCode.counter("redlock_extensions_total", "result", code, factory: factory).increment()
    }

    /// Counts an `unlock()`: nil for success, else the error code.
    func released(failure code: RedlockError.Code?) {
        guard let code else { return releasedOK.increment() }
        byCode.counter("redlock_releases_total", "result", code, factory: factory).increment()
    }
}

/// Recorders with a dimension per node, made on first use and kept.
final class RecorderCache: Sendable {
    let recorders = Mutex<[Int: Recorder]>([:])
}

/// Counters with a dimension per error code, made on first use and kept: one per label and code.
/// The dimension value is the code's name (`taken`, `noQuorum`, …), a stable identifier.
final class CounterCache: Sendable {
    private struct Key: Hashable {
        let label: String
        let code: RedlockError.Code
    }

    private let counters = Mutex<[Key: Counter]>([:])

    func counter(_ label: String, _ dimension: String, _ code: RedlockError.Code, factory: any MetricsFactory) -> Counter {
        counters.withLock { counters in
            let key = Key(label: label, code: code)
            if let counter = counters[key] { return counter }
            let counter = Counter(label: label, dimensions: [(dimension, "\(code)")], factory: factory)
            counters[key] = counter
            return counter
        }
    }
}
