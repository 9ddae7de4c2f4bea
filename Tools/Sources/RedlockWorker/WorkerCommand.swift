import ArgumentParser

/// `redlock-worker`: a lock client process for cross-process tests (Tools/Tests):
/// separate processes that contend for one lock and log their critical sections on the
/// machine-wide clock.
@main
struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redlock-worker",
        abstract: "A lock client process for cross-process tests of swift-redlock.",
        discussion: """
        Every timestamp it prints or logs is CLOCK_BOOTTIME in nanoseconds, the monotonic clock \
        all processes on the machine share, so a checker can compare intervals across processes.
        """,
        subcommands: [Contend.self, Hold.self, Hygiene.self, Exhausted.self, Heartbeat.self, Reattach.self, Scoped.self, Soak.self, Subreaper.self]
    )
}
