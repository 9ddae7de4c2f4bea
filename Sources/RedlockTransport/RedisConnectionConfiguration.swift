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
    /// How long a connect (including `AUTH` and `SELECT`) may take. The default is 1 s.
    public var connectTimeout: Duration
    /// How long the connection waits for bytes from the server before it declares a timeout,
    /// drops the connection and fails the commands in flight. The default is 2 s.
    ///
    /// A server stopped with SIGSTOP still accepts TCP connects, so only this timeout detects it.
    public var commandTimeout: Duration
    /// The most commands that may wait for one connection; past it a call fails at once with
    /// ``RedisError/Code-swift.struct/overloaded``. The default is 65,536.
    public var maximumQueuedCommands: Int

    /// Creates a configuration for an endpoint.
    public init(
        endpoint: RedisEndpoint,
        username: String? = nil,
        password: String? = nil,
        database: Int? = nil,
        connectTimeout: Duration = .seconds(1),
        commandTimeout: Duration = .seconds(2),
        maximumQueuedCommands: Int = 65_536
    ) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.maximumQueuedCommands = maximumQueuedCommands
    }

    /// Parses `host:port`, `redis://[[user]:password@]host[:port][/db]` (`valkey://` alike) or
    /// `unix:///path[?db=N]` (`unix:/path` alike).
    ///
    /// A bare host without a port uses 6379. IPv6 hosts are written in brackets (`[::1]:6379`,
    /// `redis://[::1]:6379`). A user name or password in a URL may be percent-encoded (`%40` for
    /// `@`, `%3A` for `:`); an empty one is not sent (`redis://:@host` authenticates nobody).
    /// `rediss://` (TLS) is not supported yet and is refused.
    /// Throws ``RedisError/Code-swift.struct/invalidAddress`` naming what is wrong.
    public init(parsing text: String) throws(RedisError) {
        func invalid(_ why: String) -> RedisError {
            RedisError(code: .invalidAddress, endpoint: nil, message: "'\(text)': \(why)")
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
                        throw invalid("unknown or bad parameter '\(parameter)' (only db=N is known)")
                    }
                    database = db
                }
            }
            guard rest.hasPrefix("/"), rest.count > 1 else { throw invalid("a unix socket path must be absolute") }
            self.init(endpoint: .unixDomainSocket(path: String(rest)), database: database)
            return
        }

        var rest = Substring(trimmed)
        var username: String?
        var password: String?
        var database: Int?
        // Schemes are case-insensitive (RFC 3986).
        if lowered.hasPrefix("rediss://") || lowered.hasPrefix("valkeys://") {
            throw invalid("TLS (rediss://) is not supported yet")
        }
        let scheme = ["redis://", "valkey://"].first { lowered.hasPrefix($0) }
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
                } else {
                    password = try decoded(credentials, "password")
                }
                if username != nil, password == nil { throw invalid("a user name needs a password") }
            }
            if let slash = rest.firstIndex(of: "/") {
                let dbText = rest[rest.index(after: slash)...]
                rest = rest[..<slash]
                if !dbText.isEmpty {
                    guard dbText.allSatisfy({ $0.isASCII && $0.isNumber }), let db = Int(dbText) else {
                        throw invalid("database '\(dbText)' is not a number ≥ 0")
                    }
                    database = db
                }
            }
        } else if rest.contains("://") {
            throw invalid("unknown scheme (use host:port, redis://…, valkey://… or unix:///path)")
        }

        let host: Substring
        var port = 6379
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw invalid("unclosed '[' in IPv6 address") }
            host = rest[rest.index(after: rest.startIndex)..<close]
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
                throw invalid("port '\(rest[rest.index(after: colon)...])' is not a number")
            }
            port = p
        } else {
            host = rest
        }
        guard !host.isEmpty else { throw invalid("empty host") }
        if !rest.hasPrefix("["), host.contains(":") { throw invalid("an IPv6 address goes in brackets: [::1]:6379") }
        guard (1...65_535).contains(port) else { throw invalid("port \(port) is outside 1–65535") }
        self.init(
            endpoint: .hostname(String(host), port: port),
            username: username,
            password: password,
            database: database
        )
    }

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

    /// The endpoint, and the user and database when set; never the password.
    public var description: String {
        var text = endpoint.description
        if let username { text = "\(username)@\(text)" }
        if let database { text += "/\(database)" }
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
