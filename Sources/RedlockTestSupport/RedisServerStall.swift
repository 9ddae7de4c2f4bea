import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A `DEBUG SLEEP` in progress on one server, made by ``RedisServer/stall(for:)``.
public final class RedisServerStall: Sendable {
    /// How long the server sleeps.
    public let duration: Duration
    /// When the command was sent.
    public let startedAt: ContinuousClock.Instant

    private struct State {
        var over = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    init(duration: Duration, startedAt: ContinuousClock.Instant) {
        self.duration = duration
        self.startedAt = startedAt
    }

    /// Whether the server has answered the `DEBUG SLEEP` (or closed the connection).
    public var isOver: Bool { state.withLock { $0.over } }

    /// Waits until the server has answered the `DEBUG SLEEP`, or was killed.
    public func waitUntilOver() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let over = state.withLock { state in
                if state.over { return true }
                state.waiters.append(continuation)
                return false
            }
            if over { continuation.resume() }
        }
    }

    /// Blocks the calling thread until the reply (or EOF, or the receive timeout), then closes.
    func awaitReply(on socket: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
            if count < 0, errno == EINTR { continue }
            // `+OK\r\n` arrives in one segment on loopback; anything else ends the wait too.
            break
        }
        close(socket)
        let waiters: [CheckedContinuation<Void, Never>] = state.withLock { state in
            state.over = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}
