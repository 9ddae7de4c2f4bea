import ArgumentParser
import RedlockOutput
import Foundation
import Redlock
import RedlockTestSupport

/// `redlock demo`: mutual exclusion under contention, surviving a minority of dead nodes, and
/// the clear error once the majority is gone.
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show contended tasks keeping exact mutual exclusion, then kill nodes.",
        discussion: """
        With no arguments it starts 5 local redis-server nodes, runs contended tasks under one \
        lock, kills 2 nodes and keeps locking, kills a 3rd and shows the quorum error, then stops \
        every node it started. With --nodes it runs only the contention part on running nodes \
        and kills nothing.
        """
    )

    @Option(help: "Comma-separated running nodes (host:port, redis://…, unix:///…). Default: start 5 local nodes.")
    var nodes: String?

    @Option(help: "Concurrent tasks contending for the lock.")
    var tasks: Int = 20

    @Option(help: "Critical sections each task runs.")
    var rounds: Int = 10

    func validate() throws {
        try validateLogLevelSetting()
        try RawArguments.requireText()
        guard tasks >= 1, rounds >= 1 else { throw ValidationError("--tasks and --rounds must be at least 1") }
    }

    func run() async throws {
        if let nodes {
            let configurations = try parseNodeList(nodes)
            let client = try RedlockClient(nodes: configurations)
            say("Using \(configurations.count) running nodes: \(configurations.map(\.description).joined(separator: ", "))")
            try await withTeardown {
                try await contention(client, label: "all nodes")
            } teardown: {
                await client.shutdown()
            }
            return
        }

        TerminationCleanup.install()
        say("Starting 5 local redis-server nodes…")
        let servers = try await RedisServer.start(count: 5)
        try await withTeardown {
            try await story(servers)
        } teardown: {
            for server in servers { await server.terminate() }
        }
        say("Stopped every node the demo started. Done.")
    }

    private func story(_ servers: [RedisServer]) async throws {
        for (index, server) in servers.enumerated() { say("  node \(index): \(server.endpoint)") }
        let client = try RedlockClient(nodes: servers.map { $0.configuration(connectTimeout: .milliseconds(250), commandTimeout: .milliseconds(500)) })
        try await withTeardown {
            try await contention(client, label: "5 of 5 nodes up")

            say("\nKilling nodes 0 and 1 (SIGKILL)…")
            await servers[0].kill()
            await servers[1].kill()
            try await contention(client, label: "3 of 5 nodes up")

            say("\nKilling node 2: only 2 of 5 nodes remain, below the quorum of 3…")
            await servers[2].kill()
            let lock = try client.makeLock("demo:counter", options: LockOptions(tries: 3, retryDelay: .constant(.milliseconds(20))))
            let started = ContinuousClock.now
            do {
                let lease = try await lock.lock()
                try? await lock.unlock(lease)
                throw DemoFailure("acquired a lock with only 2 of 5 nodes up")
            } catch let error as RedlockError where error.code == .noQuorum {
                say("lock() failed after \(format(started.duration(to: .now))), as it must:")
                say("  \(error.code): \(error.message)")
                for node in error.nodes { say("  - \(node)") }
            }
        } teardown: {
            await client.shutdown()
        }
    }

    /// `tasks` tasks each run `rounds` critical sections on one lock that read a shared counter,
    /// yield, and write it back: without mutual exclusion increments would be lost.
    private func contention(_ client: RedlockClient, label: String) async throws {
        let lock = try client.makeLock("demo:counter", options: LockOptions(
            expiry: .seconds(5), tries: 100_000, retryDelay: .random(in: .milliseconds(1)...(.milliseconds(10)))
        ))
        let shared = SharedCounter()
        let started = ContinuousClock.now
        let latencies = try await withThrowingTaskGroup(of: [Duration].self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    var latencies: [Duration] = []
                    for _ in 0..<rounds {
                        let before = ContinuousClock.now
                        let lease = try await lock.lock()
                        latencies.append(before.duration(to: .now))
                        await shared.criticalSection()
                        try await lock.unlock(lease)
                    }
                    return latencies
                }
            }
            var all: [Duration] = []
            for try await part in group { all += part }
            return all.sorted()
        }
        let elapsed = started.duration(to: .now)
        let expected = tasks * rounds
        let (count, maximum) = await shared.result
        say("[\(label)] \(tasks) tasks × \(rounds) critical sections: counter = \(count) (expected \(expected)), at most \(maximum) holder at a time, \(format(elapsed)) in all; wait for the lock p50 \(format(latencies[latencies.count / 2])), max \(format(latencies[latencies.count - 1]))")
        guard count == expected, maximum == 1 else {
            throw DemoFailure("mutual exclusion broken: counter \(count) of \(expected), \(maximum) holders at once")
        }
    }
}

/// A counter whose increment is not atomic: it reads, suspends, then writes.
actor SharedCounter {
    private var value = 0
    private var inside = 0
    private var maximumInside = 0

    func criticalSection() async {
        inside += 1
        maximumInside = max(maximumInside, inside)
        let seen = value
        await Task.yield()
        value = seen + 1
        inside -= 1
    }

    var result: (count: Int, maximumInside: Int) { (value, maximumInside) }
}

struct DemoFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Prints a line at once, also when stdout is a pipe.
func say(_ line: String) {
    writeLine(line, to: STDOUT_FILENO)
}

func format(_ duration: Duration) -> String {
    let microseconds = Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12
    if microseconds < 1_000 { return String(format: "%.0f µs", microseconds) }
    if microseconds < 1_000_000 { return String(format: "%.1f ms", microseconds / 1e3) }
    return String(format: "%.2f s", microseconds / 1e6)
}
