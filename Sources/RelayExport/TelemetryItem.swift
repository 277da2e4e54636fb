import Logging
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A log event as every sink takes it: secrets already redacted, trace ids lifted out of the metadata.
public struct LogEntry: Sendable, Equatable {
    /// Nanoseconds since the Unix epoch.
    public var time: UInt64
    public var level: Logger.Level
    /// The logger's label (`hyrelay.relay`, `hyrelay.edge`, …).
    public var label: String
    public var message: String
    public var attributes: [String: String]
    public var traceID: String?
    public var spanID: String?

    public init(time: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) {
        self.time = UInt64(max(0, time.timeIntervalSince1970) * 1e9)
        self.level = level
        self.label = label
        self.message = message
        var attributes: [String: String] = [:]
        for (key, value) in metadata { attributes[key] = JSONLogHandler.redacting(key, "\(value)") }
        traceID = attributes.removeValue(forKey: "trace_id")
        spanID = attributes.removeValue(forKey: "span_id")
        self.attributes = attributes
    }
}

/// The metric registry at one moment.
public struct MetricSnapshot: Sendable, Equatable {
    /// Nanoseconds since the Unix epoch.
    public var time: UInt64
    public var families: [MetricFamily]

    public init(time: UInt64, families: [MetricFamily]) {
        self.time = time
        self.families = families
    }
}

/// What the exporter carries: typed once, encoded by each sink its own way (Azure rows, OTLP protobuf, files).
public enum TelemetryItem: Sendable, Equatable {
    case span(FinishedSpan)
    case log(LogEntry)
    case metrics(MetricSnapshot)
    /// A row already in Azure's shape: what `hyrelay export replay` reads back from the file sink. Only sinks
    /// that write Azure rows take it.
    case row(ExportRecord)
}
