/// Why a connection string was refused.
public enum ConnectionStringError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformedPair(String)
    case missingEndpoint
    case badEndpoint(String)
    case incompleteKey
    case conflictingAuthentication

    public var description: String {
        switch self {
        case .malformedPair(let pair): return "Connection string part '\(pair)' is not Key=Value"
        case .missingEndpoint: return "Connection string has no Endpoint"
        case .badEndpoint(let value):
            return "Connection string Endpoint '\(value)' is not an sb://, ws:// or wss:// URI"
        case .incompleteKey: return "SharedAccessKeyName and SharedAccessKey must be given together"
        case .conflictingAuthentication: return "Authentication=Managed Identity cannot be combined with SAS values"
        }
    }
}

/// `Endpoint=sb://ns/;SharedAccessKeyName=…;SharedAccessKey=…[;EntityPath=…][;SharedAccessSignature=…]`
/// (reference §2.6). Keys compare case-insensitively; unknown keys are kept in `other`.
public struct RelayConnectionString: Equatable, Sendable {
    public var endpoint: String
    public var sharedAccessKeyName: String?
    public var sharedAccessKey: String?
    public var sharedAccessSignature: String?
    public var entityPath: String?
    public var authentication: String?
    public var other: [String: String]

    public init(parsing text: String) throws(ConnectionStringError) {
        var values: [String: String] = [:]
        var other: [String: String] = [:]
        let known = [
            "endpoint", "sharedaccesskeyname", "sharedaccesskey", "sharedaccesssignature", "entitypath",
            "authentication",
        ]
        for part in text.split(separator: ";") where !part.allSatisfy(\.isWhitespace) {
            guard let equals = part.firstIndex(of: "=") else { throw .malformedPair(String(part.prefix(40))) }
            let key = part[..<equals].trimmingWhitespace()
            let value = String(part[part.index(after: equals)...]).trimmingWhitespace()
            guard !key.isEmpty else { throw .malformedPair(String(part.prefix(40))) }
            if known.contains(key.lowercased()) {
                values[key.lowercased()] = value
            } else {
                other[key] = value
            }
        }
        guard let endpoint = values["endpoint"], !endpoint.isEmpty else { throw .missingEndpoint }
        let scheme = endpoint.prefix { $0 != ":" }.lowercased()
        guard ["sb", "ws", "wss", "http", "https"].contains(scheme), endpoint.contains("://") else {
            throw .badEndpoint(endpoint)
        }
        self.endpoint = endpoint
        sharedAccessKeyName = values["sharedaccesskeyname"]
        sharedAccessKey = values["sharedaccesskey"]
        sharedAccessSignature = values["sharedaccesssignature"]
        entityPath = values["entitypath"]
        authentication = values["authentication"]
        self.other = other
        guard (sharedAccessKeyName == nil) == (sharedAccessKey == nil) else { throw .incompleteKey }
        if authentication?.lowercased() == "managed identity",
            sharedAccessKeyName != nil || sharedAccessSignature != nil
        {
            throw .conflictingAuthentication
        }
    }
}

extension Substring {
    /// The text without leading and trailing white space (Unicode `White_Space`; FoundationEssentials has no
    /// trimming). On concrete types, by scalar: the generic `StringProtocol` form, reversing characters through
    /// unspecialized collection accessors, cost about 40 heap allocations a call on hot paths (traceparent).
    public func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }
}

extension String {
    /// The text without leading and trailing white space (Unicode `White_Space`).
    public func trimmingWhitespace() -> String { self[...].trimmingWhitespace() }
}
