import Dispatch
import Redlock
import RedlockTestSupport
import RedlockTransport

/// One lock+unlock cycle, or its raw equivalent.
public typealias Cycle = @Sendable () async throws -> Void

/// The workloads the benchmarks and the instruction counter share, by name.
///
/// `floor` is the raw cost of what a cycle must send: `SET NX PX` to every node at once, then the
/// compare-and-delete script to every node at once, straight on the transport. The `floor+…`
/// rungs add, one at a time, constructs the library's cycle is built from — written here, not
/// taken from the library — so the gap between `floor` and `cycle-plain` can be attributed:
///
/// - `floor+timer`: each fan-out arms a dispatch timer for the budget and cancels it once every
///   node answered (an alternative to the budget child below: what a timer costs without a task).
/// - `floor+budget`: each fan-out also runs a `Task.sleep(for: budget)` child that bounds it,
///   cancelled once every node answered (what `RedlockClient.fanOut` does).
/// - `floor+budget+shield`: the release fan-out also runs in an unstructured `Task` whose value is
///   awaited, so the caller's cancellation cannot cut it short (what `unlock` does).
/// - `floor+budget+shield+value`: a fresh value per cycle from 16 random bytes drawn one at a time
///   and base64-encoded, a `SET` built per cycle and a release command built per node.
///
/// `cycle-plain` is the library with ``LockOptions/fastHandoff`` off; `cycle` the library with
/// every default.
public enum CycleWorkload: String, CaseIterable, Sendable {
    case floor = "floor"
    case floorTimer = "floor+timer"
    case floorBudget = "floor+budget"
    case floorBudgetShield = "floor+budget+shield"
    case floorBudgetShieldValue = "floor+budget+shield+value"
    case cyclePlain = "cycle-plain"
    case cycle = "cycle"

    /// The library's attempt budget with default options: 8 s × 0.05.
    static let budget: Duration = .milliseconds(400)

    /// Makes the cycle on `nodes` for the key `name`; `client` must be over the same nodes.
    public func make(nodes: [RedisConnection], client: RedlockClient, name: String, expiry: Duration = .seconds(8)) throws -> Cycle {
        let milliseconds = String(expiry.components.seconds * 1_000 + expiry.components.attoseconds / 1_000_000_000_000_000)
        switch self {
        case .floor:
            let value = "floor-value"
            let set = RedisCommand("SET", name, value, "NX", "PX", milliseconds)
            return {
                try await Self.allNodes(nodes) { node in try Self.expectOK(await node.send(set), node) }
                try await Self.allNodes(nodes) { node in
                    try Self.expectDeleted(await node.evaluate(Self.releaseScript, keys: [name], arguments: [value], withdrawOnCancel: false), node)
                }
            }
        case .floorTimer:
            let value = "floor-value"
            let set = RedisCommand("SET", name, value, "NX", "PX", milliseconds)
            return {
                try await Self.timed(nodes) { node in try Self.expectOK(await node.send(set), node) }
                try await Self.timed(nodes) { node in
                    try Self.expectDeleted(await node.evaluate(Self.releaseScript, keys: [name], arguments: [value], withdrawOnCancel: false), node)
                }
            }
        case .floorBudget:
            let value = "floor-value"
            let set = RedisCommand("SET", name, value, "NX", "PX", milliseconds)
            return {
                try await Self.bounded(nodes) { node in try Self.expectOK(await node.send(set), node) }
                try await Self.bounded(nodes) { node in
                    try Self.expectDeleted(await node.evaluate(Self.releaseScript, keys: [name], arguments: [value], withdrawOnCancel: false), node)
                }
            }
        case .floorBudgetShield:
            let value = "floor-value"
            let set = RedisCommand("SET", name, value, "NX", "PX", milliseconds)
            return {
                try await Self.bounded(nodes) { node in try Self.expectOK(await node.send(set), node) }
                try await Task {
                    try await Self.bounded(nodes) { node in
                        try Self.expectDeleted(await node.evaluate(Self.releaseScript, keys: [name], arguments: [value], withdrawOnCancel: false), node)
                    }
                }.value
            }
        case .floorBudgetShieldValue:
            return {
                let value = Self.randomValue()
                let set = RedisCommand("SET", name, value, "NX", "PX", milliseconds)
                try await Self.bounded(nodes) { node in try Self.expectOK(await node.send(set), node) }
                try await Task {
                    try await Self.bounded(nodes) { node in
                        try Self.expectDeleted(await node.evaluate(Self.releaseScript, keys: [name], arguments: [value], withdrawOnCancel: false), node)
                    }
                }.value
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

    /// Runs `body` on every node at once (directly for one node) and waits for all.
    static func allNodes(_ nodes: [RedisConnection], _ body: @escaping @Sendable (RedisConnection) async throws -> Void) async throws {
        if nodes.count == 1, let node = nodes.first { return try await body(node) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in nodes { group.addTask { try await body(node) } }
            try await group.waitForAll()
        }
    }

    /// Like ``allNodes(_:_:)``, with a dispatch timer armed for the budget and cancelled after.
    static func timed(_ nodes: [RedisConnection], _ body: @escaping @Sendable (RedisConnection) async throws -> Void) async throws {
        let timer = DispatchWorkItem {}
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(budget.components.attoseconds / 1_000_000_000_000_000)), execute: timer)
        defer { timer.cancel() }
        try await allNodes(nodes, body)
    }

    /// Like ``allNodes(_:_:)``, with a budget timer child in the group, as a bounded fan-out has.
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
                guard next != nil else { throw WorkloadError("the budget ran out") }
                answered += 1
            }
            group.cancelAll()
        }
    }

    /// 16 random bytes drawn one at a time, base64-encoded: a lock value made the simple way.
    static func randomValue() -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16)
        for _ in 0..<16 { bytes.append(UInt8.random(in: 0...255, using: &generator)) }
        var output: [UInt8] = []
        output.reserveCapacity(24)
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            var bits: UInt32 = 0
            for (offset, byte) in chunk.enumerated() { bits |= UInt32(byte) << (16 - 8 * offset) }
            for position in 0..<4 {
                output.append(position <= chunk.count ? alphabet[Int(bits >> (18 - 6 * position) & 63)] : UInt8(ascii: "="))
            }
            index += 3
        }
        return String(decoding: output, as: UTF8.self)
    }

    static func expectOK(_ reply: RedisValue, _ node: RedisConnection) throws {
        guard reply == .simpleString("OK") else { throw WorkloadError("SET NX on \(node) returned \(reply)") }
    }

    static func expectDeleted(_ reply: RedisValue, _ node: RedisConnection) throws {
        guard reply == .integer(1) else { throw WorkloadError("release on \(node) returned \(reply)") }
    }
}

/// A failed check in a workload.
public struct WorkloadError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
