import Benchmark
import CycleWorkloads
import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization

// Uncontended lock+unlock cycles on 1, 3 and 5 local redis-server nodes, and the raw floor: the
// same two round trips (SET NX PX, then the compare-and-delete script, each to every node at
// once) sent straight on the transport. One benchmark iteration is one cycle, so the malloc
// counts are allocations per cycle — of the whole process, the I/O threads included.
//
// Then, on 5 nodes, the ladder (see CycleWorkload): the floor fanned out with a task per node,
// then also with a budget child task, and the library with fastHandoff off.
//
// Run with `swift package --disable-sandbox benchmark` from this directory. `instructions` needs
// perf events; where the kernel offers none the row is left out (count with
// Profiling/profile.sh instead, see RESULTS.md).

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal, .instructions],
        timeUnits: .microseconds,
        warmupIterations: 200,
        maxDuration: .seconds(4),
        maxIterations: 50_000
    )

    for nodeCount in [1, 3, 5] {
        register("floor N=\(nodeCount)", .floor, nodeCount: nodeCount)
        register("cycle N=\(nodeCount)", .cycle, nodeCount: nodeCount)
    }
    for workload in [CycleWorkload.floorTasks, .floorTasksBudget, .cyclePlain] {
        register("ladder N=5 \(workload.rawValue)", workload, nodeCount: 5)
    }
}

/// Registers one benchmark: each iteration is one cycle of `workload` on `nodeCount` fresh nodes.
func register(_ name: String, _ workload: CycleWorkload, nodeCount: Int) {
    Benchmark(name) { benchmark in
        guard let cycle = fixture.cycle else { return benchmark.error("the fixture did not start") }
        for _ in benchmark.scaledIterations {
            do {
                try await cycle()
            } catch {
                return benchmark.error("\(name) failed: \(error)")
            }
        }
    } setup: {
        try await fixture.start(nodeCount: nodeCount) { nodes, client in
            try workload.make(nodes: nodes, client: client, name: "bench:\(workload.rawValue):\(nodeCount)")
        }
    } teardown: {
        await fixture.stop()
    }
}

/// The nodes, connections and client of the benchmark that runs now.
final class Fixture: Sendable {
    private struct State {
        var servers: [RedisServer] = []
        var connections: [RedisConnection] = []
        var client: RedlockClient?
        var cycle: Cycle?
    }

    private let state = Mutex(State())

    /// The cycle to measure, once ``start(nodeCount:_:)`` has run.
    var cycle: Cycle? { state.withLock { $0.cycle } }

    /// Starts `nodeCount` local nodes, connects to them, and makes the cycle, run once so that
    /// connects and script loads are not measured.
    func start(nodeCount: Int, _ makeCycle: ([RedisConnection], RedlockClient) throws -> Cycle) async throws {
        let servers = try await RedisServer.start(count: nodeCount)
        let connections = servers.map { RedisConnection(configuration: $0.configuration()) }
        state.withLock { $0 = State(servers: servers, connections: connections) }
        do {
            let client = try RedlockClient(connections: connections)
            state.withLock { $0.client = client }
            let cycle = try makeCycle(connections, client)
            try await cycle()
            state.withLock { $0.cycle = cycle }
        } catch {
            await stop()
            throw error
        }
    }

    /// Shuts the client and connections down and terminates the nodes.
    func stop() async {
        let old = state.withLock { state in
            defer { state = State() }
            return state
        }
        await old.client?.shutdown()
        for connection in old.connections { await connection.shutdown() }
        for server in old.servers { await server.terminate() }
    }
}

let fixture = Fixture()
