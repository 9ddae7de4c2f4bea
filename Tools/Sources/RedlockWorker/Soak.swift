import ArgumentParser
import Foundation
import Redlock
import RedlockTestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `redlock-worker soak`: a long exclusion check under a mixed nemesis, outside the test run.
///
/// Starts its own nodes (append-only, fsync always, each behind a ``FaultProxy`` and, when the
/// clock shim is built, with a clock it can set), runs `--processes` `contend` workers through the
/// proxies on one lock with fencing and both guards, and injects faults into a minority of nodes
/// until the workers have logged `--acquisitions` critical sections: process faults (kill, pause,
/// stall, restart), network faults (latency, a stalled link, resets), clock faults (a step
/// forward, a clock running 3× fast) and data faults (`FLUSHALL`, a restart without data). Then
/// checks every critical section on CLOCK_BOOTTIME: overlaps and fencing-token regressions.
///
/// Prints a Markdown report (and writes it to `--report`); exits 0 when the target was reached
/// with no overlap and no regression, else 1.
struct Soak: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check exclusion across worker processes for a long run under process, network, clock and data faults."
    )

    @Option(help: "Stop once the workers logged this many acquisitions.")
    var acquisitions: Int = 100_000

    @Option(help: "Worker processes contending for the lock.")
    var processes: Int = 4

    @Option(help: "Redis nodes.")
    var nodes: Int = 5

    @Option(name: .customLong("max-minutes"), help: "Give up after this many minutes.")
    var maximumMinutes: Int = 30

    @Option(help: "Also write the report to this file.")
    var report: String?

    @Option(help: "Comma-separated fault kinds to inject (default: every kind).")
    var faults: String?

    @Flag(name: .customLong("no-guards"), help: "Run the workers without the epoch and clock guards (the data and clock faults then break exclusion).")
    var noGuards = false

    @Flag(help: "Run the workers with a fair lock (no guards: only process and network faults).")
    var fair = false

    @Flag(name: .customLong("no-fencing"), help: "Run the workers without fencing tokens (a fair lock's waiters then take handoffs as grants).")
    var noFencing = false

    func validate() throws {
        guard acquisitions > 0, processes >= 2, nodes >= 3, maximumMinutes > 0 else {
            throw ValidationError("need acquisitions > 0, at least 2 processes and 3 nodes, and a positive time limit")
        }
        _ = try chosenFaults()
    }

    func run() async throws {
        TerminationCleanup.install()
        guard let worker = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else {
            throw ValidationError("cannot find this program's own path (/proc/self/exe)")
        }
        let shim = HelperProcess.siblingExecutable(named: "libRedlockClockShim.so")
        if shim == nil { say("libRedlockClockShim.so is not next to redlock-worker: no clock faults (swift build --package-path Tools)") }
        let servers = try await RedisServer.start(count: nodes, persistence: .appendOnlyFsyncAlways, clockShim: shim)
        var proxies: [FaultProxy] = []
        // Not in a server's directory: a restart without data wipes that.
        let directory = FileManager.default.temporaryDirectory.path + "/swift-redlock-soak-\(getpid())"
        let outcome: Bool
        do {
            for server in servers { proxies.append(try FaultProxy.start(to: server.endpoint)) }
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            outcome = try await soak(worker: worker, servers: servers, proxies: proxies, shim: shim != nil, directory: directory)
        } catch {
            for proxy in proxies { proxy.stop() }
            for server in servers { await server.terminate() }
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        for proxy in proxies { proxy.stop() }
        for server in servers { await server.terminate() }
        // A failed run keeps the workers' logs for a look.
        guard outcome else {
            say("soak: the workers' logs are in \(directory)")
            throw ExitCode(1)
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Runs the workers under the nemesis and checks their logs; returns whether the run passed.
    private func soak(worker: String, servers: [RedisServer], proxies: [FaultProxy], shim: Bool, directory: String) async throws -> Bool {
        let expiryMilliseconds = 1_000
        let fencingArguments = noFencing ? [] : ["--fencing"]
        let logs = (0..<processes).map { "\(directory)/worker-\($0).log" }
        var workers: [HelperProcess] = []
        let started = ContinuousClock.now
        defer { for worker in workers where !worker.hasExited { worker.signal(SIGKILL) } }
        for log in logs {
            workers.append(try await HelperProcess.start(
                executable: worker,
                arguments: [
                    "contend", "--nodes", proxies.map { "127.0.0.1:\($0.port)" }.joined(separator: ","), "--lock", "soak",
                    "--log", log, "--expiry-ms", String(expiryMilliseconds), "--timeout-factor", "0.2",
                    "--connect-timeout-ms", "100", "--command-timeout-ms", "300",
                    "--hold-max-ms", "2", "--retry-min-ms", "2", "--retry-max-ms", "20", "--extend-every", "4",
                    "--parent-pid", String(getpid()), "--max-seconds", String(maximumMinutes * 60 + 60),
                ] + fencingArguments + (noGuards || fair ? [] : ["--epoch-guard-ms", String(expiryMilliseconds), "--clock-guard"]) + (fair ? ["--fair"] : []),
                readyMarker: "ready pid="
            ))
        }
        let faults = try chosenFaults().filter { shim || !$0.needsClockShim }
        let nemesis = Nemesis(servers: servers, proxies: proxies, maximumFaulty: (servers.count - 1) / 2, faults: faults)
        var records: [FaultRecord] = []
        var nemesisErrors: [String] = []
        var logged = 0
        let deadline = started + .seconds(maximumMinutes * 60)
        while logged < acquisitions, ContinuousClock.now < deadline {
            // A fault that could not be inflicted or healed is reported, not the end of the run.
            do {
                records += try await nemesis.run(for: .seconds(5))
            } catch {
                nemesisErrors.append("\(error)")
                say("soak: nemesis error: \(error)")
            }
            logged = try read(logs).count
            let elapsed = started.duration(to: .now)
            say("soak: \(logged) acquisitions, \(records.count) faults, \(elapsed.components.seconds) s")
        }
        for worker in workers { worker.signal(SIGTERM) }
        var summaries: [String] = []
        for worker in workers {
            _ = await worker.waitUntilExited()
            summaries.append(
                worker.output.split(separator: "\n").last { $0.contains("done acquisitions=") }.map(String.init)
                    ?? "its summary line is not in the last 32 KiB of its output"
            )
        }
        let acquisitions = try read(logs)
        let overlaps = ExclusionChecker.overlaps(in: acquisitions)
        let regressions = ExclusionChecker.fencingRegressions(in: acquisitions) ?? []
        let passed = acquisitions.count >= self.acquisitions && overlaps.isEmpty && regressions.isEmpty
        let text = reportText(
            acquisitions: acquisitions, records: records, overlaps: overlaps, regressions: regressions,
            summaries: summaries, duration: started.duration(to: .now), shim: shim, passed: passed,
            nemesisErrors: nemesisErrors
        )
        print(text)
        if let report { try text.write(toFile: report, atomically: true, encoding: .utf8) }
        return passed
    }

    /// The fault kinds `--faults` names, or every kind.
    /// The faults a fair lock (which runs without the guards) is expected to withstand.
    private static let faultsWithoutGuards: [NodeFault] = NodeFault.processFaults + [.networkDelay, .networkStall, .networkReset, .networkPathBreak]

    private func chosenFaults() throws -> [NodeFault] {
        guard let faults else { return fair ? Self.faultsWithoutGuards : NodeFault.allCases }
        let chosen = try faults.split(separator: ",").map { name in
            guard let fault = NodeFault(rawValue: String(name)) else {
                throw ValidationError("unknown fault \"\(name)\"; known: \(NodeFault.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return fault
        }
        if fair, let guarded = chosen.first(where: { !Self.faultsWithoutGuards.contains($0) }) {
            throw ValidationError("a fair lock runs without the guards: \(guarded.rawValue) would break exclusion; choose among \(Self.faultsWithoutGuards.map(\.rawValue).joined(separator: ", "))")
        }
        return chosen
    }

    private func read(_ logs: [String]) throws -> [Acquisition] {
        try logs.flatMap { try Acquisition.parse(log: (try? String(contentsOfFile: $0, encoding: .utf8)) ?? "") }
    }

    private func reportText(
        acquisitions: [Acquisition], records: [FaultRecord], overlaps: [(Acquisition, Acquisition)], regressions: [Acquisition],
        summaries: [String], duration: Duration, shim: Bool, passed: Bool, nemesisErrors: [String]
    ) -> String {
        let kinds = Dictionary(grouping: records, by: \.fault).mapValues(\.count)
        let perProcess = Dictionary(grouping: acquisitions, by: \.process).mapValues(\.count).values.sorted()
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        var lines = [
            "| | |",
            "| --- | --- |",
            "| result | \(passed ? "passed" : "FAILED") |",
            "| guards | \(noGuards || fair ? "off" : "epochGuard 1 s, clockGuard")\(fair ? "; a fair lock" : "") |",
            "| nodes, processes | \(nodes) nodes (append-only, fsync always, each behind a fault proxy), \(processes) worker processes, one lock, \(noFencing ? "no fencing" : "fencing"), expiry 1 s |",
            "| acquisitions | \(acquisitions.count) (per process \(perProcess.map(String.init).joined(separator: ", "))), \(String(format: "%.0f", Double(acquisitions.count) / max(seconds, 1)))/s |",
            "| empty (lease ran out before use) | \(acquisitions.filter(\.isEmpty).count) |",
            "| faults | \(records.count), at most \((nodes - 1) / 2) nodes at once: "
                + ((try? chosenFaults()) ?? NodeFault.allCases).map { "\($0) \(kinds[$0, default: 0])" }.joined(separator: ", ")
                + (shim ? "" : " (no clock shim: no clock faults)") + " |",
            "| overlapping critical sections | \(overlaps.count) |",
            "| fencing-token regressions | \(noFencing ? "not logged (no fencing)" : String(regressions.count)) |",
            "| duration | \(String(format: "%.0f", seconds)) s |",
            "| nemesis errors (a fault not inflicted or healed) | \(nemesisErrors.count)"
                + (nemesisErrors.first.map { ", first: \($0.replacingOccurrences(of: "|", with: "/").prefix(200))" } ?? "") + " |",
        ]
        for summary in summaries { lines.append("| worker | \(summary.replacingOccurrences(of: "|", with: "/")) |") }
        for (first, second) in overlaps.prefix(5) { lines.append("| overlap | \(first) and \(second) |") }
        return lines.joined(separator: "\n")
    }
}
