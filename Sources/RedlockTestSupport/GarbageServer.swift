import Dispatch
import Foundation
import RedlockTransport
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A TCP listener on a free loopback port that is not Redis: it answers every request with
/// fixed bytes that are not RESP, or (with `reply: nil`) accepts and never answers.
/// For tests of how clients treat a node that answers garbage or stops answering.
public final class GarbageServer: Sendable {
    /// The port on 127.0.0.1.
    public let port: Int
    private let listener: Int32
    private let connections = Mutex<[Int32]>([])
    private let stopped = Mutex(false)
    /// The accepting thread and every replying one, while they run: ``stop()`` closes the
    /// descriptors only once they are done with them, so none of them can read or write a
    /// descriptor number the process already gave to something else.
    private let threads = DispatchGroup()

    /// The endpoint to point a client at.
    public var endpoint: RedisEndpoint { .hostname("127.0.0.1", port: port) }

    private init(port: Int, listener: Int32) {
        self.port = port
        self.listener = listener
    }

    /// How many connections it accepted.
    public var acceptedCount: Int { connections.withLock { $0.count } }

    /// How many bytes each accepted connection sent, in the order they were accepted (also
    /// after a closing reply: until the client closes its side).
    public var bytesReceived: [Int] { received.withLock { $0 } }
    private let received = Mutex<[Int]>([])

    /// Starts listening; `reply` is written after each read from a client (nil: never answer).
    /// With `closeAfterReply`, reply number `repliesBeforeClose` (default: the first) on each
    /// connection is followed at once by the end of the stream (the reply and the FIN arrive
    /// together, in one TCP segment), as a server that answers and then exits would do.
    public static func start(reply: String?, closeAfterReply: Bool = false, repliesBeforeClose: Int = 1) throws -> GarbageServer {
        let (descriptor, port) = try loopbackListener(backlog: 16)
        let server = GarbageServer(port: port, listener: descriptor)
        server.threads.enter()
        let thread = Thread {
            server.serve(reply: reply.map { Array($0.utf8) }, closeAfter: closeAfterReply ? max(1, repliesBeforeClose) : nil)
            server.threads.leave()
        }
        thread.name = "garbage server \(server.port)"
        thread.start()
        return server
    }

    private func serve(reply: [UInt8]?, closeAfter: Int?) {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let keep = stopped.withLock { stopped in
                if stopped { return false }
                connections.withLock { $0.append(client) }
                return true
            }
            let index = received.withLock { received in
                received.append(0)
                return received.count - 1
            }
            guard keep else {
                close(client)
                return
            }
            guard let reply else { continue }
            threads.enter()
            let thread = Thread { [threads, self] in
                defer { threads.leave() }
                var buffer = [UInt8](repeating: 0, count: 1024)
                var replies = 0
                var closed = false
                while case let count = buffer.withUnsafeMutableBytes({ read(client, $0.baseAddress, $0.count) }), count > 0 {
                    received.withLock { $0[index] += count }
                    // After the end of its stream it only counts what the client still sends.
                    if closed { continue }
                    replies += 1
                    let closing = closeAfter.map { replies >= $0 } ?? false
                    if closing {
                        var corked: Int32 = 1
                        // Corked, the reply waits in the socket for the FIN and leaves with it
                        // in one segment: the client reads both at once, never the reply alone.
                        _ = setsockopt(client, Int32(IPPROTO_TCP), TCP_CORK, &corked, socklen_t(MemoryLayout<Int32>.size))
                    }
                    _ = reply.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if closing {
                        _ = shutdown(client, Int32(SHUT_WR))
                        closed = true
                    }
                }
            }
            thread.start()
        }
    }

    /// Stops listening and closes every accepted connection: shuts the sockets down, which ends
    /// the threads' `accept`, `read` and `send` at once, waits for the threads (1 s at most),
    /// then closes the descriptors.
    public func stop() {
        let first = stopped.withLock { stopped in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        Glibc.shutdown(listener, Int32(SHUT_RDWR))
        let clients = connections.withLock { $0 }
        for client in clients { Glibc.shutdown(client, Int32(SHUT_RDWR)) }
        // A thread still running after that is stuck elsewhere: its descriptors stay open
        // (a leak in a test process) rather than be closed under it.
        guard threads.wait(timeout: .now() + 1) == .success else { return }
        close(listener)
        for client in clients { close(client) }
    }
}
