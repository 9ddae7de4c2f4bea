import ArgumentParser
import Foundation
import Redlock

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `redlock-worker exhausted`: uses up this process's descriptors (a lowered `RLIMIT_NOFILE`,
/// then `/dev/null` opened until `EMFILE`), then makes a client and locks, so the test can see
/// that a failed `epoll_create1` (the client's event loop) is an error, not a hang; then frees
/// the descriptors and locks again on the same client (its event loop starts then) and on a new
/// one. Another client made without descriptors is shut down before they are back: a loop that
/// never started must not be waited for. A task that prefers the starved client's executor
/// must still run (a hang ends in the watchdog's kill).
///
/// The process is out of descriptors for as short a time as it can be (the fill and one
/// attempt, no sleep; a few milliseconds): on Linux, libdispatch's worker-pool monitor opens
/// `/proc/<tid>/stat` once a second while jobs are queued and traps (SIGILL, "workq:
/// registered worker exited prematurely") when that `open` fails, so any Swift process out of
/// descriptors may crash there, whatever its libraries do. The lines `exhausted starving` and
/// `exhausted fed` bracket that time, so a test can tell such a crash from one of its own.
///
/// Prints, last: `exhausted first=<code> executor=ok again=<ok|code> second=<ok|code> window_us=<µs out of
/// descriptors> message=<first's cause>`.
struct Exhausted: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Lock with no descriptor left, then again with descriptors back; report both outcomes."
    )

    @OptionGroup var cluster: ClusterOptions

    func run() async throws {
        cluster.startWatchdog()
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { throw ValidationError("getrlimit failed") }
        var lowered = limit
        lowered.rlim_cur = 256
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lowered) == 0 else { throw ValidationError("setrlimit failed") }
        var fillers: [Int32] = []
        fillers.reserveCapacity(256)
        say("exhausted starving")
        let start = ContinuousClock.now
        while true {
            let descriptor = open("/dev/null", O_RDONLY | O_CLOEXEC)
            if descriptor < 0 { break }
            fillers.append(descriptor)
        }
        let starved = try cluster.makeClient()
        let first = await attempt(on: starved)
        // A task that prefers the executor of a loop that cannot start runs on the global one.
        let hopped = await withTaskExecutorPreference(starved.executor) { "ok" }
        // A client whose event loop never started shuts down at once (no thread to wait for).
        await (try cluster.makeClient()).shutdown()
        for descriptor in fillers { close(descriptor) }
        let window = ContinuousClock.now - start
        say("exhausted fed")
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        // The client made without descriptors works once they are back; so does a new one.
        let again = await attempt(on: starved)
        await starved.shutdown()
        let fresh = try cluster.makeClient()
        let second = await attempt(on: fresh)
        await fresh.shutdown()
        let microseconds = window.components.seconds * 1_000_000 + window.components.attoseconds / 1_000_000_000_000
        say("exhausted first=\(first.code) executor=\(hopped) again=\(again.code) second=\(second.code) window_us=\(microseconds) message=\(first.message.replacingOccurrences(of: " ", with: "_"))")
    }

    /// One `tryLock()` (and unlock) on `client`; its outcome.
    private func attempt(on client: RedlockClient) async -> (code: String, message: String) {
        do {
            let lock = try client.makeLock(cluster.lock, options: LockOptions(expiry: cluster.expiry, tries: 1))
            let lease = try await lock.tryLock()
            try await lock.unlock(lease)
            return ("ok", "")
        } catch {
            return ("\(error.code)", error.nodes.first.map { "\($0.cause)" } ?? error.message)
        }
    }
}
