// swift-tools-version: 6.0
// The command-line tools and the tests that run them, in a package of their own so that an app
// depending on swift-redlock resolves and builds only the library's dependencies:
// `swift build -c release --package-path Tools` builds `redlock`, `redlock-worker` and
// `redlock-raw-floor` into Tools/.build/release.
import PackageDescription

let package = Package(
    name: "swift-redlock-tools",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "redlock", targets: ["RedlockCommand"]),
        .executable(name: "redlock-worker", targets: ["RedlockWorker"]),
        .executable(name: "redlock-raw-floor", targets: ["RedlockRawFloor"]),
        // Process trees that try to break the kill at a lease's deadline (RunSupervisionTests).
        .executable(name: "redlock-kill-probe", targets: ["RedlockKillProbe"]),
        // Preloaded into a test redis-server to make its wall clock run fast or step
        // (RedisServer.setClock(rate:offset:)).
        .library(name: "RedlockClockShim", type: .dynamic, targets: ["CClockShim"]),
    ],
    dependencies: [
        .package(name: "swift-redlock", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // The watchdog process that `redlock run` supervises its command through.
        .target(name: "CSupervise"),
        // stderr for `redlock`, written by a thread of its own: no caller waits for a reader.
        .target(
            name: "RedlockOutput",
            dependencies: [.product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(
            name: "RedlockCommand",
            dependencies: [
                "CSupervise",
                "RedlockOutput",
                .product(name: "Redlock", package: "swift-redlock"),
                .product(name: "RedlockTestSupport", package: "swift-redlock"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // A lock client process for cross-process tests: runs critical sections and logs them.
        .executableTarget(
            name: "RedlockWorker",
            dependencies: [
                "CSupervise",
                .product(name: "Redlock", package: "swift-redlock"),
                .product(name: "RedlockTestSupport", package: "swift-redlock"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The physical floor `redlock bench` measures the library against: one C thread on
        // blocking hiredis, no Swift.
        .executableTarget(
            name: "RedlockRawFloor",
            linkerSettings: [.linkedLibrary("hiredis")]
        ),
        // Process trees that try to break redlock_kill_tree: a killed process's sibling adding
        // children to it, a pid that changes hands, a process that may not be signalled.
        .executableTarget(
            name: "RedlockKillProbe",
            dependencies: ["CSupervise"]
        ),
        // A node clock fault: a shim that scales or offsets CLOCK_REALTIME and gettimeofday
        // for one redis-server (see clock_shim.c).
        .target(name: "CClockShim"),
        // The CLI and the worker, run as processes: `redlock run` supervision, re-attaching across
        // processes, a whole process paused past its lease.
        .testTarget(
            name: "RedlockToolTests",
            dependencies: [
                "CSupervise",
                "RedlockOutput",
                .product(name: "Redlock", package: "swift-redlock"),
                .product(name: "RedlockTestSupport", package: "swift-redlock"),
            ]
        ),
        // Kill, pause and restart real nodes; cross-process exclusion under a nemesis.
        .testTarget(
            name: "RedlockFaultTests",
            dependencies: [
                .product(name: "Redlock", package: "swift-redlock"),
                .product(name: "RedlockTestSupport", package: "swift-redlock"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
