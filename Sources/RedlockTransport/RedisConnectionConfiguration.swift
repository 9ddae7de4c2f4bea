/// Everything needed to open a connection to one Redis node.
public struct RedisConnectionConfiguration: Sendable, Hashable, CustomStringConvertible {
    /// The server's address.
    public var endpoint: RedisEndpoint
    /// The ACL user name sent with `AUTH username password`. The default is `nil` (the default user).
    public var username: String?
    /// The password sent with `AUTH`. The default is `nil` (no `AUTH`).
    public var password: String?
    /// The database selected with `SELECT` after connecting. The default is `nil` (database 0).
    public var database: Int?
    /// How long a connect (name resolution, TCP or Unix connect, TLS handshake) may take. The
    /// default is 1 s. The connect's last step is its commands: `AUTH` and `SELECT` (when
    /// configured) in one round trip, then the order barrier's `CLIENT KILL` (when owed) and
    /// `CLIENT INFO` in another, with `INFO server` when the client vets its nodes (a
    /// subscriber: `INFO server` alone), led by a `PING` when nothing went before. Like any
    /// command, they have until the later of this and ``commandTimeout`` after the first was
    /// sent, so a whole connect ends within `connectTimeout + commandTimeout`; at most three
    /// times that when the server closes the connection on `CLIENT INFO` or on `INFO` (a
    /// proxy) and connects without them follow.
    public var connectTimeout: Duration
    /// How long the connection waits for bytes from the server before it declares a timeout,
    /// drops the connection and fails the commands in flight. The default is 2 s.
    ///
    /// A server stopped with SIGSTOP still accepts TCP connects, so only this timeout detects it.
    public var commandTimeout: Duration
    /// The most commands that may wait for one connection; past it a call fails at once with
    /// ``RedisError/Code-swift.struct/overloaded``. A lock's releases may wait in as many places
    /// again beyond it (at least 4,096): refused, a release leaves its key until it expires. The
    /// default is 65,536.
    public var maximumQueuedCommands: Int
    /// TLS for the connection, or `nil` (the default) for plain TCP. `rediss://` addresses set it
    /// to ``RedisTLSConfiguration/init(trustedCertificatesFile:certificateFile:privateKeyFile:serverName:verifiesCertificate:verifiesHostname:)``'s
    /// defaults: the system's trust store, hostname verification on.
    public var tls: RedisTLSConfiguration?

    /// Creates a configuration for an endpoint.
    public init(
        endpoint: RedisEndpoint,
        username: String? = nil,
        password: String? = nil,
        database: Int? = nil,
        connectTimeout: Duration = .seconds(1),
        commandTimeout: Duration = .seconds(2),
        maximumQueuedCommands: Int = 65_536,
        tls: RedisTLSConfiguration? = nil
    ) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.maximumQueuedCommands = maximumQueuedCommands
        self.tls = tls
    }

    /// `text` as an error may quote it: whole when it cannot hold credentials (no `://` and no
    /// `@`), else only its scheme (`redis://…`), or nothing (`…`). A URL that does not parse
    /// may hold a password anywhere: cut short, mistyped, or with an unescaped `@`, `/`, `?`
    /// or `:` in it. For a program's own messages about addresses (a list with an empty
    /// place: each piece quoted so).
    public static func quotable(_ text: String) -> String {
        if let schemeEnd = text.firstRange(of: "://") { return text[..<schemeEnd.upperBound] + "…" }
        if text.contains("@") { return "…" }
        // A query (`unix:/path?…`) may carry a password (`?password=…`, as other clients write).
        return text.firstIndex(of: "?").map { text[..<$0] + "?…" } ?? text
    }

    /// Parses `host:port`, `redis://[[user]:password@]host[:port][/db]` (`valkey://` alike),
    /// `rediss://…` (`valkeys://` alike: the same over TLS, ``tls`` set to the defaults) or
    /// `unix:///path[?db=N]` (`unix:/path` alike; the path percent-decoded: `%20` for a space).
    ///
    /// A bare host without a port uses 6379. IPv6 hosts are written in brackets (`[::1]:6379`,
    /// `redis://[::1]:6379`). A user name or password in a URL may be percent-encoded (`%40` for
    /// `@`, `%3A` for `:`); an empty one is not sent (`redis://:@host` authenticates nobody).
    /// Credentials without a `:` (`redis://NAME@host`) are refused: some clients read them as a
    /// user name, others as a password.
    /// Throws ``RedisError/Code-swift.struct/invalidAddress`` naming what is wrong, with the
    /// address quoted only where it cannot hold a password (see ``quotable(_:)``): error
    /// messages end up in logs.
    public init(parsing text: String) throws(RedisError) {
        func invalid(_ why: String) -> RedisError {
            RedisError(code: .invalidAddress, endpoint: nil, message: "'\(Self.quotable(text))': \(why)")
        }
        let trimmed = text.trimmingWhitespace()
        guard !trimmed.isEmpty else { throw invalid("empty address") }

        let lowered = trimmed.lowercased()
        if lowered.hasPrefix("unix:") {
            // unix:///path (an empty authority) or unix:/path.
            var rest = Substring(trimmed.dropFirst("unix:".count))
            if rest.hasPrefix("//") { rest = rest.dropFirst(2) }
            var database: Int?
            if let query = rest.firstIndex(of: "?") {
                let parameters = rest[rest.index(after: query)...]
                rest = rest[..<query]
                for parameter in parameters.split(separator: "&") {
                    let pair = parameter.split(separator: "=", maxSplits: 1)
                    guard pair.count == 2, pair[0] == "db", pair[1].allSatisfy({ $0.isASCII && $0.isNumber }), let db = Int(pair[1]) else {
                        throw invalid("unknown or bad parameter '\(parameter.prefix { $0 != "=" })' (only db=N is known)")
                    }
                    database = db
                }
            }
            guard rest.hasPrefix("/"), rest.count > 1 else { throw invalid("a unix socket path must be absolute") }
            // A URL's path is percent-encoded (`%20` for a space, `%25` for `%`), as other clients
            // read it.
            guard let path = Self.percentDecoded(rest) else { throw invalid("bad percent-encoding in the socket path") }
            guard !path.utf8.contains(0) else { throw invalid("a socket path cannot hold a NUL byte") }
            self.init(endpoint: .unixDomainSocket(path: path), database: database)
            return
        }

        var rest = Substring(trimmed)
        var username: String?
        var password: String?
        var database: Int?
        // Schemes are case-insensitive (RFC 3986).
        let scheme = ["redis://", "valkey://", "rediss://", "valkeys://"].first { lowered.hasPrefix($0) }
        let secure = scheme == "rediss://" || scheme == "valkeys://"
        if let scheme {
            rest = rest.dropFirst(scheme.count)
            if let at = rest.lastIndex(of: "@") {
                let credentials = rest[..<at]
                rest = rest[rest.index(after: at)...]
                func decoded(_ part: Substring, _ what: String) throws(RedisError) -> String? {
                    guard let text = Self.percentDecoded(part) else { throw invalid("bad percent-encoding in the \(what)") }
                    return text.isEmpty ? nil : text
                }
                if let colon = credentials.firstIndex(of: ":") {
                    username = try decoded(credentials[..<colon], "user name")
                    password = try decoded(credentials[credentials.index(after: colon)...], "password")
                } else if !credentials.isEmpty {
                    // `redis://NAME@host` is a user name to some clients (redis-py, go-redis) and
                    // a password to others: either reading would authenticate someone else.
                    throw invalid("credentials without ':' are ambiguous (a user name to some clients, a password to others): write redis://:PASSWORD@host, or redis://USER:PASSWORD@host")
                }
                if username != nil, password == nil { throw invalid("a user name needs a password") }
            }
            if rest.contains("?") { throw invalid(Self.queryRefusal) }
            if let slash = rest.firstIndex(of: "/") {
                let dbText = rest[rest.index(after: slash)...]
                rest = rest[..<slash]
                if !dbText.isEmpty {
                    guard dbText.allSatisfy({ $0.isASCII && $0.isNumber }), let db = Int(dbText) else {
                        throw invalid("the database is not a number ≥ 0")
                    }
                    database = db
                }
            }
        } else if rest.contains("://") {
            throw invalid("unknown scheme (use host:port, redis://…, rediss://…, valkey://… or unix:///path)")
        } else if let colon = rest.firstIndex(of: ":"), ["redis", "rediss", "valkey", "valkeys"].contains(rest[..<colon].lowercased()),
                  rest[rest.index(after: colon)...].first?.isNumber != true {
            // `rediss:/h:1`, `redis:h`: a scheme short of its slashes (`redis:6379` is a host).
            throw invalid("the scheme needs '://': \(rest[..<colon].lowercased())://host:port")
        }
        // An address without a scheme (`host:port?db=2`): see queryRefusal.
        if rest.contains("?") { throw invalid(Self.queryRefusal) }

        let host: Substring
        var port = 6379
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw invalid("unclosed '[' in IPv6 address") }
            let bracketed = rest[rest.index(after: rest.startIndex)..<close]
            // Hex digits, `:` and `.` (an IPv4 tail), then an optional `%zone`: not a name to
            // resolve (`[user:password]` would be looked up, and logged, as one).
            let zone = bracketed.firstIndex(of: "%")
            let address = bracketed[..<(zone ?? bracketed.endIndex)]
            var zoneName = zone.map { bracketed[bracketed.index(after: $0)...] } ?? ""
            // In a URL the `%` before a zone is written `%25` (RFC 6874).
            if scheme != nil, zoneName.hasPrefix("25") { zoneName = zoneName.dropFirst(2) }
            guard !address.isEmpty, address.allSatisfy({ $0.isASCII && ($0.isHexDigit || $0 == ":" || $0 == ".") }),
                  zoneName.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") })
            else { throw invalid("not an IPv6 address in brackets") }
            host = zone == nil ? address : Substring(address + "%" + zoneName)
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                let portText = after.dropFirst()
                guard after.hasPrefix(":"), !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }), let p = Int(portText) else {
                    throw invalid("bad port after ']'")
                }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            let portText = rest[rest.index(after: colon)...]
            guard portText.allSatisfy(\.isASCII), portText.allSatisfy(\.isNumber), let p = Int(portText) else {
                throw invalid("the port is not a number")
            }
            port = p
        } else {
            host = rest
        }
        guard !host.isEmpty else { throw invalid("empty host") }
        // `user:password@host` without a scheme: credentials go in a URL.
        if host.contains("@") { throw invalid("a user name or password goes in a redis:// or rediss:// URL") }
        if !rest.hasPrefix("["), host.contains(":") { throw invalid("an IPv6 address goes in brackets: [::1]:6379") }
        // A host name or IPv4 address: a typo (`rediz//h`, `h/0`) is refused here rather than
        // looked up as a name that does not exist.
        if !rest.hasPrefix("["), !host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_") }) {
            throw invalid("not a host name (ASCII letters, digits, '-', '.' and '_') or an address")
        }
        guard (1...65_535).contains(port) else { throw invalid("the port is outside 1–65535") }
        self.init(
            endpoint: .hostname(String(host), port: port),
            username: username,
            password: password,
            database: database,
            tls: secure ? RedisTLSConfiguration() : nil
        )
    }

    /// Why an address with a query is refused: other clients read `?db=3` and the like; here
    /// the database goes in the path, and a query would otherwise be read as part of the port
    /// or the database.
    static let queryRefusal = "query parameters are not read (the database goes in the path: redis://host:port/3)"

    /// `text` with `%XX` sequences decoded as UTF-8, or nil when a sequence is malformed or the
    /// bytes are not UTF-8.
    static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// The endpoint (with `tls:` before it for TLS), and the user and database when set; never
    /// the password.
    public var description: String {
        var text = endpoint.description
        if tls != nil { text = "tls:" + text }
        if let username { text = "\(username)@\(text)" }
        if let database {
            text += endpoint.socketPath == nil ? "/\(database)" : "?db=\(database)"
        }
        return text
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        var text = Substring(self)
        while let first = text.first, first.isWhitespace { text.removeFirst() }
        while let last = text.last, last.isWhitespace { text.removeLast() }
        return String(text)
    }
}

/// TLS settings for a connection (through the system's OpenSSL, TLS 1.2 or later).
///
/// The server's certificate chain is verified against ``trustedCertificatesFile`` (or the
/// system's trust store) and must name the node: ``serverName``, or the endpoint's host, as a DNS
/// name or IP address in its subject alternative names (never in its subject's common name, RFC
/// 6125 section 6.4.4; a wildcard only as the whole left-most label, `*.example.com`; a host the
/// resolver reads as an IPv4 address, such as `127.1`, `2130706433` or `0177.0.0.1` (octal), as
/// that address; an IPv6 address with a zone as the address, an IPv4-mapped one as its IPv4
/// address). Failures are ``RedisError/Code-swift.struct/certificateRejected`` (a verdict on the
/// certificate) or ``RedisError/Code-swift.struct/tlsFailed`` (files that do not load, a
/// handshake that fails), both naming the node and OpenSSL's reason, and both permanent.
public struct RedisTLSConfiguration: Sendable, Hashable {
    /// A PEM file of CA certificates to trust, or `nil` (the default) for the system's trust
    /// store (`/etc/ssl/certs` on Debian).
    public var trustedCertificatesFile: String?
    /// The client's certificate chain (PEM) for mutual TLS, or `nil` (the default) for none.
    public var certificateFile: String?
    /// The client's private key (PEM) for ``certificateFile``; `nil` reads it from
    /// ``certificateFile``. A key without a certificate file fails every connect
    /// (``RedisError/Code-swift.struct/tlsFailed``, permanent).
    public var privateKeyFile: String?
    /// The name sent as SNI (when a DNS name) and required in the server's certificate; `nil`
    /// (the default) uses the endpoint's host. An IP address (an IPv6 zone, `%eth0`, is left
    /// out of the check), or a DNS name as certificates hold it: ASCII letters, digits, `-` and
    /// `_` in dot-separated labels of 1 to 63 bytes, at most 253 bytes, no wildcard, no leading
    /// dot (OpenSSL reads one as any name under the domain), an internationalized name in its
    /// `xn--` form. A fully qualified name's root dot (`cache.example.`, here or in the host) is
    /// left out of what is sent and required (RFC 6066 section 3; as Go's crypto/tls). Any other name (an empty one would turn the
    /// hostname check off) fails every connect (``RedisError/Code-swift.struct/tlsFailed``,
    /// permanent; ``loadFiles(for:)`` tells it at once).
    public var serverName: String?
    /// Whether the server's certificate chain must verify. The default is `true`; `false` accepts
    /// any certificate (encryption without authentication: for tests only).
    public var verifiesCertificate: Bool
    /// Whether the certificate must be issued for ``serverName`` (or the host). The default is
    /// `true`.
    public var verifiesHostname: Bool

    /// Creates TLS settings; the defaults verify the server against the system's trust store.
    public init(
        trustedCertificatesFile: String? = nil,
        certificateFile: String? = nil,
        privateKeyFile: String? = nil,
        serverName: String? = nil,
        verifiesCertificate: Bool = true,
        verifiesHostname: Bool = true
    ) {
        self.trustedCertificatesFile = trustedCertificatesFile
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
        self.serverName = serverName
        self.verifiesCertificate = verifiesCertificate
        self.verifiesHostname = verifiesHostname
    }

    /// Loads the files this configuration names (the CA bundle, or the system's trust store when
    /// ``trustedCertificatesFile`` is `nil` and certificates are verified; the client's
    /// certificate and key) as a connection to `endpoint` does before its first handshake, and
    /// lets them go again, without connecting.
    ///
    /// A connection loads them on its first connect and reports a file that does not load as
    /// that node's failure; this tells a program at start-up instead (`redlock` makes it a usage
    /// error, before any node is asked).
    /// - Parameter endpoint: The node the error names.
    /// - Throws: ``RedisError/Code-swift.struct/tlsFailed`` naming the file and OpenSSL's reason
    ///   (a file that cannot be read, holds no PEM certificate, a key that does not match the
    ///   certificate, an encrypted key: no passphrase is ever asked for, and one encrypted
    ///   with the empty passphrase loads), or saying why the file cannot serve (a pipe, socket,
    ///   device or directory: each connection reads the files anew), or a ``privateKeyFile``
    ///   without a ``certificateFile``; or saying why ``serverName`` cannot be used (see there).
    public func loadFiles(for endpoint: RedisEndpoint) throws(RedisError) {
        _ = try TLSContext(self, endpoint: endpoint)
    }
}
