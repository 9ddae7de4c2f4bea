import RedlockTransport
import Synchronization

/// The leases that running scopes of one client hold (``DistributedLock/withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``
/// and ``DistributedLock/withLease(isolation:_:extendWhenRemaining:maximumHoldTime:safetyMargin:onExtended:_:)``),
/// by lock name and value.
///
/// A scope owns its lease: it extends it and releases it at its end. So the registry refuses a
/// second scope on a lease a scope already holds (two bodies would each believe the lease theirs
/// after the first one's release), and interrupts a scope whose lease is released from outside
/// it (``DistributedLock/unlock(_:)`` on a copy of the lease, once that release is decided; a
/// failed acquire with the same value of the caller's own, whose clean-up deletes it) or whose
/// client shuts down: its body is cancelled then rather than at the next extension or at the
/// deadline. It also counts the scopes running, those still acquiring included, the
/// ``DistributedLock/unlock(_:)`` calls under way, and apart from them the `lock()` and
/// `tryLock()` calls under way, for ``RedlockClient/shutdown()`` to wait for their releases.
final class ScopeRegistry: Sendable {
    /// A lease's key and value as the nodes see them: their bytes (two canonically equivalent
    /// names are two keys).
    private struct Key: Hashable {
        let nameBytes: LockKey
        let value: [UInt8]

        /// The lock's name, as given.
        var name: String { nameBytes.name }

        init(name: String, value: String) {
            nameBytes = LockKey(name)
            self.value = Array(value.utf8)
        }

        init(_ lease: Lease) {
            self.init(name: lease.name, value: lease.value)
        }
    }

    private struct State {
        var scopes: [Key: ScopeTicket] = [:]
        /// Scopes entered and not yet ended: those in ``scopes`` and those releasing their
        /// leases (which left it, so that a successor on the same value can enter).
        var running = 0
        /// `lock()` and `tryLock()` calls under way (``reserveAcquire()``), waited for with the
        /// scopes.
        var acquiring = 0
        /// Set by ``close()``.
        var closed = false
        /// Set once ``waitUntilEmpty(until:leaving:)`` is over (the connections close next):
        /// until then an `unlock()` may still begin (``reserveRelease()``).
        var releasesClosed = false
        /// Callers of ``waitUntilEmpty(until:leaving:)``, resumed when no more scopes run than
        /// each leaves out.
        var emptied: [Int: (leaving: Int, continuation: CheckedContinuation<Void, Never>)] = [:]
        var nextWaiter = 0

        /// What ``waitUntilEmpty(until:leaving:)`` waits for: the scopes and acquires under way.
        var underWay: Int { running + acquiring }

        /// Takes out the waiters of ``waitUntilEmpty(until:leaving:)`` whose wait is over, to
        /// resume outside the lock.
        /// A wait that is over closes the releases in the same step (``releasesClosed``), so no
        /// `unlock()` begins between the wait's end and the connections' close.
        mutating func emptiedWaiters() -> [CheckedContinuation<Void, Never>] {
            guard !emptied.isEmpty else { return [] }
            let underWay = underWay
            let done = emptied.filter { $0.value.leaving >= underWay }
            for id in done.keys { emptied[id] = nil }
            if !done.isEmpty { releasesClosed = true }
            return done.values.map(\.continuation)
        }
    }

    private let state = Mutex(State())

    /// A scope whose body the current task runs in: its registry, and its ticket (which tells
    /// whether it ended: a task the body started may outlive it, with its task-locals).
    struct Mark: Sendable {
        let registry: ObjectIdentifier
        let ticket: ScopeTicket
    }

    /// The scopes whose bodies the current task runs in, innermost last (scopes nest).
    @TaskLocal static var enclosing: [Mark] = []

    /// The mark of the scope of `ticket` in this registry.
    func mark(_ ticket: ScopeTicket) -> Mark { Mark(registry: ObjectIdentifier(self), ticket: ticket) }

    /// How many scopes of this registry, still running, the current task runs the bodies of.
    var enclosingHere: Int {
        let me = ObjectIdentifier(self)
        return Self.enclosing.reduce(0) { $0 + ($1.registry == me && !$1.ticket.hasEnded ? 1 : 0) }
    }

    /// What ``enter(_:reserved:)`` found.
    enum Entry {
        /// The scope runs, interrupted through this ticket.
        case entered(ScopeTicket)
        /// A running scope of this client holds the lease.
        case held
        /// The client shuts down (``close()``): no scope starts.
        case closed
    }

    /// Counts a scope that is still acquiring its lease (``DistributedLock/withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``)
    /// as running, so that shutdown waits for it to enter and release; false once closed.
    /// Its ``enter(_:reserved:)`` then passes `reserved: true`, and every way out of it that
    /// does not enter calls ``leave()``.
    func reserve() -> Bool {
        state.withLock { state in
            guard !state.closed else { return false }
            state.running += 1
            return true
        }
    }

    /// Registers a scope for `lease`; `reserved`: it was counted by ``reserve()`` already.
    /// When it does not enter, a reservation stays counted until ``leave()``.
    func enter(_ lease: Lease, reserved: Bool) -> Entry {
        let key = Key(lease)
        return state.withLock { state in
            guard !state.closed else { return .closed }
            guard state.scopes[key] == nil else { return .held }
            let ticket = ScopeTicket()
            state.scopes[key] = ticket
            if !reserved { state.running += 1 }
            return .entered(ticket)
        }
    }

    /// How many scopes run (those acquiring, entered or releasing).
    var running: Int { state.withLock { $0.running } }

    /// Counts an `unlock()` under way with the scopes, for shutdown to wait for its release;
    /// false once shutdown's wait is over (the connections are about to close). Unlike
    /// ``reserve()``, it succeeds while shutdown waits: a lease returned just before the
    /// shutdown began, released just after it, still goes. A true return is matched by one
    /// ``leave()``.
    func reserveRelease() -> Bool {
        state.withLock { state in
            guard !state.releasesClosed else { return false }
            state.running += 1
            return true
        }
    }

    /// Counts a `lock()` or `tryLock()` under way, for shutdown to wait for its clean-up;
    /// false once closed. A true return is matched by one ``leaveAcquire()``.
    func reserveAcquire() -> Bool {
        state.withLock { state in
            guard !state.closed else { return false }
            state.acquiring += 1
            return true
        }
    }

    /// A `lock()` or `tryLock()` counted by ``reserveAcquire()`` ended.
    func leaveAcquire() {
        let waiters = state.withLock { state in
            state.acquiring -= 1
            return state.emptiedWaiters()
        }
        for waiter in waiters { waiter.resume() }
    }

    /// At shutdown: no scope enters any more.
    func close() {
        state.withLock { $0.closed = true }
    }

    /// The scope of `ticket` no longer holds `lease` for itself: it is about to release it.
    /// Another scope may enter on the same name and value from now on (a successor that
    /// single-flight lets in as the release passes the gate on, with a fixed value).
    func releasing(_ lease: Lease, _ ticket: ScopeTicket) {
        let key = Key(lease)
        state.withLock { state in
            if state.scopes[key] === ticket { state.scopes[key] = nil }
        }
    }

    /// The scope of `ticket` ended: its release is done (``waitUntilEmpty(until:)`` waits for
    /// that).
    func leave(_ lease: Lease, _ ticket: ScopeTicket) {
        releasing(lease, ticket)
        ticket.end()
        leave()
    }

    /// A scope counted as running ended (one that did not enter: a reservation).
    func leave() {
        let waiters = state.withLock { state in
            state.running -= 1
            return state.emptiedWaiters()
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Interrupts the scope holding `name` with `value`, if any, with `error`.
    func interrupt(name: String, value: String, _ error: @autoclosure () -> RedlockError) {
        // With no scope running, no key is built or hashed.
        guard let ticket = state.withLock({ $0.scopes.isEmpty ? nil : $0.scopes[Key(name: name, value: value)] }) else { return }
        ticket.interrupt(error())
    }

    /// The ticket of the scope holding `lease`, if any: an unlock from outside ends its validity
    /// before the deletes go out and interrupts it after (``ScopeTicket/endValidity()``,
    /// ``ScopeTicket/interrupt(_:)``). On every unlock: with no scope running, no key is built.
    func ticket(holding lease: Lease) -> ScopeTicket? {
        state.withLock { $0.scopes.isEmpty ? nil : $0.scopes[Key(name: lease.name, value: lease.value)] }
    }

    /// Whether a running scope holds `name` with `value`.
    func holds(name: String, value: String) -> Bool {
        state.withLock { $0.scopes[Key(name: name, value: value)] != nil }
    }

    /// Interrupts every running scope with `error`.
    func interruptAll(_ error: (String) -> RedlockError) {
        let scopes = state.withLock { $0.scopes }
        for (key, ticket) in scopes { ticket.interrupt(error(key.name)) }
    }

    /// Returns once no scope runs (its release included) but `leaving` (the caller's own: it
    /// runs their bodies) and no acquire or `unlock()` is under way, or at `deadline`, whichever
    /// comes first; from then on ``reserveRelease()`` refuses. For shutdown only.
    func waitUntilEmpty(until deadline: ContinuousClock.Instant, leaving: Int = 0) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                let id = state.withLock { state in
                    defer { state.nextWaiter += 1 }
                    return state.nextWaiter
                }
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        let resumeNow: Bool = state.withLock { state in
                            if state.underWay <= leaving || Task.isCancelled {
                                state.releasesClosed = true
                                return true
                            }
                            state.emptied[id] = (leaving, continuation)
                            return false
                        }
                        if resumeNow { continuation.resume() }
                    }
                } onCancel: {
                    // The deadline came first.
                    state.withLock { state in
                        state.releasesClosed = true
                        return state.emptied.removeValue(forKey: id)
                    }?.continuation.resume()
                }
            }
            group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            await group.next()
            group.cancelAll()
        }
    }
}

/// One running scope's link to the registry: what interrupts it, and what ends the lease's
/// validity for its body first. Either that comes before the scope listens is delivered when it
/// does; only the first interruption counts.
final class ScopeTicket: Sendable {
    private let interruption = OneTimeEvent<RedlockError>()
    private let validityEnd = OneTimeEvent<Void>()
    private let ended = Atomic<Bool>(false)

    /// Whether its scope ended (left the registry).
    var hasEnded: Bool { ended.load(ordering: .acquiring) }

    /// Its scope ended.
    func end() { ended.store(true, ordering: .releasing) }

    /// The interruption that came before ``onInterrupt(_:)``, if any.
    var pending: RedlockError? { interruption.value }

    /// Calls `handler` on the (first) interruption; at once if one came already.
    func onInterrupt(_ handler: @escaping @Sendable (RedlockError) -> Void) {
        interruption.onFire(handler)
    }

    /// Calls `ender` when the lease stops being valid for the body before the scope is
    /// interrupted (``endValidity()``); at once if that came already.
    func onValidityEnd(_ ender: @escaping @Sendable () -> Void) {
        validityEnd.onFire { ender() }
    }

    /// The lease is being released from outside the scope: from now on the body may not act on
    /// it, though the interruption (and the scope's own release) waits for that release's votes.
    func endValidity() {
        validityEnd.fire()
    }

    /// Interrupts the scope with `error` (the first call only).
    func interrupt(_ error: RedlockError) {
        interruption.fire(error)
    }
}
