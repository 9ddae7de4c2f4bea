/// A Lua script, sent with `EVALSHA` or `EVAL` so that a node runs it in its place among the
/// commands pipelined with it (see ``RedisConnection/evaluate(_:withdrawOnCancel:)``).
package struct RedisScript: Sendable, Hashable {
    /// The Lua source.
    package let source: String
    /// The lowercase hex SHA-1 of the source, as Redis names the script.
    package let sha1: String

    /// Creates a script; its SHA-1 is computed once here.
    package init(_ source: String) {
        self.source = source
        sha1 = SHA1.hexDigest(of: Array(source.utf8))
    }
}

/// A script with its keys and arguments, its `EVALSHA` and `EVAL` commands built once: send
/// the same call to many nodes without building either again for each.
package struct RedisScriptCall: Sendable {
    /// `EVALSHA sha1 numkeys keys… arguments…`.
    package let command: RedisCommand
    /// `EVAL source numkeys keys… arguments…`: what a connection sends when other commands follow
    /// the call in a batch, when the node has not run the script on that connection yet, or when
    /// the node answers `NOSCRIPT` with nothing written behind the call.
    package let fallback: RedisCommand

    /// Builds the call.
    package init(_ script: RedisScript, keys: [String], arguments: [String]) {
        var parts: [String] = []
        parts.reserveCapacity(3 + keys.count + arguments.count)
        parts.append("EVALSHA")
        parts.append(script.sha1)
        parts.append(String(keys.count))
        parts.append(contentsOf: keys)
        parts.append(contentsOf: arguments)
        command = RedisCommand(parts)
        fallback = command.replacingLeadingArguments(2, with: ["EVAL", script.source])
    }
}

extension RedisConnection {
    /// Runs a script, in its place among the commands pipelined on the connection: by `EVALSHA`
    /// when nothing is written behind it and the node has run the script on this connection (a
    /// `NOSCRIPT` reply then sends `EVAL` before anything queued later), else by `EVAL` with its
    /// body. The fallback happens on the connection itself, so the script runs even if the
    /// caller was cancelled after the command was written. Behind a node that keeps its answer
    /// past the connection's coalescing window the commands queued later are written anyway,
    /// and a `NOSCRIPT` then fails the call (`serverError`) rather than run it after them.
    package func evaluate(
        _ script: RedisScript,
        keys: [String],
        arguments: [String],
        withdrawOnCancel: Bool = true
    ) async throws -> RedisValue {
        try await evaluate(RedisScriptCall(script, keys: keys, arguments: arguments), withdrawOnCancel: withdrawOnCancel)
    }

    /// Runs a prepared script call, with the same `NOSCRIPT` fallback.
    package func evaluate(_ call: RedisScriptCall, withdrawOnCancel: Bool = true) async throws -> RedisValue {
        try await send(PendingCommand(command: call.command, fallback: call.fallback, withdrawOnCancel: withdrawOnCancel))
    }
}
