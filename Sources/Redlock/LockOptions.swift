/// How a lock acquires, retries, extends and computes validity. The defaults are Redsync's, but
/// for waiting: `lock()` waits by time (``acquireTimeout``), not by a count of tries.
public struct LockOptions: Sendable {
    /// How long the keys live on the nodes (`PX`), and the most a lease can be valid.
    /// The default is 8 s.
    public var expiry: Duration = .seconds(8)
    /// How long `lock()` keeps trying before it gives up: it starts no attempt after this much
    /// time has passed since the call (the last attempt may take up to its budget). `nil` waits
    /// for as long as ``tries`` allows. The default is 30 s. `lock(timeout:)` overrides it.
    public var acquireTimeout: Duration? = .seconds(30)
    /// How many attempts `lock()` makes at most (`tryLock()` makes one). The default is
    /// `Int.max`: ``acquireTimeout`` decides, and a lock that is not ``fair`` waits for a holder
    /// in the same process instead of polling (see ``retryDelay``). With a count, every retry
    /// keeps ``retryDelay``, so the count bounds the time. With ``fastHandoff``, a node's
    /// confirmation of a subscription the waiter listens on (the name's release channel; for a
    /// fair lock, its handoff channel) calls for one more look at once, which is not a try (the
    /// wait it cuts short then ends when it would have): such a `lock()` makes one more attempt
    /// than `tries` per confirmation, one per node and one after each reconnect of a node's
    /// subscriber. (Redsync's is 32 tries,
    /// about 5 s with its delays.)
    public var tries: Int = .max
    /// The wait before each retry. The default is a random 50–250 ms. After a split vote (no
    /// holder has a quorum) or an attempt that followed a release it heard of, the next retry
    /// waits at most a random 0.5–5 ms instead. A `lock()` of a lock that is not ``fair``, with
    /// ``tries`` at `Int.max` (waiting by time), that finds the name taken while a lease of it
    /// acquired through the same client is held waits longer: for that lease's release (handed
    /// to the client's longest-waiting `lock()`) or, at the latest, its validity end — while
    /// another waiter of the name in the client polls the nodes at least as often as this delay
    /// would (the keys of a lease held here may be gone; a random delay counts as its longest,
    /// an exponential one as its cap before jitter). So a process does not poll the nodes for a
    /// lock it holds itself, and a waiter finds lost keys about as soon as its own delay would
    /// (a parked waiter whose delay backs off is not compared again: it stays parked).
    public var retryDelay: RetryDelay = .random(in: .milliseconds(50)...(.milliseconds(250)))
    /// The share of the expiry set aside for clock drift between client and nodes.
    /// The default is 0.01; it must be in [0, 1).
    public var driftFactor: Double = 0.01
    /// The share of the expiry one attempt may take (its time budget across all nodes):
    /// nodes that have not answered by then count as failed. The default is 0.05; it must be
    /// in (0, 1], and the budget it gives (``attemptBudget``) at least 1 µs.
    public var timeoutFactor: Double = 0.05
    /// Where the lock value comes from. The default is 16 random bytes, base64-encoded.
    public var value: LockValue = .random
    /// Whether an attempt returns as soon as its outcome is decided (a quorum granted, or a
    /// quorum became impossible) without waiting for the remaining nodes — unless those could
    /// still change what the failure is: show the key another holder's (or, extending and
    /// releasing, gone) on a quorum, or decide whether a refusal for good leaves too few nodes
    /// for any retry; then it waits for them, within its budget. A failed attempt's release to
    /// the nodes still out is then sent without waiting for them either (a frozen node costs
    /// nothing), except for a fair lock's waiter, whose later handoffs count only from nodes
    /// whose clean-up answered. (A cancelled caller waits only for the release on nodes that
    /// answered its acquire: it returns at once also with frozen nodes.) Such a release reaches
    /// the node even if the client is then released or shut down, but not if the process exits
    /// first: the key then stays until it expires. With `false`, an attempt waits for every node
    /// until its time budget runs out, so the keys land on as many nodes as possible. The
    /// default is `true`.
    public var failFast: Bool = true
    /// Whether each attempt contacts the nodes in a random order. The default is `false`.
    public var shuffleNodes: Bool = false
    /// Whether `extend()` re-creates the key on a node where it vanished (for example after that
    /// node restarted) instead of counting that node as lost. This favours availability over
    /// safety: it can extend a lease whose keys already expired. The default is `false`.
    public var setNXOnExtend: Bool = false
    /// Whether each acquire also yields a fencing token (``Lease/fencingToken``) that is strictly
    /// greater than the token of every earlier acquisition of the same name, as long as no node
    /// loses its data (with ``epochGuard``, also across a loss that takes the node's epoch marker).
    /// Costs a second round trip per acquire: it raises the nodes that granted to the token and
    /// checks the key is still ours there; the nodes that answered but did not grant get the token
    /// as a floor in the same moment, unawaited. The default is `false`.
    public var fencing: Bool = false
    /// When set, a node's vote counts only once the node has been up for at least this long, so a
    /// node that restarted without its data (and forgot the lock) cannot grant it to a second
    /// holder. Set it to the longest expiry any holder of these nodes uses. The uptime is read
    /// from `INFO server` once per connection (for a client made with `nodes:`, the answer its
    /// connection's handshake got, no round trip more; over connections of the caller's own,
    /// one `INFO` before the first vote counts). Redis counts it in whole seconds of its wall
    /// clock since its start, up to a second more than it ran, so the client takes a second
    /// (and a 10 ms clock tick) off the reported uptime: a restarted node is ignored for
    /// between `restartGuard` and `restartGuard` + 1 s. Being wall-clock time, the uptime also
    /// grows by any forward step of the node's clock after its start (NTP stepping it at
    /// boot): start Redis after the clock is synchronised. Needs `INFO` answered (`+info`; not
    /// a proxy that closes on it). The default is `nil` (every vote counts).
    public var restartGuard: Duration? = nil
    /// When set, each acquire also checks the node's **data epoch**: a marker key
    /// (`redlock:epoch`) holding the node's own `TIME`, in milliseconds, from when the marker was
    /// made (and the latest time an acquire saw). A node without the marker — it lost its data
    /// (`FLUSHALL`, a restart without persistence, an empty replacement) or is new — makes one
    /// and refuses its vote (``NodeFailure/Cause/epochTooYoung``) until the marker is this old, so
    /// that no lease the node might have held before the loss can still be valid when it votes
    /// again. With ``fencing``, a new marker also raises the node's fencing counter to the node's
    /// time in microseconds, so tokens keep increasing across the loss. A seed can be below an
    /// earlier token (a node clock set back, or nodes whose clocks disagree); the fencing round
    /// raises to the token the nodes that granted and, unawaited, those that answered without
    /// granting, so that matters only when the later quorum's other nodes were all out of reach
    /// when that token was issued. A node whose
    /// clock is behind the latest time it showed refuses (``NodeFailure/Cause/clockWentBack``).
    ///
    /// The check runs inside the acquire script: no extra round trip and no `INFO` permission;
    /// the acquire becomes a script (`EVALSHA`) instead of `SET NX`. Every client of a lock must
    /// turn it on: a client without it counts a node that lost its data at once. The wait is
    /// measured by the node's clock, which ``clockGuard`` watches. It does not catch a loss that
    /// keeps the marker: one key evicted or deleted by hand, the last writes before a crash lost
    /// by `appendfsync everysec` (``restartGuard`` catches that one), or a replica promoted with
    /// the marker but without the lock key (``replicaAcknowledgements`` prevents that one, for
    /// the replicas that acknowledged). Set it to at least the longest expiry any holder of
    /// these nodes uses; it must be at least ``expiry``. A node's first acquire waits this long.
    /// The default is `nil` (no check).
    public var epochGuard: Duration? = nil
    /// Whether each acquire also reads the node's wall clock (`TIME`, inside the acquire script)
    /// and refuses the vote of a node whose clock ran ahead of this client's monotonic clock —
    /// against the client's previous reading of that node and against a baseline at most
    /// ``epochGuard`` (or ``expiry``) old, by more than ``driftFactor`` × the time between plus
    /// 2 ms, after allowing for both round trips — because such a node (a clock running fast, or
    /// stepped forward) may have expired another holder's key early. The node stays refused
    /// (``NodeFailure/Cause/clockRanAhead(by:)``) for ``epochGuard`` (or, without it,
    /// ``expiry``) after the last reading that showed it, and for as long as its clock keeps
    /// running fast. The script itself refuses while the node's clock is behind the latest time
    /// it showed (``NodeFailure/Cause/clockWentBack(by:)``, naming how far): a key set then
    /// would expire early once the clock is put right. A clock set back and left behind for longer than the step grants again
    /// once it passes that time; its later correction forward is seen only by clients that read
    /// the node while it was behind.
    ///
    /// A client judges a node only from its second reading on: a node whose clock jumped before
    /// this client first talked to it, or between two acquires of a client that then crashed, is
    /// outside its reach; fencing tokens are the complete answer. Only acquires read the clock,
    /// not extends. Every client of a lock should turn it on. The acquire becomes a script
    /// (`EVALSHA`) instead of `SET NX`, and needs `+time` and `~redlock:epoch`. The default is
    /// `false`.
    public var clockGuard: Bool = false
    /// How many replicas of each node must acknowledge an acquire's or an extend's write before
    /// the node's vote counts. The default is 0 (no wait).
    ///
    /// For nodes that are masters with replicas behind a failover (Sentinel, a managed service):
    /// replication is asynchronous, so a replica promoted in its master's place may not have the
    /// lock key, forget the lease and grant the lock to a second holder. With `n` here, each
    /// acquire, fencing raise and extend is followed on the same connection by `WAIT n timeout`
    /// (the timeout: half of the ``attemptBudget`` or of the shortest command timeout, whichever
    /// is less, at least 1 ms), and a node's grant counts only when `n` replicas acknowledged it
    /// — the key, its expiry, and the fencing counter and epoch marker written by the same
    /// script. A failover to one of those replicas keeps the lease. A `WAIT` holds its connection
    /// until it answers, so the client sends every command of such a lock on a second connection
    /// per node, kept for these locks: they hold up no lock that does not wait (they can hold up
    /// each other). Redis notices a `WAIT`'s timeout at its next server tick, up to 100 ms late at
    /// the default `hz` of 10 (1 s at `hz 1`), so those connections allow each command 150 ms
    /// beyond the node's command timeout before they count the node as silent; with an
    /// ``attemptBudget`` under about 250 ms, a node whose replicas do not acknowledge may still
    /// answer after the attempt is decided and count as silent (`noAnswer`) rather than
    /// `notReplicated`. Give every lock object of one name the same setting: commands on the two
    /// connections to a node run in no set order (an unlock goes on the lease's own connections,
    /// but an extend with ``setNXOnExtend`` through a lock with the other setting can re-create
    /// a key after the unlock deleted it).
    ///
    /// It does not make replication synchronous (Redis's `WAIT` documentation says the same): a
    /// failover that promotes a replica that did not acknowledge — one of more replicas than
    /// `n`, or one that lost the write in a restart of its own — can still lose the key. Set it
    /// to the number of replicas the failover may choose from. A node with fewer replicas
    /// connected refuses every vote after the timeout
    /// (``NodeFailure/Cause/notReplicated(acknowledged:required:)``); a replica answering in the
    /// master's place refuses the script (`READONLY`), or, when writable, the `WAIT`. Needs
    /// `+wait`. Since a command follows the script on the connection, a node that forgot the
    /// script (`SCRIPT FLUSH`) refuses that vote once.
    public var replicaAcknowledgements: Int = 0
    /// Whether a release is published on a per-name channel (`PUBLISH`) and a waiting `lock()`
    /// subscribes to it (one subscriber connection per node and client), so that it retries as
    /// soon as a release in *another process* is announced instead of sleeping out its retry
    /// delay (which stays the fallback when a message is missed). The default is `true`.
    ///
    /// Within one client a release always hands the lock over, with or without this option: the
    /// longest-waiting `lock()` has its next attempt queued right behind the deletes on each
    /// node's connection (no Redis permission involved).
    public var fastHandoff: Bool = true
    /// Whether the lock is *fair*: first come, first served across processes. The default is
    /// `false` (whoever's attempt lands first after a release wins, as in Redsync).
    ///
    /// A fair lock's waiters queue on each node, in the order of a ticket taken when their
    /// `lock()` began (the client's wall clock in µs: across machines, fairness is only as good
    /// as their clocks agree; safety does not depend on it). A release hands the lock to the
    /// first live waiter on each node: it sets the key to that waiter's value and publishes
    /// `LIFE LENGTH NAME VALUE` on the waiter's client's channel, `redlock:handoff:~TAG`, one
    /// for every name (the client's tag leads its fair locks' random values: ``LockValue/random``;
    /// a value of the caller's own goes to `redlock:handoff:NAME` as `LIFE VALUE` unless it starts
    /// with a tag), so no other process wakes for it. The waiter counts each node's message as that
    /// node's grant and, once a quorum handed it the lock, holds a lease with no round trip of
    /// its own, valid from the start of its `lock()`'s first attempt — every handoff to its value
    /// came after that — minus the drift allowance, the Redlock rule with that start. It counts
    /// no node where a clean-up of one of its failed attempts may have deleted something (the
    /// rule and its mutants are model-checked: `handoff-grant` in `Models/`). It claims instead,
    /// with an ordinary attempt that resets the keys' expiry and counts from its own start, when
    /// no quorum of messages came within 2 ms (at most the attempt budget) of the first one it
    /// counted, at once when the first message cannot count, and when less than half the
    /// validity would be left. With fencing, the restart guard, replica acknowledgements, fast
    /// handoff off or a value generator of its own, a waiter always claims. A handed key lives
    /// the releaser's expiry when the releaser's lock counts handoffs as grants and some
    /// subscriber heard the message, else twice the attempt budget. Waiters of a version before
    /// this rule do not read the new message, and its releasers publish where tagged waiters do
    /// not listen; either way the waiter claims at its retry delay: upgrade every process of a
    /// fair lock together. A free node grants only the first in line. An entry
    /// lives for the waiter's retry delay plus twice the attempt budget and is renewed by each
    /// attempt; one that gives up leaves the queue. So a waiter that died holds up the others by
    /// at most that plus one expiry, as a holder that dies does. Every lock object of one name
    /// should use the same options. Acquire and release become scripts (`EVALSHA`) on the keys
    /// `redlock:queue:NAME` and `redlock:queue-deadlines:NAME` (which expire with their last
    /// entry), and need `+time`, the sorted-set commands and the `redlock:handoff:*` channels
    /// (README's ACL rules; ``RedlockClient/checkNodes(for:)`` checks them).
    /// Within one client, an unlock does not hand the lock to a local waiter ahead of the queue.
    /// Not combined with ``epochGuard`` or ``clockGuard``.
    public var fair: Bool = false
    /// Whether concurrent `lock()` calls for this name through one client queue up locally, so
    /// that only one of them at a time contends with other processes: first come, first served;
    /// a holder that never unlocks is passed over when its lease's validity ends. The local wait
    /// counts against ``acquireTimeout``. The default is `false`.
    public var singleFlight: Bool = false

    /// Options with every default.
    public init() {}

    /// Options with the given values; the rest keep their defaults.
    public init(
        expiry: Duration = .seconds(8),
        acquireTimeout: Duration? = .seconds(30),
        tries: Int = .max,
        retryDelay: RetryDelay = .random(in: .milliseconds(50)...(.milliseconds(250))),
        driftFactor: Double = 0.01,
        timeoutFactor: Double = 0.05,
        value: LockValue = .random,
        failFast: Bool = true,
        shuffleNodes: Bool = false,
        setNXOnExtend: Bool = false,
        fencing: Bool = false,
        restartGuard: Duration? = nil,
        epochGuard: Duration? = nil,
        clockGuard: Bool = false,
        fastHandoff: Bool = true,
        singleFlight: Bool = false,
        fair: Bool = false,
        replicaAcknowledgements: Int = 0
    ) {
        self.expiry = expiry
        self.acquireTimeout = acquireTimeout
        self.tries = tries
        self.retryDelay = retryDelay
        self.driftFactor = driftFactor
        self.timeoutFactor = timeoutFactor
        self.value = value
        self.failFast = failFast
        self.shuffleNodes = shuffleNodes
        self.setNXOnExtend = setNXOnExtend
        self.fencing = fencing
        self.restartGuard = restartGuard
        self.epochGuard = epochGuard
        self.clockGuard = clockGuard
        self.fastHandoff = fastHandoff
        self.singleFlight = singleFlight
        self.fair = fair
        self.replicaAcknowledgements = replicaAcknowledgements
    }

    /// The time budget of one attempt: ``expiry`` × ``timeoutFactor``.
    public var attemptBudget: Duration {
        Timing.attemptBudget(expiry: expiry, timeoutFactor: timeoutFactor)
    }

    /// Throws ``RedlockError/Code-swift.struct/invalidConfiguration`` naming the first bad option.
    func validate(lockName: String) throws(RedlockError) {
        func fail(_ message: String) -> RedlockError { .invalid(message, lockName: lockName) }
        guard expiry > .zero else { throw fail("expiry must be positive, got \(expiry)") }
        guard expiry.millisecondsRoundedUp <= Int64(Int32.max) else { throw fail("expiry \(expiry) is too long: at most \(Int32.max) ms (about 24.8 days)") }
        guard tries >= 1 else { throw fail("tries must be at least 1, got \(tries)") }
        if value.fixedValue?.isEmpty == true { throw fail("a fixed value must not be empty") }
        if let acquireTimeout, acquireTimeout < .zero {
            throw fail("acquireTimeout must not be negative, got \(acquireTimeout)")
        }
        guard driftFactor >= 0, driftFactor < 1 else { throw fail("driftFactor must be in [0, 1), got \(driftFactor)") }
        guard timeoutFactor > 0, timeoutFactor <= 1 else {
            throw fail("timeoutFactor must be in (0, 1], got \(timeoutFactor)")
        }
        // A budget that rounds to nothing fails every attempt, and every release reports no
        // quorum, whatever the nodes did.
        guard attemptBudget >= .microseconds(1) else {
            throw fail("timeoutFactor \(timeoutFactor) × expiry \(expiry.millisecondsDescription) leaves an attempt \(attemptBudget.wholeNanoseconds) ns to get its answers: at least 1 µs is needed (a round trip takes far longer)")
        }
        if let restartGuard, restartGuard <= .zero {
            throw fail("restartGuard must be positive when set, got \(restartGuard)")
        }
        if let epochGuard, epochGuard < expiry {
            throw fail("epochGuard must be at least the expiry (\(expiry)) when set, got \(epochGuard)")
        }
        if let epochGuard, epochGuard.millisecondsRoundedUp > Int64(Int32.max) {
            throw fail("epochGuard \(epochGuard) is too long: at most \(Int32.max) ms (about 24.8 days)")
        }
        guard replicaAcknowledgements >= 0 else {
            throw fail("replicaAcknowledgements must not be negative, got \(replicaAcknowledgements)")
        }
        if fair, epochGuard != nil || clockGuard {
            throw fail("a fair lock is not combined with epochGuard or clockGuard")
        }
        guard Timing.validity(expiry: expiry, elapsed: .zero, driftFactor: driftFactor) > .zero else {
            throw fail("expiry \(expiry) leaves no validity after the drift allowance")
        }
    }
}
