import Testing

/// Every fault-injection test, one at a time: they measure time, and a fault in one must not
/// slow another. (Other suites may still run alongside; the margins allow for that.) A test
/// that hangs fails after its time limit instead of stalling the run; teardown still runs.
@Suite("Fault injection", .serialized, .timeLimit(.minutes(2)))
struct FaultTests {}
