import ArgumentParser

/// The `redlock` command-line tool.
@main
struct RedlockCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redlock",
        abstract: "Redlock distributed locks over independent Redis nodes.",
        subcommands: [Demo.self, Bench.self, Run.self]
    )
}
