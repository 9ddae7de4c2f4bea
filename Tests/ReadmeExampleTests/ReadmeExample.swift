// README's example, as written, in a file that imports nothing but Redlock: this target builds
// with the upcoming MemberImportVisibility feature on, so it proves `import Redlock` is enough.
import Redlock

/// README's "Example", with the node addresses and the seeding work passed in.
func readmeExample(
    endpoints: [RedisEndpoint],
    seedInitialData: @escaping @Sendable (_ token: Int64?) async throws -> Void
) async throws {
    let client = try RedlockClient(endpoints: endpoints)
    let lock = try client.makeLock("seed-initial-data", options: LockOptions(expiry: .seconds(10)))
    try await lock.withLock { lease in          // acquires, auto-extends, releases
        try await seedInitialData(lease.fencingToken)
    }
    await client.shutdown()
}

/// README's handling of errors: switch over the code.
func describe(_ error: RedlockError) -> String {
    switch error.code {
    case .taken: "someone else is doing it"
    case .noQuorum: "too few nodes answered: \(error.nodes.map(\.description).joined(separator: "; "))"
    default: "\(error)"
    }
}

/// An endpoint built the README's way, to check `RedisEndpoint`'s members are reachable.
func endpoint(host: String, port: Int) -> RedisEndpoint {
    .hostname(host, port: port)
}
