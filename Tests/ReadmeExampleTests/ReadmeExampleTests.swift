import Redlock
import RedlockTestSupport
import Testing

@Suite("README example")
struct ReadmeExampleTests {
    @Test("README's example runs as written against three real nodes")
    func example() async throws {
        try await withRedisServers(3) { servers throws in
            let seeded = SeedCount()
            try await readmeExample(endpoints: servers.map { endpoint(host: "127.0.0.1", port: $0.port) }) { _ in
                await seeded.add()
            }
            #expect(await seeded.count == 1)
        }
    }
}

actor SeedCount {
    private(set) var count = 0
    func add() { count += 1 }
}
