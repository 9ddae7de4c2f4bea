// A fixed number of cycles for instruction counting under callgrind, where wall time means
// nothing: `CycleProfile WORKLOAD ITERATIONS PORT...` against redis-server nodes already
// listening on 127.0.0.1:PORT; WORKLOAD is a CycleWorkload name (floor, floor+tasks, …,
// cycle-plain, cycle). Run it twice with different ITERATIONS and divide the difference of the
// totals by the difference of the iterations: instructions per cycle, start-up and connects
// cancelled out. profile.sh does all of that.
//
// With TASKS=n in the environment, n tasks each run ITERATIONS cycles on names of their own, and
// the wall time and cycles per second of the measured part are printed (natively: a quick
// throughput probe for one workload against another). With EXECUTOR=1 the measured tasks prefer
// the client's executor (RedlockClient.executor): they run on its I/O thread. With TLS_CA=FILE the
// ports are TLS ports whose certificates chain to FILE.
//
// Two things valgrind 3.19 needs here: the main thread must not park in dispatch_main (as it does
// under an async `main`: valgrind then crashes when the first pool thread starts), so this main
// is synchronous and waits on a semaphore; and the binary's DWARF 5 debug info must be stripped.
import CycleWorkloads
import Dispatch
import Foundation
import Redlock
import RedlockTransport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

let arguments = Array(CommandLine.arguments.dropFirst())
let ports = arguments.dropFirst(2).compactMap { Int($0) }.filter { (1...65_535).contains($0) }
guard arguments.count >= 3, ports.count == arguments.count - 2,
      let workload = CycleWorkload(rawValue: arguments[0]),
      let iterations = Int(arguments[1]), (0...1_000_000).contains(iterations)
else {
    let names = CycleWorkload.allCases.map(\.rawValue).joined(separator: "|")
    print("usage: CycleProfile \(names) ITERATIONS PORT...  (nodes on 127.0.0.1)")
    exit(2)
}

/// Warms up (connects, loads the scripts, grows the buffers), then runs `iterations` cycles.
/// Returns an error message, or nil.
func profile(_ workload: CycleWorkload, iterations: Int, tasks: Int, ports: [Int], onExecutor: Bool) async -> String? {
    // With TLS_CA=FILE (a PEM the nodes' certificates chain to), the ports are TLS ports.
    let tls = ProcessInfo.processInfo.environment["TLS_CA"].map { RedisTLSConfiguration(trustedCertificatesFile: $0) }
    let connections = ports.map {
        RedisConnection(configuration: RedisConnectionConfiguration(
            endpoint: .hostname("127.0.0.1", port: $0), connectTimeout: .seconds(5), commandTimeout: .seconds(10), tls: tls
        ))
    }
    var failure: String?
    do {
        let client = try RedlockClient(connections: connections)
        do {
            // A long expiry: under valgrind an attempt runs ~50× slower than natively.
            let cycles = try (0..<tasks).map {
                try workload.make(nodes: connections, client: client, name: "profile:\(workload.rawValue):\($0)", expiry: .seconds(60))
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for cycle in cycles {
                    group.addTask { for _ in 0..<20 { try await cycle() } }
                }
                try await group.waitForAll()
            }
            let start = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for cycle in cycles {
                    group.addTask(executorPreference: onExecutor ? client.executor : nil) { for _ in 0..<iterations { try await cycle() } }
                }
                try await group.waitForAll()
            }
            let elapsed = start.duration(to: .now)
            do {
                let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                print("\(workload.rawValue): \(tasks) tasks × \(iterations) cycles in \(elapsed): \(Int(Double(tasks * iterations) / seconds)) cycles/s")
            }
        } catch {
            failure = "\(error)"
        }
        await client.shutdown()
    } catch {
        failure = "\(error)"
    }
    for connection in connections { await connection.shutdown() }
    return failure
}

final class Outcome: @unchecked Sendable {
    // Written once by the task before it signals, read by main only after the wait.
    var failure: String?
}

let outcome = Outcome()
let done = DispatchSemaphore(value: 0)
// Detached: top-level code runs on the main actor, whose thread waits on the semaphore below.
let tasks = max(1, min(1_000, Int(ProcessInfo.processInfo.environment["TASKS"] ?? "") ?? 1))
let onExecutor = ProcessInfo.processInfo.environment["EXECUTOR"] == "1"
Task.detached { [workload, iterations, tasks, ports, onExecutor, outcome, done] in
    outcome.failure = await profile(workload, iterations: iterations, tasks: tasks, ports: ports, onExecutor: onExecutor)
    done.signal()
}
done.wait()
if let failure = outcome.failure {
    print("failed: \(failure)")
    exit(1)
}
