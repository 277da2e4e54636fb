import HybridConnections
import Logging

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// One JSON object per line on standard error: `time`, `level`, `role`, `message`, `label`, then the
/// metadata (which carries `trace_id` and `span_id` on hop logs). Values are strings; keys that look like
/// secrets are redacted, so a token can never reach a log by accident.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let role: String

    static let secretKeys: Set<String> = ["token", "sas", "key", "signature", "authorization", "password", "secret"]

    /// `value`, or `[redacted]` when `key` names a secret.
    public static func redacting(_ key: String, _ value: String) -> String {
        secretKeys.contains(key.lowercased()) ? "[redacted]" : value
    }

    public init(label: String, role: String) {
        self.label = label
        self.role = role
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        StandardErrorLine.write(
            Self.render(
                time: Date(), level: event.level, role: role, label: label, message: "\(event.message)",
                metadata: StandardErrorLine.metadata(metadata, provider: metadataProvider, event: event)))
    }

    static func render(
        time: Date, level: Logger.Level, role: String, label: String, message: String, metadata: Logger.Metadata
    ) -> String {
        var out = "{\"time\":\"\(JSONText.timestamp(time))\",\"level\":\"\(level.rawValue)\",\"role\":"
        JSONText.appendString(role, to: &out)
        out += ",\"label\":"
        JSONText.appendString(label, to: &out)
        out += ",\"message\":"
        JSONText.appendString(message, to: &out)
        for key in metadata.keys.sorted() where !["time", "level", "role", "label", "message"].contains(key) {
            out += ","
            JSONText.appendString(key, to: &out)
            out += ":"
            JSONText.appendString(redacting(key, "\(metadata[key]!)"), to: &out)
        }
        out += "}\n"
        return out
    }
}
