import HybridConnections
import Logging
import RelayTelemetry

/// The three OTLP signals; each is one stream of the OTLP sink and one `/v1/…` path.
public enum OTLPSignal: String, Sendable, CaseIterable {
    case traces, logs, metrics
}

/// Encodes telemetry items as OTLP protobuf (opentelemetry-proto v1): one `Span`, `LogRecord` or `Metric` per
/// item, wrapped into an `Export…ServiceRequest` with the process's resource per batch. Pure.
public enum OTLPEncoding {
    static let scopeName = "hyrelay"

    /// `Resource`: `service.name`, `service.instance.id`, `service.version`, `host.name`, `hyrelay.role` and
    /// the attributes `OTEL_RESOURCE_ATTRIBUTES` added (which may override none of the first two it sets).
    public static func resource(_ source: ExportSource) -> [UInt8] {
        var writer = ProtobufWriter()
        var seen = Set<String>()
        var attributes: [(String, String)] = [
            ("service.name", source.serviceName), ("service.instance.id", source.instanceID),
            ("host.name", source.hostName), ("hyrelay.role", source.role),
        ]
        if !source.version.isEmpty { attributes.append(("service.version", source.version)) }
        attributes += source.attributes
        for (key, value) in attributes where seen.insert(key).inserted {
            writer.message(1) { keyValue(&$0, key, .string(value)) }
        }
        return writer.bytes
    }

    enum AttributeValue {
        case string(String)
        case int(Int64)
    }

    static func keyValue(_ writer: inout ProtobufWriter, _ key: String, _ value: AttributeValue) {
        writer.string(1, key)
        writer.message(2) { any in
            switch value {
            case .string(let text):
                // An empty string is still a string value: write the field explicitly.
                any.bytes(1, Array(text.utf8))
            case .int(let number):
                any.int64(3, number, always: true)
            }
        }
    }

    /// A hex id as bytes; nil when it is not hex of the expected length.
    static func idBytes(_ hex: String, count: Int) -> [UInt8]? {
        let characters = Array(hex.utf8)
        guard characters.count == count * 2 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        for index in stride(from: 0, to: characters.count, by: 2) {
            guard let high = PercentEncoding.hexValue(characters[index]),
                let low = PercentEncoding.hexValue(characters[index + 1])
            else { return nil }
            bytes.append(high << 4 | low)
        }
        return bytes
    }

    /// Our hop attributes plus their OpenTelemetry semantic-convention names: `peer` → `client.address` and
    /// `client.port`, `target` → `server.address` and `server.port`, `method` → `http.request.method`,
    /// byte counts and `http.response.status_code` as integers.
    static func spanAttributes(_ attributes: [String: String]) -> [(String, AttributeValue)] {
        var out: [(String, AttributeValue)] = []
        for key in attributes.keys.sorted() {
            let value = attributes[key]!
            if key.hasPrefix("bytes_") || key == "http.response.status_code", let number = Int64(value) {
                out.append((key, .int(number)))
            } else {
                out.append((key, .string(value)))
            }
        }
        func split(_ endpoint: String) -> (String, Int64)? {
            guard let colon = endpoint.lastIndex(of: ":"), let port = Int64(endpoint[endpoint.index(after: colon)...])
            else { return nil }
            var host = String(endpoint[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            return (host, port)
        }
        if let peer = attributes["peer"], attributes["client.address"] == nil, let (host, port) = split(peer) {
            out += [("client.address", .string(host)), ("client.port", .int(port))]
        }
        if let target = attributes["target"], attributes["server.address"] == nil, let (host, port) = split(target) {
            out += [("server.address", .string(host)), ("server.port", .int(port))]
        }
        if let method = attributes["method"], attributes["http.request.method"] == nil {
            out.append(("http.request.method", .string(method)))
        }
        return out
    }

    /// `Span`.
    public static func span(_ span: FinishedSpan) -> [UInt8] {
        var writer = ProtobufWriter()
        writer.bytes(1, idBytes(span.context.traceID, count: 16) ?? Array(repeating: 0, count: 16))
        writer.bytes(2, idBytes(span.context.spanID, count: 8) ?? Array(repeating: 0, count: 8))
        if let parent = span.parentSpanID, let bytes = idBytes(parent, count: 8) { writer.bytes(4, bytes) }
        writer.string(5, span.name)
        writer.uint64(6, spanKind(span.kind))
        writer.fixed64(7, span.start, always: true)
        writer.fixed64(8, span.end, always: true)
        for (key, value) in spanAttributes(span.attributes) { writer.message(9) { keyValue(&$0, key, value) } }
        writer.message(15) { status in
            status.string(2, span.statusMessage ?? "")
            status.uint64(3, span.isError ? 2 : 1)
        }
        writer.fixed32(16, span.context.sampled ? 1 : 0)
        return writer.bytes
    }

    /// `Span.SpanKind` from swift-distributed-tracing's kind names.
    static func spanKind(_ kind: String) -> UInt64 {
        switch kind {
        case "internal": return 1
        case "server": return 2
        case "client": return 3
        case "producer": return 4
        case "consumer": return 5
        default: return 0
        }
    }

    /// `LogRecord`.
    public static func log(_ entry: LogEntry) -> [UInt8] {
        var writer = ProtobufWriter()
        writer.fixed64(1, entry.time, always: true)
        writer.uint64(2, severity(entry.level))
        writer.string(3, severityText(entry.level))
        writer.message(5) { $0.bytes(1, Array(entry.message.utf8)) }
        for key in entry.attributes.keys.sorted() {
            writer.message(6) { keyValue(&$0, key, .string(entry.attributes[key]!)) }
        }
        writer.message(6) { keyValue(&$0, "logger.name", .string(entry.label)) }
        if let trace = entry.traceID.flatMap({ idBytes($0, count: 16) }) {
            writer.fixed32(8, 1)
            writer.bytes(9, trace)
        }
        if let span = entry.spanID.flatMap({ idBytes($0, count: 8) }) { writer.bytes(10, span) }
        writer.fixed64(11, entry.time, always: true)
        return writer.bytes
    }

    /// `SeverityNumber` (TRACE 1, DEBUG 5, INFO 9, INFO2 10 for notice, WARN 13, ERROR 17, FATAL 21).
    static func severity(_ level: Logger.Level) -> UInt64 {
        switch level {
        case .trace: return 1
        case .debug: return 5
        case .info: return 9
        case .notice: return 10
        case .warning: return 13
        case .error: return 17
        case .critical: return 21
        }
    }

    static func severityText(_ level: Logger.Level) -> String {
        switch level {
        case .trace: return "TRACE"
        case .debug: return "DEBUG"
        case .info: return "INFO"
        case .notice: return "INFO2"
        case .warning: return "WARN"
        case .error: return "ERROR"
        case .critical: return "FATAL"
        }
    }

    /// One `Metric` per family: counters as monotonic cumulative `Sum`s named without `_total` (Prometheus
    /// backends add it back), gauges as `Gauge`, histograms as cumulative explicit-bucket `Histogram`s with
    /// their exemplars.
    public static func metrics(_ snapshot: MetricSnapshot, startTime: UInt64) -> [[UInt8]] {
        snapshot.families.map { family in
            var writer = ProtobufWriter()
            var name = family.name
            if family.kind == .counter, name.hasSuffix("_total") { name.removeLast("_total".count) }
            writer.string(1, name)
            writer.string(2, family.help)
            writer.string(3, unit(name))
            switch family.kind {
            case .counter:
                writer.message(7) { sum in
                    for point in family.points {
                        sum.message(1) { numberPoint(&$0, point, start: startTime, time: snapshot.time) }
                    }
                    sum.uint64(2, 2)
                    sum.bool(3, true)
                }
            case .gauge:
                writer.message(5) { gauge in
                    for point in family.points {
                        gauge.message(1) { numberPoint(&$0, point, start: nil, time: snapshot.time) }
                    }
                }
            case .histogram:
                writer.message(9) { histogram in
                    for point in family.points {
                        guard case .histogram(let value) = point.value else { continue }
                        histogram.message(1) { dataPoint in
                            for (key, label) in point.labels {
                                dataPoint.message(9) { keyValue(&$0, key, .string(label)) }
                            }
                            dataPoint.fixed64(2, startTime, always: true)
                            dataPoint.fixed64(3, snapshot.time, always: true)
                            dataPoint.fixed64(4, value.count, always: true)
                            dataPoint.double(5, value.sum)
                            dataPoint.packedFixed64(6, value.counts)
                            dataPoint.packedDoubles(7, value.bounds)
                            for index in value.exemplars.keys.sorted() {
                                let exemplar = value.exemplars[index]!
                                dataPoint.message(8) { encoded in
                                    encoded.fixed64(2, UInt64(max(0, exemplar.timestamp) * 1e9), always: true)
                                    encoded.double(3, exemplar.value)
                                    if let trace = idBytes(exemplar.traceID, count: 16) { encoded.bytes(5, trace) }
                                }
                            }
                        }
                    }
                    histogram.uint64(2, 2)
                }
            }
            return writer.bytes
        }
    }

    private static func numberPoint(_ writer: inout ProtobufWriter, _ point: MetricPoint, start: UInt64?, time: UInt64)
    {
        for (key, label) in point.labels { writer.message(7) { keyValue(&$0, key, .string(label)) } }
        if let start { writer.fixed64(2, start, always: true) }
        writer.fixed64(3, time, always: true)
        switch point.value {
        case .counter(let integer, let fraction):
            if fraction == 0 { writer.sfixed64(6, integer) } else { writer.double(4, Double(integer) + fraction) }
        case .gauge(let value): writer.double(4, value)
        case .histogram: break
        }
    }

    /// UCUM units for the suffixes our names use.
    static func unit(_ name: String) -> String {
        if name.hasSuffix("_seconds") { return "s" }
        if name.hasSuffix("_bytes") { return "By" }
        return ""
    }

    /// `Export{Trace,Logs,Metrics}ServiceRequest` holding `items` under one resource and one scope.
    public static func request(items: [[UInt8]], resource: [UInt8], version: String) -> [UInt8] {
        var writer = ProtobufWriter()
        writer.message(1) { resourceGroup in
            resourceGroup.bytes(1, resource)
            resourceGroup.message(2) { scopeGroup in
                scopeGroup.message(1) { scope in
                    scope.string(1, scopeName)
                    scope.string(2, version)
                }
                for item in items { scopeGroup.bytes(2, item) }
            }
        }
        return writer.bytes
    }
}
