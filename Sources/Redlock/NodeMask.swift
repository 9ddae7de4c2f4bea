/// A set of node indices as one word: bit `i` for node `i`. Nodes from 64 on are always members
/// (a client of that many nodes keeps no such detail about them).
struct NodeMask: Sendable, Hashable {
    private(set) var bits: UInt64

    /// No node below 64.
    static let none = NodeMask(bits: 0)
    /// Every node.
    static let all = NodeMask(bits: .max)

    /// Whether node `index` is in the set.
    func contains(_ index: Int) -> Bool {
        index >= 64 || bits & (1 << UInt64(index)) != 0
    }

    /// Node `index` is in the set, and only in its word: a node from 64 on is never (a client
    /// of that many nodes keeps no such detail about them).
    func containsExactly(_ index: Int) -> Bool {
        index < 64 && bits & (1 << UInt64(index)) != 0
    }

    /// Adds node `index`.
    mutating func insert(_ index: Int) {
        if index < 64 { bits |= 1 << UInt64(index) }
    }

    /// Both sets' nodes.
    func union(_ other: NodeMask) -> NodeMask {
        NodeMask(bits: bits | other.bits)
    }
}
