// swift-tools-version: 6.1
// The benchmarks are their own package so that package-benchmark and its plugins never reach
// the library's users: `cd Benchmarks && swift package --disable-sandbox benchmark`.
import PackageDescription

let package = Package(
    name: "swift-redlock-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "swift-redlock", path: "../"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // The workloads shared by the benchmarks and the instruction counter.
        .target(
            name: "CycleWorkloads",
            dependencies: [
                .product(name: "Redlock", package: "swift-redlock"),
                .product(name: "RedlockTestSupport", package: "swift-redlock"),
            ]
        ),
        // Uncontended lock+unlock cycles on 1, 3 and 5 local nodes, the raw fan-out floor, and the
        // attribution ladder between them.
        .executableTarget(
            name: "LockCycle",
            dependencies: [
                "CycleWorkloads",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Redlock", package: "swift-redlock"),
                .product(name: "RedlockTestSupport", package: "swift-redlock"),
            ],
            path: "Benchmarks/LockCycle",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark"),
            ]
        ),
        // A fixed number of cycles, for counting instructions under valgrind's callgrind.
        .executableTarget(
            name: "CycleProfile",
            dependencies: [
                "CycleWorkloads",
                .product(name: "Redlock", package: "swift-redlock"),
            ],
            path: "Profiling/CycleProfile"
        ),
    ],
    swiftLanguageModes: [.v6]
)
