import Foundation
import RedlockTransport
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A real `redis-server` process on a free loopback port in its own temporary directory,
/// for tests, benchmarks and the demo.
///
/// The server listens on `127.0.0.1` and on a unix socket in its directory. It can be killed,
/// paused (SIGSTOP, a hung node), resumed and restarted on the same port with or without its
/// data. ``terminate()`` kills it and removes its directory; servers still running when the
/// process exits normally are killed by an exit handler.
public final class RedisServer: Sendable, CustomStringConvertible {
    /// How the server keeps its data across a restart.
    public enum Persistence: Sendable, Hashable {
        /// No RDB snapshots and no AOF: a restart starts empty.
        case none
        /// An append-only file fsynced on every write (`appendfsync always`): a restart keeps
        /// every acknowledged write.
        case appendOnlyFsyncAlways
    }

    /// A server that listens with TLS only: `--port 0` (no plain TCP listener) and
    /// `--tls-port` on ``RedisServer/port``. Replication and cluster links stay plain. The unix
    /// socket stays plain too (redis-server has no TLS on it), for tests that need an
    /// unencrypted side door.
    public struct TLS: Sendable, Hashable {
        /// Whether clients must present a certificate signed by the CA (`--tls-auth-clients`).
        public enum ClientAuthentication: String, Sendable, Hashable {
            /// `no`: clients need no certificate.
            case none = "no"
            /// `optional`: a client may present one; if it does, it must verify.
            case optional
            /// `yes`: a client without a certificate signed by the CA is refused (mutual TLS).
            case required = "yes"
        }

        /// The server's certificate (`--tls-cert-file`), an absolute path.
        public var certificateFile: String
        /// Its private key (`--tls-key-file`), an absolute path.
        public var keyFile: String
        /// The CA that client certificates must chain to (`--tls-ca-cert-file`), an absolute
        /// path. redis-server needs it even when clients present none.
        public var caCertificateFile: String
        /// `--tls-auth-clients`.
        public var clientAuthentication: ClientAuthentication

        /// TLS with these files. Paths must be absolute: redis-server reads them after changing
        /// to its directory.
        public init(certificateFile: String, keyFile: String, caCertificateFile: String, clientAuthentication: ClientAuthentication = .none) {
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.caCertificateFile = caCertificateFile
            self.clientAuthentication = clientAuthentication
        }

        /// TLS with a certificate from `certificates` (by default its valid ``TLSCertificates/server``;
        /// pass e.g. ``TLSCertificates/expiredServer`` for a broken one) and its CA for clients.
        public init(
            certificates: TLSCertificates,
            serverCertificate: TLSCertificates.Files? = nil,
            clientAuthentication: ClientAuthentication = .none
        ) {
            let files = serverCertificate ?? certificates.server
            self.init(
                certificateFile: files.certificate, keyFile: files.key,
                caCertificateFile: certificates.ca.certificate, clientAuthentication: clientAuthentication
            )
        }

        var arguments: [String] {
            [
                "--tls-cert-file", certificateFile,
                "--tls-key-file", keyFile,
                "--tls-ca-cert-file", caCertificateFile,
                "--tls-auth-clients", clientAuthentication.rawValue,
                "--tls-replication", "no",
                "--tls-cluster", "no",
            ]
        }
    }

    /// The TCP port on 127.0.0.1 (the TLS port when ``tls`` is set; there is no plain one then).
    public let port: Int
    /// The server's working directory (data, AOF and socket).
    public let directory: String
    /// How the server persists its data.
    public let persistence: Persistence
    /// The TLS setup when the server listens with TLS only, else nil.
    public let tls: TLS?
    private let executable: String
    private let extraArguments: [String]
    /// The clock shim preloaded into the server (``setClock(rate:offset:)``), if any.
    public let clockShim: String?
    /// The rate and offset last given to the shim.
    private let clock = Mutex<(rate: Double, offset: Duration)>((1, .zero))
    private let current: Mutex<ServerProcess?>

    /// The TCP endpoint, `127.0.0.1:port` (TLS only when ``tls`` is set).
    public var endpoint: RedisEndpoint { .hostname("127.0.0.1", port: port) }
    /// The unix domain socket endpoint.
    public var unixSocketEndpoint: RedisEndpoint { .unixDomainSocket(path: socketPath) }
    /// A connection configuration for the TCP endpoint with the given timeouts.
    public func configuration(
        connectTimeout: Duration = .milliseconds(500),
        commandTimeout: Duration = .seconds(1)
    ) -> RedisConnectionConfiguration {
        RedisConnectionConfiguration(endpoint: endpoint, connectTimeout: connectTimeout, commandTimeout: commandTimeout)
    }

    private var socketPath: String { directory + "/redis.sock" }

    /// `redis-server 127.0.0.1:PORT`, with ` (TLS)` for a TLS server.
    public var description: String { "redis-server \(endpoint)" + (tls == nil ? "" : " (TLS)") }

    private init(
        port: Int, directory: String, persistence: Persistence, tls: TLS?, executable: String, extraArguments: [String],
        clockShim: String?
    ) {
        self.port = port
        self.directory = directory
        self.persistence = persistence
        self.tls = tls
        self.executable = executable
        self.extraArguments = extraArguments
        self.clockShim = clockShim
        current = Mutex(nil)
    }

    /// Starts a server on a free port and returns once it accepts connections.
    ///
    /// - Parameters:
    ///   - persistence: How it keeps data across restarts. The default is ``Persistence/none``.
    ///   - tls: With a value the server listens with TLS only, on ``port``. The default is nil.
    ///   - arguments: Extra `redis-server` arguments, e.g. `["--requirepass", "secret"]`.
    ///   - clockShim: The path of the clock shim (`libRedlockClockShim.so`, built by the Tools
    ///     package) to preload into the server, so that ``setClock(rate:offset:)`` can make its
    ///     wall clock run fast or step. The default is nil (the real clock).
    public static func start(
        persistence: Persistence = .none, tls: TLS? = nil, arguments: [String] = [], clockShim: String? = nil
    ) async throws -> RedisServer {
        let executable = try findExecutable()
        var lastError: (any Error)?
        for _ in 0..<8 {
            let port = try freeLoopbackPort()
            let directory = try makeTemporaryDirectory()
            liveDirectories.withLock { _ = $0.insert(directory) }
            let server = RedisServer(
                port: port, directory: directory, persistence: persistence, tls: tls,
                executable: executable, extraArguments: arguments, clockShim: clockShim
            )
            do {
                try await server.launch()
                return server
            } catch let RedisServerError.exitedDuringStartup(port, log) where log.contains("Address already in use") {
                lastError = RedisServerError.exitedDuringStartup(port: port, log: log)
                server.removeDirectory()
            } catch {
                server.removeDirectory()
                throw error
            }
        }
        throw lastError ?? RedisServerError.noFreePort("gave up after 8 ports")
    }

    /// Starts `count` servers concurrently (see ``start(persistence:tls:arguments:clockShim:)``).
    /// If any fails, the others are terminated.
    public static func start(
        count: Int, persistence: Persistence = .none, tls: TLS? = nil, arguments: [String] = [], clockShim: String? = nil
    ) async throws -> [RedisServer] {
        try await withThrowingTaskGroup(of: (Int, RedisServer).self) { group in
            for index in 0..<count {
                group.addTask {
                    (index, try await start(persistence: persistence, tls: tls, arguments: arguments, clockShim: clockShim))
                }
            }
            var servers: [RedisServer?] = Array(repeating: nil, count: count)
            do {
                for try await (index, server) in group { servers[index] = server }
            } catch {
                for server in servers.compactMap({ $0 }) { await server.terminate() }
                throw error
            }
            return servers.compactMap { $0 }
        }
    }

    private var launchArguments: [String] {
        var arguments = tls.map { ["--port", "0", "--tls-port", String(port)] + $0.arguments } ?? ["--port", String(port)]
        arguments += [
            "--bind", "127.0.0.1",
            "--dir", directory,
            "--unixsocket", socketPath,
            "--unixsocketperm", "700",
            "--daemonize", "no",
            "--logfile", "",
            "--save", "",
            "--enable-debug-command", "local",
            "--maxclients", "1000",
        ]
        switch persistence {
        case .none:
            arguments += ["--appendonly", "no"]
        case .appendOnlyFsyncAlways:
            arguments += ["--appendonly", "yes", "--appendfsync", "always", "--auto-aof-rewrite-percentage", "0"]
        }
        return arguments + extraArguments
    }

    private func launch() async throws {
        let process: ServerProcess
        if let clockShim {
            // A restart without data removed the directory: the control file is written again
            // (the clock keeps its rate and offset).
            if !FileManager.default.fileExists(atPath: clockControlPath) {
                let (rate, offset) = clock.withLock { $0 }
                try setClock(rate: rate, offset: offset)
            }
            process = try ServerProcess.spawn(
                executable: "/usr/bin/env",
                arguments: ["LD_PRELOAD=\(clockShim)", "REDLOCK_CLOCK_CONTROL=\(clockControlPath)", executable] + launchArguments
            )
        } else {
            process = try ServerProcess.spawn(executable: executable, arguments: launchArguments)
        }
        current.withLock { $0 = process }
        switch await process.waitUntilReady() {
        case .ready:
            return
        case let .failed(log):
            await process.waitUntilExited()
            throw RedisServerError.exitedDuringStartup(port: port, log: log)
        }
    }

    /// The file the clock shim reads its rate and offset from.
    private var clockControlPath: String { "\(directory)/clock" }

    /// Sets the server's wall clock (a node clock fault): from now on it runs `rate` wall
    /// seconds per real second, `offset` ahead of where that rate takes it. The shim reads the
    /// change within 1 ms; a rate change is continuous, an offset change is a step. Key expiry
    /// (`PX`) and `TIME` follow this clock; monotonic clocks do not change.
    ///
    /// - Parameters:
    ///   - rate: Wall seconds per real second; positive. The default is 1.
    ///   - offset: The step ahead (or back, when negative). The default is zero.
    /// - Throws: ``RedisServerError/clockShimMissing`` when the server was started without a
    ///   shim, ``RedisServerError/invalidClockRate(_:)`` for a rate that is not positive, a file
    ///   error when the control file cannot be written.
    public func setClock(rate: Double = 1, offset: Duration = .zero) throws {
        guard clockShim != nil else { throw RedisServerError.clockShimMissing }
        guard rate > 0, rate.isFinite else { throw RedisServerError.invalidClockRate(rate) }
        clock.withLock { $0 = (rate, offset) }
        let line = String(format: "%.6f %lld\n", rate, Int64(offset.wholeNanoseconds))
        // Written whole and renamed into place, so the shim never reads half a line. (The
        // directory is made again if a restart without data is between removing and making it.)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let temporary = clockControlPath + ".new"
        try line.write(toFile: temporary, atomically: false, encoding: .utf8)
        guard rename(temporary, clockControlPath) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: clockControlPath])
        }
    }

    /// The clock's current step ahead (``setClock(rate:offset:)``); zero for a real clock.
    public var clockOffset: Duration { clock.withLock { $0.offset } }

    /// Steps the server's wall clock by `step` more (forward when positive), keeping its rate.
    /// - Throws: As ``setClock(rate:offset:)``.
    public func stepClock(by step: Duration) throws {
        let (rate, offset) = clock.withLock { $0 }
        try setClock(rate: rate, offset: offset + step)
    }

    /// Whether the server process is alive (possibly paused).
    public var isRunning: Bool {
        current.withLock { process in process.map { !$0.hasExited } ?? false }
    }

    /// The process id of the running server, if any.
    public var processIdentifier: Int32? {
        current.withLock { process in process.flatMap { $0.hasExited ? nil : $0.pid } }
    }

    /// Kills the server with SIGKILL (no shutdown, no final fsync) and waits until it is reaped.
    public func kill() async {
        guard let process = current.withLock({ $0 }) else { return }
        process.signal(SIGKILL)
        await process.waitUntilExited()
    }

    /// Freezes the server with SIGSTOP: it keeps its sockets (connects still succeed through the
    /// kernel backlog) but answers nothing, like a hung or partitioned node.
    ///
    /// Returns once the kernel reports the process stopped, so a command sent afterwards is
    /// never answered before ``resume()``.
    public func pause() async throws {
        guard let process = current.withLock({ $0 }), !process.hasExited else { throw RedisServerError.notRunning(port: port) }
        process.signal(SIGSTOP)
        // SIGSTOP is delivered asynchronously: wait until every thread has stopped.
        await waitForProcessState(of: process.pid, timeout: .seconds(2)) { $0 == "T" }
    }

    /// Resumes a server frozen by ``pause()``.
    public func resume() throws {
        guard let process = current.withLock({ $0 }), !process.hasExited else { throw RedisServerError.notRunning(port: port) }
        process.signal(SIGCONT)
    }

    /// Kills the server if it runs, then starts it again on the same port and directory.
    ///
    /// - Parameter keepingData: With `false` the directory is emptied first, so even an AOF
    ///   server starts with no keys. With `true` an ``Persistence/appendOnlyFsyncAlways`` server
    ///   reloads every acknowledged write; a ``Persistence/none`` server has nothing to reload.
    ///   Either way a server with the clock shim keeps its clock (``setClock(rate:offset:)``).
    public func restart(keepingData: Bool) async throws {
        await kill()
        if !keepingData {
            removeDirectory()
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            Self.liveDirectories.withLock { _ = $0.insert(directory) }
            // The data goes, the clock stays where it was: its control file went with the
            // directory, and without it the shim would run the clock back to the real one.
            if clockShim != nil {
                let (rate, offset) = clock.withLock { $0 }
                try setClock(rate: rate, offset: offset)
            }
        }
        try await launch()
    }

    /// Kills the server and removes its directory. Safe to call more than once.
    public func terminate() async {
        await kill()
        removeDirectory()
    }

    /// The server's log so far (its first and its last 32 KiB).
    public var log: String {
        current.withLock { $0?.log ?? "" }
    }

    private func removeDirectory() {
        try? FileManager.default.removeItem(atPath: directory)
        Self.liveDirectories.withLock { _ = $0.remove(directory) }
    }

    // MARK: - Process-wide bookkeeping

    /// The directories of servers not yet terminated, removed by ``TerminationCleanup/install()``'s
    /// handler when the process is interrupted.
    static let liveDirectories = Mutex<Set<String>>([])

    private static func findExecutable() throws -> String {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["REDIS_SERVER"], !explicit.isEmpty { return explicit }
        let path = environment["PATH"] ?? ""
        var candidates = path.split(separator: ":").map { "\($0)/redis-server" }
        candidates += ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"]
        for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        throw RedisServerError.executableNotFound(searched: candidates)
    }

    /// How the servers' directories begin: `swift-redlock-PID-…`, PID the starting process's
    /// (what ``OrphanServers`` reaps by).
    static let directoryPrefix = "swift-redlock-"

    /// Reaps the servers of processes that died without stopping them (``OrphanServers``):
    /// once per process, before its first server.
    private static let orphansReaped: Void = {
        _ = OrphanServers.reap()
        if directoryBase != FileManager.default.temporaryDirectory.path { _ = OrphanServers.reap(in: directoryBase) }
    }()

    /// Where the servers' directories go: the temporary directory (`TMPDIR`), or `/tmp` when the
    /// socket path in a directory there could be longer than a Unix socket address holds (107
    /// bytes and a NUL; redis-server refuses to start with a longer `unixsocket`, and a client
    /// could not connect to it).
    static let directoryBase: String = {
        let base = FileManager.default.temporaryDirectory.path
        // BASE/PREFIX, a pid (at most 10 digits), "-", a UInt64 (at most 20), "/redis.sock".
        let longest = base.utf8.count + 1 + directoryPrefix.utf8.count + 10 + 1 + 20 + "/redis.sock".utf8.count
        return longest <= 107 ? base : "/tmp"
    }()

    private static func makeTemporaryDirectory() throws -> String {
        _ = orphansReaped
        let path = "\(directoryBase)/\(directoryPrefix)\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// Starts `count` servers, runs `body` with them, and terminates them afterwards — also when
/// `body` throws.
public func withRedisServers<Result>(
    _ count: Int,
    persistence: RedisServer.Persistence = .none,
    tls: RedisServer.TLS? = nil,
    arguments: [String] = [],
    clockShim: String? = nil,
    _ body: ([RedisServer]) async throws -> Result
) async throws -> Result {
    let servers = try await RedisServer.start(count: count, persistence: persistence, tls: tls, arguments: arguments, clockShim: clockShim)
    return try await withTeardown {
        try await body(servers)
    } teardown: {
        for server in servers { await server.terminate() }
    }
}
