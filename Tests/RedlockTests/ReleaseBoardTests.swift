@testable import Redlock
import Logging
import RedlockTestSupport
import RedlockTransport
import Testing

@Suite("Release announcements")
struct ReleaseBoardTests {
    @Test("only watched names are counted, and one release heard from several nodes counts once")
    func counting() {
        let board = ReleaseBoard(timer: DeadlineTimer())
        board.announce("unwatched", release: Array("v1".utf8))
        #expect(board.generation(of: "unwatched") == 0)

        board.track("watched")
        board.announce("watched", release: Array("v1".utf8))
        board.announce("watched", release: Array("v1".utf8))
        #expect(board.generation(of: "watched") == 1)
        board.announce("watched", release: Array("v2".utf8))
        #expect(board.generation(of: "watched") == 2)

        board.forget("watched")
        #expect(board.generation(of: "watched") == 0)
        board.announce("watched", release: Array("v3".utf8))
        #expect(board.generation(of: "watched") == 0)
    }

    @Test("a waiter returns at once for a release it missed, and at its timeout without one")
    func waiting() async {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let board = ReleaseBoard(timer: timer)
        board.track("name")
        board.announce("name", release: Array("v1".utf8))
        let started = ContinuousClock.now
        #expect(await board.wait(for: "name", after: 0, timeout: .seconds(30)) == WaitOutcome(woken: true))
        #expect(started.duration(to: .now) < .seconds(5))
        let quiet = ContinuousClock.now
        #expect(await board.wait(for: "name", after: 1, timeout: .milliseconds(50)) == WaitOutcome(woken: false))
        #expect(quiet.duration(to: .now) >= .milliseconds(50))
    }

    @Test("a release made in this process hands the waiter's prepared attempt over and says when it sent it; a published one only wakes")
    func handOff() async throws {
        let timer = DeadlineTimer()
        defer { timer.stop() }
        let board = ReleaseBoard(timer: timer)
        board.track("name")
        // With nobody waiting nothing is handed over, and nothing counted: the releaser
        // announces its release once it is made.
        #expect(board.handOff("name", release: Array("v0".utf8)) == nil)
        #expect(board.generation(of: "name") == 0)
        let attempt = PreparedFanOut(
            round: FanOutRound(nodeCount: 1, order: [0], returnWhenDecided: true), command: RedisCommand("PING"), fallback: nil, order: [],
            budget: .seconds(1), classify: Vote.ofSetNX, confirm: nil, health: NodeHealth(endpoints: [], logger: Logger(label: "test"))
        )
        let waiting = Task { await board.wait(for: "name", after: 0, timeout: .seconds(30), next: attempt) }
        // The waiter is in line once its timeout is scheduled (the board signals nothing).
        try #require(await eventually { timer.count == 1 })
        let claimed = try #require(board.handOff("name", release: Array("v1".utf8)))
        #expect(claimed.waiter.next?.round === attempt.round)
        let sentAt = ContinuousClock.now
        claimed.waiter.resume(claimed.continuation, handedOverAt: sentAt)
        #expect(await waiting.value == WaitOutcome(woken: true, handedOverAt: sentAt))
        #expect(board.generation(of: "name") == 1)

        // Woken by a published release instead, nothing was sent for it. (Whether the release
        // comes before the wait begins or during it, the wait ends woken.)
        let plain = Task { await board.wait(for: "name", after: 1, timeout: .seconds(31), next: attempt) }
        board.announce("name", release: Array("v2".utf8))
        #expect(await plain.value == WaitOutcome(woken: true, handedOverAt: nil))
    }
}
