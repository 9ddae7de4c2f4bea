import Foundation

/// One line of the bench's table and of its JSON `rows`.
struct BenchRow: Sendable {
    /// `floor`, `cycle`, `parallel`, `contended` or `stopped-node`.
    var scenario: String
    /// `default` (every LockOptions default and the scenario as named), `no-pubsub` (fast handoff
    /// off: no release subscription, waiters wait out the retry delay), or `baseline` for the
    /// stopped-node row measured with all nodes up, interleaved with the stopped slices.
    var variant: String = "default"
    var nodes: Int
    var concurrency: Int
    var measurement: BenchMeasurement
    /// The row's ratio to the floor of the same run (see ``BenchRatio``), nil when there is none.
    var ratioToFloor: Double?
    var ratioBasis: BenchRatio
    /// The row's p50 over the raw C floor's p50 on the same nodes, in the same run (>1: slower).
    var ratioToRawFloor: Double? = nil
    /// A short remark for the text table.
    var note: String = ""

    var p50: Double? { measurement.microseconds(atPercentile: 50) }
    var p99: Double? { measurement.microseconds(atPercentile: 99) }
    var p999: Double? { measurement.microseconds(atPercentile: 99.9) }
    var operationsPerSecond: Double? { measurement.operationsPerSecond }
}

/// What a row's `ratio_to_floor` compares.
enum BenchRatio: Sendable {
    /// The row's p50 over the p50 of the sequential floor on the same nodes (>1: slower).
    case latency
    /// The row's operations per second over those of the floor at the same concurrency (<1: fewer).
    case throughput

    var label: String {
        switch self {
        case .latency: "p50 / floor p50"
        case .throughput: "ops/s / floor ops/s"
        }
    }
}

/// Where the numbers were measured.
struct BenchMachine: Sendable {
    var cpu: String
    var cores: Int
    var memoryGiB: Double
    var os: String
    var kernel: String
    var swift: String
    var build: String
    var redisServer: String
    var nodes: String
    var durationSeconds: Double
    /// The 1-minute load average when the bench started: other work on the machine skews the
    /// numbers (both the floor and the library, which is why they run interleaved).
    var loadAverage: Double?

    /// Reads the machine's description from /proc and the build settings.
    static func current(redisServer: String, nodes: String, duration: Duration, loadAverage: Double?) -> BenchMachine {
        let cpuInfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let cpu = cpuInfo.split(separator: "\n")
            .first { $0.hasPrefix("model name") }
            .flatMap { $0.split(separator: ":", maxSplits: 1).last }
            .map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown"
        let osRelease = (try? String(contentsOfFile: "/etc/os-release", encoding: .utf8)) ?? ""
        let os = osRelease.split(separator: "\n")
            .first { $0.hasPrefix("PRETTY_NAME=") }
            .map { String($0.dropFirst("PRETTY_NAME=".count)).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) } ?? "unknown"
        let kernel = ((try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8)) ?? "unknown")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #if DEBUG
        let build = "debug"
        #else
        let build = "release"
        #endif
        return BenchMachine(
            cpu: cpu,
            cores: ProcessInfo.processInfo.activeProcessorCount,
            memoryGiB: (Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824 * 10).rounded() / 10,
            os: os,
            kernel: kernel,
            swift: compilerVersion,
            build: build,
            redisServer: redisServer,
            nodes: nodes,
            durationSeconds: duration.seconds,
            loadAverage: loadAverage
        )
    }

    /// The 1-minute load average from /proc/loadavg.
    static func loadAverageNow() -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return nil }
        return text.split(separator: " ").first.flatMap { Double($0) }
    }

    private static var compilerVersion: String {
        #if compiler(>=6.4)
        return ">= 6.4"
        #elseif compiler(>=6.3)
        return "6.3"
        #elseif compiler(>=6.2)
        return "6.2"
        #else
        return "< 6.2"
        #endif
    }
}

/// The targets a run is judged by.
struct BenchTargets: Sendable {
    var overhead: (ratio: Double, cycle: Double, floor: Double)?
    var stoppedNode: (ratio: Double, stopped: Double, healthy: Double)?
    /// 64 tasks' cycles per second with one node stopped, against all nodes up in the same slices.
    var stoppedNodeParallel: (ratio: Double, stopped: Double, healthy: Double, tasks: Int)?
    var parallel: (ratio: Double, cycles: Double, floor: Double)?
    /// The contended median handoff against the uncontended acquire, and the row's variant.
    var handoff: (ratio: Double, handoff: Double, acquire: Double, variant: String)?
    /// Contended acquisitions per second with fast handoff against the no-pubsub variant, and the
    /// fast row's variant.
    var handoffRate: (ratio: Double, fast: Double, polling: Double, variant: String)?
    /// The overhead and parallel ratios of the `no-pubsub` variant (fast handoff off).
    var pollingOverhead: Double?
    var pollingParallel: Double?

    /// Per node count: the default cycle's p50, the raw C floor's p50 and, when measured, the
    /// p50 of the other cycle variants (``rawFloorVariants``), in microseconds.
    var rawFloor: [(nodes: Int, cycle: Double, raw: Double, variants: [(label: String, p50: Double)])] = []

    /// The cycle variants also judged against the raw C floor, with their labels.
    static let rawFloorVariants = [
        ("executor", "on client.executor"),
        ("busy-poll", "with busyPoll"),
        ("executor-busy-poll", "on client.executor with busyPoll"),
    ]

    /// The handoff and rate ratios of the contended rows the targets are not judged on.
    var otherContendedRatios: [String] = []

    /// Each `cross-process` row: with a hold (a variant ending in `-hold…`), its median handoff
    /// against the uncontended acquire (target ≤ 3); at hold 0, its handoffs per second (target
    /// ≥ 1,500).
    var crossProcess: [(variant: String, median: Double, ratio: Double?, rate: Double?)] = []
    /// Each `missed-release` row: its p50 against the uncontended acquire (target ≤ 2) and, for
    /// a fair variant, against the fair lock's own uncontended acquire (row `acquire`/`fair`).
    var missedRelease: [(variant: String, p50: Double, ratio: Double, ratioToFairAcquire: Double?)] = []

    init(rows: [BenchRow], nodeCount: Int) {
        func row(_ scenario: String, nodes: Int, concurrency: Int = 1, variant: String = "default") -> BenchRow? {
            rows.first { $0.scenario == scenario && $0.variant == variant && $0.nodes == nodes && $0.concurrency == concurrency }
        }
        if let cycle = row("cycle", nodes: nodeCount)?.p50, let floor = row("floor", nodes: nodeCount)?.p50, floor > 0 {
            overhead = (cycle / floor, cycle, floor)
        }
        for raw in rows where raw.scenario == "raw-floor" {
            if let rawP50 = raw.p50, rawP50 > 0, let cycle = row("cycle", nodes: raw.nodes)?.p50 {
                let variants = Self.rawFloorVariants.compactMap { variant, label in
                    row("cycle", nodes: raw.nodes, variant: variant)?.p50.map { (label, $0) }
                }
                rawFloor.append((raw.nodes, cycle, rawP50, variants))
            }
        }
        if let stopped = row("stopped-node", nodes: nodeCount)?.p99,
           let healthy = row("stopped-node", nodes: nodeCount, variant: "baseline")?.p99, healthy > 0
        {
            stoppedNode = (stopped / healthy, stopped, healthy)
        }
        if let stopped = rows.first(where: { $0.scenario == "stopped-node" && $0.variant == "default" && $0.concurrency > 1 }),
           let healthy = row("stopped-node", nodes: stopped.nodes, concurrency: stopped.concurrency, variant: "baseline"),
           let stoppedRate = stopped.operationsPerSecond, let healthyRate = healthy.operationsPerSecond, healthyRate > 0
        {
            stoppedNodeParallel = (stoppedRate / healthyRate, stoppedRate, healthyRate, stopped.concurrency)
        }
        if let cycle = row("cycle", nodes: nodeCount, variant: "no-pubsub")?.p50, let floor = row("floor", nodes: nodeCount)?.p50, floor > 0 {
            pollingOverhead = cycle / floor
        }
        if let polling = rows.first(where: { $0.scenario == "parallel" && $0.variant == "no-pubsub" }) {
            pollingParallel = polling.ratioToFloor
        }
        // Handoff latency where every acquisition is a handoff to a waiting task (a hold > 0,
        // variant `default-hold…`), else at hold 0; the rate where the hold does not dilute it
        // (hold 0, variants `default` and `no-pubsub`), else at the first hold measured.
        let fastRows = rows.filter { $0.scenario == "contended" && $0.variant.hasPrefix("default") }
        if let contended = fastRows.first(where: { $0.variant != "default" }) ?? fastRows.first,
           let handoff = contended.p50, let acquire = row("acquire", nodes: contended.nodes)?.p50, acquire > 0
        {
            self.handoff = (handoff / acquire, handoff, acquire, contended.variant)
        }
        if let fast = fastRows.first(where: { $0.variant == "default" }) ?? fastRows.first,
           let fastRate = fast.operationsPerSecond,
           let polling = row("contended", nodes: fast.nodes, concurrency: fast.concurrency, variant: "no-pubsub" + fast.variant.dropFirst("default".count))?.operationsPerSecond,
           polling > 0
        {
            handoffRate = (fastRate / polling, fastRate, polling, fast.variant)
        }
        let acquire = row("acquire", nodes: nodeCount)?.p50
        for fast in fastRows where fast.variant != handoff?.variant || fast.variant != handoffRate?.variant {
            let polling = row("contended", nodes: fast.nodes, concurrency: fast.concurrency, variant: "no-pubsub" + fast.variant.dropFirst("default".count))
            var parts: [String] = []
            if fast.variant != handoff?.variant, let median = fast.p50, let acquire, acquire > 0 {
                parts.append(String(format: "median handoff %.0f µs = %.2f × acquire", median, median / acquire))
            }
            if fast.variant != handoffRate?.variant, let rate = fast.operationsPerSecond, let slow = polling?.operationsPerSecond, slow > 0 {
                parts.append(String(format: "rate %.0f/s = %.1f × no-pubsub", rate, rate / slow))
            }
            if !parts.isEmpty { otherContendedRatios.append("contended \(fast.variant): " + parts.joined(separator: "; ")) }
        }
        let fairAcquire = row("acquire", nodes: nodeCount, variant: "fair")?.p50
        for cross in rows where cross.scenario == "cross-process" {
            guard let median = cross.p50 else { continue }
            if cross.variant.contains("-hold") {
                crossProcess.append((cross.variant, median, acquire.flatMap { $0 > 0 ? median / $0 : nil }, nil))
            } else {
                crossProcess.append((cross.variant, median, nil, cross.operationsPerSecond))
            }
        }
        for missed in rows where missed.scenario == "missed-release" {
            guard let p50 = missed.p50, let acquire, acquire > 0 else { continue }
            let fair = missed.variant.hasPrefix("fair") ? fairAcquire.flatMap { $0 > 0 ? p50 / $0 : nil } : nil
            missedRelease.append((missed.variant, p50, p50 / acquire, fair))
        }
        if let parallel = rows.first(where: { $0.scenario == "parallel" && $0.variant == "default" }),
           let cycles = parallel.operationsPerSecond,
           let floor = row("floor", nodes: parallel.nodes, concurrency: parallel.concurrency)?.operationsPerSecond, floor > 0
        {
            self.parallel = (cycles / floor, cycles, floor)
        }
    }
}

enum BenchReport {
    /// The human-readable table, the targets and the machine.
    static func text(rows: [BenchRow], machine: BenchMachine, nodeCount: Int) -> String {
        var lines: [String] = []
        let header = ["scenario", "variant", "nodes", "conc", "p50", "p99", "p99.9", "ops/s", "ratio", "ratio of", "÷ C floor", "note"]
        var table: [[String]] = [header]
        for row in rows {
            table.append([
                row.scenario,
                row.variant,
                "\(row.nodes)",
                "\(row.concurrency)",
                microseconds(row.p50),
                microseconds(row.p99),
                microseconds(row.p999),
                row.operationsPerSecond.map { String(format: "%.0f", $0) } ?? "–",
                row.ratioToFloor.map { String(format: "%.2f×", $0) } ?? "–",
                row.ratioBasis.label,
                row.ratioToRawFloor.map { String(format: "%.2f×", $0) } ?? "–",
                row.note,
            ])
        }
        let widths = header.indices.map { column in table.map { $0[column].count }.max() ?? 0 }
        for (index, cells) in table.enumerated() {
            let padded = cells.enumerated().map { column, cell in
                let padding = String(repeating: " ", count: widths[column] - cell.count)
                return column <= 1 || column == 9 || column == 11 ? cell + padding : padding + cell
            }
            lines.append(padded.joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            if index == 0 { lines.append(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")) }
        }

        let targets = BenchTargets(rows: rows, nodeCount: nodeCount)
        lines.append("")
        lines.append("Targets (N = \(nodeCount)):")
        if let overhead = targets.overhead {
            lines.append(verdict(overhead.ratio <= 1.25, String(format: "library overhead: cycle p50 %@ = %.2f × floor p50 %@ (target ≤ 1.25)", microseconds(overhead.cycle), overhead.ratio, microseconds(overhead.floor))))
        }
        for (nodes, cycle, raw, variants) in targets.rawFloor {
            lines.append(verdict(cycle / raw <= 1.2, String(format: "against the raw C floor, N = %d: cycle p50 %@ = %.2f × raw C floor p50 %@ (target ≤ 1.2)", nodes, microseconds(cycle), cycle / raw, microseconds(raw))))
            for (label, p50) in variants {
                lines.append(verdict(p50 / raw <= 1.2, String(format: "against the raw C floor, N = %d, %@: cycle p50 %@ = %.2f × raw C floor p50 (target ≤ 1.2)", nodes, label, microseconds(p50), p50 / raw)))
            }
        }
        if let stopped = targets.stoppedNode {
            lines.append(verdict(stopped.ratio <= 1.5, String(format: "one node stopped: cycle p99 %@ = %.2f × all-up p99 %@ in the same slices (target ≤ 1.5)", microseconds(stopped.stopped), stopped.ratio, microseconds(stopped.healthy))))
        } else {
            lines.append("  –    one node stopped: not measured (needs ≥ 3 nodes the bench started itself)")
        }
        if let stopped = targets.stoppedNodeParallel {
            lines.append(verdict(stopped.ratio >= 0.75, String(format: "one node stopped, %d tasks: %.0f cycles/s = %.2f × all up %.0f/s in the same slices (target ≥ 0.75)", stopped.tasks, stopped.stopped, stopped.ratio, stopped.healthy)))
        }
        if let parallel = targets.parallel {
            lines.append(verdict(parallel.ratio >= 0.7, String(format: "64 tasks, independent names: %.0f cycles/s = %.2f × floor %.0f/s (target ≥ 0.7)", parallel.cycles, parallel.ratio, parallel.floor)))
        }
        if let handoff = targets.handoff {
            lines.append(verdict(handoff.ratio <= 3, String(format: "contended handoff (%@): median %@ = %.2f × uncontended acquire p50 %@ (target ≤ 3)", handoff.variant, microseconds(handoff.handoff), handoff.ratio, microseconds(handoff.acquire))))
        }
        if let rate = targets.handoffRate {
            lines.append(String(format: "  (info) contended rate (%@): %.0f acquisitions/s with fast handoff, %.0f/s with it off (in-process handoff only)", rate.variant, rate.fast, rate.polling))
        }

        for line in targets.otherContendedRatios {
            lines.append("  (info) \(line)")
        }
        for cross in targets.crossProcess {
            if let ratio = cross.ratio {
                lines.append(verdict(ratio <= 3, String(format: "cross-process handoff (%@): median %@ = %.2f × uncontended acquire (target ≤ 3)", cross.variant, microseconds(cross.median), ratio)))
            } else if let rate = cross.rate {
                lines.append(verdict(rate >= 1_500, String(format: "cross-process rate (%@): %.0f handoffs/s, median %@ (target ≥ 1500/s)", cross.variant, rate, microseconds(cross.median))))
            }
        }
        for missed in targets.missedRelease {
            let fair = missed.ratioToFairAcquire.map { String(format: "; %.2f × the fair lock's uncontended acquire", $0) } ?? ""
            lines.append(verdict(missed.ratio <= 2, String(format: "missed release (%@): p50 %@ = %.2f × uncontended acquire%@ (target ≤ 2)", missed.variant, microseconds(missed.p50), missed.ratio, fair)))
        }
        if targets.pollingOverhead != nil || targets.pollingParallel != nil {
            let overhead = targets.pollingOverhead.map { String(format: "cycle p50 %.2f × floor", $0) } ?? "–"
            let parallel = targets.pollingParallel.map { String(format: "parallel %.2f × floor", $0) } ?? "–"
            lines.append("  (info) with fastHandoff off (variant no-pubsub): \(overhead), \(parallel)")
        }
        lines.append("")
        lines.append("Machine: \(machine.cpu), \(machine.cores) cores, \(String(format: "%.1f", machine.memoryGiB)) GiB; \(machine.os), kernel \(machine.kernel)")
        lines.append("Build: Swift \(machine.swift), \(machine.build); redis-server \(machine.redisServer); nodes: \(machine.nodes); \(String(format: "%.1f", machine.durationSeconds)) s per scenario; load average at start \(machine.loadAverage.map { String(format: "%.2f", $0) } ?? "unknown")")
        if machine.build != "release" {
            lines.append("warning: a debug build; measure with `swift build -c release`.")
        }
        return lines.joined(separator: "\n")
    }

    /// `{"machine": {...}, "rows": [...]}`, keys in a fixed order, times in microseconds.
    static func json(rows: [BenchRow], machine: BenchMachine) -> String {
        let machineFields: [(String, String)] = [
            ("cpu", string(machine.cpu)),
            ("cores", "\(machine.cores)"),
            ("memory_gib", number(machine.memoryGiB)),
            ("os", string(machine.os)),
            ("kernel", string(machine.kernel)),
            ("swift", string(machine.swift)),
            ("build", string(machine.build)),
            ("redis_server", string(machine.redisServer)),
            ("nodes", string(machine.nodes)),
            ("duration_s", number(machine.durationSeconds)),
            ("load_average_1m", number(machine.loadAverage, digits: 2)),
        ]
        let rowObjects = rows.map { row in
            object([
                ("scenario", string(row.scenario)),
                ("variant", string(row.variant)),
                ("nodes", "\(row.nodes)"),
                ("concurrency", "\(row.concurrency)"),
                ("p50_us", number(row.p50)),
                ("p99_us", number(row.p99)),
                ("p999_us", number(row.p999)),
                ("ops_per_s", number(row.operationsPerSecond)),
                ("ratio_to_floor", number(row.ratioToFloor, digits: 3)),
                ("ratio_to_raw_floor", number(row.ratioToRawFloor, digits: 3)),
            ])
        }
        return "{\"machine\": \(object(machineFields)), \"rows\": [\(rowObjects.joined(separator: ", "))]}"
    }

    private static func verdict(_ met: Bool, _ text: String) -> String {
        (met ? "  met    " : "  MISSED ") + text
    }

    private static func microseconds(_ value: Double?) -> String {
        guard let value else { return "–" }
        if value < 1_000 { return String(format: "%.0f µs", value) }
        if value < 1_000_000 { return String(format: "%.2f ms", value / 1_000) }
        return String(format: "%.2f s", value / 1_000_000)
    }

    private static func object(_ fields: [(String, String)]) -> String {
        "{" + fields.map { "\(string($0.0)): \($0.1)" }.joined(separator: ", ") + "}"
    }

    private static func number(_ value: Double?, digits: Int = 1) -> String {
        guard let value, value.isFinite else { return "null" }
        return String(format: "%.\(digits)f", value)
    }

    private static func string(_ text: String) -> String {
        var escaped = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": escaped += "\\\""
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            case "\t": escaped += "\\t"
            case _ where scalar.value < 0x20: escaped += String(format: "\\u%04x", scalar.value)
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped + "\""
    }
}
