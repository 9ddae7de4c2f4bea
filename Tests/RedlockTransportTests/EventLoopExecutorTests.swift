#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import RedlockTestSupport
import RedlockTransport
import Synchronization
import Testing

@Suite("The event loop as a task executor")
struct EventLoopExecutorTests {
    @Test("the loop says when it last looked at its sockets: never before it runs, lately after a reply, not while a task holds its thread")
    func socketsLookedAt() async throws {
        try await withRedisServers(1) { servers throws in
            let loop = RedisEventLoop(name: "looked-at")
            defer { loop.beginShutdown() }
            #expect(!loop.lookedAtSockets(within: .max))
            let connection = RedisConnection(configuration: servers[0].configuration(), eventLoop: loop)
            #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
            // The turn that read the reply looked moments ago (well within 10 s).
            #expect(loop.lookedAtSockets(within: 10_000_000_000))
            // A task on the loop's thread that holds it 5 ms sees the last look at least that
            // far back.
            let held = await withTaskExecutorPreference(loop) { () -> Bool in
                let start = ContinuousClock.now
                while start.duration(to: .now) < .milliseconds(5) {}
                return loop.lookedAtSockets(within: 4_000_000)
            }
            #expect(!held)
            await connection.shutdown()
            await loop.shutdown()
        }
    }

    @Test("a task that prefers the loop runs on its thread, and each reply resumes it there")
    func repliesResumeOnTheLoop() async throws {
        try await withRedisServers(1) { servers throws in
            let loop = RedisEventLoop(name: "executor-test")
            // With no connection the loop sleeps in epoll with no timeout between hops: each hop
            // onto it must wake it (without the wake, one of these hangs).
            let hops = await finished(within: .seconds(10)) {
                var names: [String] = []
                for _ in 0..<20 {
                    names.append(await withTaskExecutorPreference(loop) { currentThreadName() })
                    names.append(currentThreadName())
                }
                return names
            }
            #expect(hops != nil, "a hop onto the sleeping loop never ran")
            for (index, name) in (hops ?? []).enumerated() {
                #expect((name == "executor-test") == index.isMultiple(of: 2), "hop \(index / 2): \(name)")
            }
            let connection = RedisConnection(configuration: servers[0].configuration(), eventLoop: loop)
            let threads = await finished(within: .seconds(10)) {
                await withTaskExecutorPreference(loop) {
                    var seen = [currentThreadName()]
                    for index in 0..<50 {
                        let reply = try? await connection.send(RedisCommand("SET", "executor:\(index)", "\(index)"))
                        #expect(reply == .simpleString("OK"))
                        seen.append(currentThreadName())
                    }
                    return seen
                }
            }
            #expect(threads != nil, "the task never finished on the loop")
            #expect(Set(threads ?? []) == ["executor-test"])
            // Outside the preference the caller is back on the global executor.
            #expect(currentThreadName() != "executor-test")
            await connection.shutdown()
            await loop.shutdown()
        }
    }

    @Test("a task on the loop that computes without suspending shows as a hold while it runs, and one that held it 100 ms or more is reported once it returns; short ones are not")
    func longHoldsAreSeenAndReported() async throws {
        let loop = RedisEventLoop(name: "executor-hold")
        let reported = Mutex<[Duration]>([])
        loop.reportLongHolds { held in reported.withLock { $0.append(held) } }
        #expect(loop.heldByJobs == nil)
        for _ in 0..<20 { await withTaskExecutorPreference(loop) {} }
        let spinning = Atomic<Bool>(false)
        let stop = Atomic<Bool>(false)
        let spinner = Task(executorPreference: loop) {
            let start = ContinuousClock.now
            spinning.store(true, ordering: .releasing)
            // Never suspends: the loop's thread is held until `stop`.
            while !stop.load(ordering: .acquiring) {}
            return start.duration(to: .now)
        }
        #expect(await eventually { spinning.load(ordering: .acquiring) })
        let early = loop.heldByJobs
        try await Task.sleep(for: .milliseconds(200))
        let late = loop.heldByJobs
        stop.store(true, ordering: .releasing)
        let spun = await spinner.value
        #expect(early != nil)
        #expect((late ?? .zero) >= .milliseconds(200), "held \(String(describing: late)) after 200 ms")
        #expect(await eventually { !reported.withLock { $0.isEmpty } })
        let holds = reported.withLock { $0 }
        #expect(holds.count == 1, "\(holds)")
        #expect(holds.allSatisfy { $0 >= .milliseconds(200) && $0 <= spun + .milliseconds(500) }, "\(holds), spun \(spun)")
        #expect(loop.heldByJobs == nil)
        // Short hops after it: nothing more.
        for _ in 0..<20 { await withTaskExecutorPreference(loop) {} }
        #expect(reported.withLock { $0.count } == 1)
        await loop.shutdown()
    }

    @Test("a task on the loop that keeps yielding does not hold up the replies of another connection on it")
    func yieldingTaskDoesNotStarveSockets() async throws {
        try await withRedisServers(1) { servers throws in
            let loop = RedisEventLoop(name: "executor-yield")
            let connection = RedisConnection(configuration: servers[0].configuration(), eventLoop: loop)
            #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
            let stop = Atomic<Bool>(false)
            let spinner = Task(executorPreference: loop) {
                var turns = 0
                while !stop.load(ordering: .relaxed) {
                    turns += 1
                    await Task.yield()
                }
                return turns
            }
            // Each PING is answered while the spinner is queued again on every turn; jobs that
            // jobs queue run at the next turn, after the sockets were read.
            for _ in 0..<20 {
                let reply = await finished(within: .seconds(5)) { try? await connection.send(RedisCommand("PING")) }
                guard reply == .simpleString("PONG") else {
                    Issue.record("a reply was held up behind a task on the loop: \(String(describing: reply))")
                    break
                }
            }
            stop.store(true, ordering: .relaxed)
            #expect(await spinner.value > 0)
            await connection.shutdown()
            await loop.shutdown()
        }
    }

    @Test("a loop that was shut down passes the jobs of tasks that prefer it to the global executor")
    func shutDownLoopPassesJobsOn() async throws {
        let loop = RedisEventLoop(name: "executor-stop")
        await loop.shutdown()
        let threads = await finished(within: .seconds(5)) {
            await withTaskExecutorPreference(loop) {
                var seen = [currentThreadName()]
                try? await Task.sleep(for: .milliseconds(1))
                seen.append(currentThreadName())
                return seen
            }
        }
        #expect(threads != nil, "a task that prefers a stopped loop hung")
        #expect(!(threads ?? []).contains("executor-stop"))
    }

    @Test("a task suspended on the loop when its thread ends resumes on the global executor")
    func shutdownWhileWaiting() async throws {
        try await withRedisServers(1) { servers throws in
            let loop = RedisEventLoop(name: "executor-mid")
            let connection = RedisConnection(
                configuration: servers[0].configuration(commandTimeout: .seconds(30)), eventLoop: loop
            )
            #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
            try await servers[0].pause()
            defer { try? servers[0].resume() }
            let started = OneTimeEvent<Void>()
            let waiting = Task(executorPreference: loop) { () -> (Result<RedisValue, RedisError>, String) in
                // On the loop's thread: the loop cannot see its stop before this job suspends.
                started.fire()
                let result: Result<RedisValue, RedisError>
                do {
                    result = .success(try await connection.send(RedisCommand("PING")))
                } catch let error as RedisError {
                    result = .failure(error)
                } catch {
                    result = .failure(RedisError(code: .unexpectedReply, endpoint: nil, message: "not a RedisError: \(error)"))
                }
                return (result, currentThreadName())
            }
            await started.wait()
            // The loop's thread ends first, with the task suspended on it; the connection's
            // shutdown then fails the command from this thread, and the task resumes elsewhere.
            await loop.shutdown()
            await connection.shutdown()
            let outcome = await finished(within: .seconds(5)) { await waiting.value }
            guard let (result, thread) = outcome else {
                Issue.record("the task waiting on the loop never resumed")
                return
            }
            guard case let .failure(error) = result else {
                Issue.record("a paused node answered: \(result)")
                return
            }
            #expect(error.code == .shutdown, "\(error)")
            #expect(thread != "executor-mid")
        }
    }

    @Test("a reminder come due while the loop was held is settled by the reply already in its socket, not reminded; one left unsettled is reminded once; callers elsewhere are refused")
    func reminderSettledByReadyReply() async throws {
        try await withRedisServers(1) { servers throws in
            let loop = RedisEventLoop(name: "reminder-test")
            let connection = RedisConnection(configuration: servers[0].configuration(), eventLoop: loop)
            #expect(try await connection.send(RedisCommand("PING")) == .simpleString("PONG"))
            let settledByReply = CountingReminder()
            let unsettled = CountingReminder()
            #expect(!loop.remind(unsettled, at: .now), "kept for a caller off the loop's thread")
            // On the loop's thread, which then handles no event until the task ends: both due in
            // 20 ms, a PING whose answer settles the first, and the thread held well past the
            // deadline, so that the answer is in the socket, unread, when the loop looks again.
            await Task(executorPreference: loop) {
                let sentAt = ContinuousClock.now
                #expect(loop.remind(settledByReply, at: sentAt + .milliseconds(20)))
                #expect(loop.remind(unsettled, at: sentAt + .milliseconds(20)))
                connection.send(RedisCommand("PING")) { _ in settledByReply.settle() }
                while ContinuousClock.now < sentAt + .milliseconds(300) { usleep(500) }
            }.value
            #expect(await eventually { unsettled.reminders == 1 })
            #expect(await eventually { settledByReply.isSettled })
            // Two more turns of the loop: nothing more is reminded.
            await Task(executorPreference: loop) {}.value
            await Task(executorPreference: loop) {}.value
            #expect(settledByReply.reminders == 0, "reminded before the ready answer was read")
            #expect(unsettled.reminders == 1)
            await connection.shutdown()
            await loop.shutdown()
        }
    }
}

/// A reminder that counts how often the loop reminded it; settled by ``settle()``.
private final class CountingReminder: LoopReminder {
    private let settled = Atomic<Bool>(false)
    private let count = Atomic<Int>(0)

    var isSettled: Bool { settled.load(ordering: .acquiring) }
    var reminders: Int { count.load(ordering: .acquiring) }

    func settle() { settled.store(true, ordering: .releasing) }
    func remind() { count.wrappingAdd(1, ordering: .acquiringAndReleasing) }
}

@Suite("Threads of the library")
struct NamedThreadTests {
    @Test("every thread the library starts carries its system name before its work begins")
    func threadsAreNamedFromTheStart() async {
        let count = 200
        let names = Mutex<[String]>([])
        let done = OneTimeEvent<Void>()
        for index in 0..<count {
            startNamedThread("named-\(index % 10)", stackSize: 128 * 1024) {
                let name = currentThreadName()
                let all = names.withLock { names in
                    names.append(name == "named-\(index % 10)" ? "ok" : name)
                    return names.count
                }
                if all == count { done.fire() }
            }
        }
        await done.wait()
        let wrong = names.withLock { $0.filter { $0 != "ok" } }
        #expect(wrong.isEmpty, "\(wrong.count) of \(count) threads had another name: \(Set(wrong))")
    }
}

@Suite("When a reply arrived")
struct ReplyArrivalTests {
    /// What a handler of one `PING` on `connection` saw: its reply's times
    /// (``ReplyArrival/current()``) and when it ran (a ``BootClock`` reading); `holdLoop` holds
    /// the loop's thread that long right after the command was queued from it.
    private func observe(_ connection: RedisConnection, on loop: RedisEventLoop, holdLoop: Duration) async -> (times: (arrived: Int64, held: Int64, exact: Bool)?, handled: Int64, queued: Int64)? {
        let seen = Mutex<(times: (arrived: Int64, held: Int64, exact: Bool)?, handled: Int64)?>(nil)
        let queued = await withTaskExecutorPreference(loop) { () -> Int64 in
            let queued = BootClock.now()
            connection.send(RedisCommand("PING")) { _ in
                let times = ReplyArrival.current()
                seen.withLock { $0 = (times, BootClock.now()) }
            }
            let until = ContinuousClock.now + holdLoop
            while ContinuousClock.now < until {}
            return queued
        }
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline, seen.withLock({ $0 }) == nil { try? await Task.sleep(for: .milliseconds(1)) }
        return seen.withLock { $0 }.map { ($0.times, $0.handled, queued) }
    }

    @Test("a reply's handler knows when the kernel received the reply (SO_TIMESTAMPNS): read late behind a held loop, the node's own time is short; delayed by a proxy, long; over a Unix socket, not known")
    func times() async throws {
        try await withRedisServers(1) { servers throws in
            let loop = RedisEventLoop(name: "arrival")
            let direct = RedisConnection(configuration: servers[0].configuration(), eventLoop: loop)
            #expect(try await direct.send(RedisCommand("PING")) == .simpleString("PONG"))
            // The kernel switches receive timestamps on a moment after the first socket asks.
            #expect(await awaitReplyArrivalTimes(on: [direct]), "the kernel gave the replies no arrival time for 5 s")
            // Held 100 ms: the reply waits in the socket; the node took well under that.
            let held = try #require(await observe(direct, on: loop, holdLoop: .milliseconds(100)))
            let heldTimes = try #require(held.times, "no times for a reply over TCP")
            #expect(heldTimes.exact)
            let written = held.queued
            #expect(heldTimes.arrived >= written - 1_000_000)
            // (Under 95 ms, below the 100 ms hold a time taken when the reply was handled would
            // show, with room for a loaded machine's slow node.)
            #expect(heldTimes.arrived - written < 95_000_000, "node time \(heldTimes.arrived - written) ns")
            #expect(held.handled - written >= 100_000_000, "handled after \(held.handled - written) ns")
            // Through a proxy that delays each direction 60 ms: the node's time is at least that
            // (its reply arrived late), though the loop read it at once.
            let proxy = try FaultProxy.start(to: servers[0].endpoint)
            defer { proxy.stop() }
            let proxied = RedisConnection(configuration: RedisConnectionConfiguration(endpoint: proxy.endpoint), eventLoop: loop)
            #expect(try await proxied.send(RedisCommand("PING")) == .simpleString("PONG"))
            proxy.set(.latency(.milliseconds(60)))
            let slow = try #require(await observe(proxied, on: loop, holdLoop: .zero))
            let slowTimes = try #require(slow.times)
            let slowWritten = slow.queued
            #expect(slowTimes.exact && slowTimes.arrived - slowWritten >= 100_000_000, "node time \(slowTimes.arrived - slowWritten) ns")
            #expect(slow.handled - slowTimes.arrived < 100_000_000, "handled \(slow.handled - slowTimes.arrived) ns after it arrived")
            // A command queued behind an unanswered one, written by the thread that reads that
            // reply: the time it was held after the reply arrived (the loop held 100 ms) is
            // this process's, and told as such.
            let behind = Mutex<(arrived: Int64, held: Int64, exact: Bool)??>(nil)
            await withTaskExecutorPreference(loop) {
                direct.send(RedisCommand("PING")) { _ in }
                direct.send(RedisCommand("PING")) { _ in
                    let times = ReplyArrival.current()
                    behind.withLock { $0 = .some(times) }
                }
                let until = ContinuousClock.now + .milliseconds(100)
                while ContinuousClock.now < until {}
            }
            let waitUntil = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < waitUntil, behind.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(1)) }
            let heldBehind = try #require(behind.withLock { $0 } ?? nil, "no times for the command behind")
            // (Or, when the loop's turn wrote it before reading that reply, not known.)
            #expect(heldBehind.held >= 80_000_000 || heldBehind.held == -1, "held \(heldBehind.held) ns")
            // No receive times over a Unix socket.
            let local = RedisConnection(configuration: RedisConnectionConfiguration(endpoint: servers[0].unixSocketEndpoint), eventLoop: loop)
            #expect(try await local.send(RedisCommand("PING")) == .simpleString("PONG"))
            let unix = try #require(await observe(local, on: loop, holdLoop: .zero))
            #expect(unix.times == nil)
            for connection in [direct, proxied, local] { await connection.shutdown() }
            await loop.shutdown()
        }
    }
}
