@testable import Redlock
import Testing

@Suite("Whose a late reply is")
struct LateReplyTests {
    // A fan-out sent at 1 s (BootClock nanoseconds) with a 50 ms budget.
    private let sent: Int64 = 1_000_000_000
    private let budget: Int64 = 50_000_000

    @Test("no arrival time (a Unix socket): the node's, not told how long")
    func unknown() {
        #expect(LateReply(sent: sent, budget: budget, times: nil) == .answeredLate(nodeTime: nil))
    }

    @Test("the node answered within the budget (from the send to its reply's arrival): this process's, whether the arrival is the reply's own or a bound")
    func handledLate() {
        #expect(LateReply(sent: sent, budget: budget, times: (sent + 300_000, 0, true)) == .handledLate(nodeTime: 300_000))
        #expect(LateReply(sent: sent, budget: budget, times: (sent + budget, 0, false)) == .handledLate(nodeTime: budget))
        // Behind an earlier reply that this process read and wrote the command after 90 ms
        // (held): those 90 ms are not the node's.
        #expect(LateReply(sent: sent, budget: budget, times: (sent + 90_300_000, 90_000_000, true)) == .handledLate(nodeTime: 300_000))
        // Written before that earlier reply was read: past the budget, nobody is told.
        #expect(LateReply(sent: sent, budget: budget, times: (sent + 90_300_000, -1, true)) == .answeredLate(nodeTime: nil))
        #expect(LateReply(sent: sent, budget: budget, times: (sent + 300_000, -1, true)) == .handledLate(nodeTime: 300_000))
    }

    @Test("the reply's own arrival after the budget: the node's, with its time; a bound past the budget tells nothing")
    func answeredLate() {
        #expect(LateReply(sent: sent, budget: budget, times: (sent + 120_000_000, 0, true)) == .answeredLate(nodeTime: 120_000_000))
        #expect(LateReply(sent: sent, budget: budget, times: (sent + 120_000_000, 0, false)) == .answeredLate(nodeTime: nil))
    }

    @Test("an arrival a little before the send (a node that answered while the others were written to) is a node time of zero; one a budget or more before it (a wall-clock step between the arrival and its handling) tells nothing")
    func arrivalBeforeSend() {
        #expect(LateReply(sent: sent, budget: budget, times: (sent - 200_000, 0, true)) == .handledLate(nodeTime: 0))
        #expect(LateReply(sent: sent, budget: budget, times: (sent - budget, 0, true)) == .answeredLate(nodeTime: nil))
        #expect(LateReply(sent: sent, budget: budget, times: (sent - 5_000_000_000, 0, true)) == .answeredLate(nodeTime: nil))
    }
}
