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
/// the descriptors and locks again on a new client.
///
/// Prints one line: `exhausted first=<code> message=<…> second=<ok|code>`.
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
        // The runtime may close a descriptor of its own meanwhile: fill until none comes free.
        for _ in 0..<5 {
            while true {
                let descriptor = open("/dev/null", O_RDONLY | O_CLOEXEC)
                if descriptor < 0 { break }
                fillers.append(descriptor)
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        let first = await attempt()
        for descriptor in fillers { close(descriptor) }
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let second = await attempt()
        print("exhausted first=\(first.code) second=\(second.code) message=\(first.message.replacingOccurrences(of: " ", with: "_"))")
    }

    /// One `tryLock()` (and unlock) on a new client; its outcome.
    private func attempt() async -> (code: String, message: String) {
        do {
            let client = try cluster.makeClient()
            defer { Task { await client.shutdown() } }
            let lock = try client.makeLock(cluster.lock, options: LockOptions(expiry: cluster.expiry, tries: 1))
            do {
                let lease = try await lock.tryLock()
                try await lock.unlock(lease)
                return ("ok", "")
            } catch {
                return ("\(error.code)", error.nodes.first.map { "\($0.cause)" } ?? error.message)
            }
        } catch {
            return ("client", "\(error)")
        }
    }
}
