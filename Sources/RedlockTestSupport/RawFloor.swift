import RedlockTransport
import Synchronization

/// What a lock+unlock cycle cannot avoid sending, for benchmarks to measure the library
/// against: `SET NX PX` and a compare-and-delete, with nothing of the algorithm around them.
public enum RawFloor {
    /// Compare-and-delete, as a release does it: 1 deleted, 0 another holder's value, -1 no key.
    /// Written here, not taken from the library, so the floor depends on nothing internal to it.
    package static let releaseScript = RedisScript(
        """
        local held = redis.call('GET', KEYS[1])
        if held == ARGV[1] then
            return redis.call('DEL', KEYS[1])
        end
        if held == false then
            return -1
        end
        return 0
        """
    )

    /// The floor of one cycle on `nodes` for the key `name`: `SET name value NX PX expiry` to
    /// every node at once, waiting for every reply, then the compare-and-delete to every node at
    /// once, waiting for every reply. The commands are built once. The sends are the transport's
    /// cheapest: no task per node, the replies counted by handlers as they arrive. Throws when a
    /// node does not answer `OK` then `1`.
    public static func cycle(nodes: [RedisConnection], name: String, value: String, expiry: Duration = .seconds(8)) -> @Sendable () async throws -> Void {
        let milliseconds = String(expiry.wholeNanoseconds / 1_000_000)
        let set = RedisCommand("SET", name, value, "NX", "PX", milliseconds)
        let release = RedisScriptCall(releaseScript, keys: [name], arguments: [value])
        return {
            try await fanOut(nodes, set, script: nil, expecting: .simpleString("OK"), what: "SET NX")
            try await fanOut(nodes, release.command, script: release.script, expecting: .integer(1), what: "release")
        }
    }

    /// The floor built from tasks, for the attribution ladder: each phase runs one child task per
    /// node in a task group, and with `budget`, a `Task.sleep(for: budget)` child that bounds it
    /// (cancelled once every node answered). Same commands and checks as ``cycle(nodes:name:value:expiry:)``.
    public static func cycleWithTasks(
        nodes: [RedisConnection], name: String, value: String, expiry: Duration = .seconds(8), budget: Duration? = nil
    ) -> @Sendable () async throws -> Void {
        let milliseconds = String(expiry.wholeNanoseconds / 1_000_000)
        let set = RedisCommand("SET", name, value, "NX", "PX", milliseconds)
        return {
            try await eachNode(nodes, budget: budget) { node in
                let reply = try await node.send(set)
                guard reply == .simpleString("OK") else { throw BenchmarkError("SET NX on \(node) returned \(reply)") }
            }
            try await eachNode(nodes, budget: budget) { node in
                let reply = try await node.evaluate(releaseScript, keys: [name], arguments: [value], withdrawOnCancel: false)
                guard reply == .integer(1) else { throw BenchmarkError("release on \(node) returned \(reply)") }
            }
        }
    }

    /// Runs `body` on every node at once, one child task per node, and waits for all; with
    /// `budget`, throws when they have not all answered by then.
    private static func eachNode(
        _ nodes: [RedisConnection], budget: Duration?, _ body: @escaping @Sendable (RedisConnection) async throws -> Void
    ) async throws {
        try await withThrowingTaskGroup(of: Int?.self) { group in
            for (index, node) in nodes.enumerated() {
                group.addTask {
                    try await body(node)
                    return index
                }
            }
            if let budget {
                group.addTask {
                    try? await Task.sleep(for: budget)
                    return nil
                }
            }
            var answered = 0
            while answered < nodes.count, let next = try await group.next() {
                guard next != nil else { throw BenchmarkError("the budget ran out") }
                answered += 1
            }
            group.cancelAll()
        }
    }

    /// Sends `command` to every node at once and returns when all answered.
    static func fanOut(
        _ nodes: [RedisConnection],
        _ command: RedisCommand,
        script: RedisScript?,
        expecting expected: RedisValue,
        what: String
    ) async throws {
        let replies = Replies(expected: nodes.count)
        try await withUnsafeThrowingContinuation { continuation in
            replies.install(continuation)
            for node in nodes {
                node.send(command, script: script) { result in
                    switch result {
                    case let .success(reply) where reply == expected: replies.answered(failure: nil)
                    case let .success(reply): replies.answered(failure: BenchmarkError("\(what) on \(node) returned \(reply)"))
                    case let .failure(error): replies.answered(failure: error)
                    }
                }
            }
        }
    }

    /// Counts the replies of one fan-out and resumes its caller once, after the last.
    private final class Replies: Sendable {
        private struct State {
            var remaining: Int
            var failure: (any Error)?
            var continuation: UnsafeContinuation<Void, any Error>?
        }

        private let state: Mutex<State>

        init(expected: Int) {
            state = Mutex(State(remaining: expected))
        }

        /// Installed before any command is sent, so the last reply always finds it.
        func install(_ continuation: UnsafeContinuation<Void, any Error>) {
            let done = state.withLock { state in
                state.continuation = continuation
                return state.remaining == 0
            }
            if done { continuation.resume() }
        }

        func answered(failure: (any Error)?) {
            let resume = state.withLock { state -> (UnsafeContinuation<Void, any Error>, (any Error)?)? in
                state.remaining -= 1
                if state.failure == nil { state.failure = failure }
                guard state.remaining == 0, let continuation = state.continuation else { return nil }
                state.continuation = nil
                return (continuation, state.failure)
            }
            guard let (continuation, failure) = resume else { return }
            if let failure { continuation.resume(throwing: failure) } else { continuation.resume() }
        }
    }
}

/// A failed check in a benchmark: an unexpected reply, a run that did not finish.
public struct BenchmarkError: Error, CustomStringConvertible {
    /// What failed, in words: the check and what it saw.
    public let description: String
    /// Makes the error from its `description`.
    public init(_ description: String) { self.description = description }
}
