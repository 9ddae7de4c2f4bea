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
/// Each connection owns one dedicated I/O thread that talks to the server with blocking hiredis
/// calls, so Redis I/O never blocks Swift's cooperative thread pool. Commands from concurrent
/// callers are pipelined: the thread writes every queued command, then reads the replies in order.
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

    /// Creates a connection and starts its I/O thread; the server is contacted on first use.
    public init(configuration: RedisConnectionConfiguration) {
        self.configuration = configuration
        core = ConnectionCore(configuration: configuration)
        let core = core
        let thread = Thread { core.run() }
        // Linux applies thread names of at most 15 bytes.
        thread.name = "redis-io"
        thread.stackSize = 256 * 1024
        thread.start()
    }

    /// Creates a connection to an endpoint with default settings.
    public convenience init(endpoint: RedisEndpoint) {
        self.init(configuration: RedisConnectionConfiguration(endpoint: endpoint))
    }

    deinit {
        core.beginShutdown()
    }

    /// The node's endpoint.
    public var description: String { configuration.description }

    /// How many times the connection has connected (and so reconnected) successfully.
    ///
    /// A reply to a command is always served by a connection whose number is at most the value
    /// read after the reply arrived, so a caller that caches facts about the server (its run id,
    /// its uptime) can tell when to refresh them: a restarted server always means a reconnect.
    package var connectionGeneration: UInt64 { core.generation.load(ordering: .acquiring) }

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
    /// ``RedisReplyHandler``). The command is always sent. With `fallback`, the command is a
    /// script's `EVALSHA` and `fallback` its `EVAL` form, sent in its place when commands follow
    /// it in the batch or the node answers `NOSCRIPT`.
    package func send(_ command: RedisCommand, fallback: RedisCommand? = nil, handler: @escaping RedisReplyHandler) {
        core.enqueue(PendingCommand(command: command, fallback: fallback, handler: handler))
    }

    /// Queues several commands at once, in order, without suspending: no other caller's command
    /// lands between them, and the I/O thread usually writes them in one batch. Each handler
    /// gets its command's outcome exactly once.
    package func send(_ commands: [QueuedCommand]) {
        core.enqueue(contentsOf: commands.map { PendingCommand(command: $0.command, fallback: $0.fallback, handler: $0.handler) })
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
    /// server — then closes the socket and stops the I/O thread.
    ///
    /// Returns when the thread has exited. A server that does not answer gets a grace period of
    /// the command timeout, at most 500 ms; then the socket is shut down under the waiting read
    /// and the remaining commands fail.
    public func shutdown() async {
        core.beginShutdown()
        let grace = min(configuration.commandTimeout, .milliseconds(500))
        let core = core
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

/// The state shared by a connection's callers and its I/O thread.
final class ConnectionCore: Sendable {
    private struct Shared {
        var queue: [PendingCommand] = []
        var threadIsIdle = false
        var shuttingDown = false
        /// The open socket, for ``interrupt()``; -1 when none. Changed only under the lock, and
        /// closed only under it, so `interrupt` never touches a descriptor number reused since.
        var socket: Int32 = -1
    }

    private let configuration: RedisConnectionConfiguration
    private let shared = Mutex(Shared())
    private let exited = OneTimeEvent<Void>()
    /// Incremented by the I/O thread after every successful connect.
    let generation = Atomic<UInt64>(0)
    /// Signalled once each time the idle thread must wake up.
    private let wakeup = DispatchSemaphore(value: 0)

    init(configuration: RedisConnectionConfiguration) {
        self.configuration = configuration
    }

    private func error(_ code: RedisError.Code, _ message: String) -> RedisError {
        RedisError(code: code, endpoint: configuration.endpoint, message: message)
    }

    private enum EnqueueOutcome { case queued, wake, rejected(RedisError) }

    /// Queues `command`, waking the thread if it is idle.
    func enqueue(_ command: PendingCommand) {
        let outcome: EnqueueOutcome = shared.withLock { shared in
            if let refusal = refusal(adding: 1, to: shared) { return .rejected(refusal) }
            shared.queue.append(command)
            return wakeIfIdle(&shared)
        }
        settle(outcome, [command])
    }

    /// Queues `commands` together (all or none, in order), waking the thread if it is idle.
    func enqueue(contentsOf commands: [PendingCommand]) {
        let outcome: EnqueueOutcome = shared.withLock { shared in
            if let refusal = refusal(adding: commands.count, to: shared) { return .rejected(refusal) }
            shared.queue.append(contentsOf: commands)
            return wakeIfIdle(&shared)
        }
        settle(outcome, commands)
    }

    /// Why `count` more commands cannot be queued, if they cannot.
    @inline(__always)
    private func refusal(adding count: Int, to shared: borrowing Shared) -> RedisError? {
        if shared.shuttingDown { return error(.shutdown, "") }
        if shared.queue.count + count > configuration.maximumQueuedCommands {
            return error(.overloaded, "\(shared.queue.count) commands already queued")
        }
        return nil
    }

    private func wakeIfIdle(_ shared: inout Shared) -> EnqueueOutcome {
        guard shared.threadIsIdle else { return .queued }
        shared.threadIsIdle = false
        return .wake
    }

    private func settle(_ outcome: EnqueueOutcome, _ commands: @autoclosure () -> [PendingCommand]) {
        switch outcome {
        case .queued: break
        case .wake: wakeup.signal()
        case let .rejected(error): for command in commands() { command.complete(.failure(error)) }
        }
    }

    /// Stops accepting commands; the thread sends what is already queued, then exits.
    func beginShutdown() {
        let wake: Bool = shared.withLock { shared in
            guard !shared.shuttingDown else { return false }
            shared.shuttingDown = true
            defer { shared.threadIsIdle = false }
            return shared.threadIsIdle
        }
        if wake { wakeup.signal() }
    }

    func waitUntilExited() async {
        await exited.wait()
    }

    /// Shuts the socket down under the I/O thread, failing the read it may be blocked in.
    func interrupt() {
        shared.withLock { shared in
            if shared.socket >= 0 { shutdownSocket(shared.socket) }
        }
    }

    /// Closes the context (if any) and forgets its socket, atomically with ``interrupt()``.
    private func close(_ context: inout HiredisContext?) {
        shared.withLock { shared in
            shared.socket = -1
            context?.close()
        }
        context = nil
    }

    /// The I/O thread's loop: take every queued command, write them all, read their replies.
    func run() {
        var context: HiredisContext?
        var batch: [PendingCommand] = []
        var written: [PendingCommand] = []
        var staged: [PendingCommand] = []
        /// A host name that failed to resolve, and until when that answer stands.
        var failedResolution: (RedisError, ContinuousClock.Instant)?
        while true {
            enum Next { case work, sleep, exit }
            let next: Next = shared.withLock { shared in
                if shared.queue.isEmpty {
                    if shared.shuttingDown { return .exit }
                    shared.threadIsIdle = true
                    return .sleep
                }
                swap(&shared.queue, &batch)
                return .work
            }
            switch next {
            case .exit:
                close(&context)
                exited.fire()
                return
            case .sleep:
                wakeup.wait()
                continue
            case .work:
                break
            }

            if let open = context, open.peerHasClosed {
                close(&context)
            }
            let stopping = shared.withLock { $0.shuttingDown }
            if context == nil, stopping {
                // Shutting down: no new connection for what is left.
                for command in batch { command.complete(.failure(error(.shutdown, "the connection was shut down"))) }
                batch.removeAll(keepingCapacity: true)
                continue
            }
            if context == nil, let (error, until) = failedResolution, ContinuousClock.now < until {
                // The name did not resolve a moment ago: answer with that at once rather than
                // block this thread in the resolver again for every command.
                for command in batch { command.complete(.failure(error)) }
                batch.removeAll(keepingCapacity: true)
                continue
            }
            if context == nil, batch.contains(where: { $0.shouldSend }) {
                let connectStarted = ContinuousClock.now
                let connected = HiredisContext.connect(configuration)
                failedResolution = nil
                if case let .failure(error) = connected, error.code == .nameResolutionFailed {
                    // Cached for as long as the failed lookup took, at least a second.
                    failedResolution = (error, .now + max(.seconds(1), connectStarted.duration(to: .now)))
                }
                switch connected {
                case let .success(opened):
                    shared.withLock { $0.socket = opened.fileDescriptor }
                    context = opened
                    generation.add(1, ordering: .releasing)
                case let .failure(error):
                    for command in batch { command.complete(.failure(error)) }
                    batch.removeAll(keepingCapacity: true)
                    continue
                }
            }
            if let open = context, !process(batch, on: open, staged: &staged, written: &written) {
                close(&context)
            }
            batch.removeAll(keepingCapacity: true)
        }
    }

    /// Pipelines one batch on an open context: writes every command still wanted, then reads
    /// the replies in order. Returns false when the context must be dropped.
    ///
    /// The node must run the commands in the order they were queued, script fallbacks included.
    /// A script call with commands behind it in the batch is therefore sent as `EVAL` with its
    /// body: an `EVALSHA` answered `NOSCRIPT` (after a `SCRIPT FLUSH`, a restart, a failover)
    /// would have its fallback run after those commands. Only the batch's last command may go
    /// as `EVALSHA`: its fallback `EVAL` is written before anything queued later.
    private func process(
        _ batch: [PendingCommand],
        on context: HiredisContext,
        staged: inout [PendingCommand],
        written: inout [PendingCommand]
    ) -> Bool {
        defer {
            staged.removeAll(keepingCapacity: true)
            written.removeAll(keepingCapacity: true)
        }
        for command in batch where command.shouldSend { staged.append(command) }
        for (index, command) in staged.enumerated() {
            if index < staged.count - 1, let fallback = command.fallback {
                write(command, fallback, on: context, into: &written)
            } else {
                write(command, command.command, on: context, into: &written)
            }
        }
        var retried: [PendingCommand]? = []
        guard read(written, on: context, retrying: &retried) else { return false }
        guard let retried, !retried.isEmpty else { return true }
        written.removeAll(keepingCapacity: true)
        for command in retried {
            if let fallback = command.fallback { write(command, fallback, on: context, into: &written) }
        }
        var none: [PendingCommand]? = nil
        return read(written, on: context, retrying: &none)
    }

    private func write(_ pending: PendingCommand, _ command: RedisCommand, on context: HiredisContext, into written: inout [PendingCommand]) {
        if context.append(command) {
            written.append(pending)
        } else {
            pending.complete(.failure(error(.io, "could not format \(command)")))
        }
    }

    /// Reads one reply per written command. With `retrying` non-nil, commands answered
    /// `NOSCRIPT` that have a fallback are collected there instead of completed.
    private func read(
        _ written: [PendingCommand],
        on context: HiredisContext,
        retrying: inout [PendingCommand]?
    ) -> Bool {
        for (index, command) in written.enumerated() {
            let reply = context.readReply()
            switch reply {
            case .success:
                command.complete(reply)
            case let .failure(failure) where failure.code == .serverError:
                // Only the batch's last command can have been sent as `EVALSHA` (see `process`).
                if retrying != nil, command.fallback != nil, failure.message.hasPrefix("NOSCRIPT"), index == written.count - 1 {
                    retrying?.append(command)
                } else {
                    command.complete(reply)
                }
            case let .failure(failure):
                // The stream is broken: nothing after this point will be answered.
                for unanswered in written[index...] { unanswered.complete(.failure(failure)) }
                if let retried = retrying {
                    for unanswered in retried { unanswered.complete(.failure(failure)) }
                }
                return false
            }
        }
        return true
    }
}

/// Shuts a socket down in both directions, waking a thread blocked on it.
private func shutdownSocket(_ socket: Int32) {
    #if canImport(Glibc)
    _ = Glibc.shutdown(socket, Int32(SHUT_RDWR))
    #elseif canImport(Musl)
    _ = Musl.shutdown(socket, Int32(SHUT_RDWR))
    #elseif canImport(Darwin)
    _ = Darwin.shutdown(socket, SHUT_RDWR)
    #endif
}
