import Foundation
import Redlock
import RedlockTestSupport
import Synchronization
import Testing

/// The `redlock` executable built next to the test bundle.
func builtExecutable(_ name: String) throws -> URL {
    let testBinary = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
    let candidate = testBinary.deletingLastPathComponent().appendingPathComponent(name)
    guard FileManager.default.isExecutableFile(atPath: candidate.path) else {
        throw CommandTestError("\(name) was not built next to \(testBinary.path)")
    }
    return candidate
}

struct CommandTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A running `redlock` process with its output collected.
final class CommandRun: Sendable {
    let process: Process
    private let output: Pipe
    private let errors: Pipe
    /// Whether the time limit given to ``init(_:environment:stderrFull:launcher:killAfter:)`` ran
    /// out with redlock still running (it was killed then).
    private let killedAtTimeLimit = Mutex(false)

    /// Starts `redlock` with `arguments`. Foundation starts it in a process group of its own,
    /// as a terminal starts a foreground job. With `stderrFull`, its stderr pipe is full before
    /// it starts (and read only once it exited: ``finish()``), as a stalled log shipper's is.
    /// `launcher`, when given, runs `redlock` (e.g. `["/usr/bin/nohup"]`), after `env` reset
    /// SIGHUP, SIGINT and SIGQUIT to their defaults. With `killAfter`,
    /// redlock is SIGKILLed when it still runs that long after its start (its watchdog then
    /// kills the command), so that a test waiting for its output cannot hang (``timedOut``).
    init(
        _ arguments: [String], environment: [String: String] = [:], stderrFull: Bool = false, launcher: [String] = [],
        killAfter limit: Duration? = nil
    ) throws {
        process = Process()
        let redlock = try builtExecutable("redlock")
        // redlock keeps SIGHUP, SIGINT and SIGQUIT ignored when it starts with them ignored: they
        // start at their defaults, whatever the test runner was started with (a script's `&`
        // ignores SIGINT and SIGQUIT), unless `launcher` ignores them.
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["--default-signal=HUP,INT,QUIT"] + launcher + [redlock.path] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        output = Pipe()
        errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        if stderrFull { try Self.fill(errors.fileHandleForWriting.fileDescriptor) }
        try process.run()
        if let limit {
            Task { [self] in
                try? await Task.sleep(for: limit)
                guard process.isRunning else { return }
                killedAtTimeLimit.withLock { $0 = true }
                kill(process.processIdentifier, SIGKILL)
            }
        }
    }

    /// Whether redlock was killed at the time limit (``init(_:environment:stderrFull:launcher:killAfter:)``).
    var timedOut: Bool { killedAtTimeLimit.withLock { $0 } }

    /// Writes to the pipe `fd` until it takes no more, and leaves it blocking again (the
    /// process inherits the pipe as it was).
    private static func fill(_ fd: Int32) throws {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else { throw CommandTestError("fcntl: \(errno)") }
        let chunk = [UInt8](repeating: UInt8(ascii: "."), count: 4_096)
        while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        guard errno == EAGAIN, fcntl(fd, F_SETFL, flags) == 0 else { throw CommandTestError("filling the pipe: \(errno)") }
    }

    /// Reads stdout until a line containing `marker` appears (the child says it is ready).
    func waitForLine(containing marker: String) async -> String? {
        await Self.read(output.fileHandleForReading, until: marker)
    }

    /// Reads stderr until a line containing `marker` appears; what was read is not returned by
    /// ``finish()``.
    func waitForErrorLine(containing marker: String) async -> String? {
        await Self.read(errors.fileHandleForReading, until: marker)
    }

    /// Reads `handle` on a thread of its own until what was read contains `marker`; nil at end
    /// of file before it.
    private static func read(_ handle: FileHandle, until marker: String) async -> String? {
        await Task.detached {
            var text = ""
            while !text.contains(marker) {
                let chunk = handle.availableData
                if chunk.isEmpty { return nil }
                text += String(decoding: chunk, as: UTF8.self)
            }
            return text
        }.value
    }

    /// Waits for exit; returns the status and everything printed.
    func finish() async -> (status: Int32, stdout: String, stderr: String) {
        let process = process
        let (out, err) = (output.fileHandleForReading, errors.fileHandleForReading)
        return await Task.detached {
            let stdout = String(decoding: out.readDataToEndOfFile(), as: UTF8.self)
            let stderr = String(decoding: err.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            return (process.terminationStatus, stdout, stderr)
        }.value
    }
}

@Suite("The redlock command")
struct CommandTests {
    private func nodeList(_ servers: [RedisServer]) -> String {
        servers.map { "\($0.endpoint)" }.joined(separator: ",")
    }

    @Test("run executes the command under the lock with its fencing token and exits with its status")
    func runsCommand() async throws {
        try await withRedisServers(3) { servers throws in
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "cron", "--",
                                      "sh", "-c", "echo token=$REDLOCK_FENCING_TOKEN; exit 3"])
            let (status, stdout, _) = await run.finish()
            #expect(status == 3)
            let token = stdout.split(separator: "=").last.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            #expect((token ?? 0) >= 1, "stdout: \(stdout)")
            #expect(try await values(of: "cron", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("run never waits for stderr: with stderr a full pipe nobody reads, its --verbose extension lines and the client's warning of a node stopped while the command runs (one of three; logged on the client's I/O thread when a command times out) are queued or dropped, not waited for; the lease holds, the command runs to its end, and its status is redlock's", .timeLimit(.minutes(1)))
    func stderrNobodyReads() async throws {
        try await withRedisServers(3) { servers throws in
            for verbose in [true, false] {
                let name = "unread-stderr-\(verbose)"
                let run = try CommandRun(
                    // --wait: an attempt's budget is 15 ms, which a loaded machine can miss.
                    ["run", "--nodes", nodeList(servers), "--name", name, "--ttl", "300ms", "--wait", "5s"] + (verbose ? ["--verbose"] : [])
                        + ["--", "sh", "-c", "echo ready; sleep 4; exit 7"],
                    stderrFull: true, killAfter: .seconds(20)
                )
                #expect(await run.waitForLine(containing: "ready") != nil)
                // A minority stopped while the lease is held: the extension's command to it times
                // out (the command timeout, 2 s) on the client's I/O thread, which logs the warning.
                try await servers[2].pause()
                // Before, a line waited for room and held up the extender or the client's I/O
                // thread: the lease was lost, and redlock never exited.
                let (status, _, stderr) = await run.finish()
                try servers[2].resume()
                #expect(!run.timedOut && status == 7, "verbose \(verbose): \(stderr.replacingOccurrences(of: ".", with: ""))")
                // (Node 2 missed the release: its key lives out its 300 ms.)
                #expect(try await values(of: name, on: Array(servers.prefix(2))).allSatisfy { $0 == nil })
            }
            // Read, stderr has the client's warning as swift-log's stream handler prints one.
            try await servers[2].pause()
            let read = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--name", "read-stderr", "--ttl", "300ms", "--wait", "5s", "--", "sleep", "2"], killAfter: .seconds(20)
            )
            let (status, _, stderr) = await read.finish()
            #expect(status == 0, "\(stderr)")
            let warning = stderr.split(separator: "\n").first { $0.contains("redlock node does not answer") }
            #expect(warning?.contains(" warning swift-redlock: ") == true && warning?.contains("endpoint=\(servers[2].endpoint)") == true, "\(stderr)")
            try servers[2].resume()
        }
    }

    @Test("run with rediss:// to a plain port and no --wait names the cause: the connect outlives the one attempt (its budget is half the connect timeout), so the node is asked again, which says the port speaks plain RESP")
    func tlsToPlainPortNamed() async throws {
        try await withRedisServers(1) { servers throws in
            let run = try CommandRun(["run", "--nodes", "rediss://\(servers[0].endpoint)", "--name", "tls-to-plain", "--", "true"], killAfter: .seconds(20))
            let (status, _, stderr) = await run.finish()
            #expect(!run.timedOut && status == 69, "\(stderr)")
            #expect(stderr.contains("asked again") && stderr.contains("use redis://"), "\(stderr)")
        }
    }

    @Test("a TLS file of the environment that cannot be read (missing, a directory) is a usage error naming the variable: exit 64 before any node is asked (before: 69, the node 'does not answer')", arguments: ["REDLOCK_TLS_CA_CERT", "REDLOCK_TLS_CERT", "REDLOCK_TLS_KEY"])
    func unreadableTLSFile(variable: String) async throws {
        for path in ["/nonexistent-\(UUID()).pem", FileManager.default.temporaryDirectory.path] {
            let run = try CommandRun(
                ["run", "--nodes", "rediss://127.0.0.1:1", "--name", "tls-files", "--", "echo", "ran"], environment: [variable: path], killAfter: .seconds(20)
            )
            let (status, stdout, stderr) = await run.finish()
            #expect(status == 64 && stderr.contains("\(variable)=\(path): ") && !stdout.contains("ran"), "\(path): \(status) \(stderr)")
        }
    }

    @Test("TLS files of the environment that can be read but do not load (no certificate in the CA file, a client key that is not the certificate's, a key without a certificate, an encrypted key), or that are pipes, and a server name that cannot serve are a usage error naming the variables: exit 64 before any node is asked (before: 69, each node's TLS failure as no quorum)")
    func malformedTLSFiles() async throws {
        let certificates = try await TLSCertificates.generate()
        defer { certificates.remove() }
        let garbage = certificates.directory + "/garbage.pem"
        try Data("not a certificate\n".utf8).write(to: URL(fileURLWithPath: garbage))
        let fifo = certificates.directory + "/ca-fifo.pem"
        #expect(mkfifo(fifo, 0o600) == 0)
        let cases: [([String: String], String)] = [
            (["REDLOCK_TLS_CA_CERT": garbage], "REDLOCK_TLS_CA_CERT: could not load the CA certificates from \(garbage)"),
            (["REDLOCK_TLS_CA_CERT": certificates.ca.certificate, "REDLOCK_TLS_CERT": certificates.client.certificate,
              "REDLOCK_TLS_KEY": certificates.server.key], "REDLOCK_TLS_CA_CERT, REDLOCK_TLS_CERT, REDLOCK_TLS_KEY: could not load the client key \(certificates.server.key)"),
            (["REDLOCK_TLS_KEY": certificates.client.key], "REDLOCK_TLS_KEY: a client key (\(certificates.client.key)) needs a client certificate"),
            // No passphrase prompt (it waited on a terminal for good, or printed one and failed
            // with a UI error elsewhere).
            (["REDLOCK_TLS_CERT": certificates.client.certificate, "REDLOCK_TLS_KEY": certificates.encryptedClientKey],
             "REDLOCK_TLS_CERT, REDLOCK_TLS_KEY: the client key \(certificates.encryptedClientKey) is encrypted"),
            // A FIFO without a writer: the check does not wait on it; and a pipe's bytes would
            // reach the first connection only.
            (["REDLOCK_TLS_CA_CERT": fifo], "REDLOCK_TLS_CA_CERT=\(fifo): not a regular file"),
            // Each node's handshake failed on it (69).
            (["REDLOCK_TLS_SERVER_NAME": String(repeating: "a", count: 300)], "REDLOCK_TLS_SERVER_NAME: the server name"),
            (["REDLOCK_TLS_SERVER_NAME": String(repeating: "a", count: 300)], "is 300 bytes long: a DNS name holds at most 253"),
            // OpenSSL reads a leading dot as any name under the domain (accepted before).
            (["REDLOCK_TLS_SERVER_NAME": ".example"], "REDLOCK_TLS_SERVER_NAME: the server name \".example\" starts with a dot"),
        ]
        for (environment, message) in cases {
            let run = try CommandRun(
                ["run", "--nodes", "rediss://127.0.0.1:1", "--name", "tls-files", "--", "echo", "ran"], environment: environment, killAfter: .seconds(20)
            )
            let (status, stdout, stderr) = await run.finish()
            #expect(status == 64 && stderr.contains(message) && !stdout.contains("ran"), "\(environment): \(status) \(stderr)")
        }
    }

    @Test("a plain TCP node among TLS ones, or while TLS settings are set in the environment, is a usage error naming the node (before: it ran in clear, telling nothing); Unix sockets are not; white space around a TLS variable's value is not part of it; a misspelt REDLOCK_TLS_ variable is a usage error")
    func plainNodeAmongTLS() async throws {
        let certificates = try await TLSCertificates.generate()
        defer { certificates.remove() }
        let refused: [([String], [String: String], String)] = [
            (["rediss://127.0.0.1:1", "redis://127.0.0.1:2", "127.0.0.1:3"], [:],
             "node 1 (127.0.0.1:2) is plain TCP, but node 0 (127.0.0.1:1) uses TLS: write it rediss://… for TLS (and node 2)"),
            (["rediss://127.0.0.1:1", "redis://127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"], [:], "for TLS (and nodes 2, 3)"),
            // Only white space: not set, so not a reason; a server name at fault is named alone,
            // and a URL pasted in its place is not echoed with its password.
            (["127.0.0.1:2"], ["REDLOCK_TLS_CA_CERT": certificates.ca.certificate, "REDLOCK_TLS_SERVER_NAME": " \n"],
             "but REDLOCK_TLS_CA_CERT is set:"),
            (["rediss://127.0.0.1:1"], ["REDLOCK_TLS_CA_CERT": certificates.ca.certificate, "REDLOCK_TLS_SERVER_NAME": "rediss://:hunter2@cache.example:6380"],
             "REDLOCK_TLS_SERVER_NAME: the server name \"rediss://…\" holds"),
            (["redis://127.0.0.1:2"], ["REDLOCK_TLS_CA_CERT": certificates.ca.certificate],
             "node 0 (127.0.0.1:2) is plain TCP, but REDLOCK_TLS_CA_CERT is set: write it rediss://… for TLS, or unset REDLOCK_TLS_CA_CERT if no node is to use TLS"),
            // A misspelt TLS variable (it ran in clear, the setting left out).
            (["127.0.0.1:2"], ["REDLOCK_TLS_CACERT": certificates.ca.certificate],
             "REDLOCK_TLS_CACERT is not a variable redlock reads: TLS settings come from REDLOCK_TLS_CA_CERT, REDLOCK_TLS_CERT, REDLOCK_TLS_KEY, REDLOCK_TLS_SERVER_NAME"),
            (["127.0.0.1:2", "unix:///nonexistent/redis.sock"], ["REDLOCK_TLS_CERT": certificates.client.certificate, "REDLOCK_TLS_KEY": certificates.client.key],
             "node 0 (127.0.0.1:2) is plain TCP, but REDLOCK_TLS_CERT, REDLOCK_TLS_KEY are set"),
        ]
        for (nodes, environment, message) in refused {
            let run = try CommandRun(["run", "--nodes", nodes.joined(separator: ","), "--name", "mixed", "--", "echo", "ran"], environment: environment, killAfter: .seconds(20))
            let (status, stdout, stderr) = await run.finish()
            #expect(status == 64 && stderr.contains(message) && !stdout.contains("ran") && !stderr.contains("hunter2"), "\(nodes): \(status) \(stderr)")
        }
        // Past the checks: nobody listens, so no quorum (69).
        let allowed: [([String], [String: String])] = [
            (["rediss://127.0.0.1:1", "unix:///nonexistent/redis.sock"], [:]),
            (["rediss://127.0.0.1:1"], ["REDLOCK_TLS_SERVER_NAME": "localhost\n", "REDLOCK_TLS_CA_CERT": certificates.ca.certificate + "\n"]),
            (["rediss://127.0.0.1:1"], ["REDLOCK_TLS_CACERT": " "]),
            (["127.0.0.1:1", "unix:///nonexistent/redis.sock"], [:]),
        ]
        for (nodes, environment) in allowed {
            let run = try CommandRun(["run", "--nodes", nodes.joined(separator: ","), "--name", "mixed", "--", "echo", "ran"], environment: environment, killAfter: .seconds(20))
            let (status, _, stderr) = await run.finish()
            #expect(status == 69, "\(nodes): \(status) \(stderr)")
        }
    }

    @Test("redlock run over two mutual-TLS nodes takes every REDLOCK_TLS_ setting to each node (a quorum of 2 needs both): the CA, the client certificate and key, the server name, white space around them dropped; without the client certificate the nodes refuse it")
    func runOverMutualTLS() async throws {
        let certificates = try await TLSCertificates.generate()
        defer { certificates.remove() }
        var servers: [RedisServer] = []
        do {
            for _ in 0..<2 {
                servers.append(try await RedisServer.start(tls: .init(certificates: certificates, clientAuthentication: .required)))
            }
        } catch {
            for server in servers { await server.terminate() }
            throw error
        }
        let nodes = servers.map { "rediss://127.0.0.1:\($0.port)" }.joined(separator: ",")
        let settings = [
            "REDLOCK_TLS_CA_CERT": certificates.ca.certificate + "\n", "REDLOCK_TLS_CERT": " " + certificates.client.certificate,
            "REDLOCK_TLS_KEY": certificates.client.key, "REDLOCK_TLS_SERVER_NAME": "localhost\n",
        ]
        let run = try CommandRun(["run", "--nodes", nodes, "--name", "tls-run", "--", "echo", "ran"], environment: settings, killAfter: .seconds(20))
        let (status, stdout, stderr) = await run.finish()
        let refused = try CommandRun(
            ["run", "--nodes", nodes, "--name", "tls-run", "--", "echo", "ran"],
            environment: settings.filter { $0.key != "REDLOCK_TLS_CERT" && $0.key != "REDLOCK_TLS_KEY" }, killAfter: .seconds(20)
        )
        let (refusedStatus, refusedOutput, refusedErrors) = await refused.finish()
        for server in servers { await server.terminate() }
        #expect(status == 0 && stdout.contains("ran"), "\(status): \(stderr)")
        #expect(refusedStatus != 0 && !refusedOutput.contains("ran") && refusedErrors.contains("certificate required"), "\(refusedStatus): \(refusedErrors)")
    }

    @Test("REDLOCK_LOG_LEVEL sets the lowest level of the client's log lines redlock prints: by default a node that does not answer is a warning line before the command's output; at error or none a run that gets its quorum prints nothing on stderr, and a failed one its last line only; case and surrounding white space do not matter; a value that is no level is exit 64 naming the levels, and --help still works", .timeLimit(.minutes(1)))
    func logLevelFromEnvironment() async throws {
        try await withRedisServers(2) { servers in
            let refusing = try ClosedPort()
            let nodes = servers.map { "\($0.endpoint)" } + [refusing.endpoint]
            let list = nodes.joined(separator: ",")
            for level in ["", " Warning\n", "error", "NONE"] {
                let run = try CommandRun(["run", "--nodes", list, "--name", "log-level", "--", "echo", "ran"],
                                         environment: ["REDLOCK_LOG_LEVEL": level], killAfter: .seconds(20))
                let (status, stdout, stderr) = await run.finish()
                #expect(status == 0 && stdout.contains("ran"), "\(level): \(status) \(stderr)")
                let warned = stderr.contains("warning") && stderr.contains(refusing.endpoint)
                #expect(warned == (level == "" || level == " Warning\n"), "\(level): \(stderr)")
                if !warned { #expect(stderr.isEmpty, "\(level): \(stderr)") }
            }
            // Two nodes refusing: no quorum; its last line is redlock's own, at any level.
            let another = try ClosedPort()
            let failed = try CommandRun(["run", "--nodes", "\(servers[0].endpoint),\(refusing.endpoint),\(another.endpoint)",
                                         "--name", "log-level", "--", "echo", "ran"],
                                        environment: ["REDLOCK_LOG_LEVEL": "none"], killAfter: .seconds(20))
            let (status, _, stderr) = await failed.finish()
            let lines = stderr.split(separator: "\n")
            #expect(status == 69 && lines.count == 1 && lines.first?.hasPrefix("redlock: could not acquire the lock") == true, "\(status): \(stderr)")
        }
        let bad = try CommandRun(["run", "--nodes", "127.0.0.1:1", "--name", "log-level", "--", "echo", "ran"],
                                 environment: ["REDLOCK_LOG_LEVEL": "verbose"], killAfter: .seconds(20))
        let (status, stdout, stderr) = await bad.finish()
        #expect(status == 64 && !stdout.contains("ran") && stderr.contains("REDLOCK_LOG_LEVEL=\"verbose\" is not a level: give one of trace, debug, info, notice, warning, error, critical, none"), "\(status): \(stderr)")
        // The help that documents the variable is shown all the same.
        let help = try CommandRun(["run", "--help"], environment: ["REDLOCK_LOG_LEVEL": "verbose"], killAfter: .seconds(20))
        let (helpStatus, helpText, _) = await help.finish()
        #expect(helpStatus == 0 && helpText.contains("REDLOCK_LOG_LEVEL"), "\(helpStatus): \(helpText)")
    }

    @Test("SIGTERM, SIGINT or SIGHUP (a closed terminal) to redlock bench while it measures: it stops every node and worker process it started (none left running) and removes its files, and exits 128 + the signal, as a shell reports it, with a TMPDIR too long for a socket path (before: 1 and 'Error: …: cancelled' when a node command was under way; in the worker processes' phase, workers outlived it and its directory stayed; on SIGHUP, its nodes and directories stayed)", arguments: [
        (SIGTERM, "Measuring floor"), (SIGINT, "worker processes contending"), (SIGHUP, "Measuring floor"),
    ])
    func benchInterrupted(signal: Int32, phase: String) async throws {
        // A TMPDIR too long for a Unix socket address in it (the nodes' sockets then go to /tmp;
        // before, no node started: "unix socket path too long").
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("bench-\(UUID())-\(String(repeating: "x", count: 60))").path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let bench = try CommandRun(["bench", "--node-count", "1", "--duration", "0.2"], environment: ["TMPDIR": scratch], killAfter: .seconds(120))
        let measuring = await bench.waitForErrorLine(containing: phase)
        #expect(measuring != nil)
        let started = Self.descendants(of: bench.process.processIdentifier)
        #expect(started.contains { $0.name == "redis-server" }, "\(started)")
        #expect(kill(bench.process.processIdentifier, signal) == 0)
        let (status, _, stderr) = await bench.finish()
        #expect(!bench.timedOut && status == 128 + signal, "\(status): \(stderr)")
        #expect(stderr.contains("Stopped every node the bench started."), "\(stderr)")
        // It reaped them: no such process any more (not even a zombie left to init).
        for process in started {
            #expect(kill(process.pid, 0) == -1 && errno == ESRCH, "\(process) still there")
        }
        #expect((try? FileManager.default.contentsOfDirectory(atPath: scratch)) == [], "left in TMPDIR")
    }

    /// The processes below `pid` still running (``runningDescendants(of:)``), with their names.
    private static func descendants(of pid: pid_t) -> [(pid: pid_t, name: String)] {
        runningDescendants(of: pid).map { child in
            let name = (try? String(contentsOfFile: "/proc/\(child)/comm", encoding: .utf8)) ?? ""
            return (child, name.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    @Test("a SIGINT while run asks a silent node again, after a failed acquire, cuts that short: exit 130, the failure printed, no answer reported (without the cut, the node is asked for its command timeout and the run exits 69)")
    func interruptedDiagnosis() async throws {
        try await withRedisServers(1) { servers throws in
            try await servers[0].pause()
            // The shortest lease: the attempt's budget (10 ms) ends long before the connect's
            // handshake times out (seconds), which the diagnosis waits for.
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "diagnosis", "--ttl", "200ms", "--", "true"], killAfter: .seconds(20))
            let failed = await run.waitForErrorLine(containing: "could not acquire")
            #expect(failed != nil)
            #expect(kill(run.process.processIdentifier, SIGINT) == 0)
            let (status, _, rest) = await run.finish()
            try servers[0].resume()
            let stderr = (failed ?? "") + rest
            #expect(!run.timedOut && status == 128 + SIGINT, "\(status): \(stderr)")
            #expect(stderr.contains("interrupted by signal \(SIGINT) while asking the silent nodes again"), "\(stderr)")
            #expect(!stderr.contains("asked again"), "\(stderr)")
        }
    }

    @Test("bytes that are not UTF-8 reach the command as given, in its arguments and its environment; in redlock's own arguments (a lock name) they are a usage error (64), not a name that decodes like another")
    func bytesNotText() async throws {
        try await withRedisServers(1) { servers throws in
            // sh puts the byte 0xE9 (Latin-1 é) in LATIN and after redlock's arguments.
            let appendingLatin1 = ["/bin/sh", "-c", #"LATIN=$(printf 'caf\351'); export LATIN; exec "$@" "$LATIN""#, "sh"]
            let passed = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--name", "bytes", "--",
                 "sh", "-c", #"printf %s "$1" | od -An -tx1; printf %s "$LATIN" | od -An -tx1"#, "sh"],
                launcher: appendingLatin1
            )
            let (status, stdout, stderr) = await passed.finish()
            #expect(status == 0, "\(stderr)")
            // Without the bytes passed on: 63 61 66 ef bf bd (U+FFFD) in both.
            #expect(stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) } == ["63 61 66 e9", "63 61 66 e9"], "\(stdout)")

            let named = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--", "true"],
                launcher: ["/bin/sh", "-c", #"exec "$1" "$2" "$3" "$4" --name "$(printf 'job-\351')" "$5" "$6""#, "sh"]
            )
            let (nameStatus, _, nameErrors) = await named.finish()
            #expect(nameStatus == 64 && nameErrors.contains("is not valid UTF-8"), "\(nameStatus): \(nameErrors)")
        }
    }

    @Test("run takes its nodes from REDLOCK_NODES and does not pass them on: the command's environment has no node list (its URLs may carry passwords)")
    func nodesStayWithRedlock() async throws {
        try await withRedisServers(3) { servers throws in
            let list = servers.map { "redis://default:secret@\($0.endpoint)" }.joined(separator: ",")
            let run = try CommandRun(
                ["run", "--name", "env", "--", "sh", "-c", "echo nodes=${REDLOCK_NODES-unset} token=${REDLOCK_FENCING_TOKEN-unset}"],
                environment: ["REDLOCK_NODES": list]
            )
            let (status, stdout, stderr) = await run.finish()
            #expect(status == 0, "\(stderr)")
            #expect(stdout.contains("nodes=unset"), "stdout: \(stdout)")
            #expect(!stdout.contains("secret") && !stdout.contains("token=unset"), "stdout: \(stdout)")
        }
    }

    @Test("run exits 75 without running the command when the lock is held past --wait", .timeLimit(.minutes(1)))
    func lockUnavailable() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("busy", options: testOptions())
            let lease = try await lock.lock()
            let marker = FileManager.default.temporaryDirectory.appendingPathComponent("redlock-ran-\(UUID())").path
            let started = ContinuousClock.now
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "busy", "--wait", "300ms", "--",
                                      "touch", marker])
            let (status, _, stderr) = await run.finish()
            #expect(status == 75)
            #expect(stderr.contains("could not acquire"))
            #expect(started.duration(to: .now) < .seconds(10))
            #expect(!FileManager.default.fileExists(atPath: marker))
            try await lock.unlock(lease)
        }
    }

    @Test("run waits for a holder's release within --wait, and reads nodes from REDLOCK_NODES")
    func waitsForRelease() async throws {
        try await withLockNodes(3) { client, servers in
            let lock = try client.makeLock("queued", options: testOptions())
            let lease = try await lock.lock()
            let run = try CommandRun(["run", "--name", "queued", "--wait", "20s", "--", "true"],
                                     environment: ["REDLOCK_NODES": nodeList(servers)])
            try await Task.sleep(for: .milliseconds(300))
            try await lock.unlock(lease)
            let (status, _, stderr) = await run.finish()
            #expect(status == 0, "stderr: \(stderr)")
        }
    }

    @Test("run keeps the lock for a command that outlives the ttl, and forwards SIGTERM to it")
    func extendsAndForwardsSignals() async throws {
        try await withLockNodes(3) { client, servers in
            let run = try CommandRun(["run", "--nodes", nodeList(servers), "--name", "long", "--ttl", "1s", "--",
                                      "sh", "-c", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"])
            let ready = await run.waitForLine(containing: "ready")
            #expect(ready != nil)
            // Two and a half ttls later the lock is still held: the lease is being extended.
            try await Task.sleep(for: .milliseconds(2_500))
            let other = try client.makeLock("long", options: testOptions())
            let error = await #expect(throws: RedlockError.self) { try await other.tryLock() }
            #expect(error?.code == .taken)
            run.process.terminate()
            let (status, _, _) = await run.finish()
            #expect(status == 42)
            #expect(try await values(of: "long", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("run rejects a bad node list or missing command with a usage error")
    func usageErrors() async throws {
        let badNodes = try CommandRun(["run", "--nodes", "host:notaport", "--name", "x", "--", "true"])
        let (status, _, stderr) = await badNodes.finish()
        #expect(status == 64)
        #expect(stderr.contains("'host:notaport': the port is not a number"), "\(stderr)")
        let noCommand = try CommandRun(["run", "--nodes", "127.0.0.1:1", "--name", "x"])
        #expect(await noCommand.finish().status == 64)
        let badDuration = try CommandRun(["run", "--nodes", "127.0.0.1:1", "--name", "x", "--ttl", "soon", "--", "true"])
        #expect(await badDuration.finish().status == 64)
    }

    @Test("run takes a mistyped or misplaced option for what it is, not for the command: 64 before any lock is taken (before: the lock was taken, the fencing counter raised, and 127 for '--tll' not found); --help anywhere before -- is help; after --, an argument that looks like an option is the command's; one server under two names is a usage error too")
    func unknownOptionIsUsage() async throws {
        try await withRedisServers(1) { servers throws in
            let node = "\(servers[0].endpoint)"
            for typo in [["--tll", "5s"], ["-x"], ["--bogus"]] {
                let run = try CommandRun(["run", "--nodes", node, "--name", "typo"] + typo + ["--", "sh", "-c", "echo ran"])
                let (status, stdout, stderr) = await run.finish()
                #expect(status == 64 && stderr.contains("unknown option '\(typo[0])'") && !stdout.contains("ran"), "\(typo): \(status) \(stderr)")
            }
            // Nothing was written: no lock key, no fencing counter.
            #expect(try await values(of: "typo", on: servers) == [nil])
            #expect(try await values(of: "redlock:fence", on: servers) == [nil])
            let help = try CommandRun(["run", "--nodes", node, "--name", "typo", "--help"])
            let (helpStatus, helpOut, _) = await help.finish()
            #expect(helpStatus == 0 && helpOut.contains("Run a command while holding a lock"), "\(helpOut)")
            // After --, the command's own: sh -c with a script named like an option.
            let explicit = try CommandRun(["run", "--nodes", node, "--name", "typo", "--", "sh", "-c", "echo ran", "--tll"])
            let (explicitStatus, explicitOut, _) = await explicit.finish()
            #expect(explicitStatus == 0 && explicitOut.contains("ran"))
            // One server under two names is the configuration too: 64 (before: 69, which
            // schedulers retry).
            let twice = try CommandRun(["run", "--nodes", "127.0.0.1:\(servers[0].port),localhost:\(servers[0].port)", "--name", "twice", "--", "true"])
            let (twiceStatus, _, twiceErrors) = await twice.finish()
            #expect(twiceStatus == 64 && twiceErrors.contains("invalidAddress"), "\(twiceStatus): \(twiceErrors)")
            // But when the other nodes' failures alone leave no quorum, those decide: 69.
            let closed = [try ClosedPort(), try ClosedPort(), try ClosedPort()]
            let gone = closed.map(\.endpoint)
            let downToo = try CommandRun(["run", "--nodes", (["127.0.0.1:\(servers[0].port)", "localhost:\(servers[0].port)"] + gone).joined(separator: ","), "--name", "twice", "--", "true"])
            let (downStatus, _, downErrors) = await downToo.finish()
            #expect(downStatus == 69, "\(downStatus): \(downErrors)")
            // Each node's answer is waited for (within the attempt's budget): a stopped one gives
            // none, so the others' failures alone leave no quorum: 69 (before, with fail-fast,
            // the refusals decided without it: 64, as if it had granted; with a refused node in
            // its place, 64 or 69 by which answer came first).
            let stalled = try await RedisServer.start()
            try await stalled.pause()
            let unsettled = try CommandRun(
                ["run", "--nodes", (["127.0.0.1:\(servers[0].port)", "localhost:\(servers[0].port)"] + gone.prefix(2) + ["\(stalled.endpoint)"]).joined(separator: ","),
                 "--name", "twice", "--", "true"],
                killAfter: .seconds(20)
            )
            let (unsettledStatus, _, unsettledErrors) = await unsettled.finish()
            try stalled.resume()
            await stalled.terminate()
            #expect(unsettledStatus == 69 && unsettledErrors.contains("no answer within the attempt's time budget"), "\(unsettledStatus): \(unsettledErrors)")
            // The closed ports are held (refusing, and no one else's) until here.
            withExtendedLifetime(closed) {}
        }
    }

    @Test("run's exit status does not hang on which node answers first: held on a quorum with two of five nodes down is 75, credentials refused with the two other nodes down is 77, each time (before: the down nodes' refusals, which come first, decided the attempt before the others answered: 69)")
    func exitStatusIndependentOfAnswerOrder() async throws {
        let down = [try ClosedPort(), try ClosedPort()]
        try await withRedisServers(3) { servers throws in
            for server in servers { try await server.set("held-elsewhere", to: "another holder", expiry: .seconds(60)) }
            let nodes = (servers.map { "\($0.endpoint)" } + down.map(\.endpoint)).joined(separator: ",")
            for _ in 0..<5 {
                let run = try CommandRun(["run", "--nodes", nodes, "--name", "held-elsewhere", "--", "true"], killAfter: .seconds(20))
                let (status, _, errors) = await run.finish()
                #expect(status == 75, "\(status): \(errors)")
            }
        }
        try await withRedisServers(1, arguments: ["--requirepass", "s3cret"]) { guarded throws in
            let nodes = (["redis://:wrong@\(guarded[0].endpoint)"] + down.map(\.endpoint)).joined(separator: ",")
            for _ in 0..<5 {
                let run = try CommandRun(["run", "--nodes", nodes, "--name", "refused", "--", "true"], killAfter: .seconds(20))
                let (status, _, errors) = await run.finish()
                #expect(status == 77, "\(status): \(errors)")
            }
        }
        withExtendedLifetime(down) {}
    }

    @Test("a password with a comma works in REDLOCK_NODES; a mistyped URL is quoted without its password")
    func passwordsInNodeLists() async throws {
        try await withRedisServers(1, arguments: ["--requirepass", "s3cr,et"]) { servers throws in
            let port = servers[0].port
            let run = try CommandRun(["run", "--name", "comma", "--", "true"], environment: ["REDLOCK_NODES": "redis://:s3cr,et@127.0.0.1:\(port)"])
            let (status, _, stderr) = await run.finish()
            #expect(status == 0, "\(stderr)")
            // Commas that part nodes stay partings: a unix path with an @, a URL that is whole.
            let unixPath = FileManager.default.temporaryDirectory.appendingPathComponent("run@a-\(UUID()).sock").path
            let twoNodes = try CommandRun(["doctor", "--nodes", "redis://127.0.0.1:\(port),unix:\(unixPath)"])
            let (_, twoOut, twoErrors) = await twoNodes.finish()
            #expect(twoOut.contains("node 1 (unix:\(unixPath))"), "\(twoOut) \(twoErrors)")
            // A password with a comma whose first part reads as a host (and port) alone.
            for password in ["ab,cd", "123,456"] {
                let run = try CommandRun(["run", "--name", "comma", "--", "true"], environment: ["REDLOCK_NODES": "redis://default:\(password)@127.0.0.1:\(port)"])
                let (status, _, errors) = await run.finish()
                #expect(status == 77, "\(password): \(errors)")
            }
            for typo in ["redis://locker:hunter2", "redis:/locker:hunter2@127.0.0.1:\(port)", "locker:hunter2@127.0.0.1:\(port)", "redis://locker:hun,ter2"] {
                let mistyped = try CommandRun(["run", "--name", "typo", "--", "true"], environment: ["REDLOCK_NODES": typo])
                let (typoStatus, stdout, typoErrors) = await mistyped.finish()
                #expect(typoStatus == 64, "\(typo): \(typoErrors)")
                #expect(!(stdout + typoErrors).contains("hunter2") && !(stdout + typoErrors).contains("hun"), "\(typo): \(typoErrors)")
            }
        }
    }

    @Test("a command that ends on its own while redlock is stopped past the scope's deadline keeps its exit status (all of it ran protected), and says so; before: 124, and a message that its work was not protected")
    func endedWhileSupervisorStopped() async throws {
        try await withRedisServers(3) { servers throws in
            let run = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--name", "ended-alone", "--ttl", "2s", "--", "sh", "-c", "echo started; sleep 0.3; exit 3"],
                killAfter: .seconds(30)
            )
            #expect(await run.waitForLine(containing: "started") != nil)
            #expect(kill(run.process.processIdentifier, SIGSTOP) == 0)
            // The fault: redlock stopped past the scope's deadline (the validity, 1.98 s from
            // the acquire, less grace and margin, 0.6 s: 1.38 s), not past the validity: the
            // extension sent on resume finds the keys still there (past the validity it may
            // find them expired before the deadline's watch fires, and a node that says the
            // keys are gone makes the run 124, the cautious answer).
            try await Task.sleep(for: .milliseconds(1_700))
            #expect(kill(run.process.processIdentifier, SIGCONT) == 0)
            let (status, _, stderr) = await run.finish()
            #expect(!run.timedOut && status == 3, "\(status): \(stderr)")
            #expect(stderr.contains("the command ended on its own") && stderr.contains("its status stands"), "\(stderr)")
            #expect(try await values(of: "ended-alone", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("host names that do not resolve are tried again within --wait (a node's DNS record may come after an init container starts): exit 69 once it has passed; before, 69 at once")
    func unresolvedNamesWithinWait() async throws {
        try await withRedisServers(1) { servers throws in
            let started = ContinuousClock.now
            let run = try CommandRun(
                ["run", "--nodes", "nosuch-a.invalid:6379,nosuch-b.invalid:6379,\(servers[0].endpoint)", "--name", "unresolved", "--wait", "1500ms", "--", "true"],
                killAfter: .seconds(30)
            )
            let (status, _, stderr) = await run.finish()
            let took = started.duration(to: .now)
            #expect(!run.timedOut && status == 69, "\(status): \(stderr)")
            #expect(took >= .milliseconds(1_450), "gave up after \(took): \(stderr)")
            // Where the resolver says the names do not exist (not only that it could not ask).
            if stderr.contains("Name or service not known") {
                #expect(stderr.contains("the host name does not resolve (yet); trying again within --wait"), "\(stderr)")
            }
            #expect(try await values(of: "unresolved", on: servers) == [nil])
        }
    }

    @Test("too few file descriptors is exit 71, this machine's error, naming ulimit -n, refused at the start under 32: before, 69 (as if the nodes had failed) or 71 from a watchdog that could not start, the command's lock taken first")
    func outOfDescriptors() async throws {
        try await withRedisServers(3) { servers throws in
            // (Under 6, Dispatch traps as the process starts, before any code of redlock runs.)
            for limit in [6, 10, 31] {
                let run = try CommandRun(
                    ["run", "--nodes", nodeList(servers), "--name", "descriptors", "--", "true"],
                    launcher: ["/bin/sh", "-c", "ulimit -n \(limit) && exec \"$0\" \"$@\""], killAfter: .seconds(30)
                )
                let (status, _, stderr) = await run.finish()
                #expect(!run.timedOut && status == 71, "\(limit): \(status): \(stderr)")
                #expect(stderr.contains("may open only \(limit) files (ulimit -n); it needs at least 32"), "\(limit): \(stderr)")
            }
            #expect(try await values(of: "descriptors", on: servers).allSatisfy { $0 == nil })
        }
    }

    @Test("a command that ends on its own, but whose keys were deleted or overwritten on a quorum while it ran (found at the release, the lease still valid), is 124: its work may have overlapped another holder's (the rule for a command seen late by a stopped redlock must not cover it)", arguments: [false, true])
    func keysLostWhileRunning(overwritten: Bool) async throws {
        try await withRedisServers(3) { servers throws in
            let name = "lost-under-\(overwritten)"
            let go = FileManager.default.temporaryDirectory.appendingPathComponent("redlock-keys-lost-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: go) }
            let run = try CommandRun(
                ["run", "--nodes", nodeList(servers), "--name", name, "--ttl", "5s", "--",
                 "sh", "-c", "echo started; while [ ! -e \(go) ]; do sleep 0.02; done; exit 3"],
                killAfter: .seconds(30)
            )
            #expect(await run.waitForLine(containing: "started") != nil)
            for server in servers {
                // Gone: a key that lives a millisecond.
                try await server.set(name, to: "another-holder", expiry: overwritten ? nil : .milliseconds(1))
            }
            #expect(FileManager.default.createFile(atPath: go, contents: nil))
            let (status, _, stderr) = await run.finish()
            #expect(!run.timedOut && status == 124, "\(status): \(stderr)")
            #expect(stderr.contains(overwritten ? "another holder's" : "gone") && !stderr.contains("its status stands"), "\(stderr)")
            #expect(!stderr.contains("none of it ran unprotected"), "\(stderr)")
        }
    }

    @Test("--wait does not wait for names to resolve when the other nodes' permanent refusals already leave no quorum: a wrong password on two of three is 77 at once, not at the end of --wait")
    func unresolvedNameBesideRefusals() async throws {
        try await withRedisServers(2, arguments: ["--requirepass", "right"]) { servers throws in
            let started = ContinuousClock.now
            let nodes = servers.map { "redis://:wrong@\($0.endpoint)" } + ["nosuch-c.invalid:6379"]
            let run = try CommandRun(["run", "--nodes", nodes.joined(separator: ","), "--name", "refused", "--wait", "20s", "--", "true"], killAfter: .seconds(40))
            let (status, _, stderr) = await run.finish()
            let took = started.duration(to: .now)
            #expect(!run.timedOut && status == 77, "\(status): \(stderr)")
            #expect(took < .seconds(10), "took \(took): \(stderr)")
            #expect(!stderr.contains("trying again within --wait"), "\(stderr)")
        }
    }
}
