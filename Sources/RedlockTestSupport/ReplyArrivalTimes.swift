import RedlockTransport

/// Waits until replies read on each of `connections` carry the kernel's receive time
/// (`SO_TIMESTAMPNS`, ``ReplyArrival``), sending a `PING` on each every 10 ms; returns whether
/// they did within `limit` (default 5 s).
///
/// Linux switches receive timestamps on for the whole host a moment after the first socket
/// asks for them, when no other socket has them on (deferred work, `net_enable_timestamp`):
/// microseconds on a quiet machine, hundreds of milliseconds on a loaded one. Replies that
/// arrive meanwhile have no arrival time, so a test of what the arrival tells (a node that
/// answered in time, read late) must wait for them first. Once on, the switch stays on while
/// any socket that asked stays open.
public func awaitReplyArrivalTimes(on connections: [RedisConnection], within limit: Duration = .seconds(5)) async -> Bool {
    let deadline = ContinuousClock.now + limit
    while true {
        let stamped = await withTaskGroup(of: Bool.self) { group in
            for connection in connections {
                group.addTask {
                    await withCheckedContinuation { continuation in
                        connection.send(RedisCommand("PING")) { _ in continuation.resume(returning: ReplyArrival.current() != nil) }
                    }
                }
            }
            return await group.reduce(true) { $0 && $1 }
        }
        if stamped { return true }
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(10))
    }
}
