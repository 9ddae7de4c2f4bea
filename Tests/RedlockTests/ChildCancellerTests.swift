@testable import Redlock
import RedlockTransport
import Testing

@Suite("Cancelling one child task from another")
struct ChildCancellerTests {
    @Test("cancel() reaches a child while it runs, and one that has not started yet; the caller's task is left alone")
    func cancelsOnlyTheChild() async {
        let running = ChildCanceller()
        let started = OneTimeEvent<Void>()
        async let sawWhileRunning: Bool = running.run {
            started.fire()
            // Ends only by cancellation (bounded, so a broken cancel fails instead of hanging).
            try? await Task.sleep(for: .seconds(10))
            return Task.isCancelled
        }
        await started.wait()
        running.cancel()
        #expect(await sawWhileRunning)

        let early = ChildCanceller()
        early.cancel()
        async let sawFromTheStart: Bool = early.run { Task.isCancelled }
        #expect(await sawFromTheStart)
        #expect(!Task.isCancelled)

        // After run() returned, cancel() has nothing to reach and is harmless.
        let finished = ChildCanceller()
        async let ranToItsEnd: Bool = finished.run { !Task.isCancelled }
        #expect(await ranToItsEnd)
        finished.cancel()
        #expect(!Task.isCancelled)
    }
}
