import Redlock
import RedlockTransport

/// Starts `count` real nodes (``RedisServer``) and a `RedlockClient` over them (connect timeout
/// 500 ms, command timeout 1 s), connects every node, runs `body`, then shuts the client down and
/// kills the servers — also when `body` throws.
///
/// Connecting first means that short leases in a test measure the lock, not connects.
/// - Parameters:
///   - count: How many nodes; at least 1.
///   - busyPoll: The client's busy poll (``RedlockClient/init(nodes:logger:metrics:tracer:busyPoll:)``);
///     default zero.
///   - body: The test, given the client and the servers in the client's node order.
/// - Throws: What starting a server or connecting a node throws (``RedisServerError``,
///   `RedisError`), `RedlockError` (`invalidConfiguration`) for a `count` below 1, or what
///   `body` throws.
public func withLockNodes<T>(
    _ count: Int,
    busyPoll: Duration = .zero,
    _ body: (RedlockClient, [RedisServer]) async throws -> T
) async throws -> T {
    try await withRedisServers(count) { servers throws in
        let client = try RedlockClient(
            nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) }, busyPoll: busyPoll
        )
        return try await withTeardown {
            for status in await client.checkNodes() { _ = try status.result.get() }
            return try await body(client, servers)
        } teardown: {
            await client.shutdown()
        }
    }
}

/// Lock options for tests: retry delays of 1–5 ms and, by default, every operation waiting for
/// every node (`failFast: false`), so a test can read each node's key as soon as a call returns.
///
/// - Parameters:
///   - expiry: the lease's time to live; default 5 s.
///   - tries: acquire attempts; default 32.
///   - timeoutFactor: the share of the expiry one attempt may take across all nodes; default 0.2.
///   - failFast: return as soon as the quorum is decided; default false.
public func testOptions(
    expiry: Duration = .seconds(5), tries: Int = 32, timeoutFactor: Double = 0.2, failFast: Bool = false
) -> LockOptions {
    LockOptions(
        expiry: expiry, tries: tries, retryDelay: .random(in: .milliseconds(1)...(.milliseconds(5))),
        timeoutFactor: timeoutFactor, failFast: failFast
    )
}

/// Polls `condition` every 2 ms until it holds or `limit` (default 5 s) passes; only for states
/// that signal nothing when they change. Returns whether it held; a cancelled caller gets the
/// condition's value at once.
public func eventually(within limit: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
    let giveUp = ContinuousClock.now + limit
    while !condition() {
        guard ContinuousClock.now < giveUp else { return false }
        do {
            try await Task.sleep(for: .milliseconds(2))
        } catch {
            return condition()
        }
    }
    return true
}

/// The value of `key` on each server, in order (nil where the key is missing), each read with
/// ``RedisServer/value(of:)``.
/// - Throws: `RedisError` naming the first server that does not connect within 500 ms, answer
///   within 2 s, or answers an error.
public func values(of key: String, on servers: [RedisServer]) async throws -> [String?] {
    var values: [String?] = []
    for server in servers { values.append(try await server.value(of: key)) }
    return values
}

extension RedisServer {
    /// The value of `key` (nil when it is missing), read with `GET` over a connection of its own
    /// (connect timeout 500 ms, command timeout 2 s).
    /// - Throws: `RedisError` naming this node when it does not answer or answers an error.
    public func value(of key: String) async throws -> String? {
        try await run(RedisCommand("GET", key)).string
    }

    /// Sets `key` to `value` with `SET` over a connection of its own (connect timeout 500 ms,
    /// command timeout 2 s), with an expiry when one is given (`PX`, in milliseconds rounded up;
    /// it must be positive), e.g. to stand for another holder of a lock.
    /// - Throws: `RedisError` naming this node when it does not answer or answers an error
    ///   (`serverError` for an expiry that is not positive).
    public func set(_ key: String, to value: String, expiry: Duration? = nil) async throws {
        var arguments = ["SET", key, value]
        if let expiry { arguments += ["PX", String((expiry.wholeNanoseconds + 999_999) / 1_000_000)] }
        _ = try await run(RedisCommand(arguments))
    }

    /// Starts a replica of this server and returns once it has synchronised: it acknowledged a
    /// write (`WAIT`). Sets `repl-diskless-sync-delay` to 0 here first (by default a master waits
    /// 5 s for more replicas before a full synchronisation). Terminate the replica when done.
    ///
    /// - Parameter port: The port on 127.0.0.1 the replica connects to for its master: a proxy's
    ///   in front of this server (``FaultProxy``), to hold the replication stream back; the
    ///   default is this server's own.
    /// - Throws: What ``start(persistence:tls:arguments:clockShim:)`` throws, `RedisError` naming
    ///   this node when it does not answer, ``RedisServerError/replicaNotSynchronised(masterPort:)``
    ///   when the replica has not acknowledged within 10 s.
    public func startReplica(through port: Int? = nil) async throws -> RedisServer {
        _ = try await run(RedisCommand("CONFIG", "SET", "repl-diskless-sync-delay", "0"))
        let replica = try await RedisServer.start(arguments: ["--replicaof", "127.0.0.1", String(port ?? self.port)])
        do {
            try await waitForReplica()
            return replica
        } catch {
            await replica.terminate()
            throw error
        }
    }

    /// Returns once a replica of this server has acknowledged a write (`WAIT 1`), trying for up
    /// to 10 s: after ``startReplica(through:)``, or after a restart of this server (call
    /// `CONFIG SET repl-diskless-sync-delay 0` first, or the replica's new synchronisation waits 5 s).
    /// - Throws: `RedisError` naming this node when it does not answer,
    ///   ``RedisServerError/replicaNotSynchronised(masterPort:)`` when no replica acknowledged.
    public func waitForReplica() async throws {
        for _ in 0..<10 {
            try await set("redlock-test:synchronised", to: "1", expiry: .seconds(60))
            let acknowledged = try await run(RedisCommand("WAIT", "1", "1000"), commandTimeout: .seconds(2)).integer ?? 0
            if acknowledged >= 1 { return }
        }
        throw RedisServerError.replicaNotSynchronised(masterPort: port)
    }

    /// Makes this replica a master (`REPLICAOF NO ONE`), as a failover promotes it: it keeps
    /// what it had received and nothing more.
    /// - Throws: `RedisError` naming this node when it does not answer or refuses.
    public func promote() async throws {
        _ = try await run(RedisCommand("REPLICAOF", "NO", "ONE"))
    }

    /// Deletes every key of every database with `FLUSHALL` over a connection of its own: the
    /// data loss of an operator's mistake, without a restart.
    /// - Throws: `RedisError` naming this node when it does not answer or refuses.
    public func flushAll() async throws {
        _ = try await run(RedisCommand("FLUSHALL"))
    }

    /// Sends `PING` over a connection of its own (connect timeout 500 ms); returns when the node
    /// answered `PONG`.
    /// - Parameter timeout: How long the answer may take; default 2 s.
    /// - Throws: `RedisError` naming this node when it does not answer within `timeout`, answers
    ///   an error, or answers something else than `PONG` (`protocolError`).
    public func ping(timeout: Duration = .seconds(2)) async throws {
        let reply = try await run(RedisCommand("PING"), commandTimeout: timeout)
        guard reply == .simpleString("PONG") else {
            throw RedisError(code: .protocolError, endpoint: endpoint, message: "PING answered \(reply)")
        }
    }

    /// Sends `command` over a connection of its own (connect timeout 500 ms, closed after the
    /// reply), e.g. to read or seed the library's own keys in a test.
    /// - Parameter commandTimeout: How long the reply may take; default 2 s.
    /// - Returns: The node's reply.
    /// - Throws: `RedisError` naming this node when it does not answer or answers an error.
    package func run(_ command: RedisCommand, commandTimeout: Duration = .seconds(2)) async throws -> RedisValue {
        let connection = RedisConnection(configuration: configuration(connectTimeout: .milliseconds(500), commandTimeout: commandTimeout))
        do {
            let reply = try await connection.send(command)
            await connection.shutdown()
            return reply
        } catch {
            await connection.shutdown()
            throw error
        }
    }
}

extension RedisConnection {
    /// Sends `PING` on this connection (connecting it first if needed), e.g. to connect a
    /// client's node before a test's short leases start.
    /// - Throws: `RedisError` naming the node when it does not answer within the connection's
    ///   timeouts, answers an error, or answers something else than `PONG` (`protocolError`).
    public func ping() async throws {
        let reply = try await send(RedisCommand("PING"))
        guard reply == .simpleString("PONG") else {
            throw RedisError(code: .protocolError, endpoint: configuration.endpoint, message: "PING answered \(reply)")
        }
    }

    /// The `redis_version` line of `INFO server` (e.g. `7.0.15`), or nil when the reply has none.
    /// - Throws: `RedisError` naming the node when it does not answer or refuses `INFO`.
    public func serverVersion() async throws -> String? {
        guard let info = try await send(RedisCommand("INFO", "server")).string else { return nil }
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("redis_version:") {
            return String(line.dropFirst("redis_version:".count))
        }
        return nil
    }
}
