import CoreMetrics
import Logging
import RedlockTransport
import Tracing

extension DistributedLock {
    /// `lock()` and `tryLock()`: the local gate, release watching, metrics, then the attempts.
    func acquire(tries: Int, deadline: ContinuousClock.Instant?) async throws(RedlockError) -> Lease {
        try await client.traced("redlock.acquire", lock: name) { span throws(RedlockError) in
            try await acquire(tries: tries, deadline: deadline, span: span)
        }
    }

    private func acquire(tries: Int, deadline: ContinuousClock.Instant?, span: (any Span)?) async throws(RedlockError) -> Lease {
        try client.checkOpen(lockName: name)
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
                let entered: Bool
                do {
                    entered = try await client.gates.enter(name, giveUpAt: deadline)
                } catch {
                    client.metrics.acquireFailed(.cancelled)
                    throw cancelled("lock")
                }
                guard entered else {
                    client.metrics.acquireFailed(.taken)
                    throw RedlockError(
                        code: .taken, lockName: name, message: "held by another caller in this process (single-flight) until the deadline"
                    )
                }
            }
        }
        do {
            let lease = try await attempts(tries: tries, deadline: deadline, value: value, span: span)
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

    private func attempts(tries: Int, deadline: ContinuousClock.Instant?, value: String, span: (any Span)?) async throws(RedlockError) -> Lease {
        let startedAt = ContinuousClock.now
        var made = 0
        defer { span?.attributes["redlock.attempts"] = made }
        let request = acquireRequest(value: value)
        var lastError = RedlockError(code: .noQuorum, lockName: name, message: "no attempt was made")
        var releasesHeard = client.releases.generation(of: name)
        // Releases are listened for only once an attempt has failed: an uncontended lock() costs
        // no subscription. A release that lands before the subscription is active costs one
        // retry delay, the fallback.
        var watching = false
        defer { if watching { client.unwatch(name, subscribing: options.fastHandoff) } }
        // Whether the last attempt followed a release it heard of and still failed: retry soon
        // rather than wait for another release, as the one heard counts as heard. The release
        // may not have reached every node yet (the first node's message wakes the waiter), or a
        // node that had to load the release script ran the delete after a handed-over attempt.
        var wokenAndFailed = false
        trying: for attemptNumber in 0..<tries {
            if attemptNumber > 0, let deadline, ContinuousClock.now >= deadline { break trying }
            // A waiter prepares its attempt before it waits, so that a release in this process
            // can send it at once (see `unlock`); with fast handoff it also hears releases
            // published by other processes.
            var prepared: PreparedFanOut?
            var woken = WaitOutcome(woken: false)
            if attemptNumber > 0 {
                if !watching {
                    client.watch(name, subscribing: options.fastHandoff)
                    watching = true
                }
                var delay = options.retryDelay.delay(afterFailedAttempts: attemptNumber)
                // A split vote (nobody holds a quorum) is contention, not a holder: retry soon.
                let takenCount = lastError.nodes.filter { $0.cause == .taken }.count
                if (lastError.code == .taken && takenCount < client.quorum) || wokenAndFailed {
                    delay = min(delay, .microseconds(Int64.random(in: 500...5_000)))
                }
                // The last attempt starts at the deadline, not a delay past it.
                if let deadline { delay = max(.zero, min(delay, ContinuousClock.now.duration(to: deadline))) }
                if watching {
                    let next = prepareAttempt(request)
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
            made += 1
            let attempt = prepared ?? prepareAttempt(request)
            let start = sentAt ?? ContinuousClock.now
            if sentAt == nil { client.send(attempt) }
            switch await finish(attempt, startedAt: start, value: value) {
            case let .success(lease):
                return lease
            case let .failure(error):
                lastError = error
                wokenAndFailed = woken.woken
                // No retry can succeed while nodes refuse for good (credentials, permissions, a
                // key of the wrong type) and too few others are left for a quorum.
                if error.permanentFailureCount > client.nodes.count - client.quorum {
                    lastError.message += "; not retried: nodes refused for good"
                    break trying
                }
            }
            if Task.isCancelled { throw cancelled("lock") }
        }
        if made > 1 { lastError.message += " (after \(made) attempts in \(startedAt.duration(to: .now)))" }
        throw lastError
    }

    /// What every attempt of one `lock()` sends, built once: `SET NX PX` (or the fenced acquire
    /// script), how a reply becomes a vote, and the restart guard's check of a granted vote.
    private struct AcquireRequest {
        let command: RedisCommand
        let fallback: RedisCommand?
        let classify: @Sendable (RedisValue, RedisEndpoint) -> Vote
        let confirm: (@Sendable (Int, Vote) async -> Vote)?
    }

    private func acquireRequest(value: String) -> AcquireRequest {
        let expiryMilliseconds = String(options.expiry.millisecondsRoundedUp)
        var confirm: (@Sendable (Int, Vote) async -> Vote)?
        if let restartGuard = options.restartGuard {
            let client = client
            confirm = { index, granted in await client.guarded(granted, node: index, restartGuard: restartGuard) }
        }
        if options.epochGuard != nil || options.clockGuard {
            let call = RedisScriptCall(
                Scripts.acquireGuarded,
                keys: [name, Scripts.epochKey] + (options.fencing ? [Scripts.fenceCounterKey] : []),
                arguments: [
                    value, expiryMilliseconds, options.epochGuard.map { String($0.millisecondsRoundedUp) } ?? "",
                    options.fencing || options.value.mayAlreadyBeHeld ? "1" : "0",
                    options.clockGuard ? "1" : "0",
                ]
            )
            return AcquireRequest(command: call.command, fallback: call.fallback, classify: Vote.ofAcquireScript, confirm: confirm)
        }
        guard options.fencing else {
            if options.value.mayAlreadyBeHeld {
                // The extend script with its re-create flag: held → PEXPIRE, missing → SET PX.
                let call = RedisScriptCall(Scripts.extend, keys: [name], arguments: [value, expiryMilliseconds, "1"])
                return AcquireRequest(command: call.command, fallback: call.fallback, classify: Vote.ofScript, confirm: confirm)
            }
            return AcquireRequest(
                command: RedisCommand("SET", name, value, "NX", "PX", expiryMilliseconds), fallback: nil,
                classify: Vote.ofSetNX, confirm: confirm
            )
        }
        let call = RedisScriptCall(Scripts.acquireFenced, keys: [name, Scripts.fenceCounterKey], arguments: [value, expiryMilliseconds])
        return AcquireRequest(command: call.command, fallback: call.fallback, classify: Vote.ofAcquireScript, confirm: confirm)
    }

    /// One attempt, ready to send. Once sent, it reaches every node even when the attempt is
    /// decided (or cancelled) before a node answers: once decided, a straggler's key is either
    /// part of the lease, released with it, or released by the clean-up in
    /// ``finish(_:startedAt:value:)``; it never outlives its expiry.
    private func prepareAttempt(_ request: AcquireRequest) -> PreparedFanOut {
        client.prepareFanOut(
            request.command,
            fallback: request.fallback,
            classify: request.classify,
            order: client.nodeOrder(shuffled: options.shuffleNodes),
            budget: options.attemptBudget,
            returnWhenDecided: options.failFast,
            confirm: request.confirm,
            clockCheck: options.clockGuard ? clockCheck() : nil
        )
    }

    /// The rest of an attempt sent at `start`: count the quorum, raise the fence, compute
    /// validity from `start`; on failure release wherever the attempt may have set the key.
    /// A task cancelled by then gets no lease: an attempt sent on its behalf by a release (which
    /// runs to its end) may have won it, and it is released like a failed one.
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
            if Task.isCancelled {
                failure = (.cancelled, "lock was cancelled; what it won was released")
            } else if let lease = lease(value: value, fencingToken: fencingToken, from: start, to: end) {
                return .success(lease)
            } else {
                failure = (.validityExhausted, "a quorum granted after \(start.duration(to: end)), leaving no validity of \(options.expiry); released")
            }
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
            case .granted?, .unsettled?:
                awaited.append(index)
            case .refused(.noAnswer)?:
                if wasCancelled { awaited.append(index) } else { queued.append(index) }
            case let .refused(cause)? where cause.setNothing:
                continue
            case nil:
                continue
            case let .refused(cause)?:
                // A node that failed (or voted while recently restarted) may hold the key.
                guard let error = cause.error else {
                    awaited.append(index)
                    continue
                }
                if error.code == .connectionRefused { continue }
                if error.code == .timeout, !wasCancelled { queued.append(index) } else { awaited.append(index) }
            }
        }
        let releaseCall = RedisScriptCall(Scripts.release, keys: [name], arguments: [value, ""])
        for index in queued { client.nodes[index].evaluateAndForget(releaseCall) }
        // Not announced: nobody got to use the lock.
        if !awaited.isEmpty { _ = await release(releaseCall, on: awaited, returnWhenDecided: false) }

        let failures = client.failures(in: votes)
        let exhausted = failures.filter { $0.cause == .fencingCounterExhausted }
        // Exhausted counters alone leave no quorum: no token can be issued until an operator acts.
        if failure == nil, exhausted.count > client.nodes.count - client.quorum {
            failure = (
                .fencingCounterExhausted,
                "the fencing counter \(Scripts.fenceCounterKey) is at its maximum on \(exhausted.count) of \(client.nodes.count) nodes; no token can be issued"
            )
        }
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

    /// The clock guard's check for one attempt: each node's reading goes to the client's
    /// ``NodeClocks``; a node that turns untrusted is logged once, and its excess recorded.
    private func clockCheck() -> ClockCheck {
        let client = client
        let holdOff = options.epochGuard ?? options.expiry
        let driftFactor = options.driftFactor
        return ClockCheck { index, observation in
            guard let (excess, newlySeen) = client.clocks.observe(
                observation, node: index, driftFactor: driftFactor, holdOff: holdOff, window: holdOff
            ) else { return nil }
            client.metrics.clockRanAhead(node: index, by: excess)
            if newlySeen {
                client.logger.warning("redlock node clock ran ahead; its votes are refused", metadata: [
                    "node": "\(index)", "endpoint": "\(client.endpoints[index])", "excess": "\(excess)", "for": "\(holdOff)",
                ])
            }
            return excess
        }
    }

    /// The second round of a fenced acquire: on the nodes that granted, raise the counter to the
    /// token while the key is still ours, so every later acquire's INCR on a shared node exceeds it.
    private func raiseFence(to token: Int64, value: String, on indices: [Int]) async -> [Vote?] {
        let call = RedisScriptCall(Scripts.raiseFence, keys: [name, Scripts.fenceCounterKey], arguments: [value, String(token)])
        return await client.fanOut(call, order: indices, budget: options.attemptBudget, returnWhenDecided: options.failFast)
    }
}

extension RedlockClient {
    /// A granted vote, or a refusal when the node has been up for less than `restartGuard`.
    func guarded(_ granted: Vote, node index: Int, restartGuard: Duration) async -> Vote {
        do {
            let uptime = try await uptimes.uptime(of: index, node: nodes[index])
            return uptime >= restartGuard ? granted : .refused(.recentlyRestarted(uptime: uptime))
        } catch {
            return .refused(failure: error, endpoint: endpoints[index])
        }
    }
}
