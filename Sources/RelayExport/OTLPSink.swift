import AzureIdentity
import HybridConnections
import NIOHTTP1
import RelayTelemetry

/// OTLP/HTTP settings read the standard way (`OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_METRIC_EXPORT_INTERVAL`), flags winning over the
/// environment. Pure: the environment is passed in.
public struct OTLPConfiguration: Sendable, Equatable {
    public struct Signal: Sendable, Equatable {
        /// The full URL batches are posted to.
        public var endpoint: String
        public var headers: [Header]
        public var gzip: Bool
        public var timeoutSeconds: Double
    }

    public struct Header: Sendable, Equatable {
        public var name: String
        public var value: String
    }

    /// A signal is nil when its exporter is `none`.
    public var signals: [OTLPSignal: Signal]
    /// `OTEL_BSP_SCHEDULE_DELAY`: how long a partial batch waits (default 5 s).
    public var flushIntervalSeconds: Double
    /// `OTEL_METRIC_EXPORT_INTERVAL`: seconds between metric snapshots (default 60 s).
    public var metricsIntervalSeconds: Double

    /// The configuration, or nil when no OTLP endpoint is set anywhere (or `OTEL_SDK_DISABLED=true`).
    public static func from(
        environment: [String: String], endpoint flagEndpoint: String? = nil, headers flagHeaders: [String] = []
    ) throws(ExportError) -> OTLPConfiguration? {
        func value(_ name: String) -> String? {
            guard let text = environment[name]?.trimmingWhitespace(), !text.isEmpty else { return nil }
            return text
        }
        if value("OTEL_SDK_DISABLED")?.lowercased() == "true" { return nil }
        let base = flagEndpoint ?? value("OTEL_EXPORTER_OTLP_ENDPOINT")
        let perSignal = OTLPSignal.allCases.compactMap { value("OTEL_EXPORTER_OTLP_\($0.variable)_ENDPOINT") }
        guard base != nil || !perSignal.isEmpty else { return nil }
        var commonHeaders = try headers(
            value("OTEL_EXPORTER_OTLP_HEADERS") ?? "", variable: "OTEL_EXPORTER_OTLP_HEADERS")
        for flag in flagHeaders {
            commonHeaders += try headers(flag, variable: "--otlp-header")
        }
        var signals: [OTLPSignal: Signal] = [:]
        for signal in OTLPSignal.allCases {
            let exporter = value("OTEL_\(signal.variable)_EXPORTER")?.lowercased() ?? "otlp"
            guard exporter != "none" else { continue }
            guard exporter == "otlp" else {
                throw .configuration(
                    "OTEL_\(signal.variable)_EXPORTER '\(exporter)' is not supported: otlp or none (Prometheus metrics are on --metrics)"
                )
            }
            let protocolName =
                value("OTEL_EXPORTER_OTLP_\(signal.variable)_PROTOCOL") ?? value("OTEL_EXPORTER_OTLP_PROTOCOL")
                ?? "http/protobuf"
            guard protocolName == "http/protobuf" else {
                throw .configuration(
                    "OTLP protocol '\(protocolName)' is not supported: use http/protobuf (a collector's port 4318)")
            }
            let endpoint: String
            if let specific = value("OTEL_EXPORTER_OTLP_\(signal.variable)_ENDPOINT"), flagEndpoint == nil {
                endpoint = specific
            } else if var base {
                while base.hasSuffix("/") { base.removeLast() }
                endpoint = "\(base)/v1/\(signal.rawValue)"
            } else {
                continue
            }
            try checkURL(endpoint)
            var signalHeaders = commonHeaders
            if let specific = value("OTEL_EXPORTER_OTLP_\(signal.variable)_HEADERS") {
                signalHeaders += try headers(specific, variable: "OTEL_EXPORTER_OTLP_\(signal.variable)_HEADERS")
            }
            let compression =
                value("OTEL_EXPORTER_OTLP_\(signal.variable)_COMPRESSION") ?? value("OTEL_EXPORTER_OTLP_COMPRESSION")
                ?? "gzip"
            guard compression == "gzip" || compression == "none" else {
                throw .configuration("OTLP compression '\(compression)' is not supported: gzip or none")
            }
            let timeout = try milliseconds(
                value("OTEL_EXPORTER_OTLP_\(signal.variable)_TIMEOUT") ?? value("OTEL_EXPORTER_OTLP_TIMEOUT"),
                name: "OTEL_EXPORTER_OTLP_TIMEOUT", default: 10)
            signals[signal] = Signal(
                endpoint: endpoint, headers: signalHeaders, gzip: compression == "gzip", timeoutSeconds: timeout)
        }
        return OTLPConfiguration(
            signals: signals,
            flushIntervalSeconds: try milliseconds(
                value("OTEL_BSP_SCHEDULE_DELAY"), name: "OTEL_BSP_SCHEDULE_DELAY", default: 5),
            metricsIntervalSeconds: try milliseconds(
                value("OTEL_METRIC_EXPORT_INTERVAL"), name: "OTEL_METRIC_EXPORT_INTERVAL", default: 60))
    }

    /// `OTEL_SERVICE_NAME`, else `service.name` of `OTEL_RESOURCE_ATTRIBUTES`; and the other attributes.
    public static func resource(
        environment: [String: String]
    ) throws(ExportError) -> (
        serviceName: String?, attributes: [(String, String)]
    ) {
        let text = environment["OTEL_RESOURCE_ATTRIBUTES"] ?? ""
        var attributes: [(String, String)] = []
        var serviceName = environment["OTEL_SERVICE_NAME"].flatMap { $0.isEmpty ? nil : $0 }
        for header in try headers(text, variable: "OTEL_RESOURCE_ATTRIBUTES") {
            if header.name == "service.name" {
                serviceName = serviceName ?? header.value
            } else {
                attributes.append((header.name, header.value))
            }
        }
        return (serviceName, attributes)
    }

    /// `key=value,key=value` (the W3C baggage form the OTel variables use), values percent-decoded.
    static func headers(_ text: String, variable: String) throws(ExportError) -> [Header] {
        var result: [Header] = []
        for pair in text.split(separator: ",") {
            let trimmed = pair.trimmingWhitespace()
            guard !trimmed.isEmpty else { continue }
            guard let equals = trimmed.firstIndex(of: "="), equals != trimmed.startIndex,
                let value = PercentEncoding.decode(trimmed[trimmed.index(after: equals)...], plusAsSpace: false)
            else { throw .configuration("\(variable): '\(trimmed)' is not key=value") }
            let name = String(trimmed[..<equals]).trimmingWhitespace()
            guard HTTPFieldSyntax.isValidName(name) else {
                throw .configuration("\(variable): '\(name)' is not a valid name")
            }
            guard HTTPFieldSyntax.isValidValue(value) else {
                throw .configuration("\(variable): the value of '\(name)' holds a control character")
            }
            result.append(Header(name: name, value: value.trimmingWhitespace()))
        }
        return result
    }

    private static func milliseconds(
        _ text: String?, name: String, default fallback: Double
    ) throws(ExportError)
        -> Double
    {
        guard let text else { return fallback }
        guard let value = Double(text), value > 0, value.isFinite else {
            throw .configuration("\(name) '\(text)' is not a positive number of milliseconds")
        }
        return value / 1000
    }

    private static func checkURL(_ url: String) throws(ExportError) {
        let lower = url.lowercased()
        guard lower.hasPrefix("http://") || lower.hasPrefix("https://"),
            url.split(separator: "/", omittingEmptySubsequences: false).count >= 3,
            !url.split(separator: "/", omittingEmptySubsequences: false)[2].isEmpty
        else { throw .configuration("OTLP endpoint '\(RedactedURL.text(url))' is not an http:// or https:// URL") }
    }
}

extension OTLPSignal {
    /// The signal's part of the variable names: `TRACES`, `LOGS`, `METRICS`.
    var variable: String { rawValue.uppercased() }
}

/// OTLP/HTTP with protobuf bodies: spans to `/v1/traces`, logs to `/v1/logs`, metrics to `/v1/metrics`, each
/// batch one `Export…ServiceRequest` under the process's resource. 429, 502, 503 and 504 (and any 5xx or network
/// failure) are retried with `Retry-After`; other answers are final.
public struct OTLPSink: ExportSink {
    public let name = "otlp"
    public let maxBatchBytes = 1_000_000
    public let configuration: OTLPConfiguration
    let resource: [UInt8]
    let version: String
    let http: AzureHTTP

    public init(configuration: OTLPConfiguration, source: ExportSource, http: AzureHTTP) {
        self.configuration = configuration
        resource = OTLPEncoding.resource(source)
        version = source.version
        self.http = http
    }

    public var deliveryTimeoutSeconds: Double {
        configuration.signals.values.map(\.timeoutSeconds).max() ?? 10
    }

    public func encode(_ item: TelemetryItem, source: ExportSource) -> [EncodedRow] {
        switch item {
        case .span(let span):
            guard configuration.signals[.traces] != nil else { return [] }
            return [EncodedRow(stream: OTLPSignal.traces.rawValue, bytes: OTLPEncoding.span(span))]
        case .log(let entry):
            guard configuration.signals[.logs] != nil else { return [] }
            return [EncodedRow(stream: OTLPSignal.logs.rawValue, bytes: OTLPEncoding.log(entry))]
        case .metrics(let snapshot):
            guard configuration.signals[.metrics] != nil else { return [] }
            return OTLPEncoding.metrics(snapshot, startTime: source.startTime).map {
                EncodedRow(stream: OTLPSignal.metrics.rawValue, bytes: $0)
            }
        case .row:
            return []
        }
    }

    public func compress(_ batch: Batch) throws -> [UInt8] {
        let request = OTLPEncoding.request(items: batch.items, resource: resource, version: version)
        let gzip = OTLPSignal(rawValue: batch.stream).flatMap { configuration.signals[$0] }?.gzip ?? true
        return gzip ? try Gzip.compress(request) : request
    }

    public func deliver(_ batch: PreparedBatch) async -> DeliveryOutcome {
        guard let signal = OTLPSignal(rawValue: batch.batch.stream), let settings = configuration.signals[signal] else {
            return .rejected(status: "configuration", code: "signal \(batch.batch.stream) is not exported")
        }
        var headers = [("Content-Type", "application/x-protobuf"), ("User-Agent", "hyrelay-exporter/1")]
        if settings.gzip { headers.append(("Content-Encoding", "gzip")) }
        headers += settings.headers.map { ($0.name, $0.value) }
        do {
            let response = try await http.send(
                method: .POST, url: settings.endpoint, headers: headers, body: batch.gzipped)
            return classify(response, success: [200, 202], credential: nil)
        } catch {
            return .retry(status: "network", retryAfter: nil)
        }
    }
}
