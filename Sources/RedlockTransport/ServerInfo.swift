/// The `key:value` lines of an `INFO` reply (`run_id:5f3c…`, `uptime_in_seconds:42`); the
/// section headers (`# Server`) and blank lines are skipped, and a key given twice keeps its
/// last value.
package func infoFields(_ text: String) -> [String: String] {
    var fields: [String: String] = [:]
    for line in text.split(whereSeparator: \.isNewline) where !line.hasPrefix("#") {
        guard let colon = line.firstIndex(of: ":") else { continue }
        fields[String(line[..<colon])] = String(line[line.index(after: colon)...])
    }
    return fields
}

/// Which server answered `INFO server`, and how long it had been up: its `run_id` (new at each
/// start) and a lower bound of its uptime when the reply had been read.
package struct ServerIdentity: Sendable, Equatable {
    /// The server's `run_id`.
    package var runID: String
    /// How long the server had been up at `readAt` at least (``uptimeLowerBound(reportedSeconds:)``
    /// of its `uptime_in_seconds`); nil when the reply has none (a Redis-compatible server).
    package var uptime: Duration?
    /// When the reply had been read (after it arrived).
    package var readAt: ContinuousClock.Instant

    /// The identity in the text of an `INFO server` reply read at `readAt`; nil without a
    /// `run_id`.
    package init?(info text: String, readAt: ContinuousClock.Instant) {
        let fields = infoFields(text)
        guard let runID = fields["run_id"], !runID.isEmpty else { return nil }
        self.runID = runID
        uptime = fields["uptime_in_seconds"].flatMap { Int64($0) }.map(Self.uptimeLowerBound(reportedSeconds:))
        self.readAt = readAt
    }

    /// How long a server that reports `uptime_in_seconds` = `reportedSeconds` has been up at
    /// least: a second and a clock tick (10 ms) less, never below zero. Redis reports its wall
    /// clock's whole seconds now less those at its start (`server.unixtime -
    /// server.stat_starttime`), which can be a second more than it ran: a server started at
    /// x.93 s reports 1 at (x + 1).0 s, 70 ms later. Its start's `time()` reads the kernel's
    /// coarse clock, up to a tick behind.
    package static func uptimeLowerBound(reportedSeconds: Int64) -> Duration {
        max(.zero, .seconds(reportedSeconds) - .seconds(1) - .milliseconds(10))
    }
}
