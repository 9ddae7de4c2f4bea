import Synchronization

/// A socket its connection gave up on at a command timeout, kept open for a while so that a
/// release can still follow, on the node, the commands the socket holds there.
///
/// A node that stops answering (SIGSTOP, a long stall) keeps what it read of the socket and runs
/// it once it wakes. A release sent on the connection's next socket can run before that: the
/// node reads each client in turns, a bounded amount per turn. An attempt's `SET` held in the
/// old socket would then run after its clean-up, and its key live out its expiry. So the socket
/// lingers:
/// - what the connection had staged for it and not written yet (the socket was full) is
///   written here as the socket drains, in order: those commands timed out like the ones
///   written before them, and may run late like them;
/// - each release queued on the connection meanwhile (``RedisScriptCall/runsLateUnlessBehind``:
///   a compare-and-delete of one value) is written here too, as `EVAL`, behind all that. On
///   the node it runs after those commands; run twice, a compare-and-delete of one value is
///   harmless.
///
/// Nothing is read from the socket: its replies go with it. It closes at ``until`` (what is
/// still unwritten then is lost, and a command cut short is discarded by the node), when the
/// connection shuts down or has too many lingering, or when a write fails.
final class LingeringSocket: EventLoopSource {
    private struct State {
        /// The socket, until it closes. Every call on it is made with this lock held
        /// (``NodeSocket``'s rule).
        var socket: NodeSocket?
        /// Its token in the loop, once registered.
        var token: UInt64?
        /// Bytes not written yet, in order; the first may be the rest of a command cut short.
        var pending: [UInt8]
    }

    private let state: Mutex<State>
    private let loop: RedisEventLoop
    /// When it closes.
    let until: ContinuousClock.Instant

    /// Takes `socket`, which the caller no longer watches nor uses, with the bytes `pending`
    /// for it (the rest of a write cut short first, if any), until `until`.
    init(socket: NodeSocket, pending: [UInt8], until: ContinuousClock.Instant, loop: RedisEventLoop) {
        state = Mutex(State(socket: socket, token: nil, pending: pending))
        self.until = until
        self.loop = loop
    }

    deinit {
        state.withLock { $0.socket?.close() }
    }

    /// Registers with the loop, which closes the socket at ``until`` and reports it writable
    /// so that what is pending goes out as it drains; closes it at once when the loop cannot.
    func start() {
        // Its deadline is the loop's next check while it is registered: the interval need not
        // be shorter than the time left (the loop takes the shortest of its sources').
        switch loop.register(self, checkInterval: max(ContinuousClock.now.duration(to: until), .milliseconds(5))) {
        case let .success(token):
            let descriptor: Int32? = state.withLock { state in
                state.token = token
                return state.socket?.descriptor
            }
            guard let descriptor else { return loop.deregister(token) }
            if loop.watch(token, descriptor: descriptor, writable: true) != nil { close() }
        case .failure:
            close()
        }
    }

    /// Appends `bytes` (whole commands) behind what the socket holds and writes what it takes,
    /// if it is still open and its time is not up.
    func write(_ bytes: [UInt8]) {
        guard ContinuousClock.now < until else { return close() }
        flush { $0.append(contentsOf: bytes) }
    }

    func handle(readable: Bool, writable: Bool, readToEnd: Bool) {
        if writable { flush() }
    }

    func checkDeadlines(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        guard now >= until else { return until }
        close()
        return nil
    }

    /// Closes the socket (what was written stays with the node).
    func close() {
        closeUnless { _ in false }
    }

    /// Whether the socket is still open.
    var isOpen: Bool { state.withLock { $0.socket != nil } }

    /// Adds to what is pending (`adding`), then writes as much of it as the socket takes; a
    /// failed write closes the socket.
    private func flush(adding: (inout [UInt8]) -> Void = { _ in }) {
        closeUnless { state in
            adding(&state.pending)
            guard let socket = state.socket, !state.pending.isEmpty else { return true }
            guard case let .success(count) = socket.write(state.pending) else { return false }
            state.pending.removeFirst(count)
            return true
        }
    }

    /// Runs `body` on the open socket's state; closes the socket (and leaves the loop) when it
    /// returns false.
    private func closeUnless(_ body: (inout State) -> Bool) {
        let token: UInt64? = state.withLock { state in
            guard let socket = state.socket else { return nil }
            if body(&state) { return nil }
            if let token = state.token { loop.unwatch(token, descriptor: socket.descriptor) }
            socket.close()
            state.socket = nil
            state.pending = []
            return state.token
        }
        if let token { loop.deregister(token) }
    }
}
