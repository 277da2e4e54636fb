import HybridConnections

/// An Application Insights connection string, parsed more leniently than the SDKs (empty segments skipped,
/// values split at the first `=`) but to the same result.
public struct ApplicationInsightsConnectionString: Sendable, Equatable {
    public var instrumentationKey: String
    /// Base URL; the exporter posts to `{ingestionEndpoint}/v2.1/track`.
    public var ingestionEndpoint: String
    /// Entra audience, when the resource asks for Entra authentication.
    public var aadAudience: String?

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case missingInstrumentationKey
        case invalidInstrumentationKey(String)
        case unsupportedAuthorization(String)

        public var description: String {
            switch self {
            case .missingInstrumentationKey: return "connection string has no InstrumentationKey"
            case .invalidInstrumentationKey(let key): return "InstrumentationKey '\(key)' is not a GUID"
            case .unsupportedAuthorization(let value): return "Authorization=\(value) is not supported (only ikey)"
            }
        }
    }

    public init(_ text: String) throws(ParseError) {
        var fields: [String: String] = [:]
        for segment in text.split(separator: ";") {
            let trimmed = String(segment).trimmingWhitespace()
            guard let equals = trimmed.firstIndex(of: "=") else { continue }
            let key = trimmed[..<equals].lowercased().trimmingWhitespace()
            fields[key] = String(trimmed[trimmed.index(after: equals)...]).trimmingWhitespace()
        }
        guard let key = fields["instrumentationkey"], !key.isEmpty else { throw .missingInstrumentationKey }
        guard Self.isGUID(key) else { throw .invalidInstrumentationKey(key) }
        if let authorization = fields["authorization"], authorization.lowercased() != "ikey" {
            throw .unsupportedAuthorization(authorization)
        }
        instrumentationKey = key.lowercased()
        if let endpoint = fields["ingestionendpoint"], !endpoint.isEmpty {
            ingestionEndpoint = endpoint
        } else if let suffix = fields["endpointsuffix"], !suffix.isEmpty {
            let location = fields["location"].map { "\($0)." } ?? ""
            ingestionEndpoint = "https://\(location)dc.\(suffix)"
        } else {
            ingestionEndpoint = "https://dc.services.visualstudio.com"
        }
        while ingestionEndpoint.hasSuffix("/") { ingestionEndpoint.removeLast() }
        aadAudience = fields["aadaudience"]
    }

    static func isGUID(_ text: String) -> Bool {
        let groups = text.split(separator: "-", omittingEmptySubsequences: false)
        return groups.map(\.count) == [8, 4, 4, 4, 12] && groups.allSatisfy { $0.allSatisfy(\.isHexDigit) }
    }
}

/// Turns export records into Application Insights envelopes: a tunnel's root span is a Request, every other
/// hop a RemoteDependency, a log event a Message, a metric sample a Metric.
public enum TelemetryEnvelope {
    static let sdkVersion = "hyrelay:1"

    public static func envelope(_ record: ExportRecord, instrumentationKey: String) -> JSONValue {
        let columns = record.columns
        func text(_ name: String) -> String { columns[name]?.stringValue ?? "" }
        var tags: [String: JSONValue] = [
            "ai.cloud.role": .string(text("Role")), "ai.cloud.roleInstance": .string(text("Instance")),
            "ai.internal.nodeName": .string(text("Instance")), "ai.internal.sdkVersion": .string(sdkVersion),
        ]
        let name: String
        let baseType: String
        var base: [String: JSONValue] = ["ver": .int(2)]
        switch record.table {
        case .spans:
            tags["ai.operation.id"] = .string(text("TraceId"))
            tags["ai.operation.name"] = .string(text("Name"))
            var properties = (columns["Attributes"]?.objectValue ?? [:]).mapValues { JSONValue.string($0.propertyText) }
            if !text("StatusMessage").isEmpty { properties["status_message"] = .string(text("StatusMessage")) }
            base["id"] = .string(text("SpanId"))
            base["name"] = .string(text("Name"))
            base["duration"] = .string(duration(milliseconds: columns["DurationMs"]?.number ?? 0))
            base["success"] = columns["Success"] ?? .bool(true)
            base["properties"] = .object(properties)
            base["measurements"] = .object([
                "bytes_up": .double(columns["BytesUp"]?.number ?? 0),
                "bytes_down": .double(columns["BytesDown"]?.number ?? 0),
            ])
            let code = JSONValue.string(
                text("Outcome").isEmpty ? (text("Cause").isEmpty ? "0" : text("Cause")) : text("Outcome"))
            if text("ParentSpanId").isEmpty {
                name = "Microsoft.ApplicationInsights.Request"
                baseType = "RequestData"
                base["responseCode"] = code
                base["source"] = .string(text("Role"))
            } else {
                tags["ai.operation.parentId"] = .string(text("ParentSpanId"))
                name = "Microsoft.ApplicationInsights.RemoteDependency"
                baseType = "RemoteDependencyData"
                base["resultCode"] = code
                base["type"] = .string("HybridRelay")
                base["target"] = .string(text("Target").isEmpty ? text("Entity") : text("Target"))
            }
        case .logs:
            if !text("TraceId").isEmpty { tags["ai.operation.id"] = .string(text("TraceId")) }
            if !text("SpanId").isEmpty { tags["ai.operation.parentId"] = .string(text("SpanId")) }
            name = "Microsoft.ApplicationInsights.Message"
            baseType = "MessageData"
            base["message"] = .string(String(text("Message").prefix(32_768)))
            base["severityLevel"] = .int(severity(text("Level")))
            var properties = (columns["Attributes"]?.objectValue ?? [:]).mapValues { JSONValue.string($0.propertyText) }
            properties["logger"] = .string(text("Logger"))
            base["properties"] = .object(properties)
        case .metrics:
            name = "Microsoft.ApplicationInsights.Metric"
            baseType = "MetricData"
            base["metrics"] = .array([
                .object(["name": .string(text("Name")), "value": columns["Value"] ?? .double(0), "count": .int(1)])
            ])
            base["properties"] = .object(
                (columns["Labels"]?.objectValue ?? [:]).mapValues { JSONValue.string($0.propertyText) })
        }
        return .object([
            "name": .string(name), "iKey": .string(instrumentationKey), "time": .string(text("TimeGenerated")),
            "tags": .object(tags), "data": .object(["baseType": .string(baseType), "baseData": .object(base)]),
        ])
    }

    /// `d.hh:mm:ss.fff`, the duration format of Request and RemoteDependency.
    public static func duration(milliseconds: Double) -> String {
        let total = Int64(max(0, milliseconds).rounded())
        let days = total / 86_400_000
        let hours = total / 3_600_000 % 24
        let minutes = total / 60_000 % 60
        let seconds = total / 1000 % 60
        let millis = total % 1000
        func pad(_ value: Int64, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(days).\(pad(hours, 2)):\(pad(minutes, 2)):\(pad(seconds, 2)).\(pad(millis, 3))"
    }

    /// swift-log level → Application Insights severity (0 Verbose … 4 Critical).
    static func severity(_ level: String) -> Int64 {
        switch level {
        case "trace", "debug": return 0
        case "info", "notice": return 1
        case "warning": return 2
        case "error": return 3
        default: return 4
        }
    }
}
