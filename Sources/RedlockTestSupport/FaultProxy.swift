import Foundation
import RedlockTransport
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A TCP proxy on a free loopback port in front of one node, that injects network faults
/// between a client and the node while the node keeps running (and expiring keys): added
/// latency, a direction that stalls (bytes are held, not lost: a client that closes behind them
/// still has them delivered once the stall ends, as TCP retransmits what a closed socket sent),
/// a connection reset, a stream cut after a number of bytes. Give each client its own proxy per
/// node to make partitions that differ per client.
///
/// Loopback only: it listens on 127.0.0.1 and connects to the node's 127.0.0.1 port. Threads of
/// its own (one to accept, two per connection), all ended by ``stop()``.
public final class FaultProxy: Sendable {
    /// Which way bytes flow.
    public enum Direction: Sendable, Hashable {
        /// From the client to the node (commands).
        case toNode
        /// From the node to the client (replies).
        case toClient
    }

    /// What the proxy does to the bytes it forwards; changes apply at once to every connection.
    public enum Fault: Sendable, Hashable {
        /// Forward everything at once.
        case none
        /// Hold each chunk for `delay` plus a random share of `jitter` before forwarding it.
        case latency(Duration, jitter: Duration = .zero)
        /// Forward nothing in `direction` (the bytes wait, as behind a black hole; the other
        /// direction flows). `.stall` of both directions is a partition.
        case stall(Set<Direction>)
        /// `.stall` for the connections open when it is set only; those made later flow (the
        /// path of the old connections broke: their bytes wait for TCP's next retransmission
        /// while a new connection gets through).
        case stallOpen(Set<Direction>)
        /// Forward `bytes` more bytes in `direction`, then nothing more in it (a cut mid-message,
        /// e.g. half a TLS record).
        case cut(Direction, afterBytes: Int)
        /// Forward what comes in `direction` in pieces of 1 to `maxBytes` bytes (at random), with
        /// a pause of `pause` after each: messages and TLS records cut at every possible point,
        /// several arriving in one read.
        case fragment(Direction, maxBytes: Int, pause: Duration)
        /// Forward `bytes` more bytes to the client (commands flow to the node as usual), then
        /// close every connection (a FIN after those bytes; what the client sends from then on
        /// is dropped), and close every connection accepted later at once: a node that answered
        /// and went away, whose reconnects fail (their handshakes see the connection closed).
        /// With 0, at once.
        case hangUp(afterBytes: Int)
    }

    /// The port on 127.0.0.1 clients connect to.
    public let port: Int
    /// The endpoint clients are pointed at.
    public var endpoint: RedisEndpoint { .hostname("127.0.0.1", port: port) }

    private struct Link {
        var client: Int32
        var node: Int32
        /// Its number in accept order, from 0.
        var serial: Int
    }

    private struct State {
        var fault = Fault.none
        /// Bytes still allowed through per direction under `.cut`.
        var allowance: [Direction: Int] = [:]
        /// Open connections by the client's socket.
        var links: [Int32: Link] = [:]
        /// Connections to end with an RST (by the client's socket).
        var resetting = Set<Int32>()
        /// Connections to end with a FIN (by the client's socket): `.hangUp`'s.
        var hangingUp = Set<Int32>()
        /// `.hangUp`'s bytes went through: connections are closed as they come.
        var hungUp = false
        var stopped = false
        var accepted = 0
        /// Under `.stallOpen`, the connections with a lower serial stall.
        var stallBelowSerial = 0
        /// The node's port on 127.0.0.1.
        var nodePort: Int
    }

    private let listener: Int32
    private let state: Mutex<State>

    private init(port: Int, listener: Int32, nodePort: Int) {
        self.port = port
        self.listener = listener
        state = Mutex(State(nodePort: nodePort))
    }

    /// Starts a proxy to `node`, which must be `127.0.0.1:port`.
    public static func start(to node: RedisEndpoint) throws -> FaultProxy {
        guard node.host == "127.0.0.1", let nodePort = node.port else {
            throw RedisServerError.noFreePort("a fault proxy forwards to 127.0.0.1 only, not \(node)")
        }
        let (descriptor, port) = try loopbackListener(backlog: 64)
        let proxy = FaultProxy(port: port, listener: descriptor, nodePort: nodePort)
        let thread = Thread { proxy.acceptLoop() }
        thread.name = "fault proxy \(proxy.port)"
        thread.start()
        return proxy
    }

    /// How many client connections it accepted.
    public var acceptedCount: Int { state.withLock { $0.accepted } }

    /// How many connections are open: a client's close ends one once the bytes it sent are
    /// delivered (or the node closed its side).
    public var openCount: Int { state.withLock { $0.links.count } }

    /// Applies `fault` from now on.
    public func set(_ fault: Fault) {
        state.withLock { state in
            state.fault = fault
            state.allowance = [:]
            state.stallBelowSerial = state.accepted
            state.hungUp = false
            if case let .cut(direction, bytes) = fault { state.allowance[direction] = bytes }
            if case let .hangUp(bytes) = fault {
                state.allowance[.toClient] = bytes
                if bytes <= 0 {
                    // Nothing more to let through: now.
                    state.hungUp = true
                    state.hangingUp.formUnion(state.links.keys)
                }
            }
        }
    }

    /// Points the proxy at another node from now on, as a failover moves a virtual address to
    /// the promoted replica: every open connection is reset, new ones go to `node`, which must be
    /// `127.0.0.1:port`.
    /// - Throws: ``RedisServerError/noFreePort(_:)`` for a node that is not on 127.0.0.1.
    public func retarget(to node: RedisEndpoint) throws {
        guard node.host == "127.0.0.1", let nodePort = node.port else {
            throw RedisServerError.noFreePort("a fault proxy forwards to 127.0.0.1 only, not \(node)")
        }
        state.withLock { state in
            state.nodePort = nodePort
            state.resetting.formUnion(state.links.keys)
        }
    }

    /// Resets every open connection (RST to the client, close to the node); new ones are
    /// accepted as before.
    public func resetConnections() {
        state.withLock { state in state.resetting.formUnion(state.links.keys) }
    }

    /// Stops accepting, resets every connection and ends the proxy's threads (within 20 ms).
    public func stop() {
        let first: Bool = state.withLock { state in
            guard !state.stopped else { return false }
            state.stopped = true
            state.resetting.formUnion(state.links.keys)
            return true
        }
        if first { _ = shutdown(listener, Int32(SHUT_RDWR)) }
    }

    deinit {
        close(listener)
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return address
    }

    /// Closes a connection's sockets; the client's with an RST (SO_LINGER 0) when it was reset.
    private static func closeLink(_ link: Link, reset: Bool) {
        if reset {
            var lingering = linger(l_onoff: 1, l_linger: 0)
            _ = setsockopt(link.client, SOL_SOCKET, SO_LINGER, &lingering, socklen_t(MemoryLayout<linger>.size))
        }
        _ = close(link.client)
        _ = close(link.node)
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            let node = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
            var address = Self.loopback(port: state.withLock { $0.nodePort })
            let connected = node >= 0 && withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(node, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            // Each write goes out as its own segment (no Nagle wait for an ACK): the proxy adds
            // only the delays its fault asks for, and `.fragment`'s pieces stay apart.
            var noDelay: Int32 = 1
            for descriptor in [client, node] where descriptor >= 0 {
                _ = setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, socklen_t(MemoryLayout<Int32>.size))
            }
            let link = Link(client: client, node: node, serial: state.withLock { $0.accepted })
            let keep = connected && state.withLock { state in
                guard !state.stopped else { return false }
                guard !state.hungUp else {
                    // Accepted, and closed at once.
                    state.accepted += 1
                    return false
                }
                state.links[client] = link
                state.accepted += 1
                return true
            }
            guard keep else {
                if state.withLock({ $0.hungUp }) {
                    Self.closeLink(link, reset: false)
                } else if node >= 0 {
                    Self.closeLink(link, reset: true)
                } else {
                    _ = close(client)
                }
                continue
            }
            let pumps = Pumps()
            for (from, to, direction) in [(client, node, Direction.toNode), (node, client, Direction.toClient)] {
                let thread = Thread { [self] in
                    pump(from: from, to: to, direction, link: link)
                    // The second pump to end closes both sockets.
                    guard pumps.finish() else { return }
                    let reset = state.withLock { state in
                        state.links[link.client] = nil
                        state.hangingUp.remove(link.client)
                        return state.resetting.remove(link.client) != nil
                    }
                    Self.closeLink(link, reset: reset)
                }
                thread.start()
            }
        }
    }

    /// Forwards bytes `from` → `to` under the current fault until either side closes.
    private func pump(from: Int32, to: Int32, _ direction: Direction, link: Link) {
        var buffer = [UInt8](repeating: 0, count: 16_384)
        var held: [UInt8] = []
        // The sender closed: what is held still goes, then the close.
        var senderClosed = false
        while true {
            // How much of what is held may flow now: none while this direction is stalled, what
            // is left of a cut's allowance (claimed here: every connection of this direction
            // shares it, so reading it and spending it apart let two links overspend it), else
            // all of it.
            let heldCount = held.count
            var hangUpAfter = false
            let (flowing, pause, ending): (Int, Duration?, Bool) = state.withLock { state in
                if state.resetting.contains(link.client) || state.hangingUp.contains(link.client) { return (0, nil, true) }
                switch state.fault {
                case let .stall(directions) where directions.contains(direction):
                    return (0, nil, false)
                case let .stallOpen(directions) where directions.contains(direction) && link.serial < state.stallBelowSerial:
                    return (0, nil, false)
                case .cut(direction, _):
                    let granted = min(heldCount, max(0, state.allowance[direction] ?? 0))
                    state.allowance[direction, default: 0] -= granted
                    return (granted, nil, false)
                case let .fragment(fragmented, maxBytes, pause) where fragmented == direction && heldCount > 0:
                    return (min(heldCount, Int.random(in: 1...max(1, maxBytes))), pause, false)
                case .hangUp where direction == .toClient && heldCount > 0:
                    let granted = min(heldCount, max(0, state.allowance[direction] ?? 0))
                    state.allowance[direction, default: 0] -= granted
                    if state.allowance[direction, default: 0] <= 0 {
                        // Decided before the bytes go: nothing the client sends after reading
                        // them reaches the node.
                        state.hungUp = true
                        state.hangingUp.formUnion(state.links.keys)
                        hangUpAfter = true
                    }
                    return (granted, nil, false)
                default:
                    return (heldCount, nil, false)
                }
            }
            if ending { return }
            if hangUpAfter {
                // Corked (MSG_MORE), so that the FIN goes in the bytes' own segment: the client
                // reads them and the end of the stream together, as from a node that died right
                // after answering.
                if flowing > 0 { _ = writeAll(held, count: flowing, to: to, flags: Int32(MSG_MORE)) }
                _ = shutdown(to, Int32(SHUT_WR))
                return
            }
            if flowing > 0 {
                if !writeAll(held, count: flowing, to: to) { return }
                held.removeFirst(flowing)
                if let pause { Thread.sleep(forTimeInterval: Double(pause.nanosecondsValue) / 1e9) }
                continue
            }
            if senderClosed {
                if held.isEmpty {
                    _ = shutdown(to, Int32(SHUT_WR))
                    return
                }
                Thread.sleep(forTimeInterval: 0.005)
                continue
            }
            var ready = pollfd(fd: from, events: Int16(POLLIN), revents: 0)
            let polled = poll(&ready, 1, 20)
            if polled < 0, errno != EINTR { return }
            guard polled > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            if count <= 0 {
                senderClosed = true
                continue
            }
            // The fault as it is now, not as it was when the wait began.
            if case let .latency(delay, jitter) = state.withLock({ $0.fault }) {
                let extra = jitter > .zero ? Duration.nanoseconds(Int64.random(in: 0...max(0, jitter.nanosecondsValue))) : .zero
                Thread.sleep(forTimeInterval: Double((delay + extra).nanosecondsValue) / 1e9)
            }
            held.append(contentsOf: buffer[0..<count])
        }
    }

    private func writeAll(_ bytes: [UInt8], count: Int, to descriptor: Int32, flags: Int32 = 0) -> Bool {
        var written = 0
        while written < count {
            // MSG_NOSIGNAL: a peer that reset the connection is an error here, not a SIGPIPE
            // that ends the whole process.
            let result = bytes.withUnsafeBytes { raw in
                send(descriptor, raw.baseAddress.map { $0 + written }, count - written, Int32(MSG_NOSIGNAL) | flags)
            }
            if result < 0 {
                if errno == EINTR { continue }
                return false
            }
            written += result
        }
        return true
    }

    /// Counts the pumps of one connection that ended.
    private final class Pumps: Sendable {
        private let ended = Mutex(0)

        /// Records one pump's end; true for the second.
        func finish() -> Bool {
            ended.withLock { ended in
                ended += 1
                return ended == 2
            }
        }
    }
}

private extension Duration {
    var nanosecondsValue: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
