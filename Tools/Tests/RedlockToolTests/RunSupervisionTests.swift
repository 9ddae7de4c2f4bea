import Foundation
import CSupervise
import Redlock
import RedlockTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What `redlock-worker heartbeat` wrote: its pid and its beats (CLOCK_BOOTTIME nanoseconds).
private struct Beats {
    var pid: Int32?
    var beats: [Int64] = []

    init(file: String) {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return }
        for line in text.split(separator: "\n") {
            if line.hasPrefix("pid=") {
                pid = Int32(line.dropFirst(4))
            } else if let beat = Int64(line) {
                beats.append(beat)
            }
        }
    }
}

/// Whether a process with `pid` exists and is not a zombie.
private func isAlive(_ pid: Int32) -> Bool {
    guard let state = processState(pid) else { return false }
    return state != "Z" && state != "X"
}

/// The state letter of process `pid` in `/proc/PID/stat` (`R`, `S`, `T` when stopped, …), or nil.
private func processState(_ pid: Int32) -> Character? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return nil }
    return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
}

/// Runs `executable` with `arguments` to the end; returns its exit status and everything it
/// printed (stdout and stderr together).
private func runToEnd(_ executable: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try process.run()
    let text = await Task.detached { String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }.value
    process.waitUntilExit()
    return (process.terminationStatus, text)
}

/// The latest `valid_until_boottime_ns=` that `redlock run --verbose` printed.
private func lastValidUntil(in stderr: String) -> Int64? {
    stderr.split(separator: "\n").compactMap { line -> Int64? in
        guard let range = line.range(of: "valid_until_boottime_ns=") else { return nil }
        return Int64(line[range.upperBound...].prefix { $0.isNumber })
    }.last
}

/// How many ms before the lease's validity ended redlock reported the command gone (its "was
/// gone N ms before" line; negative for "was gone only N ms after"), or nil without either.
private func reportedGoneBefore(in stderr: String) -> Double? {
    for (phrase, sign, follows) in [("the command was gone only ", -1.0, " ms after"), ("the command was gone ", 1.0, " ms before")] {
        guard let range = stderr.range(of: phrase) else { continue }
        let figure = stderr[range.upperBound...].prefix { $0.isNumber || $0 == "." }
        guard stderr[range.upperBound...].dropFirst(figure.count).hasPrefix(follows), let value = Double(figure) else { continue }
        return sign * value
    }
    return nil
}

/// The pids of the processes below `root` that are still running (not zombies), from one
/// reading of `/proc`.
func runningDescendants(of root: Int32) -> [Int32] {
    var parents: [Int32: Int32] = [:]
    var running: Set<Int32> = []
    for pid in ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap({ Int32($0) }) {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 1, let parent = Int32(fields[1]) else { continue }
        parents[pid] = parent
        if fields[0] != "Z", fields[0] != "X" { running.insert(pid) }
    }
    return running.filter { pid in
        var at = pid
        for _ in 0..<64 {
            guard let parent = parents[at] else { return false }
            if parent == root { return true }
            at = parent
        }
        return false
    }
}

/// The pids of `parent`'s children.
private func children(of parent: Int32) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == parent
    }
}

@Suite("redlock run supervises its command", .timeLimit(.minutes(3)))
final class RunSupervisionTests: Sendable {
    /// The files ``temporaryFile(_:)`` named, removed when the test ends (each test has an
    /// instance of its own).
    private let files = Mutex<[String]>([])

    deinit {
        for file in files.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: file) }
    }

    private func nodeList(_ servers: [RedisServer]) -> String {
        servers.map { "\($0.endpoint)" }.joined(separator: ",")
    }

    /// A path in the temporary directory for a file the test makes, removed when the test ends.
    private func temporaryFile(_ label: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swift-redlock-\(label)-\(UUID())").path
        files.withLock { $0.append(path) }
        return path
    }

    @Test("the command starts with an empty signal mask, default dispositions and only stdin, stdout and stderr")
    func cleanStart() async throws {
        try await withRedisServers(1) { servers throws in
            // The command's own status (a shell's would race with the shell blocking signals
            // around its forks).
            let masks = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "clean", "--",
                                        "grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])
            let (status, stdout, stderr) = await masks.finish()
            #expect(status == 0, "stderr: \(stderr)")
            #expect(stdout.contains("SigBlk:\t0000000000000000"), "\(stdout)")
            #expect(stdout.contains("SigIgn:\t0000000000000000"), "\(stdout)")
            let descriptors = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "clean", "--",
                                              "sh", "-c", "ls -1 /proc/$$/fd"])
            let (fdStatus, fdList, fdErrors) = await descriptors.finish()
            #expect(fdStatus == 0, "stderr: \(fdErrors)")
            #expect(fdList.split(separator: "\n") == ["0", "1", "2"], "\(fdList)")
        }
    }

    @Test("a signal of SIGHUP, SIGINT and SIGQUIT ignored when redlock starts stays ignored, by redlock and by the command: under nohup a hangup, in a script's `cmd &` a Ctrl-C (SIGINT, SIGQUIT) to redlock and to the command's group ends neither; started with them at their defaults, SIGHUP or SIGINT to redlock ends the command (129, 130)")
    func ignoredSignalsStayIgnored() async throws {
        // (launcher, the signals sent, the command's ignored set from /proc: bit n - 1 for signal n)
        let cases: [(launcher: [String], signals: [Int32], ignored: String)] = [
            (["/usr/bin/nohup"], [SIGHUP], "0000000000000001"),
            (["/usr/bin/env", "--ignore-signal=INT,QUIT"], [SIGINT, SIGQUIT], "0000000000000006"),
            ([], [SIGHUP], "0000000000000000"),
            ([], [SIGINT], "0000000000000000"),
        ]
        try await withRedisServers(1) { servers throws in
            for (launcher, signals, ignored) in cases {
                let kept = !launcher.isEmpty
                let run = try CommandRun(
                    ["run", "--nodes", nodeList(servers), "--name", "ignored", "--",
                     "sh", "-c", "grep ^SigIgn /proc/self/status; echo ready $$; sleep 1; echo survived"],
                    launcher: launcher, killAfter: .seconds(20)
                )
                let before = try #require(await run.waitForLine(containing: "ready"))
                let group = try #require(before.split(separator: "\n").first { $0.hasPrefix("ready ") }.flatMap { pid_t($0.dropFirst(6)) })
                for signal in signals {
                    #expect(kill(run.process.processIdentifier, signal) == 0)
                    if kept { #expect(kill(-group, signal) == 0) }
                }
                let (status, stdout, stderr) = await run.finish()
                #expect(before.contains("SigIgn:\t\(ignored)"), "\(launcher): \(before)")
                if kept {
                    #expect(!run.timedOut && status == 0 && stdout.contains("survived"), "\(launcher): \(status) \(stdout) \(stderr)")
                } else {
                    #expect(status == 128 + signals[0] && !stdout.contains("survived"), "\(signals): \(status) \(stdout) \(stderr)")
                }
            }
        }
    }

    @Test("SIGTERM to redlock stops a command that does not trap it, and what the command started")
    func terminateReachesGroup() async throws {
        try await withRedisServers(1) { servers throws in
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "group", "--",
                                      "sh", "-c", "sleep 300 & echo grandchild=$!; echo ready; wait"])
            let output = try #require(await run.waitForLine(containing: "ready"))
            let grandchild = try #require(output.split(separator: "\n").first { $0.hasPrefix("grandchild=") }.flatMap { Int32($0.dropFirst(11)) })
            let started = ContinuousClock.now
            run.process.terminate()
            let (status, _, stderr) = await run.finish()
            #expect(status == 128 + SIGTERM, "stderr: \(stderr)")
            #expect(started.duration(to: .now) < .seconds(5))
            #expect(await eventually { !isAlive(grandchild) }, "the grandchild \(grandchild) survived")
            #expect(try await values(of: "group", on: servers) == [nil])
        }
    }

    @Test("SIGTERM to redlock ends a command that is stopped: SIGCONT follows it, as a shell's kill does")
    func terminateStoppedCommand() async throws {
        try await withRedisServers(1) { servers throws in
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "stopped", "--",
                                      "sh", "-c", "echo ready; kill -STOP $$; sleep 300"])
            #expect(await run.waitForLine(containing: "ready") != nil)
            let shell = try #require(await {
                var found: Int32?
                _ = await eventually {
                    found = children(of: run.process.processIdentifier).flatMap { children(of: $0) }.first {
                        (try? String(contentsOfFile: "/proc/\($0)/stat", encoding: .utf8))?.contains(") T ") == true
                    }
                    return found != nil
                }
                return found
            }(), "the command never stopped")
            #expect(isAlive(shell))
            run.process.terminate()
            let (status, _, stderr) = await run.finish()
            #expect(status == 128 + SIGTERM, "stderr: \(stderr)")
            #expect(try await values(of: "stopped", on: servers) == [nil])
        }
    }

    @Test("Ctrl-C in a terminal reaches the command once, and redlock exits 130")
    func interruptOnce() async throws {
        try await withRedisServers(1) { servers throws in
            let run = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--name", "interrupt", "--",
                 "sh", "-c", "trap 'echo got-int; exit 130' INT; echo ready; while :; do sleep 0.05; done"]
            )
            #expect(await run.waitForLine(containing: "ready") != nil)
            try #require(getpgid(run.process.processIdentifier) == run.process.processIdentifier, "redlock leads its own process group")
            // A terminal's Ctrl-C signals the whole foreground process group: redlock's.
            #expect(kill(-run.process.processIdentifier, SIGINT) == 0)
            let (status, stdout, stderr) = await run.finish()
            #expect(status == 130, "stderr: \(stderr)")
            #expect(stdout.components(separatedBy: "got-int").count - 1 == 1, "\(stdout)")
        }
    }

    @Test("when the lease cannot be extended, SIGTERM and then SIGKILL land before its validity ends, and redlock exits only after the command is gone")
    func lostLeaseStopsCommandInTime() async throws {
        let worker = try builtExecutable("redlock-worker").path
        try await withRedisServers(3) { servers throws in
            let beats = temporaryFile("beats")
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "lost", "--ttl", "1s", "--grace", "200ms",
                                      "--verbose", "--", worker, "heartbeat", "--file", beats, "--ignore-term"])
            #expect(await eventually(within: .seconds(20)) { Beats(file: beats).beats.count >= 2 })
            for server in servers { try await server.pause() }
            let (status, _, stderr) = await run.finish()
            let exitedAt = MachineClock.nowNanoseconds()
            for server in servers { try server.resume() }
            #expect(status == 124, "stderr: \(stderr)")
            // redlock's own kill, at the instant it told the watchdog: no line blames a renewal
            // that did not come.
            #expect(stderr.contains("redlock: lost the lease") && !stderr.contains("redlock watchdog:"), "stderr: \(stderr)")
            let written = Beats(file: beats)
            let pid = try #require(written.pid)
            let lastBeat = try #require(written.beats.last)
            let validUntil = try #require(lastValidUntil(in: stderr), "stderr: \(stderr)")
            // The --verbose lines give the validity left in seconds too: under the 1 s --ttl.
            let left = stderr.split(separator: "\n").first { $0.contains("redlock: acquired") }?
                .split(separator: " ").drop { $0 != "for" }.dropFirst().first
            #expect(left.flatMap { Double($0.dropLast()) }.map { $0 > 0 && $0 < 1 } == true, "stderr: \(stderr)")
            #expect(!isAlive(pid), "the command outlived redlock")
            #expect(lastBeat < validUntil, "the command ran \(Double(lastBeat - validUntil) / 1e6) ms past the lease's validity")
            #expect(lastBeat <= exitedAt)
            print("lease lost: the command's last beat was \(Double(validUntil - lastBeat) / 1e6) ms before validUntil")
        }
    }

    @Test("redlock stopped once it began stopping the command (SIGTERM sent, its own SIGKILL and the instant told to the watchdog): the watchdog kills a command that ignores SIGTERM before the lease's validity ends")
    func stoppedWhileTerminating() async throws {
        let worker = try builtExecutable("redlock-worker").path
        try await withRedisServers(3) { servers throws in
            let (beats, termed) = (temporaryFile("beats"), temporaryFile("termed"))
            // The shell notes the SIGTERM (its wait is interrupted by it); the worker ignores it.
            let script = "trap 'echo term > \(termed)' TERM; \(worker) heartbeat --file \(beats) --ignore-term & "
                + "while kill -0 $! 2>/dev/null; do wait $!; done"
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "stopped-terminating", "--ttl", "1s", "--grace", "300ms",
                                      "--verbose", "--", "sh", "-c", script], killAfter: .seconds(60))
            #expect(await eventually(within: .seconds(20)) { Beats(file: beats).beats.count >= 2 })
            for server in servers { try await server.pause() }
            #expect(await eventually(within: .seconds(10)) { FileManager.default.fileExists(atPath: termed) }, "no SIGTERM reached the command")
            #expect(kill(run.process.processIdentifier, SIGSTOP) == 0)
            let pid = try #require(Beats(file: beats).pid)
            #expect(await eventually(within: .seconds(10)) { !isAlive(pid) }, "the watchdog did not kill the command")
            #expect(kill(run.process.processIdentifier, SIGCONT) == 0)
            let (status, _, stderr) = await run.finish()
            for server in servers { try server.resume() }
            #expect(status == 124 && !run.timedOut, "stderr: \(stderr)")
            let lastBeat = try #require(Beats(file: beats).beats.last)
            let validUntil = try #require(lastValidUntil(in: stderr), "stderr: \(stderr)")
            #expect(lastBeat < validUntil, "the command ran \(Double(lastBeat - validUntil) / 1e6) ms past the lease's validity")
        }
    }

    @Test("redlock stopped while its command runs a thousand processes outside its process group (each in a session of its own): none of them runs past the lease's validity: the watchdog counts them at each renewal, holds each by a descriptor and starts its kill early enough (before: walking to each one at the deadline, hundreds ran on for 50-70 ms past the validity at --ttl 2s)")
    func manyDetachedProcesses() async throws {
        let probe = try builtExecutable("redlock-kill-probe").path
        try await withRedisServers(1) { servers throws in
            let slots = temporaryFile("slots")
            // --ttl 4s: the kill's lead is at most a fifth of the renewal window, and at 2s a loaded
            // machine's kill of a thousand outlasted it (one run in five or six beside another
            // suite, with this watchdog and the one before it); the old walk at the deadline
            // ran late at any --ttl.
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "detached-many", "--ttl", "4s", "--verbose", "--",
                                      probe, "stampers", "1000", slots, "10"], killAfter: .seconds(60))
            #expect(await run.waitForLine(containing: "ready") != nil)
            // Renewals after all of them run, each of which the watchdog may count them at.
            var seen = ""
            for _ in 0..<3 { seen += await run.waitForErrorLine(containing: "valid_until_boottime_ns=") ?? "" }
            let stoppedAt = redlock_boottime_ns()
            #expect(kill(run.process.processIdentifier, SIGSTOP) == 0)
            // The watchdog kills them without redlock.
            let (stopped, status, stderr) = await Self.killedWhileStopped(run, stampsIn: slots)
            #expect(stopped, "the command's processes were not killed")
            #expect(status == 124 && !run.timedOut, "stderr: \(stderr)")
            let validUntil = try #require(lastValidUntil(in: seen + stderr), "stderr: \(seen + stderr)")
            let stamps = Self.stamps(in: slots)
            #expect(stamps.count == 1_000)
            let late = stamps.filter { $0 > validUntil }
            #expect(late.isEmpty, """
                \(late.count) processes ran past the lease's validity, the last \(Double((late.max() ?? validUntil) - validUntil) / 1e6) ms; \
                redlock was stopped \(Double(validUntil - stoppedAt) / 1e6) ms before that validity; stderr: \(seen + stderr)
                """)
            // They ran until redlock was stopped (every 10 ms): the kill came for the stop, not
            // early, while redlock renewed the lease on time.
            #expect((stamps.max() ?? 0) > stoppedAt - 100_000_000, "killed \(Double(stoppedAt - (stamps.max() ?? 0)) / 1e6) ms before redlock was stopped")
        }
    }

    @Test("a count of the command's processes under way never holds the kill back: with each process counted taking 50 ms (a count of 150 takes 7.5 s, as on a machine loaded enough) and redlock stopped midway through one, the watchdog kills at the deadline, and no process runs past the lease's validity (before: the count ran to its end first, seconds past it)")
    func countNeverHoldsTheKillBack() async throws {
        let probe = try builtExecutable("redlock-kill-probe").path
        try await withRedisServers(1) { servers throws in
            let slots = temporaryFile("slots")
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "slow-count", "--ttl", "4s", "--verbose", "--",
                                      probe, "stampers", "150", slots, "20"],
                                     environment: ["REDLOCK_RUN_TEST_CENSUS_DELAY_MS": "50"], killAfter: .seconds(60))
            #expect(await run.waitForLine(containing: "ready") != nil)
            let watchdog = try #require(children(of: run.process.processIdentifier).first)
            // A count of all of them under way, far from its end: it holds each detached process
            // it has looked at, one every 50 ms, and has more than the lease's 4 s still to go.
            let midway = await eventually(within: .seconds(30)) { (5...60).contains(Self.heldProcesses(by: watchdog).descriptors) }
            #expect(kill(run.process.processIdentifier, SIGSTOP) == 0)
            let (stopped, status, stderr) = await Self.killedWhileStopped(run, stampsIn: slots)
            #expect(midway, "no count of the stampers was seen under way")
            #expect(stopped, "the command's processes were not killed")
            #expect(status == 124 && !run.timedOut, "stderr: \(stderr)")
            let validUntil = try #require(lastValidUntil(in: stderr), "stderr: \(stderr)")
            let late = Self.stamps(in: slots).filter { $0 > validUntil }
            #expect(late.isEmpty, "\(late.count) processes ran past the lease's validity, the last \(Double((late.max() ?? validUntil) - validUntil) / 1e6) ms; stderr: \(stderr)")
        }
    }

    @Test("with more processes outside the command's group than the watchdog has descriptors for, every count holds as many as the room allows, never more, and as many distinct processes (before: a count held only what the one before it left free until it ended, so every other count held next to none; then, with the old set giving up its last descriptors, about half as many distinct processes midway through a count)")
    func heldDescriptorsFillTheRoom() async throws {
        let probe = try builtExecutable("redlock-kill-probe").path
        try await withRedisServers(1) { servers throws in
            // 256 descriptors at most: the watchdog holds up to 192 (it keeps 64 back), plus the one
            // of the process its count looks at; 200 stampers.
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "held-room", "--ttl", "4s", "--",
                                      probe, "stampers", "200", temporaryFile("slots"), "50"],
                                     launcher: ["/usr/bin/prlimit", "--nofile=256:256"], killAfter: .seconds(60))
            #expect(await run.waitForLine(containing: "ready") != nil)
            let watchdog = try #require(children(of: run.process.processIdentifier).first)
            let filled = await eventually(within: .seconds(10)) { Self.heldProcesses(by: watchdog).descriptors >= 150 }
            // A count every 200 ms or so (ten times what one takes, at least 200 ms): 3 s of
            // samples span a dozen of them.
            var samples: [(descriptors: Int, processes: Int)] = []
            let until = ContinuousClock.now + .seconds(3)
            while filled, ContinuousClock.now < until {
                samples.append(Self.heldProcesses(by: watchdog))
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(kill(run.process.processIdentifier, SIGTERM) == 0)
            let (_, _, stderr) = await run.finish()
            #expect(filled && !run.timedOut, "stderr: \(stderr)")
            let descriptors = samples.map(\.descriptors)
            let processes = samples.map(\.processes)
            #expect(descriptors.allSatisfy { (150...193).contains($0) },
                    "pidfds held: \(descriptors.min() ?? 0)...\(descriptors.max() ?? 0) in \(samples.count) samples")
            #expect(processes.allSatisfy { $0 >= 150 },
                    "distinct processes held: \(processes.min() ?? 0)...\(processes.max() ?? 0) in \(samples.count) samples")
        }
    }

    /// How many pidfds process `pid` holds, and of how many distinct processes (the `Pid:` line of
    /// each one's fdinfo).
    private static func heldProcesses(by pid: Int32) -> (descriptors: Int, processes: Int) {
        let directory = "/proc/\(pid)/fd"
        var descriptors = 0
        var processes: Set<Substring> = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            guard (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(entry)")) == "anon_inode:[pidfd]",
                  let info = try? String(contentsOfFile: "/proc/\(pid)/fdinfo/\(entry)", encoding: .utf8) else { continue }
            descriptors += 1
            if let line = info.split(separator: "\n").first(where: { $0.hasPrefix("Pid:") }) {
                processes.insert(line.dropFirst(4).drop { $0 == " " || $0 == "\t" })
            }
        }
        return (descriptors, processes.count)
    }

    @Test("what the command's helpers leave when they fork and exit (orphans reparented to the watchdog, a child subreaper) is reaped while the command runs (before: a zombie each, holding its pid until the command ended)")
    func orphansAreReaped() async throws {
        try await withRedisServers(1) { servers throws in
            let release = temporaryFile("release")
            // 50 orphans, each a `sleep 0.01` whose subshell exited at once; then the command
            // waits to be told to end.
            let script = "i=0; while [ $i -lt 50 ]; do (sleep 0.01 &); i=$((i+1)); done; echo spawned; "
                + "while [ ! -e \(release) ]; do sleep 0.05; done"
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "orphans", "--", "sh", "-c", script],
                                     killAfter: .seconds(60))
            #expect(await run.waitForLine(containing: "spawned") != nil)
            let watchdog = try #require(children(of: run.process.processIdentifier).first)
            // Below the watchdog, once the orphans ended: the command alone (a zombie is a child
            // too, until it is reaped).
            let reaped = await eventually(within: .seconds(10)) { children(of: watchdog).count == 1 }
            let left = children(of: watchdog).count
            #expect(FileManager.default.createFile(atPath: release, contents: nil))
            let (status, _, stderr) = await run.finish()
            #expect(reaped, "\(left - 1) processes left below the watchdog 10 s after the command's helpers exited")
            #expect(status == 0, "stderr: \(stderr)")
        }
    }

    /// With redlock stopped (SIGSTOP) and its command's stampers writing into `slots`: waits for
    /// the watchdog's kill (its own line, once its signals are sent; bounded by the run's
    /// killAfter) — a pause of the stamps alone proves nothing on a loaded machine, where a
    /// thousand stampers that need most of a core wait their turn (once all of them for 300 ms,
    /// with redlock stopped and continued at once) — then for the stamps to stop (none for 300 ms,
    /// within 15 s); continues redlock and waits for its exit. Whether the stamps stopped,
    /// redlock's status, and what it printed on stderr from the stop on.
    private static func killedWhileStopped(_ run: CommandRun, stampsIn slots: String) async -> (stopped: Bool, status: Int32, stderr: String) {
        let killLine = await run.waitForErrorLine(containing: "killed the command") ?? ""
        let stopped = await eventually(within: .seconds(15)) {
            let stamps = stamps(in: slots)
            return !stamps.isEmpty && (stamps.max() ?? 0) < redlock_boottime_ns() - 300_000_000
        }
        #expect(kill(run.process.processIdentifier, SIGCONT) == 0)
        let (status, _, stderr) = await run.finish()
        return (stopped, status, killLine + stderr)
    }

    /// The CLOCK_BOOTTIME stamps `redlock-kill-probe stampers` wrote into `path`, one per process.
    private static func stamps(in path: String) -> [Int64] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        return data.withUnsafeBytes { raw in (0..<(raw.count / 8)).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self) } }
    }

    @Test(
        "a killed or stopped redlock, a stopped process group or a killed watchdog never lets the command overlap the next holder's",
        arguments: ["kill redlock", "stop redlock", "stop redlock's group", "kill the watchdog"]
    )
    func supervisorDies(fault: String) async throws {
        let worker = try builtExecutable("redlock-worker").path
        let trials = Int(ProcessInfo.processInfo.environment["REDLOCK_SUPERVISOR_TRIALS"] ?? "") ?? 12
        try await withRedisServers(3) { servers throws in
            var smallestGap = Int64.max
            for trial in 0..<trials {
                let name = "orphan-\(trial)-\(fault.filter(\.isLetter))"
                let (first, second) = (temporaryFile("first"), temporaryFile("second"))
                // The job is a grandchild, behind a shell, as with a wrapper script. A 500 ms TTL
                // gives each attempt 25 ms, which a fresh process's first connects can overrun on
                // a loaded machine: the holder may retry (--wait), what is tested comes after.
                let holder = try CommandRun(["run", "--nodes", nodeList(servers), "--name", name, "--ttl", "500ms", "--wait", "5s", "--",
                                             "sh", "-c", "\(worker) heartbeat --file \(first) --duration-ms 4000; true"])
                let pid = holder.process.processIdentifier
                #expect(await eventually(within: .seconds(20)) { Beats(file: first).beats.count >= 2 })
                switch fault {
                case "kill redlock": #expect(kill(pid, SIGKILL) == 0)
                case "stop redlock": #expect(kill(pid, SIGSTOP) == 0)
                case "stop redlock's group": #expect(kill(-pid, SIGSTOP) == 0)
                default:
                    guard let watchdog = children(of: pid).first else {
                        let (status, _, stderr) = await holder.finish()
                        Issue.record("redlock (exit \(status)) had no watchdog by the time its command ran: \(stderr)")
                        return
                    }
                    #expect(kill(watchdog, SIGKILL) == 0)
                }
                let next = try CommandRun(["run", "--nodes", nodeList(servers), "--name", name, "--wait", "10s", "--",
                                           worker, "heartbeat", "--file", second, "--duration-ms", "30"])
                let (status, _, stderr) = await next.finish()
                #expect(status == 0, "stderr: \(stderr)")
                if fault.hasPrefix("stop") { _ = kill(-pid, SIGCONT) }
                let (holderStatus, _, holderErrors) = await holder.finish()
                switch fault {
                case "kill redlock":
                    #expect(holderStatus == SIGKILL && holder.process.terminationReason == .uncaughtSignal)
                case "kill the watchdog":
                    #expect(holderStatus == 71, "stderr: \(holderErrors)")
                default:
                    #expect(holderStatus == 124, "stderr: \(holderErrors)")
                }
                let (a, b) = (Beats(file: first), Beats(file: second))
                let aPid = try #require(a.pid)
                let (aLast, bFirst) = (try #require(a.beats.last), try #require(b.beats.first))
                #expect(!isAlive(aPid), "the first command is still running")
                #expect(aLast < bFirst, "trial \(trial): the two commands overlapped by \(Double(aLast - bFirst) / 1e6) ms")
                smallestGap = min(smallestGap, bFirst - aLast)
            }
            print("\(fault): \(trials) trials, zero overlap, smallest gap \(Double(smallestGap) / 1e6) ms")
        }
    }

    @Test("what the command detached with setsid is killed when it exits, before the next holder starts")
    func detachedDescendant() async throws {
        let worker = try builtExecutable("redlock-worker").path
        try await withRedisServers(1) { servers throws in
            let (first, second) = (temporaryFile("detached"), temporaryFile("after"))
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "detached", "--",
                                      // Returns once the detached job's first beat is written (5 s at most).
                                      "sh", "-c", "setsid \(worker) heartbeat --file \(first) --duration-ms 4000 & "
                                        + "i=0; while [ ! -s \(first) ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done"])
            let (status, _, stderr) = await run.finish()
            #expect(status == 0, "stderr: \(stderr)")
            let next = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "detached", "--",
                                       worker, "heartbeat", "--file", second, "--duration-ms", "30"])
            #expect(await next.finish().status == 0)
            let (a, b) = (Beats(file: first), Beats(file: second))
            let aPid = try #require(a.pid)
            #expect(!isAlive(aPid), "the detached job outlived redlock run")
            #expect(try #require(a.beats.last) < #require(b.beats.first))
        }
    }

    /// Runs `body` with `count` sleeping processes two levels below a shell, then kills what is
    /// left of them and waits until init has reaped them all: thousands of zombies slow down
    /// every reader of /proc after the test. `root` is the shell, or with `belowSubreaper` a
    /// child subreaper above it (`redlock-worker subreaper`, as the watchdog is); `members` is
    /// every process below `root`.
    private func withProcessCrowd(
        _ count: Int, belowSubreaper: Bool = false, _ body: (_ root: Int32, _ members: [Int32]) async throws -> Void
    ) async throws {
        let shell = ["/bin/sh", "-c", "(i=0; while [ $i -lt \(count) ]; do sleep 600 & i=$((i+1)); done; echo started; wait) & wait"]
        let command = belowSubreaper ? [try builtExecutable("redlock-worker").path, "subreaper", "--"] + shell : shell
        let root = try await HelperProcess.start(
            executable: command[0], arguments: Array(command.dropFirst()), readyMarker: "started", timeout: .seconds(120)
        )
        let members = runningDescendants(of: root.processIdentifier)
        do {
            try await body(root.processIdentifier, members)
        } catch {
            for pid in members where isAlive(pid) { kill(pid, SIGKILL) }
            await root.kill()
            throw error
        }
        for pid in members where isAlive(pid) { kill(pid, SIGKILL) }
        await root.kill()
        #expect(await eventually(within: .seconds(30)) { members.allSatisfy { access("/proc/\($0)", F_OK) != 0 } })
    }

    @Test(
        "the kill at the deadline (redlock_kill_tree) reaches every process below its root, however many: 4,200 of them, two levels down",
        arguments: ["walk, then scan", "scan of /proc"]
    )
    func killTreeHasNoCap(way: String) async throws {
        // Below a child subreaper, as below the watchdog: what a dying subshell leaves comes to
        // the root, not to init.
        try await withProcessCrowd(4_200, belowSubreaper: true) { root, below in
            let count = below.count
            #expect(count >= 4_201, "\(count) processes below the root")
            #expect((way == "scan of /proc" ? redlock_kill_tree_by_scan(root) : redlock_kill_tree(root, nil)) == 0)
            // Each was sent SIGKILL, which nothing can block or catch: it runs no more of its own
            // code, and is gone once scheduled again (4,200 take a moment on two cores). Looked up
            // by pid: a sleep whose subshell died first has another parent now.
            var running = count
            _ = await eventually(within: .seconds(30)) {
                running = below.count { isAlive($0) }
                return running == 0
            }
            #expect(running == 0, "\(running) of \(count) processes below the root still run")
        }
    }

    /// The `key=value` fields of each line of `output` that has all of `keys`.
    private func probeLines(_ output: String, keys: [String]) -> [[String: Int64]] {
        output.split(separator: "\n").compactMap { line in
            var fields: [String: Int64] = [:]
            for word in line.split(separator: " ") {
                let parts = word.split(separator: "=", maxSplits: 1)
                if parts.count == 2, let value = Int64(parts[1]) { fields[String(parts[0])] = value }
            }
            return keys.allSatisfy { fields[$0] != nil } ? fields : nil
        }
    }

    /// Runs `redlock-kill-probe` with `arguments`, as root in a pid namespace of its own (which
    /// takes every process the probe made with it when it ends), else as it is; killed after two
    /// minutes. Its exit status and everything it printed.
    private func runProbe(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let probe = try builtExecutable("redlock-kill-probe").path
        let inNamespace = geteuid() == 0
        let process = Process()
        process.executableURL = URL(fileURLWithPath: inNamespace ? "/usr/bin/unshare" : probe)
        process.arguments = inNamespace ? ["--pid", "--fork", "--kill-child", "--mount-proc", probe] + arguments : arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let pid = process.processIdentifier
        let watchdog = Task {
            try await Task.sleep(for: .seconds(120))
            kill(pid, SIGKILL)
        }
        let text = await Task.detached { String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }.value
        process.waitUntilExit()
        watchdog.cancel()
        return (process.terminationStatus, text)
    }

    @Test(
        "the kill at the deadline never reports its instant early: children that a killed process's sibling made its own (CLONE_PARENT) after the walk read its list, and that exit on their own, all stopped before the instant reported (10 rounds; redlock's own kill with a root that reaps them as they end, as a running watchdog does, and one that does not; the watchdog's kill, whose root reaps nothing meanwhile)",
        arguments: ["redlock's, root not reaping", "redlock's, root reaping", "the watchdog's"]
    )
    func killInstantNotEarly(killer: String) async throws {
        // redlock-kill-probe: each process of the tree stamps CLOCK_BOOTTIME into shared memory
        // as it runs; a stamp later than the instant reported is an early report, or a survivor.
        let variant = ["redlock's, root reaping": ["reaping"], "the watchdog's": ["own"]][killer] ?? []
        let (status, output) = try await runProbe(["late-children", "10"] + variant)
        #expect(status == 0, "\(output)")
        let rounds = probeLines(output, keys: ["round", "rc", "late", "latest_after_ns", "call_ns", "instant_before_return_ns"])
        #expect(rounds.count == 10, "\(output)")
        for round in rounds {
            // The watchdog's kill returns 1 when it reports the checks' end instead of the walk's.
            #expect(round["rc"] == 0 || (variant == ["own"] && round["rc"] == 1), "\(output)")
            #expect(round["late"] == 0, "round \(round["round"] ?? 0): \(round["late"] ?? 0) processes ran after the instant reported, the last \(Double(round["latest_after_ns"] ?? 0) / 1e6) ms after it")
        }
        let fromWalk = rounds.count { ($0["instant_before_return_ns"] ?? 0) > 200_000 }
        print("late-children, \(killer): calls took \(rounds.map { String(format: "%.1f", Double($0["call_ns"] ?? 0) / 1e6) }.joined(separator: ", ")) ms; the walk's instant in \(fromWalk) of \(rounds.count) rounds")
    }

    @Test(
        "what escapes the kill's walk (a chain of CLONE_PARENT children of a killed parent whose 1 GiB takes tens of ms to give back) is killed while the kill waits for the exits, not once that parent has handed it up: no link stamps after the parent's exit (the watchdog's kill, redlock's own, and the kill of what an exited command left; 3 runs each)",
        arguments: ["own", "tree", "descendants"]
    )
    func escapedChainKilledBeforeParentExits(killer: String) async throws {
        for _ in 1...3 {
            let (status, output) = try await runProbe(["escaping-chain", killer])
            #expect(status == 0, "\(output)")
            let line = try #require(
                probeLines(output, keys: ["rc", "call_ns", "x_exited_after_ns", "last_stamp_after_ns", "stamps_after_x"]).first, "\(output)"
            )
            // redlock_kill_own_tree returns 1 when it reports the checks' end (something escaped).
            #expect(line["rc"] == 0 || (killer == "own" && line["rc"] == 1), "\(output)")
            #expect(line["stamps_after_x"] == 0, "\(line["stamps_after_x"] ?? 0) links ran after their parent had exited: \(output)")
            print("escaping-chain \(killer): \(output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    @Test("the kill at the deadline reports the walk's instant when nothing escapes the walk, and nothing below the root runs after it (10 rounds of the same tree without the late children)")
    func killInstantFromTheWalk() async throws {
        let (status, output) = try await runProbe(["late-children", "10", "plain"])
        #expect(status == 0, "\(output)")
        let rounds = probeLines(output, keys: ["round", "rc", "late", "latest_after_ns", "instant_before_return_ns"])
        #expect(rounds.count == 10, "\(output)")
        for round in rounds {
            #expect(round["rc"] == 0, "\(output)")
            #expect(round["late"] == 0, "round \(round["round"] ?? 0): \(round["late"] ?? 0) processes ran after the instant reported, the last \(Double(round["latest_after_ns"] ?? 0) / 1e6) ms after it")
        }
        // The walk's instant comes before the scan (about a millisecond of /proc here; the
        // scan's is taken as the call returns): this test checks it, not the scan's. (A round
        // may fall back to the scan on a loaded machine: a killed process that takes over a
        // second to exit.)
        let fromWalk = rounds.count { ($0["instant_before_return_ns"] ?? 0) > 500_000 }
        #expect(fromWalk >= 1, "\(output)")
        print("late-children, plain: the walk's instant in \(fromWalk) of \(rounds.count) rounds")
    }

    @Test(
        "the kill at the deadline does not kill a stranger that took the pid of a process below the root after the walk read it from a children file: it checks the parent before it signals (in a pid namespace of its own, the pid forced through ns_last_pid; 5 rounds in which the stranger took it while the kill ran)",
        .enabled(if: geteuid() == 0, "a pid namespace and ns_last_pid need root")
    )
    func killSparesPidReuser() async throws {
        var held = 0
        for _ in 1...15 where held < 5 {
            let (status, output) = try await runProbe(["pid-reuse"])
            #expect(status == 0, "\(output)")
            let line = try #require(probeLines(output, keys: ["rc", "stranger_pid", "c_pid", "stranger_born_ns", "call_began_ns", "call_ended_ns", "stranger_killed"]).first, "\(output)")
            #expect(line["rc"] == 0, "\(output)")
            #expect(line["stranger_killed"] == 0, "the stranger with a reused pid was killed: \(output)")
            // The premise (the stranger took the pid while the kill ran) may fail on a loaded
            // machine: such a round shows nothing and is run again.
            if line["stranger_pid"] == line["c_pid"], let born = line["stranger_born_ns"], let began = line["call_began_ns"],
               let ended = line["call_ended_ns"], began < born, born < ended
            {
                held += 1
            }
        }
        #expect(held == 5, "only \(held) rounds in which the stranger took the pid while the kill ran")
    }

    @Test(
        "the kill at the deadline does not kill strangers that took the pids of processes it read in its scan of /proc and that were reaped before its signal (a pid namespace with 3,000 other processes; every reaped pid forced onto a stranger; 3 runs)",
        .enabled(if: geteuid() == 0, "a pid namespace and ns_last_pid need root")
    )
    func killSparesReapedPids() async throws {
        for _ in 1...3 {
            let (status, output) = try await runProbe(["reaped-pids", "3000"])
            #expect(status == 0, "\(output)")
            let line = try #require(probeLines(output, keys: ["rc", "strangers", "took_the_pid", "strangers_killed"]).first, "\(output)")
            #expect(line["rc"] == 0, "\(output)")
            #expect((line["took_the_pid"] ?? 0) > 0, "no stranger took a reaped pid: \(output)")
            #expect(line["strangers_killed"] == 0, "\(output)")
        }
    }

    @Test(
        "a process the kill may not signal (EPERM) keeps none of the others alive, its own descendants that may be signalled included, and makes the kill report failure (redlock's own kill) or no instant (the watchdog's)",
        .enabled(if: geteuid() == 0, "dropping to another uid needs root"),
        arguments: [[], ["own"]]
    )
    func killReportsRefusal(variant: [String]) async throws {
        let (status, output) = try await runProbe(["permission-denied"] + variant)
        #expect(status == 0, "\(output)")
        let line = try #require(probeLines(output, keys: ["rc", "call_ns", "own_left", "kept_alive"]).first, "\(output)")
        #expect(line["rc"] == -1, "\(output)")
        #expect(line["own_left"] == 0, "\(output)")
        #expect(line["kept_alive"] == 1, "\(output)")
        print("permission-denied: the call took \(Double(line["call_ns"] ?? 0) / 1e6) ms")
    }

    @Test(
        "the kill at the deadline works under a seccomp filter that refuses pidfds (it signals by pid then), also one that refuses them for every pid but the killer's own, or refuses every signal through them but 0, with an errno that means \"gone\" or \"not permitted\", and never reports success while processes below the root run when it cannot open what it reads (RLIMIT_NOFILE: no descriptor free, one, two); 20 children, each with a child",
        .enabled(if: geteuid() == 0, "a pid namespace needs root"),
        arguments: [
            ["deny", "pidfd_send_signal", "\(ENOSYS)"], ["deny", "pidfd_send_signal", "\(EPERM)"], ["deny", "pidfd_send_signal", "\(EINVAL)"],
            ["deny", "pidfd_open", "\(ENOSYS)"], ["deny", "pidfd_open", "\(EPERM)"],
            ["deny-others", "pidfd_open", "\(EINVAL)"], ["deny-others", "pidfd_open", "\(ESRCH)"],
            ["deny-signals", "\(ESRCH)"], ["deny-signals", "\(EPERM)"],
            ["descriptors", "0"], ["descriptors", "1"], ["descriptors", "2"],
        ]
    )
    func killUnderConfinement(policy: [String]) async throws {
        let (status, output) = try await runProbe(["confined"] + policy)
        #expect(status == 0, "\(output)")
        let line = try #require(probeLines(output, keys: ["rc", "call_ns", "left"]).first, "\(output)")
        if policy[0] != "descriptors" {
            // Signals by pid do the work a filter refuses to pidfds.
            #expect(line["rc"] == 0, "\(output)")
        } else if policy[1] == "0" {
            // Nothing below the root can be found without opening /proc.
            #expect(line["rc"] == -1, "\(output)")
        }
        if line["rc"] == 0 {
            #expect(line["left"] == 0, "the kill reported success while \(line["left"] ?? 0) of 40 processes below the root still ran: \(output)")
        } else {
            #expect(line["rc"] == -1, "\(output)")
        }
    }

    @Test(
        "the kill at the deadline's fallback by pid, after a SIGKILL through a pidfd failed, never reaches a stranger that took the pid of the process reaped meanwhile in the same clock tick (the SIGKILL held by a seccomp user notification while the pid changes hands; by the walk and by the scan; 3 runs each in which the stranger's start time matched)",
        .enabled(if: geteuid() == 0, "a pid namespace, ns_last_pid and seccomp's user notification need root"),
        arguments: ["walk", "scan"]
    )
    func killSparesStrangerAfterPausedSignal(way: String) async throws {
        var held = 0
        for _ in 1...15 where held < 3 {
            let (status, output) = try await runProbe(["paused-signal", way])
            #expect(status == 0, "\(output)")
            let line = try #require(probeLines(output, keys: ["rc", "stranger_pid", "a_pid", "same_tick", "stranger_killed"]).first, "\(output)")
            #expect(line["stranger_killed"] == 0, "a stranger with the reaped process's pid was killed: \(output)")
            #expect(line["rc"] == 0, "\(output)")
            // The premise (the stranger took the pid within A's clock tick) may fail on a loaded
            // machine: such a run shows nothing and is run again.
            if line["stranger_pid"] == line["a_pid"], line["same_tick"] == 1 { held += 1 }
        }
        #expect(held == 3, "only \(held) runs in which the stranger took the pid within the same tick")
    }

    @Test(
        "the kill at the deadline kills a process whose main thread has exited while another thread runs (state Z, two threads), by the walk and by the scan alone, also when a seccomp filter refuses SIGKILL through pidfds with ESRCH or EPERM",
        .enabled(if: geteuid() == 0, "a pid namespace needs root"),
        arguments: [["walk"], ["scan"], ["walk", "\(ESRCH)"], ["walk", "\(EPERM)"], ["scan", "\(ESRCH)"]]
    )
    func killReachesZombieLeader(way: [String]) async throws {
        let (status, output) = try await runProbe(["zombie-leader"] + way)
        #expect(status == 0, "\(output)")
        let line = try #require(probeLines(output, keys: ["rc", "leader_threads", "left"]).first, "\(output)")
        #expect(line["leader_threads"] == 2, "the premise (a zombie leader with a running thread) did not hold: \(output)")
        #expect(line["rc"] == 0, "\(output)")
        #expect(line["left"] == 0, "a thread of the zombie leader still runs: \(output)")
    }

    @Test(
        "a stopped redlock or watchdog leaves nothing running past the lease: the kill at the deadline (the watchdog's, or redlock's own) reaches what the command detached with setsid, also among 8,000 other processes (it walks the command's tree, not all of /proc); the instant reported as the kill's is never before a beat, and the watchdog's is its walk's end, not its scan's (held 300 ms)",
        arguments: [("stop the watchdog", 0), ("stop redlock", 8_000), ("stop the watchdog", 8_000)]
    )
    func deadlineKillReachesDetached(fault: String, others: Int) async throws {
        let worker = try builtExecutable("redlock-worker").path
        try await withProcessCrowd(others) { _, _ in
            try await withRedisServers(1) { servers throws in
                let (detached, own) = (temporaryFile("detached"), temporaryFile("own"))
                // The detached job is a grandchild whose parent (a subshell in the command's group)
                // lives until the group is killed: it is not the watchdog's child at the deadline.
                let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "detached-\(others)", "--ttl", "1s", "--grace", "200ms",
                                          "--verbose", "--", "sh", "-c",
                                          "(setsid \(worker) heartbeat --file \(detached) --duration-ms 30000 & wait) & "
                                            + "\(worker) heartbeat --file \(own) --duration-ms 30000"],
                                         environment: ["REDLOCK_RUN_TEST_SCAN_DELAY_MS": "300"])
                #expect(await eventually(within: .seconds(20)) { Beats(file: detached).beats.count >= 2 && Beats(file: own).beats.count >= 2 })
                let supervisor = run.process.processIdentifier
                let watchdog = try #require(children(of: supervisor).first)
                if fault == "stop redlock" {
                    #expect(kill(supervisor, SIGSTOP) == 0)
                } else {
                    #expect(kill(watchdog, SIGSTOP) == 0)
                    try await servers[0].pause()
                }
                let detachedPid = try #require(Beats(file: detached).pid)
                #expect(await eventually(within: .seconds(10)) { !isAlive(detachedPid) }, "the detached job outlived the lease")
                if fault == "stop redlock" {
                    // Past the lease's end (the kill came at the deadline, 50 ms before it)
                    // before redlock runs again: its own look below the watchdog then comes
                    // after the validity, and what is reported is the watchdog's instant.
                    try await Task.sleep(for: .milliseconds(400))
                    _ = kill(supervisor, SIGCONT)
                } else {
                    // Past the lease's end (1 s) before the watchdog runs again.
                    try await Task.sleep(for: .milliseconds(1_200))
                    try servers[0].resume()
                    _ = kill(watchdog, SIGCONT)
                }
                let (status, _, stderr) = await run.finish()
                #expect(status == 124, "stderr: \(stderr)")
                let validUntil = try #require(lastValidUntil(in: stderr), "stderr: \(stderr)")
                let goneBefore = try #require(reportedGoneBefore(in: stderr), "stderr: \(stderr)")
                let goneAt = validUntil - Int64(goneBefore * 1e6)
                print("\(fault), \(others) other processes: reported gone \(goneBefore) ms before validUntil")
                for file in [detached, own] {
                    let lastBeat = try #require(Beats(file: file).beats.last)
                    #expect(lastBeat < validUntil, "\(file): ran \(Double(lastBeat - validUntil) / 1e6) ms past the lease's validity")
                    // The instant reported is never before a beat: a report may be late, not early.
                    #expect(lastBeat < goneAt, "\(file): a beat \(Double(lastBeat - goneAt) / 1e6) ms after the instant reported as the kill's; stderr: \(stderr)")
                    print("\(fault), \(others) other processes: the last beat was \(Double(validUntil - lastBeat) / 1e6) ms before validUntil")
                }
                if fault == "stop redlock" {
                    // The watchdog's kill reports its walk's end, not the end of the scan of every
                    // process's stat file that follows (~10 µs each on the host; held 300 ms
                    // here, as on a far larger or busier host): within the margin (50 ms).
                    #expect(goneBefore > 0, "stderr: \(stderr)")
                }
                // Redlock's own kill (a stopped watchdog) reports once every process it killed
                // has exited and a last look found nothing it missed: how long those exits take
                // depends on the CPU left to them (up to 150 ms beside two model checkers), so that
                // report may fall past the validity; the beats above are the guarantee.
            }
        }
    }

    @Test("a watchdog stopped past a deadline that redlock renewed meanwhile reads the renewals before it judges the deadline: the command runs to its end")
    func stoppedWatchdogCountsRenewals() async throws {
        try await withRedisServers(1) { servers throws in
            let ran = temporaryFile("ran")
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "renewed", "--ttl", "500ms", "--",
                                      "sh", "-c", "touch \(ran); sleep 2; echo done"])
            #expect(await eventually(within: .seconds(20)) { FileManager.default.fileExists(atPath: ran) })
            let watchdog = try #require(children(of: run.process.processIdentifier).first)
            #expect(kill(watchdog, SIGSTOP) == 0)
            // Past several deadlines, each renewed by redlock into the stopped watchdog's pipe.
            try await Task.sleep(for: .milliseconds(1_200))
            #expect(kill(watchdog, SIGCONT) == 0)
            let (status, stdout, stderr) = await run.finish()
            #expect(status == 0, "stderr: \(stderr)")
            #expect(stdout.contains("done"))
        }
    }

    @Test("a terminating signal that comes after the acquire, while the lease is confirmed, keeps the command from starting: exit 128 + N, the lock released")
    func signalBeforeStart() async throws {
        try await withRedisServers(1) { servers throws in
            let proxy = try FaultProxy.start(to: servers[0].endpoint)
            defer { proxy.stop() }
            // Every round trip takes 600 ms (within a 20 s lease's 1 s budget, once connected:
            // the first attempt may spend it on the connect): the confirmation after "acquired"
            // leaves the signal time to land before the command could start.
            proxy.set(.latency(.milliseconds(300)))
            let marker = temporaryFile("started")
            let run = try CommandRun(["run", "--nodes", "\(proxy.endpoint)", "--name", "signalled", "--ttl", "20s", "--wait", "15s", "--verbose", "--",
                                      "sh", "-c", "touch \(marker)"])
            #expect(await run.waitForErrorLine(containing: "acquired") != nil)
            #expect(kill(run.process.processIdentifier, SIGTERM) == 0)
            let (status, _, stderr) = await run.finish()
            #expect(status == 128 + SIGTERM, "stderr: \(stderr)")
            #expect(stderr.contains("before the command started; it did not run"), "stderr: \(stderr)")
            #expect(!FileManager.default.fileExists(atPath: marker), "the command ran")
            proxy.set(.none)
            #expect(try await values(of: "signalled", on: servers) == [nil])
        }
    }

    @Test("a SIGTERM while the client shuts down after the command (a node frozen: the release waits for it) leaves the exit status the command's")
    func signalDuringShutdown() async throws {
        try await withRedisServers(3) { servers throws in
            let ended = temporaryFile("ended")
            try await servers[2].pause()
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "shutting-down", "--ttl", "10s", "--",
                                      "sh", "-c", "touch \(ended); exit 3"])
            #expect(await eventually(within: .seconds(20)) { FileManager.default.fileExists(atPath: ended) })
            // Once the command is gone (reaped by the watchdog), the release waits for the frozen
            // node within its budget (500 ms, --ttl × 0.05) and the shutdown after it for its
            // answer: the signal lands there.
            let redlock = run.process.processIdentifier
            #expect(await eventually(within: .seconds(20)) { children(of: redlock).flatMap { children(of: $0) }.isEmpty })
            #expect(kill(redlock, SIGTERM) == 0)
            let (status, _, stderr) = await run.finish()
            try servers[2].resume()
            #expect(status == 3, "stderr: \(stderr)")
        }
    }

    @Test("stderr closed (a pipe whose reader is gone): redlock run still runs the command, releases and exits with its status", arguments: [false, true])
    func closedStderr(verbose: Bool) async throws {
        try await withRedisServers(1) { servers throws in
            let process = Process()
            process.executableURL = try builtExecutable("redlock")
            process.arguments = ["run", "--nodes", nodeList(servers), "--name", "closed-stderr"] + (verbose ? ["--verbose"] : [])
                + ["--", "sh", "-c", "exit 3"]
            let errors = Pipe()
            process.standardError = errors
            try errors.fileHandleForReading.close()
            try process.run()
            await Task.detached { process.waitUntilExit() }.value
            #expect(process.terminationReason == .exit && process.terminationStatus == 3, "\(process.terminationReason) \(process.terminationStatus)")
            #expect(try await values(of: "closed-stderr", on: servers) == [nil])
        }
    }

    @Test("the guards of README's Safety section are redlock run options: --epoch-guard makes a node without its marker wait; one shorter than --ttl is a usage error")
    func guardOptions() async throws {
        try await withRedisServers(1) { servers throws in
            let guarded = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "guarded", "--ttl", "300ms", "--epoch-guard", "300ms",
                                          "--restart-guard", "1ms", "--clock-guard", "--wait", "10s", "--", "true"])
            let (status, _, stderr) = await guarded.finish()
            #expect(status == 0, "stderr: \(stderr)")
            #expect(try await values(of: "redlock:epoch", on: servers).allSatisfy { $0 != nil }, "the epoch guard left no marker")

            let short = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "guarded", "--ttl", "1s", "--epoch-guard", "500ms", "--", "true"])
            let (shortStatus, _, shortErrors) = await short.finish()
            #expect(shortStatus == 64, "\(shortErrors)")
            #expect(shortErrors.contains("epochGuard"), "\(shortErrors)")
        }
    }

    @Test("a script without a #! line runs under /bin/sh, as a shell would run it")
    func scriptWithoutShebang() async throws {
        try await withRedisServers(1) { servers throws in
            let script = temporaryFile("script")
            try "echo from-script \"$1\"\n".write(toFile: script, atomically: true, encoding: .utf8)
            #expect(chmod(script, 0o755) == 0)
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "script", "--", script, "argument"])
            let (status, stdout, stderr) = await run.finish()
            #expect(status == 0, "stderr: \(stderr)")
            #expect(stdout.contains("from-script argument"))
        }
    }

    @Test("in a terminal the command gets the foreground: it can read the terminal")
    func terminalForeground() async throws {
        let redlock = try builtExecutable("redlock").path
        try await withRedisServers(1) { servers throws in
            // script(1) runs redlock on a new pseudo-terminal, as its foreground job.
            let (status, text) = try await runToEnd("/bin/sh", [
                "-c", "(sleep 1; echo hello) | script -qec \"\(redlock) run --nodes \(nodeList(servers)) --name tty -- sh -c 'read x; echo got=\\$x'\" /dev/null",
            ])
            #expect(text.contains("got=hello"), "\(text)")
            #expect(status == 0, "\(text)")
        }
    }

    @Test("exit statuses say what happened: nodes down 69, credentials, database or a guard's command refused 77 (naming what the guards need), bad grace 64, command not found 127")
    func exitStatuses() async throws {
        try await withRedisServers(1, arguments: ["--requirepass", "s3cret"]) { guarded throws in
            // A user who may not run TIME, which the epoch guard needs.
            try await withRedisServers(1, arguments: ["--user", "timeless", "on", ">pw", "~*", "&*", "+@all", "-time"]) { servers throws in
                let down = try ClosedPort()
                let refused = try CommandRun(["run", "--nodes", down.endpoint, "--name", "x", "--wait", "500ms", "--", "true"])
                let (refusedStatus, _, refusedErrors) = await refused.finish()
                withExtendedLifetime(down) {}
                #expect(refusedStatus == 69, "\(refusedErrors)")
                #expect(refusedErrors.contains("refused") && !refusedErrors.contains("another holder"), "\(refusedErrors)")

                let port = guarded[0].port
                let wrongPassword = try CommandRun(["run", "--nodes", "redis://:wrong@127.0.0.1:\(port)", "--name", "x", "--wait", "5s", "--", "true"])
                let started = ContinuousClock.now
                let (authStatus, _, authErrors) = await wrongPassword.finish()
                #expect(authStatus == 77, "\(authErrors)")
                #expect(started.duration(to: .now) < .seconds(4), "a refused password is not retried for the whole --wait")

                // A database the node does not have, and a guard's command the user may not run.
                let database = try CommandRun(["run", "--nodes", "redis://\(servers[0].endpoint)/99", "--name", "x", "--", "true"])
                let (databaseStatus, _, databaseErrors) = await database.finish()
                #expect(databaseStatus == 77 && databaseErrors.contains("the database"), "\(databaseErrors)")
                let guarded = try CommandRun([
                    "run", "--nodes", "redis://timeless:pw@\(servers[0].endpoint)", "--name", "x", "--epoch-guard", "10s", "--", "true",
                ])
                let (guardedStatus, _, guardedErrors) = await guarded.finish()
                #expect(guardedStatus == 77 && guardedErrors.contains("+time and the key redlock:epoch"), "\(guardedErrors)")

                let badGrace = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "x", "--ttl", "1s", "--grace", "600ms", "--", "true"])
                let (graceStatus, _, graceErrors) = await badGrace.finish()
                #expect(graceStatus == 64, "\(graceErrors)")
                #expect(graceErrors.contains("--grace"))

                let missing = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "missing", "--", "no-such-command-\(UUID())"])
                let (missingStatus, _, missingErrors) = await missing.finish()
                #expect(missingStatus == 127, "\(missingErrors)")
                #expect(missingErrors.contains("could not start"))
                #expect(try await values(of: "missing", on: servers) == [nil])
            }
        }
    }

    @Test("a node that could grant the fenced lock but not release it (the user may not DEL), or that renamed INCR away, gives 77 at once: nothing ran, no key is left (before: DEL refused ran the command and left the keys for --ttl; INCR renamed was retried for the whole --wait, 69)", arguments: ["no-del", "renamed-incr"])
    func unreleasableRefusedAtOnce(kind: String) async throws {
        let arguments = kind == "no-del"
            ? ["--user", "nodel", "on", ">pw", "~*", "&*", "+@all", "-del"]
            : ["--rename-command", "INCR", ""]
        try await withRedisServers(3, arguments: arguments) { servers throws in
            let nodes = servers.map { kind == "no-del" ? "redis://nodel:pw@\($0.endpoint)" : "redis://\($0.endpoint)" }.joined(separator: ",")
            let marker = FileManager.default.temporaryDirectory.appendingPathComponent("ran-\(UUID())").path
            let run = try CommandRun(["run", "--nodes", nodes, "--name", "unreleasable", "--wait", "5s", "--", "touch", marker])
            let started = ContinuousClock.now
            let (status, _, errors) = await run.finish()
            #expect(status == 77, "\(errors)")
            #expect(started.duration(to: .now) < .seconds(3), "retried for the whole --wait: \(errors)")
            #expect(errors.contains(kind == "no-del" ? "may not run DEL" : "unknown command INCR"), "\(errors)")
            #expect(!FileManager.default.fileExists(atPath: marker), "the command ran")
            #expect(try await values(of: "unreleasable", on: servers) == [nil, nil, nil])
        }
    }

    /// What an interactive bash on a pseudo-terminal (script(1)) printed while `typing`, a shell
    /// command line whose output is typed at it, ran: at most 30 s (a hung job is killed).
    private func typedAtInteractiveShell(_ typing: String) async throws -> String {
        try await runToEnd("/bin/sh", ["-c", "(\(typing)) | timeout -k 5 30 script -qec 'bash --norc --noprofile -i' /dev/null"]).output
    }

    @Test("Ctrl-Z in a terminal stops the whole job, fg resumes the command in the foreground; stopped past its deadline, the command is killed and fg gives 124", arguments: [false, true])
    func jobControl(pastDeadline: Bool) async throws {
        let redlock = try builtExecutable("redlock").path
        try await withRedisServers(1) { servers throws in
            // An interactive shell on a pseudo-terminal (script(1)), typed at: the command, Ctrl-Z,
            // fg, a line for the command, then the status of the job. There is no event to wait
            // for on the far side of a terminal, so the typing is paced generously.
            let ttl = pastDeadline ? "1s" : "20s"
            let stopped = pastDeadline ? "3" : "1"
            let typing = """
            sleep 1; printf '%s\\n' "\(redlock) run --nodes \(nodeList(servers)) --name job-control --ttl \(ttl) -- sh -c 'read x; echo got=\\$x'"; \
            sleep 2; printf '\\032'; sleep \(stopped); printf 'fg\\n'; sleep 1; \(pastDeadline ? "" : "printf 'hello\\n'; sleep 1;") \
            printf 'echo done=$?\\n'; sleep 0.5; printf 'exit\\n'
            """
            let text = try await typedAtInteractiveShell(typing)
            #expect(text.contains("Stopped"), "\(text)")
            if pastDeadline {
                #expect(text.contains("done=124"), "\(text)")
                #expect(!text.contains("got=hello"), "\(text)")
            } else {
                #expect(text.contains("got=hello"), "\(text)")
                #expect(text.contains("done=0"), "\(text)")
            }
            #expect(try await values(of: "job-control", on: servers) == [nil])
        }
    }

    @Test("a background job whose command reads the terminal is a stopped job (jobs says Stopped), and fg gives the command the terminal; before, redlock kept running and extending, and fg hung. Also when redlock reads the report that the command started only after fg (before: the command stayed stopped, killed at the deadline)", arguments: [false, true])
    func backgroundReadStopsJob(lateReport: Bool) async throws {
        let redlock = try builtExecutable("redlock")
        try await withRedisServers(1) { servers throws in
            // Typed at an interactive shell on a pseudo-terminal (script(1)), paced as in jobControl.
            // A late report is read 3 s after the command started, after fg (2.5 s).
            let delay = lateReport ? "REDLOCK_RUN_TEST_STARTED_REPORT_DELAY_MS=3000 " : ""
            let typing = """
            sleep 1; printf '%s\\n' "\(delay)\(redlock.path) run --nodes \(nodeList(servers)) --name background-read --ttl 20s -- sh -c 'read x; echo got=\\$x' &"; \
            sleep 2; printf 'jobs\\n'; sleep 0.5; printf 'fg\\n'; sleep 1; printf 'hello\\n'; sleep 1; \
            printf 'echo done=$?\\n'; sleep 0.5; printf 'exit\\n'
            """
            let text = try await typedAtInteractiveShell(typing)
            #expect(text.contains("Stopped"), "\(text)")
            #expect(text.contains("got=hello") && text.contains("done=0"), "\(text)")
            #expect(try await values(of: "background-read", on: servers) == [nil])
        }
    }

    @Test("Ctrl-Z after the watchdog started but before the command took the terminal: the command stays out of the foreground, and fg gives it the terminal (before: it took the terminal from the shell behind its prompt, the shell read an end of file, and what was typed went astray); a command that then cannot start (its interpreter missing) leaves the terminal with the shell too", arguments: [false, true])
    func ctrlZBeforeTheCommandTakesTheTerminal(startFails: Bool) async throws {
        let redlock = try builtExecutable("redlock")
        // Found and executable, but exec fails (ENOENT): only after the fork.
        let unstartable = temporaryFile("no-interpreter")
        try "#!/nonexistent/interpreter\necho hi\n".write(toFile: unstartable, atomically: true, encoding: .utf8)
        #expect(chmod(unstartable, 0o755) == 0)
        try await withRedisServers(1) { servers throws in
            // Typed at an interactive shell on a pseudo-terminal (script(1)), paced as in
            // jobControl. The command's process waits 4 s before it takes the terminal (a delay
            // for the suite only): Ctrl-Z comes 2 s after the command line, fg 4.5 s after that.
            let command = startFails ? unstartable : "sh -c 'read x; echo got=\\$x'"
            let typing = """
            sleep 1; printf '%s\\n' "REDLOCK_RUN_TEST_TERMINAL_DELAY_MS=4000 \(redlock.path) run --nodes \(nodeList(servers)) --name late-terminal --ttl 20s -- \(command)"; \
            sleep 2; printf '\\032'; sleep 4.5; printf 'fg\\n'; sleep 1; \(startFails ? "" : "printf 'hello\\n'; sleep 1;") \
            printf 'echo done=$?\\n'; sleep 0.5; printf 'exit\\n'
            """
            let text = try await typedAtInteractiveShell(typing)
            #expect(text.contains("Stopped"), "\(text)")
            // What bash says when it reads an end of file with a job stopped: it lost the terminal.
            #expect(!text.contains("There are stopped jobs"), "\(text)")
            if startFails {
                #expect(text.contains("could not start") && text.contains("done=127"), "\(text)")
            } else {
                #expect(text.contains("got=hello") && text.contains("done=0"), "\(text)")
            }
            #expect(try await values(of: "late-terminal", on: servers) == [nil])
        }
    }

    @Test("a command stopped by job control where redlock cannot be stopped with it (an orphaned process group: under setsid) renews nothing: killed at the deadline, 124, the cause named, the lock released; continued before the deadline, it runs on under renewals", arguments: [false, true])
    func stoppedCommandRenewsNothing(continued: Bool) async throws {
        try await withRedisServers(1) { servers throws in
            let run = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--name", "stopped-\(continued)", "--ttl", "2s", "--",
                 "sh", "-c", "echo ready $$; kill -TTIN $$; sleep 3; echo finished"],
                launcher: ["/usr/bin/setsid", "-w"], killAfter: .seconds(20)
            )
            let ready = try #require(await run.waitForLine(containing: "ready"))
            let command = try #require(ready.split(separator: "\n").first { $0.hasPrefix("ready ") }.flatMap { pid_t($0.dropFirst(6)) })
            #expect(await eventually { processState(command) == "T" }, "the command did not stop")
            if continued { #expect(kill(-command, SIGCONT) == 0) }
            let (status, stdout, stderr) = await run.finish()
            #expect(!run.timedOut, "redlock went on extending for a stopped command: \(stderr)")
            if continued {
                // It ran 3 s past its stop on a 2 s lease: the renewals held while it was stopped
                // and those after count. (A 2 s lease, not 1 s: each extension's attempt has
                // expiry × 0.05, which a loaded machine's scheduling could exceed at 50 ms.)
                #expect(status == 0 && stdout.contains("finished"), "\(status) \(stdout) \(stderr)")
            } else {
                #expect(status == 124, "\(stderr)")
                #expect(stderr.contains("stopped by job control (signal \(SIGTTIN)") && !stdout.contains("finished"), "\(stderr)")
            }
            #expect(try await values(of: "stopped-\(continued)", on: servers) == [nil])
        }
    }

    @Test("renewals held back while the command was stopped count once it continues: continued after two of them came, past the next renewal's time but before the deadline they replaced, it runs on (without them it is killed at that deadline)")
    func heldRenewalApplies() async throws {
        try await withRedisServers(1) { servers throws in
            // A 6 s lease: confirmed by an extension at once, then extended about every 2.25 s,
            // each moving the watchdog's deadline to 5.75 s after it. Stopped at once (under
            // setsid redlock cannot stop with it), the command misses the renewals at +2.25 s
            // and +4.5 s; continued just after the second, it has until +5.75 s by the
            // confirmation's deadline (a window of 1.25 s, which a loaded machine's late lines
            // do not use up), and the next renewal comes at +6.75 s.
            let run = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--name", "held-renewal", "--ttl", "6s", "--verbose", "--",
                 "sh", "-c", "echo ready $$; kill -TTIN $$; sleep 2; echo finished"],
                launcher: ["/usr/bin/setsid", "-w"], killAfter: .seconds(30)
            )
            let ready = try #require(await run.waitForLine(containing: "ready"))
            let command = try #require(ready.split(separator: "\n").first { $0.hasPrefix("ready ") }.flatMap { pid_t($0.dropFirst(6)) })
            var seen = ""
            while seen.components(separatedBy: "redlock: extended").count - 1 < 3 {
                guard let more = await run.waitForErrorLine(containing: "redlock: extended") else { break }
                seen += more
            }
            #expect(processState(command) == "T", "the command was not stopped while the renewals came")
            #expect(kill(-command, SIGCONT) == 0)
            let (status, stdout, stderr) = await run.finish()
            #expect(!run.timedOut && status == 0 && stdout.contains("finished"), "\(status) \(stdout) \(seen) \(stderr)")
            #expect(try await values(of: "held-renewal", on: servers) == [nil])
        }
    }

    @Test("as a PID namespace's init (a container's PID 1), redlock runs as its own child under an init that reaps what is orphaned there and passes SIGTERM on: the command gets it, 143, the lock released; before, orphans stayed zombies")
    func containerInit() async throws {
        try await withRedisServers(1) { servers throws in
            let run = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--name", "container", "--", "sh", "-c", "echo ready; sleep 30"],
                launcher: ["/usr/bin/unshare", "--pid", "--fork", "--mount-proc"], killAfter: .seconds(30)
            )
            #expect(await run.waitForLine(containing: "ready") != nil)
            // unshare's child is the namespace's init.
            let initPid = try #require(children(of: run.process.processIdentifier).first, "unshare started no child")
            // Bounded: the namespace ends with its init (killAfter only reaches unshare).
            let bound = Task { try await Task.sleep(for: .seconds(25)); kill(initPid, SIGKILL) }
            defer { bound.cancel() }
            // Orphaned in the namespace, as what a `docker exec` leaves running is.
            let (entered, enterOutput) = try await runToEnd("/usr/bin/nsenter", ["-t", String(initPid), "-p", "-m", "sh", "-c", "sleep 0.2 & exit 0"])
            try #require(entered == 0, "\(enterOutput)")
            #expect(await eventually(within: .seconds(10)) {
                let orphans = children(of: initPid).filter { (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8)) == "sleep\n" }
                return orphans.isEmpty
            }, "the orphan stayed a zombie of the namespace's init")
            #expect(kill(initPid, SIGTERM) == 0)
            let (status, _, stderr) = await run.finish()
            #expect(!run.timedOut && status == 128 + SIGTERM, "\(status): \(stderr)")
            #expect(try await values(of: "container", on: servers) == [nil])
        }
    }

    @Test("a command that stops itself (SIGTSTP) under a caller without a terminal (stdin not a tty; redlock in a process group of its own whose parent shares its session, so not orphaned) leaves the caller running: the command is killed at the deadline, 124 (before: the watchdog stopped redlock's whole group, which stayed stopped until its parent went away); one stopped by SIGSTOP is killed at the deadline too (before: renewed for good)", arguments: ["TSTP", "STOP"])
    func stopWithoutTerminal(_ stop: String) async throws {
        try await withRedisServers(1) { servers throws in
            let redlock = try builtExecutable("redlock").path
            let parent = """
            import os, subprocess, sys
            child = subprocess.Popen(sys.argv[1:], preexec_fn=lambda: os.setpgid(0, 0), stdin=subprocess.DEVNULL)
            try:
                print("rc=%d" % child.wait(timeout=15))
            except subprocess.TimeoutExpired:
                state = open("/proc/%d/stat" % child.pid).read().rsplit(")", 1)[1].split()[0]
                print("hung, state " + state)
                child.kill()
                child.wait()
            """
            let (status, output) = try await runToEnd("/usr/bin/python3", [
                "-c", parent, redlock, "run", "--nodes", nodeList(servers), "--name", "stopped-alone", "--ttl", "1s", "--",
                "sh", "-c", "kill -\(stop) $$; echo resumed",
            ])
            #expect(status == 0 && output.contains("rc=124") && !output.contains("resumed"), "\(output)")
            let named = stop == "STOP" ? "stopped by SIGSTOP (signal \(SIGSTOP))" : "stopped by job control (signal \(SIGTSTP))"
            #expect(output.contains(named), "\(output)")
            #expect(try await values(of: "stopped-alone", on: servers) == [nil])
        }
    }

    @Test("in a container whose init leads the process group (pgid 1: setsid as PID 1), a job-control stop of the command stops no other process (kill(-1) would stop them all): the command is killed at the deadline, 124; the init's child shows as redlock")
    func containerStopSignalsNoOne() async throws {
        try await withRedisServers(1) { servers throws in
            // The command stops itself once the test has its bystander (a file it makes): under
            // load, making the bystander could outlast a fixed sleep, and the run then ended first.
            let go = temporaryFile("group-one-go")
            let run = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--name", "group-one", "--ttl", "1s", "--",
                 "sh", "-c", "echo ready; while [ ! -e \(go) ]; do sleep 0.02; done; kill -TSTP $$; echo continued"],
                launcher: ["/usr/bin/unshare", "--pid", "--fork", "--mount-proc", "/usr/bin/setsid"], killAfter: .seconds(30)
            )
            #expect(await run.waitForLine(containing: "ready") != nil)
            let initPid = try #require(children(of: run.process.processIdentifier).first, "unshare started no child")
            let bound = Task { try await Task.sleep(for: .seconds(25)); kill(initPid, SIGKILL) }
            defer { bound.cancel() }
            let supervisor = try #require(children(of: initPid).first, "the init started no child")
            #expect((try? String(contentsOfFile: "/proc/\(supervisor)/comm", encoding: .utf8)) == "redlock\n")
            // Another process of the namespace, outside the command's tree, in a process group
            // of its own whose parent is in another group of its session (Foundation starts
            // nsenter in a session of its own): not orphaned, so a SIGTSTP would stop it.
            let bystander = Process()
            bystander.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
            bystander.arguments = [
                "-t", String(initPid), "-p", "-m", "python3", "-c",
                // (With no signal blocked or ignored: the test runner's mask is inherited.)
                "import os, signal\npid = os.fork()\nif pid == 0:\n    os.setpgid(0, 0)\n    signal.pthread_sigmask(signal.SIG_SETMASK, [])\n"
                    + "    signal.signal(signal.SIGTSTP, signal.SIG_DFL)\n    os.execvp('sleep', ['sleep', '30'])\nos.waitpid(pid, 0)",
            ]
            try bystander.run()
            defer { bystander.terminate() }
            let sleeper = await { () async -> Int32? in
                for _ in 0..<2500 {
                    if let python = children(of: bystander.processIdentifier).first, let pid = children(of: python).first,
                       (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) == "sleep\n" {
                        return pid
                    }
                    try? await Task.sleep(for: .milliseconds(2))
                }
                return nil
            }()
            let bystanderPid = try #require(sleeper, "nsenter started nothing")
            let watchdog = try #require(children(of: supervisor).first, "no watchdog")
            let command = try #require(children(of: watchdog).first, "no command")
            // The command (the watchdog's child) stops itself now.
            #expect(FileManager.default.createFile(atPath: go, contents: Data()))
            #expect(await eventually { processState(command) == "T" }, "the command did not stop")
            // The watchdog acts on the stop as it sees it; a kill(-1, SIGTSTP) would have stopped
            // the bystander within microseconds. Nothing to wait on for a signal that must not
            // come: watched for 200 ms.
            var bystanderStopped = false
            for _ in 0..<100 where !bystanderStopped {
                bystanderStopped = processState(bystanderPid) == "T"
                try await Task.sleep(for: .milliseconds(2))
            }
            #expect(!bystanderStopped, "a process outside the command's tree was stopped")
            let (status, stdout, stderr) = await run.finish()
            #expect(!run.timedOut && status == 124 && !stdout.contains("continued"), "\(status) \(stderr)")
            #expect(stderr.contains("stopped by job control (signal \(SIGTSTP))"), "\(stderr)")
        }
    }

    @Test("a resolver that never answers costs the connect timeout, not the resolver's own timeouts (a mount namespace of its own points resolv.conf at a silent loopback socket)")
    func silentResolver() async throws {
        let redlock = try builtExecutable("redlock")
        // A UDP socket on 127.0.0.77:53 that takes queries and never answers.
        let silent = socket(AF_INET, Int32(SOCK_DGRAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        try #require(silent >= 0)
        defer { close(silent) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.77")
        address.sin_port = in_port_t(UInt16(53).bigEndian)
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(silent, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0, "could not bind 127.0.0.77:53: \(String(cString: strerror(errno)))")
        let resolvConf = temporaryFile("resolv.conf")
        try "nameserver 127.0.0.77\noptions timeout:5 attempts:2\n".write(toFile: resolvConf, atomically: true, encoding: .utf8)
        let started = ContinuousClock.now
        let (status, stderr) = try await runToEnd("/usr/bin/unshare", [
            "-m", "/bin/sh", "-c", "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"", resolvConf,
            redlock.path, "run", "--nodes", "stalls.example:6379", "--name", "x", "--wait", "1s", "--", "true",
        ])
        let took = started.duration(to: .now)
        try #require(!stderr.contains("unshare:") && !stderr.contains("mount:"), "this machine cannot make a mount namespace: \(stderr)")
        #expect(status == 69, "\(stderr)")
        #expect(stderr.contains("resolving stalls.example timed out"), "\(stderr)")
        // The resolver alone would take 2 × 5 s per lookup.
        #expect(took < .seconds(6), "took \(took)")
    }

    @Test("an unknown host is reported as the resolver's error, exit 69, not as taken (in a network namespace of its own: no packet leaves)")
    func unknownHost() async throws {
        let redlock = try builtExecutable("redlock")
        let (status, stderr) = try await runToEnd("/usr/bin/unshare", [
            "-n", redlock.path, "run", "--nodes", "no-such-host.invalid:6379", "--name", "x", "--wait", "1s", "--", "true",
        ])
        try #require(!stderr.contains("unshare:"), "this machine cannot make a network namespace: \(stderr)")
        #expect(status == 69, "\(stderr)")
        #expect(stderr.contains("nameResolutionFailed: could not resolve no-such-host.invalid"), "\(stderr)")
        #expect(!stderr.contains("another holder"))
    }
}
