/// A Lua script, sent with `EVALSHA` or `EVAL` so that a node runs it in its place among the
/// commands pipelined with it (see ``RedisConnection/evaluate(_:withdrawOnCancel:)``).
package struct RedisScript: Sendable, Hashable {
    /// The Lua source.
    package let source: String
    /// The lowercase hex SHA-1 of the source, as Redis names the script.
    package let sha1: String
    /// The first 16 hex digits of ``sha1`` as a number: names the script well enough among the
    /// few a connection runs (its list of the scripts the node confirmed).
    package let digestPrefix: UInt64

    /// Creates a script; its SHA-1 is computed once here.
    package init(_ source: String) {
        self.source = source
        sha1 = SHA1.hexDigest(of: Array(source.utf8))
        digestPrefix = sha1.utf8.prefix(16).reduce(0) { value, byte in
            value << 4 | UInt64(byte <= UInt8(ascii: "9") ? byte - UInt8(ascii: "0") : byte - UInt8(ascii: "a") + 10)
        }
    }

    /// `call` (this script's `EVALSHA`) as `EVAL` with the source: built only when a connection
    /// needs it (the node has not run the script there, or forgot it).
    func evalForm(of call: RedisCommand) -> RedisCommand {
        call.replacingLeadingArguments(2, with: ["EVAL", source])
    }
}

/// Builds a script call's `EVAL` form (``RedisScriptCall/evalForm``) when a connection needs
/// it: what goes in a command's place until a script form ran on the socket
/// (``RedisConnection/send(_:script:runsLateUnlessBehind:untilScriptsRun:replayWindow:setting:handler:)``). Built
/// only then, so a command in steady use pays nothing for it.
package typealias RedisScriptForm = @Sendable () -> RedisCommand

/// A script with its keys and arguments, its `EVALSHA` command built once: send the same call
/// to many nodes without building it again for each. Its `EVAL` form is built by a connection
/// that needs it.
package struct RedisScriptCall: Sendable {
    /// `EVALSHA sha1 numkeys keys… arguments…`.
    package let command: RedisCommand
    /// The script, whose `EVAL source numkeys keys… arguments…` a connection sends when the node
    /// has not run the script on that connection yet, or when the node answers `NOSCRIPT` with
    /// nothing written behind the call (see also ``runsLateUnlessBehind``).
    package let script: RedisScript
    /// When the node answers `NOSCRIPT` with commands written behind the call: with this set,
    /// its `EVAL` goes out then, to run after them, unless one of them has this argument (the
    /// value the script acts on: a command of the same value must see its effect first) or
    /// more than 64 are behind it (the look is bounded); nil, the default, fails the call. For
    /// a script that a later command of another value cannot change the outcome of, and whose
    /// own effect on those commands does not matter, such as a compare-and-delete of a lease's
    /// value.
    package let runsLateUnlessBehind: String?
    /// While open, the connection sends the call again when it is lost (see
    /// ``RedisConnection/send(_:script:runsLateUnlessBehind:untilScriptsRun:replayWindow:setting:handler:)``);
    /// nil unless ``replayable(within:)`` set one.
    package private(set) var replayWindow: ReplayWindow?

    /// Builds the call.
    package init(_ script: RedisScript, keys: [String], arguments: [String], runsLateUnlessBehind: String? = nil) {
        self.runsLateUnlessBehind = runsLateUnlessBehind
        var parts: [String] = []
        parts.reserveCapacity(3 + keys.count + arguments.count)
        parts.append("EVALSHA")
        parts.append(script.sha1)
        parts.append(String(keys.count))
        parts.append(contentsOf: keys)
        parts.append(contentsOf: arguments)
        command = RedisCommand(parts)
        self.script = script
    }

    /// A call with no arguments yet, to complete with
    /// ``appending(_:then:runsLateUnlessBehind:)``: the part of a call that stays the same from
    /// call to call (a lock's script and name), built once.
    package init(_ script: RedisScript, keys: [String]) {
        self.init(script, keys: keys, arguments: [])
    }

    private init(command: RedisCommand, script: RedisScript, runsLateUnlessBehind: String?) {
        self.command = command
        self.script = script
        self.runsLateUnlessBehind = runsLateUnlessBehind
    }

    /// This call with `argument`, then `suffix`'s arguments, appended after its keys and
    /// arguments (see ``RedisCommand/appending(_:then:)``).
    package func appending(_ argument: String, then suffix: RedisCommand, runsLateUnlessBehind: String? = nil) -> RedisScriptCall {
        RedisScriptCall(command: command.appending(argument, then: suffix), script: script, runsLateUnlessBehind: runsLateUnlessBehind)
    }

    /// This call, sent again by the connection when it is lost, while `window` is open: for a
    /// compare-and-delete of a value nobody uses again until then. Nil: this call as it is.
    package func replayable(within window: ReplayWindow?) -> RedisScriptCall {
        var call = self
        call.replayWindow = window
        return call
    }

    /// The call as `EVAL source numkeys keys… arguments…`, built anew on each use.
    package var evalForm: RedisCommand { script.evalForm(of: command) }
}

extension RedisConnection {
    /// Runs a script, in its place among the commands pipelined on the connection: by `EVALSHA`
    /// once the node has run the script on this connection, else by `EVAL` with its body. On an
    /// idle connection, commands queued after an `EVALSHA` wait for its answer, so a `NOSCRIPT`
    /// (after `SCRIPT FLUSH`) sends `EVAL` before them; the fallback happens on the connection
    /// itself, so the script runs even if the caller was cancelled after the command was
    /// written. When commands were written behind the `EVALSHA` (a busy connection, a batch, a
    /// node that kept its answer past the coalescing window), a `NOSCRIPT` fails the call
    /// (`serverError`, the script did not run) rather than run it after them, unless the call's
    /// ``RedisScriptCall/runsLateUnlessBehind``.
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
        try await send(PendingCommand(
            command: call.command, script: call.script, runsLateUnlessBehind: call.runsLateUnlessBehind, withdrawOnCancel: withdrawOnCancel
        ))
    }
}
