import ArgumentParser
import RedlockTransport

/// Parses a comma-separated node list: `host:port`, `redis://[user:pass@]host:port[/db]` or
/// `unix:///path`.
func parseNodeList(_ text: String) throws -> [RedisConnectionConfiguration] {
    let items = text.split(separator: ",").map(String.init).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
    guard !items.isEmpty else { throw ValidationError("the node list is empty") }
    return try items.map { item in
        do {
            return try RedisConnectionConfiguration(parsing: item)
        } catch {
            throw ValidationError("\(error)")
        }
    }
}
