import RedlockTransport
import Testing

@Suite("Addresses and scripts")
struct ParsingTests {
    @Test("parses host:port, redis:// URLs with credentials and db, and unix sockets")
    func addresses() throws {
        let plain = try RedisConnectionConfiguration(parsing: "10.1.2.3:7000")
        #expect(plain.endpoint == .hostname("10.1.2.3", port: 7000))
        #expect(try RedisConnectionConfiguration(parsing: "cache").endpoint == .hostname("cache", port: 6379))
        #expect(try RedisConnectionConfiguration(parsing: "[::1]:6380").endpoint == .hostname("::1", port: 6380))

        let url = try RedisConnectionConfiguration(parsing: "redis://app:pa:ss@redis.internal:6390/4")
        #expect(url.endpoint == .hostname("redis.internal", port: 6390))
        #expect(url.username == "app")
        #expect(url.password == "pa:ss")
        #expect(url.database == 4)
        #expect(!url.description.contains("pa:ss"))

        let passwordOnly = try RedisConnectionConfiguration(parsing: "redis://:secret@h")
        #expect(passwordOnly.username == nil)
        #expect(passwordOnly.password == "secret")

        let unix = try RedisConnectionConfiguration(parsing: "unix:///run/redis.sock?db=2")
        #expect(unix.endpoint == .unixDomainSocket(path: "/run/redis.sock"))
        #expect(unix.database == 2)
    }

    @Test("IPv6, percent-encoded credentials, valkey://, unix:/path; empty credentials are not sent")
    func moreForms() throws {
        #expect(try RedisConnectionConfiguration(parsing: "redis://[::1]:6390/2").endpoint == .hostname("::1", port: 6390))
        #expect(try RedisConnectionConfiguration(parsing: "[fe80::1]").endpoint == .hostname("fe80::1", port: 6379))
        let encoded = try RedisConnectionConfiguration(parsing: "redis://app%40eu:p%3Ass%25w0rd%2F@h:1")
        #expect(encoded.username == "app@eu")
        #expect(encoded.password == "p:ss%w0rd/")
        let unicode = try RedisConnectionConfiguration(parsing: "redis://:%C3%A9t%C3%A9@h")
        #expect(unicode.password == "été")
        let valkey = try RedisConnectionConfiguration(parsing: "valkey://u:p@cache:6400/1")
        #expect(valkey.endpoint == .hostname("cache", port: 6400))
        #expect(valkey.username == "u" && valkey.password == "p" && valkey.database == 1)
        #expect(try RedisConnectionConfiguration(parsing: "unix:/run/redis.sock").endpoint == .unixDomainSocket(path: "/run/redis.sock"))
        #expect(try RedisConnectionConfiguration(parsing: "unix:///run/redis.sock").endpoint == .unixDomainSocket(path: "/run/redis.sock"))
        // A URL's path is percent-decoded, as other clients read it.
        #expect(try RedisConnectionConfiguration(parsing: "unix:///tmp/a%20b/r%25.sock").endpoint == .unixDomainSocket(path: "/tmp/a b/r%.sock"))
        #expect(throws: RedisError.self) { try RedisConnectionConfiguration(parsing: "unix:///tmp/a%2") }
        #expect(throws: RedisError.self) { try RedisConnectionConfiguration(parsing: "unix:///tmp/a%00b") }
        #expect(try RedisConnectionConfiguration(parsing: "Redis://H:7").endpoint == .hostname("H", port: 7))
        #expect(try RedisConnectionConfiguration(parsing: "VALKEY://h").endpoint == .hostname("h", port: 6379))
        let empty = try RedisConnectionConfiguration(parsing: "redis://:@h")
        #expect(empty.username == nil && empty.password == nil)
    }

    @Test("rediss:// and valkeys:// turn TLS on with verification; the others leave it off")
    func tlsSchemes() throws {
        let secure = try RedisConnectionConfiguration(parsing: "rediss://app:pw@cache.internal:6380/2")
        #expect(secure.endpoint == .hostname("cache.internal", port: 6380))
        #expect(secure.username == "app" && secure.password == "pw" && secure.database == 2)
        #expect(secure.tls == RedisTLSConfiguration())
        #expect(secure.tls?.verifiesCertificate == true && secure.tls?.verifiesHostname == true)
        #expect(secure.description == "app@tls:cache.internal:6380/2")
        #expect(try RedisConnectionConfiguration(parsing: "unix:///tmp/x?db=1").description == "unix:/tmp/x?db=1")
        #expect(try RedisConnectionConfiguration(parsing: "REDISS://h").tls != nil)
        #expect(try RedisConnectionConfiguration(parsing: "valkeys://[::1]:7000").tls != nil)
        #expect(try RedisConnectionConfiguration(parsing: "redis://h").tls == nil)
        #expect(try RedisConnectionConfiguration(parsing: "h:1").tls == nil)
        #expect(try RedisConnectionConfiguration(parsing: "unix:/run/r.sock").tls == nil)
    }

    @Test("rejects malformed addresses with invalidAddress", arguments: [
        "", "  ", "host:", "host:abc", "host:70000", ":6379", "http://h:1", "unix://relative", "redis://h/x", "[::1",
        "::1", "fe80::1:6379", "redis://u:%zz@h", "redis://u:%C3@h", "redis://user:@h", "rediss://", "unix:relative", "h:+80", "[::1]:+80", "rediss://h:0", "redis://h/+1", "unix:/tmp/s?db=+2", "redis://app@h:1", "rediss://hunter2@h", "rediz//h:1", "h/0:1", "redis://h/x", "bad host:1",
    ])
    func malformed(text: String) {
        #expect {
            try RedisConnectionConfiguration(parsing: text)
        } throws: { error in
            (error as? RedisError)?.code == .invalidAddress
        }
    }

    @Test("a scheme short of its slashes is named so (before: 'an IPv6 address goes in brackets'); a host called redis with a port is a host", arguments: ["rediss:/localhost:1", "redis:h", "Valkey:/h:1", "rediss:"])
    func schemeWithoutSlashes(text: String) throws {
        #expect {
            try RedisConnectionConfiguration(parsing: text)
        } throws: { error in
            (error as? RedisError)?.message.contains("the scheme needs '://'") == true
        }
        #expect(try RedisConnectionConfiguration(parsing: "redis:6379").endpoint == .hostname("redis", port: 6379))
    }

    @Test("a query in a redis:// URL (another client's ?db=3) is refused saying where the database goes, not that the port is no number", arguments: ["redis://h:6379?db=3", "rediss://u:p@h:1?ssl_cert_reqs=none", "h:1?db=2", "redis://h:1/0?db=1"])
    func queryRefused(text: String) {
        #expect {
            try RedisConnectionConfiguration(parsing: text)
        } throws: { error in
            let message = (error as? RedisError)?.message ?? ""
            return message.contains("query parameters are not read (the database goes in the path: redis://host:port/3)")
                && !message.contains("is not a number")
        }
    }

    @Test("an address refused for any reason is quoted only where it cannot hold a password: a URL by its scheme, text with an @ not at all", arguments: [
        ("redis://locker:hunter2@127.0.0.1:17103:6379", "'redis://…'"),
        ("rediss://:hunter2@h:1/x", "'rediss://…'"),
        ("redis://locker:hun%zzter2@h", "'redis://…'"),
        ("redis://hunter2@h:1/+1", "'redis://…'"),
        ("redis://u:hun@ter2@h:abc", "'redis://…'"),
        ("http://u:hunter2@h:1", "'http://…'"),
        // Typos: a scheme cut short, none at all, a host left out (the password reads as a
        // port), unescaped characters inside the password.
        ("redis:/u:hunter2@127.0.0.1:7101", "'…'"),
        ("u:hunter2@127.0.0.1:7101", "'…'"),
        ("hunter2@127.0.0.1:7101", "'…'"),
        ("redis://locker:hunter2", "'redis://…'"),
        ("redis://locker:hunter2/2", "'redis://…'"),
        ("redis://default:hunter2]", "'redis://…'"),
        ("redis://u:hun?ter2", "'redis://…'"),
        ("redis://u:hun:ter2", "'redis://…'"),
        ("redis://u:hun/ter2", "'redis://…'"),
        ("redis://[admin:hunter2]", "'redis://…'"),
        ("[admin:hunter2]:6379", "'[admin:hunter2]:6379'"),
        ("unix:/tmp/redis.sock?password=hunter2", "'unix:/tmp/redis.sock?…'"),
        ("unix:///tmp/redis.sock?db=0&password=hunter2", "'unix://…'"),
        ("redis://admin:7654321", "'redis://…'"),
        ("redis://[ａ::1]:6379", "'redis://…'"),
    ])
    func refusedAddressHidesThePassword(text: String, quoted: String) {
        #expect {
            try RedisConnectionConfiguration(parsing: text)
        } throws: { error in
            let message = (error as? RedisError)?.message ?? ""
            return message.hasPrefix(quoted) && (text.hasPrefix("[") || !message.contains("ter2") && !message.contains("7654321"))
        }
    }

    @Test("valid addresses with brackets, credentials and percent-encoding still parse")
    func bracketsAndCredentials() throws {
        let six = try RedisConnectionConfiguration(parsing: "redis://:p@[::1]:6379/2")
        #expect(six.endpoint == .hostname("::1", port: 6379) && six.password == "p" && six.database == 2)
        let zoned = try RedisConnectionConfiguration(parsing: "[fe80::1%eth0]:7000")
        #expect(zoned.endpoint == .hostname("fe80::1%eth0", port: 7000))
        // In a URL the zone's % is written %25 (RFC 6874).
        let zonedURL = try RedisConnectionConfiguration(parsing: "redis://[fe80::1%25eth0]:7000")
        #expect(zonedURL.endpoint == .hostname("fe80::1%eth0", port: 7000))
        let mapped = try RedisConnectionConfiguration(parsing: "redis://[::ffff:127.0.0.1]")
        #expect(mapped.endpoint == .hostname("::ffff:127.0.0.1", port: 6379))
        let encoded = try RedisConnectionConfiguration(parsing: "redis://u%3A:p%40ss@h:1/3")
        #expect(encoded.username == "u:" && encoded.password == "p@ss" && encoded.database == 3)
    }

    @Test("script SHA-1 matches known digests")
    func sha1() {
        #expect(RedisScript("").sha1 == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        #expect(RedisScript("abc").sha1 == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(RedisScript(String(repeating: "a", count: 1000)).sha1 == "291e9a6c66994949b57ba5e650361e98fc36b1ba")
    }
}
