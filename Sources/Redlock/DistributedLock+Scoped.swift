import CoreMetrics
import Logging
import RedlockTransport
import Synchronization

extension DistributedLock {
    /// Acquires the lock, runs `body` while keeping the lease alive, and releases it when `body`
    /// ends — also when it throws or is cancelled.
    ///
    /// While `body` runs, a background task extends the lease each time its remaining validity
    /// falls to `extendWhenRemaining` × expiry. Loss is decided by this process's clock, never by
    /// waiting for a node's reply: the scope keeps a deadline at the lease's
    /// ``Lease/validUntil`` minus `safetyMargin`, moved only by a confirmed extension. When the
    /// deadline passes first (nodes frozen, unreachable or slow), or a node reports that the keys
    /// expired or belong to another holder, `body`'s task is cancelled then and there and the call
    /// throws ``RedlockError/Code-swift.struct/leaseLost``.
    ///
    /// The call returns `body`'s result only for protected work: if `body` returns or throws
    /// after the deadline (it ignored cancellation for a while, or the whole process was paused),
    /// or the release after it finds the keys gone or another holder's on a quorum while the
    /// lease was still valid (deleted or overwritten from outside the lock, or a node lost its
    /// data: the loss came at a moment the scope cannot know), the call throws `leaseLost`
    /// instead, with `body`'s own error as ``RedlockError/underlyingError``. So do not unlock
    /// the lease inside `body`: the scope releases it. Cancellation is cooperative: a body that
    /// never checks for it keeps running until it returns, and its work past the deadline is
    /// unprotected — only fencing tokens (``LockOptions/fencing``) checked by the resource
    /// close that gap.
    ///
    /// Cancelling the caller cancels `body`; the lease is still extended until `body` returns,
    /// so the clean-up it does after noticing stays protected. No task outlives the call: the
    /// extender stops before it returns.
    ///
    /// - Parameters:
    ///   - isolation: Where `body` runs: the caller's actor (the default, `#isolation`), so a
    ///     main-actor caller's body runs on the main actor and may use its state; with no actor,
    ///     on the executor the caller's task prefers (SE-0417: `body` runs in a child task, which
    ///     inherits the preference), such as ``RedlockClient/executor``, else on the global
    ///     executor. The deadline watch and the hold-time cap run on the client's timer thread,
    ///     the extender on its I/O thread (a task preferring ``RedlockClient/executor``), not on
    ///     the global pool, and they cancel the body themselves; the body's end is recorded where
    ///     it ends: an actor busy with other work, or bodies computing on every thread of the
    ///     pool, delay neither (only the body's reaction to cancellation). On
    ///     ``RedlockClient/executor`` a body that computes without suspending also keeps the
    ///     extensions from being sent and their replies unread, and so ends in `leaseLost` at the
    ///     deadline (whose message says that tasks there held the client's event loop).
    ///   - extendWhenRemaining: The share of the expiry left at which to extend, in (0, 1),
    ///     leaving at least half an attempt's budget (``LockOptions/attemptBudget``, what an
    ///     extension may take) between a new lease's validity (expiry × (1 −
    ///     ``LockOptions/driftFactor``) − 2 ms) and the next extension: else extensions follow
    ///     each other back to back. The default is 1/3.
    ///     `extendWhenRemaining` × expiry − `safetyMargin` is the time each
    ///     extension has to be confirmed before the deadline, and must be at least 1 ms (Redis's
    ///     expiry resolution; a smaller window lost every lease at its first extension). That
    ///     floor rules out windows that can never work, not ones that may fail: leave room for
    ///     a round trip and its retries under load (tens of milliseconds and more).
    ///   - maximumHoldTime: When set, `body` is cancelled and the call throws
    ///     ``RedlockError/Code-swift.struct/holdTimeExceeded`` once the lock has been held this
    ///     long; at most 100 years of 365 days. The default is `nil` (no cap).
    ///   - safetyMargin: How long before ``Lease/validUntil`` `body` is cancelled when no
    ///     extension has been confirmed: time for it to notice and stop. Must be at least 1 ms
    ///     less than `extendWhenRemaining` × expiry. The default, `nil`, is
    ///     ``HeldLease/defaultSafetyMargin(expiry:)``: 5 % of the expiry, at least 5 ms and at
    ///     most 250 ms; and at most half of `extendWhenRemaining` × expiry (for an expiry of a
    ///     few tens of milliseconds).
    ///   - body: The work to do while holding the lock.
    /// - Returns: What `body` returned.
    /// - Throws: What `body` threw (while protected; for a caller cancelled while `body` runs,
    ///   usually `CancellationError`), or a ``RedlockError``: from acquiring (`cancelled` for a
    ///   caller cancelled before it held the lock); `leaseLost` when the lease was lost while
    ///   `body` ran (also when ``unlock(_:)`` released it from outside); `holdTimeExceeded`;
    ///   `clientShutDown` when the client shuts down meanwhile (``RedlockClient/shutdown()``);
    ///   `invalidConfiguration` for invalid parameters, or when a running scope of this client
    ///   holds the same name and value (a value of your own, ``LockValue/fixed(_:)``; with
    ///   ``LockOptions/singleFlight``, when that scope came through the gate too, the call waits
    ///   for its release instead, and is refused only if the gate passed on at the end of that
    ///   lease's validity while its body still ran).
    public func withLock<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        extendWhenRemaining: Double = 1.0 / 3.0,
        maximumHoldTime: Duration? = nil,
        safetyMargin: Duration? = nil,
        _ body: nonisolated(nonsending) sending @escaping (HeldLease) async throws -> T
    ) async throws -> T {
        _ = try validateScope(extendWhenRemaining: extendWhenRemaining, maximumHoldTime: maximumHoldTime, safetyMargin: safetyMargin)
        // A fixed value a running scope holds is that scope's lease: an acquire with it would
        // re-attach to its keys, and a failed one would delete them. With single-flight, when the
        // holder of this name's gate holds that value (it came through the gate), the acquire
        // waits at the gate until that scope's release passes it on; a scope that did not (a
        // lock of the name without single-flight, a withLease) is refused as without.
        if let value = options.value.fixedValue, client.scopes.holds(name: name, value: value),
           !(options.singleFlight && client.coordination.gateOwned(name, byValue: value)) {
            throw RedlockError.invalid(
                "a running scope of this client holds this lock with the same fixed value; a lease has one scope at a time",
                lockName: name
            )
        }
        // Counted as running while it acquires: a shutdown meanwhile waits for its release.
        guard client.scopes.reserve() else {
            throw RedlockError(code: .clientShutDown, lockName: name, message: "the client was shut down; make a new one")
        }
        let lease: Lease
        do {
            lease = try await lock()
        } catch {
            client.scopes.leave()
            throw error
        }
        return try await scope(
            isolation: isolation,
            lease, confirm: false, reserved: true, extendWhenRemaining: extendWhenRemaining, maximumHoldTime: maximumHoldTime,
            safetyMargin: safetyMargin, onExtended: { _ in }, body
        )
    }

    /// Runs `body` while keeping an already acquired `lease` alive, then releases it: what
    /// ``withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)`` does after acquiring,
    /// with the same guarantees. Use it when the acquire needs its own policy (a deadline,
    /// ``tryLock()``).
    ///
    /// A `Lease` is a value: a copy may have been released, or its keys expired and taken,
    /// while its ``Lease/validUntil`` still lies ahead. So before `body` runs, the call confirms
    /// the lease on the nodes with one extension (``extend(_:)``, one round trip), which also
    /// renews its validity; when the nodes no longer hold it, `body` does not run and the call
    /// throws what the extension threw (``RedlockError/Code-swift.struct/leaseExpired``: the keys
    /// are gone; ``RedlockError/Code-swift.struct/leaseTakenOver``: another holder's are there).
    /// A lease has one scope at a time: a lease that a running scope of this client holds is
    /// refused with ``RedlockError/Code-swift.struct/invalidConfiguration`` (and left to that
    /// scope), and ``unlock(_:)`` of a scope's lease from outside it ends the lease for the body
    /// as its deletes go out (``HeldLease/isValid`` false from then on) and cancels the body once
    /// that release is decided (the scope throws ``RedlockError/Code-swift.struct/leaseLost``,
    /// also when the body returned in between). A
    /// lease is told by its name and value, as the nodes tell it: with a value of your own
    /// (``LockValue/fixed(_:)``, a generator) two scopes of one client on one name at once hold
    /// one lease, and the second is refused; ``LockOptions/singleFlight`` lets them in one after
    /// another. An acquire with that value that fails deletes it where it was granted: the
    /// scope holding it is cancelled then. After ``RedlockClient/shutdown()`` the call throws
    /// ``RedlockError/Code-swift.struct/clientShutDown`` and sends nothing.
    ///
    /// A lease whose deadline (``Lease/validUntil`` minus the safety margin) has already passed
    /// is refused without running `body`: the call releases whatever of it is left and throws
    /// ``RedlockError/Code-swift.struct/leaseExpired``. A caller already cancelled gets
    /// ``RedlockError/Code-swift.struct/cancelled`` without `body` running. On every error before
    /// `body` runs (invalid parameters, a lease of another lock) the lease is released too: the
    /// call owns it.
    ///
    /// - Parameters:
    ///   - isolation: Where `body` runs, as for
    ///     ``withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``.
    ///   - lease: A lease of this lock, from ``lock()``, ``tryLock()`` or a re-attach.
    ///   - extendWhenRemaining: As for ``withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``;
    ///     default 1/3.
    ///   - maximumHoldTime: As for ``withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``;
    ///     default `nil`.
    ///   - safetyMargin: As for ``withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``;
    ///     default `nil` (5 % of the expiry, 5–250 ms, at most half of `extendWhenRemaining` × expiry).
    ///   - onExtended: Called with each confirmed extension, before `body` can see it, e.g. to
    ///     move a deadline kept outside this process (as `redlock run` tells its watchdog). It
    ///     runs on the extending task: for `withLease`'s confirming extension, the caller's;
    ///     after that, on the client's I/O thread (``RedlockClient/executor``), where it should
    ///     return quickly: no reply is read meanwhile. The default does nothing.
    ///   - body: The work to do while holding the lock.
    /// - Returns: What `body` returned.
    /// - Throws: What `body` threw (while protected; for a caller cancelled while `body` runs,
    ///   usually `CancellationError`), or a ``RedlockError``: `leaseLost` when the lease was lost
    ///   while `body` ran; `holdTimeExceeded` (without running `body` for a lease acquired
    ///   longer than `maximumHoldTime` ago); `cancelled` for a caller cancelled before `body`
    ///   ran; `leaseExpired` for a lease with no validity left or whose keys are gone;
    ///   `leaseTakenOver` for a lease whose keys another holder has; what ``extend(_:)``
    ///   throws otherwise (`noQuorum`, …); `clientShutDown` when the client shuts down while
    ///   `body` runs; `invalidConfiguration` for invalid parameters, a lease of another lock or
    ///   a lease a running scope holds.
    public func withLease<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ lease: Lease,
        extendWhenRemaining: Double = 1.0 / 3.0,
        maximumHoldTime: Duration? = nil,
        safetyMargin: Duration? = nil,
        onExtended: @escaping @Sendable (Lease) -> Void = { _ in },
        _ body: nonisolated(nonsending) sending @escaping (HeldLease) async throws -> T
    ) async throws -> T {
        try await scope(
            isolation: isolation, lease, confirm: true, reserved: false, extendWhenRemaining: extendWhenRemaining, maximumHoldTime: maximumHoldTime,
            safetyMargin: safetyMargin, onExtended: onExtended, body
        )
    }

    /// A scope on `lease`: ``withLease(isolation:_:extendWhenRemaining:maximumHoldTime:safetyMargin:onExtended:_:)``,
    /// which confirms the lease on the nodes first (`confirm`), and
    /// ``withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``, whose lease
    /// was acquired just before.
    private func scope<T: Sendable>(
        isolation: isolated (any Actor)?,
        _ lease: Lease,
        confirm: Bool,
        reserved: Bool,
        extendWhenRemaining: Double,
        maximumHoldTime: Duration?,
        safetyMargin: Duration?,
        onExtended: @escaping @Sendable (Lease) -> Void,
        _ body: nonisolated(nonsending) sending @escaping (HeldLease) async throws -> T
    ) async throws -> T {
        guard LockKey.sameBytes(lease.name, name) else {
            // Not this lock's (only withLease can be given one): nothing of it is released here,
            // as an unlock would refuse it too.
            throw RedlockError.invalid("the lease is for lock \(RedlockError.shown(lease.name)), not this one", lockName: name)
        }
        // The lease's slot first: a lease that a running scope holds is that scope's, and no
        // check below may release it.
        let ticket: ScopeTicket
        switch client.scopes.enter(lease, reserved: reserved) {
        case let .entered(entered):
            ticket = entered
        case .held:
            if reserved {
                client.scopes.leave()
                // The lease is the running scope's: this caller leaves the gate it came through.
                if options.singleFlight { client.coordination.leaveGate(lease, valuesMayRepeat: options.value.mayAlreadyBeHeld) }
            }
            throw RedlockError.invalid(
                "a running scope of this client holds this lease already; a lease has one scope at a time, which extends and releases it",
                lockName: name
            )
        case .closed:
            // A withLock that acquired while the client shut down releases what it got (shutdown
            // waits for it); a withLease after shutdown sends nothing, as an unlock would not.
            guard reserved else {
                throw RedlockError(code: .clientShutDown, lockName: name, message: "the client was shut down; make a new one")
            }
            try? await unlockScoped(lease)
            client.scopes.leave()
            throw RedlockError(code: .clientShutDown, lockName: name, message: "the client was shut down; the body did not run, and the lease was released")
        }
        let margin: Duration
        // The hold-time cap counts from the acquire, not from the confirming extension.
        let acquiredAt = lease.acquiredAt
        var lease = lease
        do {
            margin = try validateScope(extendWhenRemaining: extendWhenRemaining, maximumHoldTime: maximumHoldTime, safetyMargin: safetyMargin)
            let remaining = ContinuousClock.now.duration(to: lease.validUntil)
            guard remaining > margin else {
                throw RedlockError(
                    code: .leaseExpired, lockName: name,
                    message: "the lease has \(Swift.max(remaining, .zero)) of validity left, no more than the safety margin of \(margin); the body did not run"
                )
            }
            if let maximumHoldTime, acquiredAt.advanced(by: maximumHoldTime) <= .now {
                throw RedlockError(
                    code: .holdTimeExceeded, lockName: name,
                    message: "the lease was acquired \(acquiredAt.duration(to: .now).readableDescription) ago, past the maximum hold time of \(maximumHoldTime.readableDescription); the body did not run"
                )
            }
            // No protected work starts for a caller that no longer wants it.
            if Task.isCancelled { throw cancelled("withLease") }
            if confirm {
                lease = try await extend(lease)
                onExtended(lease)
            }
            if let interruption = ticket.pending { throw interruption }
        } catch {
            client.scopes.releasing(lease, ticket)
            try? await unlockScoped(lease)
            client.scopes.leave(lease, ticket)
            throw error
        }
        let held = HeldLease(lease, safetyMargin: margin)

        // The deadline and the hold-time cap are watched from the client's timer thread, and the
        // extender runs on the client's event loop (a task that prefers ``RedlockClient/executor``,
        // which sleeps on the timer too): none of them waits for a thread of the global pool,
        // which bodies that compute without suspending may all hold (two such bodies on two
        // cores kept every extension and the cancel from running while another process took the
        // lock), nor for the caller's actor. A body that holds the event loop (it runs there when
        // its task prefers the executor) keeps the extensions' replies unread, and the timer still
        // cancels it at the deadline. They stop the body themselves when they end it, and are not
        // cancelled with the caller: a cancelled body stays protected while it winds down. So the
        // outcome is the first one claimed, not the first seen: a body that ends because it was
        // cancelled must not overtake the interruption that cancelled it. The body claims its end
        // where it ends, before any hop: back on a busy actor, a watch would claim first. An
        // interruption stops the extender too: a body that ignores cancellation is not kept past
        // its hold-time cap.
        let stopBody = ChildCanceller()
        let stopExtender = ChildCanceller()
        let claimed = OneTimeEvent<ScopeOutcome<T>>()
        @Sendable func claim(_ outcome: ScopeOutcome<T>?) -> Bool {
            guard let outcome else { return false }
            if claimed.fire(outcome), case .interrupted = outcome {
                held.end()
                stopExtender.cancel()
                // The body's cancellation handlers are the caller's code, and cancelling runs
                // them on the cancelling thread: not on the one that noticed (the client's timer
                // thread, whose small stack and every other wait of the client they would hold,
                // or its I/O thread), but on one of the library's own (``CancellationThreads``).
                CancellationThreads.shared.run { stopBody.cancel() }
            }
            return true
        }
        ticket.onInterrupt { error in _ = claim(.interrupted(error)) }
        ticket.onValidityEnd { held.end() }
        let watch = LeaseWatch(
            held, capAt: maximumHoldTime.map { acquiredAt.advanced(by: $0) }, timer: client.deadlines,
            onLapse: { [self] in
                _ = claim(.interrupted(lost(held, detail: "no extension was confirmed before the lease's deadline; the body was cancelled")))
            },
            onCap: { [name] in
                _ = claim(.interrupted(RedlockError(
                    code: .holdTimeExceeded, lockName: name,
                    message: "the body ran past the maximum hold time of \((maximumHoldTime ?? .zero).readableDescription) and was cancelled"
                )))
            }
        )
        watch.start()
        let extender = Task(executorPreference: client.executor) {
            await stopExtender.run {
                _ = claim(await keepAlive(held, extendWhenRemaining: extendWhenRemaining, onExtended: onExtended).map { .interrupted($0) })
            }
        }
        // The body runs in a child task of the caller's: it can be stopped alone, it is cancelled
        // with the caller, and it runs where the caller runs: on the caller's actor (`outcome`
        // hops to it), else on the executor the caller's task prefers (a child task inherits a
        // task executor preference, SE-0417), else on the global executor.
        let mark = client.scopes.mark(ticket)
        async let ran = stopBody.run { await Self.outcome(of: body, held, in: mark, isolation: isolation, claim: claim) }
        let bodyOutcome = await ran
        watch.cancel()
        stopExtender.cancel()
        await extender.value
        let outcome: ScopeOutcome<T>
        switch (claimed.value ?? bodyOutcome, bodyOutcome) {
        case let (.interrupted(error), .finished(.failure(bodyError), _)):
            var error = error
            if !(bodyError is CancellationError) { error.underlyingError = bodyError }
            outcome = .interrupted(error)
        case let (first, _):
            outcome = first
        }

        // A quorum that says, before the lease's validity ended, that its keys are gone or
        // another's: they were deleted or overwritten from outside the lock, or a node lost its
        // data, at some moment the scope cannot know; the body's work may have overlapped
        // another holder's.
        // The scope leaves the registry once its release is done: shutdown waits for that.
        var goneAtRelease: RedlockError?
        // A HeldLease the body kept (returned, or captured elsewhere) says so from now on.
        held.end()
        client.scopes.releasing(lease, ticket)
        do {
            try await unlockScoped(held.lease)
        } catch {
            if error.code == .leaseExpired || error.code == .leaseTakenOver {
                if ContinuousClock.now < held.lease.validUntil { goneAtRelease = error }
                client.logger.debug("redlock scoped unlock failed", metadata: ["lock": "\(name)", "error": "\(error)"])
            } else {
                // Nothing else reports it: the scope's result is the body's. Until the keys
                // expire nobody, this process included, can take the lock.
                client.logger.warning(
                    "could not release the lock at the end of its scope: its keys stay on the nodes that did not delete them until they expire (within \(held.lease.expiry) of the last acquire or extension)",
                    metadata: ["lock": "\(name)", "error": "\(error)"]
                )
            }
        }
        client.scopes.leave(lease, ticket)
        switch outcome {
        case let .finished(result, at: finishedAt):
            var error: RedlockError
            if let goneAtRelease {
                error = RedlockError(
                    code: .leaseLost, lockName: name,
                    message: "the body ended, but its release found the keys \(goneAtRelease.code == .leaseTakenOver ? "another holder's" : "gone") on a quorum before the lease's validity ended (deleted or overwritten from outside the lock, or a node lost its data): the body's work may have overlapped another holder's",
                    nodes: goneAtRelease.nodes
                )
            } else if held.ended(before: finishedAt) {
                // Only a release from outside ends the lease without claiming the outcome first.
                error = lost(held, detail: "the body ended after unlock(_:) released its lease from outside the scope, so its work was not protected")
            } else if held.protects(until: finishedAt) {
                return try result.get()
            } else {
                error = lost(held, detail: "the body ended after the lease's deadline, so its work was not protected")
            }
            if case let .failure(bodyError) = result { error.underlyingError = bodyError }
            client.metrics.leasesLost.increment()
            throw error
        case let .interrupted(error):
            if error.code == .leaseLost { client.metrics.leasesLost.increment() }
            throw error
        }
    }

    /// Runs a scope's body on `isolation` (the caller's actor, or none), claims how and when it
    /// ended the moment it does (with `claim`), and returns that.
    private static func outcome<T>(
        of body: nonisolated(nonsending) (HeldLease) async throws -> T, _ held: HeldLease, in mark: ScopeRegistry.Mark,
        isolation: isolated (any Actor)?, claim: @Sendable (ScopeOutcome<T>?) -> Bool
    ) async -> ScopeOutcome<T> {
        // Holds by the language; it also makes the hop to `isolation` happen here. Without a
        // use of the actor before the call, the hop was left out and an actor instance's body
        // ran on the global executor (ScopedLockTests.bodyRunsWithTheCaller).
        isolation?.preconditionIsolated()
        let ended: ScopeOutcome<T>
        do {
            // The body knows it runs in its scope (ScopeRegistry.enclosing).
            // The operation uses `isolation`, so it runs isolated to it (SE-0420), and the
            // body (nonisolated(nonsending)) with it.
            let value = try await ScopeRegistry.$enclosing.withValue(
                ScopeRegistry.enclosing + [mark],
                operation: {
                    isolation?.preconditionIsolated()
                    return try await body(held)
                },
                isolation: isolation
            )
            ended = .finished(.success(value), at: .now)
        } catch {
            ended = .finished(.failure(error), at: .now)
        }
        _ = claim(ended)
        return ended
    }

    /// Checks the scope's parameters; returns the safety margin to use.
    private func validateScope(extendWhenRemaining: Double, maximumHoldTime: Duration?, safetyMargin: Duration?) throws(RedlockError) -> Duration {
        guard extendWhenRemaining > 0, extendWhenRemaining < 1 else {
            throw .invalid("extendWhenRemaining must be in (0, 1), got \(extendWhenRemaining)", lockName: name)
        }
        if let maximumHoldTime, maximumHoldTime <= .zero || maximumHoldTime > Self.longestHoldTimeCap {
            throw .invalid("maximumHoldTime must be positive and at most 100 years of 365 days when set (nil: no cap), got \(maximumHoldTime)", lockName: name)
        }
        let extendAhead = options.expiry * extendWhenRemaining
        // Each extension is due this long after the last one was confirmed (a new lease's
        // validity less the share): under half an attempt's budget, what an extension may take,
        // extensions would follow each other back to back (at or past the validity, thousands
        // a second).
        let fresh = Timing.validity(expiry: options.expiry, elapsed: .zero, driftFactor: options.driftFactor)
        guard fresh - extendAhead >= attemptBudget / 2 else {
            throw .invalid(
                "extendWhenRemaining × expiry (\(extendWhenRemaining) × \(options.expiry.millisecondsDescription) = \(extendAhead.millisecondsDescription)) leaves \(Swift.max(.zero, fresh - extendAhead).millisecondsDescription) from a new lease's validity (\(fresh.millisecondsDescription), after the drift allowance) to the next extension, less than half an attempt's budget (\(attemptBudget.millisecondsDescription), expiry × timeoutFactor, what an extension may take): extensions would follow each other back to back",
                lockName: name
            )
        }
        // The default fits any expiry: for one of a few tens of milliseconds, 5 ms would not
        // leave an extension its turn.
        let margin = safetyMargin ?? Swift.min(HeldLease.defaultSafetyMargin(expiry: options.expiry), extendAhead / 2)
        guard margin >= .zero, margin < extendAhead else {
            throw .invalid(
                "safetyMargin must be at least zero and less than extendWhenRemaining × expiry (\(extendAhead)), got \(margin)",
                lockName: name
            )
        }
        // Every extension must be confirmed within this window; one shorter than Redis's
        // expiry resolution ends each scope in leaseLost at its first extension.
        guard extendAhead - margin >= Self.shortestExtensionWindow else {
            let window = (extendAhead - margin).millisecondsDescription
            let needed = Self.shortestExtensionWindow.millisecondsDescription
            // The share to four decimals (1/3 as 0.3333), unless that would show it as zero.
            let rounded = (extendWhenRemaining * 10_000).rounded() / 10_000
            let share = "extendWhenRemaining × expiry (\(rounded > 0 ? rounded : extendWhenRemaining) × \(options.expiry.millisecondsDescription) = \(extendAhead.millisecondsDescription))"
            throw .invalid(
                safetyMargin == nil
                    // The default margin is half of that window: only the share or the expiry can grow it.
                    ? "\(share) leaves \(window) after the default safety margin (half of it) for each extension to be confirmed before the deadline: at least \(needed) is needed (raise extendWhenRemaining or the expiry)"
                    : "\(share) less safetyMargin (\(margin.millisecondsDescription)) leaves \(window) for each extension to be confirmed before the deadline: at least \(needed) is needed (raise extendWhenRemaining or lower safetyMargin)",
                lockName: name
            )
        }
        return margin
    }

    /// The shortest time a scope gives each extension to be confirmed before its deadline
    /// (`extendWhenRemaining` × expiry − `safetyMargin`): 1 ms, Redis's expiry resolution.
    static let shortestExtensionWindow: Duration = .milliseconds(1)

    /// The longest `maximumHoldTime` a scope accepts: 100 years of 365 days (a sleep until an
    /// instant much further away cannot be expressed).
    static let longestHoldTimeCap: Duration = .seconds(100 * 365 * 86_400)

    /// Extends `held` whenever its remaining validity falls to the threshold. Returns the
    /// lease-lost error when a node reports the keys gone or taken over (or an extension came
    /// only after a gap), or nil once cancelled, ended or past the deadline (the watch reports
    /// that). Its pauses end on the client's timer thread (``pause(until:)``).
    private func keepAlive(
        _ held: HeldLease, extendWhenRemaining: Double, onExtended: @Sendable (Lease) -> Void
    ) async -> RedlockError? {
        while true {
            let lease = held.lease
            // The share of this lock's expiry, which the scope's window was checked against
            // (``validateScope``) and each extension renews to: a lease handed over by a fair
            // release with a shorter expiry (its releaser's) is extended at the same remaining
            // validity, or at once, not past the deadline the safety margin sets.
            let extendAt = lease.validUntil.advanced(by: .zero - options.expiry * extendWhenRemaining)
            guard await pause(until: extendAt), !held.hasEnded else { return nil }
            while true {
                do {
                    let extended = try await extend(lease)
                    held.update(extended)
                    if held.hasLapsed {
                        return lost(held, detail: "an extension was confirmed only after the lease's deadline; the body was cancelled")
                    }
                    onExtended(extended)
                    break
                } catch {
                    if error.code == .cancelled || Task.isCancelled { return nil }
                    held.extensionFailed(error)
                    if error.code == .leaseExpired || error.code == .leaseTakenOver {
                        return lost(held, detail: "the nodes no longer hold the lease; the body was cancelled")
                    }
                }
                let now = ContinuousClock.now
                guard held.protects(until: now) else { return nil }
                // Retry a transient failure a few times before the deadline.
                let retryAt = now + min(now.duration(to: held.deadline), max(lease.expiry / 20, .milliseconds(1)))
                guard await pause(until: retryAt), !held.hasEnded, held.protects(until: .now) else { return nil }
            }
        }
    }

    /// Suspends until `deadline`, woken by the client's timer thread: a `Task.sleep` ends on a
    /// thread of the global pool, which bodies that compute without suspending may all hold.
    /// Returns false when the task was cancelled (at once, or meanwhile).
    private func pause(until deadline: ContinuousClock.Instant) async -> Bool {
        guard !Task.isCancelled else { return false }
        await Waiter().wait(timer: client.deadlines, deadline: deadline) { .waiting }
        return !Task.isCancelled
    }

    /// The lease-lost error: `detail`, the last extension's failure if any, and, when tasks on
    /// the client's executor hold its event loop right now (for ``loopHoldWorthSaying`` or
    /// more), that they do: the likeliest reason no extension's reply was read.
    private func lost(_ held: HeldLease, detail: String) -> RedlockError {
        let last = held.lastExtensionError
        var message = detail + (last.map { " (last extension: \($0.code): \($0.message))" } ?? "")
        if let hold = client.nodes.first?.eventLoop.heldByJobs, hold >= Self.loopHoldWorthSaying {
            message += "; the client's event loop has been running tasks on its executor for \(hold) without a turn back to its sockets (or was paused by the system while it ran them), so no reply was read meanwhile"
        }
        return RedlockError(code: .leaseLost, lockName: name, message: message, nodes: last?.nodes ?? [])
    }

    /// How long tasks on the client's executor must have held its event loop for a lease-lost
    /// error to name it: 10 ms, far longer than a healthy turn.
    static let loopHoldWorthSaying: Duration = .milliseconds(10)
}

extension HeldLease {
    /// The safety margin scoped locks use by default for a lease of `expiry`: 5 % of it, at
    /// least 5 ms and at most 250 ms (100 ms for a 2 s expiry, 250 ms for the default 8 s).
    /// Time for a cancelled body to stop, and for a late timer, before the lease's validity ends.
    public static func defaultSafetyMargin(expiry: Duration) -> Duration {
        Swift.min(Swift.max(expiry / 20, .milliseconds(5)), .milliseconds(250))
    }
}

/// How the body of a scoped lock ended: on its own (and when), or interrupted by the lock.
enum ScopeOutcome<T: Sendable>: Sendable {
    case finished(Result<T, any Error>, at: ContinuousClock.Instant)
    case interrupted(RedlockError)
}

/// A scoped lock's watch, on the client's timer thread (``DeadlineTimer``): calls `onLapse` when
/// the held lease's deadline passes unprotected, or `onCap` when the hold-time cap comes,
/// whichever is first, whatever holds the global pool or the client's event loop. It wakes at
/// the earlier of the two; at a deadline that an extension moved meanwhile it looks again at the
/// new one, so it is never more than one expiry ahead. Its callbacks run on the timer's thread
/// and must be quick. Cancelled (the body ended), it drops what it holds at once; the timer
/// drops the entry itself by its time, or sooner when it sweeps (``DeadlineTimer``).
final class LeaseWatch: Expiring {
    private struct Watched {
        let held: HeldLease
        let capAt: ContinuousClock.Instant?
        let onLapse: @Sendable () -> Void
        let onCap: @Sendable () -> Void

        /// When to look next: the deadline, or the cap when it comes first.
        var next: ContinuousClock.Instant {
            let deadline = held.deadline
            guard let capAt else { return deadline }
            return Swift.min(deadline, capAt)
        }
    }

    private let watched: Mutex<Watched?>
    private let finished = Atomic<Bool>(false)
    private let timer: DeadlineTimer

    init(
        _ held: HeldLease, capAt: ContinuousClock.Instant?, timer: DeadlineTimer,
        onLapse: @escaping @Sendable () -> Void, onCap: @escaping @Sendable () -> Void
    ) {
        watched = Mutex(Watched(held: held, capAt: capAt, onLapse: onLapse, onCap: onCap))
        self.timer = timer
    }

    var isFinished: Bool { finished.load(ordering: .acquiring) }

    /// Schedules the first look. The timer's thread is signalled even when the caller is on the
    /// event loop's thread, which may be held by the body.
    func start() {
        guard let next = watched.withLock({ $0?.next }) else { return }
        timer.schedule(self, at: next, keptByLoop: false)
    }

    func expire() {
        guard let watched = watched.withLock({ $0 }) else { return }
        let held = watched.held
        // Ended for the body already: whoever ended it (an unlock from outside, whose votes are
        // still out) says why.
        guard !held.hasEnded else { return cancel() }
        let now = ContinuousClock.now
        let capped = watched.capAt.map { now >= $0 } ?? false
        if !held.protects(until: now), !(capped && watched.capAt.map { $0 < held.deadline } == true) {
            // The deadline came first (a late look, past both, reports the earlier).
            cancel()
            watched.onLapse()
        } else if capped {
            cancel()
            watched.onCap()
        } else if !timer.isStopping {
            timer.schedule(self, at: watched.next, keptByLoop: false)
        }
    }

    /// Ends the watch: no callback runs from now on (one already running completes).
    func cancel() {
        finished.store(true, ordering: .releasing)
        watched.withLock { $0 = nil }
    }
}

/// Where scopes' bodies are cancelled when their scopes end them: the cancellation runs the
/// body's cancellation handlers, the caller's code, on the cancelling thread. Not on the client's
/// timer or I/O thread, which noticed (a handler would hold every other wait of the client, and
/// could overflow their small stacks), nor on Swift's pool or a dispatch queue, which bodies that
/// compute without suspending may hold (a queue's thread came a second late then): on threads of
/// the library's own, `redlock-cancel` (8 MiB stacks), one started whenever a cancellation comes
/// while every running one is busy, so a handler that blocks holds up no other scope's
/// cancellation; each ends once nothing is left to run. (A handler that blocks still holds up
/// its own body's end, and the thread that ends it: the end waits for the cancellation.)
final class CancellationThreads: Sendable {
    static let shared = CancellationThreads()

    private struct State {
        var queue: [@Sendable () -> Void] = []
        var running = 0
        var busy = 0
    }

    private let state = Mutex(State())

    /// Runs `work` on one of the threads: a free one, else a new one.
    func run(_ work: @escaping @Sendable () -> Void) {
        let start = state.withLock { state -> Bool in
            state.queue.append(work)
            // Each free thread takes one queued cancellation.
            guard state.queue.count > state.running - state.busy else { return false }
            state.running += 1
            return true
        }
        if start { startNamedThread("redlock-cancel", stackSize: 8 << 20) { [self] in drain() } }
    }

    private func drain() {
        while let work = state.withLock({ state -> (@Sendable () -> Void)? in
            guard !state.queue.isEmpty else {
                state.running -= 1
                return nil
            }
            state.busy += 1
            return state.queue.removeFirst()
        }) {
            work()
            state.withLock { $0.busy -= 1 }
        }
    }
}
