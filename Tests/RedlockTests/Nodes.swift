import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization

/// Starts `count` real nodes and a client over them, runs `body`, and tears everything down.
func withLockNodes<T>(
    _ count: Int,
    _ body: (RedlockClient, [RedisServer]) async throws -> T
) async throws -> T {
    try await withRedisServers(count) { servers throws in
        let client = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(1)) })
        return try await withTeardown {
            // Connect every node first, so that short leases in tests measure the lock, not connects.
            for status in await client.checkNodes() { _ = try status.result.get() }
            return try await body(client, servers)
        } teardown: {
            await client.shutdown()
        }
    }
}

/// The lock key's value on each server (nil where missing), read with a separate connection.
func keyValues(_ name: String, on servers: [RedisServer]) async throws -> [String?] {
    var values: [String?] = []
    for server in servers {
        let connection = RedisConnection(configuration: server.configuration())
        let reply = try await connection.send(RedisCommand("GET", name))
        values.append(reply.string)
        await connection.shutdown()
    }
    return values
}

/// Sets `name` to another holder's value on the given servers.
func occupy(_ name: String, on servers: [RedisServer], milliseconds: Int = 60_000) async throws {
    for server in servers {
        let connection = RedisConnection(configuration: server.configuration())
        _ = try await connection.send(RedisCommand("SET", name, "someone-else", "PX", String(milliseconds)))
        await connection.shutdown()
    }
}

/// Fast options for tests: short retry delays; by default every operation waits for every
/// node (`failFast: false`), so a test can check each node's key right after it returns.
func testOptions(expiry: Duration = .seconds(5), tries: Int = 32, timeoutFactor: Double = 0.2, failFast: Bool = false) -> LockOptions {
    LockOptions(
        expiry: expiry, tries: tries, retryDelay: .random(in: .milliseconds(1)...(.milliseconds(5))),
        timeoutFactor: timeoutFactor, failFast: failFast
    )
}

/// A counter that is deliberately not atomic across suspension points: read, yield, write.
actor UnsafeCounter {
    private(set) var value = 0
    private(set) var inside = 0
    private(set) var maximumInside = 0

    func enter() { inside += 1; maximumInside = max(maximumInside, inside) }
    func leave() { inside -= 1 }
    func read() -> Int { value }
    func write(_ newValue: Int) { value = newValue }
}

/// A value shared between tasks of a test.
final class Locked<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    init(_ value: Value) { storage = Mutex(value) }
    var value: Value { storage.withLock { $0 } }
    func update<R>(_ body: (inout Value) -> R) -> R { storage.withLock { body(&$0) } }
}
