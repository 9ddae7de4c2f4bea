import RedlockTestSupport
import RedlockTransport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Shuts down the sending side (`SHUT_WR`) of every TCP socket of this process connected to
/// 127.0.0.1:`port`, as if the system had, and returns how many it found. A later send on such a
/// socket fails with `EPIPE`, which raises SIGPIPE (ending the process) unless the sender
/// suppressed it.
func shutDownWrites(ofSocketsConnectedTo port: Int) -> Int {
    var found = 0
    for descriptor in Int32(0)..<4_096 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(descriptor, $0, &length) }
        }
        guard named == 0, address.sin_family == sa_family_t(AF_INET), Int(UInt16(bigEndian: address.sin_port)) == port,
              address.sin_addr.s_addr == UInt32(0x7F00_0001).bigEndian
        else { continue }
        if shutdown(descriptor, Int32(SHUT_WR)) == 0 { found += 1 }
    }
    return found
}

/// Connects to `server` with `configuration`, then, with the server frozen (so it cannot answer
/// the end of stream by closing its side, and the connection still looks open), shuts the
/// socket's sending side down and sends a command: the write fails with `EPIPE`, which must come
/// back as a transient typed error rather than a SIGPIPE; once the server runs again, the next
/// command reconnects.
func expectWriteFailsAfterSendingShutDown(on server: RedisServer, _ configuration: RedisConnectionConfiguration) async throws {
    let connection = RedisConnection(configuration: configuration)
    #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
    try await server.pause()
    #expect(shutDownWrites(ofSocketsConnectedTo: server.port) == 1)
    let error = await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("PING")) }
    #expect(error?.isPermanent == false, "\(String(describing: error))")
    try server.resume()
    #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
    #expect(connection.connectionGeneration == 2)
    await connection.shutdown()
}
