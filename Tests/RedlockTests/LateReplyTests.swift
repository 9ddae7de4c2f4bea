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

    @Test("the node answered within the budget (from its command's write to its reply's arrival): this process's, whether the arrival is the reply's own or a bound")
    func handledLate() {
        let written = sent + 2_000_000
        #expect(LateReply(sent: sent, budget: budget, times: (written, written + 300_000, true)) == .handledLate(nodeTime: 300_000))
        #expect(LateReply(sent: sent, budget: budget, times: (written, written + budget, false)) == .handledLate(nodeTime: budget))
        // Written by its sender at once (0): from the send.
        #expect(LateReply(sent: sent, budget: budget, times: (0, sent + 300_000, true)) == .handledLate(nodeTime: 300_000))
        // Written late itself (the writer was behind): only the node's part counts.
        let writtenLate = sent + 80_000_000
        #expect(LateReply(sent: sent, budget: budget, times: (writtenLate, writtenLate + 1_000_000, true)) == .handledLate(nodeTime: 1_000_000))
    }

    @Test("the reply's own arrival after the budget: the node's, with its time; a bound past the budget tells nothing")
    func answeredLate() {
        #expect(LateReply(sent: sent, budget: budget, times: (sent, sent + 120_000_000, true)) == .answeredLate(nodeTime: 120_000_000))
        #expect(LateReply(sent: sent, budget: budget, times: (sent, sent + 120_000_000, false)) == .answeredLate(nodeTime: nil))
    }

    @Test("times out of order (an arrival placed before the write: the wall clock slewed) count as a node time of zero")
    func outOfOrder() {
        #expect(LateReply(sent: sent, budget: budget, times: (sent + 5_000_000, sent, true)) == .handledLate(nodeTime: 0))
    }
}
