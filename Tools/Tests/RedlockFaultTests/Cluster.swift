import Foundation
import Redlock
import RedlockTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Real nodes and the clients a test makes over them. ``withCluster(_:persistence:_:)`` tears
/// it down: paused nodes are resumed (so no client thread waits on them), clients are shut
/// down, servers are killed and their directories removed — also when the test fails.
final class Cluster: Sendable {
    let servers: [RedisServer]
    /// `host:port,host:port,…` for the worker's `--nodes`: the servers', unless given.
    let nodeList: String
    private let clients = Mutex<[RedlockClient]>([])

    init(servers: [RedisServer], nodeList: String? = nil) {
        self.servers = servers
        self.nodeList = nodeList ?? servers.map { "127.0.0.1:\($0.port)" }.joined(separator: ",")
    }

    /// A client over every node, connected already (unless `connect` is false) to the nodes
    /// that can answer, so a test's timings measure the lock, not connects.
    func makeClient(
        connectTimeout: Duration = .milliseconds(250),
        commandTimeout: Duration = .seconds(1),
        connect: Bool = true
    ) async throws -> RedlockClient {
        let client = try RedlockClient(nodes: servers.map {
            $0.configuration(connectTimeout: connectTimeout, commandTimeout: commandTimeout)
        })
        clients.withLock { $0.append(client) }
        if connect {
            // Only nodes that can answer: a killed one refuses, a paused one would time out.
            for node in client.nodes where servers.contains(where: {
                $0.endpoint == node.configuration.endpoint && $0.isRunning && !$0.isPaused
            }) {
                try await node.ping()
            }
        }
        return client
    }

    /// Resumes paused nodes and shuts every client down.
    func tearDown() async {
        for server in servers where server.isPaused { try? server.resume() }
        let clients = clients.withLock { clients in
            defer { clients = [] }
            return clients
        }
        for client in clients { await client.shutdown() }
    }
}

/// Starts `count` nodes, runs `body` with them, and undoes everything afterwards.
func withCluster<T>(
    _ count: Int,
    persistence: RedisServer.Persistence = .none,
    clockShim: String? = nil,
    _ body: (Cluster) async throws -> T
) async throws -> T {
    try await withRedisServers(count, persistence: persistence, clockShim: clockShim) { servers throws in
        let cluster = Cluster(servers: servers)
        return try await withTeardown {
            try await body(cluster)
        } teardown: {
            await cluster.tearDown()
        }
    }
}

/// How long `body` takes, and its result.
func measure<T>(_ body: () async throws -> T) async rethrows -> (T, Duration) {
    let start = ContinuousClock.now
    let result = try await body()
    return (result, start.duration(to: .now))
}

extension Duration {
    /// Seconds as a `Double`, for reports and arithmetic.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }

    /// `0.123 s`.
    var formatted: String { String(format: "%.3f s", seconds) }
}

/// The `fraction` quantile (nearest rank) of `durations`.
func quantile(_ fraction: Double, of durations: [Duration]) -> Duration {
    let sorted = durations.sorted()
    guard !sorted.isEmpty else { return .zero }
    let rank = Int((fraction * Double(sorted.count)).rounded(.up)) - 1
    return sorted[min(max(rank, 0), sorted.count - 1)]
}

/// The `redlock-worker` executable that `swift build` put next to the test bundle.
func workerExecutable() throws -> String {
    guard let path = HelperProcess.siblingExecutable(named: "redlock-worker") else {
        throw WorkerNotFound()
    }
    return path
}

struct WorkerNotFound: Error, CustomStringConvertible {
    var description: String {
        "redlock-worker not found next to \(CommandLine.arguments.first ?? "the test bundle"); "
            + "build it (swift build --build-tests builds every product) or set REDLOCK_REDLOCK_WORKER"
    }
}

/// Arguments every worker gets: the nodes, and the parent watch that ends it if we die.
func workerArguments(_ mode: String, cluster: Cluster, nodes: String? = nil, lock: String, _ more: [String]) -> [String] {
    [mode, "--nodes", nodes ?? cluster.nodeList, "--lock", lock, "--parent-pid", String(getpid()), "--max-seconds", "120"] + more
}

/// Waits for a helper to exit, killing it if it takes longer than `limit`.
func waitForExit(_ helper: HelperProcess, within limit: Duration) async -> HelperProcess.Termination {
    let watchdog = Task {
        try await Task.sleep(for: limit)
        helper.signal(SIGKILL)
    }
    let termination = await helper.waitUntilExited()
    watchdog.cancel()
    return termination
}

/// A temporary directory named like the servers' (so CI's cleanup knows it), removed by `body`'s end.
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = FileManager.default.temporaryDirectory.path + "/swift-redlock-faults-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    do {
        let result = try await body(path)
        try? FileManager.default.removeItem(atPath: path)
        return result
    } catch {
        try? FileManager.default.removeItem(atPath: path)
        throw error
    }
}

/// `key=value` pairs of a line such as the worker's reports.
func keyValuePairs(_ line: Substring) -> [String: String] {
    var pairs: [String: String] = [:]
    for word in line.split(separator: " ") {
        guard let equals = word.firstIndex(of: "=") else { continue }
        pairs[String(word[..<equals])] = String(word[word.index(after: equals)...])
    }
    return pairs
}

/// Runs `redlock-worker <mode>` on the cluster (lock named after the mode) until it exits, which
/// must be with status 0 within `limit`, and returns its last `<mode> key=value …` line (its
/// report), or nil (with the issue recorded) when there is none.
///
/// With `rerunTrapsBefore`, a run that a trap (SIGILL, SIGTRAP) ended before the worker printed
/// that line is run again, twice at most: libdispatch's worker-pool monitor may trap in a process
/// out of descriptors (see `redlock-worker exhausted`). A trap of the library's own there would
/// come back run after run; a hang ends in SIGKILL and is never run again.
func workerReport(
    _ worker: String, _ mode: String, cluster: Cluster, _ arguments: [String], within limit: Duration,
    rerunTrapsBefore marker: String? = nil
) async throws -> (line: Substring, report: [String: String])? {
    for run in 1...3 {
        let helper = try await HelperProcess.start(
            executable: worker, arguments: workerArguments(mode, cluster: cluster, lock: mode, arguments), readyMarker: "\(mode) "
        )
        let termination = await waitForExit(helper, within: limit)
        let output = helper.output
        if let marker, run < 3, case .signalled(let signal) = termination, [SIGILL, SIGTRAP].contains(signal), !output.contains(marker) {
            print("\(mode): run \(run) ended by signal \(signal) before \"\(marker)\"; again")
            continue
        }
        #expect(termination == .exited(0), "\(output.suffix(500))")
        guard let line = output.split(separator: "\n").last(where: { $0.hasPrefix("\(mode) ") }) else {
            Issue.record("no report: \(output)")
            return nil
        }
        return (line, keyValuePairs(line))
    }
    return nil
}
