import CoreMetrics
import Foundation
import Logging
import RedlockTransport
import Tracing

extension DistributedLock {
    /// `lock()` and `tryLock()`: the local gate, release watching, metrics, then the attempts.
    nonisolated(nonsending) func acquire(tries: Int, deadline: ContinuousClock.Instant?) async throws(RedlockError) -> Lease {
        try await client.traced("redlock.acquire", lock: name) { span throws(RedlockError) in
            try await acquire(tries: tries, deadline: deadline, span: span)
        }
    }

    private nonisolated(nonsending) func acquire(tries: Int, deadline: ContinuousClock.Instant?, span: (any Span)?) async throws(RedlockError) -> Lease {
        // Counted for shutdown, as an unlock is: a shutdown that begins while this call runs
        // ends its attempt at once (``DeadlineTimer/endAtShutdown()``) and waits, within its
        // limit, for the clean-up to go out before the connections close.
        guard client.scopes.reserveAcquire() else { throw client.shutDownError(lockName: name) }
        defer { client.scopes.leaveAcquire() }
        let calledAt = ContinuousClock.now
        let made = options.value.next()
        guard !made.isEmpty else { throw .invalid("the value generator returned an empty value", lockName: name) }
        // A fair lock's random value carries the client's tag: a handoff to it is published on
        // the client's own channel (Scripts.handoffChannel(_:value:)).
        let value = options.fair && !options.value.mayAlreadyBeHeld ? client.coordination.taggedValue(made) : made
        // A value drawn for this call: its releases lost with a connection go again, until the
        // lease is handed off (Lease.replayWindow).
        // (A value of the caller's own is never sent again: its window is closed for good, and
        // marks its releases as releases all the same.)
        // Only this call's attempts set its value's key, unless a fair lock's release hands it
        // over: where none was written, no lost release is kept. (An extend that re-creates keys
        // ends the record itself: ReplayWindow.mayBeSetAnywhere().)
        let window = options.value.mayAlreadyBeHeld ? ReplayWindow.closedForGood : ReplayWindow(tracksWhereSet: !options.fair)
        var ticket: Int?
        if options.singleFlight {
            if tries == 1 {
                ticket = client.coordination.tryEnterGate(name, value: value)
                guard ticket != nil else {
                    try client.checkOpen(lockName: name)
                    client.metrics.acquireFailed(.taken)
                    throw RedlockError(code: .taken, lockName: name, message: "held by another caller in this process (single-flight)")
                }
            } else {
                do {
                    ticket = try await client.coordination.enterGate(name, value: value, giveUpAt: deadline)
                } catch {
                    client.metrics.acquireFailed(.cancelled)
                    throw cancelled("lock")
                }
                guard ticket != nil else {
                    // A client shut down meanwhile says so.
                    try client.checkOpen(lockName: name)
                    client.metrics.acquireFailed(.taken)
                    throw RedlockError(
                        code: .taken, lockName: name, message: "held by another caller in this process (single-flight) until the deadline"
                    )
                }
            }
        }
        do throws(RedlockError) {
            var lease = try await attempts(tries: tries, deadline: deadline, value: value, window: window, span: span)
            if client.isShuttingDown {
                // Decided as the shutdown began, before it could end the attempt: the lease goes
                // back now, while the connections are open, and the caller gets none (it could
                // not release it).
                let call = releaseCall(value: value, announcing: false, replayWindow: window)
                _ = await release(call, on: client.nodeIndices.filter { lease.mayHoldOn.contains($0) }, returnWhenDecided: false)
                throw RedlockError(
                    code: .clientShutDown, lockName: name, message: "the client shut down as lock() acquired; the lease it got was released"
                )
            }
            lease.replayWindow = window
            lease.origin = Lease.Origin(client: client.serial, lane: lane)
            if let ticket {
                lease.gateTicket = ticket
                client.coordination.gateHolder(lease, valuesMayRepeat: options.value.mayAlreadyBeHeld)
            }
            client.metrics.acquired.increment()
            client.metrics.acquireDuration.recordNanoseconds(calledAt.duration(to: .now).wholeNanoseconds)
            return lease
        } catch {
            if let ticket { client.coordination.leaveGate(name, ticket: ticket) }
            if options.fair, tries > 1 {
                // Leave the queue on every node (passing on a key handed over meanwhile), without
                // waiting: the entries would expire anyway.
                let leave = client.prepareFanOut(
                    releaseCall(value: value, announcing: false, replayWindow: window), order: client.nodeIndices, budget: attemptBudget,
                    returnWhenDecided: false, lane: lane
                )
                client.send(leave)
            }
            client.metrics.acquireFailed(error.code)
            throw error
        }
    }

    /// A caller's place in a fair lock's queue: this machine's wall clock in µs.
    static func ticket() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1_000_000).rounded())
    }

    /// The attempts of one `lock()`: attempt, decide, release on failure (in ``finish``), wait
    /// for the next chance — a release heard, or the retry delay — and again, until one wins,
    /// the deadline passes, the tries run out, or nodes refuse for good.
    ///
    /// What lasts from attempt to attempt is one ``AttemptRun``, and the wait between attempts
    /// is ``waitForChance(_:tries:deadline:value:next:)``: an async function's locals each cost
    /// an allocation on the task per call, so a `lock()` whose first attempt wins pays only for
    /// those of the path it takes.
    private nonisolated(nonsending) func attempts(
        tries: Int, deadline: ContinuousClock.Instant?, value: String, window: ReplayWindow?, span: (any Span)?
    ) async throws(RedlockError) -> Lease {
        let coordination = client.coordination
        // Releases are counted from the first attempt on (an uncontended lock() subscribes to
        // nothing); see LocalCoordination.
        let releasesHeard = tries > 1 ? coordination.beginAcquiring(key, lane: lane) : coordination.generation(of: key)
        var run = AttemptRun(lock: self, tries: tries, value: value, window: window, startedAt: .now, releasesHeard: releasesHeard)
        defer {
            if let countedChannel = run.countedChannel { coordination.stopListening(name, handoffChannel: countedChannel) }
            if !run.acquired, run.wokenByRelease { coordination.passOn(name) }
            if tries > 1 { coordination.endAcquiring(key) }
            span?.attributes["redlock.attempts"] = run.made
        }
        // This client's handoff channel is listened on before the first attempt: the release that
        // hands this caller the lock may come before it could subscribe after a failed attempt.
        // (A random value carries this client's tag: its channel is the client's own.)
        if run.handoffChannel != nil, options.fastHandoff, !options.value.mayAlreadyBeHeld {
            coordination.listenForOwnHandoffs()
        }
        while true {
            if !run.isLook {
                run.attemptNumber += 1
                run.cutShortWaitEnds = nil
            }
            guard run.attemptNumber < tries else { break }
            if run.attemptNumber > 0, let deadline, ContinuousClock.now >= deadline { break }
            var drawn: Duration?
            var queueEntry: (ticket: Int64, life: Duration)?
            if options.fair {
                let delayAfter = options.retryDelay.delay(afterFailedAttempts: run.attemptNumber + 1)
                drawn = delayAfter
                // A single attempt never enters the line (life 0): nothing would renew or leave it.
                queueEntry = (run.ticket, life: tries > 1 ? delayAfter + attemptBudget * 2 + .milliseconds(100) : .zero)
            }
            // A fair attempt that queues leaves the line once it got the lock.
            let lineLeave = run.leaveLine.map(LineLeave.init(leave:))
            let next = prepareAttempt(
                run.request ?? acquireRequest(value: value, queueEntry: queueEntry, keyLives: run.keyLives), window: window, lineLeave: lineLeave
            )
            if run.attemptNumber > 0, let lease = try await waitForChance(&run, tries: tries, deadline: deadline, value: value, next: next) {
                run.acquired = true
                return lease
            }
            run.plannedDelay = drawn
            // An attempt sent for this task must run to its end (clean-up included), even when
            // the task is cancelled. A client shut down during the wait sends nothing more.
            if run.chance.handedOverAt == nil {
                if Task.isCancelled { throw cancelled("lock") }
                try client.checkOpen(lockName: name)
            }
            // The generation read before this attempt (for the first, beginAcquiring's reading).
            let heardBefore = run.releasesHeard
            if run.made > 0 { run.releasesHeard = coordination.generation(of: key) }
            run.made += 1
            let start = run.chance.handedOverAt ?? .now
            if run.firstStart == nil { run.firstStart = start }
            switch await attempt(
                next, sentAt: run.chance.handedOverAt, start: start, value: value, window: window, lineLeave: lineLeave, cleanedUp: &run.cleanedUp,
                mayHoldOn: &run.mayHoldOn
            ) {
            case var .success(lease):
                run.acquired = true
                // Where an attempt of this call may have set the key: its release goes there
                // alone. A value of the caller's own may be held anywhere (another lease of it).
                lease.mayHoldOn = options.value.mayAlreadyBeHeld ? .all : run.mayHoldOn
                if !options.fair || run.chance.release != nil {
                    coordination.attemptEnded(key, value: value, acquired: options.fair ? nil : lease.validUntil, handedFor: run.chance.release)
                }
                return lease
            case let .failure(error):
                run.lastError = error
                if run.chance.release != nil { coordination.attemptEnded(key, value: value, acquired: nil, handedFor: run.chance.release) }
            }
            // Woken by a release, or one counted after a confirmation ended the wait (its other
            // nodes' messages count as heard already): the retry after it is the short one.
            run.releaseSeen = run.chance.woken || (tries > 1 && coordination.released(key, since: heardBefore))
            // No retry can succeed while nodes refuse for good (credentials, permissions, a key
            // of the wrong type) and too few others are left for a quorum.
            if run.lastError.permanentFailureCount > client.nodes.count - client.quorum {
                run.lastError.message += "; not retried: nodes refused for good"
                break
            }
            if Task.isCancelled { throw cancelled("lock") }
            // A client shut down meanwhile answers nothing more: no retry. Its shutdown ended
            // the attempt, whose clean-up went out like a failed one's.
            if client.isShuttingDown {
                throw RedlockError(
                    code: .clientShutDown, lockName: name,
                    message: "the client shut down during lock(); its attempt was released where nodes had answered, and on the others the release follows it"
                )
            }
        }
        if run.made > 1 { run.lastError.message += " (after \(run.made) attempts in \(run.startedAt.duration(to: .now).readableDescription))" }
        throw run.lastError
    }

    /// What one `lock()`'s attempts keep from attempt to attempt (see
    /// ``attempts(tries:deadline:value:window:span:)``).
    private struct AttemptRun {
        let startedAt: ContinuousClock.Instant
        var made = 0
        var lastError: RedlockError
        var releasesHeard: UInt64
        var chance = WaitOutcome(woken: false)
        var acquired = false
        /// Woken by a release (an attempt sent for it) and ending without the lock, also after
        /// attempts of its own since: the next waiter gets the wake. Until that release reached
        /// every node, its later messages pass over the waiters from before it, counting on this
        /// caller to try for them.
        var wokenByRelease = false
        /// Whether a release came between the start of the wait before the last attempt and that
        /// attempt's end: it may have reached some nodes after the attempt did.
        var releaseSeen = false
        /// The nodes where an attempt of this call may have run (``Lease/mayHoldOn``).
        var mayHoldOn = NodeMask.none
        /// A fair lock's attempts carry the caller's place in line and keep its entry alive until
        /// the attempt after the next wait; other locks send the same request every time.
        let ticket: Int64
        let request: AcquireRequest?
        /// When a fair waiter's attempt finds it first in line behind a holder, the nodes say
        /// how long the holder's key lives: no release is published when a key expires (a holder
        /// that died), so the waiter looks again then rather than after a longer retry delay.
        let keyLives: KeyLifeReports?
        /// The delay drawn for the wait after the last attempt; a fair lock draws it before the
        /// attempt (its entry must outlive that wait), other locks only when they wait.
        var plannedDelay: Duration?
        var firstStart: ContinuousClock.Instant?
        /// A fair lock's waiter may count handoffs as grants: from nodes no clean-up of this call
        /// went to, valid from the call's first attempt (see LocalCoordination.HandoffWatch).
        var cleanedUp: Set<Int>?
        /// A fair lock's handoffs come on the channel its value picks: the client's own for its
        /// random values; one of another tag (a value of the caller's own) is listened on while
        /// this call lasts.
        let handoffChannel: String?
        /// A lock that is not fair, waiting by time rather than by a count of tries, waits for a
        /// lease held in this process to be released (handed to the longest-waiting waiter here)
        /// rather than polling the nodes while it lasts, when another waiter here polls at least
        /// as often as it would.
        let waitsForHolderHere: Bool
        var countedChannel: String?
        /// A subscription's confirmation ends a wait for one more look (a release there may
        /// have gone unheard before it took effect), and so does the end of the holder's key for
        /// a fair waiter first in line (`keyLives`): not a try of the count, nor a step of the
        /// retry delay's backoff, and the wait after it ends when the one it cut short would
        /// have, so `tries` bounds the time as Redsync's count does. One look per confirmation
        /// (a node's first, and one after each reconnect of its subscriber), and per key end.
        var cutShortWaitEnds: ContinuousClock.Instant?
        /// A fair lock()'s attempts queue where refused unless it is a single one (tryLock()).
        let leaveLine: (@Sendable ([Int]) -> Void)?
        var isLook = false
        var attemptNumber = -1

        init(lock: DistributedLock, tries: Int, value: String, window: ReplayWindow?, startedAt: ContinuousClock.Instant, releasesHeard: UInt64) {
            let options = lock.options
            self.startedAt = startedAt
            self.releasesHeard = releasesHeard
            lastError = RedlockError(code: .noQuorum, lockName: lock.name, message: "no attempt was made")
            ticket = options.fair ? DistributedLock.ticket() : 0
            request = options.fair ? nil : lock.acquireRequest(value: value, queueEntry: nil)
            keyLives = options.fair && tries > 1 ? KeyLifeReports() : nil
            cleanedUp = tries > 1 && lock.handoffsCountAsGrants ? [] : nil
            handoffChannel = options.fair && tries > 1 ? Scripts.handoffChannel(lock.name, value: value) : nil
            waitsForHolderHere = !options.fair && tries == .max
            leaveLine = options.fair && tries > 1 ? lock.leaveLine(value: value, window: window) : nil
        }
    }

    /// The wait before a retry (`run.attemptNumber` > 0): listens for the holder's release, waits
    /// for it or the retry delay (`next` is sent at once by whoever hears the release), and
    /// notes what ended the wait in `run`. Returns the lease when a quorum of a fair lock's
    /// handoffs gave it, else nil: then the attempt follows.
    private nonisolated(nonsending) func waitForChance(
        _ run: inout AttemptRun, tries: Int, deadline: ContinuousClock.Instant?, value: String, next: PreparedFanOut
    ) async throws(RedlockError) -> Lease? {
        let coordination = client.coordination
        // Only a holder's release is worth hearing: not after nodes failed. (A fair waiter
        // hears a fair release's handoff on its client's channel; the release channel
        // carries the releases of lock objects of the name that are not fair, and of fair
        // ones that found nobody in line.)
        if options.fastHandoff, run.lastError.nodes.contains(where: { $0.cause == .taken }) {
            if coordination.listen(name, handoffChannel: run.countedChannel == nil ? run.handoffChannel : nil) {
                run.countedChannel = run.handoffChannel
            }
        }
        // Whoever hears the release sends `next` at once (`chance.handedOverAt`).
        let planned = run.plannedDelay ?? options.retryDelay.delay(afterFailedAttempts: run.attemptNumber)
        var delay = retryDelay(planned, after: run.lastError, afterRelease: run.releaseSeen, deadline: deadline)
        let waitBegins = ContinuousClock.now
        if let cutShortWaitEnds = run.cutShortWaitEnds { delay = max(.zero, min(delay, waitBegins.duration(to: cutShortWaitEnds))) }
        // First in line behind a holder: one more look when its key expires, if that comes
        // before this wait would end (`keyLookCutsShort`: when it would have).
        var keyLookCutsShort: ContinuousClock.Instant?
        if let keyGone = run.keyLives?.take(), run.lastError.code == .taken {
            let untilGone = max(.milliseconds(1), waitBegins.duration(to: keyGone) + .milliseconds(1))
            if untilGone < delay {
                keyLookCutsShort = waitBegins + delay
                delay = untilGone
            }
        }
        var holderHereUntil: ContinuousClock.Instant?
        if run.waitsForHolderHere, run.lastError.code == .taken, let holdEnd = coordination.holdEnd(of: name) {
            let until = deadline.map { Swift.min($0, holdEnd) } ?? holdEnd
            if until > .now + delay { holderHereUntil = until }
        }
        var watch: LocalCoordination.HandoffWatch?
        if let cleanedUp = run.cleanedUp, client.nodes.count - cleanedUp.count >= client.quorum {
            watch = .init(
                excluded: cleanedUp, quorum: client.quorum, claimAfter: Swift.min(attemptBudget, Self.handoffClaimAfter),
                longestLife: .milliseconds(options.expiry.millisecondsRoundedUp)
            )
        }
        run.chance = await coordination.waitForRelease(
            of: name, after: run.releasesHeard, timeout: delay, waitingSince: run.startedAt, next: next, value: options.fair ? value : nil,
            watch: watch, handedBy: run.chance.release, holderHereUntil: holderHereUntil,
            pace: options.retryDelay.pace(afterFailedAttempts: run.attemptNumber, drawn: planned),
            paceIsFixed: options.retryDelay.hasFixedPace
        )
        if run.chance.release != nil { run.wokenByRelease = true }
        // Ended by a confirmation, or by its timeout at the key's end: a look. The wait it
        // cut short is the whole one, not the part up to the key's end.
        run.isLook = run.chance.confirmed || (keyLookCutsShort != nil && !run.chance.woken)
        if run.isLook, run.cutShortWaitEnds == nil { run.cutShortWaitEnds = keyLookCutsShort ?? waitBegins + delay }
        if let handoff = run.chance.handoff, let firstStart = run.firstStart {
            // A cancelled caller gets no lease: lock() leaves the line on every node,
            // passing on what was handed to it (acquire's clean-up).
            if Task.isCancelled { throw cancelled("lock") }
            return handedLease(handoff, since: firstStart, value: value)
        }
        return nil
    }

    /// Sends `prepared` (unless a releaser already sent it at `sentAt`) and finishes it; `start`
    /// is `sentAt`, else a moment before the send. Adds the nodes where its clean-up may have
    /// deleted something to `cleanedUp`, when the caller counts handoffs (else nil).
    /// `lineLeave`: the one `prepared` was made with, told the outcome.
    private nonisolated(nonsending) func attempt(
        _ prepared: PreparedFanOut, sentAt: ContinuousClock.Instant?, start: ContinuousClock.Instant, value: String, window: ReplayWindow?,
        lineLeave: LineLeave?, cleanedUp: inout Set<Int>?, mayHoldOn: inout NodeMask
    ) async -> Result<Lease, RedlockError> {
        client.metrics.attempts.increment()
        if sentAt == nil { client.send(prepared) }
        return await finish(
            prepared, startedAt: start, value: value, window: window, lineLeave: lineLeave, cleanedUp: &cleanedUp, mayHoldOn: &mayHoldOn
        )
    }

    /// How long a waiter that heard its first handoff waits for a quorum of them before it
    /// claims (at most the attempt budget).
    static let handoffClaimAfter: Duration = .milliseconds(2)

    /// Whether this lock's waiters count a fair release's handoffs as grants: a fair lock with
    /// fast handoff, random values (one per `lock()`), and nothing a grant must also pass
    /// (fencing, the restart guard, replicas). Each node's message stands for that node because
    /// the nodes are distinct servers (the client refuses an address listed twice; `audit`
    /// flags two names of one server): Redis publishes to every database of a server.
    var handoffsCountAsGrants: Bool {
        options.fair && options.fastHandoff && !options.fencing && options.restartGuard == nil
            && options.replicaAcknowledgements == 0 && !options.value.mayAlreadyBeHeld
    }

    /// The lease a quorum of handoffs gave: valid from `start`, the `lock()`'s first attempt
    /// (every handoff to its value came after it), with the shortest key life they said, and
    /// held from now (its `acquiredAt`: a `maximumHoldTime` counts the hold, not the wait in
    /// line). Nil when that leaves less than half the validity a new attempt would: the caller
    /// then claims, which resets the keys' expiry.
    private func handedLease(_ handoff: HandoffGrant, since start: ContinuousClock.Instant, value: String) -> Lease? {
        let expiry = Swift.min(options.expiry, handoff.expiry)
        let now = ContinuousClock.now
        guard let validUntil = Timing.validUntil(start: start, end: now, expiry: expiry, driftFactor: options.driftFactor),
              now.duration(to: validUntil) * 2 >= Timing.validity(expiry: options.expiry, elapsed: .zero, driftFactor: options.driftFactor)
        else { return nil }
        client.metrics.handoffGrants.increment()
        return Lease(name: name, value: value, expiry: expiry, acquiredAt: now, validUntil: validUntil, fencingToken: nil)
    }

    /// How long to wait for a release before the next attempt at most: the retry delay drawn
    /// for it (`planned`), but soon after a split vote (contention, not a holder) or after an
    /// attempt that followed a release failed (`afterRelease`: the release may not have reached
    /// every node yet); never past the deadline (the last attempt starts at the deadline). A
    /// subscription's confirmation is no release: the look it prompts is followed by the rest
    /// of the wait it cut short (see ``attempts(tries:deadline:value:window:span:)``), not a short one.
    private func retryDelay(_ planned: Duration, after lastError: RedlockError, afterRelease: Bool, deadline: ContinuousClock.Instant?) -> Duration {
        var delay = planned
        let takenCount = lastError.nodes.filter { $0.cause == .taken }.count
        if (lastError.code == .taken && takenCount < client.quorum) || afterRelease {
            delay = min(delay, .microseconds(Int64.random(in: 500...5_000)))
        }
        if let deadline { delay = max(.zero, min(delay, ContinuousClock.now.duration(to: deadline))) }
        return delay
    }

    /// What every attempt of one `lock()` sends, built once: `SET NX PX` (or the fenced acquire
    /// script), how a reply becomes a vote, and the restart guard's check of a granted vote.
    private struct AcquireRequest {
        let command: RedisCommand
        let script: RedisScript?
        /// For `SET NX PX`: the same in a script that first checks the user's permissions
        /// (``Scripts/acquirePlain``), sent in its place (as its `EVAL`) on a connection until it
        /// succeeded there (see
        /// ``RedisConnection/send(_:script:runsLateUnlessBehind:untilScriptsRun:replayWindow:setting:handler:)``).
        var untilScriptsRun: RedisScriptForm? = nil
        let classify: @Sendable (RedisValue, RedisEndpoint) -> Vote
        let confirm: (@Sendable (Int, Vote) async -> Vote)?
    }

    /// The request of one attempt; a fair lock's carries the caller's queue entry (its ticket,
    /// and how long the entry lives without another attempt), and records in `keyLives` the
    /// holder's key life that nodes where the caller is first in line report.
    private func acquireRequest(value: String, queueEntry: (ticket: Int64, life: Duration)?, keyLives: KeyLifeReports? = nil) -> AcquireRequest {
        let expiryMilliseconds = expiryMilliseconds
        var confirm: (@Sendable (Int, Vote) async -> Vote)?
        if let restartGuard = options.restartGuard {
            let client = client
            let lane = lane
            confirm = { index, granted in await client.guarded(granted, node: index, restartGuard: restartGuard, lane: lane) }
        }
        if let queueEntry {
            let call = RedisScriptCall(
                Scripts.acquireFair,
                keys: [name, Scripts.queueKey(name), Scripts.queueDeadlinesKey(name)] + (options.fencing ? [Scripts.fenceCounterKey] : []),
                arguments: [
                    value, expiryMilliseconds, String(queueEntry.ticket),
                    queueEntry.life > .zero ? String(queueEntry.life.millisecondsRoundedUp) : "0",
                ]
            )
            let classify: @Sendable (RedisValue, RedisEndpoint) -> Vote = { reply, endpoint in
                if let keyLives, case let .array(items) = reply, items.count == 2, items[0].integer == 0, let life = items[1].integer, life > 0 {
                    keyLives.record(.milliseconds(life))
                }
                return Vote.ofAcquireScript(reply, endpoint: endpoint)
            }
            return AcquireRequest(command: call.command, script: call.script, classify: classify, confirm: confirm)
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
            return AcquireRequest(command: call.command, script: call.script, classify: Vote.ofAcquireScript, confirm: confirm)
        }
        guard options.fencing else {
            if options.value.mayAlreadyBeHeld {
                // Held → PEXPIRE, missing → SET PX, after the lease's permission check.
                let call = RedisScriptCall(Scripts.acquireReattach, keys: [name], arguments: [value, expiryMilliseconds])
                return AcquireRequest(command: call.command, script: call.script, classify: Vote.ofScript, confirm: confirm)
            }
            // On a connection where it has not succeeded yet, `SET NX PX` goes inside a script
            // that checks the release's permissions: a user who may `SET` but not `EVAL` (or
            // `EVALSHA`, `DEL`) is refused there rather than left with a key it can neither
            // extend nor release. (Built only then: a connection in steady use never needs it.)
            let name = name
            return AcquireRequest(
                command: setPrefix.appending(value, then: setSuffix), script: nil,
                untilScriptsRun: { RedisScriptCall(Scripts.acquirePlain, keys: [name], arguments: [value, expiryMilliseconds]).evalForm },
                classify: Vote.ofSetNX, confirm: confirm
            )
        }
        let call = RedisScriptCall(Scripts.acquireFenced, keys: [name, Scripts.fenceCounterKey], arguments: [value, expiryMilliseconds])
        return AcquireRequest(command: call.command, script: call.script, classify: Vote.ofAcquireScript, confirm: confirm)
    }

    /// One attempt, ready to send. Once sent, it reaches every node even when the attempt is
    /// decided (or cancelled) before a node answers: once decided, a straggler's key is either
    /// part of the lease, released with it, or released by the clean-up in
    /// ``finish(_:startedAt:value:window:lineLeave:cleanedUp:mayHoldOn:)``; it never outlives its expiry. A
    /// fair attempt that queues hands the votes that come after its decision to `lineLeave`.
    private func prepareAttempt(_ request: AcquireRequest, window: ReplayWindow?, lineLeave: LineLeave?) -> PreparedFanOut {
        client.prepareFanOut(
            request.command,
            script: request.script,
            untilScriptsRun: request.untilScriptsRun,
            setting: window,
            classify: request.classify,
            order: client.nodeOrder(shuffled: options.shuffleNodes),
            budget: attemptBudget,
            returnWhenDecided: options.failFast,
            confirm: request.confirm,
            clockCheck: options.clockGuard ? clockCheck() : nil,
            replicaWait: replicaWait,
            lateVotes: lineLeave,
            lane: lane,
            endsAtShutdown: true
        )
    }

    /// What sends ``Scripts/leaveLineHolding`` for `value` to some nodes: made once per `lock()`
    /// whose attempts queue, for each attempt's ``LineLeave``.
    private func leaveLine(value: String, window: ReplayWindow?) -> @Sendable ([Int]) -> Void {
        let (client, lane, name) = (client, lane, name)
        let (budget, expiry) = (attemptBudget, options.expiry.millisecondsRoundedUp)
        // The call is made only when needed: most attempts leave no line. A connection that
        // loses it sends it again while the window is open (it touches this value only).
        return { nodes in
            let call = RedisScriptCall(
                Scripts.leaveLineHolding, keys: [name, Scripts.queueKey(name), Scripts.queueDeadlinesKey(name)],
                arguments: [value, String(expiry)]
            ).replayable(within: window)
            client.send(client.prepareFanOut(call, order: nodes, budget: budget, returnWhenDecided: false, lane: lane))
        }
    }

    /// The rest of an attempt sent at `start`: await its votes, raise the fence, decide
    /// (``AcquireDecision``); on failure release wherever the attempt may have set the key.
    /// A task cancelled by then gets no lease: an attempt sent on its behalf by a release (which
    /// runs to its end) may have won it, and it is released like a failed one. A fair attempt
    /// that queues tells `lineLeave` its outcome: one that got the lock leaves the line where it
    /// was refused (``LineLeave``).
    private nonisolated(nonsending) func finish(
        _ attempt: PreparedFanOut, startedAt start: ContinuousClock.Instant, value: String, window: ReplayWindow?, lineLeave: LineLeave?,
        cleanedUp: inout Set<Int>?, mayHoldOn: inout NodeMask
    ) async -> Result<Lease, RedlockError> {
        var votes = await client.votes(of: attempt, cancellable: true)
        // Read once: a command found never written later only narrows where it may have run.
        let neverWritten = attempt.round.neverWrittenNodes
        mayHoldOn = mayHoldOn.union(FanOutRound.mayHaveRun(votes: votes, neverWritten: neverWritten))
        var fencingToken: Int64?
        var fenceShortfall: String?
        if options.fencing, grantedCount(votes) >= client.quorum {
            (fencingToken, fenceShortfall) = await fence(&votes, value: value)
        }
        let wasCancelled = Task.isCancelled
        // Only a caller that counts handoffs awaits the clean-up of nodes that had not answered:
        // not of those known down.
        var down: Set<Int> = []
        if cleanedUp != nil {
            for (index, vote) in votes.enumerated() where vote == .unsettled && client.health.isDown(index) { down.insert(index) }
        }
        let decision = AcquireDecision.decide(
            votes: votes, quorum: client.quorum, start: start, end: .now, expiry: options.expiry, driftFactor: options.driftFactor,
            cancelled: wasCancelled, fenceShortfall: fenceShortfall, countsHandoffs: cleanedUp != nil, down: down, budget: attemptBudget,
            neverWritten: neverWritten, endpoints: client.endpoints
        )
        guard case let .failed(code, message) = decision.outcome else {
            guard case let .acquired(validUntil) = decision.outcome else { preconditionFailure("an outcome is acquired or failed") }
            lineLeave?.decided(acquired: true, votes: votes)
            return .success(Lease(
                name: name, value: value, expiry: options.expiry, acquiredAt: start, validUntil: validUntil, fencingToken: fencingToken
            ))
        }
        lineLeave?.decided(acquired: false, votes: votes)
        // Not announced: nobody got to use the lock. A fair lock's caller keeps its place in line
        // and the nodes are left free, where only the first in line is granted.
        // A cancelled caller's lock() ends here: what was handed to it goes to the next in line.
        let releaseCall = releaseCall(value: value, announcing: false, staysInLine: options.fair && !wasCancelled, replayWindow: window)
        // A clean-up not known to have deleted nothing may have deleted a key handed over since:
        // such nodes no longer count handoffs for this call (see LocalCoordination.HandoffWatch).
        cleanedUp?.formUnion(LocalCoordination.HandoffWatch.excluded(byCleanUpOn: decision.releaseQueued))
        // With a value that may already be held (re-attach), the clean-up deletes it wherever it
        // was granted, keys a running scope of this client holds included: that scope must not
        // run on.
        if options.value.mayAlreadyBeHeld, !decision.releaseQueued.isEmpty || !decision.releaseAwaited.isEmpty {
            client.scopes.interrupt(
                name: name, value: value,
                RedlockError(
                    code: .leaseLost, lockName: name,
                    message: "a failed acquire with the same value released it wherever it was granted (a value of your own is one lease); the body was cancelled"
                )
            )
        }
        if !decision.releaseQueued.isEmpty {
            client.send(client.prepareFanOut(
                releaseCall, order: decision.releaseQueued, budget: attemptBudget, returnWhenDecided: false, lane: lane
            ))
        }
        if !decision.releaseAwaited.isEmpty {
            let released = await release(releaseCall, on: decision.releaseAwaited, returnWhenDecided: false)
            cleanedUp?.formUnion(LocalCoordination.HandoffWatch.excluded(byCleanUpOn: decision.releaseAwaited, answers: released))
        }

        let failures = client.failures(in: votes)
        switch code {
        case .noQuorum where fenceShortfall == nil, .taken:
            if Task.isCancelled { return .failure(cancelled("lock")) }
            // A fair lock's free node refuses too, all but the first in line.
            let said = code == .taken && options.fair ? message + " (or kept for callers ahead in line)" : message
            return .failure(RedlockError(code: code, lockName: name, message: said, nodes: code == .taken ? failures.filter { $0.cause == .taken } : failures))
        default:
            return .failure(RedlockError(code: code, lockName: name, message: message, nodes: failures))
        }
    }

    /// The fencing round of an attempt a quorum granted: the token is the largest granted, and
    /// the counters are raised to it (``raiseFence(to:value:on:)``). Nodes that refuse the round
    /// replace their votes; returns the token, or what to say when too few nodes took it.
    ///
    /// The nodes that did not grant get the token as a floor at the same time, without waiting
    /// for them (``Scripts/raiseFloor``): a node that was young, taken or slow then no longer
    /// holds a counter below a token a quorum issued. So when a node of this round's quorum
    /// later loses its data and seeds its counter from a clock behind the one that issued the
    /// token, a quorum that includes any node reached here still issues a larger token.
    private func fence(_ votes: inout [Vote?], value: String) async -> (token: Int64?, shortfall: String?) {
        let token = votes.compactMap { vote -> Int64? in
            if case let .granted(token)? = vote { return token }
            return nil
        }.max() ?? 0
        let others = votes.indices.filter { votes[$0]?.isGranted != true }
        if !others.isEmpty {
            let floor = RedisScriptCall(Scripts.raiseFloor, keys: [Scripts.fenceCounterKey], arguments: [String(token)])
            client.send(client.prepareFanOut(floor, order: others, budget: attemptBudget, returnWhenDecided: false, lane: lane))
        }
        let raised = await raiseFence(to: token, value: value, on: votes.indices.filter { votes[$0]?.isGranted == true })
        if grantedCount(raised) >= client.quorum { return (token, nil) }
        for index in votes.indices where raised[index].map({ !$0.isGranted }) ?? false { votes[index] = raised[index] }
        return (nil, "the fencing round reached \(grantedCount(raised)) of \(client.nodes.count) nodes, \(client.quorum) needed")
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
        return await client.fanOut(
            call, order: indices, budget: attemptBudget, returnWhenDecided: options.failFast, replicaWait: replicaWait, lane: lane,
            endsAtShutdown: true
        )
    }
}
