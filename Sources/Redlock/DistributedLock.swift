import RedlockTransport

/// A lock on one name across the client's nodes, made by ``RedlockClient/makeLock(_:options:)``.
///
/// An immutable value: copy it and share it freely. Each successful ``lock()`` or
/// ``tryLock()`` returns a ``Lease``; pass it to ``unlock(_:)`` or ``extend(_:)``.
///
/// Cancelling the task that waits in ``lock()`` stops it promptly — also during a retry delay —
/// with ``RedlockError/Code-swift.struct/cancelled``, after releasing whatever the interrupted
/// attempt may have set.
public struct DistributedLock: Sendable {
    /// The lock's name: the key on every node.
    public let name: String
    /// The options the lock was made with.
    public let options: LockOptions
    /// The client whose nodes hold the lock.
    public let client: RedlockClient

    init(name: String, options: LockOptions, client: RedlockClient) {
        self.name = name
        self.options = options
        self.client = client
    }

    /// Acquires the lock, retrying up to ``LockOptions/tries`` times with
    /// ``LockOptions/retryDelay`` between attempts.
    ///
    /// - Returns: The lease, valid until ``Lease/validUntil``.
    /// - Throws: ``RedlockError`` with code `.taken`, `.noQuorum` or `.validityExhausted` (from
    ///   the last attempt) when every attempt failed, or `.cancelled`.
    public func lock() async throws(RedlockError) -> Lease {
        try await acquire(tries: options.tries)
    }

    /// Makes a single attempt to acquire the lock, without waiting for a holder to release it.
    ///
    /// - Throws: ``RedlockError`` with code `.taken`, `.noQuorum`, `.validityExhausted` or `.cancelled`.
    public func tryLock() async throws(RedlockError) -> Lease {
        try await acquire(tries: 1)
    }

    /// Releases the lease on every node (compare-and-delete: keys holding another value are left
    /// alone). Returns once a quorum deleted; the remaining deletes are still sent.
    ///
    /// Runs to completion even when the calling task is cancelled.
    ///
    /// - Throws: ``RedlockError`` with code `.leaseExpired` (the keys were gone), `.leaseTakenOver`
    ///   (another holder's keys are there) or `.noQuorum` (nodes failed).
    public func unlock(_ lease: Lease) async throws(RedlockError) {
        try check(lease)
        let votes = await shielded { [self] in
            await client.fanOut(
                order: client.nodeOrder(shuffled: options.shuffleNodes),
                budget: options.attemptBudget,
                returnWhenDecided: options.failFast,
                operation: { node in
                    try await node.evaluate(Scripts.release, keys: [lease.name], arguments: [lease.value], withdrawOnCancel: false)
                },
                vote: Vote.ofScript
            )
        }
        if grantedCount(votes) >= client.quorum { return }
        throw leaseError(votes, operation: "unlock")
    }

    /// Resets the keys' expiry to ``LockOptions/expiry`` on every node that still holds the
    /// lease, and returns the lease with its new validity.
    ///
    /// - Throws: ``RedlockError`` with code `.leaseExpired`, `.leaseTakenOver`, `.noQuorum`,
    ///   `.validityExhausted` or `.cancelled`.
    public func extend(_ lease: Lease) async throws(RedlockError) -> Lease {
        try check(lease)
        if Task.isCancelled { throw cancelled("extend") }
        let expiryMilliseconds = String(options.expiry.millisecondsRoundedUp)
        let recreate = options.setNXOnExtend ? "1" : "0"
        let start = ContinuousClock.now
        let votes = await client.fanOut(
            order: client.nodeOrder(shuffled: options.shuffleNodes),
            budget: options.attemptBudget,
            returnWhenDecided: options.failFast,
            operation: { node in
                try await node.evaluate(
                    Scripts.extend, keys: [lease.name], arguments: [lease.value, expiryMilliseconds, recreate],
                    withdrawOnCancel: false
                )
            },
            vote: Vote.ofScript
        )
        let end = ContinuousClock.now
        if grantedCount(votes) >= client.quorum {
            guard let validUntil = Timing.validUntil(start: start, end: end, expiry: options.expiry, driftFactor: options.driftFactor) else {
                throw RedlockError(
                    code: .validityExhausted, lockName: name,
                    message: "extend took \(start.duration(to: end)), leaving no validity of \(options.expiry)"
                )
            }
            return Lease(name: name, value: lease.value, expiry: options.expiry, acquiredAt: start, validUntil: validUntil)
        }
        if Task.isCancelled { throw cancelled("extend") }
        throw leaseError(votes, operation: "extend")
    }

    // MARK: - Acquire

    private func acquire(tries: Int) async throws(RedlockError) -> Lease {
        let value = options.value.next()
        guard !value.isEmpty else { throw .invalid("the value generator returned an empty value", lockName: name) }
        let command = RedisCommand("SET", name, value, "NX", "PX", String(options.expiry.millisecondsRoundedUp))
        var lastError = RedlockError(code: .noQuorum, lockName: name, message: "no attempt was made")
        for attempt in 0..<tries {
            if attempt > 0 {
                do {
                    try await Task.sleep(for: options.retryDelay.delay(afterFailedAttempts: attempt))
                } catch {
                    throw cancelled("lock")
                }
            }
            if Task.isCancelled { throw cancelled("lock") }
            switch await attemptAcquire(command: command, value: value) {
            case let .success(lease):
                return lease
            case let .failure(error):
                lastError = error
            }
            if Task.isCancelled { throw cancelled("lock") }
        }
        if tries > 1 { lastError.message += " (after \(tries) attempts)" }
        throw lastError
    }

    /// One attempt: `SET NX PX` on every node, quorum and validity, and on failure a release
    /// wherever the attempt may have set the key.
    private func attemptAcquire(command: RedisCommand, value: String) async -> Result<Lease, RedlockError> {
        let start = ContinuousClock.now
        let votes = await client.fanOut(
            order: client.nodeOrder(shuffled: options.shuffleNodes),
            budget: options.attemptBudget,
            returnWhenDecided: options.failFast,
            operation: { node in try await node.send(command) },
            vote: Vote.ofSetNX
        )
        let end = ContinuousClock.now
        let granted = grantedCount(votes)
        if granted >= client.quorum,
           let validUntil = Timing.validUntil(start: start, end: end, expiry: options.expiry, driftFactor: options.driftFactor)
        {
            return .success(Lease(name: name, value: value, expiry: options.expiry, acquiredAt: start, validUntil: validUntil))
        }

        // Release wherever our SET may have landed: granted, silent, or failed mid-flight.
        let dirty = votes.indices.filter { index in
            switch votes[index] {
            case .granted?, .refused(.noAnswer)?, .unsettled?: return true
            case let .refused(.error(error))?: return error.code != .connectionRefused
            case .refused(.taken)?, .refused(.missing)?, nil: return false
            }
        }
        if !dirty.isEmpty { await release(value: value, on: dirty) }

        let failures = client.failures(in: votes)
        if granted >= client.quorum {
            return .failure(RedlockError(
                code: .validityExhausted, lockName: name,
                message: "a quorum granted after \(start.duration(to: end)), leaving no validity of \(options.expiry); released",
                nodes: failures
            ))
        }
        if Task.isCancelled { return .failure(cancelled("lock")) }
        let taken = failures.filter { $0.cause == .taken }
        let broken = failures.count - taken.count
        if taken.count >= client.quorum || broken == 0 {
            return .failure(RedlockError(
                code: .taken, lockName: name,
                message: "held by another holder on \(taken.count) of \(client.nodes.count) nodes", nodes: taken
            ))
        }
        return .failure(RedlockError(
            code: .noQuorum, lockName: name,
            message: "\(granted) of \(client.nodes.count) nodes granted, \(client.quorum) needed", nodes: failures
        ))
    }

    /// Compare-and-delete on `indices`, not cancellable by the caller and bounded by the budget.
    private func release(value: String, on indices: [Int]) async {
        let name = name
        _ = await shielded { [client, options] in
            await client.fanOut(
                order: indices,
                budget: options.attemptBudget,
                returnWhenDecided: false,
                operation: { node in
                    try await node.evaluate(Scripts.release, keys: [name], arguments: [value], withdrawOnCancel: false)
                },
                vote: Vote.ofScript
            )
        }
    }

    // MARK: - Helpers

    /// Runs `body` in a task that does not inherit the caller's cancellation.
    private func shielded<T: Sendable>(_ body: @escaping @Sendable () async -> T) async -> T {
        await Task(operation: body).value
    }

    private func grantedCount(_ votes: [Vote?]) -> Int {
        votes.reduce(0) { $0 + ($1 == .granted ? 1 : 0) }
    }

    private func check(_ lease: Lease) throws(RedlockError) {
        guard lease.name == name else {
            throw .invalid("the lease is for lock \"\(lease.name)\", not this one", lockName: name)
        }
    }

    private func cancelled(_ operation: String) -> RedlockError {
        RedlockError(code: .cancelled, lockName: name, message: "\(operation) was cancelled")
    }

    /// The error of an unlock or extend that did not reach a quorum.
    private func leaseError(_ votes: [Vote?], operation: String) -> RedlockError {
        let failures = client.failures(in: votes)
        let taken = failures.filter { $0.cause == .taken }
        let missing = failures.filter { $0.cause == .missing }
        if taken.count + missing.count >= client.quorum {
            if taken.isEmpty {
                return RedlockError(code: .leaseExpired, lockName: name, message: "\(operation): the lease's keys are gone", nodes: failures)
            }
            return RedlockError(
                code: .leaseTakenOver, lockName: name,
                message: "\(operation): another holder has the lock on \(taken.count) nodes", nodes: failures
            )
        }
        return RedlockError(
            code: .noQuorum, lockName: name,
            message: "\(operation): \(grantedCount(votes)) of \(client.nodes.count) nodes granted, \(client.quorum) needed",
            nodes: failures
        )
    }
}
