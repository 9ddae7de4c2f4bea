import ArgumentParser
import Foundation
import Redlock

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `redlock-worker hygiene`: many failed acquires (the test kills a majority of the nodes
/// first), then a report of this process's open descriptors and threads before, at the peak,
/// and after `shutdown()`.
///
/// It runs in a process of its own so the counts are exact: in the test process, other
/// suites open and close descriptors and threads concurrently.
///
/// Prints one line: `hygiene key=value …`.
struct Hygiene: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run failed acquires against dead nodes; report descriptors and threads before and after."
    )

    @OptionGroup var cluster: ClusterOptions

    @Option(help: "How many lock() calls to make (each with two attempts).")
    var acquires: Int = 1_000

    @Option(name: .customLong("settle-ms"), help: "How long to wait for the counts to come back after shutdown().")
    var settleMilliseconds: Int = 5_000

    /// Counts of this process's resources.
    struct Sample: Sendable {
        var descriptors: Int
        var threads: Int

        static func take() -> Sample {
            let manager = FileManager.default
            let descriptors = (try? manager.contentsOfDirectory(atPath: "/proc/self/fd"))?.count ?? -1
            let threads = (try? manager.contentsOfDirectory(atPath: "/proc/self/task"))?.count ?? -1
            return Sample(descriptors: descriptors, threads: threads)
        }
    }

    func run() async throws {
        cluster.startWatchdog()
        // Start the runtime's own threads (cooperative pool, timers) before the baseline.
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 { group.addTask { try? await Task.sleep(for: .milliseconds(2)) } }
        }
        let before = Sample.take()
        var peak = before
        let started = ContinuousClock.now

        let client = try cluster.makeClient()
        let lock = try client.makeLock(cluster.lock, options: LockOptions(
            expiry: cluster.expiry, tries: 2, retryDelay: .constant(.milliseconds(1)), timeoutFactor: cluster.timeoutFactor
        ))
        var failures: [String: Int] = [:]
        var succeeded = 0
        for index in 0..<acquires {
            do {
                let lease = try await lock.lock()
                succeeded += 1
                try? await lock.unlock(lease)
            } catch {
                failures["\(error.code)", default: 0] += 1
            }
            if index % 25 == 0 {
                let now = Sample.take()
                peak = Sample(
                    descriptors: max(peak.descriptors, now.descriptors),
                    threads: max(peak.threads, now.threads)
                )
            }
        }
        await client.shutdown()
        let elapsed = started.duration(to: .now)

        // Threads end a moment after they signal that they are done: let the counts settle.
        let deadline = ContinuousClock.now.advanced(by: .milliseconds(settleMilliseconds))
        var after = Sample.take()
        while ContinuousClock.now < deadline,
              after.descriptors > before.descriptors || after.threads > before.threads
        {
            try await Task.sleep(for: .milliseconds(10))
            after = Sample.take()
        }
        let failureText = failures.sorted { $0.key < $1.key }
            .map { "\($0.key):\($0.value)" }
            .joined(separator: ",")
        say(
            "hygiene acquires=\(acquires) succeeded=\(succeeded) failures=\(failureText) "
                + "fds_before=\(before.descriptors) fds_peak=\(peak.descriptors) fds_after=\(after.descriptors) "
                + "threads_before=\(before.threads) threads_peak=\(peak.threads) threads_after=\(after.threads) "
                + "elapsed_ms=\(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)"
        )
    }
}
