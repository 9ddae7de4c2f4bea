import ArgumentParser
import RedlockOutput
import CSupervise
import Foundation
import Logging
import Redlock

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The `redlock` command-line tool (started by ``Entry``).
struct RedlockCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redlock",
        abstract: "Redlock distributed locks over independent Redis nodes.",
        discussion: "The client's log lines go to stderr; \(logLevelSetting) sets the lowest level printed.",
        subcommands: [Demo.self, Bench.self, Run.self, Doctor.self]
    )
}

/// The program's entry point.
///
/// `redlock run` re-executes this program as the watchdog of the command it supervises
/// (`Supervision.swift`): `redlock __watchdog DEADLINE_NS KEPT_IGNORED -- COMMAND…`, where
/// KEPT_IGNORED has bit n - 1 set for each signal n the command is to start ignored. That path
/// takes over on the main thread before anything else starts, and never returns.
@main
enum Entry {
    static func main() async {
        let arguments = CommandLine.arguments
        if arguments.count >= 6, arguments[1] == SupervisedCommand.watchdogArgument, arguments[4] == "--",
           let deadline = Int64(arguments[2]), let keptIgnored = UInt64(arguments[3]) {
            redlock_watchdog_main(CommandLine.unsafeArgv + 5, deadline, keptIgnored)
        }
        // The init of a PID namespace (a container's PID 1) must reap what is orphaned there and
        // gets only the signals it handles: `redlock run` then runs as its child.
        if getpid() == 1, arguments.count >= 2, arguments[1] == "run" {
            // By its path, not /proc/self/exe: `ps` and `pkill` see the child as redlock.
            let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "/proc/self/exe"
            redlock_init_main(executable, CommandLine.unsafeArgv)
        }
        // The client's log lines (a node that stops answering) never wait for stderr; what is
        // queued at exit has a second to be written.
        // A value that names no level is refused by each command's validation (so that --help
        // still works); until then, the default.
        let level: Logger.Level? = switch logLevel(ProcessInfo.processInfo.environment["REDLOCK_LOG_LEVEL"]) {
        case let .success(level): level
        case .failure: .info
        }
        if let level {
            LoggingSystem.bootstrap { label in
                var handler = StandardErrorLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
        } else {
            LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
        }
        atexit(flushStandardErrorAtExit)
        // A closed stderr or stdout (a socket: journald's stream) fails a write, not the process.
        _ = signal(SIGPIPE, SIG_IGN)
        await RedlockCommand.main()
    }
}

/// The lowest level of the client's log lines `redlock` prints on stderr, from
/// `REDLOCK_LOG_LEVEL` (`value`): one of swift-log's levels (`trace`, `debug`, `info`, `notice`,
/// `warning`, `error`, `critical`; `info` when unset or empty), or `none` (`.success(nil)`: no
/// log lines; `redlock`'s own messages, such as `run`'s last line, are printed all the same).
/// Anything else is a usage error naming the levels.
/// Case and surrounding white space do not matter.
func logLevel(_ value: String?) -> Result<Logger.Level?, LogLevelError> {
    let name = (value ?? "").trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
    guard !name.isEmpty else { return .success(.info) }
    if name == "none" { return .success(nil) }
    guard let level = Logger.Level(rawValue: name) else { return .failure(LogLevelError(value: value ?? "")) }
    return .success(level)
}

/// `REDLOCK_LOG_LEVEL (trace, debug, info: the default, …, none)`, as the help texts give it.
let logLevelSetting = "REDLOCK_LOG_LEVEL ("
    + (Logger.Level.allCases.map { $0 == .info ? "info: the default" : $0.rawValue } + ["none"]).joined(separator: ", ") + ")"

/// Throws a usage error (exit 64) when `REDLOCK_LOG_LEVEL` names no level: each command's
/// `validate()` calls it first.
func validateLogLevelSetting() throws {
    if case let .failure(problem) = logLevel(ProcessInfo.processInfo.environment["REDLOCK_LOG_LEVEL"]) {
        throw ValidationError(problem.description)
    }
}

/// A `REDLOCK_LOG_LEVEL` that names no level.
struct LogLevelError: Error, CustomStringConvertible {
    /// The variable's value.
    let value: String

    var description: String {
        let levels = Logger.Level.allCases.map(\.rawValue) + ["none"]
        return "REDLOCK_LOG_LEVEL=\(RedlockError.shown(value)) is not a level: give one of \(levels.joined(separator: ", "))"
    }
}
