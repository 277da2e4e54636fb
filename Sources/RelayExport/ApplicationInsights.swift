import AzureIdentity
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

/// Turns export records into Application Insights envelopes the way Azure Monitor's OpenTelemetry exporters
/// do: a server or consumer span is a Request (the relay's rendezvous as much as the client's accept, so the
/// Application Map draws client → relay → edge), any other span a RemoteDependency, a log event a Message,
/// a metric sample a Metric. Items stay inside the service's limits instead of being cut by it.
public enum TelemetryEnvelope {
    static let sdkVersion = "hyrelay:1"
    /// The service's limits: longer property values are cut, larger items refused.
    static let maxPropertyCharacters = 8_192
    static let maxMessageCharacters = 32_768
    static let maxItemBytes = 64 * 1024

    public static func envelope(_ record: ExportRecord, instrumentationKey: String) -> JSONValue {
        var item = unboundedEnvelope(record, instrumentationKey: instrumentationKey)
        fit(&item)
        return item
    }

    /// Makes an item over `maxItemBytes` fit: a message first gives up what it holds beyond half the item,
    /// then properties go, largest first, then the message is cut further (always on a character boundary).
    /// What was removed or cut is named in the `hyrelay.truncated` property.
    static func fit(_ item: inout JSONValue) {
        let budget = maxItemBytes - 256  // room for the `hyrelay.truncated` note
        guard item.text.utf8.count > maxItemBytes, case .object(var envelope) = item,
            case .object(var data)? = envelope["data"], case .object(var base)? = data["baseData"]
        else { return }
        var properties = base["properties"]?.objectValue ?? [:]
        var removed: [String] = []
        func assembled() -> JSONValue {
            base["properties"] = .object(properties)
            data["baseData"] = .object(base)
            envelope["data"] = .object(data)
            return .object(envelope)
        }
        func excess() -> Int { assembled().text.utf8.count - budget }
        func cutMessage(toBytes limit: Int) {
            guard let message = base["message"]?.stringValue, message.utf8.count > limit else { return }
            var kept = max(0, limit)
            while kept > 0, String(message.utf8.prefix(kept)) == nil { kept -= 1 }
            base["message"] = .string(String(message.utf8.prefix(kept)) ?? "")
            if !removed.contains("message") { removed.append("message") }
        }
        cutMessage(toBytes: budget / 2)
        while excess() > 0,
            let largest = properties.max(by: { $0.value.propertyText.utf8.count < $1.value.propertyText.utf8.count })
        {
            properties[largest.key] = nil
            removed.append(largest.key)
        }
        while excess() > 0, let message = base["message"]?.stringValue, !message.isEmpty {
            cutMessage(toBytes: message.utf8.count - excess())
        }
        properties["hyrelay.truncated"] = .string(removed.joined(separator: ","))
        item = assembled()
    }

    /// Property values as strings, each within the service's length limit.
    static func properties(_ values: [String: JSONValue]?) -> [String: JSONValue] {
        (values ?? [:]).mapValues { .string(String($0.propertyText.prefix(maxPropertyCharacters))) }
    }

    static func unboundedEnvelope(_ record: ExportRecord, instrumentationKey: String) -> JSONValue {
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
            var properties = properties(columns["Attributes"]?.objectValue)
            if !text("StatusMessage").isEmpty {
                properties["status_message"] = .string(String(text("StatusMessage").prefix(maxPropertyCharacters)))
            }
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
            if !text("ParentSpanId").isEmpty { tags["ai.operation.parentId"] = .string(text("ParentSpanId")) }
            let kind = text("Kind")
            if kind == "server" || kind == "consumer" {
                name = "Microsoft.ApplicationInsights.Request"
                baseType = "RequestData"
                base["responseCode"] = code
                base["source"] = .string(text("Role"))
            } else {
                name = "Microsoft.ApplicationInsights.RemoteDependency"
                baseType = "RemoteDependencyData"
                base["resultCode"] = code
                // As Azure's exporters type an internal span: work inside the process, not a call out.
                base["type"] = .string(kind == "internal" ? "InProc" : "HybridRelay")
                base["target"] = .string(text("Target").isEmpty ? text("Entity") : text("Target"))
            }
        case .logs:
            if !text("TraceId").isEmpty { tags["ai.operation.id"] = .string(text("TraceId")) }
            if !text("SpanId").isEmpty { tags["ai.operation.parentId"] = .string(text("SpanId")) }
            name = "Microsoft.ApplicationInsights.Message"
            baseType = "MessageData"
            base["message"] = .string(String(text("Message").prefix(maxMessageCharacters)))
            base["severityLevel"] = .int(severity(text("Level")))
            var properties = properties(columns["Attributes"]?.objectValue)
            properties["logger"] = .string(text("Logger"))
            base["properties"] = .object(properties)
        case .metrics:
            name = "Microsoft.ApplicationInsights.Metric"
            baseType = "MetricData"
            base["metrics"] = .array([
                .object(["name": .string(text("Name")), "value": columns["Value"] ?? .double(0), "count": .int(1)])
            ])
            base["properties"] = .object(properties(columns["Labels"]?.objectValue))
        }
        return .object([
            "name": .string(name), "iKey": .string(instrumentationKey), "time": .string(text("TimeGenerated")),
            "tags": .object(tags), "data": .object(["baseType": .string(baseType), "baseData": .object(base)]),
        ])
    }

    /// `d.hh:mm:ss.fff`, the duration format of Request and RemoteDependency.
    public static func duration(milliseconds: Double) -> String {
        // Rows replayed from files may hold anything: NaN is 0 and the duration is bounded (about 31,700 years).
        let total = milliseconds.isNaN ? 0 : Int64(min(max(0, milliseconds), 1e15).rounded())
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
