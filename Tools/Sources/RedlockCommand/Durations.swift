import ArgumentParser

/// Parses `250ms`, `2s`, `1.5s`, `1m`, `1h` or plain seconds (`30`, `0.5`).
func parseDuration(_ text: String) throws -> Duration {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let units: [(suffix: String, seconds: Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3_600)]
    var number = Substring(trimmed)
    var scale = 1.0
    for unit in units where trimmed.hasSuffix(unit.suffix) {
        number = trimmed.dropLast(unit.suffix.count)
        scale = unit.seconds
        break
    }
    guard let value = Double(number), value.isFinite, value >= 0 else {
        throw ValidationError("'\(text)' is not a duration (use e.g. 250ms, 2s, 1m or plain seconds)")
    }
    let nanoseconds = value * scale * 1e9
    guard nanoseconds < Double(Int64.max) else { throw ValidationError("'\(text)' is too long") }
    return .nanoseconds(Int64(nanoseconds.rounded()))
}
