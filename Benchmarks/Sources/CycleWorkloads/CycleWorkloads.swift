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
        let value = "floor-value"
        switch self {
        case .floor:
            return RawFloor.cycle(nodes: nodes, name: name, value: value, expiry: expiry)
        case .floorTasks:
            return RawFloor.cycleWithTasks(nodes: nodes, name: name, value: value, expiry: expiry)
        case .floorTasksBudget:
            return RawFloor.cycleWithTasks(nodes: nodes, name: name, value: value, expiry: expiry, budget: Self.budget)
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

}
