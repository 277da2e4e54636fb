// swift-tools-version: 6.2
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .treatAllWarnings(as: .error),
]

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "NIOHTTP1", package: "swift-nio"),
    .product(name: "NIOWebSocket", package: "swift-nio"),
    .product(name: "NIOSSL", package: "swift-nio-ssl"),
]

let log: Target.Dependency = .product(name: "Logging", package: "swift-log")
// NIO's locks are pthread mutexes, which ThreadSanitizer understands (Synchronization.Mutex's futex is not).
let locks: Target.Dependency = .product(name: "NIOConcurrencyHelpers", package: "swift-nio")
let crypto: Target.Dependency = .product(name: "Crypto", package: "swift-crypto")
let tracing: Target.Dependency = .product(name: "Tracing", package: "swift-distributed-tracing")
let yams: Target.Dependency = .product(name: "Yams", package: "Yams")

let package = Package(
    name: "HybridRelay",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "hyrelay", targets: ["hyrelay"]),
        .library(name: "HybridConnections", targets: ["HybridConnections"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        // The protocol as values: no I/O.
        .target(name: "HybridConnections", dependencies: [crypto], swiftSettings: strict),
        // NIO building blocks shared by relay and agents.
        .target(
            name: "RelayIO", dependencies: ["HybridConnections", "RelayTelemetry", crypto] + nio, swiftSettings: strict),
        .target(
            name: "RelayTelemetry",
            dependencies: [
                "HybridConnections", log, locks, tracing, .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // Ships telemetry to Azure Monitor or to local files: batching, gzip, retry, spool.
        // Entra ID: credentials (client secret, certificate, workload and managed identity) for the agents and
        // the exporter, and the relay's check of Entra access tokens.
        .target(
            name: "AzureIdentity",
            dependencies: [
                "HybridConnections", "RelayTelemetry", locks, crypto,
                .product(name: "CryptoExtras", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict),
        .target(
            name: "RelayExport",
            dependencies: [
                "HybridConnections", "AzureIdentity", "RelayTelemetry", log, locks, crypto,
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "RelayServer",
            dependencies: [
                "HybridConnections", "AzureIdentity", "RelayIO", "RelayTelemetry", log, locks, yams,
                tracing,
            ] + nio,
            swiftSettings: strict
        ),
        .target(
            name: "RelayAgent",
            dependencies: [
                "HybridConnections", "AzureIdentity", "RelayIO", "RelayTelemetry", log, locks, yams,
                tracing,
            ] + nio,
            swiftSettings: strict
        ),
        .executableTarget(
            name: "hyrelay",
            dependencies: [
                "HybridConnections", "AzureIdentity", "RelayServer", "RelayAgent", "RelayIO", "RelayTelemetry",
                "RelayExport", log, crypto,
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ] + nio,
            swiftSettings: strict
        ),
        // Word-wise masking against NIO's byte loop; Benchmarks/compare.sh runs it.
        .executableTarget(
            name: "MaskingBenchmark",
            dependencies: [
                "RelayIO", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            path: "Benchmarks/MaskingBenchmark", swiftSettings: strict
        ),
        // Allocations of one WebSocket upgrade, the relay's handshake against NIO's typed upgrader.
        .executableTarget(
            name: "UpgradeBenchmark",
            dependencies: [
                "RelayIO", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            path: "Benchmarks/UpgradeBenchmark", swiftSettings: strict
        ),
        // Shared by the test suites: a seeded generator (fuzz failures replay), a read() counter.
        .target(
            name: "TestSupport", dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(
            name: "HybridConnectionsTests", dependencies: ["HybridConnections", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "RelayIOTests",
            dependencies: [
                "RelayIO", .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ] + nio,
            swiftSettings: strict),
        .testTarget(
            name: "RelayTelemetryTests", dependencies: ["RelayTelemetry", log, tracing], swiftSettings: strict),
        .testTarget(
            name: "RelayExportTests", dependencies: ["RelayExport", "AzureIdentity", "RelayTelemetry", log, locks],
            swiftSettings: strict),
        .testTarget(
            name: "AzureIdentityTests",
            dependencies: ["AzureIdentity", crypto, .product(name: "CryptoExtras", package: "swift-crypto")],
            swiftSettings: strict),
        .testTarget(
            name: "RelayAgentTests",
            dependencies: [
                "HybridConnections", "RelayAgent", "RelayIO", "TestSupport",
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOWebSocket", package: "swift-nio"),
            ], swiftSettings: strict
        ),
        .testTarget(
            name: "RelayServerTests",
            dependencies: [
                "HybridConnections", "AzureIdentity", "RelayIO", "RelayServer", "TestSupport", log, locks, crypto, yams,
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ] + nio,
            swiftSettings: strict
        ),
    ]
)
