/// A Lua script sent with `EVALSHA`, falling back to `EVAL` when the node answers `NOSCRIPT`.
public struct RedisScript: Sendable, Hashable {
    /// The Lua source.
    public let source: String
    /// The lowercase hex SHA-1 of the source, as Redis names the script.
    public let sha1: String

    /// Creates a script; its SHA-1 is computed once here.
    public init(_ source: String) {
        self.source = source
        sha1 = SHA1.hexDigest(of: Array(source.utf8))
    }
}

extension RedisConnection {
    /// Runs a script by `EVALSHA`; when the node does not know it yet (after a restart or
    /// `SCRIPT FLUSH`) the connection sends `EVAL` in its place, which also loads it for next
    /// time. The fallback happens on the connection itself, so the script runs even if the
    /// caller was cancelled after the command was written.
    public func evaluate(
        _ script: RedisScript,
        keys: [String],
        arguments: [String],
        withdrawOnCancel: Bool = true
    ) async throws -> RedisValue {
        try await send(Self.pendingEvaluation(script, keys: keys, arguments: arguments, withdrawOnCancel: withdrawOnCancel))
    }

    /// Queues a script run (with the same `NOSCRIPT` fallback) without waiting for its reply.
    public func evaluateAndForget(_ script: RedisScript, keys: [String], arguments: [String]) {
        core.enqueue(Self.pendingEvaluation(script, keys: keys, arguments: arguments, withdrawOnCancel: false))
    }

    private static func pendingEvaluation(_ script: RedisScript, keys: [String], arguments: [String], withdrawOnCancel: Bool) -> PendingCommand {
        PendingCommand(
            command: command(script.sha1, verb: "EVALSHA", keys: keys, arguments: arguments),
            script: script,
            withdrawOnCancel: withdrawOnCancel
        )
    }

    private static func command(_ body: String, verb: String, keys: [String], arguments: [String]) -> RedisCommand {
        var command = RedisCommand(verb, body)
        command.append(keys.count)
        for key in keys { command.append(key) }
        for argument in arguments { command.append(argument) }
        return command
    }
}
