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

    /// The endpoint to point a client at.
    public var endpoint: RedisEndpoint { .hostname("127.0.0.1", port: port) }

    private init(port: Int, listener: Int32) {
        self.port = port
        self.listener = listener
    }

    /// How many connections it accepted.
    public var acceptedCount: Int { connections.withLock { $0.count } }

    /// Starts listening; `reply` is written after each read from a client (nil: never answer).
    /// With `closeAfterReply`, the first reply is followed at once by the end of the stream (the
    /// reply and the FIN arrive together), as a server that answers and then exits would do.
    public static func start(reply: String?, closeAfterReply: Bool = false) throws -> GarbageServer {
        let (descriptor, port) = try loopbackListener(backlog: 16)
        let server = GarbageServer(port: port, listener: descriptor)
        let thread = Thread { server.serve(reply: reply.map { Array($0.utf8) }, closeAfterReply: closeAfterReply) }
        thread.name = "garbage server \(server.port)"
        thread.start()
        return server
    }

    private func serve(reply: [UInt8]?, closeAfterReply: Bool) {
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
            guard keep else {
                close(client)
                return
            }
            guard let reply else { continue }
            let thread = Thread {
                var buffer = [UInt8](repeating: 0, count: 1024)
                while buffer.withUnsafeMutableBytes({ read(client, $0.baseAddress, $0.count) }) > 0 {
                    _ = reply.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if closeAfterReply {
                        _ = shutdown(client, Int32(SHUT_WR))
                        return
                    }
                }
            }
            thread.start()
        }
    }

    /// Stops listening and closes every accepted connection.
    public func stop() {
        let first = stopped.withLock { stopped in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        Glibc.shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for client in connections.withLock({ $0 }) {
            Glibc.shutdown(client, Int32(SHUT_RDWR))
            close(client)
        }
    }
}
