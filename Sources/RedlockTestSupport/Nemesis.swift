import RedlockTransport
import Synchronization

/// Injects random faults into a minority of nodes: at random moments it picks a healthy node
/// and a fault (every kind once per round of ``faults``), holds the fault for a random length,
/// then heals it — never more than `maximumFaulty` nodes faulty at once. Every fault is healed
/// before ``run(for:)`` returns, also when it throws or its task is cancelled — except what
/// cannot be undone: a ``NodeFault/clockStep`` stays, a ``NodeFault/clockFast`` leaves the
/// clock ahead by what it gained (and a later restart of that node loses the gain: the shim
/// starts from the real clock plus the offset), data flushed or wiped stays gone. For those, a
/// record's `end` is the moment after the action.
///
/// `.kill` and `.restart` keep a node's data only with
/// ``RedisServer/Persistence/appendOnlyFsyncAlways``; with ``RedisServer/Persistence/none``
/// they wipe it: that is the restart hazard (documented with ``RedisServer/heal()``), not a
/// fault Redlock survives without ``LockOptions``' `epochGuard`. The data and clock faults
/// (``NodeFault/flush``, ``NodeFault/restartWithoutData``, ``NodeFault/clockStep``,
/// ``NodeFault/clockFast``) are survived only with the guards on; the network faults need a
/// ``FaultProxy`` per node, and clients that connect through it.
public struct Nemesis: Sendable {
    /// The nodes it attacks.
    public let servers: [RedisServer]
    /// The proxy in front of each node (same order), for the network faults; nil without.
    public let proxies: [FaultProxy]?
    /// The most nodes faulty at once. For Redlock's guarantees, at most a minority.
    public let maximumFaulty: Int
    /// The faults it picks from: in rounds, each round every one of them once, in a random order
    /// (so a run of at least `faults.count` faults injects every kind; drawn independently, a
    /// kind went missing from a run of 55 about once in 1,500).
    public let faults: [NodeFault]
    /// How long each fault lasts (for `.restart`, the time the node stays down).
    public let faultLength: ClosedRange<Duration>
    /// The pause before each new fault.
    public let gap: ClosedRange<Duration>

    /// Creates a nemesis over `servers`.
    ///
    /// - Parameters:
    ///   - proxies: The proxy in front of each node, in the order of `servers`; needed for the
    ///     network faults. The default is nil.
    ///   - maximumFaulty: The default is a minority: `(servers.count − 1) / 2`.
    ///   - faults: The default is ``NodeFault/processFaults``.
    ///   - faultLength: The default is 100–600 ms.
    ///   - gap: The default is 50–300 ms.
    public init(
        servers: [RedisServer],
        proxies: [FaultProxy]? = nil,
        maximumFaulty: Int? = nil,
        faults: [NodeFault] = NodeFault.processFaults,
        faultLength: ClosedRange<Duration> = .milliseconds(100)...(.milliseconds(600)),
        gap: ClosedRange<Duration> = .milliseconds(50)...(.milliseconds(300))
    ) {
        precondition(proxies == nil || proxies?.count == servers.count, "one proxy per server")
        precondition(proxies != nil || !faults.contains(where: \.needsProxy), "network faults need a proxy per server")
        self.servers = servers
        self.proxies = proxies
        self.maximumFaulty = maximumFaulty ?? (servers.count - 1) / 2
        self.faults = faults.isEmpty ? NodeFault.processFaults : faults
        self.faultLength = faultLength
        self.gap = gap
    }

    /// Injects faults for `duration`, then waits until every fault is healed and returns the
    /// faults in the order they started.
    ///
    /// - Throws: The first error healing a node (a restart that failed); every other fault is
    ///   still healed first.
    public func run(for duration: Duration) async throws -> [FaultRecord] {
        let deadline = ContinuousClock.now.advanced(by: duration)
        let faulty = FaultyNodes()
        var round: [NodeFault] = []
        let outcomes = await withTaskGroup(of: Result<FaultRecord, any Error>.self) { group in
            while ContinuousClock.now < deadline, !Task.isCancelled {
                try? await Task.sleep(for: Self.random(in: gap))
                guard ContinuousClock.now < deadline, !Task.isCancelled else { break }
                let healthy = faulty.nodes.withLock { faulty -> Int? in
                    guard faulty.count < maximumFaulty else { return nil }
                    let candidates = servers.indices.filter { !faulty.contains($0) }
                    guard let node = candidates.randomElement() else { return nil }
                    faulty.insert(node)
                    return node
                }
                guard let node = healthy else { continue }
                if round.isEmpty { round = faults.shuffled() }
                let fault = round.removeLast()
                let length = Self.random(in: faultLength)
                let server = servers[node]
                let proxy = proxies?[node]
                group.addTask {
                    defer { faulty.nodes.withLock { _ = $0.remove(node) } }
                    do {
                        return .success(try await Self.inflict(fault, on: server, proxy: proxy, node: node, for: length))
                    } catch {
                        return .failure(error)
                    }
                }
            }
            var outcomes: [Result<FaultRecord, any Error>] = []
            for await outcome in group { outcomes.append(outcome) }
            return outcomes
        }
        var records: [FaultRecord] = []
        var firstError: (any Error)?
        for outcome in outcomes {
            switch outcome {
            case let .success(record): records.append(record)
            case let .failure(error): firstError = firstError ?? error
            }
        }
        if let firstError { throw firstError }
        return records.sorted { $0.start < $1.start }
    }

    /// Inflicts one fault, holds it for `length` (not cancellable: healing must happen), heals it;
    /// on any error the node is healed too.
    private static func inflict(
        _ fault: NodeFault, on server: RedisServer, proxy: FaultProxy?, node: Int, for length: Duration
    ) async throws -> FaultRecord {
        let start = ContinuousClock.now
        do {
            try await hold(fault, on: server, proxy: proxy, from: start, for: length)
        } catch {
            // Whatever went wrong, leave the node running and unfrozen, its clock at the normal
            // rate, its proxy forwarding.
            try? await server.heal()
            if server.clockShim != nil { try? server.setClock(rate: 1, offset: server.clockOffset) }
            proxy?.set(.none)
            throw error
        }
        return FaultRecord(node: node, fault: fault, start: start, end: .now)
    }

    private static func hold(
        _ fault: NodeFault, on server: RedisServer, proxy: FaultProxy?, from start: ContinuousClock.Instant, for length: Duration
    ) async throws {
        let until = start.advanced(by: length)
        switch fault {
        case .kill:
            await server.kill()
            await sleepIgnoringCancellation(until: start.advanced(by: length))
            try await server.heal()
        case .pause:
            try await server.pause()
            await sleepIgnoringCancellation(until: start.advanced(by: length))
            try server.resume()
        case .stall:
            let stall = try await server.stall(for: length)
            await stall.waitUntilOver()
        case .restart:
            try await server.restart(keepingData: true)
        case .flush:
            try await server.flushAll()
        case .restartWithoutData:
            try await server.restart(keepingData: false)
        case .clockStep:
            try server.stepClock(by: .seconds(5))
        case .clockFast:
            try server.setClock(rate: 3, offset: server.clockOffset)
            await sleepIgnoringCancellation(until: until)
            try server.setClock(rate: 1, offset: server.clockOffset)
        case .networkDelay:
            proxy?.set(.latency(.milliseconds(Int64.random(in: 2...10)), jitter: .milliseconds(10)))
            await sleepIgnoringCancellation(until: until)
            proxy?.set(.none)
        case .networkStall:
            proxy?.set(.stall([.toNode, .toClient]))
            await sleepIgnoringCancellation(until: until)
            proxy?.set(.none)
        case .networkReset:
            proxy?.resetConnections()
        case .networkPathBreak:
            proxy?.set(.stallOpen([.toNode, .toClient]))
            await sleepIgnoringCancellation(until: until)
            proxy?.set(.none)
        }
    }

    private static func sleepIgnoringCancellation(until deadline: ContinuousClock.Instant) async {
        // A cancelled Task.sleep returns at once; a detached task's sleep is not cancelled.
        await Task.detached { try? await Task.sleep(until: deadline, clock: .continuous) }.value
    }

    private static func random(in range: ClosedRange<Duration>) -> Duration {
        let low = range.lowerBound.wholeNanoseconds
        let high = range.upperBound.wholeNanoseconds
        return .nanoseconds(Int64.random(in: Swift.min(low, high)...Swift.max(low, high)))
    }
}

/// The nodes a nemesis holds faulty right now, shared with the tasks that heal them.
private final class FaultyNodes: Sendable {
    let nodes = Mutex(Set<Int>())
}
