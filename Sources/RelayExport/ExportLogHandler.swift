import Logging

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Sends log events to the exporter's intake. `span` lines are skipped: spans have their own table.
public struct ExportLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let intake: ExportIntake

    public init(label: String, intake: ExportIntake, level: Logger.Level) {
        self.label = label
        self.intake = intake
        logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let message = "\(event.message)"
        guard message != "span" else { return }
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        intake.submit(
            .log(LogEntry(time: Date(), level: event.level, label: label, message: message, metadata: merged)))
    }
}
