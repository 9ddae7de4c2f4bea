import ArgumentParser
import Dispatch
import Foundation
import Redlock
import RedlockTestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `redlock-worker contend`: many short critical sections on one lock, each logged, until
/// SIGTERM (or `--acquisitions` of them).
///
/// The log gets one line per acquisition, space-separated:
/// `PID ACQUIRE_NS RELEASE_NS VALID_UNTIL_NS FENCING_TOKEN` — when `lock()` returned, when the
/// critical section ended (just before `unlock`), the lease's `validUntil` (after any extend),
/// all on `CLOCK_BOOTTIME`, and the fencing token or `-`. Lines starting with `#` are comments.
struct Contend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run short critical sections on one lock until SIGTERM, logging each acquisition."
    )

    @OptionGroup var cluster: ClusterOptions

    @Option(help: "The log file; one line per acquisition is appended.")
    var log: String

    @Option(name: .customLong("hold-min-ms"), help: "Each critical section lasts at least this many ms.")
    var holdMinMilliseconds: Int = 0

    @Option(name: .customLong("hold-max-ms"), help: "Each critical section lasts a random --hold-min-ms…N ms.")
    var holdMaxMilliseconds: Int = 5

    @Option(name: .customLong("retry-min-ms"), help: "The shortest retry delay in milliseconds.")
    var retryMinimumMilliseconds: Int = 2

    @Option(name: .customLong("retry-max-ms"), help: "The longest retry delay in milliseconds.")
    var retryMaximumMilliseconds: Int = 20

    @Option(help: "Extend the lease once in every Nth critical section (0: never).")
    var extendEvery: Int = 4

    @Option(help: "Stop after this many acquisitions (0: run until SIGTERM).")
    var acquisitions: Int = 0

    @Flag(help: "Acquire with fencing tokens and log them.")
    var fencing = false

    @Option(name: .customLong("epoch-guard-ms"), help: "Turn the epoch guard on with this many milliseconds (at least --expiry-ms).")
    var epochGuardMilliseconds: Int?

    @Flag(name: .customLong("clock-guard"), help: "Turn the clock guard on.")
    var clockGuard = false

    @Flag(name: .customLong("no-fast-handoff"), help: "Wait out the retry delay instead of listening for releases.")
    var noFastHandoff = false

    @Flag(help: "Make the lock fair: first come, first served across processes.")
    var fair = false

    @Option(help: "Count a node's grant only once this many of its replicas acknowledged it (WAIT).")
    var replicaAcknowledgements: Int = 0

    @Flag(help: "Run the critical-section loop on the client's executor (its I/O thread).")
    var executor = false

    func validate() throws {
        guard holdMinMilliseconds >= 0, holdMaxMilliseconds >= holdMinMilliseconds, retryMinimumMilliseconds >= 0, retryMaximumMilliseconds >= retryMinimumMilliseconds,
              extendEvery >= 0, acquisitions >= 0, (epochGuardMilliseconds ?? 1) > 0, replicaAcknowledgements >= 0
        else { throw ValidationError("bad timing or count options") }
    }

    /// What one worker did, printed when it ends.
    struct Summary: Sendable, CustomStringConvertible {
        var acquisitions = 0
        var lockFailures = 0
        var extends = 0
        var extendFailures = 0
        var unlockFailures = 0

        var description: String {
            "acquisitions=\(acquisitions) lock_failures=\(lockFailures) extends=\(extends) "
                + "extend_failures=\(extendFailures) unlock_failures=\(unlockFailures)"
        }
    }

    func run() async throws {
        cluster.startWatchdog()
        let descriptor = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw ValidationError("cannot open \(log): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        append("# pid acquire_ns release_ns valid_until_ns fencing_token", to: descriptor)

        let client = try cluster.makeClient()
        let options = LockOptions(
            expiry: cluster.expiry,
            tries: 1_000_000,
            retryDelay: .random(in: .milliseconds(retryMinimumMilliseconds)...(.milliseconds(retryMaximumMilliseconds))),
            timeoutFactor: cluster.timeoutFactor,
            fencing: fencing,
            epochGuard: epochGuardMilliseconds.map { .milliseconds($0) },
            clockGuard: clockGuard,
            fastHandoff: !noFastHandoff,
            fair: fair,
            replicaAcknowledgements: replicaAcknowledgements
        )
        let lock = try client.makeLock(cluster.lock, options: options)

        let work = Task(executorPreference: executor ? client.executor : nil) { await criticalSections(lock: lock, log: descriptor) }
        // SIGTERM ends the loop gracefully: the section in progress is finished and logged.
        let termination = SignalHandlers([SIGTERM]) { _ in work.cancel() }

        say("ready pid=\(getpid())")
        let summary = await work.value
        termination.stop()
        await client.shutdown()
        say("done \(summary)")
    }

    private func criticalSections(lock: DistributedLock, log descriptor: Int32) async -> Summary {
        let pid = getpid()
        var summary = Summary()
        while !Task.isCancelled {
            var lease: Lease
            do {
                lease = try await lock.lock()
            } catch {
                if error.code == .cancelled { break }
                summary.lockFailures += 1
                continue
            }
            let acquired = ContinuousClock.now
            summary.acquisitions += 1

            if extendEvery > 0, summary.acquisitions % extendEvery == 0, lease.isValid {
                do {
                    lease = try await lock.extend(lease)
                    summary.extends += 1
                } catch {
                    summary.extendFailures += 1
                }
            }
            let hold = Int.random(in: holdMinMilliseconds...holdMaxMilliseconds)
            if hold > 0 { try? await Task.sleep(for: .milliseconds(hold)) }
            let released = ContinuousClock.now
            do {
                try await lock.unlock(lease)
            } catch {
                summary.unlockFailures += 1
            }

            let token = lease.fencingToken.map(String.init) ?? "-"
            append(
                "\(pid) \(MachineClock.nanoseconds(acquired)) \(MachineClock.nanoseconds(released)) "
                    + "\(MachineClock.nanoseconds(lease.validUntil)) \(token)",
                to: descriptor
            )
            if acquisitions > 0, summary.acquisitions >= acquisitions { break }
        }
        return summary
    }

    /// Appends one line with a single `write`, so a killed worker leaves only whole lines.
    private func append(_ line: String, to descriptor: Int32) {
        let text = line + "\n"
        _ = text.utf8CString.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count - 1) }
    }
}
