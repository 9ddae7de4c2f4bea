import ArgumentParser
import RedlockOutput
import CSupervise
import Foundation
import Redlock
import RedlockTestSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `redlock run`: runs a command while holding a lock, for cron jobs, init containers and
/// "only one replica seeds the data".
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command while holding a lock (auto-extended); the command never outlives the lease.",
        discussion: """
        Acquires the lock NAME on the nodes, runs the command with REDLOCK_FENCING_TOKEN set to the \
        acquisition's fencing token (and without REDLOCK_NODES, whose URLs may carry passwords), \
        extends the lease while it runs, releases the lock when it exits, and exits with its \
        status (128 + N when killed by signal N). The command's arguments and environment are \
        passed on as the bytes given; redlock's own arguments must be UTF-8.

        The command runs in a process group of its own (in a terminal, it gets the foreground), \
        with an empty signal mask, default signal dispositions and no descriptor but stdin, stdout \
        and stderr. SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to redlock while the \
        command runs go to its group once; a terminating one received before it starts (also after \
        the acquire) keeps it from starting. Of SIGHUP, SIGINT and SIGQUIT, one ignored when redlock \
        starts (nohup; a shell's `&` without job control) stays ignored, by redlock and by the \
        command. When the command exits, whatever it left running (in its group, or \
        detached with setsid) is killed.

        If the lease cannot be extended, the group gets SIGTERM when only --grace plus \
        a safety margin (5% of --ttl, 5 ms to 250 ms) of validity is left, and SIGKILL that \
        margin before the validity ends (with everything below the watchdog, in case it is \
        stopped); redlock exits only once the command is gone. A \
        watchdog process kills the group by the same instant if redlock is stopped or starved \
        (earlier when the command runs processes outside its group, which it kills one at a \
        time), and at once if redlock is killed. Ctrl-Z (or the command reading the terminal from the \
        background) stops the whole job; it renews nothing while \
        stopped, so past the deadline the command is killed and fg gives 124. Beyond any \
        supervisor: a pause of the whole machine, or of redlock and the watchdog together \
        (pkill -STOP redlock matches both); use the fencing token where the resource can check it.

        The client's log lines (a node that does not answer is a warning) go to stderr as they \
        happen, among redlock's own messages; \(logLevelSetting) sets the lowest level printed, \
        e.g. error under cron.

        Exit statuses:
          (the command's)  the command ran while the lease held (or ended on its own
                           before the deadline, seen late by a stopped redlock)
          64               bad arguments or configuration (EX_USAGE); nothing ran
          69               nodes failed or did not answer: no quorum (EX_UNAVAILABLE)
          71               the watchdog failed to start or died, or redlock ran out of
                           file descriptors (EX_OSERR; ulimit -n under 32: nothing ran)
          75               held by another holder for the whole --wait (EX_TEMPFAIL)
          77               a node refused the credentials, the database or a command
                           (EX_NOPERM)
          124              lease lost: the command was stopped (or never started),
                           or the release found the keys taken from it while it ran,
                           or the watchdog killed it: no renewal reached it in time,
                           or it stayed stopped (job control, SIGSTOP) past the deadline
          126 / 127        the command could not be executed / was not found
          128 + N          redlock got signal N before the command started; it did not run
        """
    )

    /// The fewest file descriptors `redlock run` starts with (`ulimit -n`): fewer fail each
    /// run, most of them inside Dispatch, which traps.
    static let fewestDescriptors: rlim_t = 32

    /// Exit statuses (sysexits(3) where one fits; 124 as timeout(1) uses it for a command it
    /// had to stop).
    enum Status {
        static let usage: Int32 = 64
        static let unavailable: Int32 = 69
        static let systemError: Int32 = 71
        static let taken: Int32 = 75
        static let permissionDenied: Int32 = 77
        static let leaseLost: Int32 = 124
    }

    @Option(help: "Comma-separated nodes: host:port, redis://[user:pass@]host:port[/db], rediss://… (TLS; files from $REDLOCK_TLS_CA_CERT, $REDLOCK_TLS_CERT, $REDLOCK_TLS_KEY, the name to verify from $REDLOCK_TLS_SERVER_NAME) or unix:///path. Default: $REDLOCK_NODES.")
    var nodes: String?

    @Option(help: "The lock name.")
    var name: String

    @Option(parsing: .unconditional, help: "Lease time, extended while the command runs (e.g. 250ms, 10s, 1m). Default: 10s.", transform: parseDuration)
    var ttl: Duration = .seconds(10)

    @Option(parsing: .unconditional, help: "How long to wait for the lock before giving up with exit 75 (nodes that fail meanwhile, host names that do not resolve yet among them, are tried again). Default: 0 (one attempt).", transform: parseDuration)
    var wait: Duration = .zero

    @Option(parsing: .unconditional, help: "Time between SIGTERM and SIGKILL when the lease is about to be lost; it comes out of the lease, so it must leave room (at most half of --ttl, less the safety margin). Default: a quarter of --ttl, at most 10s.", transform: parseDuration)
    var grace: Duration?

    @Option(parsing: .unconditional, help: "Count a node only once its epoch marker is this old: a node that lost its data (FLUSHALL, a restart without persistence) refuses the lock until then. At least --ttl; every holder of the lock must use it (README, Safety). Default: off.", transform: parseDuration)
    var epochGuard: Duration?

    @Option(parsing: .unconditional, help: "Count a node only once it has been up this long (uptime from INFO): catches a restart that lost the last writes. Set it to the longest --ttl of any holder. Default: off.", transform: parseDuration)
    var restartGuard: Duration?

    @Flag(help: "Refuse a node whose clock is behind the latest time it showed any holder (stepped back); a clock running fast is judged only between this run's own acquires, since each run is a new client (README, Safety).")
    var clockGuard = false

    @Flag(help: "Report acquire, extensions and loss on stderr (instants as CLOCK_BOOTTIME nanoseconds).")
    var verbose = false

    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments, after --.")
    var command: [String] = []

    /// The command's arguments as given (``command`` has them decoded as UTF-8; `validate()`
    /// found them).
    var rawCommand: [[UInt8]] { RawArguments.lastArguments(command) ?? command.map { Array($0.utf8) } }

    /// The safety margin: how long before the lease's validity ends the command must be gone.
    var margin: Duration { HeldLease.defaultSafetyMargin(expiry: ttl) }
    /// The grace between SIGTERM and SIGKILL.
    var effectiveGrace: Duration { grace ?? min(ttl / 4, .seconds(10)) }

    mutating func validate() throws {
        try validateLogLevelSetting()
        if command.first == "--" {
            command.removeFirst()
        } else if let first = command.first, first.hasPrefix("-"), first != "-" {
            // What the parser did not know, before any `--`, is a mistyped or misplaced option,
            // not the command: caught here, before any lock is taken.
            if first == "-h" || first == "--help" || first == "-help" { throw CleanExit.helpRequest(self) }
            throw ValidationError("unknown option '\(first)': redlock's options go before --, the command after it")
        }
        guard !command.isEmpty else { throw ValidationError("give the command to run after --") }
        try RawArguments.requireText(exceptLast: command.count)
        guard RawArguments.lastArguments(command) != nil else {
            throw ValidationError("the command's arguments were not found at the end of redlock's arguments")
        }
        guard !name.isEmpty else { throw ValidationError("--name must not be empty") }
        guard ttl >= .milliseconds(200) else { throw ValidationError("--ttl must be at least 200ms") }
        guard effectiveGrace + margin <= ttl / 2 else {
            throw ValidationError(
                "--grace \(effectiveGrace) leaves no room in a \(ttl) lease: SIGKILL must land \(margin) before the validity ends, "
                    + "so --grace may be at most \(ttl / 2 - margin)"
            )
        }
    }

    func run() async throws {
        _ = signal(SIGPIPE, SIG_IGN)
        // Too few descriptors fail a run somewhere between the acquire and the command's start
        // (a lock taken for nothing), or trap in Dispatch (signalfd): refuse first, as an
        // operating-system error. (Under 6, Dispatch traps before this runs.)
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < Self.fewestDescriptors {
            printError(
                "redlock: this process may open only \(limit.rlim_cur) files (ulimit -n); it needs at least \(Self.fewestDescriptors) "
                    + "(its event loop and timers, signal handlers, the watchdog's pipes, a connection or two per node); nothing ran"
            )
            throw ExitCode(Status.systemError)
        }
        let made: (RedlockClient, DistributedLock)
        do {
            // Every attempt waits for each node's answer (within its budget, --ttl × 0.05): the
            // exit status says why the lock was not had (75 held, 77 refused, 69 unavailable, 64
            // misconfigured). Fail-fast waits for the answers that could make "held" a quorum,
            // but not for one that could be a node's refusal of the credentials or a server
            // listed twice: with the other nodes down, whose refusals come first, 77 or 64 would
            // hang on answer order. A frozen node costs each round its budget.
            made = try makeLock(
                nodes: nodes, name: name,
                options: LockOptions(
                    expiry: ttl, failFast: false, fencing: true, restartGuard: restartGuard, epochGuard: epochGuard, clockGuard: clockGuard
                )
            )
        } catch {
            // Pointing at this command's help, not the top-level usage.
            printError("Error: \(error)\nSee 'redlock run --help' for more information.")
            throw ExitCode(Status.usage)
        }
        let (client, lock) = made

        let supervision = Supervision()
        // A signal ignored when redlock starts stays ignored, by redlock and by the command,
        // rather than be passed on: SIGHUP under nohup, SIGINT and SIGQUIT in an asynchronous
        // list (`cmd &`) of a shell without job control, which a shell itself may not trap
        // either (POSIX, Shell Command Language, 2.11 and `trap`). SIGTERM is always handled:
        // it is how the command is stopped before the lease ends.
        let keptIgnored = [SIGHUP, SIGINT, SIGQUIT].filter { redlock_signal_is_ignored($0) != 0 }
        let handled = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT].filter { !keptIgnored.contains($0) }
        let handlers = SignalHandlers(handled) { supervision.received($0) }
        var status: Int32
        let acquiring = Task { await acquire(lock) }
        supervision.acquiring(cancel: { acquiring.cancel() })
        switch await acquiring.value {
        case let .failure(error):
            let interrupted = supervision.terminatingSignal
            status = exitStatus(for: error, signal: interrupted, nodeCount: client.nodes.count, quorum: client.quorum)
            if interrupted == nil {
                // Asking the silent nodes again takes up to 3 s: a terminating signal cuts it short
                // (one that came since the line above, at once).
                let diagnosis = Task { await diagnoseSilentNodes(error, client: client) }
                supervision.acquiring(cancel: { diagnosis.cancel() })
                if await !diagnosis.value, let signal = supervision.terminatingSignal {
                    printError("redlock: interrupted by signal \(signal) while asking the silent nodes again")
                    status = 128 + signal
                }
            }
        case let .success(lease):
            if let signal = supervision.terminatingSignal {
                try? await lock.unlock(lease)
                status = 128 + signal
            } else {
                report("acquired \(RedlockError.shown(name)) token=\(lease.fencingToken.map(String.init) ?? "none") \(boottime(lease))")
                status = await runHolding(lease, lock: lock, supervision: supervision, keptIgnored: keptIgnored)
            }
        }
        // Signals are taken until the client has shut down (it may wait for a stalled node): the
        // exit status is the command's, not that of a SIGTERM meanwhile.
        await client.shutdown()
        handlers.stop()
        throw ExitCode(status)
    }

    /// One attempt when --wait is zero, else `lock(timeout:)`: it retries (woken by releases)
    /// until --wait has passed, stops at once on permanent refusals, and keeps the last cause.
    /// A host name that does not resolve (yet) is retried within --wait too, though the
    /// library takes it as permanent: an init container may start before the DNS record of a
    /// node's pod exists. Cancelled (a signal): the last failure.
    private func acquire(_ lock: DistributedLock) async -> Result<Lease, RedlockError> {
        guard wait > .zero else {
            do throws(RedlockError) { return .success(try await lock.tryLock()) } catch { return .failure(error) }
        }
        let deadline = ContinuousClock.now + wait
        var pause: Duration = .milliseconds(100)
        var told = false
        while true {
            let failure: RedlockError
            do throws(RedlockError) {
                return .success(try await lock.lock(timeout: max(.zero, ContinuousClock.now.duration(to: deadline))))
            } catch {
                failure = error
            }
            let unresolved = failure.nodes.filter { $0.cause.error.map { $0.code == .nameResolutionFailed && $0.isPermanent } ?? false }
            // Other nodes refused for good (credentials, permissions) so many that no quorum
            // could form even once the names resolve: no use waiting.
            let refusedForGood = failure.nodes.filter { failed in
                failed.cause.error.map { $0.isPermanent && $0.code != .nameResolutionFailed } ?? false
            }.count
            let left = ContinuousClock.now.duration(to: deadline)
            guard failure.code != .taken, !unresolved.isEmpty, lock.client.nodes.count - refusedForGood >= lock.client.quorum,
                  left > .zero, !Task.isCancelled
            else { return .failure(failure) }
            if !told {
                told = true
                let names = unresolved.map { "node \($0.node) (\($0.cause.error?.endpoint.map(String.init(describing:)) ?? "?"))" }.joined(separator: ", ")
                printError("redlock: \(names): the host name does not resolve (yet); trying again within --wait (\(String(format: "%.1f", left / .seconds(1))) s left)")
            }
            do { try await Task.sleep(for: min(pause, left)) } catch { return .failure(failure) }
            pause = min(pause * 2, .seconds(2))
        }
    }

    /// The exit status for a failed acquire, with the cause printed.
    private func exitStatus(for error: RedlockError, signal: Int32?, nodeCount: Int, quorum: Int) -> Int32 {
        let status: Int32
        let summary: String
        switch error.code {
        case _ where signal != nil:
            status = 128 + (signal ?? 0)
            summary = "interrupted by signal \(signal ?? 0) while waiting for the lock"
        case .taken:
            status = Status.taken
            summary = wait == .zero ? "held by another holder" : "held by another holder for the whole --wait of \(wait)"
        case _ where refusesPermission(error):
            status = Status.permissionDenied
            summary = "a node refused the credentials, the database or a command"
                + (epochGuard != nil || clockGuard
                    ? " (the epoch and clock guards also need +time and the key redlock:epoch: README, ACL rules; "
                        + "redlock doctor --epoch-guard or --clock-guard checks them)"
                    : "")
        case .invalidConfiguration:
            status = Status.usage
            summary = "invalid configuration"
        case _ where outOfDescriptors(error):
            // This machine's limit, not the nodes: an operating-system error.
            status = Status.systemError
            summary = "this process ran out of file descriptors (raise ulimit -n)"
        case _ where misconfigured(error, nodeCount: nodeCount, quorum: quorum):
            // A node list that names one server twice (two names of one address), or an
            // address no connection can use, cost the quorum: the configuration, like a bad
            // --nodes.
            status = Status.usage
            summary = "a node's address cannot be used as given"
        default:
            status = Status.unavailable
            summary = "the nodes could not form a quorum"
        }
        printError("redlock: could not acquire the lock: \(summary): \(error)")
        return status
    }

    /// Whether a node failed because this process (EMFILE) or the system (ENFILE) had no file
    /// descriptor left for its socket or the client's event loop.
    private func outOfDescriptors(_ error: RedlockError) -> Bool {
        let texts = [EMFILE, ENFILE].map { String(cString: strerror($0)) }
        return error.nodes.contains { failure in failure.cause.error.map { cause in texts.contains { cause.message.contains($0) } } ?? false }
    }

    /// For nodes that gave no answer within the attempt and had no connection failure yet (a
    /// connect still under way when the attempt's budget, `--ttl` × 0.05, ran out: a TLS
    /// handshake with a plain port, a silent host, take the connect timeout), what a `PING`
    /// finds on each, within the node's timeouts (at most 3 s), so that the cause is named.
    /// Returns false when cancelled before the answers were told (a signal cut it short).
    private func diagnoseSilentNodes(_ error: RedlockError, client: RedlockClient) async -> Bool {
        let silent = Set(error.nodes.filter { $0.cause == .noAnswer && $0.connectionFailure == nil }.map(\.node))
        guard !silent.isEmpty else { return true }
        guard !Task.isCancelled else { return false }
        let statuses = await client.checkNodes()
        // Cut short by a signal: what was asked has no answer to tell.
        guard !Task.isCancelled else { return false }
        for status in statuses where silent.contains(status.node) {
            switch status.result {
            case let .failure(failure): printError("redlock: node \(status.node) (\(status.endpoint)), asked again: \(failure)")
            case .success: printError("redlock: node \(status.node) (\(status.endpoint)) answers now: it was only slow")
            }
        }
        return true
    }

    /// Whether nodes refused as addresses no connection can use (one server listed twice under
    /// two names) are what left no quorum: without them, the other failures would have left
    /// one. Else other nodes' failures decided it (69, worth retrying).
    private func misconfigured(_ error: RedlockError, nodeCount: Int, quorum: Int) -> Bool {
        let invalid = error.nodes.filter { ($0.cause.error ?? $0.connectionFailure)?.code == .invalidAddress }
        guard !invalid.isEmpty else { return false }
        return error.nodes.count - invalid.count <= nodeCount - quorum
    }

    /// Whether a node refused for good what it was asked: the credentials (`AUTH`), the
    /// database (`SELECT`), a command or key (`NOPERM`, a command renamed away). A key of
    /// another type (`WRONGTYPE`) is a conflict of data, not a refusal: 69.
    private func refusesPermission(_ error: RedlockError) -> Bool {
        error.nodes.contains { node in
            guard let failure = node.cause.error, failure.isPermanent else { return false }
            return failure.isPermissionRefusal || failure.code == .databaseSelectionFailed || failure.isUnknownCommand
        }
    }

    private func runHolding(_ lease: Lease, lock: DistributedLock, supervision: Supervision, keptIgnored: [Int32]) async -> Int32 {
        let margin = margin
        let grace = effectiveGrace
        // Extend early enough that a failing extension still has time for retries before the
        // group must get SIGTERM (grace + margin before the validity ends).
        let extendWhenRemaining = min(0.9, (grace + margin) / ttl + 1.0 / 3.0)
        // The command gets redlock's environment with its fencing token, but not the node list:
        // its URLs may carry passwords, which the command does not need to be protected. Its
        // arguments and environment go on as the bytes redlock was given (RawArguments).
        let given = RawArguments.environment() ?? ProcessInfo.processInfo.environment.map { Array("\($0.key)=\($0.value)".utf8) }
        let environment = given.filter {
            !RawArguments.entry($0, sets: "REDLOCK_NODES") && !RawArguments.entry($0, sets: "REDLOCK_FENCING_TOKEN")
        } + [Array("REDLOCK_FENCING_TOKEN=\(lease.fencingToken.map(String.init) ?? "")".utf8)]
        let command = rawCommand
        // What the body saw, for the message after a lost lease: how the command ended, and the
        // last validity it ran under (CLOCK_BOOTTIME nanoseconds).
        let seen = Mutex<(ending: SupervisedCommand.Ending?, validUntil: Int64, killedEverythingAt: Int64?, terminatedAt: Int64?)>(
            (nil, SupervisedCommand.boottimeNanoseconds(lease.validUntil), nil, nil)
        )
        do {
            let ending = try await lock.withLease(
                lease, extendWhenRemaining: extendWhenRemaining, maximumHoldTime: nil, safetyMargin: grace + margin,
                onExtended: { extended in
                    seen.withLock { $0.validUntil = SupervisedCommand.boottimeNanoseconds(extended.validUntil) }
                    // The line is queued before the watchdog hears of the deadline: a reader of
                    // the lines never sees a deadline the watchdog holds without its line (one
                    // queued is written at exit), also when redlock is stopped between the two.
                    report("extended \(RedlockError.shown(extended.name)) \(boottime(extended))")
                    supervision.renew(until: extended.validUntil.advanced(by: .zero - margin))
                }
            ) { held in
                // A terminating signal that came while the lease was confirmed keeps the command
                // from starting; one during the start is forwarded to the watchdog, which does
                // not start it either if it reads it first.
                if let signal = supervision.terminatingSignal { return SupervisedCommand.Ending.signalledBeforeStart(signal) }
                supervision.starting()
                let supervised = try SupervisedCommand(
                    command: command, environment: environment, deadline: held.lease.validUntil.advanced(by: .zero - margin),
                    keptIgnored: keptIgnored
                )
                supervision.started(supervised)
                let ending = await supervised.wait(grace: grace)
                seen.withLock { seen in
                    seen.ending = ending
                    seen.killedEverythingAt = supervised.killedEverythingAt
                    seen.terminatedAt = supervised.terminatedAt
                }
                return ending
            }
            switch ending {
            case let .notStarted(errno):
                printError("redlock: could not start \(String(decoding: command[0], as: UTF8.self)): \(String(cString: strerror(errno)))")
            case .tooLate:
                printError("redlock: the lease's deadline passed before the command could start; it did not run")
                return Status.leaseLost
            case let .signalledBeforeStart(signal):
                printError("redlock: got signal \(signal) before the command started; it did not run")
            case .watchdogLost:
                return Status.systemError
            case .exited(_, killedByWatchdog: .missedRenewal?, _):
                // The lease held, but no renewal reached the watchdog in time (redlock starved or
                // stopped, the watchdog's pipe full): the command was stopped all the same.
                printError("redlock: the watchdog killed the command: no renewal reached it before the lease's deadline")
                return Status.leaseLost
            case let .exited(_, killedByWatchdog: .stayedStopped(signal)?, _):
                // Stopped by job control where redlock could not stop with it (an orphaned
                // process group, a PID namespace's init), or by SIGSTOP: it would have held the
                // lock for good.
                let how = signal == SIGSTOP ? "SIGSTOP (signal \(signal))"
                    : "job control (signal \(signal)\(signal == SIGTSTP ? "" : ": it used the terminal outside its foreground"))"
                printError(
                    "redlock: the command was stopped by \(how) and stayed stopped past the lease's deadline; a stopped job renews nothing: the watchdog killed it"
                )
                return Status.leaseLost
            case .exited:
                break
            }
            return ending.shellStatus
        } catch let error as RedlockError where error.code == .leaseLost || error.code == .leaseExpired {
            let (ending, validUntil, killedEverythingAt, terminatedAt) = seen.withLock {
                ($0.ending, $0.validUntil, $0.killedEverythingAt, $0.terminatedAt)
            }
            // The watchdog's deadline: the validity less the safety margin.
            let deadline = validUntil - (margin.components.seconds * 1_000_000_000 + margin.components.attoseconds / 1_000_000_000)
            // The nodes said the keys were gone or another holder's (an extension's or the
            // release's answer, while the lease was valid): whenever the command ended, its work
            // may have overlapped another holder's.
            let keysLost = error.nodes.contains { $0.cause == .taken || $0.cause == .missing }
            switch ending {
            case let .exited(_, nil, goneAt)? where !keysLost && goneAt < min(terminatedAt ?? .max, deadline):
                // It ended on its own, nobody having signalled it for the lease, before the
                // watchdog's deadline, and no node said the keys were lost: all of it ran
                // protected. redlock (stopped or starved: a frozen VM, a throttled container)
                // saw its end only after the scope's deadline, which counts the lease lost; the
                // command's status stands.
                printError(
                    "redlock: the command ended on its own \(milliseconds(deadline - goneAt)) ms before the lease's deadline, "
                        + "but redlock, held up (stopped or starved), saw its end only after that deadline; it ran protected, and its status stands (\(error.code): \(error.message))"
                )
                return ending?.shellStatus ?? Status.leaseLost
            case let .exited(_, _, reportedGoneAt)? where min(reportedGoneAt, killedEverythingAt ?? .max) > validUntil:
                let goneAt = min(reportedGoneAt, killedEverythingAt ?? .max)
                printError(
                    "redlock: lost the lease; the command was gone only \(milliseconds(goneAt - validUntil)) ms after "
                        + "the lease's validity ended (redlock or the watchdog was stopped, or killing the command's processes took that long): \(error)"
                )
            case let .exited(_, _, reportedGoneAt)?:
                // How long before: the error may speak of the scope's deadline (the validity less
                // the safety margin), which the command may have outlived within the margin.
                let goneAt = min(reportedGoneAt, killedEverythingAt ?? .max)
                printError(
                    "redlock: lost the lease; the command was gone \(milliseconds(validUntil - goneAt)) ms before the lease's validity ended"
                        + "\(keysLost ? "" : ", so none of it ran unprotected"): \(error)"
                )
            case .notStarted?, .tooLate?, .signalledBeforeStart?, .watchdogLost?, nil:
                printError("redlock: lost the lease before the command ran: \(error)")
            }
            return Status.leaseLost
        } catch let error as SupervisedCommand.SpawnError {
            printError("redlock: \(error)")
            return Status.systemError
        } catch {
            printError("redlock: \(error)")
            return Status.unavailable
        }
    }

    /// A --verbose line: written without waiting (``StandardError``), as it is on the
    /// extender's path.
    private func report(_ line: String) {
        if verbose { StandardError.shared.write("redlock: " + line) }
    }

    /// `valid for 9.871s (valid_until_boottime_ns=N)`: the validity left, in seconds to the
    /// millisecond, and its end on CLOCK_BOOTTIME (the clock other processes can compare with).
    private func boottime(_ lease: Lease) -> String {
        let left = ContinuousClock.now.duration(to: lease.validUntil)
        let milliseconds = max(0, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)
        let seconds = "\(milliseconds / 1000).\(String(milliseconds % 1000).leftPadded(to: 3))s"
        return "valid for \(seconds) (valid_until_boottime_ns=\(SupervisedCommand.boottimeNanoseconds(lease.validUntil)))"
    }
}

/// Where signals to `redlock run` go: before the command starts, a terminating signal cancels
/// the wait and keeps the command from starting; afterwards every signal goes to its group.
final class Supervision: Sendable {
    private struct State {
        var command: SupervisedCommand?
        var cancelAcquire: (@Sendable () -> Void)?
        var terminatingSignal: Int32?
        /// The latest deadline from an extension confirmed before the command was attached.
        var renewedDeadline: ContinuousClock.Instant?
        /// The command is being started (``starting()``), not yet attached.
        var starting = false
        /// SIGCONT came while the command was being started: it may have been stopped with
        /// redlock's job already, and is resumed once attached.
        var continuedWhileStarting = false
    }

    private let state = Mutex(State())

    /// The first SIGINT, SIGTERM, SIGHUP or SIGQUIT received before the command started.
    var terminatingSignal: Int32? { state.withLock { $0.terminatingSignal } }

    /// Registers how to stop what runs before the command (the acquire, then the diagnosis of
    /// a failed one); called at once when a terminating signal came already.
    func acquiring(cancel: @escaping @Sendable () -> Void) {
        let cancelNow = state.withLock { state in
            state.cancelAcquire = cancel
            return state.terminatingSignal != nil
        }
        if cancelNow { cancel() }
    }

    /// The command is about to be started: a SIGCONT from now until ``started(_:)`` resumes it
    /// once attached.
    func starting() {
        state.withLock { $0.starting = true }
    }

    /// The command runs: signals go to it from now on, and a renewal that came first is passed on.
    func started(_ command: SupervisedCommand) {
        let (renewed, pending, continued) = state.withLock { state in
            state.command = command
            return (state.renewedDeadline, state.terminatingSignal, state.continuedWhileStarting)
        }
        if let renewed { command.renew(until: renewed) }
        if let pending { command.signal(pending) }
        if continued { command.resume() }
    }

    /// Moves the command's deadline (or remembers it until the command runs).
    func renew(until deadline: ContinuousClock.Instant) {
        let command = state.withLock { state in
            if state.command == nil { state.renewedDeadline = deadline }
            return state.command
        }
        command?.renew(until: deadline)
    }

    func received(_ signal: Int32) {
        if signal == SIGCONT {
            // The job was resumed after a stop from the terminal.
            let command = state.withLock { state in
                if state.command == nil, state.starting { state.continuedWhileStarting = true }
                return state.command
            }
            command?.resume()
            return
        }
        let (command, cancel) = state.withLock { state -> (SupervisedCommand?, (@Sendable () -> Void)?) in
            if let command = state.command { return (command, nil) }
            guard [SIGINT, SIGTERM, SIGHUP, SIGQUIT].contains(signal), state.terminatingSignal == nil else { return (nil, nil) }
            state.terminatingSignal = signal
            return (nil, state.cancelAcquire)
        }
        command?.signal(signal)
        cancel?()
    }
}

private extension String {
    /// The string with zeros before it up to `width` characters.
    func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}

/// `nanoseconds` in milliseconds to two decimals (`9577.05`), for messages.
private func milliseconds(_ nanoseconds: Int64) -> String {
    String(format: "%.2f", Double(nanoseconds) / 1e6)
}
