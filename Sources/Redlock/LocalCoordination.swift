import RedlockTransport
import Synchronization

/// What a client coordinates in its own process, per lock name: releases heard (and who waits
/// for them), the release subscriptions on the nodes, and the single-flight gates.
///
/// None of it decides an acquisition — `SET NX` (or the acquire script) on a quorum does, every
/// time. It decides only *when* a `lock()` makes its next attempt, and lets whoever hears a
/// release send that attempt at once:
///
/// - A `lock()` that makes more than one attempt is *acquiring* from its first attempt on
///   (``beginAcquiring(_:lane:)``, ``endAcquiring(_:)``). Releases of an acquiring name are counted
///   (its *generation*), so a release that lands while an attempt is in flight is never
///   missed; a release published by another process advances it once per node heard, since an
///   attempt may have reached a node before the release did there (of a release made in this
///   process only the first message or the releaser's report counts).
/// - After a failed attempt it waits (``waitForRelease(of:after:timeout:next:value:watch:handedBy:)``)
///   with its next attempt prepared. A release wakes the longest-waiting waiter: in this
///   process the releaser sends that attempt right behind its deletes
///   (``handOff(_:release:lane:)``); from another process the subscriber's thread sends it as
///   the message is read (``announce(_:release:node:lane:)``). Either way the waiter is resumed
///   once, when its votes are in. A later node's message of the same release wakes the longest
///   waiting of those whose wait began after its first message and whose last attempt was not
///   sent for it; a woken waiter that gives up without the lock passes the wake on
///   (``passOn(_:)``).
/// - A fair lock's release names the waiter it handed the lock to, on a channel of the waiter's
///   client (``handoffTag``), so only that waiter's process hears it and only that waiter wakes
///   (``handedOff(_:message:node:)``). A waiter that watches for handoffs (``HandoffWatch``)
///   counts each node's message as that node's grant and, once a quorum handed it the lock,
///   resumes with them and sends nothing; until then it waits a moment for more before it
///   claims.
/// - With fast handoff a waiting name is subscribed to on every node (``listen(_:handoffChannel:)``).
///   Until a node confirmed the subscription a release there could go unheard, so every
///   confirmation advances the generation like a release and wakes every waiter for one more
///   attempt (not as a release: when that attempt fails, the next wait is the full one);
///   a fair waiter whose value carries this client's tag ignores the release channel's
///   confirmations (``confirmed(_:handoffs:)``). The
///   subscription outlives the last waiter by ``subscriptionLinger``: a process that contends
///   again soon listens before its first attempt.
/// - Leases acquired or extended through the client (by locks that are not fair) are recorded
///   until released (``holding(_:value:until:)``, ``attemptEnded(_:value:acquired:handedFor:)``):
///   a `lock()` that waits by time and found the name taken while one is held waits for its
///   release, or its validity end (``holdEnd(of:)``), rather than for its retry delay — unless
///   no other waiter of the name polls at least as often as it would (its retry delay's
///   ``RetryDelay/pace(afterFailedAttempts:drawn:)``): the keys may be gone. Waiters with one
///   retry delay leave one of them polling. A release handed to a waiter here counts as held
///   until that waiter's attempt ended, so the others stay waiting.
/// - ``enterGate(_:value:giveUpAt:)``/``tryEnterGate(_:value:)`` queue single-flight callers first come,
///   first served; the gate passes on at ``leaveGate(_:)`` or when its holder's lease ran out
///   (``gateHolder(_:)``). Each caller that enters gets a ticket, carried in its lease, so that
///   a lease whose gate passed on is told apart from its successor's even with one fixed value.
final class LocalCoordination: Sendable {
    /// How long a name stays subscribed after its last waiting `lock()` returned.
    static let subscriptionLinger: Duration = .seconds(2)

    /// A `lock()` waiting for a release, and the attempt to send for it.
    private struct ReleaseWaiter {
        let waiter: Waiter
        /// The generation its wait began from: read before its last attempt went out, or, for
        /// an attempt sent for it by whoever heard a release, once that attempt's votes were in
        /// (a node's message that came meanwhile is then not news to it: the short retry delay
        /// after a release covers it).
        let after: UInt64
        /// The release (``Name/lastReleaseGeneration``) whose hearer sent its last attempt.
        let handedBy: UInt64?
        let next: PreparedFanOut?
        /// A fair lock's value: a release on the nodes that hands the lock to it names it.
        let value: [UInt8]?
        /// The handoffs it counts as grants, and those heard so far.
        var watch: HandoffWatch?
        /// Whether it waits for a lease held here (until that lease's validity end), not for
        /// its retry delay (see ``LocalCoordination/waitForRelease(of:after:timeout:waitingSince:next:value:watch:handedBy:holderHereUntil:)``).
        var parked = false
        /// When its `lock()` began: releases go to the one that has waited longest.
        let since: ContinuousClock.Instant
        /// How often it looks at the nodes (``RetryDelay/pace(afterFailedAttempts:drawn:)``): a
        /// waiter parks only behind one that polls at least as often.
        let pace: Duration
        /// Whether that pace holds while it waits (``RetryDelay/hasFixedPace``); one that would
        /// back off with each attempt of its own is not compared again once parked.
        let fixedPace: Bool
        /// When it would look at the nodes again if it did not park: the end of its retry delay.
        let pollAt: ContinuousClock.Instant
    }

    /// A parked waiter that polls again: its own retry delay's end is when the timer ends its
    /// wait (at once when that passed already).
    ///
    /// This and ``LingerStart`` are classes so that what ``Name/endAcquiring()`` returns holds
    /// no value of `ContinuousClock.Instant`, whose layout is opaque outside the standard
    /// library (each copy of one goes through its type's value witnesses); every `lock()` ends
    /// with that call, and both are nil then but for a waiter parked or a name subscribed.
    final class Unparked: Sendable {
        let waiter: Waiter
        let pollAt: ContinuousClock.Instant

        init(waiter: Waiter, pollAt: ContinuousClock.Instant) {
            self.waiter = waiter
            self.pollAt = pollAt
        }
    }

    /// When a name's subscription ends if nobody acquires meanwhile (see ``Unparked``).
    final class LingerStart: Sendable {
        let until: ContinuousClock.Instant

        init(until: ContinuousClock.Instant) {
            self.until = until
        }
    }

    /// What a fair lock's waiter may count as grants: the handoff messages of the nodes where no
    /// clean-up of its `lock()` may have deleted anything — none went there, or its answer said
    /// it deleted nothing (so nothing of the caller's deletes a key a handoff set); and every
    /// handoff to its value came after its first attempt began. See the `handoff-grant`
    /// configurations of `Models/`.
    struct HandoffWatch {
        /// Nodes whose messages do not count: a clean-up of this `lock()` went there.
        let excluded: Set<Int>
        let quorum: Int
        /// How long after the first counted message to wait for a quorum before claiming.
        let claimAfter: Duration
        /// The waiter's own expiry: a message whose key lives longer does not count, so the
        /// waiter claims, which sets the key's life to this (a releaser with a longer expiry
        /// would otherwise leave the name held for its expiry after the waiter died).
        let longestLife: Duration
        /// Nodes heard so far, in order.
        var counted: [Int] = []
        /// The shortest key life among their messages.
        var expiry: Duration?

        init(excluded: Set<Int>, quorum: Int, claimAfter: Duration, longestLife: Duration) {
            self.excluded = excluded
            self.quorum = quorum
            self.claimAfter = claimAfter
            self.longestLife = longestLife
        }

        /// The nodes a clean-up sent to `nodes` excludes: all but those whose answer (in
        /// `answers`, one per node; empty when not awaited) says it deleted nothing. Unawaited,
        /// unanswered or failed, it may have deleted a key handed over before it landed.
        static func excluded(byCleanUpOn nodes: [Int], answers: [Vote?] = []) -> [Int] {
            nodes.filter { !(answers.indices.contains($0) && answers[$0]?.deletedNothing == true) }
        }

        /// Counts node `node`'s handoff, whose key lives `life`; returns the grant once a
        /// quorum handed over, or nil. A message of an excluded node, or whose key outlives
        /// ``longestLife``, is not counted.
        mutating func count(node: Int, life: Duration) -> HandoffGrant? {
            guard !excluded.contains(node), !counted.contains(node), life <= longestLife else { return nil }
            counted.append(node)
            expiry = Swift.min(expiry ?? life, life)
            guard counted.count >= quorum, let expiry else { return nil }
            return HandoffGrant(nodes: counted, expiry: expiry)
        }
    }

    /// A single-flight caller waiting for the gate.
    private struct GateWaiter {
        let id: Int
        let value: String
        let waiter: Waiter
    }

    /// When a gate owner's latest acquire or extension began and when its lease runs out. A
    /// class, so that a ``Gate`` (and the check for one in ``Name/isUnused``) holds no value of
    /// `ContinuousClock.Instant`, whose layout is opaque outside the standard library: each copy
    /// of such a value goes through its type's value witnesses.
    private final class GateHold: Sendable {
        let acquiredAt: ContinuousClock.Instant
        let validUntil: ContinuousClock.Instant

        init(acquiredAt: ContinuousClock.Instant, validUntil: ContinuousClock.Instant) {
            self.acquiredAt = acquiredAt
            self.validUntil = validUntil
        }
    }

    private struct Gate {
        /// The caller that has the gate (its ticket).
        var owner: Int
        /// The value the owner acquires (or acquired) with.
        var ownerValue: String
        /// When the owner's latest acquire or extension began and when its lease runs out; nil
        /// while it is still acquiring.
        var held: GateHold?
        /// Passes the gate on at `held.validUntil` unless the owner left it or extended first.
        var leaseEnd: TimerAction?
        /// First come first (by id: a waiter whose wait timed out queues again in its place);
        /// may hold waiters that already ended (they remove themselves).
        var waiters: [GateWaiter] = []

        /// Whether the owner's lease ran out without an unlock.
        var ownerExpired: Bool { held.map { $0.validUntil <= .now } ?? false }

        /// Makes `id`, acquiring with `value`, the owner; the waiters keep their places.
        mutating func takeOver(by id: Int, value: String) {
            owner = id
            ownerValue = value
            held = nil
            leaseEnd?.cancel()
            leaseEnd = nil
        }
    }

    /// A set of ``ConnectionLane``s, one bit each: a `Set` would allocate its storage and hash
    /// on the first insert, which every name's first `lock()` makes.
    struct LaneSet {
        private var bits: UInt8 = 0

        mutating func insert(_ lane: ConnectionLane) {
            bits |= Self.bit(lane)
        }

        var count: Int { bits.nonzeroBitCount }

        private static func bit(_ lane: ConnectionLane) -> UInt8 {
            switch lane {
            case .shared: 1
            case .acknowledged: 2
            }
        }
    }

    /// A lease of a name held through this client.
    private struct HeldHere {
        let value: [UInt8]
        var validUntil: ContinuousClock.Instant
        /// Released, and handed to a waiter here by the release counted as this generation:
        /// still counted as held until the attempt sent for that waiter ended.
        var handedFor: UInt64?
    }

    /// Everything known locally of one name; dropped once nothing needs it.
    ///
    /// A class, touched only under the coordination's lock and never handed out of it: a
    /// lookup yields the entry itself, to read or change in place. A struct this size would be
    /// copied by every read, and changed in place only through the dictionary's modify accessor,
    /// whose frame is then allocated on the heap (three allocations per access; a `lock()` and
    /// `unlock()` make about a dozen).
    private final class Name {
        /// Releases heard and subscriptions confirmed since the name was first needed: a waiter
        /// that began to wait after one of them came tries again at once (a fair waiter with this
        /// client's tag only after one counted in ``heededGeneration``).
        var generation: UInt64 = 0
        /// The generation the last release counted brought (0: none yet). A wait that ends as it
        /// begins ends woken only when a release came since (a confirmation alone is no sign the
        /// lock is free, so the attempt after it keeps the planned retry delay).
        var releaseGeneration: UInt64 = 0
        /// The generation the last event other than a confirmation of the release channel
        /// brought: all that a fair waiter hearing its handoffs on its client's channel heeds
        /// (see ``LocalCoordination/confirmed(_:handoffs:)``).
        var heededGeneration: UInt64 = 0
        /// The value of the last release counted (the same release heard from several nodes
        /// wakes one waiter of those waiting before it; see ``LocalCoordination/announce(_:release:node:lane:)``).
        var lastRelease: [UInt8] = []
        /// The generation the last release brought when first counted.
        var lastReleaseGeneration: UInt64 = 0
        /// The nodes whose message of the last release was heard; the same value again from one
        /// of them is a new release. All of them after a release handed over in this process
        /// (it is not published).
        var lastReleaseNodes: Set<Int> = []
        /// Nodes whose message of the last release says nothing new: the release was made in
        /// this process.
        var lastReleaseEchoes: Set<Int> = []
        /// The value of the last release this process published, until its first message or
        /// report is counted.
        var ownRelease: [UInt8] = []
        /// The connection lanes of this name's `lock()` and `unlock()` calls in this process: a
        /// release went out on each node's connection before a later attempt only on one lane.
        var lanes = LaneSet()
        /// Longest waiting first; may hold waiters that already ended (they remove themselves).
        var waiters: [ReleaseWaiter] = []
        /// `lock()` calls between their first attempt and their return.
        var acquiring = 0
        /// Whether the name's release channel is subscribed on the nodes.
        var subscribed = false
        /// The fair lock handoff channel shared by every client waiting for this name
        /// (``Scripts/handoffChannel(_:)``, for values without a tag), when subscribed: it lasts
        /// as long as the release channel.
        var handoffChannels: [String] = []
        /// Subscriptions the nodes confirmed so far (for tests).
        var confirmations = 0
        /// The last few handoff messages of a fair release, for a waiter whose wait begins after
        /// the message came.
        var handedTo: [(message: HandoffMessage, node: Int)] = []
        /// When the subscription ends if nobody acquires meanwhile. Set exactly while the
        /// name's one linger action is on the timer (``LocalCoordination/lingerEnded(_:)``),
        /// which looks again when a later `lock()` moved it on. (A pending action keeps the name
        /// subscribed, so its entry is never dropped while one is out.)
        var lingerUntil: ContinuousClock.Instant?
        var gate: Gate?
        /// Leases of this name acquired or extended through this client, until released or
        /// their validity ended: a waiter of a name held here waits for that lease's release
        /// instead of polling (``holdEnd()``).
        var heldHere: [HeldHere] = []

        var isUnused: Bool {
            // The held-here leases first: after an acquire they decide, before the rest is read.
            (heldHere.isEmpty || heldHere.allSatisfy { $0.validUntil <= .now })
                && acquiring == 0 && waiters.isEmpty && !subscribed && gate == nil
        }

        /// ``LocalCoordination/endAcquiring(_:)`` for this name: the waiter to unpark, when the
        /// subscription's linger ends (when no linger action of the name is out yet: one that is
        /// sees the moved ``lingerUntil`` when it comes), and whether the entry is unused now.
        func endAcquiring() -> (unparked: Unparked?, linger: LingerStart?, unused: Bool) {
            acquiring -= 1
            let unparked = keepPolling()
            var linger: LingerStart?
            if acquiring == 0, subscribed {
                let until = ContinuousClock.now + LocalCoordination.subscriptionLinger
                if lingerUntil == nil { linger = LingerStart(until: until) }
                lingerUntil = until
            }
            return (unparked, linger, isUnused)
        }

        /// One more `lock()` acquiring, on `lane`.
        func beginAcquiring(lane: ConnectionLane) {
            acquiring += 1
            lanes.insert(lane)
        }

        /// ``LocalCoordination/handOff(_:release:lane:)`` for this name, whose nodes are
        /// `allNodes`.
        func handOff(_ release: some Collection<UInt8>, lane: ConnectionLane, allNodes: Range<Int>) -> Claimed? {
            lanes.insert(lane)
            let held = heldRecord(of: release)
            guard var claimed = claimLongestWaiting() else {
                if let held { heldHere.remove(at: held) }
                // Published: of its messages, only the first to come (or the releaser's report)
                // is news here (see announce(_:release:node:lane:)), unless the name's calls use
                // two lanes.
                ownRelease = Array(release)
                return nil
            }
            // Not published: any message of this value to come is of another release.
            count(release, from: Set(allNodes))
            claimed.release = lastReleaseGeneration
            // Until the attempt sent for the waiter ends, the lease counts as held here.
            if let held { heldHere[held].handedFor = lastReleaseGeneration }
            return claimed
        }

        /// ``LocalCoordination/announce(_:release:node:lane:)`` for this name, whose nodes are
        /// `allNodes`.
        func announce(_ release: some Collection<UInt8>, node: Int?, lane: ConnectionLane?, allNodes: Range<Int>) -> Claimed? {
            // A release made before the name's first `lock()` here began left no lane.
            if let lane { lanes.insert(lane) }
            if !release.isEmpty, lastRelease.hasSameBytes(as: release) {
                if let node {
                    if lastReleaseEchoes.remove(node) != nil {
                        lastReleaseNodes.insert(node)
                        return nil
                    }
                    if !lastReleaseNodes.contains(node) {
                        lastReleaseNodes.insert(node)
                        generation &+= 1
                        releaseGeneration = generation
                        heededGeneration = generation
                        return claimLongestWaiting(laterMessage: true)
                    }
                } else if !ownRelease.hasSameBytes(as: release) {
                    // The releaser's own report, after a node's message of this release counted
                    // it (and forgot it as `ownRelease`): the rest are echoes.
                    if lanes.count <= 1 { lastReleaseEchoes.formUnion(Set(allNodes).subtracting(lastReleaseNodes)) }
                    return nil
                }
            }
            let own = lanes.count <= 1 && (node == nil || (!release.isEmpty && ownRelease.hasSameBytes(as: release)))
            ownRelease = []
            count(release, from: node.map { [$0] } ?? [], echoes: own ? Set(allNodes) : [])
            return claimLongestWaiting()
        }

        /// ``LocalCoordination/handedOff(_:message:node:)`` for this name: the waiter to resume,
        /// and one that heard its first handoff, to claim after a while unless a quorum came.
        func handedOff(_ message: HandoffMessage, node: Int) -> (Claimed?, claimLater: (Waiter, Duration)?) {
            guard let index = waiters.firstIndex(where: { $0.value.map(message.handsOver(to:)) ?? false }) else {
                handedTo.append((message, node))
                if handedTo.count > 16 { handedTo.removeFirst() }
                return (nil, nil)
            }
            var claimLater: (Waiter, Duration)?
            if let value = waiters[index].value, let life = message.life(for: value), var watch = waiters[index].watch {
                let grant = watch.count(node: node, life: life)
                waiters[index].watch = watch
                if let grant {
                    let found = waiters.remove(at: index)
                    guard let continuation = found.waiter.claim(byRelease: true) else { return (nil, nil) }
                    return (Claimed(waiter: found.waiter, continuation: continuation, next: nil, handoff: grant), nil)
                }
                if watch.counted == [node] { claimLater = (waiters[index].waiter, watch.claimAfter) }
                if !watch.counted.isEmpty { return (nil, claimLater) }
            }
            let found = waiters.remove(at: index)
            guard let continuation = found.waiter.claim(byRelease: true) else { return (nil, claimLater) }
            return (Claimed(waiter: found.waiter, continuation: continuation, next: found.next), claimLater)
        }

        /// Counts a release of the lease whose value is `release`, heard from `nodes`; the
        /// messages of `echoes` say nothing new.
        func count(_ release: some Collection<UInt8>, from nodes: Set<Int>, echoes: Set<Int> = []) {
            lastRelease = Array(release)
            generation &+= 1
            releaseGeneration = generation
            heededGeneration = generation
            lastReleaseGeneration = generation
            lastReleaseNodes = nodes
            lastReleaseEchoes = echoes.subtracting(nodes)
        }

        /// The record of the lease of `value` held here and not yet released, if any.
        func heldRecord(of value: some Collection<UInt8>) -> Int? {
            heldHere.firstIndex { $0.value.hasSameBytes(as: value) && $0.handedFor == nil }
        }

        /// Records the lease of `value` as held here until `validUntil` (replacing the record of
        /// the same value: an extension).
        ///
        /// With `acquired` (a `lock()`'s attempt won it): a quorum grants one lease of a name at
        /// a time, so every other lease of the name recorded here has ended — left to expire, or
        /// released through another client (a lease handed over with ``Lease/handoff`` and
        /// unlocked by its taker), which this client does not hear of — and their records go
        /// (those handed to a waiter here stay until that waiter's attempt ends). Before, each
        /// such lease stayed recorded until its validity ended: 10,000 leases of a 60 s expiry
        /// handed over to another client in a row left 10,000 records, each `lock()` scanning
        /// them. Not for an extension: its reply can be handled after the lease was released
        /// here and handed to a waiter whose new lease is recorded, which must stay.
        func hold(_ value: some Collection<UInt8>, until validUntil: ContinuousClock.Instant, acquired: Bool) {
            if let index = heldRecord(of: value) {
                heldHere[index].validUntil = validUntil
            } else {
                let now = ContinuousClock.now
                heldHere.removeAll { $0.validUntil <= now || (acquired && $0.handedFor == nil) }
                heldHere.append(HeldHere(value: Array(value), validUntil: validUntil))
            }
        }

        /// ``LocalCoordination/attemptEnded(_:value:acquired:handedFor:)`` for this name.
        func attemptEnded(
            value: some Collection<UInt8>, acquired validUntil: ContinuousClock.Instant?, handedFor release: UInt64?
        ) {
            if let validUntil { hold(value, until: validUntil, acquired: true) }
            if let release { heldHere.removeAll { $0.handedFor == release } }
        }

        /// The latest validity end of the leases held here, forgetting those that ended; nil
        /// when none is left.
        func holdEnd() -> ContinuousClock.Instant? {
            guard !heldHere.isEmpty else { return nil }
            let now = ContinuousClock.now
            heldHere.removeAll { $0.validUntil <= now }
            return heldHere.map(\.validUntil).max()
        }

        /// Whether generation `earlier` came before generation `later` (both ones this name had).
        func isBefore(_ earlier: UInt64, _ later: UInt64) -> Bool {
            generation &- later < generation &- earlier
        }

        /// Whether a release was counted after `earlier`, a generation this name had.
        func releasedSince(_ earlier: UInt64) -> Bool {
            releaseGeneration != 0 && isBefore(earlier, releaseGeneration)
        }

        /// Keeps the nodes looked at: when no waiter that polls is left, the parked waiter with the
        /// shortest pace (of those, the one that has waited longest) polls again, from its own
        /// retry delay's end; so does the fastest parked waiter of a fixed pace when every waiter
        /// that polls is slower than it (a poller that backed off). Parked waiters whose delay
        /// backs off are not compared again: they would have backed off too, and one unparked
        /// would start its backoff over. One is enough: it polls at least as often as every other
        /// parked waiter it is compared with.
        func keepPolling() -> Unparked? {
            // The shortest pace of the waiters that poll (nil: none polls); nothing to do
            // without a parked waiter, the common case.
            var cover: Duration?
            var anyParked = false
            for waiting in waiters where !waiting.waiter.isFinished {
                if waiting.parked { anyParked = true } else { cover = Swift.min(cover ?? waiting.pace, waiting.pace) }
            }
            guard anyParked else { return nil }
            var chosen: Int?
            for index in waiters.indices {
                let waiting = waiters[index]
                guard waiting.parked, !waiting.waiter.isFinished, cover.map({ waiting.fixedPace && waiting.pace < $0 }) ?? true else { continue }
                if chosen.map({ (waiting.pace, waiting.since) < (waiters[$0].pace, waiters[$0].since) }) ?? true { chosen = index }
            }
            guard let chosen else { return nil }
            waiters[chosen].parked = false
            return Unparked(waiter: waiters[chosen].waiter, pollAt: waiters[chosen].pollAt)
        }

        /// The index of the waiter that has waited longest (its `lock()` began first) of those
        /// that `include`.
        func longestWaiting(where include: (ReleaseWaiter) -> Bool) -> Int? {
            var found: (index: Int, since: ContinuousClock.Instant)?
            for index in waiters.indices where include(waiters[index]) {
                if found.map({ waiters[index].since < $0.since }) ?? true { found = (index, waiters[index].since) }
            }
            return found?.index
        }

        /// Takes the longest-waiting waiter still waiting out of the line and claims it for the
        /// last release; with `laterMessage`, only one whose wait began at or after the release's
        /// first message, and whose last attempt was not sent for that release (it retries soon,
        /// with the short delay after a release).
        func claimLongestWaiting(laterMessage: Bool = false) -> Claimed? {
            let release = lastReleaseGeneration
            while let index = longestWaiting(where: { !laterMessage || (!isBefore($0.after, release) && $0.handedBy != release) }) {
                let first = waiters.remove(at: index)
                if let continuation = first.waiter.claim(byRelease: true) {
                    return Claimed(waiter: first.waiter, continuation: continuation, next: first.next, release: release)
                }
            }
            return nil
        }
    }

    /// A waiter claimed for a release: resume it with ``Waiter/resume(_:handedOverAt:)`` once
    /// its prepared attempt, if any, is sent.
    struct Claimed {
        let waiter: Waiter
        let continuation: UnsafeContinuation<Void, Never>
        /// The waiter's next attempt, to send for it.
        let next: PreparedFanOut?
        /// The handoffs that gave the waiter the lock (then nothing is sent).
        var handoff: HandoffGrant?
        /// The release (its ``Name/lastReleaseGeneration``) the attempt is sent for, if any.
        var release: UInt64?

        /// Resumes the waiter: once its votes are in when its attempt was sent at `sentAt`
        /// (one task hop, not two), at once when it has none to send or was handed the lock.
        func resume(sentAt: ContinuousClock.Instant) {
            if let handoff {
                waiter.resume(continuation, handedOverAt: nil, handoff: handoff)
                return
            }
            guard let round = next?.round else {
                waiter.resume(continuation, handedOverAt: nil)
                return
            }
            let release = release
            round.whenFinished { waiter.resume(continuation, handedOverAt: sentAt, release: release) }
        }
    }

    private struct State {
        var names: [LockKey: Name] = [:]
        /// One per node, made with the first subscription.
        var subscribers: [RedisSubscriber] = []
        /// Whether this client's own handoff channel (``LocalCoordination/ownHandoffChannel``) is
        /// subscribed: from the first fair `lock()` that may wait until shutdown.
        var ownChannelSubscribed = false
        /// Client channels of values of the caller's own that carry another tag, by their bytes:
        /// how many `lock()` calls of each name listen on each. Subscribed while one does (values of a
        /// generator may each pick a channel of their own).
        var countedHandoffChannels: [[UInt8]: [LockKey: Int]] = [:]
        var shutDown = false
        /// The number of names at which ``sweepUnused()`` next looks for unused entries.
        var sweepAt = State.minimumSweep
        static let minimumSweep = 1_024

        /// The entry of `key`, made when it has none.
        mutating func entry(_ key: LockKey) -> Name {
            if let entry = names[key] { return entry }
            let entry = Name()
            names[key] = entry
            return entry
        }

        /// Drops the unused entries (kept only for leases whose validity ended, never released)
        /// once the names reach ``sweepAt``, then sets it to twice the names left: amortised
        /// O(1) per name added.
        mutating func sweepUnused() {
            guard names.count >= sweepAt else { return }
            names = names.filter { !$0.value.isUnused }
            sweepAt = Swift.max(State.minimumSweep, names.count * 2)
        }
    }

    private let state = Mutex(State())
    /// Handoff messages read so far (``handoffMessages``).
    private let handoffMessagesRead = Atomic<Int>(0)
    private let nodes: [RedisConnection]
    private let sender: FanOutSender
    /// What vets the sockets of node `index`'s subscriber (``NodeHealth/vet(for:)``): one server
    /// listed under two names would deliver each release message twice.
    private let vet: @Sendable (_ index: Int) -> ConnectVet?
    /// Ends waits whose time is up, and subscriptions whose linger is over.
    private let timer: DeadlineTimer

    /// This client's tag in its fair locks' values (``taggedValue(_:)``): 16 random lowercase hex
    /// digits. A release hands such a value the lock on this client's own channel, so a handoff
    /// wakes only the waiter's process.
    let handoffTag: String

    /// The channel a fair release hands this client's waiters the lock on, whatever the name:
    /// `redlock:handoff:~TAG` (``Scripts/clientHandoffChannel(tag:)``).
    let ownHandoffChannel: String

    /// What this client's tagged values begin with (``taggedValue(_:)``), as bytes.
    private let ownTagPrefix: [UInt8]

    /// Told of each error reply node `index`'s subscriber gets (a refused `SUBSCRIBE`).
    private let refused: @Sendable (_ index: Int, _ error: String) -> Void

    init(
        nodes: [RedisConnection], sender: FanOutSender, timer: DeadlineTimer,
        vet: @escaping @Sendable (_ index: Int) -> ConnectVet? = { _ in nil },
        refused: @escaping @Sendable (_ index: Int, _ error: String) -> Void = { _, _ in }
    ) {
        self.vet = vet
        self.refused = refused
        handoffTag = randomHexTag()
        ownHandoffChannel = Scripts.clientHandoffChannel(tag: handoffTag)
        ownTagPrefix = Array((handoffTag + Scripts.handoffTagSeparator).utf8)
        self.nodes = nodes
        self.sender = sender
        self.timer = timer
    }

    // MARK: - Releases

    /// Marks `key`'s name as being acquired by one more `lock()` (pair with ``endAcquiring(_:)``),
    /// whose commands go on `lane`: from now on its releases are counted.
    ///
    /// - Returns: The name's ``generation(of:)`` at that moment.
    @discardableResult
    func beginAcquiring(_ key: LockKey, lane: ConnectionLane = .shared) -> UInt64 {
        state.withLock { state in
            let entry = state.entry(key)
            entry.beginAcquiring(lane: lane)
            return entry.generation
        }
    }

    /// Ends one ``beginAcquiring(_:lane:)``. The last one drops the name, or starts its subscription's
    /// linger. If the waiters left wait for a lease held here and none of those that poll does
    /// so as often as they would, one of them polls again (``Name/keepPolling()``).
    func endAcquiring(_ key: LockKey) {
        var unparked: Unparked?
        defer { if let unparked { timer.schedule(unparked.waiter, at: unparked.pollAt) } }
        let linger: LingerStart? = state.withLock { state in
            guard let ended = state.names[key]?.endAcquiring() else { return nil }
            unparked = ended.unparked
            if ended.unused { state.names[key] = nil }
            return ended.linger
        }
        if let linger {
            timer.schedule(TimerAction { [weak self] in self?.lingerEnded(key) }, at: linger.until)
        }
    }

    /// The number of releases of `key`'s name heard, and of its subscription's confirmations, so far.
    func generation(of key: LockKey) -> UInt64 {
        state.withLock { $0.names[key]?.generation ?? 0 }
    }

    /// Whether a release of `key`'s name was counted after `generation` (one this name had; see
    /// ``generation(of:)``), rather than only confirmations of its subscription.
    func released(_ key: LockKey, since generation: UInt64) -> Bool {
        state.withLock { $0.names[key]?.releasedSince(generation) ?? false }
    }

    /// The value of the last release of `name` counted, empty for none (for tests).
    func lastRelease(of name: String) -> [UInt8] {
        state.withLock { $0.names[LockKey(name)]?.lastRelease ?? [] }
    }

    /// How many handoff messages this client's subscribers read, of any name (for tests).
    var handoffMessages: Int { handoffMessagesRead.load(ordering: .relaxed) }

    /// How many subscriptions of `name`'s channels the nodes confirmed (for tests).
    func confirmations(of name: String) -> Int {
        state.withLock { $0.names[LockKey(name)]?.confirmations ?? 0 }
    }

    /// Whether this client subscribed its own handoff channel (``listenForOwnHandoffs()``).
    var listensForOwnHandoffs: Bool {
        state.withLock { $0.ownChannelSubscribed }
    }

    /// How many names have an entry.
    var nameCount: Int { state.withLock { $0.names.count } }

    /// How many `lock()` calls wait for a release of `name` now.
    func waiterCount(of name: String) -> Int {
        state.withLock { $0.names[LockKey(name)]?.waiters.count ?? 0 }
    }

    /// A fair lock's value made by ``LockValue/random``, tagged with this client's
    /// ``handoffTag``: `TAG~VALUE`.
    func taggedValue(_ value: String) -> String { handoffTag + Scripts.handoffTagSeparator + value }

    /// Subscribes to this client's own handoff channel on every node, once (a no-op when
    /// subscribed, or after shutdown): a fair `lock()` that may wait calls it before its first
    /// attempt, so that a handoff to it is heard even on a name it never waited for. Stays
    /// subscribed until shutdown.
    func listenForOwnHandoffs() {
        let subscribers: [RedisSubscriber] = state.withLock { state in
            guard !state.shutDown, !state.ownChannelSubscribed else { return [] }
            state.ownChannelSubscribed = true
            if state.subscribers.isEmpty { state.subscribers = makeSubscribers() }
            return state.subscribers
        }
        for subscriber in subscribers { subscriber.subscribe(ownHandoffChannel) }
    }

    /// Subscribes to `name`'s release channel on every node — with `handoffChannel`, a fair
    /// lock's, also to that handoff channel (``Scripts/handoffChannel(_:value:)`` of the
    /// waiter's value) — once per name and channel (a no-op when subscribed, or after shutdown).
    /// Call while acquiring. The shared handoff channel of the name stays subscribed as long as
    /// the release channel, and this client's own as long as the client
    /// (``listenForOwnHandoffs()``); any other (a value of the caller's own with another tag) is
    /// counted: returns true when this call counted a use of it, to be ended by
    /// ``stopListening(_:handoffChannel:)`` when that `lock()` returns.
    @discardableResult
    func listen(_ name: String, handoffChannel: String? = nil) -> Bool {
        let key = LockKey(name)
        // Which handoff channel, told once: this client's own, the name's shared one, or another
        // client's (counted).
        let isOwn = handoffChannel.map { $0.utf8.elementsEqual(ownHandoffChannel.utf8) } ?? false
        let isShared = !isOwn && handoffChannel.map { $0.utf8.elementsEqual(Scripts.handoffChannel(name).utf8) } ?? false
        if isOwn { listenForOwnHandoffs() }
        let (subscribers, channels, counted): ([RedisSubscriber], [String], Bool) = state.withLock { state in
            guard !state.shutDown, let entry = state.names[key] else { return ([], [], false) }
            var channels: [String] = []
            var counted = false
            if !entry.subscribed { channels.append(Scripts.releaseChannel(name)) }
            if let handoffChannel, isShared {
                if !entry.handoffChannels.contains(handoffChannel) {
                    channels.append(handoffChannel)
                    entry.handoffChannels.append(handoffChannel)
                }
            } else if let handoffChannel, !isOwn {
                let bytes = Array(handoffChannel.utf8)
                if state.countedHandoffChannels[bytes] == nil { channels.append(handoffChannel) }
                state.countedHandoffChannels[bytes, default: [:]][key, default: 0] += 1
                counted = true
            }
            guard !channels.isEmpty else { return ([], [], counted) }
            if state.subscribers.isEmpty { state.subscribers = makeSubscribers() }
            entry.subscribed = true
            return (state.subscribers, channels, counted)
        }
        for subscriber in subscribers {
            for channel in channels { subscriber.subscribe(channel) }
        }
        return counted
    }

    /// Ends a use of a counted handoff channel (``listen(_:handoffChannel:)`` returned true); the
    /// last one unsubscribes it.
    func stopListening(_ name: String, handoffChannel channel: String) {
        let (bytes, key) = (Array(channel.utf8), LockKey(name))
        let subscribers: [RedisSubscriber] = state.withLock { state in
            guard var users = state.countedHandoffChannels[bytes], let count = users[key] else { return [] }
            users[key] = count > 1 ? count - 1 : nil
            guard users.isEmpty else {
                state.countedHandoffChannels[bytes] = users
                return []
            }
            state.countedHandoffChannels[bytes] = nil
            return state.subscribers
        }
        for subscriber in subscribers { subscriber.unsubscribe(channel) }
    }

    /// Whether `channel` is a client's handoff channel this client listens on: its own, or a
    /// counted one.
    private func isListenedClientChannel(_ channel: String) -> Bool {
        if channel.utf8.elementsEqual(ownHandoffChannel.utf8) { return true }
        guard let rest = Scripts.lockName(ofHandoffChannel: channel), rest.utf8.first == UInt8(ascii: "~") else { return false }
        return state.withLock { $0.countedHandoffChannels[Array(channel.utf8)] != nil }
    }

    private func makeSubscribers() -> [RedisSubscriber] {
        nodes.enumerated().map { index, node in
            RedisSubscriber(
                configuration: node.configuration, eventLoop: node.eventLoop,
                vet: vet(index),
                onSubscribed: { [weak self] channel in
                    guard let self else { return }
                    if let name = Scripts.lockName(ofReleaseChannel: channel) {
                        confirmed(name)
                    } else if isListenedClientChannel(channel) {
                        confirmedClientChannel(channel)
                    } else if let name = Scripts.lockName(ofHandoffChannel: channel) {
                        confirmed(name, handoffs: true)
                    }
                },
                onRefused: { [weak self] error in self?.refused(index, error) },
                onMessage: { [weak self] channel, payload in
                    guard let self else { return }
                    if let name = Scripts.lockName(ofReleaseChannel: channel) {
                        announce(LockKey(name), release: payload, node: index)
                    } else if isListenedClientChannel(channel), let addressed = AddressedHandoff(payload) {
                        handedOff(addressed.name, message: addressed.message, node: index)
                    } else if let name = Scripts.lockName(ofHandoffChannel: channel) {
                        // Also a message that does not read as addressed on a channel that is
                        // both a client's and the shared one of a name `~TAG`.
                        handedOff(name, message: HandoffMessage(payload), node: index)
                    }
                }
            )
        }
    }

    /// A node confirmed the subscription of `name` (its release channel, or with `handoffs` a
    /// fair lock's handoff channel). Until a node has processed the `SUBSCRIBE`, a release there
    /// goes unheard — and a node may process it after a release that came in on another
    /// connection, or subscribe again after a lost connection. So every confirmation advances
    /// the generation as a release does: a `lock()` whose last attempt went out before it tries
    /// again at once (every waiter is woken). Then, for each node where that attempt found the
    /// lock taken, either the node's confirmation came before the attempt was sent — its
    /// `SUBSCRIBE` was processed before the attempt, so the release that frees it comes after
    /// and is heard — or the confirmation came after and triggers another attempt. A wait it ends
    /// is not ``WaitOutcome/woken`` but ``WaitOutcome/confirmed``: when the look after it fails,
    /// the `lock()` waits out the rest of the wait it cut short (or for a release), not the short
    /// wait after a release whose attempt lost a race, and the look is not one of its tries.
    ///
    /// A confirmation of the release channel wakes no fair waiter that hears its handoffs on
    /// this client's own channel (``hearsHandoffsOnOwnChannel(_:)``): each node that refused
    /// its attempt put it in line, so a fair release there hands the lock to the line and says
    /// so on that channel. The release channel adds only the releases of lock objects of the
    /// name that are not fair (every lock object of a name should use the same options) and of
    /// fair ones that found nobody in line: on a node where the waiter's attempt failed (it was
    /// never put in line there), or that lost part of its data (a replica promoted with the
    /// holder's key but not the waiter's place in line; a node that lost all of it publishes
    /// nothing). One of those that came before the subscription took effect costs such a
    /// waiter up to its retry delay. The attempt a wake would send races
    /// the handoff instead, and delays it (`Benchmarks/RESULTS.md`, the `fair-fresh` rows).
    func confirmed(_ name: String, handoffs: Bool = false) {
        let woken: [UnsafeContinuation<Void, Never>] = state.withLock { state in
            let key = LockKey(name)
            guard let entry = state.names[key], entry.subscribed else { return [] }
            // A handoff channel's confirmation counts only while the name has one.
            if handoffs, entry.handoffChannels.isEmpty { return [] }
            entry.generation &+= 1
            entry.confirmations += 1
            if handoffs { entry.heededGeneration = entry.generation }
            var woken: [UnsafeContinuation<Void, Never>] = []
            entry.waiters.removeAll { waiting in
                guard handoffs || !hearsHandoffsOnOwnChannel(waiting.value) else { return false }
                if let continuation = waiting.waiter.claim(byRelease: false, byConfirmation: true) { woken.append(continuation) }
                return true
            }
            return woken
        }
        for continuation in woken { continuation.resume() }
    }

    /// Whether a waiter with `value` (a fair lock's; nil for others) hears its handoffs on this
    /// client's own channel (``ownHandoffChannel``): the value carries this client's tag (a
    /// random value; also a value of the caller's own that starts with it). The channel is
    /// subscribed before a random value's first attempt; for one of the caller's own, after it,
    /// and that channel's confirmations wake the waiter (``confirmedClientChannel(_:)``).
    private func hearsHandoffsOnOwnChannel(_ value: [UInt8]?) -> Bool {
        guard let value, value.count >= ownTagPrefix.count else { return false }
        return ownTagPrefix.hasSameBytes(as: value.prefix(ownTagPrefix.count))
    }

    /// A node confirmed a client handoff channel: a handoff published there before may have gone
    /// unheard, so the names that listen on it — every name being acquired for this client's own,
    /// the names whose calls counted it for another — count it as ``confirmed(_:handoffs:)``
    /// counts a confirmation of a name's own channels.
    private func confirmedClientChannel(_ channel: String) {
        let own = channel.utf8.elementsEqual(ownHandoffChannel.utf8)
        let woken: [UnsafeContinuation<Void, Never>] = state.withLock { state in
            var woken: [UnsafeContinuation<Void, Never>] = []
            let keys = own ? Array(state.names.keys) : state.countedHandoffChannels[Array(channel.utf8)].map { Array($0.keys) } ?? []
            for key in keys {
                guard let entry = state.names[key], entry.acquiring > 0 else { continue }
                entry.generation &+= 1
                entry.heededGeneration = entry.generation
                entry.confirmations += 1
                woken += entry.waiters.compactMap { $0.waiter.claim(byRelease: false, byConfirmation: true) }
                entry.waiters = []
            }
            return woken
        }
        for continuation in woken { continuation.resume() }
    }

    /// The linger of `key`'s subscription may be over: unsubscribe when nobody acquired since.
    private func lingerEnded(_ key: LockKey) {
        var again: ContinuousClock.Instant?
        let subscribers: [(RedisSubscriber, [String])] = state.withLock { state in
            guard let entry = state.names[key], let until = entry.lingerUntil else { return [] }
            guard entry.acquiring == 0, entry.subscribed, !state.shutDown else {
                // The next endAcquiring that starts a linger schedules a new action.
                entry.lingerUntil = nil
                return []
            }
            // Moved on by a later endAcquiring: look again then.
            guard until <= .now else {
                again = until
                return []
            }
            let channels = [Scripts.releaseChannel(key.name)] + entry.handoffChannels
            entry.subscribed = false
            entry.handoffChannels = []
            entry.lingerUntil = nil
            entry.handedTo = []
            if entry.isUnused { state.names[key] = nil }
            return state.subscribers.map { ($0, channels) }
        }
        if let again {
            timer.schedule(TimerAction { [weak self] in self?.lingerEnded(key) }, at: again)
        }
        for (subscriber, channels) in subscribers {
            for channel in channels { subscriber.unsubscribe(channel) }
        }
    }

    /// Returns when a release of `name` after `generation` is heard (and this caller is the one
    /// woken), a node confirms a subscription (but see ``confirmed(_:handoffs:)``), `timeout`
    /// passes, or the task is cancelled,
    /// whichever comes first; only a release (or a handoff) returns ``WaitOutcome/woken``. A
    /// release or confirmation since `generation` ends the wait at once (but a confirmation of
    /// the release channel, for a fair waiter that hears its handoffs on this client's channel:
    /// see ``confirmed(_:handoffs:)``). Call while acquiring.
    ///
    /// With `next`, the caller's next attempt, whoever hears the release sends it at once, and
    /// the caller is resumed when its votes are in (``WaitOutcome/handedOverAt``,
    /// ``WaitOutcome/release``). `handedBy` is the ``WaitOutcome/release`` of the caller's last
    /// wait, if any: that release's later messages pass the caller over.
    ///
    /// A fair lock's waiter passes its `value`: it is woken only by the release that hands the
    /// lock to it (``handedOff(_:message:node:)``) or by one that found nobody in line. With
    /// `watch`, the handoffs it hears count as grants (``WaitOutcome/handoff``).
    ///
    /// With `holderHereUntil` (a lease of the name is held in this process until then, see
    /// ``holdEnd(of:)``), the caller waits until then instead of `timeout`, for that lease's
    /// release — unless no other waiter of the name polls at least as often (`pace`, by default
    /// `timeout`; ``RetryDelay/pace(afterFailedAttempts:drawn:)``): then it polls, waiting its
    /// `timeout`, so that the nodes are still looked at as often as each waiter would look (the
    /// keys of a lease held here may be gone: a node lost its data, or they were deleted). A
    /// waiter that polls less often than a parked one whose pace is fixed (`paceIsFixed`) does
    /// not take its place: that one polls again (``Name/keepPolling()``).
    ///
    /// `waitingSince` is when the caller's `lock()` began (by default, now): a release goes to
    /// the caller that has waited longest.
    func waitForRelease(
        of name: String, after generation: UInt64, timeout: Duration, waitingSince: ContinuousClock.Instant = .now, next: PreparedFanOut?,
        value: String? = nil, watch: HandoffWatch? = nil, handedBy: UInt64? = nil, holderHereUntil: ContinuousClock.Instant? = nil,
        pace: Duration? = nil, paceIsFixed: Bool = false
    ) async -> WaitOutcome {
        let key = LockKey(name)
        let waiter = Waiter()
        let bytes = value.map { Array($0.utf8) }
        let deadline = ContinuousClock.now + timeout
        let pace = pace ?? timeout
        await waiter.wait(timer: timer, deadline: deadline) {
            var claimAfter: Duration?
            var unparked: Unparked?
            let registration = state.withLock { state -> Waiter.Registration in
                // A release heard since `generation` is as good as one heard now, and so is a
                // handoff to this caller heard before it began to wait. A confirmation since
                // calls for one more attempt, not woken by a release (see confirmed(_:handoffs:)).
                guard let entry = state.names[key] else { return .ended(woken: true) }
                // A fair waiter that hears its handoffs on this client's channel heeds no
                // confirmation of the release channel (see confirmed(_:handoffs:)).
                let heeded = hearsHandoffsOnOwnChannel(bytes) ? entry.isBefore(generation, entry.heededGeneration) : entry.generation != generation
                guard !heeded else {
                    let released = entry.releasedSince(generation)
                    return .ended(woken: released, confirmed: !released)
                }
                // A client shut down wakes nobody later (see closeGates()).
                guard !state.shutDown else { return .ended(woken: false) }
                var watch = watch
                if let bytes {
                    // Used up: the same handoff heard from the other nodes, while this caller's
                    // claim was in flight, wakes it once more at most.
                    let heard = entry.handedTo.filter { $0.message.handsOver(to: bytes) }
                    entry.handedTo.removeAll { $0.message.handsOver(to: bytes) }
                    if !heard.isEmpty {
                        guard var counting = watch else { return .ended(woken: true) }
                        for (message, node) in heard {
                            guard let life = message.life(for: bytes), let grant = counting.count(node: node, life: life) else { continue }
                            waiter.noteHandoff(grant)
                            return .ended(woken: true)
                        }
                        // None counted: claim now. Some: wait a moment for the rest.
                        guard !counting.counted.isEmpty else { return .ended(woken: true) }
                        claimAfter = counting.claimAfter
                        watch = counting
                    }
                }
                var waiting = ReleaseWaiter(
                    waiter: waiter, after: generation, handedBy: handedBy, next: next, value: bytes, watch: watch, since: waitingSince,
                    pace: pace, fixedPace: paceIsFixed, pollAt: deadline
                )
                if let holderHereUntil, entry.waiters.contains(where: { !$0.parked && !$0.waiter.isFinished && $0.pace <= pace }) {
                    waiting.parked = true
                    entry.waiters.append(waiting)
                    return .waitingUntil(holderHereUntil)
                }
                entry.waiters.append(waiting)
                unparked = entry.keepPolling()
                return .waiting
            }
            if let unparked { timer.schedule(unparked.waiter, at: unparked.pollAt) }
            if let claimAfter {
                timer.schedule(TimerAction(until: waiter) { [weak self] in self?.claimNow(key, waiter: waiter) }, at: .now + claimAfter)
            }
            return registration
        }
        state.withLock { state in
            if let entry = state.names[key] { entry.waiters.removeAll { $0.waiter === waiter } }
        }
        return waiter.outcome
    }

    /// For a release being made in this process on `lane`: counts it and claims the
    /// longest-waiting waiter of `key`'s name, for the releaser to send the waiter's attempt right
    /// behind its deletes and then resume it. Returns nil (counting nothing) when nobody waits:
    /// the releaser then publishes its release, and announces it once made.
    func handOff(_ key: LockKey, release: some Collection<UInt8> & Sendable, lane: ConnectionLane = .shared) -> Claimed? {
        let allNodes = nodes.indices
        return state.withLock { state in
            guard let entry = state.names[key] else { return nil }
            guard let claimed = entry.handOff(release, lane: lane, allNodes: allNodes) else {
                // The entry may have been kept for the lease alone.
                if entry.isUnused { state.names[key] = nil }
                return nil
            }
            return claimed
        }
    }

    /// Records that this client holds the lease of `name` with `value` until `validUntil`, after
    /// an acquire or an extension, until its ``handOff(_:release:lane:)`` (every unlock of a lock
    /// that is not fair makes one) or its validity end; a release handed to a waiter here counts
    /// as held until the attempt sent for it ended. A name's entry is kept for its record;
    /// entries whose leases were never released are dropped once their validity ended, by a
    /// sweep each time the names double (``State/sweepUnused()``).
    func holding(_ name: String, value: String, until validUntil: ContinuousClock.Instant) {
        state.withLock { state in
            state.entry(LockKey(name)).hold(value.utf8, until: validUntil, acquired: false)
            state.sweepUnused()
        }
    }

    /// An attempt of a `lock()` of `key`'s name with `value` ended: it acquired a lease valid until
    /// `acquired` (recorded, as with ``holding(_:value:until:)``), or failed, or it was a fair
    /// lock's (nil: a fair lease is not recorded). `handedFor` is the release the attempt was
    /// sent for (``WaitOutcome/release``): the lease that release ended no longer counts as
    /// held here. When the attempt failed (the
    /// lock went to another process meanwhile), its `lock()` retries at its retry delay, and
    /// the other waiters here, still waiting for a release, get the lock from it in turn (or
    /// through ``passOn(_:)`` when it gives up).
    func attemptEnded(_ key: LockKey, value: String, acquired: ContinuousClock.Instant?, handedFor: UInt64?) {
        state.withLock { state in
            guard acquired != nil else {
                state.names[key]?.attemptEnded(value: value.utf8, acquired: nil, handedFor: handedFor)
                return
            }
            state.entry(key).attemptEnded(value: value.utf8, acquired: acquired, handedFor: handedFor)
            state.sweepUnused()
        }
    }

    /// A lease of `key`'s name with `value` was released through a fair lock (which hands
    /// nothing over here): it no longer counts as held here.
    func released(_ key: LockKey, value: String) {
        state.withLock { state in
            guard let entry = state.names[key] else { return }
            if let held = entry.heldRecord(of: value.utf8) { entry.heldHere.remove(at: held) }
            if entry.isUnused { state.names[key] = nil }
        }
    }

    /// How many leases of `name` count as held here (for tests).
    func heldCount(of name: String) -> Int {
        state.withLock { $0.names[LockKey(name)]?.heldHere.count ?? 0 }
    }

    /// The latest validity end of the leases of `name` this client holds (``holding(_:value:until:)``),
    /// nil when it holds none. While one is held, no attempt of another `lock()` here can win
    /// (the nodes decide: a quorum holds it), so a waiter waits for its release — which this
    /// process hands to its longest-waiting waiter, with its attempt right behind the deletes —
    /// or for its validity end, instead of polling the nodes at its retry delay.
    func holdEnd(of name: String) -> ContinuousClock.Instant? {
        state.withLock { $0.names[LockKey(name)]?.holdEnd() ?? nil }
    }

    /// A `lock()` that had an attempt sent for a release ends without the lock (its last try,
    /// its deadline, its cancellation, nodes that refuse for good), also after attempts of its
    /// own since: the longest-waiting waiter left is woken in its place, with its prepared
    /// attempt. The waiters that waited before that release are passed over by its later
    /// messages (the woken one was trying), so else they could sleep out their delay while the
    /// lock is free.
    func passOn(_ name: String) {
        let claimed: Claimed? = state.withLock { $0.names[LockKey(name)]?.claimLongestWaiting() }
        if let claimed { send(claimed) }
    }

    /// Records the release `release` (the released lease's value) of `name`, heard from node
    /// `node`, or (nil) made in this process; wakes the longest-waiting waiter, sending its
    /// prepared attempt first. Releases of names nobody acquires are ignored.
    ///
    /// A published release is heard from every node it deleted the key on, each message in its
    /// own time. The first wakes one waiter; each later one advances the generation and wakes
    /// the longest waiting of those whose wait began after the first, but for one whose last
    /// attempt was sent for this release (it retries with the short delay after a release):
    /// such a waiter's attempt may have reached a node before the release did there and found
    /// it taken, and no other message would come to say that node is free now. Waiters that
    /// waited before the first message stay in line: the waiter it woke is trying. A release
    /// made in this process went out on each node's connection before any attempt this process
    /// sends after it, so of its messages and the releaser's report only the first is news
    /// here. A message of the same value from a node already heard is a new release (a value of
    /// the caller's own, released again), and so is the releaser's report of a value released
    /// again. The releaser passes the `lane` its release went on.
    func announce(_ key: LockKey, release: some Collection<UInt8> & Sendable, node: Int? = nil, lane: ConnectionLane? = nil) {
        let allNodes = nodes.indices
        let claimed: Claimed? = state.withLock { state in
            state.names[key]?.announce(release, node: node, lane: lane, allNodes: allNodes)
        }
        if let claimed { send(claimed) }
    }

    /// A fair lock's release on node `node` handed the lock to the waiter the message names.
    /// A waiter that watches for handoffs counts it and resumes, sending nothing, once a quorum
    /// handed over; after its first counted message it claims (sends its prepared attempt) when
    /// no quorum came within ``HandoffWatch/claimAfter``. Any other waiter is woken, sending its
    /// prepared attempt (its claim) first. The same handoff heard from several nodes wakes a
    /// waiter once; one heard before the waiter waits is remembered.
    func handedOff(_ name: String, message: HandoffMessage, node: Int) {
        handoffMessagesRead.wrappingAdd(1, ordering: .relaxed)
        let key = LockKey(name)
        let (claimed, claimLater) = state.withLock { state in
            state.names[key]?.handedOff(message, node: node) ?? (nil, nil)
        }
        if let (waiter, delay) = claimLater {
            timer.schedule(TimerAction(until: waiter) { [weak self] in self?.claimNow(key, waiter: waiter) }, at: .now + delay)
        }
        if let claimed { send(claimed) }
    }

    /// A watching waiter heard too few handoffs in time: it claims what it was handed with its
    /// prepared attempt (a no-op once it was resumed otherwise).
    private func claimNow(_ key: LockKey, waiter: Waiter) {
        let claimed: Claimed? = state.withLock { state in
            guard let entry = state.names[key], let index = entry.waiters.firstIndex(where: { $0.waiter === waiter }),
                  case let found = entry.waiters.remove(at: index),
                  let continuation = found.waiter.claim(byRelease: true)
            else { return nil }
            return Claimed(waiter: found.waiter, continuation: continuation, next: found.next)
        }
        if let claimed { send(claimed) }
    }

    /// Sends a claimed waiter's prepared attempt, if any, and resumes it once its votes are in
    /// (at once without one).
    private func send(_ claimed: Claimed) {
        let sentAt = ContinuousClock.now
        if let next = claimed.next { sender.send(next) }
        claimed.resume(sentAt: sentAt)
    }

    // MARK: - Single-flight gates

    /// Waits for the gate of `name`, then owns it and returns the caller's ticket (carried in
    /// its lease as ``Lease/gateTicket``); returns nil when `giveUp` passes first or the client
    /// shuts down (owning nothing). Throws `CancellationError` when cancelled (owning nothing).
    func enterGate(_ name: String, value: String, giveUpAt giveUp: ContinuousClock.Instant?) async throws -> Int? {
        let key = LockKey(name)
        let id = Self.nextTicket()
        while true {
            let (entered, next, shutDown) = state.withLock { state -> (Bool, UnsafeContinuation<Void, Never>?, Bool) in
                guard !state.shutDown else { return (false, nil, true) }
                let (entered, next) = admit(key, id: id, value: value, in: &state)
                return (entered, next, false)
            }
            next?.resume()
            if entered { return id }
            if shutDown { return nil }
            if Task.isCancelled { throw CancellationError() }
            if let giveUp, giveUp <= .now { return nil }
            // The owner's unlock, or the end of its lease (gateHolder(_:)), hands the gate on.
            await waitForGate(key, id: id, value: value, deadline: giveUp)
            if Task.isCancelled {
                // If the gate was handed over just now, pass it on.
                leaveGate(name, ticket: id)
                throw CancellationError()
            }
        }
    }

    /// Takes the gate of `name` if nobody has it (or its owner's lease ran out and nobody waits
    /// for it) and returns the caller's ticket; never waits. Nil when it is taken, or after
    /// shutdown.
    func tryEnterGate(_ name: String, value: String) -> Int? {
        let (id, entered, next) = state.withLock { state -> (Int, Bool, UnsafeContinuation<Void, Never>?) in
            guard !state.shutDown else { return (0, false, nil) }
            let id = Self.nextTicket()
            let (entered, next) = admit(LockKey(name), id: id, value: value, in: &state)
            return (id, entered, next)
        }
        next?.resume()
        return entered ? id : nil
    }

    /// Tickets are unique in the process, not only in one client: a lease unlocked through
    /// another client's lock object never matches that client's gate owner.
    private static let tickets = Atomic<Int>(0)

    private static func nextTicket() -> Int {
        tickets.wrappingAdd(1, ordering: .relaxed).newValue
    }

    /// Whether caller `id` has `key`'s gate now, taking it if so: nobody has it, `id` has it, or
    /// its owner's lease ran out and nobody waits for it. When the lease ran out before its
    /// lease-end action ran, the longest-waiting caller gets the gate first: returned to resume
    /// outside the lock.
    private func admit(_ key: LockKey, id: Int, value: String, in state: inout State) -> (Bool, UnsafeContinuation<Void, Never>?) {
        guard let gate = state.names[key]?.gate else {
            state.entry(key).gate = Gate(owner: id, ownerValue: value)
            return (true, nil)
        }
        if gate.owner == id { return (true, nil) }
        guard gate.ownerExpired else { return (false, nil) }
        if let next = passGate(key, in: &state) { return (false, next) }
        // Nobody waited: passGate removed the gate.
        state.entry(key).gate = Gate(owner: id, ownerValue: value)
        return (true, nil)
    }

    /// Queues `id` (acquiring with `value`) until it is handed the gate, `deadline` passes, or
    /// the task is cancelled.
    private func waitForGate(_ key: LockKey, id: Int, value: String, deadline: ContinuousClock.Instant?) async {
        let waiter = Waiter()
        await waiter.wait(timer: timer, deadline: deadline) {
            state.withLock { state -> Waiter.Registration in
                guard let gate = state.names[key]?.gate, gate.owner != id else { return .ended(woken: true) }
                let place = gate.waiters.firstIndex { $0.id > id } ?? gate.waiters.count
                state.names[key]?.gate?.waiters.insert(GateWaiter(id: id, value: value, waiter: waiter), at: place)
                return .waiting
            }
        }
        state.withLock { state in
            state.names[key]?.gate?.waiters.removeAll { $0.waiter === waiter }
        }
    }

    /// How many callers wait for `name`'s gate, nil when nobody has it (for tests).
    func gateQueueLength(of name: String) -> Int? {
        state.withLock { $0.names[LockKey(name)]?.gate?.waiters.count }
    }

    /// Records that the owner of `lease.name`'s gate (the caller whose ticket `lease` carries)
    /// acquired or extended `lease`: when its validity ends without an unlock or a later
    /// extension, the gate passes to the longest-waiting caller. A lease whose gate went away
    /// meanwhile (its validity ended while it was being extended, and nobody waited) takes it
    /// again. Returns false, changing nothing, when another caller has the gate now (the lease's
    /// validity ended, and the gate passed on).
    @discardableResult
    func gateHolder(_ lease: Lease, valuesMayRepeat: Bool) -> Bool {
        let key = LockKey(lease.name)
        let (owns, action): (Bool, TimerAction?) = state.withLock { state in
            let gate = state.names[key]?.gate
            guard !state.shutDown else { return (gate.map { Self.owns($0, lease, valuesMayRepeat: valuesMayRepeat) } ?? false, nil) }
            var owned: Gate
            if let gate {
                guard Self.owns(gate, lease, valuesMayRepeat: valuesMayRepeat) else { return (false, nil) }
                owned = gate
            } else {
                guard let ticket = lease.gateTicket else { return (false, nil) }
                owned = Gate(owner: ticket, ownerValue: lease.value)
            }
            owned.held = GateHold(acquiredAt: lease.acquiredAt, validUntil: lease.validUntil)
            owned.leaseEnd?.cancel()
            let (owner, validUntil) = (owned.owner, lease.validUntil)
            let action = TimerAction { [weak self] in self?.gateLeaseEnded(key, owner: owner, validUntil: validUntil) }
            owned.leaseEnd = action
            state.entry(key).gate = owned
            return (true, action)
        }
        if let action { timer.schedule(action, at: lease.validUntil) }
        return owns
    }

    /// Whether the caller that acquired `lease` has `gate`: by its ticket. A lease that carries
    /// none (made by ``Lease/init(name:value:expiry:acquiredAt:validUntil:fencingToken:)``) has
    /// it when the owner holds a lease of its value — with `valuesMayRepeat` (a fixed or
    /// caller-made ``LockOptions/value``), one begun no later than it (the owner's latest
    /// acquire or extension, or a copy of it): an older lease of that value may be a caller's
    /// whose validity ended.
    private static func owns(_ gate: Gate, _ lease: Lease, valuesMayRepeat: Bool) -> Bool {
        if let ticket = lease.gateTicket { return gate.owner == ticket }
        guard let since = gate.held?.acquiredAt, gate.ownerValue == lease.value else { return false }
        return !valuesMayRepeat || lease.acquiredAt >= since
    }

    /// Whether the gate of `name` is held by a caller that acquired with `value` (came through
    /// the gate with it).
    func gateOwned(_ name: String, byValue value: String) -> Bool {
        state.withLock { $0.names[LockKey(name)]?.gate?.ownerValue == value }
    }

    /// Whether `lease`'s caller lost its name's gate (its validity ended) to a caller that
    /// acquires with the same value (a fixed ``LockOptions/value``): the nodes cannot tell the
    /// two apart, so releasing or extending `lease` there would act on the successor's keys. A
    /// lease without a ticket lost it unless it is the owner's (see
    /// ``owns(_:_:valuesMayRepeat:)``).
    func gatePassedToSameValue(_ lease: Lease, valuesMayRepeat: Bool) -> Bool {
        state.withLock { state in
            guard let gate = state.names[LockKey(lease.name)]?.gate, gate.ownerValue == lease.value else { return false }
            return !Self.owns(gate, lease, valuesMayRepeat: valuesMayRepeat)
        }
    }

    /// The validity of gate owner `owner`'s lease ended at `validUntil`: unless the owner left
    /// the gate or extended meanwhile, the longest-waiting caller gets it.
    private func gateLeaseEnded(_ key: LockKey, owner: Int, validUntil: ContinuousClock.Instant) {
        let next: UnsafeContinuation<Void, Never>? = state.withLock { state in
            guard let gate = state.names[key]?.gate, gate.owner == owner, gate.held?.validUntil == validUntil, gate.ownerExpired
            else { return nil }
            return passGate(key, in: &state)
        }
        next?.resume()
    }

    /// Passes the gate of `name` to the next waiter if caller `ticket` has it.
    func leaveGate(_ name: String, ticket: Int) {
        let key = LockKey(name)
        let next: UnsafeContinuation<Void, Never>? = state.withLock { state in
            guard state.names[key]?.gate?.owner == ticket else { return nil }
            return passGate(key, in: &state)
        }
        next?.resume()
    }

    /// Passes the gate of `lease`'s name to the next waiter if the caller that acquired `lease`
    /// has it (see ``owns(_:_:valuesMayRepeat:)``).
    func leaveGate(_ lease: Lease, valuesMayRepeat: Bool) {
        let key = LockKey(lease.name)
        let next: UnsafeContinuation<Void, Never>? = state.withLock { state in
            guard let gate = state.names[key]?.gate, Self.owns(gate, lease, valuesMayRepeat: valuesMayRepeat) else { return nil }
            return passGate(key, in: &state)
        }
        next?.resume()
    }

    /// Hands `key`'s gate to its longest-waiting caller (skipping waiters that timed out or were
    /// cancelled meanwhile), or removes it when nobody waits; returns the continuation to resume
    /// outside the lock.
    private func passGate(_ key: LockKey, in state: inout State) -> UnsafeContinuation<Void, Never>? {
        guard let entry = state.names[key], var gate = entry.gate else { return nil }
        defer { if entry.isUnused { state.names[key] = nil } }
        while !gate.waiters.isEmpty {
            let first = gate.waiters.removeFirst()
            guard let continuation = first.waiter.claim(byRelease: true) else { continue }
            gate.takeOver(by: first.id, value: first.value)
            entry.gate = gate
            return continuation
        }
        gate.leaseEnd?.cancel()
        entry.gate = nil
        return nil
    }

    // MARK: - Shutdown

    /// Closes the subscriber connections; later subscriptions are not made.
    func shutdown() async {
        for subscriber in stopSubscribing() { await subscriber.shutdown() }
    }

    /// Closes the subscriber connections without suspending (for the client's `deinit`).
    func beginShutdown() {
        for subscriber in stopSubscribing() { subscriber.beginShutdown() }
    }

    /// At shutdown: no gate passes on any more (its lease-end action is cancelled, so the timer
    /// need not wait for it), and every caller waiting for one returns without it
    /// (``enterGate(_:value:giveUpAt:)`` returns nil). Callers waiting for a release end their
    /// wait too (their next attempt finds the client shut down). Later subscriptions are not made.
    func closeGates() {
        let waiting: [UnsafeContinuation<Void, Never>] = state.withLock { state in
            state.shutDown = true
            var woken: [UnsafeContinuation<Void, Never>] = []
            for entry in state.names.values {
                woken += entry.waiters.compactMap { $0.waiter.claim(byRelease: false) }
                entry.waiters = []
                guard var gate = entry.gate else { continue }
                gate.leaseEnd?.cancel()
                gate.leaseEnd = nil
                woken += gate.waiters.compactMap { $0.waiter.claim(byRelease: false) }
                gate.waiters = []
                entry.gate = gate
            }
            return woken
        }
        for continuation in waiting { continuation.resume() }
    }

    private func stopSubscribing() -> [RedisSubscriber] {
        closeGates()
        return state.withLock { state in
            state.shutDown = true
            defer { state.subscribers = [] }
            return state.subscribers
        }
    }
}

/// A fair lock's handoff message (``Scripts/releaseFair``): `LIFE VALUE` — how long the
/// handed key lives, in ms, and the value of the waiter it was handed to — or, from a release
/// of an earlier version, the value alone.
struct HandoffMessage: Sendable {
    /// The handed key's life; nil for a message of the value alone.
    private let life: Duration?
    /// The waiter's value, when the message carries a life.
    private let value: [UInt8]
    private let payload: [UInt8]

    init(_ payload: [UInt8]) {
        self.payload = payload
        if let space = payload.firstIndex(of: UInt8(ascii: " ")), space > 0, space <= 10,
           payload[..<space].allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
           let milliseconds = Int64(String(decoding: payload[..<space], as: UTF8.self)), milliseconds > 0 {
            life = .milliseconds(milliseconds)
            value = Array(payload[(space + 1)...])
        } else {
            life = nil
            value = payload
        }
    }

    /// Whether it hands the lock to the waiter whose value is `waiter`.
    func handsOver(to waiter: [UInt8]) -> Bool {
        value == waiter || payload == waiter
    }

    /// The handed key's life when the message hands the lock to `waiter` and says it.
    func life(for waiter: [UInt8]) -> Duration? {
        value == waiter ? life : nil
    }
}

/// A fair release's handoff on a client channel (``Scripts/releaseFair``,
/// ``Scripts/clientHandoffChannel(tag:)``): `LIFE LENGTH NAME VALUE` — the handed key's life in
/// ms, the name's length in bytes, the name, and the waiter's value, each followed by one space
/// but the last. The length lets both the name and the value hold spaces.
struct AddressedHandoff: Sendable {
    /// The lock's name.
    let name: String
    /// The handoff itself, as it reads on a name's own channel (`LIFE VALUE`).
    let message: HandoffMessage

    /// Nil when `payload` does not read as one.
    init?(_ payload: [UInt8]) {
        let space = UInt8(ascii: " ")
        let isDigit = { (byte: UInt8) in (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) }
        guard let lifeEnd = payload.firstIndex(of: space), lifeEnd > 0, payload[..<lifeEnd].allSatisfy(isDigit) else { return nil }
        let lengthStart = lifeEnd + 1
        guard let lengthEnd = payload[lengthStart...].firstIndex(of: space), lengthEnd > lengthStart, lengthEnd - lengthStart <= 9,
              payload[lengthStart..<lengthEnd].allSatisfy(isDigit),
              let length = Int(String(decoding: payload[lengthStart..<lengthEnd], as: UTF8.self))
        else { return nil }
        let nameStart = lengthEnd + 1
        // The name, a space, and a value of at least one byte.
        guard length < payload.count - nameStart - 1, payload[nameStart + length] == space else { return nil }
        name = String(decoding: payload[nameStart..<(nameStart + length)], as: UTF8.self)
        message = HandoffMessage(Array(payload[...lifeEnd]) + payload[(nameStart + length + 1)...])
    }
}
