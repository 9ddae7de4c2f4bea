@testable import Redlock
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
        await board.wait(for: "name", after: 0, timeout: .seconds(30))
        #expect(started.duration(to: .now) < .seconds(5))
        let quiet = ContinuousClock.now
        await board.wait(for: "name", after: 1, timeout: .milliseconds(50))
        #expect(quiet.duration(to: .now) >= .milliseconds(50))
    }
}
