import Foundation
import Synchronization

/// A pub/sub subscription connection to one Redis node.
///
/// Channels can be added and removed at any time. The subscriber is driven by an event loop
/// (the client's, or the process's shared one): messages are delivered to `onMessage` on the
/// loop's thread (keep the handler short), and after a lost connection it reconnects with
/// back-off (50 ms doubling to 1 s) and subscribes again. Messages published while disconnected
/// are lost, as with any Redis subscriber: use it for hints that have a fallback.
///
/// Call ``shutdown()`` when done.
package final class RedisSubscriber: Sendable, EventLoopSource {
    private struct State {
        /// Channels by their bytes, as the server compares them: Swift's `String` equality would
        /// merge canonically equivalent names (`"caf\u{E9}"`, `"cafe\u{301}"`), two channels there.
        var channels: [[UInt8]: Int] = [:]
        var subscribed = Set<[UInt8]>()
        var socket: NodeSocket?
        var watching = false
        var connecting = false
        var retryAt: ContinuousClock.Instant?
        var backoff = Duration.milliseconds(50)
        var output: [UInt8] = []
        var written = 0
        var watchingWrites = false
        var shuttingDown = false
        /// What the connects showed of the server's answers to `INFO server`.
        var serverInfo = NodeSocket.ServerInfoHistory()
    }

    /// The configuration the subscriber connects with.
    package let configuration: RedisConnectionConfiguration
    private let loop: RedisEventLoop
    private let state = Mutex(State())
    private let tls = TLSContextCache()
    private let onMessage: @Sendable (_ channel: String, _ payload: [UInt8]) -> Void
    private let onSubscribed: @Sendable (_ channel: String) -> Void
    private let onRefused: @Sendable (_ error: String) -> Void
    /// Looks at each new socket before it subscribes (``ConnectVet``): a refused one closes, and
    /// the subscriber tries again later as after a failed connect.
    private let vet: ConnectVet?
    /// The loop's token, once registered (on the first subscription).
    private let token = Mutex<UInt64?>(nil)

    /// Creates a subscriber on `eventLoop`; it connects once it has a channel.
    ///
    /// `onMessage` gets each message; `onSubscribed` each channel the server confirmed (also
    /// again after a reconnect), from which point on no message of that channel is missed while
    /// the connection lasts; `onRefused` each error reply (a `SUBSCRIBE` the user may not run
    /// on a channel, or renamed away: the channel is then not heard). All run on the loop's
    /// thread. `vet`, when given, looks at each new socket's address first, on the connector
    /// thread: an error refuses that socket.
    package init(
        configuration: RedisConnectionConfiguration,
        eventLoop: RedisEventLoop = .shared,
        vet: ConnectVet? = nil,
        onSubscribed: @escaping @Sendable (_ channel: String) -> Void = { _ in },
        onRefused: @escaping @Sendable (_ error: String) -> Void = { _ in },
        onMessage: @escaping @Sendable (_ channel: String, _ payload: [UInt8]) -> Void
    ) {
        self.configuration = configuration
        loop = eventLoop
        self.vet = vet
        self.onMessage = onMessage
        self.onSubscribed = onSubscribed
        self.onRefused = onRefused
    }

    /// Subscribes to `channel` (counted: each call needs one ``unsubscribe(_:)``).
    package func subscribe(_ channel: String) {
        guard let token = registeredToken() else { return }
        let connect: Bool = state.withLock { state in
            guard !state.shuttingDown else { return false }
            let key = Array(channel.utf8)
            state.channels[key, default: 0] += 1
            return synchronize(&state, token: token, changed: key)
        }
        if connect { startConnect() }
    }

    /// Drops one ``subscribe(_:)`` of `channel`; the last one unsubscribes.
    package func unsubscribe(_ channel: String) {
        guard let token = registeredToken() else { return }
        let connect: Bool = state.withLock { state in
            let key = Array(channel.utf8)
            guard let count = state.channels[key] else { return false }
            state.channels[key] = count <= 1 ? nil : count - 1
            return synchronize(&state, token: token, changed: key)
        }
        if connect { startConnect() }
    }

    /// Closes the connection and leaves the loop. A connect in progress closes what it opens.
    package func shutdown() async {
        beginShutdown()
    }

    /// Closes the connection and leaves the loop, without suspending.
    package func beginShutdown() {
        let token = token.withLock { $0 }
        state.withLock { state in
            state.shuttingDown = true
            close(&state, token: token)
        }
        if let token { loop.deregister(token) }
    }

    private func registeredToken() -> UInt64? {
        token.withLock { token in
            if let token { return token }
            guard case let .success(registered) = loop.register(self, checkInterval: .milliseconds(250)) else { return nil }
            token = registered
            return registered
        }
    }

    /// Brings the server's subscriptions to the wanted channels; returns whether a connect must
    /// start. With `changed`, only that channel's count changed: on a connection, it alone is
    /// compared (a client subscribed to many names pays nothing per name for the others).
    private func synchronize(_ state: inout State, token: UInt64, changed: [UInt8]? = nil) -> Bool {
        if let changed, state.socket != nil {
            let wanted = state.channels[changed] != nil
            guard wanted != state.subscribed.contains(changed) else { return false }
            if wanted {
                state.subscribed.insert(changed)
                RedisCommand("SUBSCRIBE", String(decoding: changed, as: UTF8.self)).appendWire(to: &state.output)
            } else {
                state.subscribed.remove(changed)
                RedisCommand("UNSUBSCRIBE", String(decoding: changed, as: UTF8.self)).appendWire(to: &state.output)
            }
            flush(&state, token: token)
            return false
        }
        let wanted = Set(state.channels.keys)
        guard state.socket != nil else {
            guard !wanted.isEmpty, !state.connecting, state.retryAt == nil, !state.shuttingDown else { return false }
            state.connecting = true
            return true
        }
        let added = wanted.subtracting(state.subscribed)
        let removed = state.subscribed.subtracting(wanted)
        func names(_ channels: Set<[UInt8]>) -> [String] {
            channels.sorted { $0.lexicographicallyPrecedes($1) }.map { String(decoding: $0, as: UTF8.self) }
        }
        if !added.isEmpty { RedisCommand(["SUBSCRIBE"] + names(added)).appendWire(to: &state.output) }
        if !removed.isEmpty { RedisCommand(["UNSUBSCRIBE"] + names(removed)).appendWire(to: &state.output) }
        state.subscribed = wanted
        flush(&state, token: token)
        return false
    }

    private func flush(_ state: inout State, token: UInt64) {
        guard let socket = state.socket else { return }
        switch socket.write(state.output, from: state.written) {
        case let .success(count): state.written += count
        case .failure:
            lost(&state, token: token)
            return
        }
        if state.written == state.output.count {
            state.output.removeAll(keepingCapacity: true)
            state.written = 0
        }
        let pending = state.written < state.output.count
        if pending != state.watchingWrites {
            if loop.update(token, descriptor: socket.descriptor, writable: pending) != nil {
                lost(&state, token: token)
                return
            }
            state.watchingWrites = pending
        }
    }

    private func close(_ state: inout State, token: UInt64?) {
        if let socket = state.socket {
            if let token, state.watching { loop.unwatch(token, descriptor: socket.descriptor) }
            socket.close()
        }
        state.socket = nil
        state.watching = false
        state.watchingWrites = false
        state.subscribed = []
        state.output.removeAll()
        state.written = 0
    }

    /// The connection broke: close it and try again after the back-off.
    private func lost(_ state: inout State, token: UInt64) {
        close(&state, token: token)
        state.retryAt = .now + state.backoff
        state.backoff = min(state.backoff * 2, .seconds(1))
    }

    private func startConnect() {
        // Vetted by its server's run_id too: a subscriber of one server under two addresses
        // would deliver each release and handoff message twice.
        let identification = state.withLock { $0.serverInfo }.identification(vetted: vet != nil)
        NodeSocket.connectInBackground(configuration, tls: tls, identification: identification) { [self] result in
            connected(result)
        }
    }

    private func connected(_ connect: NodeSocket.ConnectResult) {
        let outcome = NodeSocket.vetted(connect.outcome, by: vet).outcome
        guard let token = token.withLock({ $0 }) else { return }
        state.withLock { state in
            state.connecting = false
            state.serverInfo.record(connect)
            switch outcome {
            case let .success(socket):
                guard !state.shuttingDown else {
                    socket.close()
                    return
                }
                if loop.watch(token, descriptor: socket.descriptor, writable: false) != nil {
                    socket.close()
                    state.retryAt = .now + state.backoff
                    return
                }
                state.socket = socket
                state.watching = true
                state.backoff = .milliseconds(50)
                _ = synchronize(&state, token: token)
            case .failure:
                state.retryAt = .now + state.backoff
                state.backoff = min(state.backoff * 2, .seconds(1))
            }
        }
    }

    func handle(readable: Bool, writable: Bool, readToEnd: Bool) {
        guard let token = token.withLock({ $0 }) else { return }
        /// A message (with its payload) or a confirmed subscription (payload nil), in order;
        /// an error reply as a refusal (channel nil).
        let events: [(channel: String?, payload: [UInt8]?)] = state.withLock { state in
            guard let socket = state.socket else { return [] }
            if state.written < state.output.count { flush(&state, token: token) }
            guard readable || readToEnd, state.socket === socket else { return [] }
            let outcome = socket.read(toEndOfStream: readToEnd)
            var events: [(channel: String?, payload: [UInt8]?)] = []
            for reply in outcome.replies {
                if case let .error(text) = reply {
                    events.append((nil, Array(text.utf8)))
                    continue
                }
                guard case let .array(parts) = reply, parts.count == 3, let channel = parts[1].string else { continue }
                switch parts[0].string {
                case "message":
                    if case let .bulkString(payload) = parts[2] { events.append((channel, payload)) }
                case "subscribe":
                    events.append((channel, nil))
                default:
                    continue
                }
            }
            if outcome.failure != nil { lost(&state, token: token) }
            return events
        }
        for (channel, payload) in events {
            if let channel {
                if let payload { onMessage(channel, payload) } else { onSubscribed(channel) }
            } else {
                onRefused(String(decoding: payload ?? [], as: UTF8.self))
            }
        }
    }

    func checkDeadlines(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        guard let token = token.withLock({ $0 }) else { return nil }
        enum Next { case nothing, at(ContinuousClock.Instant), connect }
        let next: Next = state.withLock { state in
            guard let retryAt = state.retryAt else { return .nothing }
            guard now >= retryAt else { return .at(retryAt) }
            state.retryAt = nil
            return synchronize(&state, token: token) ? .connect : .nothing
        }
        switch next {
        case .nothing: return nil
        case let .at(instant): return instant
        case .connect:
            startConnect()
            return nil
        }
    }
}
