import AzureIdentity
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

/// Who produced the telemetry: the role and an instance name (host name by default).
public struct ExportSource: Sendable, Equatable {
    public var role: String
    public var instance: String

    public init(role: String, instance: String) {
        self.role = role
        self.instance = instance
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

    /// A log event; secrets are redacted as in the JSON log lines.
    public static func log(
        time: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata,
        source: ExportSource
    ) -> ExportRecord {
        var columns = common(source: source, time: JSONText.timestamp(time))
        columns["Level"] = .string(level.rawValue)
        columns["Logger"] = .string(label)
        columns["Message"] = .string(message)
        var attributes: [String: JSONValue] = [:]
        for (key, value) in metadata { attributes[key] = .string(JSONLogHandler.redacting(key, "\(value)")) }
        columns["TraceId"] = attributes.removeValue(forKey: "trace_id") ?? .string("")
        columns["SpanId"] = attributes.removeValue(forKey: "span_id") ?? .string("")
        columns["Attributes"] = .object(attributes)
        return ExportRecord(table: .logs, columns: columns)
    }

    /// One sample of the `/metrics` exposition.
    public static func metric(_ sample: MetricSample, time: Date, source: ExportSource) -> ExportRecord {
        var columns = common(source: source, time: JSONText.timestamp(time))
        columns["Name"] = .string(sample.name)
        columns["Labels"] = .object(sample.labels.mapValues { .string($0) })
        columns["Value"] = .double(sample.value)
        return ExportRecord(table: .metrics, columns: columns)
    }

    private static func common(source: ExportSource, time: String) -> [String: JSONValue] {
        ["TimeGenerated": .string(time), "Role": .string(source.role), "Instance": .string(source.instance)]
    }
}
