import RedlockTransport

extension DistributedLock {
    /// `lock()` and `tryLock()`: the local gate, release watching, metrics, then the attempts.
    func acquire(tries: Int) async throws(RedlockError) -> Lease {
        let calledAt = ContinuousClock.now
        let value = options.value.next()
        guard !value.isEmpty else { throw .invalid("the value generator returned an empty value", lockName: name) }
        if options.singleFlight {
            if tries == 1 {
                guard client.gates.tryEnter(name) else {
                    client.metrics.acquireFailed(.taken)
                    throw RedlockError(code: .taken, lockName: name, message: "held by another caller in this process (single-flight)")
                }
            } else {
                do {
                    try await client.gates.enter(name)
                } catch {
                    client.metrics.acquireFailed(.cancelled)
                    throw cancelled("lock")
                }
            }
        }
        do {
            let lease = try await attempts(tries: tries, value: value)
            if options.singleFlight { client.gates.held(lease) }
            client.metrics.acquired.increment()
            client.metrics.acquireDuration.recordNanoseconds(calledAt.duration(to: .now).wholeNanoseconds)
            return lease
        } catch {
            if options.singleFlight { client.gates.leave(name) }
            client.metrics.acquireFailed(error.code)
            throw error
        }
    }

    private func attempts(tries: Int, value: String) async throws(RedlockError) -> Lease {
        let expiryMilliseconds = String(options.expiry.millisecondsRoundedUp)
        let command = RedisCommand("SET", name, value, "NX", "PX", expiryMilliseconds)
        var lastError = RedlockError(code: .noQuorum, lockName: name, message: "no attempt was made")
        var releasesHeard = client.releases.generation(of: name)
        // Releases are listened for only once an attempt has failed: an uncontended lock() costs
        // no subscription. A release that lands before the subscription is active costs one
        // retry delay, the fallback.
        var watching = false
        defer { if watching { client.unwatch(name) } }
        // Whether the last attempt followed a release it heard of and still failed: retry soon
        // rather than wait for another release, as the one heard counts as heard. The release
        // may not have reached every node yet (the first node's message wakes the waiter), or a
        // node that had to load the release script ran the delete after a handed-over attempt.
        var wokenAndFailed = false
        for attemptNumber in 0..<tries {
            // With fast handoff, a waiter prepares its attempt before it waits, so that a
            // release in this process can send it at once (see `unlock`).
            var prepared: PreparedFanOut?
            var woken = WaitOutcome(woken: false)
            if attemptNumber > 0 {
                if options.fastHandoff, !watching {
                    client.watch(name)
                    watching = true
                }
                var delay = options.retryDelay.delay(afterFailedAttempts: attemptNumber)
                // A split vote (nobody holds a quorum) is contention, not a holder: retry soon.
                let takenCount = lastError.nodes.filter { $0.cause == .taken }.count
                if (lastError.code == .taken && takenCount < client.quorum) || wokenAndFailed {
                    delay = min(delay, .microseconds(Int64.random(in: 500...5_000)))
                }
                if watching {
                    let next = prepareAttempt(command: command, value: value, expiryMilliseconds: expiryMilliseconds)
                    prepared = next
                    woken = await client.releases.wait(for: name, after: releasesHeard, timeout: delay, next: next)
                } else {
                    try? await Task.sleep(for: delay)
                }
            }
            // An attempt a releaser already sent must run to its end (its clean-up included),
            // even when cancelled.
            let sentAt = woken.handedOverAt
            if sentAt == nil, Task.isCancelled { throw cancelled("lock") }
            releasesHeard = client.releases.generation(of: name)
            client.metrics.attempts.increment()
            let attempt = prepared ?? prepareAttempt(command: command, value: value, expiryMilliseconds: expiryMilliseconds)
            let start = sentAt ?? ContinuousClock.now
            if sentAt == nil { client.send(attempt) }
            switch await finish(attempt, startedAt: start, value: value) {
            case let .success(lease):
                // A handed-over attempt runs to its end even when its task was cancelled while
                // it was on its way; the cancelled caller must not end up holding the lock.
                if sentAt != nil, Task.isCancelled {
                    let release = RedisScriptCall(Scripts.release, keys: [name], arguments: [value, announcedOn])
                    _ = await self.release(release, on: client.nodeOrder(shuffled: options.shuffleNodes), returnWhenDecided: false)
                    throw cancelled("lock")
                }
                return lease
            case let .failure(error):
                lastError = error
                wokenAndFailed = woken.woken
            }
            if Task.isCancelled { throw cancelled("lock") }
        }
        if tries > 1 { lastError.message += " (after \(tries) attempts)" }
        throw lastError
    }

    /// One attempt, ready to send: set the key on every node (by the fenced acquire script when
    /// asked), each granted vote passed through the restart guard when one is set.
    ///
    /// Once sent, it reaches every node even when the attempt is decided (or cancelled) before a
    /// node answers: once decided, a straggler's key is either part of the lease, released with
    /// it, or released by the clean-up in ``finish(_:startedAt:value:)``; it never outlives its
    /// expiry.
    private func prepareAttempt(command: RedisCommand, value: String, expiryMilliseconds: String) -> PreparedFanOut {
        let client = client
        let fencedCall = options.fencing
            ? RedisScriptCall(Scripts.acquireFenced, keys: [name, Scripts.fenceKey(name)], arguments: [value, expiryMilliseconds])
            : nil
        var confirm: (@Sendable (Int, Vote) async -> Vote)?
        if let restartGuard = options.restartGuard {
            confirm = { index, granted in await client.guarded(granted, node: index, restartGuard: restartGuard) }
        }
        return client.prepareFanOut(
            fencedCall?.command ?? command,
            script: fencedCall?.script,
            classify: options.fencing ? Vote.ofFencedAcquire : Vote.ofSetNX,
            order: client.nodeOrder(shuffled: options.shuffleNodes),
            budget: options.attemptBudget,
            returnWhenDecided: options.failFast,
            confirm: confirm
        )
    }

    /// The rest of an attempt sent at `start`: count the quorum, raise the fence, compute
    /// validity from `start`; on failure release wherever the attempt may have set the key.
    private func finish(_ attempt: PreparedFanOut, startedAt start: ContinuousClock.Instant, value: String) async -> Result<Lease, RedlockError> {
        let fencing = options.fencing
        var votes = await client.votes(of: attempt, cancellable: true)

        var failure: (code: RedlockError.Code, message: String)?
        var fencingToken: Int64?
        var granted = grantedCount(votes)
        if granted >= client.quorum, fencing {
            let token = votes.compactMap { vote -> Int64? in
                if case let .granted(token)? = vote { return token }
                return nil
            }.max() ?? 0
            let raised = await raiseFence(to: token, value: value, on: votes.indices.filter { votes[$0]?.isGranted == true })
            if grantedCount(raised) >= client.quorum {
                fencingToken = token
            } else {
                failure = (.noQuorum, "the fencing round reached \(grantedCount(raised)) of \(client.nodes.count) nodes, \(client.quorum) needed")
                for index in votes.indices where raised[index].map({ !$0.isGranted }) ?? false { votes[index] = raised[index] }
                granted = grantedCount(votes)
            }
        }
        let end = ContinuousClock.now

        if failure == nil, granted >= client.quorum {
            if let lease = lease(value: value, fencingToken: fencingToken, from: start, to: end) {
                return .success(lease)
            }
            failure = (.validityExhausted, "a quorum granted after \(start.duration(to: end)), leaving no validity of \(options.expiry); released")
        }

        // Release wherever our key may have landed: granted, silent, or failed mid-flight. Nodes
        // that stayed silent through the budget get their release queued without waiting: a
        // frozen node must not make a failed attempt cost twice its budget. (After a cancellation
        // "silent" only means not awaited, so every release is awaited.)
        let wasCancelled = Task.isCancelled
        var awaited: [Int] = []
        var queued: [Int] = []
        for (index, vote) in votes.enumerated() {
            switch vote {
            case .granted?, .unsettled?, .refused(.recentlyRestarted)?:
                awaited.append(index)
            case .refused(.noAnswer)?:
                if wasCancelled { awaited.append(index) } else { queued.append(index) }
            case let .refused(.error(error))?:
                if error.code == .connectionRefused { continue }
                if error.code == .timeout, !wasCancelled { queued.append(index) } else { awaited.append(index) }
            case .refused(.taken)?, .refused(.missing)?, nil:
                continue
            }
        }
        let releaseCall = RedisScriptCall(Scripts.release, keys: [name], arguments: [value, ""])
        for index in queued { client.nodes[index].evaluateAndForget(releaseCall) }
        // Not announced: nobody held the lock.
        if !awaited.isEmpty { _ = await release(releaseCall, on: awaited, returnWhenDecided: false) }

        let failures = client.failures(in: votes)
        if let failure {
            return .failure(RedlockError(code: failure.code, lockName: name, message: failure.message, nodes: failures))
        }
        if Task.isCancelled { return .failure(cancelled("lock")) }
        let taken = failures.filter { $0.cause == .taken }
        if taken.count >= client.quorum || taken.count == failures.count {
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

    /// The second round of a fenced acquire: on the nodes that granted, raise the counter to the
    /// token while the key is still ours, so every later acquire's INCR on a shared node exceeds it.
    private func raiseFence(to token: Int64, value: String, on indices: [Int]) async -> [Vote?] {
        let call = RedisScriptCall(Scripts.raiseFence, keys: [name, Scripts.fenceKey(name)], arguments: [value, String(token)])
        return await client.fanOut(call, order: indices, budget: options.attemptBudget, returnWhenDecided: options.failFast)
    }
}

extension RedlockClient {
    /// A granted vote, or a refusal when the node has been up for less than `restartGuard`.
    func guarded(_ granted: Vote, node index: Int, restartGuard: Duration) async -> Vote {
        let node = nodes[index]
        do {
            let uptime = try await uptimes.uptime(of: index, node: node)
            return uptime >= restartGuard ? granted : .refused(.recentlyRestarted(uptime: uptime))
        } catch {
            return .refused(failure: error, endpoint: node.configuration.endpoint)
        }
    }
}
