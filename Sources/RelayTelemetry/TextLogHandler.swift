import HybridConnections
import Logging

#if canImport(Glibc)
    import Glibc
#endif

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Human-readable lines on standard error, laid out like swift-log's `StreamLogHandler`
/// (`time level label: key=value … message`), with two differences that matter for a server facing the
/// internet: control characters in the message and metadata are escaped, so a peer cannot forge a line
/// (a `%0A` in a path or key name), values with spaces, `=` or quotes are quoted, so none can pass for another
/// field, and keys that name secrets are redacted as in JSON logs.
public struct TextLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String

    public init(label: String) {
        self.label = label
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        StandardErrorLine.write(
            Self.render(
                time: Date(), level: event.level, label: label, message: "\(event.message)",
                metadata: StandardErrorLine.metadata(metadata, provider: metadataProvider, event: event)))
    }

    static func render(
        time: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata
    )
        -> String
    {
        var out = "\(JSONText.timestamp(time)) \(level) \(label):"
        for key in metadata.keys.sorted() {
            let value = JSONLogHandler.redacting(key, "\(metadata[key]!)")
            out += " \(LogText.fieldValue(key))=\(LogText.fieldValue(value))"
        }
        out += " \(LogText.escapingControlCharacters(message))\n"
        return out
    }
}

/// What the two log handlers share: the metadata of one event, and one line on standard error.
enum StandardErrorLine {
    /// The handler's metadata, then the provider's, then the event's own; later ones win.
    static func metadata(
        _ base: Logger.Metadata, provider: Logger.MetadataProvider?, event: LogEvent
    )
        -> Logger.Metadata
    {
        var merged = base
        if let provided = provider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        return merged
    }

    /// One write(2) per line keeps lines from different threads whole.
    static func write(_ line: String) {
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
