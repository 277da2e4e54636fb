import Logging
import NIOConcurrencyHelpers
import RelayTelemetry
import Testing

@testable import RelayExport

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

@Suite struct OTLPConfigurationTests {
    @Test func theBaseEndpointGetsASignalPathAndPerSignalSettingsWin() throws {
        let configuration = try #require(
            try OTLPConfiguration.from(environment: [
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://logs.example/custom/path",
                "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%2Cb , x-team=edge",
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-metrics=1",
                "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
                "OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_METRIC_EXPORT_INTERVAL": "15000",
            ]))
        #expect(configuration.signals[.traces]?.endpoint == "http://collector:4318/v1/traces")
        #expect(configuration.signals[.metrics]?.endpoint == "http://collector:4318/v1/metrics")
        #expect(configuration.signals[.logs]?.endpoint == "https://logs.example/custom/path")
        #expect(configuration.signals[.traces]?.gzip == true && configuration.signals[.logs]?.gzip == false)
        #expect(configuration.signals[.logs]?.headers.map(\.value) == ["a,b", "edge"])
        #expect(configuration.signals[.metrics]?.headers.map(\.name) == ["api-key", "x-team", "x-metrics"])
        #expect(configuration.signals[.traces]?.timeoutSeconds == 2.5)
        #expect(configuration.flushIntervalSeconds == 0.25 && configuration.metricsIntervalSeconds == 15)
    }

    @Test func nothingConfiguredOrDisabledMeansNoSink() throws {
        #expect(try OTLPConfiguration.from(environment: [:]) == nil)
        #expect(
            try OTLPConfiguration.from(environment: [
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true",
            ]) == nil)
        let tracesOnly = try #require(
            try OTLPConfiguration.from(environment: [
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_LOGS_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none",
            ]))
        #expect(Set(tracesOnly.signals.keys) == [.traces])
        let flag = try #require(
            try OTLPConfiguration.from(
                environment: ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env/v1/traces"],
                endpoint: "http://flag:4318", headers: ["k=v"]))
        #expect(flag.signals[.traces]?.endpoint == "http://flag:4318/v1/traces", "the flag wins over the environment")
        #expect(flag.signals[.traces]?.headers == [.init(name: "k", value: "v")])
    }

    @Test(arguments: [
        ["OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"], ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"],
        ["OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"], ["OTEL_EXPORTER_OTLP_HEADERS": "=v"],
        ["OTEL_EXPORTER_OTLP_HEADERS": "a b=v"], ["OTEL_EXPORTER_OTLP_HEADERS": "k=v%0Ainjected: 1"],
        ["OTEL_EXPORTER_OTLP_TIMEOUT": "0"], ["OTEL_BSP_SCHEDULE_DELAY": "soon"], ["OTEL_TRACES_EXPORTER": "zipkin"],
        ["OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"],
    ])
    func settingsThatCannotWorkAreRefused(variables: [String: String]) {
        var environment = ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"]
        environment.merge(variables) { $1 }
        #expect(throws: ExportError.self) { try OTLPConfiguration.from(environment: environment) }
    }

    @Test func resourceAttributesAndServiceName() throws {
        let resource = try OTLPConfiguration.resource(environment: [
            "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes,deployment.environment=prod,team=a%20b"
        ])
        #expect(resource.serviceName == "from-attributes")
        #expect(resource.attributes.map(\.0) == ["deployment.environment", "team"])
        #expect(resource.attributes.map(\.1) == ["prod", "a b"])
        let named = try OTLPConfiguration.resource(environment: [
            "OTEL_SERVICE_NAME": "edge-berlin", "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored",
        ])
        #expect(named.serviceName == "edge-berlin", "OTEL_SERVICE_NAME wins")
    }
}

@Suite struct ProtobufWriterTests {
    @Test func varintsFixedValuesAndDefaultsFollowTheWireFormat() {
        var writer = ProtobufWriter()
        writer.uint64(1, 150)
        writer.uint64(2, 0)
        writer.int64(3, -1)
        writer.fixed64(4, 1, always: true)
        writer.string(5, "hi")
        writer.message(6) { $0.bool(1, true) }
        #expect(
            writer.bytes == [
                0x08, 0x96, 0x01,  // field 1 = 150
                0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,  // field 3 = -1, ten bytes
                0x21, 1, 0, 0, 0, 0, 0, 0, 0,  // field 4 fixed64
                0x2A, 2, 0x68, 0x69,  // field 5 "hi"
                0x32, 2, 0x08, 0x01,  // field 6 { field 1 = true }
            ])
    }

    @Test func idsThatAreNotHexOfTheRightLengthAreNotSent() {
        #expect(OTLPEncoding.idBytes("0af7651916cd43dd8448eb211c80319c", count: 16)?.first == 0x0A)
        #expect(OTLPEncoding.idBytes("0af7", count: 16) == nil)
        #expect(OTLPEncoding.idBytes("zzf7651916cd43dd", count: 8) == nil)
    }

    @Test func networkAttributesGetTheirSemanticConventionNames() {
        let attributes = OTLPEncoding.spanAttributes([
            "peer": "[::1]:50000", "target": "db.internal:5432", "bytes_up": "42", "method": "GET",
            "http.response.status_code": "204",
        ])
        func value(_ key: String) -> String? {
            attributes.first { $0.0 == key }.map { key, value in
                switch value {
                case .string(let text): return text
                case .int(let number): return "int \(number)"
                }
            }
        }
        #expect(value("client.address") == "::1" && value("client.port") == "int 50000")
        #expect(value("server.address") == "db.internal" && value("server.port") == "int 5432")
        #expect(value("bytes_up") == "int 42" && value("http.response.status_code") == "int 204")
        #expect(value("http.request.method") == "GET")
    }
}

/// A sink that takes every batch and counts its items.
private final class CountingSink: ExportSink, Sendable {
    let name: String
    let maxBatchBytes = 100_000
    let hangs: Bool
    let delivered = NIOLockedValueBox(0)
    let finishedAttempts = NIOLockedValueBox(0)

    init(name: String, hangs: Bool) {
        self.name = name
        self.hangs = hangs
    }

    var deliveryTimeoutSeconds: Double { 60 }

    func encode(_ item: TelemetryItem, source: ExportSource) -> [EncodedRow] {
        guard case .log(let entry) = item else { return [] }
        return [EncodedRow(stream: "logs", bytes: Array(entry.message.utf8))]
    }

    func deliver(_ batch: PreparedBatch) async -> DeliveryOutcome {
        if hangs {
            // Never answers; only the exporter's timeout (a cancellation) ends it.
            while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(10)) }
            finishedAttempts.withLockedValue { $0 += 1 }
            return .retry(status: "network", retryAfter: nil)
        }
        delivered.withLockedValue { $0 += batch.batch.count }
        return .delivered
    }
}

@Suite struct SinkIndependenceTests {
    @Test func aSinkThatNeverAnswersDelaysNoOther() async throws {
        let healthy = CountingSink(name: "healthy", hangs: false)
        let hung = CountingSink(name: "hung", hangs: true)
        var configuration = ExporterConfiguration()
        configuration.flushIntervalSeconds = 0.05
        configuration.metricsIntervalSeconds = 0
        let metrics = RelayMetrics()
        let exporter = try TelemetryExporter(
            sinks: [hung, healthy], configuration: configuration, source: .init(role: "test", instance: "h"),
            metrics: metrics, logger: Logger(label: "test"))
        for index in 0..<1000 {
            exporter.submit(
                .log(LogEntry(time: Date(), level: .info, label: "t", message: "m\(index)", metadata: [:])))
        }
        // The hung sink's first delivery lasts 60 s; the healthy sink must be done long before it returns.
        let clock = ContinuousClock()
        let started = clock.now
        while healthy.delivered.withLockedValue({ $0 }) < 1000, clock.now - started < .seconds(30) {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(healthy.delivered.withLockedValue { $0 } == 1000)
        #expect(hung.finishedAttempts.withLockedValue { $0 } == 0, "the hung sink was still in its first delivery")
        await exporter.shutdown(deadlineSeconds: 0.5)
        let timeouts = metrics.registry.snapshot().first { $0.name == "hyrelay_export_attempts_total" }?.points
            .filter { $0.labels.contains { $0 == ("status", "timeout") } }.map(\.value.number).reduce(0, +)
        #expect((timeouts ?? 0) >= 1, "the shutdown deadline cut the hung delivery, counted as a timeout")
        #expect(hung.finishedAttempts.withLockedValue { $0 } >= 1)
    }
}

/// Virtual time: every sleep moves the clock on at once, so an exporter's minutes pass in milliseconds.
private final class ManualClock: ExportClock, Sendable {
    private let seconds = NIOLockedValueBox(1_700_000_000.0)

    var now: Double { seconds.withLockedValue { $0 } }

    func sleep(seconds amount: Double) async {
        seconds.withLockedValue { $0 += amount }
        await Task.yield()
    }
}

/// Answers 429 with `Retry-After: 60` once, then takes everything; notes the clock at each attempt.
private final class ThrottlingSink: ExportSink, Sendable {
    let name = "throttling"
    let maxBatchBytes = 100_000
    let clock: ManualClock
    let attempts = NIOLockedValueBox<[Double]>([])

    init(clock: ManualClock) { self.clock = clock }

    func encode(_ item: TelemetryItem, source: ExportSource) -> [EncodedRow] {
        guard case .log(let entry) = item else { return [] }
        return [EncodedRow(stream: "logs", bytes: Array(entry.message.utf8))]
    }

    func deliver(_ batch: PreparedBatch) async -> DeliveryOutcome {
        let count = attempts.withLockedValue { attempts in
            attempts.append(clock.now)
            return attempts.count
        }
        return count == 1 ? .retry(status: "429", retryAfter: 60) : .delivered
    }
}

@Suite struct ExportClockTests {
    @Test func retryAfterIsKeptOnTheInjectedClock() async throws {
        let clock = ManualClock()
        let sink = ThrottlingSink(clock: clock)
        var configuration = ExporterConfiguration()
        configuration.flushIntervalSeconds = 1
        configuration.metricsIntervalSeconds = 0
        let exporter = try TelemetryExporter(
            sinks: [sink], configuration: configuration, source: .init(role: "test", instance: "h"),
            metrics: RelayMetrics(), logger: Logger(label: "test"), clock: clock)
        exporter.submit(.log(LogEntry(time: Date(), level: .info, label: "t", message: "m", metadata: [:])))
        let started = ContinuousClock.now
        while sink.attempts.withLockedValue({ $0.count }) < 2, ContinuousClock.now - started < .seconds(20) {
            try await Task.sleep(for: .milliseconds(5))
        }
        await exporter.shutdown(deadlineSeconds: 1)
        let attempts = sink.attempts.withLockedValue { $0 }
        #expect(attempts.count == 2)
        if attempts.count == 2 {
            #expect(attempts[1] - attempts[0] >= 60, "the second attempt waited out Retry-After on the clock")
            #expect(attempts[1] - attempts[0] < 62)
        }
        #expect(ContinuousClock.now - started < .seconds(30), "virtual minutes (60 s of Retry-After), not real ones")
    }
}
