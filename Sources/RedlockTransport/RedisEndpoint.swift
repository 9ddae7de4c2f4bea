/// Where one Redis server listens: a TCP host and port, or a unix domain socket.
public struct RedisEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// The address forms a node can have (more may come, e.g. TLS): reach them through
    /// ``hostname(_:port:)``, ``unixDomainSocket(path:)``, ``host``, ``port`` and ``socketPath``.
    package enum Address: Sendable, Hashable {
        /// A host name or IP address and a TCP port.
        case tcp(host: String, port: Int)
        /// The path of a unix domain socket.
        case unixDomainSocket(path: String)
    }

    /// The address of the server.
    package var address: Address

    /// Creates an endpoint from an address.
    package init(_ address: Address) {
        self.address = address
    }

    /// `name` (a host or TLS server name) without the root dot of a fully qualified name:
    /// `cache.example.` is `cache.example` (RFC 6066 section 3). The TLS handshake drops it
    /// the same way (`rio_tls_name`).
    package static func relativeName(_ name: String) -> String {
        name.utf8.count > 1 && name.hasSuffix(".") ? String(name.dropLast()) : name
    }

    /// The TCP host name or IP address, or nil for a unix domain socket.
    public var host: String? {
        if case let .tcp(host, _) = address { return host }
        return nil
    }

    /// The TCP port, or nil for a unix domain socket.
    public var port: Int? {
        if case let .tcp(_, port) = address { return port }
        return nil
    }

    /// The unix domain socket's path, or nil for TCP.
    public var socketPath: String? {
        if case let .unixDomainSocket(path) = address { return path }
        return nil
    }

    /// A TCP endpoint. The default port is 6379.
    public static func hostname(_ host: String, port: Int = 6379) -> RedisEndpoint {
        RedisEndpoint(.tcp(host: host, port: port))
    }

    /// A unix domain socket endpoint.
    public static func unixDomainSocket(path: String) -> RedisEndpoint {
        RedisEndpoint(.unixDomainSocket(path: path))
    }

    /// `host:port` for TCP (IPv6 literals in brackets), `unix:PATH` for a socket; control
    /// characters in the host or path (a NUL byte, a line end) written as Swift escapes (`\0`,
    /// `\n`, `\u{1B}`): descriptions go into log lines.
    public var description: String {
        switch address {
        case let .tcp(host, port):
            let shown = Self.escapingControls(host)
            return host.contains(":") ? "[\(shown)]:\(port)" : "\(shown):\(port)"
        case let .unixDomainSocket(path):
            return "unix:\(Self.escapingControls(path))"
        }
    }

    /// `text` with each control character (Unicode category Cc) as its escape.
    private static func escapingControls(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return text }
        var escaped = ""
        for scalar in text.unicodeScalars {
            if scalar.properties.generalCategory == .control {
                escaped += scalar.escaped(asASCII: true)
            } else {
                escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }
}
