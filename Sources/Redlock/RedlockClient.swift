import CoreMetrics
import Logging
import RedlockTransport
import Synchronization
import Tracing

/// A Redlock client over N independent Redis nodes (masters with no replication between them).
///
/// Create one per process and share it: it holds one pipelined connection per node (and, once a
/// `lock()` waits with ``LockOptions/fastHandoff``, one subscriber connection per node), all
/// served by one event-loop thread, and one timer thread. Locks
/// made from it (``makeLock(_:options:)``) fan every operation out to all nodes concurrently and
/// succeed on a quorum of `N/2 + 1`.
///
/// ```swift
/// let client = try RedlockClient(endpoints: [.hostname("10.0.0.1"), .hostname("10.0.0.2"), .hostname("10.0.0.3")])
/// let lock = try client.makeLock("migrations")
/// try await lock.withLock { lease in
///     try await runMigrations()
/// }
/// await client.shutdown()
/// ```
public final class RedlockClient: Sendable {
    /// The connections, one per node, in the order given.
    public let nodes: [RedisConnection]
    /// This client among the process's clients (from 1, never reused): a lease records the
    /// client that made it (``Lease/origin``).
    let serial: UInt64 = RedlockClient.serials.add(1, ordering: .relaxed).newValue
    private static let serials = Atomic<UInt64>(0)
    /// A second connection per node, made by the client and used only by locks whose grants
    /// wait for replicas (``LockOptions/replicaAcknowledgements``), so their `WAIT`s hold up no
    /// other lock's commands. It connects on first use.
    let acknowledgedNodes: [RedisConnection]
    /// The shortest command timeout of the nodes' connections.
    let shortestCommandTimeout: Duration
    /// How many nodes must grant an operation: `nodes.count / 2 + 1`.
    public let quorum: Int
    /// `0..<nodes.count`, built once: the order of every unshuffled fan-out.
    let nodeIndices: [Int]
    /// The nodes' endpoints, in order, for votes and errors.
    let endpoints: [RedisEndpoint]
    let logger: Logger
    let metrics: LockMetrics
    /// Which nodes answer; logs a node going down or coming back once.
    let health: NodeHealth
    /// Where spans go; nil when tracing is off.
    let tracer: (any Tracer)?
    /// What this client knows of each node's uptime (``LockOptions/restartGuard``), from its
    /// shared connections, and from those of the locks that wait for replicas.
    let uptimes: NodeUptimes
    let acknowledgedUptimes: NodeUptimes
    /// What this client has seen of each node's wall clock (``LockOptions/clockGuard``).
    let clocks: NodeClocks
    /// Releases heard, waiters, subscriptions and single-flight gates: when to try again.
    let coordination: LocalCoordination
    /// Keeps the budget of every fan-out and the retry delay of every wait for a release.
    let deadlines: DeadlineTimer
    /// The leases running scopes hold: one scope per lease; interrupted by an outside unlock
    /// or by ``shutdown()``.
    let scopes = ScopeRegistry()
    /// Sends fan-outs on ``nodes`` and starts their budgets.
    let sender: FanOutSender
    private let ownsConnections: Bool
    /// Set once ``shutdown()`` begins: read on every call, so an atomic rather than the lock.
    private let isShutDown = Atomic<Bool>(false)
    /// Whether a long hold of the event loop was logged at warning level (``noteLongHold(_:)``).
    private let warnedOfLongHold = Atomic<Bool>(false)
    /// The nodes that refused a release's announcement (warned about once each).
    private let refusedAnnouncements = Mutex<Set<Int>>([])

    /// Creates a client that opens one connection per node configuration.
    ///
    /// - Parameters:
    ///   - nodes: The nodes; at least one, each a different server.
    ///   - logger: Where per-node failures are logged (at debug level; a node that stops or
    ///     starts answering at `warning` and `info`, one refused as another node's server or for
    ///     want of its `run_id` at `error`). The default logs under the label `swift-redlock`
    ///     through the process's logging backend. Lines may be logged on the client's I/O
    ///     thread: a handler that waits (swift-log's `StreamLogHandler` on a stderr nobody
    ///     reads) holds up every node's I/O while it does.
    ///   - metrics: The metrics backend for the counters and timers listed in the documentation.
    ///     The default is the process's bootstrapped `MetricsSystem`.
    ///   - tracer: Where spans go (swift-distributed-tracing): `redlock.acquire`, `redlock.extend`
    ///     and `redlock.release`, with the lock's name, node count, quorum, attempts and outcome
    ///     (`redlock.outcome`: `ok` or the error code). The default, `nil`, is the process's
    ///     bootstrapped `InstrumentationSystem.tracer`, read once here; with none bootstrapped no
    ///     span is made (no cost).
    ///   - busyPoll: How long the client's event-loop thread keeps polling its sockets without
    ///     blocking after a turn in which it handled a reply (or message) or ran a task of
    ///     ``executor``, counted from the end of that turn, before it sleeps in `epoll_wait`;
    ///     between polls it calls `sched_yield()`, which lets other threads runnable on the same
    ///     CPU go first. Default `.zero`: it sleeps at once. From `.zero` to 10 ms. A budget near
    ///     the round trip to the nodes lets the next reply be read by a thread that is already
    ///     running, which saves the wake-up of a sleeping CPU (tens of µs on virtual machines)
    ///     per round trip. The price: up to `busyPoll` of CPU time after every such turn, per
    ///     client (each has its own thread); under steady traffic the thread never sleeps and
    ///     takes up to a whole CPU. The kernel's `SO_BUSY_POLL` (socket(7)) makes the same trade
    ///     for network devices. Figures in README's Performance section.
    /// - Throws: ``RedlockError/Code-swift.struct/invalidConfiguration`` when `nodes` is empty,
    ///   names one endpoint twice (its votes would count twice; host names compared without
    ///   regard to case or a root dot: `Redis-A.example.` is `redis-a.example`), or has a node whose settings no connection could work with (a connect
    ///   or command timeout that is not positive, `maximumQueuedCommands` below 1, a user name
    ///   without a password, a negative database), or `busyPoll` is outside `.zero...10 ms`.
    ///
    /// Two names of one server (`localhost:6379` and `127.0.0.1:6379`) pass that check, and are
    /// caught when they connect: a connection that reaches the numeric address (with the same
    /// TLS server name), or the Unix socket file, that another node's open connections reach is
    /// refused, with ``RedisError/Code-swift.struct/invalidAddress`` naming both nodes
    /// (permanent; logged once at `error`), so that server votes once: the name that connects
    /// later counts as a node that refuses every command, for as long as any connection of the
    /// other (either lane, its subscriber) is open there.
    /// One server at two addresses (a TCP address and its Unix socket; IPv4 and IPv6:
    /// `localhost` may resolve to `::1` first; a second interface) is caught the same way by its
    /// `run_id`, which each connection's and subscriber's handshake asks (`INFO server`, in the
    /// round trip of the order barrier's `CLIENT INFO`); where `INFO` is refused (an ACL without
    /// `+info`), closed on in connects over a second (a proxy that does not pass it) or passed
    /// to another server (a proxy), only ``audit(for:)`` can tell. A node whose server told its
    /// `run_id` once does not vote on a connection that did not get it (refused with
    /// ``RedisError/Code-swift.struct/unexpectedReply``, transient, logged at `error`).
    public convenience init(
        nodes: [RedisConnectionConfiguration],
        logger: Logger = Logger(label: "swift-redlock"),
        metrics: any MetricsFactory = MetricsSystem.factory,
        tracer: (any Tracer)? = nil,
        busyPoll: Duration = .zero
    ) throws(RedlockError) {
        try Self.validate(nodes)
        guard busyPoll >= .zero, busyPoll <= Self.longestBusyPoll else {
            throw .invalid("busyPoll must be from zero to 10 ms, got \(busyPoll)")
        }
        let loop = RedisEventLoop(name: "redlock-io", busyPoll: busyPoll)
        let health = NodeHealth(endpoints: nodes.map(\.endpoint), logger: logger, metrics: metrics, vetsConnections: true)
        self.init(
            validated: nodes.enumerated().map { index, node in RedisConnection(configuration: node, eventLoop: loop, vet: health.vet(for: index), node: index) },
            health: health, owning: true, logger: logger, metrics: metrics, tracer: tracer
        )
    }

    /// Creates a client for endpoints with default connection settings; the other parameters as
    /// for ``init(nodes:logger:metrics:tracer:busyPoll:)``.
    public convenience init(
        endpoints: [RedisEndpoint],
        logger: Logger = Logger(label: "swift-redlock"),
        metrics: any MetricsFactory = MetricsSystem.factory,
        tracer: (any Tracer)? = nil,
        busyPoll: Duration = .zero
    ) throws(RedlockError) {
        try self.init(
            nodes: endpoints.map { RedisConnectionConfiguration(endpoint: $0) }, logger: logger, metrics: metrics, tracer: tracer, busyPoll: busyPoll
        )
    }

    /// The longest `busyPoll` a client accepts.
    static let longestBusyPoll: Duration = .milliseconds(10)

    /// How long ``shutdown()`` waits for interrupted scopes to end and release their leases:
    /// 500 ms.
    public static let scopeReleaseWait: Duration = .milliseconds(500)

    /// Creates a client over connections you own; ``shutdown()`` leaves them open. Their event
    /// loop is the one they were made with (for `RedisConnection(configuration:)`, the loop they
    /// all share, which never polls busily): a client that should poll busily makes its own
    /// connections (``init(nodes:logger:metrics:tracer:busyPoll:)``). No connection of such a
    /// client is vetted for two names of one server (see
    /// ``init(nodes:logger:metrics:tracer:busyPoll:)``): run ``audit(for:)`` once to check.
    ///
    /// - Throws: ``RedlockError/Code-swift.struct/invalidConfiguration`` as
    ///   ``init(nodes:logger:metrics:tracer:busyPoll:)`` does, for the connections'
    ///   configurations.
    public convenience init(
        connections: [RedisConnection],
        logger: Logger = Logger(label: "swift-redlock"),
        metrics: any MetricsFactory = MetricsSystem.factory,
        tracer: (any Tracer)? = nil
    ) throws(RedlockError) {
        try Self.validate(connections.map(\.configuration))
        // The caller's connections, and so the votes, go unvetted: so does everything else.
        let health = NodeHealth(endpoints: connections.map(\.configuration.endpoint), logger: logger, metrics: metrics, vetsConnections: false)
        self.init(validated: connections, health: health, owning: false, logger: logger, metrics: metrics, tracer: tracer)
    }

    private init(
        validated nodes: [RedisConnection], health: NodeHealth, owning: Bool, logger: Logger, metrics: any MetricsFactory, tracer: (any Tracer)?
    ) {
        self.nodes = nodes
        quorum = Timing.quorum(nodeCount: nodes.count)
        nodeIndices = Array(nodes.indices)
        endpoints = nodes.map(\.configuration.endpoint)
        self.logger = logger
        self.metrics = LockMetrics(factory: metrics)
        self.health = health
        let global = InstrumentationSystem.tracer
        self.tracer = tracer ?? (global is NoOpTracer ? nil : global)
        uptimes = NodeUptimes(nodeCount: nodes.count)
        acknowledgedUptimes = NodeUptimes(nodeCount: nodes.count)
        clocks = NodeClocks(nodeCount: nodes.count)
        deadlines = DeadlineTimer(loop: nodes.first?.eventLoop)
        shortestCommandTimeout = nodes.map(\.configuration.commandTimeout).min() ?? .seconds(1)
        // One server listed under two names would vote twice: every connection the client makes
        // is vetted (NodeHealth.vet(for:)).
        acknowledgedNodes = nodes.enumerated().map { index, node in
            var configuration = node.configuration
            configuration.commandTimeout += ReplicaWait.lateAnswerAllowance
            // The index its shared-lane connection has: the client's own for connections it
            // made, none for one made outside a client (another client's may collide, which
            // only keeps more lost releases).
            return RedisConnection(configuration: configuration, eventLoop: node.eventLoop, vet: health.vet(for: index), node: node.nodeIndex)
        }
        sender = FanOutSender(nodes: nodes, acknowledgedNodes: acknowledgedNodes, deadlines: deadlines)
        let refusedSubscriptions = Mutex(Set<Int>())
        let endpoints = nodes.map(\.configuration.endpoint)
        coordination = LocalCoordination(
            nodes: nodes, sender: sender, timer: deadlines, vet: health.vet(for:),
            refused: { [logger] node, error in
                // Once per node: each subscription of a name would repeat it.
                guard refusedSubscriptions.withLock({ $0.insert(node).inserted }) else { return }
                logger.warning(
                    "redlock node refuses SUBSCRIBE, so waiters here hear no releases from it and poll: grant the user the channel patterns \"\(Scripts.releaseChannel("*"))\" and \"\(Scripts.handoffChannel("*"))\" (or \"\(Scripts.handoffChannel("~*"))\"), unless SUBSCRIBE is renamed away there",
                    metadata: ["node": "\(node)", "endpoint": "\(endpoints[node])", "error": "\(error)"]
                )
            }
        )
        ownsConnections = owning
        // Weakly: the loop lives as long as the connections, which the client owns. The loop
        // tells on its own thread; the log handler and the metrics backend may block, so they
        // are called from the global executor.
        if owning {
            nodes.first?.eventLoop.reportLongHolds { [weak self] held in
                Task(executorPreference: globalConcurrentExecutor) { self?.noteLongHold(held) }
            }
        }
    }

    /// Records that tasks on ``executor`` held the event loop's thread for `held` without
    /// suspending: a warning the first time, then at debug level (a task that holds it often
    /// would flood the log otherwise).
    private func noteLongHold(_ held: Duration) {
        metrics.eventLoopHeld.recordNanoseconds(held.wholeNanoseconds)
        let message: Logger.Message = "redlock client's event loop ran tasks on its executor without suspending (or was paused by the system while it ran them); no reply was read meanwhile"
        let metadata: Logger.Metadata = ["held": "\(held)"]
        if warnedOfLongHold.exchange(true, ordering: .relaxed) {
            logger.debug(message, metadata: metadata)
        } else {
            logger.warning(message, metadata: metadata)
        }
    }

    /// Warns once per node that refuses release announcements (fast handoff then degrades to
    /// polling for waiters elsewhere) and counts every refusal. `fair`: the votes are a fair
    /// lock's release, which publishes on a handoff channel when someone is in line (the vote
    /// does not say which channel was refused, so the warning names both patterns).
    func noteRefusedAnnouncements(in votes: [Vote?], fair: Bool) {
        for (node, vote) in votes.enumerated() where vote == .granted(Vote.announcementRefused) {
            metrics.announcementsRefused.increment()
            // Once per node and kind of lock: a fair one's refusal names a pattern the other's does not.
            if refusedAnnouncements.withLock({ $0.insert(node * 2 + (fair ? 1 : 0)).inserted }) {
                let patterns = fair
                    ? "the channel patterns \"\(Scripts.releaseChannel("*"))\" and \"\(Scripts.handoffChannel("*"))\""
                    : "the channel pattern \"\(Scripts.releaseChannel("*"))\""
                logger.warning(
                    "redlock node refuses release announcements (PUBLISH), so waiters elsewhere fall back to polling: grant the user \(patterns), unless PUBLISH is renamed away there",
                    metadata: ["node": "\(node)", "endpoint": "\(endpoints[node])"]
                )
            }
        }
    }

    deinit {
        // Without a shutdown() the subscribers and the loop's thread would keep running;
        // connections close by themselves when their last reference goes.
        coordination.beginShutdown()
        deadlines.stop()
        if ownsConnections { nodes.first?.eventLoop.beginShutdown() }
    }

    /// Throws ``RedlockError/Code-swift.struct/invalidConfiguration`` for no nodes, a node
    /// listed twice (host names compared as DNS compares them: without regard to case, a
    /// fully qualified name's root dot left out; over TLS with its server name, which a
    /// gateway may route by; two
    /// names of one address or server are refused when they connect, see
    /// ``NodeHealth/vet(_:peer:server:)``, and ``audit(for:)`` compares the servers' run ids), or a
    /// setting no connection could work with (an empty host name, a port outside 1–65535, …).
    private static func validate(_ configurations: [RedisConnectionConfiguration]) throws(RedlockError) {
        guard !configurations.isEmpty else { throw .invalid("a client needs at least one node") }
        var seen = Set<String>()
        for configuration in configurations {
            let endpoint = configuration.endpoint
            if let host = endpoint.host, host.isEmpty || host.utf8.contains(0) {
                throw .invalid("node \(endpoint): the host name must not be empty or contain a NUL byte")
            }
            if let path = endpoint.socketPath, path.utf8.contains(0) {
                throw .invalid("node \(endpoint): the socket path must not contain a NUL byte")
            }
            if let port = endpoint.port, !(1...65_535).contains(port) {
                throw .invalid("node \(endpoint): the port must be from 1 to 65535, got \(port)")
            }
            // `cache.example.` is `cache.example` with its root dot: the same host. Over TLS, a
            // gateway on one address may route each server name to another server (as the
            // connections' vetting tells them apart): the name is part of the node.
            func bare(_ name: String) -> String { RedisEndpoint.relativeName(name).lowercased() }
            let routed = configuration.tls.map { " sni \(bare($0.serverName ?? endpoint.host ?? ""))" } ?? ""
            let key = endpoint.host.map { "tcp \(bare($0)):\(endpoint.port ?? 0)\(routed)" } ?? "unix \(endpoint.socketPath ?? "")"
            guard seen.insert(key).inserted else {
                throw .invalid("node \(endpoint) is listed twice; each node must be an independent server")
            }
            guard configuration.connectTimeout > .zero, configuration.commandTimeout > .zero else {
                throw .invalid(
                    "node \(endpoint): connectTimeout and commandTimeout must be positive, got \(configuration.connectTimeout) and \(configuration.commandTimeout)"
                )
            }
            guard configuration.maximumQueuedCommands >= 1 else {
                throw .invalid("node \(endpoint): maximumQueuedCommands must be at least 1, got \(configuration.maximumQueuedCommands)")
            }
            if configuration.username != nil, configuration.password == nil {
                throw .invalid("node \(endpoint): a user name needs a password (AUTH user password); without one the connection would be the default user's")
            }
            if let database = configuration.database, database < 0 {
                throw .invalid("node \(endpoint): database must not be negative, got \(database)")
            }
        }
    }

    /// Makes a lock on `name` with `options`.
    ///
    /// The lock key on every node is `name` itself (the same `SET name value NX PX ms` and
    /// compare-and-delete contract as Redsync, so services using either exclude each other on
    /// one name). Names starting with `redlock:` are reserved for the library's own keys
    /// (`redlock:fence`, the fencing counter) and channels (`redlock:released:NAME`).
    ///
    /// - Throws: ``RedlockError/Code-swift.struct/invalidConfiguration`` for an empty or reserved
    ///   name or invalid options (non-positive expiry, tries < 1, drift factor outside [0, 1), …).
    public func makeLock(_ name: String, options: LockOptions = LockOptions()) throws(RedlockError) -> DistributedLock {
        guard !name.isEmpty else { throw .invalid("the lock name must not be empty") }
        // Compared as bytes, as Redis compares keys: a combining mark after the prefix joins its
        // last character, and `hasPrefix` would let such a name through.
        guard !name.utf8.starts(with: Scripts.reservedPrefix.utf8) else {
            throw .invalid("lock names starting with \"\(Scripts.reservedPrefix)\" are reserved for the library's own keys, got \(RedlockError.shown(name))")
        }
        try options.validate(lockName: name)
        return DistributedLock(name: name, options: options, client: self)
    }

    /// Closes the connections the client opened (and its subscriber connections) and stops their
    /// threads: when it returns, the client's I/O and timer threads have ended (a thread still
    /// opening a connection ends within the connect timeout, below). Locks made from the client fail with
    /// ``RedlockError/Code-swift.struct/clientShutDown`` afterwards.
    ///
    /// Commands still queued (a release behind an acquire a stalled node has not answered) are
    /// written first, and answers are awaited for at most the command timeout, capped at 500 ms.
    /// A command still waiting for its connection to open is written once it opens (within the
    /// connect's time limit, ``RedisConnectionConfiguration/connectTimeout``, also after
    /// `shutdown()` returned), then that socket closes. A client
    /// released without `shutdown()` writes its queued commands too (unless a socket refuses
    /// the write), but closes its sockets without waiting for answers.
    ///
    /// Scopes still running (``DistributedLock/withLock(isolation:extendWhenRemaining:maximumHoldTime:safetyMargin:_:)``,
    /// ``DistributedLock/withLease(isolation:_:extendWhenRemaining:maximumHoldTime:safetyMargin:onExtended:_:)``)
    /// are interrupted first: their bodies are cancelled, they throw
    /// ``RedlockError/Code-swift.struct/clientShutDown``, and their leases are released before
    /// the connections close, if the bodies end within ``scopeReleaseWait``; a lease whose
    /// body ends later stays on the nodes until it expires. A `withLock` still acquiring is
    /// waited for the same way: its body does not run, and the lease it gets is released.
    /// A `lock()` or `tryLock()` under way (a `withLock` still acquiring too) has its attempt
    /// ended at once: decided on the answers in, what it set is released (where a node has not
    /// answered, the release follows the attempt on that node's connection), and it throws
    /// ``RedlockError/Code-swift.struct/clientShutDown``, as does one whose attempt won as the
    /// shutdown began (that lease is released); shutdown waits for those releases within the
    /// same limit. In all, with frozen nodes it takes up to about a second (this wait and the
    /// connections' wait for answers); with ``LockOptions/replicaAcknowledgements``, up to half
    /// the command timeout and 150 ms more than this wait: a `WAIT` under way is let end, so
    /// that the release queued behind it runs.
    /// An ``DistributedLock/unlock(_:)`` under way when `shutdown()` begins, or begun while it
    /// waits, is waited for too (within the same limit: a lease returned just before the
    /// shutdown began and released just after still goes); one that begins once that wait is
    /// over throws ``RedlockError/Code-swift.struct/clientShutDown``, but in the body of a
    /// scope still running (its clean-up before it ends: shutdown waits for that scope anyway).
    ///
    /// The caller's cancellation does not cut these waits short (a cancelled service group, a
    /// shutdown from a cancelled task): they are what keeps a lease from staying on the nodes
    /// until it expires, and each is bounded. A scope's body that calls `shutdown()` itself
    /// cannot end before it returns: that scope is not waited for, and its lease stays on the
    /// nodes until it expires.
    public func shutdown() async {
        // A scope's body calling it: that scope cannot end before it returns, so it is not
        // waited for.
        let ownScopes = scopes.enclosingHere
        // On the caller's thread, before anything is awaited: a lock() that returns after this
        // call began finds the client shutting down (in a task of its own, the flag was set
        // only once that task ran, milliseconds later on a busy pool).
        isShutDown.store(true, ordering: .releasing)
        // Before the timer stops: a gate's lease-end action would keep it running. Waiters
        // return now (their next attempt finds the client shut down), so no release below
        // hands them the lock.
        coordination.closeGates()
        // Running scopes stop their bodies now and release their leases while the connections
        // are open, for at most `scopeReleaseWait`: a body that ignores cancellation longer
        // leaves its keys until they expire.
        scopes.close()
        scopes.interruptAll { name in
            RedlockError(
                code: .clientShutDown, lockName: name,
                message: "the client shut down while the body ran; the body was cancelled, and its lease released if the body ended within \(Self.scopeReleaseWait)"
            )
        }
        // Acquires under way end their attempts now, on the answers in (those sent from now on
        // as they are sent): their clean-up goes out below, while the connections are open.
        deadlines.endAtShutdown()
        // The waits in a task of their own, which the caller's cancellation does not reach.
        await Task { await self.shutDownUncancelled(leavingScopes: ownScopes) }.value
    }

    private func shutDownUncancelled(leavingScopes ownScopes: Int) async {
        await scopes.waitUntilEmpty(until: .now + Self.scopeReleaseWait, leaving: ownScopes)
        deadlines.stop()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.coordination.shutdown() }
            // The client made these whoever owns the others. A WAIT may block on them for half
            // the node's command timeout (and be answered a server tick late): the grace lets it
            // end, so that an acquire's release queued behind it runs.
            for (node, shared) in zip(acknowledgedNodes, nodes) {
                let waitEnds = shared.configuration.commandTimeout / 2 + ReplicaWait.lateAnswerAllowance
                let grace = max(waitEnds, min(node.configuration.commandTimeout, .milliseconds(500)))
                group.addTask { await node.shutdown(grace: grace) }
            }
            if ownsConnections {
                for node in nodes { group.addTask { await node.shutdown() } }
            }
        }
        if ownsConnections, let loop = nodes.first?.eventLoop {
            // The client made the loop for its own connections: its thread ends with them.
            await loop.shutdown()
        }
        // Last: the timer's thread ends now rather than when a subscription's linger would.
        await deadlines.shutdown()
    }

    /// The executor of the client's I/O thread, for a task executor preference (SE-0417):
    /// code of a task that prefers it runs on the thread that reads the nodes' replies, so each
    /// decided fan-out resumes the caller where the reply was read, without waking a thread of
    /// the global pool (one thread wake-up per round trip instead of two; see README's
    /// Performance section).
    ///
    /// ```swift
    /// try await withTaskExecutorPreference(client.executor) {
    ///     for job in jobs { try await lock.withLock { _ in try await enqueueOnce(job) } }
    /// }
    /// ```
    ///
    /// Only for short, non-blocking work: while code runs on this thread, no reply of any node
    /// is read and no command timeout is checked, and a wait whose deadline was set on this
    /// thread (a fan-out's budget, a retry delay, a fair waiter's claim delay) may end only once
    /// that code returns, for every lock of the client. A `withLock`
    /// body called from such a task runs there too (its lease extender and deadline watch run
    /// on the global executor): a body that computes for long without suspending keeps the
    /// extensions' replies unread, so its scope ends in ``RedlockError/Code-swift.struct/leaseLost``
    /// at the lease's deadline; the error's message then says that tasks here held the thread,
    /// and for how long. A client that made its connections records each time tasks here held
    /// the thread 100 ms or more in `redlock_event_loop_held_seconds`, and logs it (a warning the
    /// first time, then at debug level). An actor called from such a task runs on this thread as well
    /// (SE-0417: a default actor runs on its caller's preferred executor), jobs of other tasks
    /// included. Entering and leaving the preference each cost a hop, so it pays for a sequence
    /// of lock operations, not for one.
    ///
    /// After ``shutdown()``, or while the loop cannot start (no file descriptor left), tasks
    /// that prefer it run on the global executor. Over connections you own
    /// (``init(connections:logger:metrics:tracer:)``) it is the first node's event loop: for
    /// connections made with `RedisConnection(configuration:)` that is the loop every such
    /// connection in the process shares, which never stops, so blocking it stalls all of them.
    public var executor: any TaskExecutor { nodes[0].eventLoop }

    /// Throws ``RedlockError/Code-swift.struct/clientShutDown`` once ``shutdown()`` has begun.
    func checkOpen(lockName: String) throws(RedlockError) {
        if isShuttingDown { throw shutDownError(lockName: lockName) }
    }

    /// Whether ``shutdown()`` has begun.
    var isShuttingDown: Bool { isShutDown.load(ordering: .acquiring) }

    /// The error of a call made once ``shutdown()`` has begun.
    func shutDownError(lockName: String) -> RedlockError {
        RedlockError(code: .clientShutDown, lockName: lockName, message: "the client was shut down; make a new one")
    }

    /// How many subscriptions of `name`'s release and handoff channels the nodes confirmed
    /// since this client began to listen for them (for tests).
    package func subscriptionConfirmations(for name: String) -> Int {
        coordination.confirmations(of: name)
    }

    /// The channel fair releases hand this client's waiters the lock on: `redlock:handoff:~TAG`
    /// (for tests).
    package var ownHandoffChannel: String { coordination.ownHandoffChannel }

    /// Whether this client listens on its own handoff channel already: from its first fair
    /// `lock()` that may wait on (for tests).
    package var listensForOwnHandoffs: Bool { coordination.listensForOwnHandoffs }

    /// How many fair lock handoff messages this client's subscribers read so far, of any name
    /// (for tests).
    package var handoffMessagesHeard: Int { coordination.handoffMessages }

    /// How many lock names this client keeps local state for (for tests).
    package var coordinatedNameCount: Int { coordination.nameCount }

    /// How often the client's timer thread was woken for an earlier deadline by its event
    /// loop's thread (for tests).
    package var timerSignalsFromLoop: Int { deadlines.signalsFromLoopCount }

    /// How many scopes of this client run now, those still acquiring their lease included (for
    /// tests).
    package var runningScopes: Int { scopes.running }

    /// How long a node that answered with errors must go without one before a grant ends its
    /// refusing (``NodeHealth/refusalQuietPeriod``; for tests).
    package func setRefusalQuietPeriod(_ period: Duration) {
        health.refusalQuietPeriod = period
    }

    /// Whether node `index` counts as down now: its last connection-level failure came after
    /// its last answer (``NodeHealth``; for tests).
    package func nodeIsDown(_ index: Int) -> Bool { health.isDown(index) }

    /// How many `lock()` calls of this client wait for a release of `name` now (for tests).
    package func waitingLockCalls(for name: String) -> Int {
        coordination.waiterCount(of: name)
    }
}

extension RedlockClient {
    /// Runs `operation` in a span named `name` (when tracing is on) with the lock's name, the node
    /// count and the quorum; records `redlock.outcome` (`ok` or the error's code) and the error
    /// with an error status, but for `taken` and `cancelled`.
    nonisolated(nonsending) func traced<T>(
        _ name: String, lock: String, _ operation: nonisolated(nonsending) (_ span: (any Span)?) async throws(RedlockError) -> T
    ) async throws(RedlockError) -> T {
        guard let tracer else { return try await operation(nil) }
        let span = tracer.startSpan(name, context: ServiceContext.current ?? .topLevel, ofKind: .client)
        defer { span.end() }
        span.attributes["redlock.lock"] = lock
        span.attributes["redlock.nodes"] = nodes.count
        span.attributes["redlock.quorum"] = quorum
        do {
            let result = try await operation(span)
            span.attributes["redlock.outcome"] = "ok"
            return result
        } catch {
            span.attributes["redlock.outcome"] = "\(error.code)"
            // Another holder having the lock, or the caller cancelling, is an outcome the caller
            // expects, not a failure of the operation: no error status (tracing backends count
            // those as the operation's error rate).
            if error.code != .taken && error.code != .cancelled {
                span.recordError(error)
                span.setStatus(SpanStatus(code: .error, message: "\(error.code)"))
            }
            throw error
        }
    }
}
