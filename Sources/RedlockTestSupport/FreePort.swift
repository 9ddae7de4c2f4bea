#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Asks the kernel for a free TCP port on 127.0.0.1 by binding port 0.
///
/// The port is free when this returns; a server started on it can still lose a race with
/// another process, so callers retry on "Address already in use".
public func freeLoopbackPort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw RedisServerError.noFreePort("socket: \(String(cString: strerror(errno)))") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
    }
    guard bound == 0 else { throw RedisServerError.noFreePort("bind: \(String(cString: strerror(errno)))") }
    var actual = sockaddr_in()
    var actualLength = length
    let named = withUnsafeMutablePointer(to: &actual) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &actualLength) }
    }
    guard named == 0 else { throw RedisServerError.noFreePort("getsockname: \(String(cString: strerror(errno)))") }
    return Int(UInt16(bigEndian: actual.sin_port))
}

/// A listening TCP socket on a free port of 127.0.0.1 (close-on-exec), for the test servers that
/// are not Redis: its descriptor and port.
func loopbackListener(backlog: Int32) throws -> (descriptor: Int32, port: Int) {
    try boundLoopbackSocket(listening: backlog)
}

/// A TCP socket bound to a free port of 127.0.0.1 (close-on-exec), listening with `backlog` when
/// one is given: its descriptor and port.
private func boundLoopbackSocket(listening backlog: Int32?) throws -> (descriptor: Int32, port: Int) {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { throw RedisServerError.noFreePort("socket: \(String(cString: strerror(errno)))") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
            bind(descriptor, raw, length) == 0 && (backlog.map { listen(descriptor, $0) == 0 } ?? true)
                && getsockname(descriptor, raw, &length) == 0
        }
    }
    guard bound else {
        let reason = String(cString: strerror(errno))
        close(descriptor)
        throw RedisServerError.noFreePort("bind/listen: \(reason)")
    }
    return (descriptor, Int(UInt16(bigEndian: address.sin_port)))
}

/// A TCP port of 127.0.0.1 that refuses every connection (`ECONNREFUSED`) and that no other
/// process can take while this value lives: a socket bound to it that never listens. It stands
/// for a node that is down, without the race of a stopped server's port being handed out again
/// (to a server another test starts meanwhile). The socket is closed when the value goes away.
public final class ClosedPort: Sendable {
    /// The port.
    public let port: Int
    private let descriptor: Int32

    /// Binds a free port of 127.0.0.1 (close-on-exec).
    /// - Throws: `RedisServerError.noFreePort` naming the call that failed.
    public init() throws {
        (descriptor, port) = try boundLoopbackSocket(listening: nil)
    }

    deinit { close(descriptor) }

    /// `127.0.0.1:PORT`, as a node list names it.
    public var endpoint: String { "127.0.0.1:\(port)" }
}
