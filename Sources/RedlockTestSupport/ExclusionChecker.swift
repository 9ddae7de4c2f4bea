/// One critical section from a lock worker's log (`redlock-worker contend`), on the machine-wide
/// clock (``MachineClock``, `CLOCK_BOOTTIME` nanoseconds), for ``ExclusionChecker``.
public struct Acquisition: Sendable, Hashable, CustomStringConvertible {
    /// The worker's process id.
    public var process: Int32
    /// When `lock()` returned.
    public var acquired: Int64
    /// When the critical section ended (just before `unlock`).
    public var released: Int64
    /// The lease's `validUntil` (after any extend).
    public var validUntil: Int64
    /// The fencing token, when the library handed one out.
    public var fencingToken: Int64?

    /// Creates an acquisition; times in `CLOCK_BOOTTIME` nanoseconds.
    public init(process: Int32, acquired: Int64, released: Int64, validUntil: Int64, fencingToken: Int64?) {
        self.process = process
        self.acquired = acquired
        self.released = released
        self.validUntil = validUntil
        self.fencingToken = fencingToken
    }

    /// The end of the interval in which the holder may rely on the lock.
    public var end: Int64 { min(released, validUntil) }
    /// The lease ran out before `lock()` even returned: nothing to check.
    public var isEmpty: Bool { end <= acquired }

    /// `pid P [acquired, end] (released …, valid until …, token …)`.
    public var description: String {
        "pid \(process) [\(acquired), \(end)] (released \(released), valid until \(validUntil), token \(fencingToken.map(String.init) ?? "-"))"
    }

    /// Parses the worker's log: `PID ACQUIRE_NS RELEASE_NS VALID_UNTIL_NS TOKEN|-` per line,
    /// `#` comments.
    /// - Throws: ``MalformedLog`` naming the first line that is neither.
    public static func parse(log: String) throws -> [Acquisition] {
        var acquisitions: [Acquisition] = []
        for (number, line) in log.split(separator: "\n").enumerated() where !line.hasPrefix("#") {
            let fields = line.split(separator: " ")
            guard fields.count == 5, let process = Int32(fields[0]), let acquired = Int64(fields[1]),
                  let released = Int64(fields[2]), let validUntil = Int64(fields[3])
            else { throw MalformedLog(line: number + 1, text: String(line)) }
            let token: Int64?
            if fields[4] == "-" {
                token = nil
            } else if let value = Int64(fields[4]) {
                token = value
            } else {
                throw MalformedLog(line: number + 1, text: String(line))
            }
            acquisitions.append(Acquisition(process: process, acquired: acquired, released: released, validUntil: validUntil, fencingToken: token))
        }
        return acquisitions
    }
}

/// A worker log line that ``Acquisition/parse(log:)`` cannot read.
public struct MalformedLog: Error, CustomStringConvertible {
    /// The line's number, from 1.
    public var line: Int
    /// The line.
    public var text: String
    /// `malformed worker log line N: TEXT`.
    public var description: String { "malformed worker log line \(line): \(text)" }
}

/// The checks on all workers' critical sections together: mutual exclusion and fencing order.
public enum ExclusionChecker {
    /// Pairs of intervals from different processes that overlap: `[acquired, end]` of one
    /// intersects the other's. Empty intervals (the lease ran out before use) are skipped.
    ///
    /// A sweep in order of acquisition: an interval overlaps an earlier one of another process
    /// iff that process's latest-ending earlier interval ends after it starts.
    public static func overlaps(in acquisitions: [Acquisition]) -> [(Acquisition, Acquisition)] {
        let intervals = acquisitions.filter { !$0.isEmpty }.sorted { ($0.acquired, $0.end) < ($1.acquired, $1.end) }
        var latestEnding: [Int32: Acquisition] = [:]
        var found: [(Acquisition, Acquisition)] = []
        for interval in intervals {
            for (process, earlier) in latestEnding where process != interval.process && earlier.end > interval.acquired {
                found.append((earlier, interval))
            }
            if let current = latestEnding[interval.process], current.end >= interval.end { continue }
            latestEnding[interval.process] = interval
        }
        return found
    }

    /// Acquisitions, in order of acquisition, whose fencing token is not greater than an
    /// earlier one's. Only acquisitions that carry a token count; nil when none does.
    public static func fencingRegressions(in acquisitions: [Acquisition]) -> [Acquisition]? {
        let fenced = acquisitions.filter { !$0.isEmpty && $0.fencingToken != nil }.sorted { $0.acquired < $1.acquired }
        guard !fenced.isEmpty else { return nil }
        var highest = Int64.min
        var regressions: [Acquisition] = []
        for acquisition in fenced {
            guard let token = acquisition.fencingToken else { continue }
            if token <= highest { regressions.append(acquisition) }
            highest = max(highest, token)
        }
        return regressions
    }
}
