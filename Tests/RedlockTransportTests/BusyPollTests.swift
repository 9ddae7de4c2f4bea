import RedlockTestSupport
import RedlockTransport
import Testing

@Suite("Busy polling on the event loop")
struct BusyPollTests {
    @Test("with a busy poll longer than a round trip, a task on the loop reads its replies without the loop blocking; without it, every round trip blocks")
    func repliesReadWhilePolling() async throws {
        try await withRedisServers(1) { servers throws in
            for busyPoll in [Duration.zero, .milliseconds(200)] {
                try await withPollingConnection(to: servers[0], name: "busy-poll", busyPoll: busyPoll) { loop, connection in
                    let blocked = await blockingWaits(of: loop, sending: 20, on: connection, key: "busy-poll")
                    if busyPoll == .zero {
                        // The control: each reply comes while the loop sleeps.
                        #expect((blocked ?? 0) >= 15, "blocking waits without a busy poll: \(String(describing: blocked))")
                    } else {
                        // A deadline check or a slow moment may end a poll now and then; not 20 times.
                        #expect((blocked ?? .max) <= 5, "blocking waits with a busy poll of \(busyPoll): \(String(describing: blocked))")
                    }
                }
            }
        }
    }

    @Test("an idle loop sleeps: it polls busily only after an event or a job, not after the turns that only check deadlines")
    func idleLoopSleeps() async throws {
        try await withRedisServers(1) { servers throws in
            // A command timeout of 100 ms: the loop turns every 25 ms to check the deadlines.
            try await withPollingConnection(to: servers[0], name: "busy-idle", busyPoll: .milliseconds(5), commandTimeout: .milliseconds(100)) { loop, connection in
                #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
                try await Task.sleep(for: .milliseconds(50))
                let before = loop.busyPollCount
                try await Task.sleep(for: .milliseconds(500))
                // About 20 deadline turns: none of them starts a poll.
                #expect(loop.busyPollCount - before <= 2, "busy polls in 500 ms idle: \(loop.busyPollCount - before)")
            }
        }
    }

    @Test("the busy poll counts from the end of the turn: a task that computes longer than the poll before each command still has its replies read while polling")
    func pollStartsAfterTheJobs() async throws {
        try await withRedisServers(1) { servers throws in
            try await withPollingConnection(to: servers[0], name: "busy-job", busyPoll: .milliseconds(100)) { loop, connection in
                // Longer than the poll before each command: a poll counted from the turn's start would
                // be over.
                let blocked = await blockingWaits(of: loop, sending: 10, on: connection, key: "busy-job") {
                    let busyUntil = ContinuousClock.now + .milliseconds(120)
                    while ContinuousClock.now < busyUntil {}
                }
                #expect((blocked ?? .max) <= 3, "blocking waits: \(String(describing: blocked))")
            }
        }
    }

    @Test("a command to a frozen node times out on time while the loop polls: the poll ends at the loop's next deadline check")
    func deadlinesEndThePoll() async throws {
        try await withRedisServers(1) { servers throws in
            try await withPollingConnection(to: servers[0], name: "busy-frozen", busyPoll: .seconds(10), commandTimeout: .milliseconds(200)) { loop, connection in
                #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
                try await servers[0].pause()
                defer { try? servers[0].resume() }
                // Sent from the loop: the job's turn begins a 10 s poll with the command out.
                let outcome = await finished(within: .seconds(5)) {
                    await withTaskExecutorPreference(loop) { () -> RedisError? in
                        do {
                            _ = try await connection.send(RedisCommand("PING"))
                            return nil
                        } catch {
                            return error as? RedisError
                        }
                    }
                }
                #expect(outcome??.code == .timeout, "\(String(describing: outcome))")
                #expect(loop.busyPollCount > 0, "the loop never polled")
            }
        }
    }

    @Test("a job enqueued from another thread while the loop polls runs at once")
    func jobsFromElsewhereEndThePoll() async throws {
        let loop = RedisEventLoop(name: "busy-hops", busyPoll: .seconds(15))
        for round in 1...3 {
            // A hop onto the loop: its turn's end begins the round's poll, the only one (nothing
            // else gives the loop work), which lasts 15 s unless an event ends it.
            let hopped = await finished(within: .seconds(10)) {
                await withTaskExecutorPreference(loop) { await Task.yield() }
                return true
            }
            #expect(hopped == true, "round \(round): a hop onto the loop never ran")
            #expect(await eventually { loop.busyPollCount >= round }, "round \(round): polls begun: \(loop.busyPollCount)")
        }
        await loop.shutdown()
    }

    @Test("a loop in the middle of a long busy poll stops when shut down")
    func shutdownEndsThePoll() async throws {
        let loop = RedisEventLoop(name: "busy-stop", busyPoll: .seconds(15))
        // A job makes the loop poll busily for 15 s from the end of its turn.
        let ran = await finished(within: .seconds(10)) {
            await withTaskExecutorPreference(loop) {
                await Task.yield()
                return true
            }
        }
        #expect(ran == true)
        #expect(await eventually { loop.busyPollCount > 0 }, "the loop never began to poll")
        let stopped = await finished(within: .seconds(10)) {
            await loop.shutdown()
            return true
        }
        #expect(stopped == true, "the shutdown waited for the busy poll to end")
    }
}

/// Runs `body` with a connection to `server` on a loop of its own named `name` with `busyPoll`
/// (and the connection's `commandTimeout`); shuts both down after it, also when it throws.
private func withPollingConnection<T>(
    to server: RedisServer, name: String, busyPoll: Duration, commandTimeout: Duration = .seconds(1),
    _ body: (RedisEventLoop, RedisConnection) async throws -> T
) async throws -> T {
    let loop = RedisEventLoop(name: name, busyPoll: busyPoll)
    let connection = RedisConnection(configuration: server.configuration(commandTimeout: commandTimeout), eventLoop: loop)
    return try await withTeardown {
        try await body(loop, connection)
    } teardown: {
        await connection.shutdown()
        await loop.shutdown()
    }
}

/// Sends `count` SETs of keys starting with `key` on `connection` from a task on `loop`, each
/// after `before()`, and returns how many waits that could block the loop made meanwhile (nil:
/// not done within 20 s).
private func blockingWaits(
    of loop: RedisEventLoop, sending count: Int, on connection: RedisConnection, key: String, before: @escaping @Sendable () -> Void = {}
) async -> Int? {
    await finished(within: .seconds(20)) {
        await withTaskExecutorPreference(loop) {
            _ = try? await connection.send(RedisCommand("PING"))
            let start = loop.blockingWaitCount
            for index in 0..<count {
                before()
                let reply = try? await connection.send(RedisCommand("SET", "\(key):\(index)", "1"))
                #expect(reply == .simpleString("OK"))
            }
            return loop.blockingWaitCount - start
        }
    }
}
