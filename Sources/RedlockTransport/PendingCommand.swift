import Synchronization

/// What a caller that does not suspend gets for a command: its outcome, exactly once.
///
/// Called on the thread that read the reply: the event loop's, or a caller's that was writing
/// to the connection when the reply came (or on the caller's thread when the connection rejects
/// the command at once), so it must be quick and must not block.
package typealias RedisReplyHandler = @Sendable (Result<RedisValue, RedisError>) -> Void

/// A command to queue with ``RedisConnection/send(_:)-(_)``: the command, for a script's
/// `EVALSHA` the script (for its `EVAL` form) and when that may run late
/// (``RedisScriptCall/runsLateUnlessBehind``), and what gets its outcome.
package struct QueuedCommand: Sendable {
    package let command: RedisCommand
    package let script: RedisScript?
    package let runsLateUnlessBehind: String?
    /// What goes in the command's place until such a script form succeeded on the socket
    /// (``RedisConnection/send(_:script:runsLateUnlessBehind:untilScriptsRun:replayWindow:setting:handler:)``).
    package let untilScriptsRun: RedisScriptForm?
    /// Sent again when lost while it is open (see
    /// ``RedisConnection/send(_:script:runsLateUnlessBehind:untilScriptsRun:replayWindow:setting:handler:)``).
    package let replayWindow: ReplayWindow?
    /// For a command that may set a key to a value: the window of that value's releases
    /// (``ReplayWindow/init(tracksWhereSet:)``).
    package let setting: ReplayWindow?
    package let handler: RedisReplyHandler

    package init(
        _ command: RedisCommand, script: RedisScript? = nil, runsLateUnlessBehind: String? = nil, untilScriptsRun: RedisScriptForm? = nil,
        replayWindow: ReplayWindow? = nil, setting: ReplayWindow? = nil, handler: @escaping RedisReplyHandler
    ) {
        self.command = command
        self.script = script
        self.runsLateUnlessBehind = runsLateUnlessBehind
        self.untilScriptsRun = untilScriptsRun
        self.replayWindow = replayWindow
        self.setting = setting
        self.handler = handler
    }
}

/// One command waiting for its reply: completed exactly once, by the reply, an error or
/// the caller's cancellation, whichever comes first. The state machine below resumes the
/// continuation (or calls the handler) exactly once, which is why an unchecked continuation is
/// enough.
final class PendingCommand: Sendable {
    private enum State {
        /// Sent by a suspending caller whose continuation is not installed yet.
        case queued
        case waiting(UnsafeContinuation<RedisValue, any Error>)
        /// Sent by a caller that does not suspend: the handler takes the outcome.
        case handled(RedisReplyHandler)
        /// Completed before the continuation was installed.
        case completed(Result<RedisValue, RedisError>)
        case delivered
    }

    let command: RedisCommand
    /// For an `EVALSHA`: the script, whose `EVAL` form (``fallback``) is sent in its place when
    /// the node has not run the script on the connection or answers `NOSCRIPT` with nothing
    /// written behind it.
    let script: RedisScript?
    /// When set, a `NOSCRIPT` answer with commands written behind the call sends ``fallback``
    /// then, to run after them, rather than fail the call, unless one of them has this argument
    /// (``RedisScriptCall/runsLateUnlessBehind``).
    let runsLateUnlessBehind: String?
    /// For a command that is not a script: a script call that goes in its place (as its `EVAL`,
    /// built only when sent) until such a script form succeeded on the socket, and again after a
    /// script call on it failed for good. Its reply must read like the command's.
    let untilScriptsRun: RedisScriptForm?
    /// Whether a cancellation before the command is written also keeps it from being sent.
    let withdrawOnCancel: Bool
    /// While open, the connection sends it again when it is lost: a connection closed before its
    /// answer, or a connect that failed while it waited (``replay()``).
    let replayWindow: ReplayWindow?
    /// For a command that may set a key to a value: the window of that value's releases, told
    /// for which nodes it was staged (``ReplayWindow/init(tracksWhereSet:)``).
    let setting: ReplayWindow?
    /// A copy made by ``replay()``: written only while its window is open.
    let isReplay: Bool
    private let state: Mutex<State>

    /// A command for a caller that will install its continuation.
    init(command: RedisCommand, script: RedisScript? = nil, runsLateUnlessBehind: String? = nil, withdrawOnCancel: Bool) {
        self.command = command
        self.script = script
        self.runsLateUnlessBehind = runsLateUnlessBehind
        untilScriptsRun = nil
        self.withdrawOnCancel = withdrawOnCancel
        replayWindow = nil
        setting = nil
        isReplay = false
        state = Mutex(.queued)
    }

    /// A command whose outcome goes to `handler`; it is always sent.
    init(
        command: RedisCommand, script: RedisScript?, runsLateUnlessBehind: String? = nil, untilScriptsRun: RedisScriptForm? = nil,
        replayWindow: ReplayWindow? = nil, setting: ReplayWindow? = nil, isReplay: Bool = false, handler: @escaping RedisReplyHandler
    ) {
        self.command = command
        self.script = script
        self.runsLateUnlessBehind = runsLateUnlessBehind
        self.untilScriptsRun = script == nil ? untilScriptsRun : nil
        withdrawOnCancel = false
        self.replayWindow = replayWindow
        self.setting = setting
        self.isReplay = isReplay
        state = Mutex(.handled(handler))
    }

    /// The same command, sent again by the connection for nobody: its caller had its answer.
    func replay() -> PendingCommand {
        PendingCommand(
            command: command, script: script, runsLateUnlessBehind: runsLateUnlessBehind, untilScriptsRun: untilScriptsRun,
            replayWindow: replayWindow, isReplay: true, handler: { _ in }
        )
    }

    /// For an `EVALSHA`: its `EVAL` form, built anew (a connection needs it rarely).
    var fallback: RedisCommand? { script?.evalForm(of: command) }

    /// Hands over the caller's continuation; resumes it at once if the outcome is already known.
    func install(_ continuation: UnsafeContinuation<RedisValue, any Error>) {
        let early: Result<RedisValue, RedisError>? = state.withLock { state in
            switch state {
            case .queued:
                state = .waiting(continuation)
                return nil
            case let .completed(result):
                state = .delivered
                return result
            case .waiting, .handled, .delivered:
                preconditionFailure("a continuation was installed twice or on a handled command")
            }
        }
        if let early { continuation.resume(with: early.mapError { $0 as any Error }) }
    }

    /// Completes the command; later completions are ignored.
    func complete(_ result: Result<RedisValue, RedisError>) {
        enum Delivery {
            case none
            case resume(UnsafeContinuation<RedisValue, any Error>)
            case call(RedisReplyHandler)
        }
        let delivery: Delivery = state.withLock { state in
            switch state {
            case .queued:
                state = .completed(result)
                return .none
            case let .waiting(continuation):
                state = .delivered
                return .resume(continuation)
            case let .handled(handler):
                state = .delivered
                return .call(handler)
            case .completed, .delivered:
                return .none
            }
        }
        switch delivery {
        case .none: break
        case let .resume(continuation): continuation.resume(with: result.mapError { $0 as any Error })
        case let .call(handler): handler(result)
        }
    }

    /// Whether the command should still be written: not withdrawn by its cancelled caller, and,
    /// for a copy made by ``replay()``, its window still open.
    var shouldSend: Bool {
        if isReplay { return replayWindow?.isOpen ?? false }
        guard withdrawOnCancel else { return true }
        return state.withLock { state in
            switch state {
            case .queued, .waiting, .handled: true
            case .completed, .delivered: false
            }
        }
    }
}
