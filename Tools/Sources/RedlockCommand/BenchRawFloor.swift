import Dispatch
import Foundation
import Redlock
import Synchronization

/// Something `BenchRunner.interleave` can run for one slice: the library's operations, or the
/// raw C floor as a process of its own.
struct BenchWorkload: Sendable {
    let run: @Sendable (Duration) async -> BenchMeasurement

    /// Operations looped by one task each (see ``BenchRunner/run(_:for:)``).
    static func operations(_ operations: [BenchOperation]) -> BenchWorkload {
        BenchWorkload { await BenchRunner.run(operations, for: $0) }
    }

    /// Operations looped by one task each, all preferring `executor` (a client's
    /// ``RedlockClient/executor``): they run on its I/O thread.
    static func operations(_ operations: [BenchOperation], on executor: any TaskExecutor) -> BenchWorkload {
        BenchWorkload { duration in
            await withTaskExecutorPreference(executor) { await BenchRunner.run(operations, for: duration) }
        }
    }
}

/// The physical floor of a lock+unlock cycle on this machine: `redlock-raw-floor`
/// (Tools/Sources/RedlockRawFloor/raw_floor.c), one C thread on blocking hiredis connections, `SET NX PX`
/// to all nodes pipelined, then the compare-and-delete to all nodes, no Swift at all.
///
/// Each slice runs the program for the slice's duration; its per-cycle latencies (nanoseconds,
/// one per line) become the slice's measurement, and the slice's wall time is the sum of them
/// (cycles run back to back), so its start-up is not counted.
enum RawFloorProcess {
    /// The program's path: next to this executable (SwiftPM builds both into one directory).
    static var executable: String? {
        let own = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let candidate = own.deletingLastPathComponent().appendingPathComponent("redlock-raw-floor").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }

    /// The node list the program takes, or nil when a node needs what it does not do (TLS,
    /// `AUTH`, `SELECT`).
    static func nodeList(_ connections: [RedisConnection]) -> String? {
        var entries: [String] = []
        for connection in connections {
            let configuration = connection.configuration
            guard configuration.tls == nil, configuration.password == nil, (configuration.database ?? 0) == 0 else { return nil }
            let endpoint = configuration.endpoint
            if let path = endpoint.socketPath {
                entries.append("unix:" + path)
            } else if let host = endpoint.host, let port = endpoint.port {
                entries.append(host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)")
            }
        }
        return entries.joined(separator: ",")
    }

    /// A workload that runs the program on `nodes` (from ``nodeList(_:)``) with the key `name`.
    static func workload(executable: String, nodes: String, name: String) -> BenchWorkload {
        BenchWorkload { duration in
            let milliseconds = max(1, duration.nanosecondCount / 1_000_000)
            let arguments = ["--nodes", nodes, "--name", name, "--duration-ms", String(milliseconds), "--warmup", "20"]
            var measurement = BenchMeasurement()
            switch await run(executable, arguments) {
            case let .success(output):
                var total = Duration.zero
                for line in output.split(separator: "\n") {
                    guard let nanoseconds = Int64(line) else { continue }
                    let latency = Duration.nanoseconds(nanoseconds)
                    measurement.record(latency)
                    total += latency
                }
                measurement.elapsed = total
            case let .failure(error):
                measurement.recordError(error)
                measurement.elapsed = duration
            }
            return measurement
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs the program on a thread of its own (its wait blocks) and returns its standard output.
    private static func run(_ executable: String, _ arguments: [String]) async -> Result<String, Failure> {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: executable)
                process.arguments = arguments
                process.standardInput = FileHandle.nullDevice
                let output = Pipe()
                let errors = Pipe()
                process.standardOutput = output
                process.standardError = errors
                do {
                    try process.run()
                } catch {
                    continuation.resume(returning: .failure(Failure(description: "could not start \(executable): \(error)")))
                    return
                }
                // Read stderr on another thread so that neither pipe can fill up and stall it.
                let collected = ErrorText()
                let reader = Thread { collected.set(errors.fileHandleForReading.readDataToEndOfFile()) }
                reader.start()
                let data = output.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                let stderr = collected.wait()
                guard process.terminationStatus == 0 else {
                    let text = String(decoding: stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                    continuation.resume(returning: .failure(Failure(description: "redlock-raw-floor exited \(process.terminationStatus): \(text)")))
                    return
                }
                continuation.resume(returning: .success(String(decoding: data, as: UTF8.self)))
            }
            thread.start()
        }
    }

    /// The standard error of the program, handed from its reader thread.
    private final class ErrorText: Sendable {
        private let done = DispatchSemaphore(value: 0)
        private let text = Mutex<Data>(Data())

        func set(_ data: Data) {
            text.withLock { $0 = data }
            done.signal()
        }

        func wait() -> Data {
            done.wait()
            return text.withLock { $0 }
        }
    }
}
