import RedlockTransport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `openssl s_server -www` on a free 127.0.0.1 port with ``TLSCertificates/server``: a TLS server
/// that completes handshakes and speaks no RESP (it answers HTTP `GET`s only, and closes a plain
/// connection), as a TLS-terminating proxy without its backend looks to a client.
public final class NonRESPTLSServer: Sendable {
    /// The TLS port on 127.0.0.1.
    public let port: Int
    private let process: ServerProcess

    /// The endpoint to point a client at.
    public var endpoint: RedisEndpoint { .hostname("127.0.0.1", port: port) }

    private init(port: Int, process: ServerProcess) {
        self.port = port
        self.process = process
    }

    /// Starts the server and waits until it listens (it prints `ACCEPT`); tries up to five
    /// ports.
    /// - Throws: ``RedisServerError`` when `openssl` (on `PATH`) cannot be started or exits.
    public static func start(_ certificates: TLSCertificates) async throws -> NonRESPTLSServer {
        var lastLog = ""
        for _ in 0..<5 {
            let port = try freeLoopbackPort()
            let process = try ServerProcess.spawn(
                executable: "/usr/bin/env",
                arguments: [
                    "openssl", "s_server", "-accept", "127.0.0.1:\(port)", "-www",
                    "-cert", certificates.server.certificate, "-key", certificates.server.key,
                ],
                readyMarker: "ACCEPT"
            )
            switch await process.waitUntilReady() {
            case .ready:
                return NonRESPTLSServer(port: port, process: process)
            case let .failed(log):
                lastLog = log
                process.signal(SIGKILL)
                await process.waitUntilExited()
            }
        }
        throw RedisServerError.spawnFailed("openssl s_server did not start: \(lastLog)")
    }

    /// Kills the server and waits until it is reaped.
    public func stop() async {
        process.signal(SIGKILL)
        await process.waitUntilExited()
    }
}
