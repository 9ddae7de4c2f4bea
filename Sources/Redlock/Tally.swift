/// Running counts of node outcomes during one fan-out, and whether the outcome is decided.
struct Tally: Sendable, Equatable {
    let quorum: Int
    private(set) var granted = 0
    private(set) var pending: Int

    init(nodeCount: Int) {
        quorum = Timing.quorum(nodeCount: nodeCount)
        pending = nodeCount
    }

    mutating func record(granted wasGranted: Bool) {
        pending -= 1
        if wasGranted { granted += 1 }
    }

    /// A quorum granted.
    var succeeded: Bool { granted >= quorum }
    /// Even if every pending node granted, there would be no quorum.
    var cannotSucceed: Bool { granted + pending < quorum }
    /// Nothing the pending nodes answer can change the outcome.
    var isDecided: Bool { succeeded || cannotSucceed }
}
