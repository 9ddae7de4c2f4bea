import Synchronization

/// One command waiting for its reply: completed exactly once, by the reply, an error or
/// the caller's cancellation, whichever comes first. The state machine below resumes the
/// continuation exactly once, which is why an unchecked continuation is enough.
final class PendingCommand: Sendable {
    private enum State {
        case queued
        case waiting(UnsafeContinuation<RedisValue, any Error>)
        case completed(Result<RedisValue, RedisError>)
        case delivered
    }

    let command: RedisCommand
    /// For an `EVALSHA`: the script, sent by `EVAL` in its place when the node answers `NOSCRIPT`.
    let script: RedisScript?
    /// Whether a cancellation before the command is written also keeps it from being sent.
    let withdrawOnCancel: Bool
    private let state = Mutex(State.queued)

    init(command: RedisCommand, script: RedisScript? = nil, withdrawOnCancel: Bool) {
        self.command = command
        self.script = script
        self.withdrawOnCancel = withdrawOnCancel
    }

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
            case .waiting, .delivered:
                preconditionFailure("a continuation was installed twice")
            }
        }
        if let early { continuation.resume(with: early.mapError { $0 as any Error }) }
    }

    /// Completes the command; later completions are ignored.
    func complete(_ result: Result<RedisValue, RedisError>) {
        let continuation: UnsafeContinuation<RedisValue, any Error>? = state.withLock { state in
            switch state {
            case .queued:
                state = .completed(result)
                return nil
            case let .waiting(continuation):
                state = .delivered
                return continuation
            case .completed, .delivered:
                return nil
            }
        }
        continuation?.resume(with: result.mapError { $0 as any Error })
    }

    /// The `EVAL` that replaces this `EVALSHA` after a `NOSCRIPT` reply.
    var fallback: RedisCommand? {
        script.map { command.replacingLeadingArguments(2, with: ["EVAL", $0.source]) }
    }

    /// Whether the I/O thread should still write this command.
    var shouldSend: Bool {
        guard withdrawOnCancel else { return true }
        return state.withLock { state in
            switch state {
            case .queued, .waiting: true
            case .completed, .delivered: false
            }
        }
    }
}
