import Foundation
import Redlock
import RedlockTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The library's guarantees seen from other processes: a paused process, a lease handed over as
/// JSON, `redlock doctor`'s exit status.
@Suite("Locks across processes")
struct ProcessTests {
    @Test("a whole process paused past its lease while the body works: withLock reports leaseLost, not the body's result")
    func processPaused() async throws {
        let worker = try builtExecutable("redlock-worker").path
        try await withRedisServers(3) { servers throws in
            let helper = try await HelperProcess.start(
                executable: worker,
                arguments: [
                    "scoped", "--nodes", servers.map { "\($0.endpoint)" }.joined(separator: ","), "--lock", "paused",
                    "--expiry-ms", "500", "--work-ms", "200", "--parent-pid", String(getpid()),
                ],
                readyMarker: "entered"
            )
            // The fault: the whole process stops (a GC-like stall, a debugger, a cgroup freeze)
            // for three lease lengths, body, extender and watcher alike.
            helper.signal(SIGSTOP)
            try await Task.sleep(for: .milliseconds(1_500))
            helper.signal(SIGCONT)
            #expect(await helper.waitUntilExited() == .exited(0), "\(helper.output)")
            #expect(helper.output.contains("outcome=leaseLost"), "\(helper.output)")
        }
    }

    @Test("a lease handed to another process as JSON is re-attached there with a new token, then released")
    func handoffAcrossProcesses() async throws {
        let worker = try builtExecutable("redlock-worker").path
        try await withLockNodes(3) { client, servers in
            var options = testOptions(expiry: .seconds(5))
            options.fencing = true
            let lease = try await client.makeLock("handoff", options: options).lock()
            let json = String(decoding: try JSONEncoder().encode(lease.handoff), as: UTF8.self)
            let nodes = servers.map { "\($0.endpoint)" }.joined(separator: ",")
            let other = try await HelperProcess.start(
                executable: worker,
                arguments: ["reattach", "--nodes", nodes, "--handoff", json, "--expiry-ms", "5000", "--fencing"],
                readyMarker: "released"
            )
            #expect(await other.waitUntilExited() == .exited(0), "\(other.output)")
            let line = try #require(other.output.split(separator: "\n").first { $0.hasPrefix("reattached ") })
            #expect(line.contains("value=\(lease.value) "), "\(line)")
            let token = line.split(separator: " ").first { $0.hasPrefix("token=") }.flatMap { Int64($0.dropFirst(6)) }
            #expect((token ?? 0) > (lease.fencingToken ?? .max), "\(line)")
            // The worker's unlock returned at its quorum; the last delete may land a moment later.
            let deadline = ContinuousClock.now + .seconds(5)
            while try await values(of: "handoff", on: servers).contains(where: { $0 != nil }), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(try await values(of: "handoff", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("redlock doctor exits 0 on a safe node, 1 with an unsafe one, and prints JSON with --json (the node set's verdict in it); it judges the node set as a whole (one node: no failure tolerated; two of three down: no quorum)")
    func command() async throws {
        try await withRedisServers(1, persistence: .appendOnlyFsyncAlways) { safe throws in
            try await withRedisServers(1) { plain throws in
                let healthy = try CommandRun(["doctor", "--nodes", "\(safe[0].endpoint)"])
                let (status, stdout, stderr) = await healthy.finish()
                #expect(status == 0, "\(stdout)\(stderr)")
                #expect(stdout.contains("pass    persistence"), "\(stdout)")
                // The node set as a whole: one node tolerates no failure.
                #expect(stdout.contains("warn    fleet: 1 node, a quorum of 1: 0 may fail"), "\(stdout)")
                let unsafe = try CommandRun(["doctor", "--nodes", "\(safe[0].endpoint),\(plain[0].endpoint)", "--json"])
                let (unsafeStatus, json, _) = await unsafe.finish()
                #expect(unsafeStatus == 1)
                let decoded = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
                let nodes = decoded?["nodes"] as? [[String: Any]]
                let checks = nodes?.last?["checks"] as? [[String: Any]]
                #expect(nodes?.count == 2, "\(json)")
                // The node facts the text gives in its checks' details.
                #expect(nodes?.allSatisfy { ($0["run_id"] as? String)?.count == 40 && $0["clock_offset_seconds"] is Double } == true, "\(json)")
                #expect(checks?.contains { $0["name"] as? String == "persistence" && $0["verdict"] as? String == "fail" } == true, "\(json)")
                // The node set's verdict is in the JSON too: two nodes tolerate no failure.
                let fleet = decoded?["fleet"] as? [String: Any]
                #expect(fleet?["verdict"] as? String == "warn" && fleet?["quorum"] as? Int == 2 && fleet?["tolerated"] as? Int == 0, "\(json)")
                // Three nodes, two of them down: no quorum can form.
                let down = try ClosedPort()
                let gone = try ClosedPort()
                let quorumless = try CommandRun(["doctor", "--nodes", "\(safe[0].endpoint),\(down.endpoint),\(gone.endpoint)"])
                let (quorumlessStatus, quorumlessOut, _) = await quorumless.finish()
                withExtendedLifetime((down, gone)) {}
                #expect(quorumlessStatus == 1)
                #expect(quorumlessOut.contains("fail    fleet: 3 nodes, a quorum of 2: 1 may fail; 2 cannot vote now (see reachable, state and permissions), so no quorum can form"), "\(quorumlessOut)")
            }
        }
        // Three nodes that answer, but whose user may run none of the lock's commands: no node
        // can grant (before: the fleet said warn, with none unusable).
        try await withRedisServers(3, arguments: ["--user", "nope", "on", ">pw", "~*", "-@all", "+ping"]) { servers throws in
            let nodes = servers.map { "redis://nope:pw@\($0.endpoint)" }.joined(separator: ",")
            let refused = try CommandRun(["doctor", "--nodes", nodes, "--json"])
            let (status, json, _) = await refused.finish()
            #expect(status == 1)
            let fleet = (try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["fleet"] as? [String: Any]
            #expect(fleet?["verdict"] as? String == "fail" && fleet?["unusable"] as? Int == 3, "\(json)")
        }
    }

    @Test("redlock doctor tells whether the guards let each node vote now: new nodes are young for --epoch-guard (no marker) and --restart-guard (up less than it), each a warn with the time left, and the fleet fails, exit 1, with how long until a quorum can vote (before: every check passed and it exited 0 while run exited 69); a marker older than the guard and an uptime past it pass; --epoch-guard makes a node without persistence a caveat; advice names the flags; --json gives null for what an unreachable node did not tell; a server listed twice is one distinct failure per name, no reachable one")
    func doctorGuardsVoteNow() async throws {
        try await withRedisServers(3) { servers throws in
            let started = ContinuousClock.now
            let nodes = servers.map { "\($0.endpoint)" }.joined(separator: ",")
            func doctor(_ arguments: [String]) async throws -> (Int32, [Substring], String) {
                let run = try CommandRun(["doctor", "--nodes", nodes] + arguments)
                let (status, stdout, _) = await run.finish()
                return (status, stdout.split(separator: "\n"), stdout)
            }
            func lines(_ output: [Substring], _ verdict: String, _ check: String, _ text: String) -> Int {
                output.filter { $0.hasPrefix("  \(verdict)") && $0.contains(" \(check): ") && $0.contains(text) }.count
            }
            let (epochStatus, epoch, epochText) = try await doctor(["--epoch-guard", "30s"])
            #expect(epochStatus == 1, "\(epochText)")
            #expect(lines(epoch, "warn", "epoch", "no marker yet") == 3, "\(epochText)")
            #expect(lines(epoch, "warn", "persistence", "the epoch guard keeps such a node out of votes") == 3, "\(epochText)")
            #expect(epoch.last?.hasPrefix("fail") == true && epoch.last?.contains("3 young for the guards") == true
                && epoch.last?.contains("for 30.0 s more") == true, "\(epochText)")

            let (restartStatus, restart, restartText) = try await doctor(["--restart-guard", "5s"])
            #expect(restartStatus == 1, "\(restartText)")
            #expect(lines(restart, "warn", "restart", "less than the restart guard") == 3, "\(restartText)")
            #expect(restart.last?.hasPrefix("fail") == true && restart.last?.contains("young for the guards") == true, "\(restartText)")
            // A restart guard shorter than --ttl (10 s) covers no restart without data: a failure,
            // whose advice names this command's flags.
            #expect(lines(restart, "fail", "persistence", "(use appendonly yes, appendfsync always, or --restart-guard or --epoch-guard)") == 3, "\(restartText)")

            // A marker a minute old (the nodes' clock is this machine's); an uptime past a short
            // guard: reported whole seconds, at least 2 three seconds after the start, whose
            // lower bound (a second and a tick less) is past 500 ms.
            let now = Int64(Date().timeIntervalSince1970 * 1_000)
            for server in servers { try await server.set("redlock:epoch", to: "\(now - 60_000) \(now)") }
            try await Task.sleep(until: started + .seconds(3), clock: .continuous)
            let (oldStatus, old, oldText) = try await doctor(["--epoch-guard", "30s", "--restart-guard", "500ms"])
            #expect(oldStatus == 0, "\(oldText)")
            #expect(lines(old, "pass", "epoch", "marker made 6") == 3 && lines(old, "pass", "restart", "past the restart guard") == 3, "\(oldText)")
            #expect(old.last?.hasPrefix("pass") == true, "\(oldText)")

            // JSON: every key of an unreachable node, null where not told.
            let gone = try freeLoopbackPort()
            let unreachable = try CommandRun(["doctor", "--nodes", nodes + ",127.0.0.1:\(gone)", "--json"])
            let (_, json, _) = await unreachable.finish()
            let report = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
            let last = (report?["nodes"] as? [[String: Any]])?.last
            #expect(last?["run_id"] is NSNull && last?["clock_offset_seconds"] is NSNull, "\(json)")

            // One server under two names: distinct fails for both names, reachable for neither.
            let twice = try CommandRun(["doctor", "--nodes", "127.0.0.1:\(servers[0].port),localhost:\(servers[0].port),\(servers[1].endpoint)"])
            let (_, twiceText, _) = await twice.finish()
            let twiceLines = twiceText.split(separator: "\n")
            #expect(lines(twiceLines, "fail", "distinct", "the same server as") == 2 && lines(twiceLines, "fail", "reachable", "") == 0, "\(twiceText)")
            // It votes once: of three listings, one cannot vote, and no more may fail (it said
            // "1 may fail").
            #expect(twiceLines.last?.hasPrefix("warn") == true && twiceLines.last?.contains("1 cannot vote now") == true
                && twiceLines.last?.contains("so 0 more may fail") == true, "\(twiceText)")
        }
    }

    @Test("redlock doctor checks what run's guards need (--epoch-guard, --clock-guard: TIME), and its usage errors, an empty place in the node list among them, point at its own help")
    func doctorGuardsAndUsage() async throws {
        try await withRedisServers(1, persistence: .appendOnlyFsyncAlways, arguments: ["--user", "timeless", "on", ">pw", "~*", "&*", "+@all", "-time"]) { servers throws in
            let node = "redis://timeless:pw@\(servers[0].endpoint)"
            let plain = try CommandRun(["doctor", "--nodes", node, "--fencing"])
            let (plainStatus, plainOut, _) = await plain.finish()
            // TIME is refused: the clock checks say so; no permission of an unguarded lock is missing.
            #expect(plainStatus == 0 && plainOut.contains("TIME was refused: NOPERM"), "\(plainOut)")
            for flags in [["--epoch-guard", "10s"], ["--clock-guard"]] {
                let guarded = try CommandRun(["doctor", "--nodes", node, "--fencing"] + flags)
                let (status, stdout, _) = await guarded.finish()
                let permissions = stdout.split(separator: "\n").first { $0.contains(" permissions: ") } ?? ""
                #expect(status == 1 && permissions.contains("fail") && permissions.contains("TIME"), "\(flags): \(stdout)")
            }
            for list in ["\(servers[0].endpoint),,\(servers[0].endpoint)", "\(servers[0].endpoint),", "\(node),\(node),"] {
                let empty = try CommandRun(["doctor", "--nodes", list])
                let (status, _, stderr) = await empty.finish()
                #expect(status == 64 && stderr.contains("empty place") && stderr.contains("redlock doctor --help"), "\(list): \(stderr)")
                // The list is quoted as errors quote addresses: not the URL's password.
                #expect(!stderr.contains(":pw@"), "\(list): \(stderr)")
            }
        }
    }
}
