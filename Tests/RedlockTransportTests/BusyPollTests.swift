#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import RedlockTestSupport
import RedlockTransport
import Testing

@Suite("Busy polling on the event loop")
struct BusyPollTests {
    @Test("with a busy poll longer than a round trip, a task on the loop reads its replies without the loop blocking; without it, every round trip blocks")
    func repliesReadWhilePolling() async throws {
        try await withRedisServers(1) { servers throws in
            for busyPoll in [Duration.zero, .milliseconds(200)] {
                let loop = RedisEventLoop(name: "busy-poll", busyPoll: busyPoll)
                let connection = RedisConnection(configuration: servers[0].configuration(), eventLoop: loop)
                let blocked = await finished(within: .seconds(20)) {
                    await withTaskExecutorPreference(loop) {
                        _ = try? await connection.send(RedisCommand("PING"))
                        let before = loop.blockingWaitCount
                        for index in 0..<20 {
                            let reply = try? await connection.send(RedisCommand("SET", "busy-poll:\(index)", "1"))
                            #expect(reply == .simpleString("OK"))
                        }
                        return loop.blockingWaitCount - before
                    }
                }
                if busyPoll == .zero {
                    // The control: each reply comes while the loop sleeps.
                    #expect((blocked ?? 0) >= 15, "blocking waits without a busy poll: \(String(describing: blocked))")
                } else {
                    // A deadline check or a slow moment may end a poll now and then; not 20 times.
                    #expect((blocked ?? .max) <= 5, "blocking waits with a busy poll of \(busyPoll): \(String(describing: blocked))")
                }
                await connection.shutdown()
                await loop.shutdown()
            }
        }
    }

    @Test("an idle loop sleeps: it polls busily only for its budget after the last event or job, not after the turns that only check deadlines")
    func idleLoopSleeps() async throws {
        try await withRedisServers(1) { servers throws in
            let loop = RedisEventLoop(name: "busy-idle", busyPoll: .milliseconds(20))
            // A command timeout of 100 ms: the loop turns every 25 ms to check the deadlines.
            let connection = RedisConnection(configuration: servers[0].configuration(commandTimeout: .milliseconds(100)), eventLoop: loop)
            #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
            // The loop thread's own CPU time, read on it (each read is a job: a busy poll follows).
            func cpuTime() async -> Duration? {
                await finished(within: .seconds(10)) {
                    await withTaskExecutorPreference(loop) {
                        var spent = timespec()
                        guard clock_gettime(CLOCK_THREAD_CPUTIME_ID, &spent) == 0 else { return Duration.zero }
                        return .seconds(spent.tv_sec) + .nanoseconds(spent.tv_nsec)
                    }
                }
            }
            let first = try #require(await cpuTime())
            try await Task.sleep(for: .milliseconds(500))
            let second = try #require(await cpuTime())
            // One busy poll of 20 ms and 20 short turns: far below the 400 ms that polling after
            // each turn (20 ms of every 25) would spend.
            #expect(second - first < .milliseconds(100), "the loop spent \(second - first) of CPU in 500 ms idle")
            await connection.shutdown()
            await loop.shutdown()
        }
    }

    @Test("a loop in the middle of a long busy poll stops when shut down")
    func shutdownEndsThePoll() async throws {
        let loop = RedisEventLoop(name: "busy-stop", busyPoll: .seconds(60))
        // A job makes the loop poll busily for a minute from the end of its turn.
        let ran = await finished(within: .seconds(10)) { await withTaskExecutorPreference(loop) { true } }
        #expect(ran == true)
        let stopped = await finished(within: .seconds(10)) {
            await loop.shutdown()
            return true
        }
        #expect(stopped == true, "the shutdown waited for the busy poll to end")
    }
}
