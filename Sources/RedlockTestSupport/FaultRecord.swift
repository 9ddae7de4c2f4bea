/// A fault a ``Nemesis`` can inflict on one node.
public enum NodeFault: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// SIGKILL; healed by a restart on the same port that keeps the data.
    case kill
    /// SIGSTOP; healed by SIGCONT.
    case pause
    /// `DEBUG SLEEP` (``RedisServer/stall(for:)``); heals itself.
    case stall
    /// SIGKILL and an immediate restart that keeps the data: a crash and a quick recovery.
    case restart

    /// The fault's name.
    public var description: String { rawValue }
}

/// One fault a ``Nemesis`` inflicted: on which node, what, and from when until it was healed.
public struct FaultRecord: Sendable, Hashable, CustomStringConvertible {
    /// The node's index in the nemesis's server list.
    public var node: Int
    /// The fault.
    public var fault: NodeFault
    /// When the nemesis started to inflict it (the node counts as faulty from here).
    public var start: ContinuousClock.Instant
    /// When the node was healed (running and answering again, as far as the nemesis knows).
    public var end: ContinuousClock.Instant

    /// Creates a record.
    public init(node: Int, fault: NodeFault, start: ContinuousClock.Instant, end: ContinuousClock.Instant) {
        self.node = node
        self.fault = fault
        self.start = start
        self.end = end
    }

    /// `kill node 2 for 0.31 seconds`.
    public var description: String { "\(fault) node \(node) for \(start.duration(to: end))" }
}
