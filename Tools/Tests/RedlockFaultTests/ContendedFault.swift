import Foundation
import Redlock
import RedlockTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What ``contendUnderFault(cluster:lock:arguments:rounds:stopAtFirstViolation:settle:warmUp:watched:inflict:)``
/// saw: every acquisition the workers logged, how many rounds ran, and when the last fault was
/// inflicted (CLOCK_BOOTTIME ns).
struct ContendedFaultRun {
    var acquisitions: [Acquisition]
    var rounds: Int
    var lastFaultAt: Int64

    var overlaps: [(Acquisition, Acquisition)] { ExclusionChecker.overlaps(in: acquisitions) }
    var regressions: [Acquisition] { ExclusionChecker.fencingRegressions(in: acquisitions) ?? [] }
    var afterLastFault: Int { acquisitions.filter { $0.acquired > lastFaultAt }.count }

    /// Whether the logs show what the guards exist to prevent: overlapping critical sections or a
    /// fencing token that went back.
    var violated: Bool { !overlaps.isEmpty || !regressions.isEmpty }

    /// Prints the run as `label` and checks it: with the guard on, no overlap, no token
    /// regression, every round run and the lock working after the last fault; with it off, an
    /// overlap or a token regression (the fault reproduced the hazard).
    func check(guardOn: Bool, rounds: Int, label: String) {
        print("""
            \(label) (guard \(guardOn ? "on" : "off")): \(self.rounds) rounds, \(acquisitions.count) acquisitions \
            (\(afterLastFault) after the last fault), overlaps \(overlaps.count), token regressions \(regressions.count)
            """)
        if guardOn {
            for (first, second) in overlaps.prefix(5) {
                Issue.record("overlapping critical sections: \(first) and \(second)")
            }
            #expect(overlaps.isEmpty)
            #expect(regressions.isEmpty, "fencing tokens went backwards: \(regressions.prefix(5))")
            #expect(afterLastFault > 0, "the lock did not recover after the last fault")
            #expect(self.rounds == rounds)
        } else {
            #expect(violated, "no overlap and no token regression in \(self.rounds) rounds: the fault did not reproduce the hazard")
        }
    }
}

/// Four `redlock-worker contend` processes on the lock `lock` (with `arguments` on top of the
/// nodes and the log); `rounds` times: waits for a holder (the key on node `watched`), `inflict`s the
/// fault under it, and waits `settle` for the lock to change hands. With `stopAtFirstViolation`,
/// stops at the first round after which the logs show overlapping critical sections or a fencing
/// token that went back (``ContendedFaultRun/violated``). With
/// `warmUp`, the first round waits until every worker has acquired once (so each has read every
/// node: what the clock guard judges from). Ends the workers with SIGTERM and checks that each
/// exited cleanly.
func contendUnderFault(
    cluster: Cluster, lock: String, arguments: [String], rounds: Int, stopAtFirstViolation: Bool, settle: Duration,
    warmUp: Bool = false, watched: Int = 0, inflict: (Int) async throws -> Void
) async throws -> ContendedFaultRun {
    let worker = try workerExecutable()
    return try await withTemporaryDirectory { directory in
        let logs = (0..<4).map { "\(directory)/worker-\($0).log" }
        func read() throws -> [Acquisition] {
            try logs.flatMap { try Acquisition.parse(log: String(contentsOfFile: $0, encoding: .utf8)) }
        }
        var workers: [HelperProcess] = []
        do {
            for log in logs {
                workers.append(try await HelperProcess.start(
                    executable: worker,
                    arguments: workerArguments("contend", cluster: cluster, lock: lock, ["--log", log] + arguments),
                    readyMarker: "ready pid="
                ))
            }
            var run = ContendedFaultRun(acquisitions: [], rounds: 0, lastFaultAt: 0)
            if warmUp {
                let giveUp = ContinuousClock.now + .seconds(30)
                while Set(try read().map(\.process)).count < logs.count, ContinuousClock.now < giveUp {
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(Set(try read().map(\.process)).count == logs.count, "not every worker acquired within 30 s")
            }
            while run.rounds < rounds {
                let held = await waitForHolder(of: lock, on: cluster.servers[watched], within: .seconds(10))
                #expect(held, "nobody held the lock for 10 s")
                guard held else { break }
                try await inflict(run.rounds)
                run.lastFaultAt = MachineClock.nowNanoseconds()
                run.rounds += 1
                try await Task.sleep(for: settle)
                run.acquisitions = try read()
                if stopAtFirstViolation, run.violated { break }
            }
            for worker in workers { worker.signal(SIGTERM) }
            for worker in workers {
                let termination = await waitForExit(worker, within: .seconds(20))
                #expect(termination == .exited(0), "\(worker) ended with \(termination): \(worker.output.suffix(500))")
            }
            run.acquisitions = try read()
            for worker in workers { await worker.kill() }
            return run
        } catch {
            for worker in workers { await worker.kill() }
            throw error
        }
    }
}

/// Polls (every 1 ms) until `name` exists on `server`: a holder is in its critical section.
private func waitForHolder(of name: String, on server: RedisServer, within limit: Duration) async -> Bool {
    let giveUp = ContinuousClock.now + limit
    while ContinuousClock.now < giveUp {
        if (try? await server.value(of: name)) != nil { return true }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return false
}
