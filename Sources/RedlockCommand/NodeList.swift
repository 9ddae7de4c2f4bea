import ArgumentParser
import Foundation
import Redlock
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

/// A client over the nodes of `--nodes` (or `$REDLOCK_NODES`) and a lock on `name` with
/// `options`; bad input is a usage error (exit 64).
func makeLock(nodes: String?, name: String, options: LockOptions) throws -> (RedlockClient, DistributedLock) {
    let list = nodes ?? ProcessInfo.processInfo.environment["REDLOCK_NODES"] ?? ""
    guard !list.isEmpty else { throw ValidationError("give the nodes with --nodes or REDLOCK_NODES") }
    let configurations = try parseNodeList(list)
    do {
        let client = try RedlockClient(nodes: configurations)
        return (client, try client.makeLock(name, options: options))
    } catch {
        throw ValidationError("\(error)")
    }
}
