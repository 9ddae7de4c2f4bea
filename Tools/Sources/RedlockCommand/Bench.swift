import ArgumentParser
import RedlockOutput
import Dispatch
import Foundation
import Redlock
import RedlockTestSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `redlock bench`: lock latency and throughput against the raw Redis floor of the same run.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure lock latency and throughput against the raw Redis floor.",
        discussion: """
        Starts its own local redis-server nodes (or uses --nodes) and measures, each for \
        --duration, these scenarios:

        floor: SET NX PX + compare-and-delete script sent raw on the transport to all N nodes \
        concurrently, no task per node (sequential on N = 1, 3, 5, and 64 tasks on N = 5).

        cycle: uncontended lock() + unlock(), sequential, N = 1, 3, 5; variant `executor` on the \
        client's executor, variants `busy-poll` and `executor-busy-poll` on a client of their own \
        with --busy-poll.

        acquire: uncontended lock() alone, N = 5 (the unlock after it is not timed); variant \
        `epoch-guard` with epochGuard (and expiry) 1 s: the acquire is a script that checks each \
        node's data epoch; variant `guards` with the clock guard too (the reply carries the \
        node's TIME, checked against the client's clock); variant `fair` with a fair lock (free, \
        nobody in line).

        parallel: 64 tasks on independent names, N = 5.

        contended: 8 tasks on one name, each holding it for each --hold (default 0, then 1 ms); \
        latencies are handoffs, from one holder's release to the next holder's acquire. With 0 \
        the lock is handed on back to back (the acquisition rate, undiluted by hold time); with \
        1 ms every waiter is waiting when the holder releases (the handoff latency proper). \
        Variants of a hold > 0 end in -hold<time>.

        cross-process: 4 redlock-worker processes, one lock() loop each, on one name, for each \
        --hold, also with a fair lock (variant `fair`), and each with every worker's loop on its \
        client's executor (variants `…-executor`); latencies are handoffs between processes (one \
        holder's release to another process's acquire), ops/s the handoffs per second; the note \
        compares the median with the uncontended acquire.

        missed-release: a lock() of a second client (its own connections, as in another \
        process) begins 0–1 ms before the holder's release; latency from the release to its \
        return; variant fresh: a new name each round (it subscribes the name's channels after \
        its first attempt; a fair waiter hears its handoff on its client's channel, subscribed \
        from the first round on), subscribed: one name (the subscription lingers); fair-…: both \
        locks fair; …-executor: holder and waiter on their clients' executors; a missed release \
        would cost its 1 s retry delay.

        stopped-node: cycle with one node frozen by SIGSTOP (local nodes only), in slices \
        alternating with all nodes up (variant `baseline`); sequential, and 64 tasks on \
        independent names (their ratio: cycles/s against the baseline's).

        Library rows use every LockOptions default, except variant `no-pubsub` (cycle on N = 5, \
        parallel, contended), which turns fast handoff off: no PUBLISH and no release \
        subscription (waiters in other processes would poll with the retry delay of 50–250 ms; \
        within the process a release still hands the lock over). raw-floor rows are \
        redlock-raw-floor (C, one thread, blocking hiredis), run in the same slices; tcp/tls rows \
        run the cycle on the same nodes' plain and TLS ports; connect rows time a new \
        connection's first PING. Floor and library rows run interleaved in 1 s slices, so drift \
        hits both alike. ratio_to_floor is p50 / floor p50 on the same nodes, except for the \
        parallel rows: cycles/s / floor cycles/s at the same concurrency. \
        Every node the bench started is stopped when it ends, also on error or Ctrl-C.
        """
    )

    @Option(help: "Comma-separated running nodes (host:port, redis://…, unix:///…). Default: start --node-count local nodes.")
    var nodes: String?

    @Option(help: "How many local redis-server nodes to start when --nodes is not given.")
    var nodeCount: Int = 5

    @Option(help: "Measured seconds per scenario.")
    var duration: Double = 5

    @Flag(help: "Print one JSON object {\"machine\": {…}, \"rows\": […]} instead of the table.")
    var json = false

    /// Concurrency of the `parallel` row and its floor.
    static let parallelTasks = 64
    /// Tasks of the `contended` row.
    static let contendedTasks = 8
    @Option(
        help: "How long each holder keeps the lock in the contended rows; repeat for several (e.g. --hold 0 --hold 250ms). Default: 0 and 1ms.",
        transform: parseDuration
    )
    var hold: [Duration] = [.zero, .milliseconds(1)]

    @Option(
        name: .customLong("busy-poll"),
        help: "The busyPoll of the client of the cycle rows' busy-poll variants (RedlockClient(nodes:busyPoll:); 0 leaves them out).",
        transform: parseDuration
    )
    var busyPoll: Duration = .microseconds(100)

    func validate() throws {
        try validateLogLevelSetting()
        try RawArguments.requireText()
        guard (1...64).contains(nodeCount) else { throw ValidationError("--node-count must be in 1...64") }
        guard duration >= 0.1, duration <= 600 else { throw ValidationError("--duration must be in 0.1...600 seconds") }
        guard (1...4).contains(hold.count), hold.allSatisfy({ $0 >= .zero && $0 <= .seconds(10) }) else {
            throw ValidationError("--hold takes one to four durations in 0...10s")
        }
        guard busyPoll >= .zero, busyPoll <= .milliseconds(10) else { throw ValidationError("--busy-poll must be in 0...10ms") }
    }

    func run() async throws {
        let settings = BenchSettings(
            nodes: nodes, nodeCount: nodeCount,
            duration: .milliseconds(Int64((duration * 1_000).rounded())), json: json, hold: hold, busyPoll: busyPoll
        )
        let work = Task { try await settings.run() }
        let interrupts = BenchInterrupts { work.cancel() }
        defer { interrupts.stop() }
        do {
            try await work.value
        } catch {
            // Cancelled by a signal, whatever the cancellation surfaced as (a CancellationError,
            // or a node's command failing as cancelled): 128 + the signal, as a shell reports
            // it: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP.
            if let signal = interrupts.signal { throw ExitCode(128 + signal) }
            throw error
        }
    }
}

/// The parsed options, and the bench itself.
struct BenchSettings: Sendable {
    let nodes: String?
    let nodeCount: Int
    let duration: Duration
    let json: Bool
    /// How long each holder keeps the lock in the contended rows, one pair of rows per value.
    let hold: [Duration]
    /// The busy poll of the cycle rows' `busy-poll` variants; zero leaves them out.
    let busyPoll: Duration

    func run() async throws {
        if let nodes {
            let configurations = try parseNodeList(nodes)
            let connections = configurations.map { RedisConnection(configuration: $0) }
            do {
                try await measure(connections, servers: nil, tls: nil, description: "\(configurations.count) given: \(configurations.map(\.description).joined(separator: ", "))")
            } catch {
                await shutdown(connections)
                throw error
            }
            await shutdown(connections)
            return
        }

        // The TLS rows need certificates, made with the openssl command: without it, no TLS rows.
        let certificates: TLSCertificates?
        do {
            certificates = try await TLSCertificates.generate()
        } catch {
            progress("warning: no TLS rows (\(error))")
            certificates = nil
        }
        defer { certificates?.remove() }
        progress("Starting \(nodeCount) local redis-server nodes\(certificates == nil ? "" : ", each with a TLS port too")…")
        let (servers, tlsPorts) = try await Self.startServers(count: nodeCount, certificates: certificates)
        let connections = servers.map { RedisConnection(configuration: $0.configuration()) }
        let tlsConnections: [RedisConnection] = certificates.map { certificates in
            tlsPorts.map { port in
                RedisConnection(configuration: RedisConnectionConfiguration(
                    endpoint: .hostname("127.0.0.1", port: port),
                    tls: RedisTLSConfiguration(trustedCertificatesFile: certificates.ca.certificate)
                ))
            }
        } ?? []
        do {
            try await measure(
                connections, servers: servers, tls: tlsConnections.isEmpty ? nil : tlsConnections,
                description: "\(nodeCount) local redis-server on 127.0.0.1\(tlsConnections.isEmpty ? "" : " (plain and TLS ports)")"
            )
        } catch {
            await shutdown(tlsConnections)
            await stop(servers, connections)
            throw error
        }
        await shutdown(tlsConnections)
        await stop(servers, connections)
    }

    /// Starts `count` nodes that listen on a plain port and, with `certificates`, on a TLS port
    /// of their own (returned in order; none without certificates).
    private static func startServers(count: Int, certificates: TLSCertificates?) async throws -> ([RedisServer], [Int]) {
        guard let certificates else { return (try await RedisServer.start(count: count), []) }
        return try await withThrowingTaskGroup(of: (Int, RedisServer, Int).self) { group in
            for index in 0..<count {
                group.addTask {
                    var lastError: (any Error)?
                    for _ in 0..<4 {
                        let port = try freeLoopbackPort()
                        do {
                            let server = try await RedisServer.start(arguments: [
                                "--tls-port", String(port),
                                "--tls-cert-file", certificates.server.certificate,
                                "--tls-key-file", certificates.server.key,
                                "--tls-ca-cert-file", certificates.ca.certificate,
                                "--tls-auth-clients", "no",
                            ])
                            return (index, server, port)
                        } catch {
                            lastError = error
                        }
                    }
                    throw lastError ?? BenchmarkError("could not start a node with a TLS port")
                }
            }
            var started: [(Int, RedisServer, Int)] = []
            do {
                for try await node in group { started.append(node) }
            } catch {
                for (_, server, _) in started { await server.terminate() }
                throw error
            }
            started.sort { $0.0 < $1.0 }
            return (started.map(\.1), started.map(\.2))
        }
    }

    private func stop(_ servers: [RedisServer], _ connections: [RedisConnection]) async {
        for server in servers {
            try? server.resume()
            await server.terminate()
        }
        await shutdown(connections)
        progress("Stopped every node the bench started.")
    }

    private func shutdown(_ connections: [RedisConnection]) async {
        await withTaskGroup(of: Void.self) { group in
            for connection in connections { group.addTask { await connection.shutdown() } }
        }
    }

    private func measure(_ connections: [RedisConnection], servers: [RedisServer]?, tls tlsConnections: [RedisConnection]?, description: String) async throws {
        let count = connections.count
        let runID = String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let prefix = "redlock-bench:\(runID)"
        let loadAverage = BenchMachine.loadAverageNow()
        let redisVersion = try await checkNodes(connections)
        let duration = duration
        var rows: [BenchRow] = []
        let rawFloor = RawFloorProcess.executable
        if rawFloor == nil { progress("redlock-raw-floor is not next to redlock: no raw C floor rows (swift build --package-path Tools --product redlock-raw-floor)") }

        // The options of the `no-pubsub` rows: fast handoff off, so a release is not published and
        // a waiter does not subscribe (in-process handoff only).
        let polling = {
            var options = LockOptions()
            options.fastHandoff = false
            return options
        }()

        // The options of the `epoch-guard` acquire row. Its expiry is 1 s so that making the nodes'
        // markers (their first acquire waits the guard out) costs 1 s, not 8.
        let epochGuarded = LockOptions(expiry: .seconds(1), epochGuard: .seconds(1))
        let bothGuards = LockOptions(expiry: .seconds(1), epochGuard: .seconds(1), clockGuard: true)

        // 1 + 2: the sequential floor and uncontended cycles, interleaved, per node count; on all
        // the nodes also the cycle with fast handoff off.
        var sizes = [1, 3, 5].filter { $0 <= count }
        if !sizes.contains(count) { sizes.append(count) }
        var floorP50: [Int: Double] = [:]
        /// The uncontended acquire on all the nodes: what the cross-process handoffs compare with.
        var acquireP50: Double?
        for size in sizes {
            try Task.checkCancellation()
            let subset = Array(connections.prefix(size))
            progress("Measuring floor and cycle on \(size) node\(size == 1 ? "" : "s")…")
            let rawNodes = rawFloor.flatMap { _ in RawFloorProcess.nodeList(subset) }
            // Each workload under a key, so that the rows below read their results by name.
            let results: [String: BenchMeasurement] = try await withClient(subset) { client in try await withPollingClient(subset) { busyPolling in
                var workloads: [(key: String, workload: BenchWorkload)] = [
                    ("floor", .operations([BenchWorkloads.floor(nodes: subset, name: "\(prefix):floor:\(size)", value: "floor-\(runID)")])),
                    ("cycle", .operations([try BenchWorkloads.cycle(client: client, name: "\(prefix):cycle:\(size)")])),
                    ("cycle-executor", .operations(
                        [try BenchWorkloads.cycle(client: client, name: "\(prefix):cycle-executor:\(size)")], on: client.executor
                    )),
                ]
                if let busyPolling {
                    // A client of its own (its loop polls busily), in the same slices.
                    workloads.append(("cycle-busy-poll", .operations([try BenchWorkloads.cycle(client: busyPolling, name: "\(prefix):cycle-busy-poll:\(size)")])))
                    workloads.append((
                        "cycle-executor-busy-poll",
                        .operations([try BenchWorkloads.cycle(client: busyPolling, name: "\(prefix):cycle-executor-busy-poll:\(size)")], on: busyPolling.executor)
                    ))
                }
                if size == count {
                    workloads.append((
                        "cycle-no-pubsub",
                        .operations([try BenchWorkloads.cycle(client: client, name: "\(prefix):cycle-no-pubsub:\(size)", options: polling)])
                    ))
                    workloads.append(("acquire", .operations([try BenchWorkloads.acquire(client: client, name: "\(prefix):acquire:\(size)")])))
                    // The markers exist before the measurement: the first guarded acquire waits.
                    let marking = try client.makeLock("\(prefix):acquire-epoch-guard:\(size)", options: epochGuarded)
                    try await marking.unlock(try await marking.lock())
                    workloads.append((
                        "acquire-epoch-guard",
                        .operations([try BenchWorkloads.acquire(client: client, name: "\(prefix):acquire-epoch-guard:\(size)", options: epochGuarded)])
                    ))
                    workloads.append((
                        "acquire-guards",
                        .operations([try BenchWorkloads.acquire(client: client, name: "\(prefix):acquire-guards:\(size)", options: bothGuards)])
                    ))
                    workloads.append((
                        "acquire-fair",
                        .operations([
                            try BenchWorkloads.acquire(client: client, name: "\(prefix):acquire-fair:\(size)", options: LockOptions(fair: true)),
                        ])
                    ))
                }
                if let rawFloor, let rawNodes {
                    workloads.append(("raw-floor", RawFloorProcess.workload(executable: rawFloor, nodes: rawNodes, name: "\(prefix):raw-floor:\(size)")))
                }
                let measured = workloads
                let results = try await watchdog("floor and cycle on \(size) nodes", expected: duration * measured.count) {
                    try await BenchRunner.interleave(measured.map(\.workload), each: duration)
                }
                try check(results, "floor and cycle on \(size) nodes")
                return Dictionary(uniqueKeysWithValues: zip(measured.map(\.key), results))
            } }
            guard let floorResult = results["floor"] else { throw BenchmarkError("floor and cycle on \(size) nodes: no floor measured") }
            let raw = results["raw-floor"].map {
                BenchRow(
                    scenario: "raw-floor", nodes: size, concurrency: 1, measurement: $0, ratioToFloor: nil, ratioBasis: .latency,
                    note: "C, one thread, blocking hiredis (redlock-raw-floor)"
                )
            }
            if let raw { rows.append(raw) }
            let rawP50 = raw?.p50
            let floor = BenchRow(
                scenario: "floor", nodes: size, concurrency: 1, measurement: floorResult, ratioToFloor: 1, ratioBasis: .latency,
                ratioToRawFloor: ratio(floorResult.microseconds(atPercentile: 50), rawP50)
            )
            floorP50[size] = floor.p50
            rows.append(floor)
            for (key, variant, note) in [
                ("cycle", "default", ""),
                ("cycle-executor", "executor", "the task prefers client.executor: it runs on the I/O thread"),
                ("cycle-busy-poll", "busy-poll", "a client with busyPoll \(format(busyPoll)): its loop polls without blocking that long after a reply"),
                ("cycle-executor-busy-poll", "executor-busy-poll", "busyPoll \(format(busyPoll)), the task on that client's executor"),
                ("cycle-no-pubsub", "no-pubsub", "fastHandoff off: no PUBLISH, no release subscription"),
            ] {
                guard let measured = results[key] else { continue }
                let p50 = measured.microseconds(atPercentile: 50)
                rows.append(BenchRow(
                    scenario: "cycle", variant: variant, nodes: size, concurrency: 1, measurement: measured,
                    ratioToFloor: ratio(p50, floor.p50), ratioBasis: .latency, ratioToRawFloor: ratio(p50, rawP50), note: note
                ))
            }
            if let acquire = results["acquire"] {
                let defaultP50 = acquire.microseconds(atPercentile: 50)
                acquireP50 = defaultP50
                rows.append(BenchRow(
                    scenario: "acquire", nodes: size, concurrency: 1, measurement: acquire,
                    ratioToFloor: ratio(defaultP50, floor.p50), ratioBasis: .latency,
                    note: "uncontended lock() alone (the unlock after it is not timed)"
                ))
                for (key, variant, note) in [
                    ("acquire-epoch-guard", "epoch-guard", "epochGuard 1 s: a script checks redlock:epoch"),
                    ("acquire-guards", "guards", "epochGuard 1 s and clockGuard: the reply carries TIME, checked against the client's clock"),
                    ("acquire-fair", "fair", "fair: nobody in line, so the script grants without the queue's commands"),
                ] {
                    guard let measured = results[key] else { continue }
                    let p50 = measured.microseconds(atPercentile: 50)
                    rows.append(BenchRow(
                        scenario: "acquire", variant: variant, nodes: size, concurrency: 1, measurement: measured,
                        ratioToFloor: ratio(p50, floor.p50), ratioBasis: .latency,
                        note: note + (ratio(p50, defaultP50).map { String(format: "; %.2f× the default acquire", $0) } ?? "")
                    ))
                }
            }
        }

        try await withClient(connections) { client in
            // 3: 64 tasks on independent names against the raw fan-out at the same concurrency
            // (and the same with fast handoff off).
            try Task.checkCancellation()
            let tasks = Bench.parallelTasks
            progress("Measuring floor and parallel with \(tasks) tasks on \(count) nodes…")
            let parallel = try await watchdog("floor and parallel", expected: duration * 3) {
                try await BenchRunner.interleave([
                    (0..<tasks).map { BenchWorkloads.floor(nodes: connections, name: "\(prefix):floor\(tasks):\($0)", value: "floor-\(runID)") },
                    try (0..<tasks).map { try BenchWorkloads.cycle(client: client, name: "\(prefix):parallel:\($0)") },
                    try (0..<tasks).map { try BenchWorkloads.cycle(client: client, name: "\(prefix):parallel-no-pubsub:\($0)", options: polling) },
                ], each: duration)
            }
            try check(parallel, "floor and parallel with \(tasks) tasks")
            rows.append(BenchRow(scenario: "floor", nodes: count, concurrency: tasks, measurement: parallel[0], ratioToFloor: 1, ratioBasis: .throughput))
            for (index, variant) in ["default", "no-pubsub"].enumerated() {
                rows.append(BenchRow(
                    scenario: "parallel", variant: variant, nodes: count, concurrency: tasks, measurement: parallel[index + 1],
                    ratioToFloor: ratio(parallel[index + 1].operationsPerSecond, parallel[0].operationsPerSecond), ratioBasis: .throughput,
                    note: variant == "no-pubsub" ? "fastHandoff off: no PUBLISH, no release subscription" : ""
                ))
            }

            // 4: contention on one name, with every default (fast handoff: a waiter retries when
            // it hears the release), then without publish/subscribe (in-process handoff only).
            let contendedRuns = hold.flatMap { hold in
                [("default", LockOptions()), ("no-pubsub", polling)].map { name, options in
                    (variant: hold == .zero ? name : "\(name)-hold\(format(hold).replacingOccurrences(of: " ", with: ""))", hold: hold, options: options)
                }
            }
            for (variant, hold, options) in contendedRuns {
                try Task.checkCancellation()
                progress("Measuring \(Bench.contendedTasks) tasks contending for one name on \(count) nodes (\(variant))…")
                let turns = Turns()
                var note = "latency = handoff (release → next holder); ops/s = acquisitions; hold \(format(hold))"
                if variant.hasPrefix("no-pubsub") { note += "; fastHandoff off (in-process handoff only)" }
                let contended: BenchMeasurement
                do {
                    contended = try await watchdog("contended (\(variant))", expected: duration) {
                        try await ContendedWorkload(
                            client: client, name: "\(prefix):contended-\(variant)", tasks: Bench.contendedTasks,
                            hold: hold, options: options
                        ).run(for: duration, recordingIn: turns)
                    }
                } catch let failure as BenchmarkError {
                    // A lock() that never returns is a finding, not a reason to lose the other rows.
                    turns.finish()
                    contended = turns.measurement(elapsed: duration)
                    note = "HUNG: lock() calls never returned after cancellation; handoffs recorded before the hang"
                    progress("warning: \(failure)")
                }
                if contended.operations == 0 {
                    progress("warning: contended (\(variant)): no handoff completed; first error: \(contended.firstError ?? "none")")
                }
                rows.append(BenchRow(
                    scenario: "contended", variant: variant, nodes: count, concurrency: Bench.contendedTasks, measurement: contended,
                    ratioToFloor: ratio(contended.microseconds(atPercentile: 50), floorP50[count]), ratioBasis: .latency,
                    note: note
                ))
            }

            // 4b: the same contention between processes, one lock() loop per worker process.
            if let worker = CrossProcessContention.worker, let nodeList = RawFloorProcess.nodeList(connections) {
                let shapes = [(false, false), (true, false), (false, true), (true, true)]
                for (hold, (fair, onExecutor)) in hold.flatMap({ hold in shapes.map { (hold, $0) } }) {
                    try Task.checkCancellation()
                    let processes = CrossProcessContention.processes
                    progress("Measuring \(processes) worker processes contending for one name on \(count) nodes (hold \(format(hold))\(fair ? ", fair" : "")\(onExecutor ? ", on the executor" : ""))…")
                    let base = (fair ? "fair" : "default") + (onExecutor ? "-executor" : "")
                    let variant = hold == .zero ? base : "\(base)-hold\(format(hold).replacingOccurrences(of: " ", with: ""))"
                    let result = try await watchdog("cross-process (\(variant))", expected: duration + .seconds(10)) {
                        try await CrossProcessContention.measure(
                            worker: worker, nodes: nodeList, name: "\(prefix):cross-process-\(variant)", hold: hold, fair: fair,
                            onExecutor: onExecutor, duration: duration
                        )
                    }
                    let p50 = result.handoffs.microseconds(atPercentile: 50)
                    var note = "latency = handoff between processes (release → other process's acquire); ops/s = handoffs; "
                        + String(format: "%.0f acquisitions/s; hold %@", Double(result.acquisitions) / result.handoffs.elapsed.seconds, format(hold))
                    if let times = ratio(p50, acquireP50) { note += String(format: "; %.2f× the uncontended acquire", times) }
                    if result.overlaps > 0 { note += "; OVERLAPS: \(result.overlaps)" }
                    if fair { note += "; fair: queued on the nodes, each release hands the lock to the first in line" }
                    if onExecutor { note += "; each worker's loop prefers client.executor" }
                    rows.append(BenchRow(
                        scenario: "cross-process", variant: variant, nodes: count, concurrency: processes, measurement: result.handoffs,
                        ratioToFloor: ratio(p50, floorP50[count]), ratioBasis: .latency, note: note
                    ))
                }
            } else {
                progress("no cross-process rows: redlock-worker is not next to redlock, or a node needs TLS or a password")
            }

            // 4c: a waiter in a second client that begins 0–1 ms before the release.
            for (fresh, fair, onExecutors) in [
                (true, false, false), (false, false, false), (true, true, false), (false, true, false), (false, false, true), (false, true, true),
            ] {
                try Task.checkCancellation()
                let variant = (fair ? "fair-" : "") + (fresh ? "fresh" : "subscribed") + (onExecutors ? "-executor" : "")
                progress("Measuring a waiter that begins just before a release, on \(count) nodes (\(variant))…")
                let result = try await watchdog("missed-release (\(variant))", expected: duration) {
                    try await MissedRelease.measure(
                        holderClient: client, configurations: connections.map(\.configuration), name: "\(prefix):missed-release-\(variant)",
                        freshNames: fresh, fair: fair, onExecutors: onExecutors, duration: duration
                    )
                }
                let p50 = result.microseconds(atPercentile: 50)
                var note = "latency = release → the waiter's lock() returning; the waiter began 0–1 ms before the release, in another client"
                note += fresh
                    ? (fair ? "; a new name each round (the handoff comes on the client's channel)" : "; a new name each round (subscribes after its first attempt)")
                    : "; one name (the subscription lingers)"
                if fair { note += "; fair locks: the handoff is the waiter's grant" }
                if onExecutors { note += "; holder and waiter on their clients' executors" }
                if let times = ratio(p50, acquireP50) { note += String(format: "; %.2f× the uncontended acquire", times) }
                rows.append(BenchRow(
                    scenario: "missed-release", variant: variant, nodes: count, concurrency: 2, measurement: result,
                    ratioToFloor: ratio(p50, floorP50[count]), ratioBasis: .latency, note: note
                ))
            }

            // 5: one node frozen, in slices alternating with all nodes up (the baseline), each
            // slice after 200 ms of unmeasured settling: stopping and resuming have transients.
            try Task.checkCancellation()
            if let servers, count >= 3, let frozen = servers.last {
                progress("Measuring cycle with node \(count - 1) stopped (SIGSTOP), alternating with all nodes up, 1 and \(Bench.parallelTasks) tasks…")
                let results = try await watchdog("stopped-node", expected: duration * 4 + .seconds(10)) {
                    let cycle = try BenchWorkloads.cycle(client: client, name: "\(prefix):stopped-node")
                    let cycles = try (0..<Bench.parallelTasks).map {
                        try BenchWorkloads.cycle(client: client, name: "\(prefix):stopped-node:\($0)")
                    }
                    // Even indices with every node up, odd ones with the last frozen.
                    return try await BenchRunner.interleave(
                        [[cycle], [cycle], cycles, cycles], each: duration, settle: .milliseconds(200)
                    ) { index in
                        if index.isMultiple(of: 2) { try frozen.resume() } else { try await frozen.pause() }
                    }
                }
                try frozen.resume()
                try check(results, "stopped-node")
                rows.append(BenchRow(
                    scenario: "stopped-node", variant: "baseline", nodes: count, concurrency: 1, measurement: results[0],
                    ratioToFloor: ratio(results[0].microseconds(atPercentile: 50), floorP50[count]), ratioBasis: .latency,
                    note: "all nodes up, interleaved with the stopped slices"
                ))
                let p99 = results[1].microseconds(atPercentile: 99)
                rows.append(BenchRow(
                    scenario: "stopped-node", nodes: count, concurrency: 1, measurement: results[1],
                    ratioToFloor: ratio(results[1].microseconds(atPercentile: 50), floorP50[count]), ratioBasis: .latency,
                    note: ratio(p99, results[0].microseconds(atPercentile: 99)).map { String(format: "node %d stopped; p99 %.2f× baseline p99", count - 1, $0) } ?? ""
                ))
                let tasks = Bench.parallelTasks
                rows.append(BenchRow(
                    scenario: "stopped-node", variant: "baseline", nodes: count, concurrency: tasks, measurement: results[2],
                    ratioToFloor: nil, ratioBasis: .throughput, note: "\(tasks) tasks on independent names, all nodes up, interleaved with the stopped slices"
                ))
                rows.append(BenchRow(
                    scenario: "stopped-node", nodes: count, concurrency: tasks, measurement: results[3],
                    ratioToFloor: nil, ratioBasis: .throughput,
                    note: ratio(results[3].operationsPerSecond, results[2].operationsPerSecond).map {
                        String(format: "node %d stopped, %d tasks; %.2f× the baseline's cycles/s", count - 1, tasks, $0)
                    } ?? ""
                ))
            }
        }

        // 6: the same nodes over TLS and plain TCP, interleaved, and what a connect costs each way.
        if let tlsConnections {
            var sizes = [1, count]
            if count == 1 { sizes = [1] }
            for size in sizes {
                try Task.checkCancellation()
                progress("Measuring cycles over TLS and plain TCP on the same \(size) node\(size == 1 ? "" : "s")…")
                let plain = Array(connections.prefix(size))
                let secure = Array(tlsConnections.prefix(size))
                let results = try await withClient(plain) { plainClient in
                    try await withClient(secure) { tlsClient in
                        let workloads = [
                            [try BenchWorkloads.cycle(client: plainClient, name: "\(prefix):tcp:\(size)")],
                            [try BenchWorkloads.cycle(client: tlsClient, name: "\(prefix):tls:\(size)")],
                        ]
                        return try await watchdog("TLS and TCP on \(size) nodes", expected: duration * 2) {
                            try await BenchRunner.interleave(workloads, each: duration)
                        }
                    }
                }
                try check(results, "TLS and TCP on \(size) nodes")
                let tcpP50 = results[0].microseconds(atPercentile: 50)
                rows.append(BenchRow(
                    scenario: "cycle", variant: "tcp", nodes: size, concurrency: 1, measurement: results[0],
                    ratioToFloor: ratio(tcpP50, floorP50[size]), ratioBasis: .latency, note: "plain TCP, interleaved with the tls row"
                ))
                let tlsP50 = results[1].microseconds(atPercentile: 50)
                rows.append(BenchRow(
                    scenario: "cycle", variant: "tls", nodes: size, concurrency: 1, measurement: results[1],
                    ratioToFloor: ratio(tlsP50, floorP50[size]), ratioBasis: .latency,
                    note: ratio(tlsP50, tcpP50).map { String(format: "TLS on the same nodes: p50 %.2f× tcp", $0) } ?? ""
                ))
            }
            progress("Measuring a connect and one PING, plain and TLS…")
            let connects = try await watchdog("connects", expected: duration * 2) {
                try await BenchRunner.interleave([
                    [BenchWorkloads.connect(connections[0].configuration)],
                    [BenchWorkloads.connect(tlsConnections[0].configuration)],
                ], each: duration)
            }
            try check(connects, "connects")
            for (index, variant) in ["tcp", "tls"].enumerated() {
                rows.append(BenchRow(
                    scenario: "connect", variant: variant, nodes: 1, concurrency: 1, measurement: connects[index],
                    ratioToFloor: nil, ratioBasis: .latency,
                    note: index == 0 ? "new connection + PING + close" : "with the TLS handshake (full, no session resumption)"
                ))
            }
        }

        // 7: acquires that wait for a replica's acknowledgement, against plain acquires on the same
        // nodes with a replica each (started now: they would load every earlier phase's writes).
        if let servers {
            try Task.checkCancellation()
            progress("Measuring acquires with a replica per node, with and without replicaAcknowledgements 1…")
            rows += try await measureReplicated(connections, servers: servers, prefix: prefix)
        }

        rows = ordered(rows)
        let machine = BenchMachine.current(redisServer: redisVersion, nodes: description, duration: duration, loadAverage: loadAverage)
        say(json ? BenchReport.json(rows: rows, machine: machine) : BenchReport.text(rows: rows, machine: machine, nodeCount: count))
    }

    /// The `replicated` acquire rows: a replica per node (started here, stopped afterwards), and
    /// an uncontended acquire on all the nodes with and without ``LockOptions/replicaAcknowledgements``
    /// 1, interleaved.
    private func measureReplicated(_ connections: [RedisConnection], servers: [RedisServer], prefix: String) async throws -> [BenchRow] {
        var replicas: [RedisServer] = []
        return try await withTeardown {
            for server in servers { replicas.append(try await server.startReplica()) }
            let count = connections.count
            let results = try await withClient(connections) { client in
                let workloads = [
                    [try BenchWorkloads.acquire(client: client, name: "\(prefix):acquire-replicated-base:\(count)")],
                    [try BenchWorkloads.acquire(
                        client: client, name: "\(prefix):acquire-replicated:\(count)", options: LockOptions(replicaAcknowledgements: 1)
                    )],
                ]
                return try await watchdog("replicated acquires", expected: duration * 2) {
                    try await BenchRunner.interleave(workloads, each: duration)
                }
            }
            try check(results, "replicated acquires")
            let base = results[0].microseconds(atPercentile: 50)
            let acknowledged = results[1].microseconds(atPercentile: 50)
            return [
                BenchRow(
                    scenario: "acquire", variant: "replicated-base", nodes: count, concurrency: 1, measurement: results[0],
                    ratioToFloor: nil, ratioBasis: .latency, note: "a replica per node, no wait; interleaved with the replicated row"
                ),
                BenchRow(
                    scenario: "acquire", variant: "replicated", nodes: count, concurrency: 1, measurement: results[1],
                    ratioToFloor: nil, ratioBasis: .latency,
                    note: "replicaAcknowledgements 1: WAIT behind each acquire"
                        + (ratio(acknowledged, base).map { String(format: "; %.2f× replicated-base", $0) } ?? "")
                ),
            ]
        } teardown: {
            for replica in replicas { await replica.terminate() }
        }
    }

    /// Runs `body` with a client of its own over the nodes of `connections` whose loop polls
    /// busily for ``busyPoll``, connected first; with nil when ``busyPoll`` is zero.
    private func withPollingClient<T>(_ connections: [RedisConnection], _ body: (RedlockClient?) async throws -> T) async throws -> T {
        guard busyPoll > .zero else { return try await body(nil) }
        let client = try RedlockClient(nodes: connections.map(\.configuration), busyPoll: busyPoll)
        return try await withTeardown {
            for status in await client.checkNodes() { _ = try status.result.get() }
            return try await body(client)
        } teardown: {
            await client.shutdown()
        }
    }

    /// Runs `body` with a client over `connections` (which it does not own), then shuts the
    /// client down (its subscriber connections), also when `body` throws.
    private func withClient<T>(_ connections: [RedisConnection], _ body: (RedlockClient) async throws -> T) async throws -> T {
        let client = try RedlockClient(connections: connections)
        return try await withTeardown {
            try await body(client)
        } teardown: {
            await client.shutdown()
        }
    }

    /// Runs one phase in its own task and gives up on it — cancelled and abandoned — when it has
    /// not finished 30 s after it should have, so the bench ends by itself even if a lock call
    /// hangs. `expected` is the phase's measured time; warm-ups and slack are added here.
    private func watchdog<T: Sendable>(
        _ label: String,
        expected: Duration,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let limit = expected + .seconds(30)
        let work = Task { try await body() }
        // The first of: the phase's result, the watchdog's verdict, or the caller's cancellation
        // (which ends the iteration); later ones are dropped.
        let (outcomes, outcome) = AsyncStream.makeStream(of: Result<T, any Error>.self, bufferingPolicy: .bufferingOldest(1))
        let timer = Task {
            try await Task.sleep(for: limit)
            work.cancel()
            try await Task.sleep(for: .seconds(5))
            outcome.yield(.failure(BenchmarkError("\(label): did not finish within \(limit) (a lock call hung); abandoned")))
        }
        defer { timer.cancel() }
        Task { outcome.yield(await work.result) }
        return try await withTaskCancellationHandler {
            for await first in outcomes { return try first.get() }
            // Cancelled (a signal): the phase winds down first — its worker processes killed,
            // its files removed — before the caller stops the nodes and exits; one that hangs is
            // left after a grace of 5 s.
            await Self.awaitEnd(of: work, grace: .seconds(5))
            throw CancellationError()
        } onCancel: {
            work.cancel()
        }
    }

    /// Returns once `work` ended or `grace` passed, whichever is first, also in a cancelled task
    /// (the waiting happens in a task of its own, which the caller's cancellation does not reach).
    private static func awaitEnd<T: Sendable>(of work: Task<T, any Error>, grace: Duration) async {
        await Task {
            let (ended, end) = AsyncStream.makeStream(of: Void.self)
            let waiting = Task {
                _ = await work.result
                end.finish()
            }
            let timeout = Task {
                try? await Task.sleep(for: grace)
                end.finish()
            }
            for await _ in ended {}
            waiting.cancel()
            timeout.cancel()
        }.value
    }

    /// PINGs every node (connecting them) and returns the first node's redis_version.
    private func checkNodes(_ connections: [RedisConnection]) async throws -> String {
        var version = "unknown"
        for connection in connections { try await connection.ping() }
        if let first = connections.first, let reported = try? await first.serverVersion() { version = reported }
        return version
    }

    /// Fails the run when a scenario completed nothing; warns when some operations failed.
    private func check(_ results: [BenchMeasurement], _ label: String) throws {
        try Task.checkCancellation()
        for result in results {
            if result.operations == 0 {
                throw BenchmarkError("\(label): no operation completed; first error: \(result.firstError ?? "none")")
            }
            if result.errors > 0 {
                progress("warning: \(label): \(result.errors) operations failed; first: \(result.firstError ?? "?")")
            }
        }
    }

    private func ratio(_ value: Double?, _ floor: Double?) -> Double? {
        guard let value, let floor, floor > 0 else { return nil }
        return value / floor
    }

    /// Floors first, then the library rows, in the order of the scenarios.
    private func ordered(_ rows: [BenchRow]) -> [BenchRow] {
        let scenarios = ["floor", "cycle", "acquire", "parallel", "contended", "cross-process", "missed-release", "stopped-node"]
        return rows.enumerated().sorted { left, right in
            let l = (scenarios.firstIndex(of: left.element.scenario) ?? 99, left.element.concurrency, left.element.nodes, left.offset)
            let r = (scenarios.firstIndex(of: right.element.scenario) ?? 99, right.element.concurrency, right.element.nodes, right.offset)
            return l < r
        }.map(\.element)
    }

    private func progress(_ line: String) {
        printError(line)
    }
}

/// Turns the first SIGINT, SIGTERM or SIGHUP (a closed terminal) into cancellation of the bench (which then stops its nodes);
/// a second one exits at once, and the nodes are killed by the test support's exit handler.
final class BenchInterrupts: Sendable {
    private let handlers: SignalHandlers
    /// The first signal, once one came.
    private let first: FirstSignal

    /// The first of the signals that came (0 until one did).
    private final class FirstSignal: Sendable {
        let number = Atomic<Int32>(0)
    }

    init(_ cancel: @escaping @Sendable () -> Void) {
        let first = FirstSignal()
        handlers = SignalHandlers([SIGINT, SIGTERM, SIGHUP]) { signal in
            if first.number.compareExchange(expected: 0, desired: signal, ordering: .acquiringAndReleasing).exchanged {
                printError("Interrupted: stopping the nodes…")
                cancel()
            } else {
                exit(128 + signal)
            }
        }
        self.first = first
    }

    /// The signal that interrupted the bench, if one did.
    var signal: Int32? {
        let number = first.number.load(ordering: .acquiring)
        return number == 0 ? nil : number
    }

    /// Restores the default signal handling.
    func stop() {
        handlers.stop()
    }
}
