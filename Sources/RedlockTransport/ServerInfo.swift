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
