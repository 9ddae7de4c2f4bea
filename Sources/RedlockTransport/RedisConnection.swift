import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A connection to one Redis node, safe to share between tasks.
///
/// The connection's socket is non-blocking: a caller writes its command to the socket itself
/// (no other thread is woken to send it), and an event loop thread (``RedisEventLoop``, one per
/// client, shared by its connections) reads the replies and completes the callers in order.
/// Commands from concurrent callers are pipelined. Connecting (name resolution, TCP, TLS, `AUTH`,
/// `SELECT`, and the order barrier's `CLIENT KILL`/`CLIENT INFO`: see ``OrderBarrier``) runs on a
/// short-lived thread of its own, so neither the cooperative thread pool nor the event loop ever
/// blocks.
///
/// The connection connects on first use and, after any error, reconnects on the next call.
/// Every failure is a ``RedisError`` naming the node and the cause, in bounded time: a refused
/// connect fails at once, a hung or stopped server after
/// ``RedisConnectionConfiguration/commandTimeout``.
///
/// Call ``shutdown()`` when done; dropping the last reference also stops the thread.
public final class RedisConnection: Sendable, CustomStringConvertible {
    /// The configuration the connection was made with.
    public let configuration: RedisConnectionConfiguration
    let core: ConnectionCore
    /// The loop that reads this connection's replies.
    package let eventLoop: RedisEventLoop

    /// Creates a connection served by the process's shared event loop; the server is contacted
    /// on first use.
    public convenience init(configuration: RedisConnectionConfiguration) {
        self.init(configuration: configuration, eventLoop: .shared)
    }

    /// Creates a connection served by `eventLoop`; the server is contacted on first use.
    ///
    /// With `vet`, each socket the connection makes is shown to it (what the socket reached,
    /// ``NodeSocket/peer``), on the connector thread, once connected, authenticated and with its
    /// database selected, before any of the callers' commands is written on it; see
    /// ``ConnectVet``. A refusal fails the connect (and the commands that waited for it) with its
    /// error, the socket closes, and commands fail with it at once for a second before the next
    /// connect (as after a connect whose TLS could not be set up, or a name that did not
    /// resolve: for as long as that connect took, at least a second). A client uses it to
    /// refuse a connection to a server it already reaches under another node's name, for as
    /// long as it does.
    ///
    /// Without `orderBarrier` (for a server scripted byte by byte in a test) the connects send
    /// no `CLIENT INFO` or `CLIENT KILL`; see ``OrderBarrier``.
    ///
    /// `node`: the node's index in the client that made the connection, which a
    /// ``ReplayWindow`` that tracks where its value is set goes by; nil (the default) for a
    /// connection made outside a client.
    package init(
        configuration: RedisConnectionConfiguration, eventLoop: RedisEventLoop, vet: ConnectVet? = nil, orderBarrier: Bool = true, node: Int? = nil
    ) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        core = ConnectionCore(configuration: configuration, loop: eventLoop, vet: vet, orderBarrier: orderBarrier, node: node)
    }

    /// A connection on the shared event loop whose connects make no order barrier (see
    /// ``init(configuration:eventLoop:vet:orderBarrier:node:)``).
    package convenience init(configuration: RedisConnectionConfiguration, orderBarrier: Bool) {
        self.init(configuration: configuration, eventLoop: .shared, orderBarrier: orderBarrier)
    }

    /// Creates a connection to an endpoint with default settings.
    public convenience init(endpoint: RedisEndpoint) {
        self.init(configuration: RedisConnectionConfiguration(endpoint: endpoint))
    }

    deinit {
        // Nobody is left to await an answer, but what was queued still goes out: a release
        // queued behind an unanswered acquire reaches a frozen node before the close, so the
        // node runs both when it wakes; one queued while the connection is being made goes out
        // once it is made (within the connect's time limit: see
        // RedisConnectionConfiguration.connectTimeout). Then the socket closes at once.
        core.abandon()
    }

    /// The node's endpoint.
    public var description: String { configuration.description }

    /// How many times the connection has connected (and so reconnected) successfully.
    ///
    /// A reply to a command is always served by a connection whose number is at most the value
    /// read after the reply arrived, so a caller that caches facts about the server (its run id,
    /// its uptime) can tell when to refresh them: a restarted server always means a reconnect.
    package var connectionGeneration: UInt64 { core.generation.load(ordering: .acquiring) }

    /// The server's `run_id` and uptime as the handshake of connection number `generation`
    /// read them (`INFO server`, asked when the connection is vetted: see ``ConnectVet``); nil
    /// before the first connect, or when that handshake did not ask or the server did not tell
    /// (an ACL without `+info`). It describes the open connection when `generation` equals
    /// ``connectionGeneration`` read before it: what the server's uptime was at `readAt`, with
    /// no round trip of its own.
    package var handshakeServer: (generation: UInt64, server: ServerIdentity)? { core.handshakeServer }

    /// How many writes the socket took only part of, its buffers full (a node that reads
    /// nothing, a slow link), over every connection this object made. Once the socket is full,
    /// its event loop writes what is staged when it drains, and no sender tries meanwhile.
    package var partialWrites: Int { core.partialWrites.load(ordering: .relaxed) }

    /// Why the node refused the order barrier on the last connect (`CLIENT KILL: NOPERM …`,
    /// `CLIENT INFO: ERR unknown subcommand …`), or nil when it worked (or no connect was made).
    /// Without it a command timeout ends order with the next connection; see ``OrderBarrier``.
    package var orderBarrierRefusal: String? { core.barrierState.refusal }

    /// How the server names the open connection (`CLIENT INFO`'s id), and the connection the
    /// next connect must end first, if any (``OrderBarrier``).
    package var orderBarrierClients: (open: UInt64?, pendingKill: UInt64?) {
        let state = core.barrierState
        return (state.open?.id, state.pendingKill?.id)
    }

    /// How long a connection must have been idle before a command first looks whether the
    /// server closed it (see ``ConnectionCore/peekAfterIdle``).
    package static var peekAfterIdle: Duration { ConnectionCore.peekAfterIdle }

    /// Sends a command and returns its reply.
    ///
    /// - Parameters:
    ///   - command: The command.
    ///   - withdrawOnCancel: When the calling task is cancelled, the call always returns at once
    ///     with ``RedisError/Code-swift.struct/cancelled``. With `true` (the default) a command
    ///     not yet written is also dropped; with `false` it is still sent (its reply discarded),
    ///     which is what a release must do.
    /// - Throws: ``RedisError``; an error reply from the server is `.serverError` with its text.
    package func send(_ command: RedisCommand, withdrawOnCancel: Bool = true) async throws -> RedisValue {
        try await send(PendingCommand(command: command, withdrawOnCancel: withdrawOnCancel))
    }

    /// Queues a command without suspending; `handler` gets its outcome exactly once (see
    /// ``RedisReplyHandler``). The command is always sent. With `script`, the command is that
    /// script's `EVALSHA`, and its `EVAL` form goes in its place when the node has not run the
    /// script on this connection yet, or when the node answers `NOSCRIPT` with nothing written
    /// behind it. With something written behind it, the call fails with that answer, unless
    /// `runsLateUnlessBehind` is set and none of what was written has that argument (see
    /// ``RedisScriptCall/runsLateUnlessBehind``): then the `EVAL` goes out at once, to run after
    /// what was written.
    ///
    /// Without `script`, `untilScriptsRun` (builds the `EVAL` form of a script call whose reply
    /// reads like the command's, only when it is sent) goes in the command's place until such a script form has succeeded on the
    /// socket, and again after any script call on it failed for good (``RedisError/isPermanent``:
    /// a revoked `+eval`): for a command that must not take effect where the user could not run
    /// the scripts that undo it (a lock's `SET NX`, released by a script), with a script form that
    /// checks that they may run.
    ///
    /// With `replayWindow`, a command whose connection is lost before its answer (closed by a
    /// timeout or an error, or a connect that failed while it waited) is sent again, for
    /// nobody, at the head of the next connection, unless the window was closed by then: its
    /// caller had its answer (the failure), and the node may or may not have run it. The next
    /// connection writes it before anything sent later, and after the order barrier ended the old
    /// connection on the node (``OrderBarrier``). For a command that may run late and twice, such
    /// as the release of a value nobody uses again while the window is open. Identical copies
    /// are kept once; at most ``maximumReplays`` wait (the oldest: commands lost beyond that are
    /// not kept); `shutdown()` tries once to send those still waiting.
    ///
    /// `setting`: the command may set a key to the value whose releases have that window (an
    /// acquire); with a window that tracks where its value is set, a lost release of the value is
    /// kept only for a node such a command was staged for (``ReplayWindow/init(tracksWhereSet:)``;
    /// the node is the connection's index in its client, see
    /// ``init(configuration:eventLoop:vet:orderBarrier:node:)``).
    package func send(
        _ command: RedisCommand, script: RedisScript? = nil, runsLateUnlessBehind: String? = nil, untilScriptsRun: RedisScriptForm? = nil,
        replayWindow: ReplayWindow? = nil, setting: ReplayWindow? = nil, handler: @escaping RedisReplyHandler
    ) {
        core.enqueue(PendingCommand(
            command: command, script: script, runsLateUnlessBehind: runsLateUnlessBehind, untilScriptsRun: untilScriptsRun,
            replayWindow: replayWindow, setting: setting, handler: handler
        ))
    }

    /// How many lost replayable commands a connection keeps for its next connect: 4,096.
    package static let maximumReplays = 4_096

    /// The node's index in the client that made the connection, if one did
    /// (``init(configuration:eventLoop:vet:orderBarrier:node:)``).
    package var nodeIndex: Int? { core.node }

    /// How many lost replayable commands wait for the next connection.
    package var pendingReplays: Int { core.replayCount }

    /// How many commands wait for an answer or to be written (what
    /// ``RedisConnectionConfiguration/maximumQueuedCommands`` bounds).
    package var waitingCommands: Int { core.waitingCount }

    /// Queues several commands at once, in order, without suspending: no other caller's command
    /// lands between them, and they go out in one write. Each handler
    /// gets its command's outcome exactly once.
    package func send(_ commands: [QueuedCommand]) {
        core.enqueue(contentsOf: commands.map {
            PendingCommand(
                command: $0.command, script: $0.script, runsLateUnlessBehind: $0.runsLateUnlessBehind, untilScriptsRun: $0.untilScriptsRun,
                replayWindow: $0.replayWindow, setting: $0.setting, handler: $0.handler
            )
        })
    }

    func send(_ pending: PendingCommand) async throws -> RedisValue {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                pending.install(continuation)
                core.enqueue(pending)
            }
        } onCancel: {
            pending.complete(.failure(RedisError(code: .cancelled, endpoint: configuration.endpoint, message: "")))
        }
    }

    /// Stops accepting commands (later calls fail with ``RedisError/Code-swift.struct/shutdown``),
    /// sends the commands already queued — so a release issued just before still reaches the
    /// server — waits for their replies, then closes the socket.
    ///
    /// A server that does not answer gets a grace period of the command timeout, at most 500 ms;
    /// then the socket is closed and the remaining commands fail. A connect still in progress
    /// finishes on its own thread (within the connect's time limit,
    /// ``RedisConnectionConfiguration/connectTimeout``): the commands that waited for it
    /// fail at the grace period's end but are still written once it is made, then it closes.
    /// A connection released without `shutdown()` writes what is queued on its open socket (a
    /// write the socket refuses fails those commands with that error) and closes it at once;
    /// its other commands fail with ``RedisError/Code-swift.struct/shutdown``. Commands queued
    /// while it connects are written once it is connected (within that time limit), and the
    /// socket closes at once.
    ///
    /// The caller's cancellation does not cut the grace period short (nor make it the whole
    /// command timeout): the wait runs in a task of its own.
    public func shutdown() async {
        await shutdown(grace: min(configuration.commandTimeout, .milliseconds(500)))
    }

    /// ``shutdown()`` with a grace period of `grace` for the answers to what is written (a
    /// connection whose commands may block longer, a `WAIT`, lets them end).
    package func shutdown(grace: Duration) async {
        core.beginShutdown()
        let core = core
        await Task { await Self.drain(core, grace: grace) }.value
    }

    /// Waits for `core`'s thread to finish the queued commands, interrupting it after `grace`.
    private static func drain(_ core: ConnectionCore, grace: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await core.waitUntilExited() }
            group.addTask {
                do {
                    try await Task.sleep(for: grace)
                    core.interrupt()
                } catch {}
            }
            await group.next()
            group.cancelAll()
        }
        await core.waitUntilExited()
    }
}

/// The state shared by a connection's callers, its event loop and its connector thread.
///
/// The lock guards the state and is never held across a system call on the socket. Socket I/O
/// belongs to one thread at a time, the *owner* (`ioOwned`): a caller that finds the connection
/// idle writes its command itself; on a busy connection callers only stage their bytes and the
/// loop, which is woken by the replies anyway, writes them with its next read, unless the node
/// has kept its answer past ``coalescingWindow`` (then the caller, or the loop at its next look,
/// writes them; see `takeStalledOutput`). The owner writes
/// whatever was staged meanwhile before it lets go, and only a thread that owns the I/O (or
/// holds the lock while nobody does) may close the socket: a close wanted meanwhile (a timeout,
/// a shutdown) is left to the owner.
final class ConnectionCore: Sendable, EventLoopSource {
    private struct InFlight {
        let command: PendingCommand
        /// Sent as `EVALSHA`: a `NOSCRIPT` answer sends its `EVAL` form next, unless commands
        /// were written behind it meanwhile (then the call fails with that answer, or, see its
        /// command's `runsLateUnlessBehind`, the `EVAL` runs after them).
        let sentAsScriptHash: Bool
        /// Sent as its command's script form (``PendingCommand/untilScriptsRun``).
        let sentInScriptForm: Bool
        /// For a command that waited behind an earlier one's reply and was written by the
        /// thread that read it: that read's arrival (CLOCK_REALTIME nanoseconds,
        /// ``ReplyArrival``) and the write (a ``BootClock`` reading): the time between them is
        /// this process's, not the node's. 0 and 0 otherwise.
        var release = ReplyArrival.Release()
    }

    private enum Phase { case idle, connecting, open }

    private struct State {
        var phase = Phase.idle
        var socket: NodeSocket?
        /// The loop's token while the socket is open and watched.
        var token: UInt64?
        /// Commands not formatted yet: waiting for a connect, or behind an unanswered `EVALSHA`.
        var queue: [PendingCommand] = []
        /// Bytes formatted for the socket and not handed to a writer yet.
        var output: [UInt8] = []
        /// An empty buffer a writer gave back (``giveBack(_:)``): the next output, so that a
        /// connection writing batch after batch reuses two buffers rather than allocating one
        /// per write.
        var spareOutput: [UInt8] = []
        /// Commands formatted and not answered yet, in order from `head`.
        var inFlight: [InFlight] = []
        var head = 0
        /// How many of the last commands in `inFlight` are only staged: their bytes are all in
        /// `output`, none written. A dropped connection sends them on the next one.
        var stagedCount = 0
        /// The last command formatted is an `EVALSHA` not answered yet: later commands wait, so
        /// that its `EVAL` fallback, if needed, still runs before them; but not past
        /// ``coalescingWindow`` (see `takeStalledOutput`).
        var heldByScriptHash = false
        /// The scripts (``RedisScript/digestPrefix``) this socket's node has run since it
        /// connected: only these go as `EVALSHA`. A script the node has not confirmed goes as
        /// `EVAL`, so nothing waits behind it: behind an `EVALSHA` that a frozen node runs only
        /// later (the script cached there by another client), a release would wait unwritten,
        /// and be lost with the connection while the acquire still runs.
        var confirmedScripts: [UInt64] = []
        /// Whether a command's script form (``PendingCommand/untilScriptsRun``) succeeded on this
        /// socket, with no script call failing for good since: until then such commands go in
        /// their script form.
        var scriptsRun = false
        /// A thread is reading or writing the socket outside the lock.
        var ioOwned = false
        /// The loop reported the socket ready while another thread owned the I/O: the owner
        /// reads before it lets go (the socket is edge-triggered: the report does not repeat).
        var readWanted = false
        /// A failure that must close the connection once the owner lets go of the I/O.
        var dropRequested: RedisError?
        var watchingWrites = false
        /// Since when the oldest unanswered command waits for bytes from the server; with none
        /// unanswered, when the last answer came (since when the connection is idle: see
        /// ``ConnectionCore/peekAfterIdle``); nil on a new connection.
        var waitingSince: ContinuousClock.Instant?
        var shuttingDown = false
        /// The connection object went while connecting with commands queued: they are written
        /// once the connection is made, then it closes (``ConnectionCore/abandon()``).
        var closeOnceWritten = false
        var exitSignalled = false
        /// A connect's failure that stands a while, and until when: a host name that failed to
        /// resolve, an address the vet refused, or TLS that cannot be set up (``RedisError/Code-swift.struct/tlsFailed``,
        /// ``RedisError/Code-swift.struct/certificateRejected``: a TLS-only port spoken to in
        /// plain RESP among them), which a connect may take long to find (several connections
        /// and round trips, for that port) and an immediate retry cannot change.
        /// Refused credentials are not held: they fail within a round trip, and an operator who
        /// restores them on the node expects the next command to connect.
        var heldFailure: (RedisError, ContinuousClock.Instant)?
        /// How the server names the open socket (``OrderBarrier``); nil when it would not tell.
        var serverClient: ServerClient?
        /// A connection closed by this side with commands unanswered, which the next connect
        /// ends on the server before anything is written (``OrderBarrier``).
        var pendingKill: ServerClient?
        /// The node's last refusal of the order barrier, nil once it worked.
        var barrierRefusal: String?
        /// What the open socket's handshake learned of the server (``RedisConnection/handshakeServer``).
        var handshakeServer: (generation: UInt64, server: ServerIdentity)?
        /// What the connects showed of the server's answers to `INFO server`.
        var serverInfo = NodeSocket.ServerInfoHistory()
        /// Replayable commands lost with a connection or a failed connect, oldest first: the
        /// next connection writes them before its queue.
        var replays: [PendingCommand] = []

        /// The commands in `replays`, so that identical ones are kept once (each failed attempt
        /// of one `lock()` has the same clean-up).
        var replayed: Set<RedisCommand> = []

        /// Keeps a copy of each command among `lost` whose replay window is open, for the next
        /// connection, unless an identical one waits already or ``RedisConnection/maximumReplays``
        /// wait: then the oldest are kept. While a node cannot be reached, the releases lost
        /// first are the ones whose acquires may have reached it (written on the connection that
        /// was open when it stopped answering, and run when it resumes, up to where the order
        /// barrier ends that connection); those lost later mostly follow acquires that never got
        /// there (a release of a lease it holds that comes after more than that many is dropped).
        /// A release whose window tracks where its value is set is kept only when a command that
        /// may set it was staged for `node` (the connection's node index).
        mutating func keepReplays<Lost: Sequence<PendingCommand>>(of lost: Lost, to node: Int?) {
            for command in lost {
                guard let window = command.replayWindow, window.isOpen, window.mayBeSet(on: node) else { continue }
                guard replays.count < RedisConnection.maximumReplays else { return }
                guard replayed.insert(command.command).inserted else { continue }
                replays.append(command.isReplay ? command : command.replay())
            }
        }

        /// Moves the replays whose window is still open to the head of the queue.
        mutating func queueReplays() {
            guard !replays.isEmpty else { return }
            queue.insert(contentsOf: replays.filter(\.shouldSend), at: 0)
            replays.removeAll()
            replayed.removeAll()
        }

        var unansweredCount: Int { inFlight.count - head }
        /// Bytes staged for the thread that reads the next reply, or commands an unanswered
        /// `EVALSHA` holds back: what waits for the node's next answer to be written.
        var waitsForAnswer: Bool { !output.isEmpty || (heldByScriptHash && !queue.isEmpty) }
        var isDrained: Bool { queue.isEmpty && unansweredCount == 0 && output.isEmpty }

        mutating func popInFlight() -> InFlight? {
            guard head < inFlight.count else { return nil }
            let item = inFlight[head]
            head += 1
            stagedCount = min(stagedCount, inFlight.count - head)
            compactInFlight()
            return item
        }

        /// Empties `inFlight` once every entry is answered, rather than let it grow.
        private mutating func compactInFlight() {
            guard head == inFlight.count else { return }
            inFlight.removeAll(keepingCapacity: inFlight.count <= 1_024)
            head = 0
        }

        /// Marks the commands only staged with `release` (``InFlight/release``).
        mutating func markReleased(_ release: ReplyArrival.Release) {
            for index in (inFlight.count - stagedCount)..<inFlight.count { inFlight[index].release = release }
        }

        /// Hands the staged bytes to the caller, which becomes the I/O owner.
        mutating func takeOutput() -> [UInt8] {
            ioOwned = true
            stagedCount = 0
            var taken = spareOutput
            spareOutput = []
            swap(&taken, &output)
            return taken
        }

        /// Keeps `written`, a buffer wholly written, as the next output's storage (emptied, when
        /// none is kept and it is not outsized); leaves an empty array in its place.
        mutating func giveBack(_ written: inout [UInt8]) {
            guard spareOutput.capacity == 0, written.capacity <= 64 * 1_024 else { return }
            swap(&spareOutput, &written)
            spareOutput.removeAll(keepingCapacity: true)
        }

        /// Takes the commands only staged out of `inFlight` (see `stagedCount`), in order.
        mutating func takeStaged() -> [PendingCommand] {
            let staged = inFlight.suffix(stagedCount).map(\.command)
            inFlight.removeLast(stagedCount)
            stagedCount = 0
            compactInFlight()
            return staged
        }
    }

    /// What happens once the lock is released.
    private struct Effects {
        /// Each with its command's ``InFlight/release`` (none but for replies).
        var completions: [(PendingCommand, Result<RedisValue, RedisError>, ReplyArrival.Release)] = []
        /// When the kernel received the replies among `completions` (``ReplyArrival``), and
        /// whether that is the last one's own arrival.
        var arrivalRealtime: Int64 = 0
        var lastArrivalExact = false
        var connect = false
        var exited = false
    }

    private let configuration: RedisConnectionConfiguration
    private let loop: RedisEventLoop
    private let state = Mutex(State())
    private let exited = OneTimeEvent<Void>()
    private let tls = TLSContextCache()
    /// How often the loop checks this connection's time-out while it has a socket.
    private let checkInterval: Duration
    /// Incremented after every successful connect.
    let generation = Atomic<UInt64>(0)
    /// How many writes left bytes behind: the socket's buffers were full (a node that reads
    /// nothing, a slow link). While the loop waits for the socket to drain, nobody else writes.
    let partialWrites = Atomic<Int>(0)
    /// Looks at each new socket before it is used (``RedisConnection/init(configuration:eventLoop:vet:orderBarrier:node:)``).
    private let vet: ConnectVet?
    /// Whether connects make the order barrier (``OrderBarrier``).
    private let orderBarrier: Bool
    /// The node's index in its client (``RedisConnection/init(configuration:eventLoop:vet:orderBarrier:node:)``).
    let node: Int?

    init(configuration: RedisConnectionConfiguration, loop: RedisEventLoop, vet: ConnectVet? = nil, orderBarrier: Bool = true, node: Int? = nil) {
        self.configuration = configuration
        self.loop = loop
        self.vet = vet
        self.orderBarrier = orderBarrier
        self.node = node
        // A quarter of the command timeout between checks (5 ms to 250 ms): a silent server is
        // detected at most that late when the loop has nothing else to do.
        checkInterval = min(max(configuration.commandTimeout / 4, .milliseconds(5)), .milliseconds(250))
    }

    private func error(_ code: RedisError.Code, _ message: String) -> RedisError {
        RedisError(code: code, endpoint: configuration.endpoint, message: message)
    }

    /// The order barrier's state (``OrderBarrier``): the open socket's name on the server, the
    /// connection the next connect must end, the node's last refusal.
    var barrierState: (open: ServerClient?, pendingKill: ServerClient?, refusal: String?) {
        state.withLock { ($0.serverClient, $0.pendingKill, $0.barrierRefusal) }
    }

    var handshakeServer: (generation: UInt64, server: ServerIdentity)? { state.withLock { $0.handshakeServer } }

    var replayCount: Int { state.withLock { $0.replays.count } }

    var waitingCount: Int { state.withLock { $0.queue.count + $0.unansweredCount } }

    // MARK: Callers

    /// How long a node may keep its answer before the commands behind it stop waiting to be
    /// written with the next batch (see ``takeStalledOutput(_:force:)``): tens of loopback
    /// round trips. A caller that queues one past it writes them at once; else the loop does at
    /// its next look at the connection (``checkDeadlines(now:)``, at least every quarter of the
    /// command timeout, at most 250 ms apart), well before the connection times out.
    static let coalescingWindow: Duration = .milliseconds(1)

    /// Before a command on an idle connection, the sender looks whether the server closed it
    /// meanwhile (a `recv` with `MSG_PEEK`: one system call), so that a close (a restart, an
    /// idle timeout, `CLIENT KILL` in a failover) costs a reconnect rather than a failed
    /// command. The event loop sees a close on its own (the socket is watched for hang-ups) and
    /// drops the connection, so the look only covers a close the loop has not handled yet. From
    /// other threads it is made when the connection has been idle at least this long (its last
    /// answer came this long ago). A connection in steady use from the cooperative pool skips it
    /// (at N = 5 it was a third of an uncontended cycle's `recv` calls): a close that lands
    /// within the loop's wake-up latency before such a command fails that command as closed, a
    /// transient failure (the node never ran it), as one landing just after a look does. On the
    /// loop's own thread (a task on its executor, or a handler: the loop handles nothing until
    /// it returns) see ``loopLookWindow``.
    static let peekAfterIdle: Duration = .milliseconds(100)

    /// On the loop's own thread the look is made unless the loop asked for its sockets' events
    /// at most this long ago (in nanoseconds: 100 µs). The turn that reads a hang-up handles it
    /// before its jobs run, so only a close since then can be unknown to a task on the loop's
    /// executor (and to a handler that sends, also one read in the same turn and not handled
    /// yet): about the window of the loop's wake-up latency for a sender on another thread, with
    /// the same outcome. A task that holds the thread longer (it computes, or blocks, without
    /// suspending) looks before each command; one that sends right after a reply, as a lock's
    /// attempt and release do, saves a system call per command.
    static let loopLookWindow: Int64 = 100_000

    /// Queues `command`: written at once by the caller when the connection is open and idle.
    func enqueue(_ command: PendingCommand) {
        enqueue(contentsOf: [command])
    }

    /// Queues `commands` together (all or none, in order).
    func enqueue(contentsOf commands: [PendingCommand]) {
        var effects = Effects()
        // (Worked out before the lock: an argument computed in the call that borrows the state
        // made the compiler copy the whole state.)
        let releases = commands.allSatisfy { $0.replayWindow != nil }
        let write: (NodeSocket, [UInt8])? = state.withLock { state in
            if let refusal = refusal(adding: commands.count, to: state, releases: releases) {
                for command in commands { effects.completions.append((command, .failure(refusal.unwritten), ReplyArrival.Release())) }
                return nil
            }
            if state.phase == .open, state.dropRequested == nil, let socket = state.socket, state.queue.isEmpty, !state.heldByScriptHash {
                let idle = state.unansweredCount == 0 && state.output.isEmpty && !state.ioOwned
                // Idle, one clock reading serves the look's gate and dates the wait that the
                // commands staged below begin.
                let now: ContinuousClock.Instant? = idle ? .now : nil
                if let now,
                   state.waitingSince.map({ $0.duration(to: now) >= Self.peekAfterIdle }) ?? true
                   || (loop.isCurrentThread && !loop.lookedAtSockets(within: Self.loopLookWindow)),
                   socket.peerHasClosed {
                    // The server closed this idle connection (a restart, an idle timeout): a new
                    // connection rather than a command that fails.
                    drop(&state, error(.connectionClosed, "the server closed the connection"), &effects)
                } else {
                    for (index, command) in commands.enumerated() {
                        stage(command, last: index == commands.count - 1, at: now, in: &state)
                    }
                    // Idle: the caller writes. Busy: a reply is due and the thread that reads it
                    // writes these bytes too, one write for many callers; behind a stalled node,
                    // the caller writes them (see takeStalledOutput).
                    return idle ? (socket, state.takeOutput()) : takeStalledOutput(&state, force: false)
                }
            }
            if state.phase == .idle, let (failure, until) = state.heldFailure, ContinuousClock.now < until {
                // The name did not resolve (or its address was refused, or TLS could not be set
                // up) a moment ago: answer with that at once rather than start another connect
                // for every command.
                for command in commands { effects.completions.append((command, .failure(failure.unwritten), ReplyArrival.Release())) }
                return nil
            }
            // Waiting for a connect, behind an unanswered EVALSHA, or for a connection that is
            // about to be closed (a timeout): the commands go out on the next connection.
            state.queue.append(contentsOf: commands)
            if state.phase == .idle {
                state.phase = .connecting
                effects.connect = true
            }
            return takeStalledOutput(&state, force: false)
        }
        if case let (socket, bytes)? = consume write, writeAndRelease(consume bytes, on: socket, &effects) {
            service(socket, &effects)
        }
        perform(effects)
    }

    /// Why `count` more commands cannot be queued, if they cannot. Releases (commands with a
    /// ``ReplayWindow``) may fill as many places again beyond the limit (at least
    /// ``maximumReplays``): one refused leaves its key until it expires, and releases come after
    /// the acquires the full queue refuses. Past that they are refused too: a node that answers
    /// nothing must not make the queue grow without bound.
    private func refusal(adding count: Int, to state: borrowing State, releases: Bool = false) -> RedisError? {
        if state.shuttingDown { return error(.shutdown, "") }
        if let failure = loop.startIfNeeded() {
            return RedisError(code: failure.code, endpoint: configuration.endpoint, message: "event loop: " + failure.message)
        }
        let waiting = state.queue.count + state.unansweredCount
        let limit = configuration.maximumQueuedCommands
        if waiting + count > (releases ? limit + Swift.max(limit, RedisConnection.maximumReplays) : limit) {
            return error(.overloaded, "\(waiting) commands already queued")
        }
        return nil
    }

    /// Formats one command into the output. A script call goes as `EVALSHA` once the node has
    /// run the script on this socket, else as `EVAL` with its body (which confirms it). As the
    /// last of its batch on an otherwise idle connection, the commands queued after an `EVALSHA`
    /// wait for its answer (see `heldByScriptHash`), so that a `NOSCRIPT` (after `SCRIPT FLUSH`)
    /// sends its `EVAL` before them. Anywhere else they are written behind it, and a `NOSCRIPT`
    /// then fails the call: the node never runs a script after commands queued behind it,
    /// unless the call says it may (``RedisScriptCall/runsLateUnlessBehind``).
    private func stage(_ command: PendingCommand, last: Bool, at now: ContinuousClock.Instant? = nil, in state: inout State) {
        // Withdrawn (its caller was cancelled before it could be written): never sent.
        guard command.shouldSend else { return }
        command.setting?.staged(on: node)
        guard let script = command.script else {
            if let scripted = command.untilScriptsRun, !state.scriptsRun {
                Self.format(scripted(), of: command, asScriptHash: false, inScriptForm: true, at: now, in: &state)
            } else {
                Self.format(command.command, of: command, asScriptHash: false, at: now, in: &state)
            }
            return
        }
        if state.confirmedScripts.contains(script.digestPrefix) {
            let holds = last && state.unansweredCount == 0
            Self.format(command.command, of: command, asScriptHash: true, holdingLater: holds, at: now, in: &state)
        } else {
            Self.format(script.evalForm(of: command.command), of: command, asScriptHash: false, at: now, in: &state)
        }
    }

    /// Puts `wire` (`command`'s command, or its `EVAL` form) in the output, as `command`'s;
    /// `holdingLater`: commands queued later wait for its answer (`heldByScriptHash`). `now`,
    /// when the caller read the clock already, dates the wait it may begin.
    private static func format(
        _ wire: RedisCommand, of command: PendingCommand, asScriptHash: Bool, inScriptForm: Bool = false, holdingLater: Bool = false,
        at now: ContinuousClock.Instant? = nil, in state: inout State
    ) {
        if state.unansweredCount == 0 { state.waitingSince = now ?? .now }
        wire.appendWire(to: &state.output)
        if holdingLater { state.heldByScriptHash = true }
        state.inFlight.append(InFlight(command: command, sentAsScriptHash: asScriptHash, sentInScriptForm: inScriptForm))
        state.stagedCount += 1
    }

    /// Hands what waits for the node's next answer to the caller to write, when that answer is
    /// overdue (`force`: at shutdown, at once): the bytes staged for the thread that reads the
    /// next reply, and the commands an unanswered `EVALSHA` holds back (see `heldByScriptHash`),
    /// which then go out behind it. A node that never answers again (stopped, stalled) would
    /// otherwise keep them unwritten until the connection is dropped, and a release queued
    /// behind an acquire it runs once it wakes would be lost with it. Writing past a held
    /// `EVALSHA` keeps the order all the same: a `NOSCRIPT` answer then falls back to nothing
    /// (the call fails with it) since commands were written behind it, unless the call may run
    /// late (``RedisScriptCall/runsLateUnlessBehind``). Nil while a thread does
    /// I/O on the socket (it writes them before it lets go), while the socket is full (the loop
    /// writes them when it drains: a write now would take nothing, and each one would handle
    /// everything staged behind a node that reads nothing), or when nothing waits.
    private func takeStalledOutput(_ state: inout State, force: Bool) -> (NodeSocket, [UInt8])? {
        guard state.phase == .open, state.dropRequested == nil, let socket = state.socket, !state.ioOwned,
              state.waitsForAnswer,
              force || (!state.watchingWrites && state.waitingSince.map({ $0.duration(to: .now) > Self.coalescingWindow }) == true)
        else { return nil }
        if state.heldByScriptHash, !state.queue.isEmpty {
            state.heldByScriptHash = false
            stageQueue(&state)
        }
        // They waited behind a reply not read yet: whether the node was slow to send it or this
        // process to read it is not known (ReplyArrival.Release.unknown).
        if state.stagedCount > 0 { state.markReleased(.unknown) }
        return state.output.isEmpty ? nil : (socket, state.takeOutput())
    }

    /// How many commands written behind a call that may run late (``RedisScriptCall/runsLateUnlessBehind``)
    /// are looked through for its argument when the node answers `NOSCRIPT`; behind more, the
    /// call fails. It bounds the look, done under the connection's lock for every such call in
    /// flight (after `SCRIPT FLUSH` on a deep pipeline: quadratic without it).
    static let lateFallbackLookBehind = 64

    /// Whether `command`'s `EVAL` may go now, its `EVALSHA` just answered `NOSCRIPT`: nothing is
    /// written behind it, or it may run late and none of the commands behind it (at most
    /// ``lateFallbackLookBehind``) has its argument (``RedisScriptCall/runsLateUnlessBehind``).
    private static func mayFallBack(_ command: PendingCommand, in state: State) -> Bool {
        if state.unansweredCount == 0, state.output.isEmpty { return true }
        guard let argument = command.runsLateUnlessBehind, state.unansweredCount <= lateFallbackLookBehind else { return false }
        let bytes = Array(argument.utf8)
        return !state.inFlight[state.head...].contains { $0.command.command.hasArgument(bytes) }
    }

    /// Records that the node holds `script` when it answered a call of it without an error.
    private static func noteScriptRan(_ script: RedisScript, reply: RedisValue, in state: inout State) {
        if case .error = reply { return }
        guard !state.confirmedScripts.contains(script.digestPrefix) else { return }
        state.confirmedScripts.append(script.digestPrefix)
    }

    /// Records from a script call's `reply` whether commands with a script form may go plain
    /// on this socket (``State/scriptsRun``): the script form's own success says they may (it
    /// checks what the plain command needs); any script call's permanent failure
    /// (``RedisError/isPermanent``: `NOPERM`, scripting renamed away) says they may not; other
    /// replies (another script's success, `BUSY`, a script's own error) tell nothing.
    private static func noteScriptOutcome(_ reply: RedisValue, confirmsScriptForm: Bool, in state: inout State) {
        guard case let .error(text) = reply else {
            if confirmsScriptForm { state.scriptsRun = true }
            return
        }
        if RedisError(code: .serverError, endpoint: nil, message: text).isPermanent { state.scriptsRun = false }
    }

    /// Formats the queued commands still wanted (withdrawn ones are dropped).
    private func stageQueue(_ state: inout State) {
        guard state.phase == .open, !state.heldByScriptHash, !state.queue.isEmpty else { return }
        let wanted = state.queue.filter(\.shouldSend)
        state.queue.removeAll(keepingCapacity: true)
        for (index, command) in wanted.enumerated() {
            stage(command, last: index == wanted.count - 1, in: &state)
        }
    }

    /// The I/O owner's last step: writes `bytes`, then whatever was staged meanwhile, until
    /// nothing is left or the socket is full (the rest then waits for writability, watched by
    /// the loop); then lets go of the I/O and carries out a close wanted meanwhile. Returns true,
    /// still owning the I/O, when the loop reported the socket ready meanwhile: the caller must
    /// then ``service(_:_:)`` it. `bytes` is consumed (callers pass it with `consume`): once
    /// written, its storage becomes the next output's (``State/giveBack(_:)``), which reuses it
    /// only while it is the sole reference.
    private func writeAndRelease(_ bytes: consuming [UInt8], on socket: NodeSocket, _ effects: inout Effects, wantsWritable: Bool = false) -> Bool {
        while true {
            var written = 0
            var failure: RedisError?
            switch socket.write(bytes) {
            case let .success(count): written = count
            case let .failure(error): failure = error
            }
            enum Next { case done, write([UInt8]), read }
            let next: Next = state.withLock { state in
                if let failure {
                    state.ioOwned = false
                    state.readWanted = false
                    drop(&state, failure, &effects)
                    return .done
                }
                let wroteAll = written == bytes.count
                if wroteAll {
                    state.giveBack(&bytes)
                } else {
                    // The socket is full: the rest goes first when it drains, what was staged
                    // meanwhile behind it (appended to the rest, not the rest copied before it).
                    partialWrites.add(1, ordering: .relaxed)
                    if written > 0 { bytes.removeFirst(written) }
                    bytes.append(contentsOf: state.output)
                    swap(&state.output, &bytes)
                }
                if wroteAll, !state.output.isEmpty, state.dropRequested == nil || state.dropRequested?.code == .shutdown {
                    // Closing for a shutdown (or a connection released), what was staged still
                    // goes out first: a release behind an unanswered acquire.
                    return .write(state.takeOutput())
                }
                let watch = !state.output.isEmpty || wantsWritable
                if watch != state.watchingWrites, let token = state.token {
                    if let failure = loop.update(token, descriptor: socket.descriptor, writable: watch) {
                        state.ioOwned = false
                        state.readWanted = false
                        drop(&state, failure, &effects)
                        return .done
                    }
                    state.watchingWrites = watch
                }
                if state.readWanted, state.dropRequested == nil {
                    state.readWanted = false
                    return .read
                }
                state.ioOwned = false
                state.readWanted = false
                if let requested = state.dropRequested {
                    state.dropRequested = nil
                    drop(&state, requested, &effects)
                }
                finishShutdownIfDrained(&state, &effects)
                return .done
            }
            switch next {
            case .done: return false
            case .read: return true
            case let .write(more): bytes = more
            }
        }
    }

    /// As the I/O owner: reads what the socket has, delivers the replies, writes what is staged,
    /// and again while the loop reported the socket meanwhile; then lets go of the I/O. The first
    /// read stops at a short read unless `readToEnd` (the loop's event said so: see
    /// ``NodeSocket/read(toEndOfStream:)``); a read for an event reported while another thread
    /// owned the I/O, whose flags are not kept, reads on to the end.
    private func service(_ socket: NodeSocket, _ effects: inout Effects, readToEnd: Bool = true) {
        var again = true
        var toEndOfStream = readToEnd
        while again {
            let outcome = socket.read(toEndOfStream: toEndOfStream)
            toEndOfStream = true
            effects.arrivalRealtime = outcome.arrivalRealtime
            effects.lastArrivalExact = outcome.lastArrivalExact
            // One lock per read: the replies matched to their commands, then what was staged
            // meanwhile and what the replies let through is taken for writing.
            let processed: Result<[UInt8], RedisError> = state.withLock { state in
                if !outcome.replies.isEmpty { state.waitingSince = .now }
                var failure = outcome.failure
                for reply in outcome.replies {
                    guard let item = state.popInFlight() else {
                        failure = error(.protocolError, "a reply nobody asked for")
                        break
                    }
                    if item.sentAsScriptHash {
                        // A held EVALSHA is the only command unanswered (nothing is written
                        // behind it while it holds): this is its answer, or none is held.
                        state.heldByScriptHash = false
                        if case let .error(text) = reply, text.hasPrefix("NOSCRIPT") {
                            // Forgotten (SCRIPT FLUSH): confirmed again by an EVAL's answer.
                            if let digest = item.command.script?.digestPrefix { state.confirmedScripts.removeAll { $0 == digest } }
                            // While nothing was written behind it (takeStalledOutput may have),
                            // its EVAL goes before everything queued. Else the call fails with
                            // NOSCRIPT, unless its EVAL may run after what was written.
                            if let fallback = item.command.fallback, Self.mayFallBack(item.command, in: state) {
                                Self.format(fallback, of: item.command, asScriptHash: false, in: &state)
                                continue
                            }
                        }
                    }
                    if let script = item.command.script { Self.noteScriptRan(script, reply: reply, in: &state) }
                    if item.command.script != nil || item.sentInScriptForm {
                        Self.noteScriptOutcome(reply, confirmsScriptForm: item.sentInScriptForm, in: &state)
                    }
                    if case let .error(text) = reply {
                        // A node that wants credentials none were given for: an authentication
                        // failure like a refused AUTH, not an answer to the command.
                        let code: RedisError.Code = text.hasPrefix("NOAUTH") ? .authenticationFailed : .serverError
                        effects.completions.append((item.command, .failure(error(code, text)), item.release))
                    } else {
                        effects.completions.append((item.command, .success(reply), item.release))
                    }
                }
                if let failure {
                    state.ioOwned = false
                    state.readWanted = false
                    drop(&state, failure, &effects)
                    return .failure(failure)
                }
                stageQueue(&state)
                // What waited for these replies goes out now: the node could take it since
                // they arrived, not since it was sent.
                if outcome.arrivalRealtime != 0, state.stagedCount > 0 {
                    state.markReleased(ReplyArrival.Release(arrivalRealtime: outcome.arrivalRealtime, writtenAt: BootClock.now()))
                }
                return .success(state.takeOutput())
            }
            guard case let .success(staged) = consume processed else { break }
            again = writeAndRelease(consume staged, on: socket, &effects, wantsWritable: outcome.wantsWritable)
            if again {
                // Callers waiting on this round's replies need not wait for the next round.
                perform(effects)
                effects = Effects()
            }
        }
    }

    /// Closes the socket and fails every command written (wholly or in part) with `failure`;
    /// commands still queued, or only staged (none of their bytes written: a caller that came
    /// while the owner read the server's close; not after a timeout), get a new connection (or
    /// fail when shutting down). While another thread owns the I/O, the close is left to it.
    private func drop(_ state: inout State, _ failure: RedisError, _ effects: inout Effects) {
        if state.ioOwned {
            if state.dropRequested == nil { state.dropRequested = failure }
            return
        }
        // Commands written and not answered may still run on the server (it is frozen or slow,
        // or the bytes were garbage to us only): the next connection ends this one first. A
        // server that closed it ran all it will run. Not over a Unix socket: every client there
        // has the same `addr` (the path), so after a restart the kill could end another
        // client that got the same id; and no network holds the bytes back (see OrderBarrier).
        if let client = state.serverClient, state.unansweredCount > state.stagedCount, failure.code != .connectionClosed,
           case .tcp = configuration.endpoint.address {
            state.pendingKill = client
        }
        state.serverClient = nil
        closeSocket(&state)
        state.watchingWrites = false
        state.heldByScriptHash = false
        state.waitingSince = nil
        state.dropRequested = nil
        state.output = []
        // Not after a timeout: the node may still run what went before them on this socket
        // (it is alive, only slow), and they would run after it on another, beyond their own
        // timeout. Else this socket can deliver nothing more.
        if failure.code != .timeout { state.queue.insert(contentsOf: state.takeStaged(), at: 0) }
        let lostFrom = state.head
        state.keepReplays(of: state.inFlight[lostFrom...].lazy.map(\.command), to: node)
        while let item = state.popInFlight() { effects.completions.append((item.command, .failure(failure), ReplyArrival.Release())) }
        state.phase = .idle
        if !state.queue.isEmpty {
            if state.shuttingDown {
                for command in state.queue { effects.completions.append((command, .failure(error(.shutdown, "the connection was shut down").unwritten), ReplyArrival.Release())) }
                state.queue.removeAll()
            } else {
                state.phase = .connecting
                effects.connect = true
            }
        }
        finishShutdownIfDrained(&state, &effects)
    }

    /// During a shutdown, closes the connection once nothing is left to send or answer.
    private func finishShutdownIfDrained(_ state: inout State, _ effects: inout Effects) {
        guard state.shuttingDown, !state.exitSignalled, !state.ioOwned, state.phase != .connecting, state.isDrained else { return }
        if state.socket != nil {
            closeSocket(&state)
            state.phase = .idle
        }
        state.exitSignalled = true
        effects.exited = true
    }

    /// Stops watching the socket, leaves the loop and closes it (nobody may own its I/O).
    private func closeSocket(_ state: inout State) {
        if let socket = state.socket {
            if let token = state.token {
                loop.unwatch(token, descriptor: socket.descriptor)
                loop.deregister(token)
            }
            socket.close()
        }
        state.socket = nil
        state.token = nil
    }

    private func perform(_ effects: Effects) {
        let arrival = effects.arrivalRealtime
        if arrival == 0 {
            for (command, result, _) in effects.completions { command.complete(result) }
        } else if !effects.completions.isEmpty {
            let last = effects.completions.count - 1
            var index = 0
            for (command, result, release) in effects.completions {
                ReplyArrival.note(arrivedAt: arrival, exactly: index == last && effects.lastArrivalExact, release: release)
                command.complete(result)
                index += 1
            }
            ReplyArrival.clear()
        }
        if effects.connect { startConnect() }
        if effects.exited { exited.fire() }
    }

    // MARK: Connector

    private func startConnect() {
        let started = ContinuousClock.now
        let (kill, serverInfo) = state.withLock { ($0.pendingKill, $0.serverInfo) }
        let barrier = orderBarrier ? OrderBarrier.Request(kill: kill) : nil
        // A vetted socket is vetted by its server's run_id too (one server under two addresses).
        NodeSocket.connectInBackground(
            configuration, tls: tls, barrier: barrier, identification: serverInfo.identification(vetted: vet != nil)
        ) { [self] result in
            connected(result, tookSince: started)
        }
    }

    /// Installs a new socket and writes what waited for it, or fails what waited.
    private func connected(_ connect: NodeSocket.ConnectResult, tookSince started: ContinuousClock.Instant) {
        let (outcome, refused) = NodeSocket.vetted(connect.outcome, by: vet)
        var effects = Effects()
        var lastWrite: (NodeSocket, [UInt8])?
        let write: (NodeSocket, [UInt8])? = state.withLock { state in
            state.serverInfo.record(connect)
            switch outcome {
            case let .success(socket):
                // What was lost goes first, before anything sent since (and after the barrier).
                state.queueReplays()
                if state.closeOnceWritten {
                    // Nobody is left to read an answer, and the event loop may be stopping with
                    // the client: the queue goes out as far as the socket takes it now, then
                    // the socket closes. A new socket has run no script: each goes as `EVAL`.
                    var bytes: [UInt8] = []
                    for command in state.queue where command.shouldSend {
                        command.setting?.staged(on: node)
                        (command.fallback ?? command.untilScriptsRun?() ?? command.command).appendWire(to: &bytes)
                    }
                    let failure = error(.shutdown, "the connection was shut down before the server answered")
                    for command in state.queue { effects.completions.append((command, .failure(failure), ReplyArrival.Release())) }
                    state.queue.removeAll()
                    state.phase = .idle
                    if !state.exitSignalled {
                        state.exitSignalled = true
                        effects.exited = true
                    }
                    lastWrite = (socket, bytes)
                    return nil
                }
                guard !state.exitSignalled else {
                    // Shut down while connecting, with nothing queued: nothing to write.
                    socket.close()
                    return nil
                }
                state.heldFailure = nil
                switch loop.register(self, checkInterval: checkInterval) {
                case let .success(token):
                    if let failure = loop.watch(token, descriptor: socket.descriptor, writable: false) {
                        loop.deregister(token)
                        socket.close()
                        failQueue(&state, failure, &effects)
                        return nil
                    }
                    state.token = token
                case let .failure(failure):
                    socket.close()
                    failQueue(&state, failure, &effects)
                    return nil
                }
                state.socket = socket
                if let outcome = socket.barrier {
                    state.serverClient = outcome.client
                    state.barrierRefusal = outcome.refusal
                    // The kill owed when the connect began (none can be added without a socket)
                    // was answered, or the node will not (a refusal): nothing more to do.
                    state.pendingKill = nil
                }
                // A new socket may reach a restarted node: it has confirmed no script yet, and
                // may not run any (another ACL, scripting renamed away).
                state.confirmedScripts.removeAll()
                state.scriptsRun = false
                state.phase = .open
                let number = generation.add(1, ordering: .releasing).newValue
                state.handshakeServer = socket.server.map { (number, $0) }
                stageQueue(&state)
                if !state.output.isEmpty { return (socket, state.takeOutput()) }
                finishShutdownIfDrained(&state, &effects)
                return nil
            case let .failure(failure):
                if failure.code == .nameResolutionFailed || refused || failure.code == .tlsFailed || failure.code == .certificateRejected {
                    // Kept for as long as the failed connect took, at least a second.
                    state.heldFailure = (failure, .now + max(.seconds(1), started.duration(to: .now)))
                }
                failQueue(&state, failure, &effects)
                return nil
            }
        }
        if case let (socket, bytes)? = consume write, writeAndRelease(consume bytes, on: socket, &effects) {
            service(socket, &effects)
        }
        if let (socket, bytes) = lastWrite {
            _ = socket.write(bytes)
            socket.close()
        }
        perform(effects)
    }

    private func failQueue(_ state: inout State, _ failure: RedisError, _ effects: inout Effects) {
        state.keepReplays(of: state.queue, to: node)
        for command in state.queue { effects.completions.append((command, .failure(failure.unwritten), ReplyArrival.Release())) }
        state.queue.removeAll()
        state.phase = .idle
        finishShutdownIfDrained(&state, &effects)
    }

    // MARK: Event loop

    func handle(readable: Bool, writable: Bool, readToEnd: Bool) {
        var effects = Effects()
        // Take the I/O (the read, then the bytes staged meanwhile), or, while another thread owns
        // it, leave the read to that thread.
        let claimed: NodeSocket? = state.withLock { state in
            guard state.phase == .open, let socket = state.socket else { return nil }
            if state.ioOwned {
                state.readWanted = true
                return nil
            }
            state.ioOwned = true
            return socket
        }
        if let claimed { service(claimed, &effects, readToEnd: readToEnd) }
        perform(effects)
    }

    func checkDeadlines(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        var effects = Effects()
        let (next, write): (ContinuousClock.Instant?, (NodeSocket, [UInt8])?) = state.withLock { state in
            guard state.unansweredCount > 0, let since = state.waitingSince else { return (nil, nil) }
            let deadline = since + configuration.commandTimeout
            guard now >= deadline else {
                // Bytes that wait for the node's next answer go out once it is overdue; until
                // then, wake when it will be.
                let write = takeStalledOutput(&state, force: false)
                let flushAt = since + Self.coalescingWindow
                return (!state.ioOwned && state.waitsForAnswer && flushAt > now ? min(deadline, flushAt) : deadline, write)
            }
            drop(&state, error(.timeout, "no reply within \(configuration.commandTimeout)"), &effects)
            return (nil, nil)
        }
        if case let (socket, bytes)? = consume write, writeAndRelease(consume bytes, on: socket, &effects) {
            service(socket, &effects)
        }
        perform(effects)
        return next
    }

    // MARK: Shutdown

    /// The connection object is gone: writes what is queued and closes the socket at once
    /// (``beginShutdown()``, then ``interrupt()``). While a connection is being made for queued
    /// commands, they wait for it (within the connect's time limit): once made, they are written as
    /// far as the socket takes them at once, and it closes; if it fails, they fail with it
    /// (``interrupt()`` does the same, answering their callers at once).
    func abandon() {
        let waitsForConnect = state.withLock { state in
            guard state.phase == .connecting, !state.queue.isEmpty, !state.exitSignalled else { return false }
            state.shuttingDown = true
            state.closeOnceWritten = true
            return true
        }
        guard !waitsForConnect else { return }
        beginShutdown()
        interrupt()
    }

    /// Stops accepting commands; what is queued is still sent and answered, then the socket closes.
    func beginShutdown() {
        var effects = Effects()
        let write: (NodeSocket, [UInt8])? = state.withLock { state in
            guard !state.shuttingDown else { return nil }
            state.shuttingDown = true
            // Releases lost with an earlier connection get one more connect (within the grace
            // period), as if a command had come.
            if state.phase == .idle, !state.replays.isEmpty {
                state.queueReplays()
                if !state.queue.isEmpty {
                    state.phase = .connecting
                    effects.connect = true
                    return nil
                }
            }
            // Everything queued goes out now, also what waited for an answer (see
            // takeStalledOutput): the grace period may end before the node answers.
            if let write = takeStalledOutput(&state, force: true) { return write }
            finishShutdownIfDrained(&state, &effects)
            return nil
        }
        if case let (socket, bytes)? = consume write, writeAndRelease(consume bytes, on: socket, &effects) {
            service(socket, &effects)
        }
        perform(effects)
    }

    /// Ends the shutdown now (after the grace period, or when the connection object is gone):
    /// fails what is still queued or unanswered and closes the socket (or, while a thread owns
    /// the I/O, has it close the socket when it lets go).
    func interrupt() {
        var effects = Effects()
        state.withLock { state in
            state.shuttingDown = true
            guard !state.exitSignalled else { return }
            let failure = error(.shutdown, "the connection was shut down before the server answered")
            // Queued while a connect is under way, they are still written once it opens.
            let queuedFailure = state.phase == .connecting ? failure : failure.unwritten
            for command in state.queue { effects.completions.append((command, .failure(queuedFailure), ReplyArrival.Release())) }
            if state.phase == .connecting, !state.queue.isEmpty {
                // Still written once connected (a release must reach the node), then closed:
                // see connected(_:tookSince:). Their callers have their answer now.
                state.closeOnceWritten = true
            } else {
                state.queue.removeAll()
            }
            if state.socket != nil { drop(&state, failure, &effects) }
            if state.ioOwned {
                // The owner closes the socket; the commands fail now.
                while let item = state.popInFlight() { effects.completions.append((item.command, .failure(failure), ReplyArrival.Release())) }
            }
            state.exitSignalled = true
            effects.exited = true
        }
        perform(effects)
    }

    func waitUntilExited() async {
        await exited.wait()
    }
}
