import Synchronization

/// The lease of a scoped lock while its body runs, kept current as it is extended in the
/// background. Read it at any time to see how much validity is left.
public final class HeldLease: Sendable, CustomStringConvertible {
    private let current: Mutex<Lease>

    init(_ lease: Lease) {
        current = Mutex(lease)
    }

    /// The lease as of its latest extension.
    public var lease: Lease { current.withLock { $0 } }
    /// The lock's name.
    public var name: String { lease.name }
    /// The fencing token of the acquisition (unchanged by extensions), when fencing is on.
    public var fencingToken: Int64? { lease.fencingToken }
    /// How much validity is left now; zero once it has run out.
    public var remainingValidity: Duration { lease.remainingValidity }
    /// Whether the lease is still valid now.
    public var isValid: Bool { lease.isValid }

    func update(_ lease: Lease) {
        current.withLock { $0 = lease }
    }

    /// The current lease's description.
    public var description: String { lease.description }
}
