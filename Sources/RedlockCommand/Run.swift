import ArgumentParser

/// `redlock run`: runs a command while holding a lock.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a command while holding a lock.")

    func run() async throws {
        throw ValidationError("not implemented yet")
    }
}
