/// Why a request target or one of its Hybrid Connections parameters was refused. Each case maps to a
/// 400 reply whose text is `description`.
public enum RequestTargetError: Error, Equatable, Sendable, CustomStringConvertible {
    case notOriginForm
    case badEscape(String)
    case unknownAction(String)
    case badStatusCode(String)

    public var description: String {
        switch self {
        case .notOriginForm: return "The request target must be an absolute path starting with '/'"
        case .badEscape(let part): return "The request target has an invalid percent-escape in '\(part)'"
        case .unknownAction(let action): return "The sb-hc-action '\(action)' is not supported"
        case .badStatusCode(let value): return "The statusCode '\(value)' is not an HTTP status between 100 and 599"
        }
    }
}

/// One `name[=value]` pair of a query, kept exactly as sent so it can be forwarded byte for byte.
public struct QueryItem: Equatable, Sendable {
    public var rawName: String
    /// nil when the item had no `=`.
    public var rawValue: String?

    public init(rawName: String, rawValue: String?) {
        self.rawName = rawName
        self.rawValue = rawValue
    }

    /// The reserved `sb-hc-` parameters carry a value; a bare `sb-hc-x` with no `=` belongs to the
    /// application (Azure keeps it).
    public var isReserved: Bool {
        rawValue != nil && rawName.lowercased().hasPrefix("sb-hc-")
    }

    var rendered: String { rawValue.map { "\(rawName)=\($0)" } ?? rawName }
}

/// An origin-form request target (`/path?query`) split into its raw path and query items.
public struct RequestTarget: Equatable, Sendable {
    /// The path as sent, still percent-encoded.
    public var rawPath: String
    public var query: [QueryItem]

    public init(parsing target: String) throws(RequestTargetError) {
        guard target.hasPrefix("/") else { throw .notOriginForm }
        let withoutFragment = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
        let parts = withoutFragment.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        rawPath = String(parts[0])
        query = []
        if parts.count == 2 {
            for item in parts[1].split(separator: "&") {
                let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query.append(QueryItem(rawName: String(pair[0]), rawValue: pair.count == 2 ? String(pair[1]) : nil))
            }
        }
    }

    /// The path with escapes decoded.
    public func decodedPath() throws(RequestTargetError) -> String {
        guard let path = PercentEncoding.decode(rawPath, plusAsSpace: false) else { throw .badEscape(rawPath) }
        return path
    }

    /// The form-decoded value of the first item named `name` (case-insensitive), or nil.
    public func value(of name: String) throws(RequestTargetError) -> String? {
        let lowered = name.lowercased()
        guard let item = query.first(where: { $0.rawName.lowercased() == lowered }) else { return nil }
        guard let raw = item.rawValue else { return "" }
        guard let value = PercentEncoding.decode(raw, plusAsSpace: true) else { throw .badEscape(raw) }
        return value
    }

    /// The query without the reserved `sb-hc-` items, as sent; empty when nothing is left.
    public var applicationQuery: String {
        query.filter { !$0.isReserved }.map(\.rendered).joined(separator: "&")
    }

    /// The target with the reserved `sb-hc-` items removed: what a listener sees in HTTP mode.
    public var applicationTarget: String {
        let query = applicationQuery
        return query.isEmpty ? rawPath : "\(rawPath)?\(query)"
    }
}

/// The `sb-hc-action` of a `/$hc/` WebSocket request; absent means `connect`.
public enum HybridConnectionAction: String, Sendable, CaseIterable {
    case listen, connect, accept, request
}

/// A WebSocket request on `/$hc/{path}` with its Hybrid Connections parameters.
public struct HybridConnectionRequest: Equatable, Sendable {
    public static let pathPrefix = "/$hc/"

    /// The decoded path after `/$hc/`: the entity name plus any application suffix.
    public var path: String
    public var action: HybridConnectionAction
    public var id: String?
    public var token: String?
    /// Reject parameters, with or without the `sb-hc-` prefix (the Node SDKs omit it).
    public var statusCode: Int?
    public var statusDescription: String?
    public var target: RequestTarget

    /// Returns nil when the path is not under `/$hc/`.
    public init?(target: RequestTarget) throws(RequestTargetError) {
        guard target.rawPath.lowercased().hasPrefix(Self.pathPrefix) else { return nil }
        self.target = target
        let decoded = try target.decodedPath()
        path = String(decoded.dropFirst(Self.pathPrefix.count))
        let actionText = try target.value(of: "sb-hc-action")
        if let actionText, !actionText.isEmpty {
            guard let action = HybridConnectionAction(rawValue: actionText.lowercased()) else {
                throw .unknownAction(actionText)
            }
            self.action = action
        } else {
            action = .connect
        }
        id = try target.value(of: "sb-hc-id").flatMap { $0.isEmpty ? nil : $0 }
        token = try target.value(of: "sb-hc-token").flatMap { $0.isEmpty ? nil : $0 }
        let prefixedCode = try target.value(of: "sb-hc-statusCode")
        let plainCode = try target.value(of: "statusCode")
        let codeText = prefixedCode ?? plainCode
        if let codeText {
            guard let code = Int(codeText), (100...599).contains(code) else { throw .badStatusCode(codeText) }
            statusCode = code
        }
        let prefixedDescription = try target.value(of: "sb-hc-statusDescription")
        let plainDescription = try target.value(of: "statusDescription")
        statusDescription = prefixedDescription ?? plainDescription
    }
}

/// Finds the configured entity for a path: the longest configured name that is a whole-segment
/// prefix of the path (entity names may contain `/`), compared case-insensitively as Azure does.
///
/// The path comes from an unauthenticated request, so the work is linear in its length: only prefixes
/// with as many segments as some configured name are tried, never one per segment of the path.
public struct EntityResolver: Sendable {
    private var namesByKey: [String: String]
    /// Segment counts of the configured names, longest first.
    private var segmentCounts: [Int]

    public init(entityNames: some Sequence<String>) {
        namesByKey = [:]
        var counts = Set<Int>()
        for name in entityNames {
            let segments = Self.segments(name)
            namesByKey[segments.joined(separator: "/").lowercased()] = name
            counts.insert(segments.count)
        }
        segmentCounts = counts.sorted(by: >)
    }

    private static func segments(_ path: some StringProtocol) -> [Substring] {
        Substring(path).split(separator: "/", omittingEmptySubsequences: true)
    }

    /// Returns the configured entity name and the rest of the path (without a leading `/`).
    public func resolve(_ path: String) -> (entity: String, suffix: String)? {
        guard let longest = segmentCounts.first else { return nil }
        // Only the first `longest` segments can belong to a name; the rest is suffix, split lazily.
        var heads: [Substring] = []
        var rest = Substring(path)
        while heads.count < longest {
            rest = rest.drop { $0 == "/" }
            guard !rest.isEmpty else { break }
            let segment = rest.prefix { $0 != "/" }
            heads.append(segment)
            rest = rest[segment.endIndex...]
        }
        for count in segmentCounts where count <= heads.count {
            guard let name = namesByKey[heads[0..<count].joined(separator: "/").lowercased()] else { continue }
            return (name, (Array(heads[count...]) + Self.segments(rest)).joined(separator: "/"))
        }
        return nil
    }
}
