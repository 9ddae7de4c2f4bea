import CSupervise
import Dispatch
import Foundation
import RedlockOutput
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The command `redlock run` protects, run by a watchdog process (`supervise.c`):
/// `redlock` → watchdog → command, the command in a process group of its own.
///
/// The watchdog SIGKILLs the command's group when the deadline it was last given passes (a
/// stopped or starved `redlock`) or as soon as `redlock` is gone (killed): the command never
/// outlives its lease because its supervisor died or froze. `redlock` moves the deadline after
/// each confirmed extension and sends signals for the group through the watchdog.
final class SupervisedCommand: Sendable {
    /// The argument that makes `redlock` run as the watchdog (see `RedlockCommand.swift`).
    static let watchdogArgument = "__watchdog"

    /// How the command ended.
    enum Ending: Sendable, Equatable {
        /// It ran and ended with this wait status; `killedByWatchdog` says why when the watchdog
        /// killed it; `goneAt` is when it and everything it left running were gone, or had all
        /// been sent SIGKILL by the watchdog, whichever came first: from then on none of it runs
        /// its own code again (CLOCK_BOOTTIME nanoseconds; a write already inside the kernel may
        /// still complete).
        case exited(status: Int32, killedByWatchdog: WatchdogKill?, goneAt: Int64)
        /// It could not be started (errno of the lookup or exec).
        case notStarted(errno: Int32)
        /// The deadline had passed before the command could start; it did not run.
        case tooLate
        /// `redlock` got this terminating signal before the command started; it did not run.
        case signalledBeforeStart(Int32)
        /// The watchdog went away without reporting (it was killed); the command and everything
        /// it left were killed by `redlock` then.
        case watchdogLost

        /// The exit status the shell would report: the code, 128 + N for signal N, 126 when the
        /// command cannot be executed, 127 when it is not found.
        var shellStatus: Int32 {
            switch self {
            case let .exited(status, _, _):
                let signal = status & 0x7f
                return signal == 0 ? (status >> 8) & 0xff : 128 + signal
            case let .notStarted(errno):
                return errno == ENOENT ? 127 : 126
            case let .signalledBeforeStart(signal):
                return 128 + signal
            case .tooLate, .watchdogLost:
                return 1
            }
        }
    }

    /// Why the watchdog killed the command.
    enum WatchdogKill: Sendable, Equatable {
        /// No renewal reached it by the deadline (redlock stopped or starved), or redlock went
        /// away.
        case missedRenewal
        /// The command was stopped by this signal (job control's SIGTSTP, SIGTTIN, SIGTTOU, or
        /// SIGSTOP) and stayed stopped past the deadline: renewals that came meanwhile did not
        /// count.
        case stayedStopped(signal: Int32)
    }

    /// Why the watchdog could not be started.
    struct SpawnError: Error, CustomStringConvertible {
        let description: String
    }

    private struct State {
        /// The command's process group, once it started; nil again once it is gone.
        var group: pid_t?
        /// A resume (``resume()``) came before the watchdog's report that the command started
        /// was read: done once it is.
        var resumeOnStart = false
        var ended = false
        var deadline: Int64
        /// Once terminating, the deadline only moves earlier.
        var terminating = false
        var controlOpen = true
        var killedEverythingAt: Int64?
        /// When ``terminate(grace:)`` began (CLOCK_BOOTTIME nanoseconds), if it did.
        var terminatedAt: Int64?
    }

    private let watchdog: pid_t
    private let control: Int32
    private let state: Mutex<State>
    /// How the command ended once the watchdog said so, or the task waiting for it.
    private let ending = Mutex<(value: Ending?, waiter: CheckedContinuation<Ending, Never>?)>((nil, nil))

    /// Starts the watchdog, which starts `command` (its arguments' bytes; the first looked up in
    /// `PATH`) with `environment` (`NAME=value` entries' bytes); the command must be gone by
    /// `deadline`, unless ``renew(until:)`` moves it. With `keptIgnored` (of SIGHUP, SIGINT and
    /// SIGQUIT), the command starts with those ignored (every other signal at its default).
    init(command: [[UInt8]], environment: [[UInt8]], deadline: ContinuousClock.Instant, keptIgnored: [Int32] = []) throws {
        let deadlineNs = Self.boottimeNanoseconds(deadline)
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let ignoredMask = keptIgnored.reduce(UInt64(0)) { $0 | (1 << UInt64($1 - 1)) }
        let arguments = [executable, Self.watchdogArgument, String(deadlineNs), String(ignoredMask), "--"].map { Array($0.utf8) } + command
        var pid: pid_t = 0
        var controlFd: Int32 = -1
        var statusFd: Int32 = -1
        let argv = arguments.map(Self.cString) + [nil]
        let envp = environment.map(Self.cString) + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        guard !argv.dropLast().contains(nil), !envp.dropLast().contains(nil) else {
            throw SpawnError(description: "could not start the watchdog process: out of memory")
        }
        // Descendants orphaned when a killed watchdog takes the command with it come here.
        let subreaper = redlock_become_subreaper()
        guard subreaper == 0 else {
            throw SpawnError(description: "could not become a child subreaper: \(String(cString: strerror(subreaper)))")
        }
        let result = redlock_spawn_watchdog(executable, argv, envp, &pid, &controlFd, &statusFd)
        guard result == 0 else {
            throw SpawnError(description: "could not start the watchdog process: \(String(cString: strerror(result)))")
        }
        // Writes never block: a stopped watchdog must not hold up redlock. A message that does not
        // fit is dropped; a dropped renewal only makes the watchdog kill earlier.
        let flags = fcntl(controlFd, F_GETFL)
        if flags < 0 || fcntl(controlFd, F_SETFL, flags | O_NONBLOCK) != 0 {
            let error = errno
            close(controlFd)
            close(statusFd)
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            throw SpawnError(description: "could not set up the watchdog's pipe: \(String(cString: strerror(error)))")
        }
        watchdog = pid
        control = controlFd
        state = Mutex(State(deadline: deadlineNs))
        // For the suite only: how long the reader holds the report that the command started
        // before it acts on it, as a reader thread a loaded machine has not run yet would.
        let startedReportDelay = useconds_t(redlock_test_delay_ms(Self.startedReportDelayVariable)) * 1_000
        // Reports are read on a thread of their own: a blocking read must not hold a thread of
        // the cooperative pool.
        let thread = Thread { [self, watchdog = pid, statusFd] in
            var message = redlock_watch_message()
            var killedByWatchdog: WatchdogKill?
            // When the watchdog had sent SIGKILL to the command and all it left running.
            var killedAt: Int64?
            var outcome = Ending.watchdogLost
            reading: while redlock_watch_receive(statusFd, &message) == 0 {
                switch message.kind {
                case Int32(REDLOCK_WATCH_STARTED):
                    if startedReportDelay > 0 { usleep(startedReportDelay) }
                    let group = message.argument
                    let resume = state.withLock { state in
                        state.group = group
                        defer { state.resumeOnStart = false }
                        return state.resumeOnStart
                    }
                    if resume { self.resume() }
                case Int32(REDLOCK_WATCH_EXEC_FAILED):
                    outcome = .notStarted(errno: message.argument)
                    break reading
                case Int32(REDLOCK_WATCH_TOO_LATE):
                    outcome = .tooLate
                    break reading
                case Int32(REDLOCK_WATCH_NOT_STARTED):
                    outcome = .signalledBeforeStart(message.argument)
                    break reading
                case Int32(REDLOCK_WATCH_DEADLINE_KILL), Int32(REDLOCK_WATCH_ORPHAN_KILL):
                    killedByWatchdog = .missedRenewal
                    killedAt = message.value
                case Int32(REDLOCK_WATCH_STOPPED_KILL):
                    killedByWatchdog = .stayedStopped(signal: message.argument)
                    killedAt = message.value
                case Int32(REDLOCK_WATCH_EXITED):
                    // Reaping hundreds of killed processes takes a while after their kill.
                    let goneAt = killedAt.map { min($0, message.value) } ?? message.value
                    outcome = .exited(status: message.argument, killedByWatchdog: killedByWatchdog, goneAt: goneAt)
                    break reading
                default: continue
                }
            }
            close(statusFd)
            // Ended before the watchdog is reaped: its pid stays its own while a kill of its
            // descendants (in terminate) may still look for them.
            let group = state.withLock { state in
                state.ended = true
                defer { state.group = nil }
                return state.group
            }
            var status: Int32 = 0
            while waitpid(watchdog, &status, 0) < 0 && errno == EINTR {}
            if case .watchdogLost = outcome {
                // The command died with the watchdog (its parent-death signal); what it left
                // running was reparented here: kill it all before anyone is told.
                redlock_kill_descendants(group ?? 0)
                printError("redlock: the watchdog process died; killed the command and everything it left running")
            }
            let waiter = ending.withLock { ending in
                ending.value = outcome
                defer { ending.waiter = nil }
                return ending.waiter
            }
            waiter?.resume(returning: outcome)
        }
        thread.start()
    }

    /// An environment variable for the test suite: milliseconds for which the report that the
    /// command started is held before it is acted on (read as ``redlock_test_delay_ms`` reads
    /// it: at most 60,000). Every later report waits behind it.
    static let startedReportDelayVariable = "REDLOCK_RUN_TEST_STARTED_REPORT_DELAY_MS"

    /// A C string of `bytes` (which hold no NUL: they came from argv or environ), to be freed;
    /// nil when out of memory.
    private static func cString(_ bytes: [UInt8]) -> UnsafeMutablePointer<CChar>? {
        guard let memory = malloc(bytes.count + 1) else { return nil }
        let string = memory.bindMemory(to: CChar.self, capacity: bytes.count + 1)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { memcpy(string, base, bytes.count) }
        }
        string[bytes.count] = 0
        return string
    }

    /// The command's group must now be gone by `deadline` (unless it is terminating).
    func renew(until deadline: ContinuousClock.Instant) {
        let nanoseconds = Self.boottimeNanoseconds(deadline)
        state.withLock { state in
            guard state.controlOpen, !state.terminating, nanoseconds > state.deadline else { return }
            state.deadline = nanoseconds
            _ = redlock_watch_send(control, Int32(REDLOCK_WATCH_DEADLINE), 0, nanoseconds)
        }
    }

    /// Sends `signal` to the command's process group: directly once it started (so a stopped
    /// watchdog cannot hold it up), through the watchdog before. A terminating signal is followed
    /// by SIGCONT, as a shell's `kill` does for a stopped job: a stopped command must get to act
    /// on it.
    func signal(_ signal: Int32) {
        let terminating = [SIGTERM, SIGINT, SIGHUP, SIGQUIT].contains(signal)
        state.withLock { state in
            guard !state.ended else { return }
            if let group = state.group {
                _ = kill(-group, signal)
                if terminating { _ = kill(-group, SIGCONT) }
            } else if state.controlOpen {
                _ = redlock_watch_send(control, Int32(REDLOCK_WATCH_SIGNAL), signal, 0)
                if terminating { _ = redlock_watch_send(control, Int32(REDLOCK_WATCH_SIGNAL), SIGCONT, 0) }
            }
        }
    }

    /// Resumes a job that was stopped from the terminal (`fg` or `bg` sent redlock SIGCONT):
    /// when redlock now has the terminal's foreground, the command gets it back; then SIGCONT.
    ///
    /// Before the report that the command started is read, this waits for it: a command that
    /// reads the terminal at once can be stopped, and redlock's job with it, before this
    /// process has read the report; continued, redlock could take the signal first. (Before,
    /// that resume did nothing: after `fg` the command stayed stopped until the watchdog
    /// killed it at the deadline, as a CI run of the background-read test saw once.)
    func resume() {
        state.withLock { state in
            guard !state.ended else { return }
            guard let group = state.group else {
                state.resumeOnStart = true
                return
            }
            if isatty(STDIN_FILENO) == 1, tcgetpgrp(STDIN_FILENO) == getpgrp() {
                _ = tcsetpgrp(STDIN_FILENO, group)
            }
            _ = kill(-group, SIGCONT)
        }
    }

    /// Sends SIGTERM to the group now and has the watchdog SIGKILL it after `grace` (or at the
    /// current deadline, if that comes first); later renewals no longer postpone it. The
    /// watchdog is told that instant is redlock's own kill (`REDLOCK_WATCH_KILL_AT`), so its
    /// kill then blames no missed renewal: redlock reports why.
    func terminate(grace: Duration) {
        let killAt = Self.boottimeNanoseconds(ContinuousClock.now.advanced(by: grace))
        let killDeadline = state.withLock { state -> Int64? in
            guard state.controlOpen, !state.terminating else { return nil }
            state.terminating = true
            state.terminatedAt = redlock_boottime_ns()
            state.deadline = min(killAt, state.deadline)
            _ = redlock_watch_send(control, Int32(REDLOCK_WATCH_KILL_AT), 0, state.deadline)
            return state.deadline
        }
        guard let killDeadline else { return }
        signal(SIGTERM)
        // redlock kills at the same instant, in case the watchdog is stopped: the group, and what
        // left it (setsid) and was reparented to the watchdog, which would kill that itself. On
        // a thread of its own sleeping on CLOCK_BOOTTIME to the deadline: no timer leeway (a
        // dispatch timer may fire a tenth of its delay late) and no queue to wait behind.
        // (If CLOCK_BOOTTIME cannot be slept on, the same instant on the monotonic clock.)
        let fallback = ContinuousClock.now.advanced(by: .nanoseconds(max(0, killDeadline - redlock_boottime_ns())))
        let killer = Thread { [self] in
            if redlock_sleep_until_boottime(killDeadline) != 0 {
                let left = ContinuousClock.now.duration(to: fallback)
                if left > .zero { Thread.sleep(forTimeInterval: Double(left.components.seconds) + Double(left.components.attoseconds) / 1e18) }
            }
            signal(SIGKILL)
            killDescendantsOfWatchdog()
        }
        killer.name = "redlock-kill-at-deadline"
        killer.start()
    }

    /// SIGKILLs every descendant of the watchdog (``redlock_kill_tree``: a walk of the
    /// command's tree, whose cost grows with its processes, not the host's, then a scan of
    /// /proc to check it), unless the command has ended (the watchdog then killed them; once
    /// reaped, its pid may be another process's). Notes when none was left running
    /// (``killedEverythingAt``).
    private func killDescendantsOfWatchdog() {
        state.withLock { state in
            guard !state.ended else { return }
            var killedAt: Int64 = 0
            if redlock_kill_tree(watchdog, &killedAt) == 0 { state.killedEverythingAt = killedAt }
        }
    }

    /// When `redlock` itself had sent SIGKILL to everything below the watchdog at the deadline
    /// (CLOCK_BOOTTIME nanoseconds; ``redlock_kill_tree``): from then on none of it runs its own
    /// code again (a write already inside the kernel may still complete). A stopped watchdog
    /// reports the command gone only once it runs again.
    var killedEverythingAt: Int64? { state.withLock { $0.killedEverythingAt } }

    /// When `redlock` began to end the command (``terminate(grace:)``: SIGTERM, then SIGKILL
    /// after the grace), in CLOCK_BOOTTIME nanoseconds; nil if it never did. A command gone
    /// before then ended on its own.
    var terminatedAt: Int64? { state.withLock { $0.terminatedAt } }

    /// Waits until the command has ended and its watchdog has been reaped; closes the control
    /// pipe. When the calling task is cancelled meanwhile, the group gets SIGTERM, and SIGKILL
    /// after `grace`; this still returns only once the command is gone.
    func wait(grace: Duration) async -> Ending {
        let outcome = await withTaskCancellationHandler {
            await withCheckedContinuation { (waiter: CheckedContinuation<Ending, Never>) in
                let known = ending.withLock { ending in
                    if ending.value == nil { ending.waiter = waiter }
                    return ending.value
                }
                if let known { waiter.resume(returning: known) }
            }
        } onCancel: {
            terminate(grace: grace)
        }
        state.withLock { state in
            if state.controlOpen {
                state.controlOpen = false
                close(control)
            }
        }
        return outcome
    }

    /// `instant` on CLOCK_BOOTTIME, in nanoseconds. Boot time is read first, so a pause between
    /// the two reads makes the result earlier, never later.
    static func boottimeNanoseconds(_ instant: ContinuousClock.Instant) -> Int64 {
        let boot = redlock_boottime_ns()
        let remaining = ContinuousClock.now.duration(to: instant)
        return boot + remaining.components.seconds * 1_000_000_000 + remaining.components.attoseconds / 1_000_000_000
    }
}
