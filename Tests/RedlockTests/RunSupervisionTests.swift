import Foundation
import Redlock
import RedlockTestSupport
import RedlockTransport
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
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
    return state != "Z" && state != "X"
}

/// The latest `valid_until_boottime_ns=` that `redlock run --verbose` printed.
private func lastValidUntil(in stderr: String) -> Int64? {
    stderr.split(separator: "\n").compactMap { line -> Int64? in
        guard let range = line.range(of: "valid_until_boottime_ns=") else { return nil }
        return Int64(line[range.upperBound...].prefix { $0.isNumber })
    }.last
}

@Suite("redlock run supervises its command")
struct RunSupervisionTests {
    private func nodeList(_ servers: [RedisServer]) -> String {
        servers.map { "\($0.endpoint)" }.joined(separator: ",")
    }

    private func temporaryFile(_ label: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("swift-redlock-\(label)-\(UUID())").path
    }

    @Test("the command starts with an empty signal mask, default dispositions and only stdin, stdout and stderr")
    func cleanStart() async throws {
        try await withRedisServers(1) { servers throws in
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "clean", "--",
                                      "sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/$$/status; ls -1 /proc/$$/fd"])
            let (status, stdout, stderr) = await run.finish()
            #expect(status == 0, "stderr: \(stderr)")
            #expect(stdout.contains("SigBlk:\t0000000000000000"), "\(stdout)")
            #expect(stdout.contains("SigIgn:\t0000000000000000"), "\(stdout)")
            let descriptors = stdout.split(separator: "\n").filter { $0.allSatisfy(\.isNumber) }
            #expect(descriptors == ["0", "1", "2"], "\(stdout)")
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
            #expect(try await keyValues("group", on: servers) == [nil])
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
            defer { try? FileManager.default.removeItem(atPath: beats) }
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "lost", "--ttl", "1s", "--grace", "200ms",
                                      "--verbose", "--", worker, "heartbeat", "--file", beats, "--ignore-term"])
            #expect(await eventually(within: .seconds(20)) { Beats(file: beats).beats.count >= 2 })
            for server in servers { try await server.pause() }
            let (status, _, stderr) = await run.finish()
            let exitedAt = MachineClock.nowNanoseconds()
            for server in servers { try server.resume() }
            #expect(status == 124, "stderr: \(stderr)")
            let written = Beats(file: beats)
            let pid = try #require(written.pid)
            let lastBeat = try #require(written.beats.last)
            let validUntil = try #require(lastValidUntil(in: stderr), "stderr: \(stderr)")
            #expect(!isAlive(pid), "the command outlived redlock")
            #expect(lastBeat < validUntil, "the command ran \(Double(lastBeat - validUntil) / 1e6) ms past the lease's validity")
            #expect(lastBeat <= exitedAt)
            print("lease lost: the command's last beat was \(Double(validUntil - lastBeat) / 1e6) ms before validUntil")
        }
    }

    @Test(
        "a killed or stopped redlock does not orphan its command: the next holder's command never overlaps it",
        arguments: [SIGKILL, SIGSTOP]
    )
    func supervisorDies(signal: Int32) async throws {
        let worker = try builtExecutable("redlock-worker").path
        let trials = Int(ProcessInfo.processInfo.environment["REDLOCK_SUPERVISOR_TRIALS"] ?? "") ?? 20
        try await withRedisServers(3) { servers throws in
            var worstGap = Int64.max
            for trial in 0..<trials {
                let name = "orphan-\(signal)-\(trial)"
                let (first, second) = (temporaryFile("first"), temporaryFile("second"))
                defer { for file in [first, second] { try? FileManager.default.removeItem(atPath: file) } }
                let holder = try CommandRun(["run", "--nodes", nodeList(servers), "--name", name, "--ttl", "300ms", "--",
                                             worker, "heartbeat", "--file", first, "--duration-ms", "4000"])
                #expect(await eventually(within: .seconds(20)) { Beats(file: first).beats.count >= 2 })
                #expect(kill(holder.process.processIdentifier, signal) == 0)
                let next = try CommandRun(["run", "--nodes", nodeList(servers), "--name", name, "--wait", "10s", "--",
                                           worker, "heartbeat", "--file", second, "--duration-ms", "30"])
                let (status, _, stderr) = await next.finish()
                #expect(status == 0, "stderr: \(stderr)")
                if signal == SIGSTOP { _ = kill(holder.process.processIdentifier, SIGCONT) }
                let (holderStatus, _, holderErrors) = await holder.finish()
                if signal == SIGSTOP {
                    #expect(holderStatus == 124, "stderr: \(holderErrors)")
                } else {
                    #expect(holderStatus == SIGKILL && holder.process.terminationReason == .uncaughtSignal)
                }
                let (a, b) = (Beats(file: first), Beats(file: second))
                let aPid = try #require(a.pid)
                let (aLast, bFirst) = (try #require(a.beats.last), try #require(b.beats.first))
                #expect(!isAlive(aPid), "the first command is still running")
                #expect(aLast < bFirst, "trial \(trial): the two commands overlapped by \(Double(aLast - bFirst) / 1e6) ms")
                worstGap = min(worstGap, bFirst - aLast)
            }
            print("supervisor \(signal == SIGKILL ? "killed" : "stopped"): \(trials) trials, zero overlap, smallest gap \(Double(worstGap) / 1e6) ms")
        }
    }

    @Test("exit statuses say what happened: nodes down 69, credentials refused 77, bad grace 64, command not found 127")
    func exitStatuses() async throws {
        try await withRedisServers(1, arguments: ["--requirepass", "s3cret"]) { guarded throws in
            try await withRedisServers(1) { servers throws in
                let down = try await RedisServer.start()
                let downList = "\(down.endpoint)"
                await down.kill()

                let refused = try CommandRun(["run", "--nodes", downList, "--name", "x", "--wait", "500ms", "--", "true"])
                let (refusedStatus, _, refusedErrors) = await refused.finish()
                #expect(refusedStatus == 69, "\(refusedErrors)")
                #expect(refusedErrors.contains("refused") && !refusedErrors.contains("another holder"), "\(refusedErrors)")

                let port = guarded[0].port
                let wrongPassword = try CommandRun(["run", "--nodes", "redis://:wrong@127.0.0.1:\(port)", "--name", "x", "--wait", "5s", "--", "true"])
                let started = ContinuousClock.now
                let (authStatus, _, authErrors) = await wrongPassword.finish()
                #expect(authStatus == 77, "\(authErrors)")
                #expect(started.duration(to: .now) < .seconds(4), "a refused password is not retried for the whole --wait")

                let badGrace = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "x", "--ttl", "1s", "--grace", "600ms", "--", "true"])
                let (graceStatus, _, graceErrors) = await badGrace.finish()
                #expect(graceStatus == 64, "\(graceErrors)")
                #expect(graceErrors.contains("--grace"))

                let missing = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "missing", "--", "no-such-command-\(UUID())"])
                let (missingStatus, _, missingErrors) = await missing.finish()
                #expect(missingStatus == 127, "\(missingErrors)")
                #expect(missingErrors.contains("could not start"))
                #expect(try await keyValues("missing", on: servers) == [nil])
            }
        }
    }

    @Test("an unknown host is reported as the resolver's error, exit 69, not as taken (in a network namespace of its own: no packet leaves)")
    func unknownHost() async throws {
        let redlock = try builtExecutable("redlock")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        process.arguments = ["-n", redlock.path, "run", "--nodes", "no-such-host.invalid:6379", "--name", "x", "--wait", "1s", "--", "true"]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let stderr = await Task.detached { String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }.value
        process.waitUntilExit()
        try #require(!stderr.contains("unshare:"), "this machine cannot make a network namespace: \(stderr)")
        #expect(process.terminationStatus == 69, "\(stderr)")
        #expect(stderr.contains("nameResolutionFailed: could not resolve no-such-host.invalid"), "\(stderr)")
        #expect(!stderr.contains("another holder"))
    }
}
