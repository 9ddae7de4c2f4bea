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
/// fixed bytes that are not RESP, or (with `reply: nil`) accepts and never answers, or lets a
/// handler write what it likes (``start(responding:)``). For tests of how clients treat a node
/// that answers garbage, stops answering, or sends well-formed replies in unusual ways.
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

    /// What each accepted connection sent, read by read, in the order they were accepted (the
    /// first 64 reads of each; a handler sees its own read's bytes here).
    public var reads: [[[UInt8]]] { readBytes.withLock { $0 } }
    private let readBytes = Mutex<[[[UInt8]]]>([])

    /// Starts listening; `reply` is written after each read from a client (nil: never answer).
    /// With `closeAfterReply`, reply number `repliesBeforeClose` (default: the first) on each
    /// connection is followed at once by the end of the stream (the reply and the FIN arrive
    /// together, in one TCP segment), as a server that answers and then exits would do.
    public static func start(reply: String?, closeAfterReply: Bool = false, repliesBeforeClose: Int = 1) throws -> GarbageServer {
        guard let reply = reply.map({ Array($0.utf8) }) else { return try start(responding: nil) }
        let closeAfter = closeAfterReply ? max(1, repliesBeforeClose) : nil
        return try start { peer, read in
            let closing = closeAfter.map { read + 1 >= $0 } ?? false
            // Corked, the reply waits in the socket for the FIN and leaves with it in one
            // segment: the client reads both at once, never the reply alone.
            if closing { peer.cork() }
            peer.send(reply)
            if closing { peer.endStream() }
            return !closing
        }
    }

    /// Starts listening; after each read from a client, `respond` writes what it likes to that
    /// client through the ``Peer`` (pieces with pauses between them, urgent data, the end of
    /// the stream), given the read's number on its connection (from 0). Once it returns false
    /// the connection gets nothing more (what the client sends is still read and counted).
    /// With `respond` nil it accepts and never answers.
    public static func start(responding respond: (@Sendable (_ peer: Peer, _ read: Int) -> Bool)?) throws -> GarbageServer {
        let (descriptor, port) = try loopbackListener(backlog: 16)
        let server = GarbageServer(port: port, listener: descriptor)
        server.threads.enter()
        let thread = Thread {
            server.serve(respond)
            server.threads.leave()
        }
        thread.name = "garbage server \(server.port)"
        thread.start()
        return server
    }

    /// One accepted connection, as ``start(responding:)``'s handler writes to it (on that
    /// connection's thread). Use it only inside the handler's call: it holds the raw
    /// descriptor, which ``GarbageServer/stop()`` closes once the handlers returned.
    public struct Peer: Sendable {
        fileprivate let descriptor: Int32
        /// What the client sent in the read the handler was called for.
        public let bytes: [UInt8]

        /// Writes all of `bytes` (less if the client is gone).
        public func send(_ bytes: [UInt8]) {
            var offset = 0
            while offset < bytes.count {
                let sent = bytes[offset...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard sent > 0 else { return }
                offset += sent
            }
        }

        /// Writes `text` as UTF-8.
        public func send(_ text: String) { send(Array(text.utf8)) }

        /// Writes one byte as TCP urgent data (`MSG_OOB`): it is taken out of the stream, and a
        /// read stops at its place.
        public func sendUrgent(_ byte: UInt8) {
            _ = withUnsafeBytes(of: byte) { Glibc.send(descriptor, $0.baseAddress, 1, Int32(MSG_OOB | MSG_NOSIGNAL)) }
        }

        /// Holds what is written next in the socket until the end of the stream (`TCP_CORK`).
        public func cork() {
            var corked: Int32 = 1
            _ = setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_CORK, &corked, socklen_t(MemoryLayout<Int32>.size))
        }

        /// Ends the stream to the client (a FIN): `shutdown(SHUT_WR)`.
        public func endStream() {
            _ = shutdown(descriptor, Int32(SHUT_WR))
        }
    }

    private func serve(_ respond: (@Sendable (Peer, Int) -> Bool)?) {
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
            readBytes.withLock { $0.append([]) }
            guard keep else {
                close(client)
                return
            }
            guard let respond else { continue }
            threads.enter()
            let thread = Thread { [threads, self] in
                defer { threads.leave() }
                var buffer = [UInt8](repeating: 0, count: 1024)
                var reads = 0
                var answering = true
                while case let count = buffer.withUnsafeMutableBytes({ read(client, $0.baseAddress, $0.count) }), count > 0 {
                    received.withLock { $0[index] += count }
                    readBytes.withLock { reads in
                        if reads[index].count < 64 { reads[index].append(Array(buffer[0..<count])) }
                    }
                    // Once done answering it only counts what the client still sends.
                    guard answering else { continue }
                    answering = respond(Peer(descriptor: client, bytes: Array(buffer[0..<count])), reads)
                    reads += 1
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
