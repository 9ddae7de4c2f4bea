import RedlockTransport

/// A lock on one name across the client's nodes, made by ``RedlockClient/makeLock(_:options:)``.
///
/// An immutable value: copy it and share it freely. Each successful ``lock()`` or
/// ``tryLock()`` returns a ``Lease``; pass it to ``unlock(_:)`` or ``extend(_:)``, or use
/// ``withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)`` to have all of that done for you.
///
/// Cancelling the task that waits in ``lock()`` stops it promptly — also during a retry delay —
/// with ``RedlockError/Code-swift.struct/cancelled``, after releasing whatever the interrupted
/// attempt may have set. (An attempt that an `unlock()` in this process sent on the waiter's
/// behalf at that moment is first awaited, within the attempt budget, then released.)
public struct DistributedLock: Sendable {
    /// The lock's name: the key on every node.
    public let name: String
    /// The options the lock was made with.
    public let options: LockOptions
    /// The client whose nodes hold the lock.
    public let client: RedlockClient
    /// Where a release is announced: the release channel with fast handoff, else empty.
    let announcedOn: String
    /// ``name`` as the key of the client's per-name tables, made once: the local coordination's
    /// calls on a lock + unlock cycle take it, rather than hashing the name on each.
    let key: LockKey
    /// The parts of the default commands that stay the same from call to call, built once
    /// around the value: `SET <name>` and `NX PX <ms>` (an acquire), the release script's
    /// `EVALSHA <sha1> 1 <name>` and its channel argument (announced, or empty).
    let setPrefix: RedisCommand
    let setSuffix: RedisCommand
    let releasePrefix: RedisScriptCall
    let releaseSuffixAnnounced: RedisCommand
    let releaseSuffixSilent: RedisCommand
    /// ``LockOptions/expiry`` in whole milliseconds (rounded up), as sent.
    let expiryMilliseconds: String
    /// ``LockOptions/attemptBudget``, computed once (a `Duration` times a `Double`).
    let attemptBudget: Duration

    init(name: String, options: LockOptions, client: RedlockClient) {
        self.name = name
        self.options = options
        self.client = client
        announcedOn = options.fastHandoff ? Scripts.releaseChannel(name) : ""
        key = LockKey(name)
        expiryMilliseconds = String(options.expiry.millisecondsRoundedUp)
        attemptBudget = options.attemptBudget
        setPrefix = RedisCommand("SET", name)
        setSuffix = RedisCommand("NX", "PX", expiryMilliseconds)
        releasePrefix = RedisScriptCall(Scripts.release, keys: [name])
        releaseSuffixAnnounced = RedisCommand(announcedOn)
        releaseSuffixSilent = RedisCommand("")
    }

    /// Acquires the lock, retrying for up to ``LockOptions/acquireTimeout`` (30 s by default; and
    /// at most ``LockOptions/tries`` attempts). Between attempts it waits
    /// for the holder's release (in this client, or announced by another process with
    /// ``LockOptions/fastHandoff``) or for ``LockOptions/retryDelay``, whichever comes first.
    ///
    /// - Returns: The lease, valid until ``Lease/validUntil``.
    /// - Throws: ``RedlockError`` with code `.taken`, `.noQuorum` or `.validityExhausted` (from
    ///   the last attempt) when every attempt failed, `.fencingCounterExhausted` (a fenced lock
    ///   whose counter is at its maximum on too many nodes), `.cancelled`, `.clientShutDown`
    ///   (the client was shut down), or `.invalidConfiguration` (a ``LockOptions/value``
    ///   generator returned an empty value).
    public func lock() async throws(RedlockError) -> Lease {
        try await acquire(tries: options.tries, deadline: options.acquireTimeout.map { ContinuousClock.now.advanced(by: $0) })
    }

    /// Acquires the lock, retrying until `timeout` has passed (or ``LockOptions/tries`` ran out),
    /// as ``lock()`` does with ``LockOptions/acquireTimeout``.
    ///
    /// - Parameter timeout: How long to keep trying; no attempt starts after it (the last may take
    ///   up to its budget). Zero (or less) makes one attempt. With ``LockOptions/singleFlight``,
    ///   the wait for this process's own holder counts too.
    /// - Throws: ``RedlockError`` from the last attempt when time ran out, or any other code
    ///   ``lock()`` throws.
    public func lock(timeout: Duration) async throws(RedlockError) -> Lease {
        try await lock(deadline: ContinuousClock.now.advanced(by: timeout))
    }

    /// Acquires the lock, retrying until `deadline` (on this process's monotonic clock), as
    /// ``lock(timeout:)`` does.
    ///
    /// - Throws: ``RedlockError`` from the last attempt when the deadline passed, or any other
    ///   code ``lock()`` throws.
    public func lock(deadline: ContinuousClock.Instant) async throws(RedlockError) -> Lease {
        try await acquire(tries: options.tries, deadline: deadline)
    }

    /// Makes a single attempt to acquire the lock, without waiting for a holder to release it.
    ///
    /// - Throws: ``RedlockError`` with code `.taken`, `.noQuorum` or `.validityExhausted`, or
    ///   any other code ``lock()`` throws.
    public func tryLock() async throws(RedlockError) -> Lease {
        try await acquire(tries: 1, deadline: nil)
    }

    /// Takes over a lease another process handed over (``Lease/handoff``): one attempt with the
    /// handed-over value, which every node that still holds it grants (its expiry reset to this
    /// lock's ``LockOptions/expiry``), so the new lease's validity is measured from this call on
    /// this process's clock. With fencing, the new lease gets a new, larger token.
    ///
    /// - Throws: ``RedlockError`` with code `.invalidConfiguration` when the handoff is for
    ///   another lock, `.taken` when another holder has the lock (the handed-over lease expired
    ///   and was taken), or what ``tryLock()`` throws.
    public func reattach(_ handoff: Lease.Handoff) async throws(RedlockError) -> Lease {
        guard LockKey.sameBytes(handoff.name, name) else {
            throw .invalid("the handoff is for lock \"\(handoff.name)\", not this one", lockName: name)
        }
        guard !handoff.value.isEmpty else { throw .invalid("the handoff has an empty value", lockName: name) }
        var options = options
        options.value = .fixed(handoff.value)
        return try await DistributedLock(name: name, options: options, client: client).tryLock()
    }

    /// Releases the lease on every node (compare-and-delete: keys holding another value are left
    /// alone), hands the lock to the longest-waiting `lock()` of this client if there is one, and
    /// otherwise, with ``LockOptions/fastHandoff``, announces the release to other processes. A
    /// fair lock's (``LockOptions/fair``) hands it on each node to the first in line, in whatever
    /// process. Returns once a quorum deleted; the remaining deletes are still sent.
    ///
    /// The release goes on the connections the lease's acquires used when this client acquired
    /// it (behind any of them still waiting for a connect, so each node runs it after them),
    /// else to every node: release a lease with the client that acquired it, since nothing
    /// orders two clients' connections to a node.
    ///
    /// Runs to completion even when the calling task is cancelled. A running scope of this
    /// client that holds the lease (``withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``,
    /// ``withLease(isolation:_:extendWhenRemaining:maximumHoldTime:safetyMargin:onExtended:_:)``)
    /// has its body cancelled once the release is decided (sent and answered), and throws
    /// ``RedlockError/Code-swift.struct/leaseLost``.
    ///
    /// - Throws: ``RedlockError`` with code `.leaseExpired` (the keys were gone; or, with
    ///   ``LockOptions/singleFlight`` and a fixed ``LockOptions/value``, the lease's validity ended
    ///   and another caller of this client acquires with the same value: nothing is sent),
    ///   `.leaseTakenOver` (another holder's keys are there), `.noQuorum` (nodes failed),
    ///   `.clientShutDown` (the client's ``RedlockClient/shutdown()`` was past its wait for
    ///   releases, so the connections were closing; an unlock that begins while it waits goes
    ///   out and is waited for) or
    ///   `.invalidConfiguration` (the lease is another lock's).
    public func unlock(_ lease: Lease) async throws(RedlockError) {
        try await client.traced("redlock.release", lock: name) { _ throws(RedlockError) in try await release(lease) }
    }

    /// A scope's own release at its end: as ``unlock(_:)``, also while the client shuts down
    /// (``RedlockClient/shutdown()`` waits for interrupted scopes to release their leases).
    func unlockScoped(_ lease: Lease) async throws(RedlockError) {
        try await client.traced("redlock.release", lock: name) { _ throws(RedlockError) in try await release(lease, whileShuttingDown: true) }
    }

    private nonisolated(nonsending) func release(_ lease: Lease, whileShuttingDown: Bool = false) async throws(RedlockError) {
        // Counted with the scopes: a shutdown waits for this release (within its limit) rather
        // than closing the connections under it, so a reservation is what lets it go on; one
        // can be made until that wait is over. After that, only a scope's own release and a
        // release in the body of a scope still running (counted by its scope, which shutdown
        // waited for: its clean-up) go on; the task-local is read only then.
        let reserved = !whileShuttingDown && client.scopes.reserveRelease()
        defer { if reserved { client.scopes.leave() } }
        guard reserved || whileShuttingDown || client.scopes.enclosingHere > 0 else {
            throw RedlockError(code: .clientShutDown, lockName: name, message: "the client was shut down; make a new one")
        }
        try checkName(of: lease)
        if options.singleFlight, client.coordination.gatePassedToSameValue(lease, valuesMayRepeat: options.value.mayAlreadyBeHeld) {
            throw gatePassedOn(operation: "unlock")
        }
        defer { if options.singleFlight { client.coordination.leaveGate(lease, valuesMayRepeat: options.value.mayAlreadyBeHeld) } }
        // A waiter in this process gets the lock handed over: its next attempt is queued right
        // behind the deletes on every connection, so each node runs the delete first (unless
        // the node forgot the script: then that node refuses the attempt), and the handoff costs
        // no extra round trip. If the release fails, that attempt fails like any
        // other. A release handed over is not published: the lock has a new holder, and waiters
        // in other processes would only try in vain; they hear the next release that finds no
        // waiter here (with fast handoff), or retry after their delay.
        // A fair lock's release hands the lock to the first in line on the nodes instead.
        if options.fair { client.coordination.released(key, value: lease.value) }
        // On the connections the lease's acquires used when this client made it (a lock of the
        // name with other options may use others): each node then runs the release after any of
        // them that still waited for a connect. Released by another client, the lease's node
        // set counts that client's nodes, and nothing orders the two clients' connections: to
        // every node, and lost releases are kept for every node.
        // A scope holding this lease (a copy released from outside it) says it is no longer valid
        // before the deletes go out: once they run, another process may take the lock. (A
        // scope's own release left its slot first.)
        let holdingScope = client.scopes.ticket(holding: lease)
        holdingScope?.endValidity()
        let ownLease = lease.origin?.client == client.serial
        let releaseLane = ownLease ? lease.origin?.lane ?? lane : lane
        if !ownLease { lease.replayWindow?.mayBeSetAnywhere() }
        let claimed = options.fair ? nil : client.coordination.handOff(key, release: lease.value.utf8, lane: releaseLane)
        let handedOver = claimed?.next
        // A release the connection loses is sent again on its next one (a late delete of a
        // value nobody uses again), unless the value is the caller's own or was handed off.
        let call = releaseCall(value: lease.value, announcing: handedOver == nil, replayWindow: lease.replayWindow ?? .closedForGood)
        // Not to nodes the lease's acquires never reached: nothing of it is there, and a node that
        // refused them for a full queue would only queue more. To every node once the value may
        // be anywhere (keys re-created by an extend that may have failed, another client).
        let order = client.nodeOrder(shuffled: options.shuffleNodes)
        let everywhere = !ownLease || lease.mayHoldOn == .all || lease.replayWindow?.isSetAnywhere == true
        let release = client.prepareFanOut(
            call, order: everywhere ? order : order.filter { lease.mayHoldOn.contains($0) }, budget: attemptBudget,
            returnWhenDecided: options.failFast, lane: releaseLane
        )
        // The waiter's attempt goes right behind the deletes when both go on one lane; on the
        // other (locks of the name with another replicaAcknowledgements), once the release is
        // decided: sent at once, a node could run it before the delete and refuse it.
        let behind = handedOver.map { $0.lane == releaseLane } ?? true
        let sentAt = ContinuousClock.now
        client.send(release, then: behind ? handedOver : nil)
        if behind { claimed?.resume(sentAt: sentAt) }
        let votes = await client.votes(of: release, cancellable: false)
        if !behind, let handedOver {
            let handedAt = ContinuousClock.now
            client.send(handedOver)
            claimed?.resume(sentAt: handedAt)
        }
        // The release went out: a scope holding this lease (a copy released from outside it)
        // must not run on, whatever the nodes said; its body was told the lease is no longer
        // valid before the deletes went out. Not interrupted before the votes are in: the
        // scope's own release would race this one (and, with a fixed value, could delete a key
        // this release handed to a waiter).
        holdingScope?.interrupt(RedlockError(
            code: .leaseLost, lockName: name,
            message: "the lease was released by unlock(_:) outside the scope that holds it; the body was cancelled"
        ))
        client.noteRefusedAnnouncements(in: votes, fair: options.fair)
        if grantedCount(votes) >= client.quorum {
            // A waiter that began to wait in this process meanwhile need not wait for the
            // published messages to come back (they carry the same value: the same release).
            if claimed == nil, !options.fair { client.coordination.announce(key, release: lease.value.utf8, lane: releaseLane) }
            client.metrics.released(failure: nil)
            return
        }
        let error = leaseError(votes, operation: "unlock")
        client.metrics.released(failure: error.code)
        throw error
    }

    /// Resets the keys' expiry to ``LockOptions/expiry`` on every node that still holds the
    /// lease, and returns the lease with its new validity (and the same fencing token).
    ///
    /// - Throws: ``RedlockError`` with code `.leaseExpired` (also with ``LockOptions/singleFlight``
    ///   and a fixed ``LockOptions/value`` when the lease's validity ended, before or while it
    ///   was extended, and another caller of this client acquires with the same value),
    ///   `.leaseTakenOver`, `.noQuorum`, `.validityExhausted`, `.cancelled`, `.clientShutDown`
    ///   or `.invalidConfiguration` (the lease is another lock's).
    public func extend(_ lease: Lease) async throws(RedlockError) -> Lease {
        try await client.traced("redlock.extend", lock: name) { _ throws(RedlockError) in try await extendCounted(lease) }
    }

    private func extendCounted(_ lease: Lease) async throws(RedlockError) -> Lease {
        do throws(RedlockError) {
            let extended = try await extendOnce(lease)
            // The gate may have passed on while the extension was out (the lease's validity
            // ended): with another value the nodes decided, and the successor waits for them.
            let repeats = options.value.mayAlreadyBeHeld
            if options.singleFlight, !client.coordination.gateHolder(extended, valuesMayRepeat: repeats),
               client.coordination.gatePassedToSameValue(extended, valuesMayRepeat: repeats) {
                throw gatePassedOn(operation: "extend")
            }
            if !options.fair { client.coordination.holding(name, value: extended.value, until: extended.validUntil) }
            client.metrics.extended(failure: nil)
            return extended
        } catch {
            client.metrics.extended(failure: error.code)
            throw error
        }
    }

    private func extendOnce(_ lease: Lease) async throws(RedlockError) -> Lease {
        try check(lease)
        if options.singleFlight, client.coordination.gatePassedToSameValue(lease, valuesMayRepeat: options.value.mayAlreadyBeHeld) {
            throw gatePassedOn(operation: "extend")
        }
        if Task.isCancelled { throw cancelled("extend") }
        // Keys re-created here are not the lock()'s acquires: the value's lost releases are
        // kept for every node from now on (whether or not this extend succeeds).
        if options.setNXOnExtend { lease.replayWindow?.mayBeSetAnywhere() }
        let call = RedisScriptCall(
            Scripts.extend, keys: [lease.name],
            arguments: [lease.value, String(options.expiry.millisecondsRoundedUp), options.setNXOnExtend ? "1" : "0"]
        )
        let start = ContinuousClock.now
        let votes = await client.fanOut(
            call, order: client.nodeOrder(shuffled: options.shuffleNodes), budget: attemptBudget, returnWhenDecided: options.failFast,
            replicaWait: replicaWait, lane: lane
        )
        let end = ContinuousClock.now
        if grantedCount(votes) >= client.quorum {
            guard var extended = self.lease(value: lease.value, fencingToken: lease.fencingToken, from: start, to: end) else {
                throw RedlockError(
                    code: .validityExhausted, lockName: name,
                    message: "extend took \(start.duration(to: end)), leaving no validity of \(options.expiry)"
                )
            }
            extended.gateTicket = lease.gateTicket
            extended.replayWindow = lease.replayWindow
            extended.origin = lease.origin
            // An extension re-creates missing keys only with setNXOnExtend.
            extended.mayHoldOn = options.setNXOnExtend ? .all : lease.mayHoldOn
            return extended
        }
        if Task.isCancelled { throw cancelled("extend") }
        throw leaseError(votes, operation: "extend")
    }

    // MARK: - Helpers

    /// The `WAIT` behind each acquire, fencing raise and extend
    /// (``LockOptions/replicaAcknowledgements``); nil when the lock does not wait for replicas.
    var replicaWait: ReplicaWait? {
        options.replicaAcknowledgements > 0
            ? ReplicaWait(count: options.replicaAcknowledgements, budget: attemptBudget, commandTimeout: client.shortestCommandTimeout) : nil
    }

    /// The connections every command of this lock goes on: a lock that waits for replicas has
    /// its own, so that its `WAIT`s hold up no lock that does not wait.
    var lane: ConnectionLane {
        options.replicaAcknowledgements > 0 ? .acknowledged : .shared
    }

    /// The lease an operation from `start` to `end` that reached a quorum yields, or nil when
    /// the elapsed time and drift allowance leave no validity.
    func lease(value: String, fencingToken: Int64?, from start: ContinuousClock.Instant, to end: ContinuousClock.Instant) -> Lease? {
        Timing.validUntil(start: start, end: end, expiry: options.expiry, driftFactor: options.driftFactor).map { validUntil in
            Lease(name: name, value: value, expiry: options.expiry, acquiredAt: start, validUntil: validUntil, fencingToken: fencingToken)
        }
    }

    /// The compare-and-delete of the lease whose value is `value`: published on the release
    /// channel when `announcing` (with fast handoff). A fair lock's also takes the caller out of
    /// the queue and hands the key to the first in line (``Scripts/releaseFair``), unless the
    /// caller `staysInLine` (a failed attempt's clean-up: it tries again from its place).
    ///
    /// Forgotten by a node (`SCRIPT FLUSH`) with commands written behind it, a plain release's
    /// `EVAL` runs after them rather than the release fail there and the key stay until it
    /// expires, unless one of them carries the same value (a retry of the same `lock()`, a
    /// re-attaching acquire, an extension): the delete would undo what that command was
    /// granted. A fair release never runs late: it also hands the key to the first in line.
    ///
    /// With `replayWindow` (a value drawn at random for its `lock()`: ``Lease/replayWindow``), a
    /// connection that loses the call sends it again while the window is open. It then runs
    /// before anything sent to that node later (that `lock()`'s next attempts included: their
    /// value is the same), and after the order barrier ended the lost connection there (see
    /// `OrderBarrier` in the transport): a late delete of this value can only remove a key
    /// nobody counts, until the lease is handed off (``Lease/handoff`` closes the window).
    func releaseCall(value: String, announcing: Bool, staysInLine: Bool = false, replayWindow: ReplayWindow? = nil) -> RedisScriptCall {
        let channel = announcing ? announcedOn : ""
        guard options.fair else {
            return releasePrefix.appending(value, then: announcing ? releaseSuffixAnnounced : releaseSuffixSilent, runsLateUnlessBehind: value)
                .replayable(within: replayWindow)
        }
        return RedisScriptCall(
            Scripts.releaseFair, keys: [name, Scripts.queueKey(name), Scripts.queueDeadlinesKey(name)],
            arguments: [
                value, channel, options.fastHandoff ? Scripts.handoffChannel(name) : "",
                String(Swift.max(attemptBudget * 2, .milliseconds(10)).millisecondsRoundedUp),
                staysInLine ? "0" : "1",
            ] + (handoffsCountAsGrants ? [String(options.expiry.millisecondsRoundedUp)] : [])
        ).replayable(within: replayWindow)
    }

    /// Runs a compare-and-delete `call` on `order`, bounded by the attempt budget and deaf to
    /// the caller's cancellation: a release always runs to its end.
    func release(_ call: RedisScriptCall, on order: [Int], returnWhenDecided: Bool) async -> [Vote?] {
        await client.fanOut(
            call, order: order, budget: attemptBudget, returnWhenDecided: returnWhenDecided, cancellable: false, lane: lane
        )
    }

    private func check(_ lease: Lease) throws(RedlockError) {
        try client.checkOpen(lockName: name)
        try checkName(of: lease)
    }

    private func checkName(of lease: Lease) throws(RedlockError) {
        guard LockKey.sameBytes(lease.name, name) else {
            throw .invalid("the lease is for lock \(RedlockError.shown(lease.name)), not this one", lockName: name)
        }
    }

    /// With single-flight and a fixed value: the lease's validity ended, and the gate passed to
    /// another caller of this process acquiring with the same value, whose keys the nodes cannot
    /// tell apart from this lease's.
    private func gatePassedOn(operation: String) -> RedlockError {
        RedlockError(
            code: .leaseExpired, lockName: name,
            message: "\(operation) refused: the lease's validity ended and single-flight passed the lock to another caller in this process with the same value, which the keys on the nodes now belong to"
        )
    }

    func cancelled(_ operation: String) -> RedlockError {
        RedlockError(code: .cancelled, lockName: name, message: "\(operation) was cancelled")
    }

    /// The error of an unlock or extend that did not reach a quorum.
    private func leaseError(_ votes: [Vote?], operation: String) -> RedlockError {
        let failures = client.failures(in: votes)
        let taken = failures.filter { $0.cause == .taken }
        let missing = failures.filter { $0.cause == .missing }
        if taken.count + missing.count >= client.quorum {
            if taken.isEmpty {
                return RedlockError(
                    code: .leaseExpired, lockName: name,
                    message: "\(operation): the lease's keys are gone (already released, or expired)", nodes: failures
                )
            }
            return RedlockError(
                code: .leaseTakenOver, lockName: name,
                message: "\(operation): another holder has the lock on \(countedNodes(taken.count))", nodes: failures
            )
        }
        // Connections closed by a shutdown under way answer for no node: the shutdown is the
        // cause (an extend racing it; an unlock past its wait's deadline).
        if client.isShuttingDown {
            return RedlockError(
                code: .clientShutDown, lockName: name, message: "\(operation): the client shut down meanwhile; the lease was not \(operation == "extend" ? "extended" : "released")",
                nodes: failures
            )
        }
        // Nodes that had not answered when the refusals decided it (failFast) may still act on
        // it: "0 granted" alone reads as if they refused.
        let pending = Vote.unsettledNote(votes, endpoints: client.endpoints)
        return RedlockError(
            code: .noQuorum, lockName: name,
            message: "\(operation): \(grantedCount(votes)) of \(countedNodes(client.nodes.count)) granted\(pending), \(client.quorum) needed",
            nodes: failures
        )
    }
}
