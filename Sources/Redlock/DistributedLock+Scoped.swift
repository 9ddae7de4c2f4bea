extension DistributedLock {
    /// Acquires the lock, runs `body` while keeping the lease alive, and releases it when `body`
    /// ends — also when it throws or is cancelled.
    ///
    /// While `body` runs, a background task extends the lease each time its remaining validity
    /// falls to `extendWhenRemaining` × expiry. If an extension fails and the lease runs out (or
    /// a node answers that another holder has the lock), `body`'s task is cancelled at once and
    /// the call throws ``RedlockError/Code-swift.struct/leaseLost``, even if `body` then returns
    /// normally: its work was no longer protected. Transient extension failures are retried
    /// while validity remains. `body` can read ``HeldLease/remainingValidity`` at any time.
    ///
    /// No task outlives the call: the extender stops before it returns.
    ///
    /// - Parameters:
    ///   - extendWhenRemaining: The share of the expiry left at which to extend, in (0, 1).
    ///     The default is 1/3.
    ///   - maximumHoldTime: When set, `body` is cancelled and the call throws
    ///     ``RedlockError/Code-swift.struct/holdTimeExceeded`` once the lock has been held this
    ///     long. The default is `nil` (no cap).
    ///   - body: The work to do while holding the lock.
    /// - Returns: What `body` returned.
    /// - Throws: What `body` threw, or a ``RedlockError`` from acquiring or from losing the lease.
    public func withLock<T: Sendable>(
        extendWhenRemaining: Double = 1.0 / 3.0,
        maximumHoldTime: Duration? = nil,
        _ body: @escaping @Sendable (HeldLease) async throws -> T
    ) async throws -> T {
        try validateScope(extendWhenRemaining: extendWhenRemaining, maximumHoldTime: maximumHoldTime)
        return try await withLease(try await lock(), extendWhenRemaining: extendWhenRemaining, maximumHoldTime: maximumHoldTime, body)
    }

    /// Runs `body` while keeping an already acquired `lease` alive, then releases it: what
    /// ``withLock(extendWhenRemaining:maximumHoldTime:_:)`` does after acquiring. Use it when the
    /// acquire needs its own policy (a deadline, ``tryLock()``).
    public func withLease<T: Sendable>(
        _ lease: Lease,
        extendWhenRemaining: Double = 1.0 / 3.0,
        maximumHoldTime: Duration? = nil,
        _ body: @escaping @Sendable (HeldLease) async throws -> T
    ) async throws -> T {
        do {
            try validateScope(extendWhenRemaining: extendWhenRemaining, maximumHoldTime: maximumHoldTime)
            guard lease.name == name else {
                throw RedlockError.invalid("the lease is for lock \"\(lease.name)\", not this one", lockName: name)
            }
        } catch {
            try? await unlock(lease)
            throw error
        }
        let held = HeldLease(lease)

        let outcome: ScopeOutcome<T> = await withTaskGroup(of: ScopeOutcome<T>?.self) { group in
            group.addTask {
                do {
                    return .finished(.success(try await body(held)))
                } catch {
                    return .finished(.failure(error))
                }
            }
            group.addTask {
                await keepAlive(held, extendWhenRemaining: extendWhenRemaining).map { .interrupted($0) }
            }
            if let maximumHoldTime {
                let deadline = held.lease.acquiredAt.advanced(by: maximumHoldTime)
                group.addTask {
                    do {
                        try await Task.sleep(until: deadline, clock: .continuous)
                    } catch {
                        return nil
                    }
                    return .interrupted(RedlockError(
                        code: .holdTimeExceeded, lockName: name,
                        message: "the body ran past the maximum hold time of \(maximumHoldTime) and was cancelled"
                    ))
                }
            }
            var first: ScopeOutcome<T>?
            for await next in group {
                guard first == nil, let next else { continue }
                first = next
                group.cancelAll()
            }
            return first ?? .interrupted(cancelled("withLock"))
        }

        do {
            try await unlock(held.lease)
        } catch {
            client.logger.debug("redlock scoped unlock failed", metadata: ["lock": "\(name)", "error": "\(error)"])
        }
        switch outcome {
        case let .finished(result):
            return try result.get()
        case let .interrupted(error):
            if error.code == .leaseLost { client.metrics.leasesLost.increment() }
            throw error
        }
    }

    private func validateScope(extendWhenRemaining: Double, maximumHoldTime: Duration?) throws(RedlockError) {
        guard extendWhenRemaining > 0, extendWhenRemaining < 1 else {
            throw .invalid("extendWhenRemaining must be in (0, 1), got \(extendWhenRemaining)", lockName: name)
        }
        if let maximumHoldTime, maximumHoldTime <= .zero {
            throw .invalid("maximumHoldTime must be positive, got \(maximumHoldTime)", lockName: name)
        }
    }

    /// Extends `held` whenever its remaining validity falls to the threshold. Returns the
    /// lease-lost error when it cannot, or nil once cancelled.
    private func keepAlive(_ held: HeldLease, extendWhenRemaining: Double) async -> RedlockError? {
        while true {
            let lease = held.lease
            let extendAt = lease.validUntil.advanced(by: .zero - lease.expiry * extendWhenRemaining)
            do {
                try await Task.sleep(until: extendAt, clock: .continuous)
            } catch {
                return nil
            }
            var lastError: RedlockError?
            while true {
                do {
                    held.update(try await extend(lease))
                    break
                } catch {
                    if error.code == .cancelled || Task.isCancelled { return nil }
                    if error.code == .leaseExpired || error.code == .leaseTakenOver {
                        return lost(lease, because: error)
                    }
                    lastError = error
                }
                let now = ContinuousClock.now
                if now >= lease.validUntil { return lost(lease, because: lastError) }
                // Retry a transient failure a few times before validity runs out.
                let pause = min(now.duration(to: lease.validUntil), max(lease.expiry / 20, .milliseconds(1)))
                do {
                    try await Task.sleep(for: pause)
                } catch {
                    return nil
                }
                if ContinuousClock.now >= lease.validUntil { return lost(lease, because: lastError) }
            }
        }
    }

    private func lost(_ lease: Lease, because error: RedlockError?) -> RedlockError {
        RedlockError(
            code: .leaseLost, lockName: name,
            message: "the lease could not be extended before it ran out; the body was cancelled"
                + (error.map { " (last error: \($0.code): \($0.message))" } ?? ""),
            nodes: error?.nodes ?? []
        )
    }
}

/// How the body of a scoped lock ended: on its own, or interrupted by the lock.
enum ScopeOutcome<T: Sendable>: Sendable {
    case finished(Result<T, any Error>)
    case interrupted(RedlockError)
}
