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
    /// `FLUSHALL`: the node loses every key and keeps running; heals itself.
    case flush
    /// SIGKILL and a restart without its data (directory wiped): a node replaced by an empty one.
    case restartWithoutData
    /// The node's wall clock steps 5 s forward for good (``RedisServer/setClock(rate:offset:)``;
    /// needs a server started with a clock shim).
    case clockStep
    /// The node's wall clock runs 3× fast for the fault's length, then at the normal rate again
    /// (needs a clock shim).
    case clockFast
    /// 2–20 ms of latency (with jitter) through the node's ``FaultProxy`` for the fault's length.
    case networkDelay
    /// Both directions through the node's ``FaultProxy`` held for the fault's length: the node
    /// keeps running and expiring keys while its clients hear nothing.
    case networkStall
    /// Every connection through the node's ``FaultProxy`` reset at once.
    case networkReset
    /// The connections open through the node's ``FaultProxy`` held both ways for the fault's
    /// length (their bytes delivered after it, also those of connections the client closed
    /// meanwhile), while new connections get through: an old connection's path broke, TCP
    /// retransmits its bytes late, a new connection works (``FaultProxy/Fault/stallOpen(_:)``).
    case networkPathBreak

    /// The faults of a process: kill, pause, stall, restart. The data survives them (with
    /// ``RedisServer/Persistence/appendOnlyFsyncAlways``), which Redlock needs without guards.
    public static let processFaults: [NodeFault] = [.kill, .pause, .stall, .restart]

    /// Whether the fault needs the node's ``FaultProxy``.
    public var needsProxy: Bool { [.networkDelay, .networkStall, .networkReset, .networkPathBreak].contains(self) }

    /// Whether the fault needs a server started with a clock shim.
    public var needsClockShim: Bool { [.clockStep, .clockFast].contains(self) }

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
