// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "swift-redlock",
    // Built and tested on Linux. The library uses Synchronization's Mutex, which needs macOS 15 on
    // Apple platforms.
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Redlock", targets: ["Redlock"]),
        .library(name: "RedlockServiceLifecycle", targets: ["RedlockServiceLifecycle"]),
        .library(name: "RedlockTestSupport", targets: ["RedlockTestSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // The transport's C boundary: sockets, TLS (the system's OpenSSL) and the RESP reader of
        // hiredis, behind one header of opaque types. Only RedlockTransport imports it.
        .target(
            name: "CRedisIO",
            linkerSettings: [.linkedLibrary("hiredis"), .linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // Connections to Redis nodes: non-blocking sockets driven by one epoll loop per client.
        .target(
            name: "RedlockTransport",
            dependencies: ["CRedisIO"],
            swiftSettings: [.enableUpcomingFeature("MemberImportVisibility")]
        ),
        // The Redlock quorum algorithm: configuration, leases, errors, scripts. No C.
        .target(
            name: "Redlock",
            dependencies: [
                "RedlockTransport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            // Each file imports what it uses, so apps that turn the feature on globally build.
            swiftSettings: [.enableUpcomingFeature("MemberImportVisibility")]
        ),
        // RedlockClient as a swift-service-lifecycle Service, for apps that use ServiceGroup.
        .target(
            name: "RedlockServiceLifecycle",
            dependencies: [
                "Redlock",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // posix_spawn with a log pipe and no inherited descriptors, for the test support.
        .target(name: "CProcessSpawn"),
        // Real redis-server processes and lock clients over them, for tests, benchmarks and the demo.
        .target(
            name: "RedlockTestSupport",
            dependencies: ["Redlock", "RedlockTransport", "CProcessSpawn"]
        ),
        .testTarget(
            name: "RedlockTransportTests",
            dependencies: ["RedlockTransport", "RedlockTestSupport"]
        ),
        .testTarget(
            name: "RedlockTests",
            dependencies: [
                "Redlock", "RedlockTransport", "RedlockTestSupport", "RedlockServiceLifecycle",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // README's example, built with MemberImportVisibility: `import Redlock` alone must do.
        .testTarget(
            name: "ReadmeExampleTests",
            dependencies: ["Redlock", "RedlockTestSupport"],
            swiftSettings: [.enableUpcomingFeature("MemberImportVisibility")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
