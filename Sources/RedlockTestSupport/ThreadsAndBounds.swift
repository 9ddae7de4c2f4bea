import Foundation
import RedlockTransport

/// The system name of the calling thread (at most 15 bytes on Linux), read from
/// `/proc/thread-self/comm`; empty where `/proc` does not tell. The library's threads are named
/// `redlock-io` (a client's event loop), `redlock-timer` and `redis-connect`.
public func currentThreadName() -> String {
    let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? ""
    return name.trimmingCharacters(in: .newlines)
}

/// Runs `body` in a task of its own and returns its value, or nil when it has not finished
/// within `limit`; the task is then cancelled and left behind, so that a hang fails a test
/// instead of stalling the suite.
public func finished<T: Sendable>(within limit: Duration, _ body: @escaping @Sendable () async -> T) async -> T? {
    let outcome = OneTimeEvent<T?>()
    let work = Task {
        let value = await body()
        outcome.fire(value)
    }
    let timer = Task {
        try? await Task.sleep(for: limit)
        outcome.fire(nil)
    }
    let value = await outcome.wait()
    timer.cancel()
    if value == nil { work.cancel() }
    return value
}
