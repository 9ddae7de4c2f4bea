import ArgumentParser

/// `redlock bench`: acquire latency and throughput against the raw Redis floor.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure lock latency and throughput against the raw Redis floor.")

    func run() async throws {
        throw ValidationError("not implemented yet")
    }
}
