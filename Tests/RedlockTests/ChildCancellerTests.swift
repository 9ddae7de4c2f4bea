@testable import Redlock
import RedlockTransport
import Synchronization
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

@Suite("A scope's ticket: interruptions and the end of validity")
struct ScopeTicketTests {
    @Test("an interruption or a validity end that comes before the scope listens is delivered when it does; only the first interruption counts, and each listener is called once")
    func deliveredOnceWhicheverComesFirst() {
        let early = ScopeTicket()
        early.interrupt(RedlockError(code: .leaseLost, message: "first"))
        early.interrupt(RedlockError(code: .holdTimeExceeded, message: "second"))
        #expect(early.pending?.code == .leaseLost)
        let heard = Mutex<[String]>([])
        early.onInterrupt { error in heard.withLock { $0.append(error.message) } }
        early.endValidity()
        early.onValidityEnd { heard.withLock { $0.append("validity") } }
        #expect(heard.withLock { $0 } == ["first", "validity"])

        let late = ScopeTicket()
        let lateHeard = Mutex<[String]>([])
        late.onInterrupt { error in lateHeard.withLock { $0.append(error.message) } }
        late.onValidityEnd { lateHeard.withLock { $0.append("validity") } }
        #expect(late.pending == nil && lateHeard.withLock { $0 }.isEmpty)
        late.endValidity()
        late.endValidity()
        late.interrupt(RedlockError(code: .leaseTakenOver, message: "taken"))
        late.interrupt(RedlockError(code: .leaseLost, message: "again"))
        #expect(lateHeard.withLock { $0 } == ["validity", "taken"])
        #expect(late.pending?.code == .leaseTakenOver)
    }
}
