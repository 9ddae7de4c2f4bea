import ArgumentParser
import Dispatch
import Foundation
import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization

/// `redlock run`: runs a command while holding a lock, for cron jobs, init containers and
/// "only one replica seeds the data".
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command while holding a lock (auto-extended); exit 75 if the lock cannot be had.",
        discussion: """
        Acquires the lock NAME on the nodes, runs the command with REDLOCK_FENCING_TOKEN set to the \
        acquisition's fencing token, extends the lease while it runs, forwards SIGINT, SIGTERM, \
        SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it, releases the lock when it exits, and exits with \
        its status (128 + N when killed by signal N).

        Exit 75 (EX_TEMPFAIL): the lock could not be had within --wait; the command did not run.
        Exit 69 (EX_UNAVAILABLE): the lease was lost while the command ran; it was sent SIGTERM \
        (SIGKILL after --grace).
        Exit 64 (EX_USAGE): bad arguments.
        """
    )

    /// Exit status when the lock cannot be had in time.
    static let lockUnavailable: Int32 = 75
    /// Exit status when the lease was lost while the command ran.
    static let leaseLost: Int32 = 69

    @Option(help: "Comma-separated nodes: host:port, redis://[user:pass@]host:port[/db] or unix:///path. Default: $REDLOCK_NODES.")
    var nodes: String?

    @Option(help: "The lock name.")
    var name: String

    @Option(help: "Lease time, extended while the command runs (e.g. 250ms, 10s, 1m).", transform: parseDuration)
    var ttl: Duration = .seconds(10)

    @Option(help: "How long to wait for the lock before giving up with exit 75 (0: one attempt).", transform: parseDuration)
    var wait: Duration = .zero

    @Option(help: "After the lease is lost, how long the command gets between SIGTERM and SIGKILL.", transform: parseDuration)
    var grace: Duration = .seconds(10)

    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments, after --.")
    var command: [String] = []

    mutating func validate() throws {
        if command.first == "--" { command.removeFirst() }
        guard !command.isEmpty else { throw ValidationError("give the command to run after --") }
        guard !name.isEmpty else { throw ValidationError("--name must not be empty") }
        guard ttl >= .milliseconds(10) else { throw ValidationError("--ttl must be at least 10ms") }
    }

    func run() async throws {
        let list = nodes ?? ProcessInfo.processInfo.environment["REDLOCK_NODES"] ?? ""
        guard !list.isEmpty else { throw ValidationError("give the nodes with --nodes or REDLOCK_NODES") }
        let configurations = try parseNodeList(list)
        let client: RedlockClient
        let lock: DistributedLock
        do {
            client = try RedlockClient(nodes: configurations)
            lock = try client.makeLock(name, options: LockOptions(
                expiry: ttl, tries: Int.max, retryDelay: .random(in: .milliseconds(50)...(.milliseconds(250))), fencing: true
            ))
        } catch {
            throw ValidationError("\(error)")
        }

        let status: Int32
        switch await acquire(lock) {
        case let .failure(error):
            printError("redlock: could not acquire \"\(name)\" within \(wait): \(error)")
            status = Self.lockUnavailable
        case let .success(lease):
            status = await runHolding(lease, lock: lock)
        }
        await client.shutdown()
        throw ExitCode(status)
    }

    /// One attempt when --wait is zero; otherwise `lock()` until the deadline.
    private func acquire(_ lock: DistributedLock) async -> Result<Lease, RedlockError> {
        if wait == .zero {
            do { return .success(try await lock.tryLock()) } catch { return .failure(error) }
        }
        let wait = wait
        return await withTaskGroup(of: Result<Lease, RedlockError>?.self) { group in
            group.addTask {
                do throws(RedlockError) { return .success(try await lock.lock()) } catch { return .failure(error) }
            }
            group.addTask {
                try? await Task.sleep(for: wait)
                return nil
            }
            var outcome: Result<Lease, RedlockError>?
            for await next in group {
                if outcome == nil {
                    outcome = next ?? .failure(RedlockError(code: .taken, lockName: lock.name, message: "still held by another holder"))
                    group.cancelAll()
                }
            }
            return outcome ?? .failure(RedlockError(code: .cancelled, lockName: lock.name, message: "cancelled"))
        }
    }

    private func runHolding(_ lease: Lease, lock: DistributedLock) async -> Int32 {
        let child = ChildProcess(command: command, fencingToken: lease.fencingToken)
        // Termination and user signals sent to this process go to the command.
        let forwarding = SignalHandlers([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]) { child.signal($0) }
        defer { forwarding.stop() }
        do {
            return try await lock.withLease(lease) { _ in
                try await child.run(grace: grace)
            }
        } catch let error as RedlockError where error.code == .leaseLost {
            printError("redlock: lost the lease on \"\(name)\" while the command ran; it was terminated: \(error)")
            return Self.leaseLost
        } catch let error as ChildProcess.LaunchError {
            printError("redlock: \(error)")
            return 127
        } catch {
            printError("redlock: \(error)")
            return 1
        }
    }
}

/// The command run under the lock.
final class ChildProcess: Sendable {
    /// Why the command could not be started.
    struct LaunchError: Error, CustomStringConvertible {
        let description: String
    }

    private let process: Process
    private let pid = Mutex<Int32?>(nil)

    init(command: [String], fencingToken: Int64?) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        var environment = ProcessInfo.processInfo.environment
        environment["REDLOCK_FENCING_TOKEN"] = fencingToken.map(String.init) ?? ""
        process.environment = environment
        self.process = process
    }

    /// Sends `signal` to the command if it runs.
    func signal(_ signal: Int32) {
        pid.withLock { pid in
            if let pid { _ = kill(pid, signal) }
        }
    }

    /// Starts the command and returns its exit status (128 + N when killed by signal N). When
    /// the calling task is cancelled, the command gets SIGTERM, and SIGKILL after `grace`.
    func run(grace: Duration) async throws -> Int32 {
        let exited = AsyncStream<Int32>.makeStream()
        process.terminationHandler = { process in
            let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
            exited.continuation.yield(status)
            exited.continuation.finish()
        }
        do {
            try process.run()
        } catch {
            throw LaunchError(description: "could not start \(process.arguments?.first ?? "the command"): \(error)")
        }
        pid.withLock { $0 = process.processIdentifier }
        defer { pid.withLock { $0 = nil } }
        return await withTaskCancellationHandler {
            var status: Int32 = 1
            for await value in exited.stream { status = value }
            return status
        } onCancel: {
            self.signal(SIGTERM)
            Task {
                try? await Task.sleep(for: grace)
                self.signal(SIGKILL)
            }
        }
    }
}

func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
