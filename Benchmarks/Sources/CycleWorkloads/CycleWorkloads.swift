import Redlock
import RedlockTestSupport
import RedlockTransport

/// One lock+unlock cycle, or its raw equivalent.
public typealias Cycle = @Sendable () async throws -> Void

/// The workloads the benchmarks and the instruction counter share, by name.
///
/// `floor` is the raw cost of what a cycle must send: `SET NX PX` to every node at once, then the
/// compare-and-delete script to every node at once, straight on the transport with no task per
/// node (``RawFloor/cycle(nodes:name:value:expiry:)``). The `floor+…` rungs rebuild, one at a
/// time, how a fan-out can be made from tasks — written here, not taken from the library — to
/// show what each construct costs:
///
/// - `floor+tasks`: each fan-out runs one child task per node in a task group.
/// - `floor+tasks+budget`: each fan-out also runs a `Task.sleep(for: budget)` child that bounds
///   it, cancelled once every node answered.
///
/// `cycle-plain` is the library with ``LockOptions/fastHandoff`` off; `cycle` the library with
/// every default. The library fans out like `floor` does, with its budget kept by one timer
/// thread per client.
public enum CycleWorkload: String, CaseIterable, Sendable {
    case floor = "floor"
    case floorTasks = "floor+tasks"
    case floorTasksBudget = "floor+tasks+budget"
    case cyclePlain = "cycle-plain"
    case cycle = "cycle"

    /// The library's attempt budget with default options: 8 s × 0.05.
    static let budget: Duration = .milliseconds(400)

    /// Makes the cycle on `nodes` for the key `name`; `client` must be over the same nodes.
    public func make(nodes: [RedisConnection], client: RedlockClient, name: String, expiry: Duration = .seconds(8)) throws -> Cycle {
        let milliseconds = String(expiry.components.seconds * 1_000 + expiry.components.attoseconds / 1_000_000_000_000_000)
        let value = "floor-value"
        let set = RedisCommand("SET", name, value, "NX", "PX", milliseconds)
        switch self {
        case .floor:
            return RawFloor.cycle(nodes: nodes, name: name, value: value, expiry: expiry)
        case .floorTasks:
            return {
                try await Self.allNodes(nodes) { node in try Self.expectOK(await node.send(set), node) }
                try await Self.allNodes(nodes) { node in
                    try Self.expectDeleted(await node.evaluate(Self.releaseScript, keys: [name], arguments: [value], withdrawOnCancel: false), node)
                }
            }
        case .floorTasksBudget:
            return {
                try await Self.bounded(nodes) { node in try Self.expectOK(await node.send(set), node) }
                try await Self.bounded(nodes) { node in
                    try Self.expectDeleted(await node.evaluate(Self.releaseScript, keys: [name], arguments: [value], withdrawOnCancel: false), node)
                }
            }
        case .cyclePlain, .cycle:
            var options = LockOptions(expiry: expiry)
            options.fastHandoff = self == .cycle
            let lock = try client.makeLock(name, options: options)
            return {
                let lease = try await lock.lock()
                try await lock.unlock(lease)
            }
        }
    }

    /// Compare-and-delete, as a release does it (1 deleted, 0 another holder's value, -1 no key).
    public static let releaseScript = RawFloor.releaseScript

    /// Runs `body` on every node at once, one child task per node, and waits for all.
    static func allNodes(_ nodes: [RedisConnection], _ body: @escaping @Sendable (RedisConnection) async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in nodes { group.addTask { try await body(node) } }
            try await group.waitForAll()
        }
    }

    /// Like ``allNodes(_:_:)``, with a budget timer child in the group.
    static func bounded(_ nodes: [RedisConnection], _ body: @escaping @Sendable (RedisConnection) async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Int?.self) { group in
            for (index, node) in nodes.enumerated() {
                group.addTask {
                    try await body(node)
                    return index
                }
            }
            group.addTask {
                try? await Task.sleep(for: budget)
                return nil
            }
            var answered = 0
            while answered < nodes.count, let next = try await group.next() {
                guard next != nil else { throw BenchmarkError("the budget ran out") }
                answered += 1
            }
            group.cancelAll()
        }
    }

    static func expectOK(_ reply: RedisValue, _ node: RedisConnection) throws {
        guard reply == .simpleString("OK") else { throw BenchmarkError("SET NX on \(node) returned \(reply)") }
    }

    static func expectDeleted(_ reply: RedisValue, _ node: RedisConnection) throws {
        guard reply == .integer(1) else { throw BenchmarkError("release on \(node) returned \(reply)") }
    }
}
