import Foundation
import Redlock
import RedlockTestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Contention between processes, the way replicas contend: ``processes`` `redlock-worker
/// contend` processes, one `lock()` loop each, on one name, every lock with the retry delay of
/// the defaults (50–250 ms) and fast handoff on; variant `fair` with ``LockOptions/fair``,
/// variants `…-executor` with each worker's loop on its client's executor. Each worker logs its critical sections on
/// `CLOCK_BOOTTIME` (see `redlock-worker contend`); after the run the log is read in order of
/// acquisition.
///
/// A *handoff* is an acquisition whose previous holder was another process; its latency runs
/// from the moment that holder began its `unlock` to the moment this holder's `lock()` returned.
/// The measurement's operations are the handoffs; ``Result/acquisitions`` counts every
/// acquisition (a releaser that takes the lock straight back is one, not a handoff). Records
/// from the first ``warmUp`` are left out, so that every worker is past its first attempts.
enum CrossProcessContention {
    /// Worker processes per run.
    static let processes = 4
    static let warmUp: Duration = .milliseconds(300)

    struct Result {
        /// The handoffs' latencies, over the measured time.
        var handoffs: BenchMeasurement
        var acquisitions: Int
        /// Critical sections that overlapped (a next acquisition before the previous holder
        /// began its release); always 0 unless exclusion is broken.
        var overlaps: Int
    }

    /// The worker program: `redlock-worker`, next to this executable.
    static var worker: String? { HelperProcess.siblingExecutable(named: "redlock-worker") }

    /// Runs ``processes`` workers on `nodes` (a worker `--nodes` list) for `duration` after the
    /// warm-up, each holding the lock for `hold` (whole milliseconds), with a fair lock when
    /// `fair` (``LockOptions/fair``), each worker's loop on its client's executor when
    /// `onExecutor` (``RedlockClient/executor``).
    static func measure(
        worker: String, nodes: String, name: String, hold: Duration, fair: Bool, onExecutor: Bool, duration: Duration
    ) async throws -> Result {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swift-redlock-bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("sections.log").path
        let holdMilliseconds = String(hold.nanosecondCount / 1_000_000)
        let seconds = Int((duration + warmUp).seconds.rounded(.up)) + 30
        let arguments = [
            "contend", "--nodes", nodes, "--lock", name, "--log", log,
            "--hold-min-ms", holdMilliseconds, "--hold-max-ms", holdMilliseconds, "--extend-every", "0",
            "--retry-min-ms", "50", "--retry-max-ms", "250",
            "--parent-pid", String(getpid()), "--max-seconds", String(seconds),
        ] + (fair ? ["--fair"] : []) + (onExecutor ? ["--executor"] : [])
        var workers: [HelperProcess] = []
        do {
            for _ in 0..<processes {
                workers.append(try await HelperProcess.start(executable: worker, arguments: arguments, readyMarker: "ready pid="))
            }
            let from = MachineClock.nowNanoseconds() + warmUp.nanosecondCount
            try await Task.sleep(for: warmUp + duration)
            let until = MachineClock.nowNanoseconds()
            for worker in workers { worker.signal(SIGTERM) }
            for worker in workers { _ = await worker.waitUntilExited() }
            return try read(log, from: from, until: until)
        } catch {
            for worker in workers { await worker.kill() }
            throw error
        }
    }

    /// The handoffs among the sections in `log` acquired in `from..<until` (nanoseconds).
    private static func read(_ log: String, from: Int64, until: Int64) throws -> Result {
        struct Section {
            let pid: Int
            let acquired: Int64
            let released: Int64
        }
        let text = try String(contentsOfFile: log, encoding: .utf8)
        var sections: [Section] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let fields = line.split(separator: " ")
            guard fields.count >= 3, let pid = Int(fields[0]), let acquired = Int64(fields[1]), let released = Int64(fields[2]) else { continue }
            sections.append(Section(pid: pid, acquired: acquired, released: released))
        }
        sections.sort { $0.acquired < $1.acquired }
        var result = Result(handoffs: BenchMeasurement(), acquisitions: 0, overlaps: 0)
        for (previous, section) in zip(sections, sections.dropFirst()) where section.acquired >= from && section.acquired < until {
            result.acquisitions += 1
            if section.acquired < previous.released { result.overlaps += 1 }
            if section.pid != previous.pid { result.handoffs.record(.nanoseconds(section.acquired - previous.released)) }
        }
        result.handoffs.elapsed = .nanoseconds(until - from)
        return result
    }
}
