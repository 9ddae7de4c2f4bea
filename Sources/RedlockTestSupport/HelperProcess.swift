import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A helper executable run as a child process for cross-process tests (for example the lock
/// worker, `redlock-worker`): spawned like the servers (stdin from `/dev/null`, output on a
/// pipe, no inherited descriptors), ready once its output contains a marker.
///
/// Kill it with ``kill()`` or let it exit; helpers still running when this process exits
/// normally are killed by an exit handler.
public final class HelperProcess: Sendable, CustomStringConvertible {
    /// How a helper ended.
    public enum Termination: Sendable, Hashable, CustomStringConvertible {
        /// It exited with this status code.
        case exited(Int32)
        /// A signal killed it.
        case signalled(Int32)

        /// `exit N` or `signal N`.
        public var description: String {
            switch self {
            case let .exited(code): "exit \(code)"
            case let .signalled(signal): "signal \(signal)"
            }
        }
    }

    private let process: ServerProcess
    /// The executable's path.
    public let executable: String

    private init(process: ServerProcess, executable: String) {
        self.process = process
        self.executable = executable
    }

    /// The child's process id.
    public var processIdentifier: Int32 { process.pid }

    /// `NAME (pid N)`.
    public var description: String { "\((executable as NSString).lastPathComponent) (pid \(process.pid))" }

    /// Spawns `executable` and returns once its output contains `readyMarker`.
    ///
    /// - Parameters:
    ///   - executable: The path of the program.
    ///   - arguments: Its arguments (without the program name).
    ///   - readyMarker: Text the program prints once it is ready.
    ///   - timeout: How long to wait for the marker. The default is 30 s.
    /// - Throws: ``RedisServerError/spawnFailed(_:)`` when it cannot be spawned, exits before it
    ///   is ready, or is not ready within `timeout` (it is killed then).
    public static func start(
        executable: String,
        arguments: [String],
        readyMarker: String,
        timeout: Duration = .seconds(30)
    ) async throws -> HelperProcess {
        let process = try ServerProcess.spawn(executable: executable, arguments: arguments, readyMarker: readyMarker)
        let helper = HelperProcess(process: process, executable: executable)
        let readiness: ServerProcess.Readiness? = await withTaskGroup(of: ServerProcess.Readiness?.self) { group in
            group.addTask { await process.waitUntilReady() }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        switch readiness {
        case .ready?:
            return helper
        case let .failed(log)?:
            await helper.kill()
            throw RedisServerError.spawnFailed("\(helper) exited before it was ready:\n\(log.suffix(2_000))")
        case nil:
            await helper.kill()
            throw RedisServerError.spawnFailed("\(helper) was not ready within \(timeout):\n\(helper.output.suffix(2_000))")
        }
    }

    /// Everything the helper wrote to stdout and stderr so far (its first and its last 32 KiB).
    public var output: String { process.log }

    /// Whether the helper has exited and been reaped.
    public var hasExited: Bool { process.hasExited }

    /// Sends `signal` unless the helper has already been reaped.
    public func signal(_ signal: Int32) {
        process.signal(signal)
    }

    /// Waits until the helper has exited and returns how it ended.
    public func waitUntilExited() async -> Termination {
        await process.waitUntilExited()
        let status = process.exitStatus ?? 0
        // The wait status layout: low 7 bits the terminating signal (0 for a normal exit),
        // bits 8–15 the exit code.
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
    }

    /// Kills the helper with SIGKILL and waits until it is reaped. Safe to call more than once.
    @discardableResult
    public func kill() async -> Termination {
        process.signal(SIGKILL)
        return await waitUntilExited()
    }

    /// Finds an executable built next to the running one (SwiftPM puts every product of a
    /// package in one directory, e.g. `.build/debug`): `$REDLOCK_<NAME>` if set, else the
    /// directory of this process's executable, else a `debug` or `release` directory of one of
    /// its parents.
    public static func siblingExecutable(named name: String) -> String? {
        let variable = "REDLOCK_" + name.uppercased().replacingOccurrences(of: "-", with: "_")
        if let explicit = ProcessInfo.processInfo.environment[variable], !explicit.isEmpty {
            return explicit
        }
        var starts: [URL] = []
        if let argument = CommandLine.arguments.first {
            starts.append(URL(fileURLWithPath: argument).resolvingSymlinksInPath().deletingLastPathComponent())
        }
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            starts.append(URL(fileURLWithPath: exe).deletingLastPathComponent())
        }
        for start in starts {
            var directory = start
            for _ in 0..<6 {
                for candidate in [directory, directory.appendingPathComponent("debug"), directory.appendingPathComponent("release")] {
                    let path = candidate.appendingPathComponent(name).path
                    if FileManager.default.isExecutableFile(atPath: path) { return path }
                }
                directory.deleteLastPathComponent()
            }
        }
        return nil
    }
}
