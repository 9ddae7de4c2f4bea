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

/// How long a server that reports `uptime_in_seconds` = `reportedSeconds` has been up at least:
/// a second and a clock tick (10 ms) less, zero at most. Redis reports its wall clock's whole
/// seconds now less those at its start (`server.unixtime - server.stat_starttime`), which can
/// be a second more than it ran: a server started at x.93 s reports 1 at (x + 1).0 s, 70 ms
/// later. Its start's `time()` reads the kernel's coarse clock, up to a tick behind.
package func uptimeLowerBound(reportedSeconds: Int64) -> Duration {
    max(.zero, .seconds(reportedSeconds) - .seconds(1) - .milliseconds(10))
}
