import AzureIdentity
import HybridConnections
import Logging
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The three tables the exporter fills. Each is one Logs Ingestion stream (`Custom-…`) feeding one custom
/// table (`…_CL`); deploy/ declares exactly these columns.
public enum ExportTable: String, Sendable, CaseIterable, Codable {
    case spans, logs, metrics

    public var defaultStream: String {
        switch self {
        case .spans: return "Custom-HyRelaySpans"
        case .logs: return "Custom-HyRelayLogs"
        case .metrics: return "Custom-HyRelayMetrics"
        }
    }

    public var tableName: String {
        switch self {
        case .spans: return "HyRelaySpans_CL"
        case .logs: return "HyRelayLogs_CL"
        case .metrics: return "HyRelayMetrics_CL"
        }
    }

    /// Column name → Logs Ingestion type, as declared in the DCR's stream.
    public var columns: [(name: String, type: String)] {
        let common: [(String, String)] = [("TimeGenerated", "datetime"), ("Role", "string"), ("Instance", "string")]
        switch self {
        case .spans:
            return common + [
                ("TraceId", "string"), ("SpanId", "string"), ("ParentSpanId", "string"), ("Name", "string"),
                ("Kind", "string"), ("DurationMs", "real"), ("Success", "boolean"), ("StatusMessage", "string"),
                ("Entity", "string"), ("Target", "string"), ("Outcome", "string"), ("Cause", "string"),
                ("BytesUp", "long"), ("BytesDown", "long"), ("Attributes", "dynamic"),
            ]
        case .logs:
            return common + [
                ("Level", "string"), ("Logger", "string"), ("Message", "string"), ("TraceId", "string"),
                ("SpanId", "string"), ("Attributes", "dynamic"),
            ]
        case .metrics:
            return common + [("Name", "string"), ("Labels", "dynamic"), ("Value", "real")]
        }
    }
}

/// Who produced the telemetry. Azure rows carry the role and instance; OTLP sends all of it as the resource.
public struct ExportSource: Sendable, Equatable {
    public var role: String
    /// The instance name in Azure rows (host name unless `--instance` says otherwise).
    public var instance: String
    /// OTLP `service.name`: `hyrelay-ROLE` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` set it.
    public var serviceName: String
    /// OTLP `service.instance.id`: unique per process start.
    public var instanceID: String
    public var version: String
    public var hostName: String
    /// Further resource attributes (`OTEL_RESOURCE_ATTRIBUTES`), in the order given.
    public var attributes: [(String, String)]
    /// Nanoseconds since the Unix epoch when the process started: the start of every cumulative metric.
    public var startTime: UInt64

    public init(
        role: String, instance: String, serviceName: String? = nil, instanceID: String = UUID().uuidString.lowercased(),
        version: String = "", hostName: String? = nil, attributes: [(String, String)] = [],
        startTime: UInt64 = UInt64(Date().timeIntervalSince1970 * 1e9)
    ) {
        self.role = role
        self.instance = instance
        self.serviceName = serviceName ?? "hyrelay-\(role)"
        self.instanceID = instanceID
        self.version = version
        self.hostName = hostName ?? instance
        self.attributes = attributes
        self.startTime = startTime
    }

    public static func == (lhs: ExportSource, rhs: ExportSource) -> Bool {
        lhs.role == rhs.role && lhs.instance == rhs.instance && lhs.serviceName == rhs.serviceName
            && lhs.instanceID == rhs.instanceID && lhs.version == rhs.version && lhs.hostName == rhs.hostName
            && lhs.attributes.elementsEqual(rhs.attributes) { $0 == $1 } && lhs.startTime == rhs.startTime
    }
}

/// One row for one table, columns by name. Spans, log events and metric samples become records the same
/// way whichever sink ships them.
public struct ExportRecord: Sendable, Equatable {
    public var table: ExportTable
    public var columns: [String: JSONValue]

    public init(table: ExportTable, columns: [String: JSONValue]) {
        self.table = table
        self.columns = columns
    }

    public var row: String { JSONValue.object(columns).text }

    public subscript(column: String) -> JSONValue? { columns[column] }

    /// A finished span; the attributes queries group by get their own columns, all of them stay in `Attributes`.
    public static func span(_ span: FinishedSpan, source: ExportSource) -> ExportRecord {
        var columns = common(
            source: source, time: JSONText.timestamp(millisecondsSinceEpoch: Int64(span.start / 1_000_000)))
        columns["TraceId"] = .string(span.context.traceID)
        columns["SpanId"] = .string(span.context.spanID)
        columns["ParentSpanId"] = .string(span.parentSpanID ?? "")
        columns["Name"] = .string(span.name)
        columns["Kind"] = .string(span.kind)
        columns["DurationMs"] = .double((span.durationSeconds * 1_000_000).rounded() / 1000)
        columns["Success"] = .bool(!span.isError)
        columns["StatusMessage"] = .string(span.statusMessage ?? "")
        let attributes = span.attributes
        columns["Entity"] = .string(attributes["entity"] ?? attributes["tunnel"] ?? "")
        columns["Target"] = .string(attributes["target"] ?? "")
        columns["Outcome"] = .string(attributes["outcome"] ?? "")
        columns["Cause"] = .string(attributes["close_cause"] ?? attributes["reason"] ?? attributes["error"] ?? "")
        columns["BytesUp"] = .int(attributes["bytes_up"].flatMap { Int64($0) } ?? 0)
        columns["BytesDown"] = .int(attributes["bytes_down"].flatMap { Int64($0) } ?? 0)
        columns["Attributes"] = .object(attributes.mapValues { .string($0) })
        return ExportRecord(table: .spans, columns: columns)
    }

    /// A log event (secrets were redacted when the entry was made).
    public static func log(_ entry: LogEntry, source: ExportSource) -> ExportRecord {
        var columns = common(
            source: source, time: JSONText.timestamp(millisecondsSinceEpoch: Int64(entry.time / 1_000_000)))
        columns["Level"] = .string(entry.level.rawValue)
        columns["Logger"] = .string(entry.label)
        columns["Message"] = .string(entry.message)
        columns["TraceId"] = .string(entry.traceID ?? "")
        columns["SpanId"] = .string(entry.spanID ?? "")
        columns["Attributes"] = .object(entry.attributes.mapValues { .string($0) })
        return ExportRecord(table: .logs, columns: columns)
    }

    /// One row per sample of the snapshot, as the Prometheus text names them (histograms as `_bucket` rows
    /// with `le`, cumulative, then `_sum` and `_count`), so queries written against `/metrics` read the same.
    public static func metrics(_ snapshot: MetricSnapshot, source: ExportSource) -> [ExportRecord] {
        let time = JSONText.timestamp(millisecondsSinceEpoch: Int64(snapshot.time / 1_000_000))
        var records: [ExportRecord] = []
        for family in snapshot.families {
            for sample in family.samples {
                var columns = common(source: source, time: time)
                columns["Name"] = .string(sample.name)
                var labels: [String: JSONValue] = [:]
                for (key, value) in sample.labels { labels[key] = .string(value) }
                columns["Labels"] = .object(labels)
                columns["Value"] = .double(sample.value)
                records.append(ExportRecord(table: .metrics, columns: columns))
            }
        }
        return records
    }

    /// The rows an item becomes in the Azure tables.
    public static func records(for item: TelemetryItem, source: ExportSource) -> [ExportRecord] {
        switch item {
        case .span(let span): return [.span(span, source: source)]
        case .log(let entry): return [.log(entry, source: source)]
        case .metrics(let snapshot): return metrics(snapshot, source: source)
        case .row(let record): return [record]
        }
    }

    private static func common(source: ExportSource, time: String) -> [String: JSONValue] {
        ["TimeGenerated": .string(time), "Role": .string(source.role), "Instance": .string(source.instance)]
    }
}
