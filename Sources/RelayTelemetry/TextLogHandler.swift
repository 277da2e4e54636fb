import HybridConnections
import Logging

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Human-readable lines on standard error, laid out like swift-log's `StreamLogHandler`
/// (`time level label: key=value … message`), with two differences that matter for a server facing the
/// internet: control characters in the message and metadata are escaped, so a peer cannot forge a line
/// (a `%0A` in a path or key name), and keys that name secrets are redacted as in JSON logs.
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
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        var bytes = Array(
            Self.render(time: Date(), level: event.level, label: label, message: "\(event.message)", metadata: merged)
                .utf8)
        // One write(2) per line keeps lines from different threads whole.
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }

    static func render(
        time: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata
    )
        -> String
    {
        var out = "\(JSONText.timestamp(time)) \(level) \(label):"
        for key in metadata.keys.sorted() {
            let value = JSONLogHandler.redacting(key, "\(metadata[key]!)")
            out += " \(LogText.escapingControlCharacters(key))=\(LogText.escapingControlCharacters(value))"
        }
        out += " \(LogText.escapingControlCharacters(message))\n"
        return out
    }
}
