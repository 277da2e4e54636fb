import HybridConnections
import NIOHTTP1
import RelayTelemetry
import Yams

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// One hybrid connection (entity) the relay serves.
public struct HybridConnectionConfiguration: Codable, Equatable, Sendable {
    /// The entity path; may contain `/`.
    public var name: String
    /// When false, senders need no token (azbridge `NoAuthentication`); listeners always do.
    public var requiresClientAuthorization: Bool
    public var rules: [AuthorizationRule]

    public init(name: String, requiresClientAuthorization: Bool = true, rules: [AuthorizationRule] = []) {
        self.name = name
        self.requiresClientAuthorization = requiresClientAuthorization
        self.rules = rules
    }

    private enum CodingKeys: String, CodingKey { case name, requiresClientAuthorization, rules }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        requiresClientAuthorization =
            try container.decodeIfPresent(Bool.self, forKey: .requiresClientAuthorization) ?? true
        rules = try container.decodeIfPresent([AuthorizationRule].self, forKey: .rules) ?? []
    }
}

/// Timeouts and size limits; every value has the default documented in docs/relay.md.
public struct RelayLimits: Codable, Equatable, Sendable {
    /// How long a sender's upgrade is held for a listener to accept or reject.
    public var acceptTimeoutSeconds: Double = 30
    /// How long an HTTP-mode sender waits for the listener's response (Azure: 60 s, then 504).
    public var httpResponseTimeoutSeconds: Double = 60
    /// Time allowed from TCP accept until the request is classified: head complete and, for WebSocket
    /// requests, answered (slowloris guard).
    public var handshakeTimeoutSeconds: Double = 10
    /// Longest pause in an HTTP-mode request body (from its head on) while no response has started; then 408.
    public var httpBodyTimeoutSeconds: Double = 60
    /// How long a kept-alive HTTP-mode connection may sit idle before its next request head.
    public var idleTimeoutSeconds: Double = 60
    /// WebSocket ping interval on listener control channels.
    public var pingIntervalSeconds: Double = 30
    /// Unanswered pings after which a control channel is evicted.
    public var missedPongLimit: Int = 2
    /// How long past its `se` a control channel's token stays good (Azure allows about 5 minutes).
    public var tokenGraceSeconds: Double = 300
    /// Tolerated clock difference when checking a token's expiry at handshake time.
    public var clockSkewSeconds: Double = 300
    /// Closes each listener control channel with 1011 after this long, as Azure Relay recycles them (about
    /// daily), so listeners' reconnects are exercised before production does it; 0: never.
    public var listenerRecycleSeconds: Double = 0
    public var maxListenersPerEntity: Int = 25
    /// Total bytes of the request target plus header names and values; above it, 431.
    public var maxHeaderBytes: Int = 32 * 1024
    /// Longest request target (path and query) accepted; above it, 414 (Azure: about 16 KB).
    public var maxRequestTargetBytes: Int = 16 * 1024
    /// Largest WebSocket frame the relay reads whole: on listener control channels and HTTP-mode rendezvous,
    /// where frames carry messages; above it the peer gets Close 1009. Tunnel frames are streamed at any
    /// size, and so are HTTP bodies on a rendezvous.
    public var maxFrameBytes: Int = 64 * 1024 * 1024
    /// HTTP-mode request bodies the relay holds at once, across all connections (a small body collected for the
    /// control channel, a large one's first 64 KiB while its rendezvous opens); above it, 503.
    public var maxBufferedHTTPBytes: Int = 256 * 1024 * 1024
    /// Requests (headers plus body) up to this size go on the control channel, larger ones through a
    /// rendezvous (Azure: 64 kB).
    public var controlChannelRequestBytes: Int = 64 * 1024
    /// Open connections one source address may hold; more are answered 503 and closed.
    public var maxConnectionsPerSource: Int = 10_000
    /// Open connections in all; more are answered 503 and closed. 0: the open-file limit less a reserve,
    /// so the relay refuses politely before `accept(2)` runs out of descriptors.
    public var maxConnections: Int = 0
    /// Failed authentications a source may make in a burst before its further failures get 429.
    public var authFailureBurst: Double = 30
    /// How fast that budget comes back, per second.
    public var authFailuresPerSecond: Double = 1

    enum CodingKeys: String, CodingKey, CaseIterable {
        case acceptTimeoutSeconds, httpResponseTimeoutSeconds, handshakeTimeoutSeconds, httpBodyTimeoutSeconds,
            idleTimeoutSeconds, pingIntervalSeconds, missedPongLimit, tokenGraceSeconds, clockSkewSeconds,
            listenerRecycleSeconds, maxListenersPerEntity, maxHeaderBytes, maxRequestTargetBytes, maxFrameBytes,
            maxBufferedHTTPBytes, controlChannelRequestBytes, maxConnectionsPerSource, maxConnections, authFailureBurst,
            authFailuresPerSecond
    }

    public init() {}

    /// `maxConnections`, or with 0 what `openFiles` descriptors allow: 64 are kept for everything else the
    /// process opens (event loops, logs, exporter files), at least half on small limits.
    public func connectionLimit(openFiles: Int) -> Int {
        maxConnections > 0 ? maxConnections : max(openFiles - 64, openFiles / 2, 1)
    }

    /// The HTTP parser's own bounds, just above the relay's: the relay answers 414 and 431 itself, and the
    /// parser stops a head that would run past both without buffering more.
    var decoderLimits: NIOHTTPDecoderLimitConfiguration {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = maxHeaderBytes + maxRequestTargetBytes
        limits.maxHeaderFieldSize = maxHeaderBytes + maxRequestTargetBytes
        return limits
    }

    /// Durations must be finite, positive and at most a day (a `clockSkewSeconds` of 0 is allowed), sizes
    /// positive: the relay converts them to integers and deadlines, where anything else would trap.
    func problems() -> [String] {
        var problems: [String] = []
        if maxListenersPerEntity < 1 { problems.append("limits.maxListenersPerEntity must be at least 1") }
        if maxFrameBytes < 1024 { problems.append("limits.maxFrameBytes must be at least 1024") }
        if missedPongLimit < 1 { problems.append("limits.missedPongLimit must be at least 1") }
        let durations: [(String, Double)] = [
            ("acceptTimeoutSeconds", acceptTimeoutSeconds), ("httpResponseTimeoutSeconds", httpResponseTimeoutSeconds),
            ("handshakeTimeoutSeconds", handshakeTimeoutSeconds), ("httpBodyTimeoutSeconds", httpBodyTimeoutSeconds),
            ("idleTimeoutSeconds", idleTimeoutSeconds), ("pingIntervalSeconds", pingIntervalSeconds),
            ("tokenGraceSeconds", tokenGraceSeconds), ("authFailuresPerSecond", authFailuresPerSecond),
        ]
        for (name, value) in durations where !(value > 0 && value <= 86_400) {
            problems.append("limits.\(name) must be above 0 and at most 86400")
        }
        if !(clockSkewSeconds >= 0 && clockSkewSeconds <= 86_400) {
            problems.append("limits.clockSkewSeconds must be between 0 and 86400")
        }
        if !(listenerRecycleSeconds == 0 || (listenerRecycleSeconds >= 1 && listenerRecycleSeconds <= 2_592_000)) {
            problems.append("limits.listenerRecycleSeconds must be 0 (never) or 1 to 2592000")
        }
        if !(authFailureBurst >= 1 && authFailureBurst <= 1_000_000) {
            problems.append("limits.authFailureBurst must be between 1 and 1000000")
        }
        let sizes: [(String, Int)] = [
            ("maxHeaderBytes", maxHeaderBytes), ("maxRequestTargetBytes", maxRequestTargetBytes),
            ("maxBufferedHTTPBytes", maxBufferedHTTPBytes),
            ("controlChannelRequestBytes", controlChannelRequestBytes),
            ("maxConnectionsPerSource", maxConnectionsPerSource),
        ]
        for (name, value) in sizes where value < 1 { problems.append("limits.\(name) must be at least 1") }
        if maxConnections < 0 { problems.append("limits.maxConnections must be 0 (from the open-file limit) or more") }
        if maxFrameBytes > Int(UInt32.max) { problems.append("limits.maxFrameBytes must be at most 4294967295") }
        return problems
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        var limits = RelayLimits()
        func read<T: Decodable>(_ key: CodingKeys, _ path: WritableKeyPath<RelayLimits, T>) throws {
            if let value = try container.decodeIfPresent(T.self, forKey: key) { limits[keyPath: path] = value }
        }
        try read(.acceptTimeoutSeconds, \.acceptTimeoutSeconds)
        try read(.httpResponseTimeoutSeconds, \.httpResponseTimeoutSeconds)
        try read(.handshakeTimeoutSeconds, \.handshakeTimeoutSeconds)
        try read(.httpBodyTimeoutSeconds, \.httpBodyTimeoutSeconds)
        try read(.idleTimeoutSeconds, \.idleTimeoutSeconds)
        try read(.pingIntervalSeconds, \.pingIntervalSeconds)
        try read(.missedPongLimit, \.missedPongLimit)
        try read(.tokenGraceSeconds, \.tokenGraceSeconds)
        try read(.clockSkewSeconds, \.clockSkewSeconds)
        try read(.listenerRecycleSeconds, \.listenerRecycleSeconds)
        try read(.maxListenersPerEntity, \.maxListenersPerEntity)
        try read(.maxHeaderBytes, \.maxHeaderBytes)
        try read(.maxRequestTargetBytes, \.maxRequestTargetBytes)
        try read(.maxFrameBytes, \.maxFrameBytes)
        try read(.maxBufferedHTTPBytes, \.maxBufferedHTTPBytes)
        try read(.controlChannelRequestBytes, \.controlChannelRequestBytes)
        try read(.maxConnectionsPerSource, \.maxConnectionsPerSource)
        try read(.maxConnections, \.maxConnections)
        try read(.authFailureBurst, \.authFailureBurst)
        try read(.authFailuresPerSecond, \.authFailuresPerSecond)
        self = limits
    }
}

/// TLS material for `wss`.
public struct TLSFiles: Codable, Equatable, Sendable {
    public var certificate: String
    public var key: String

    public init(certificate: String, key: String) {
        self.certificate = certificate
        self.key = key
    }
}

/// Everything `hyrelay relay` needs; read from YAML or JSON and completed by flags.
public struct RelayConfiguration: Codable, Equatable, Sendable {
    /// `HOST:PORT` to bind.
    public var listen: String
    /// Base URL put into `accept.address` / `request.address` (`ws://host:port` or `wss://host`).
    public var publicURL: String?
    public var tls: TLSFiles?
    /// Rules valid on every entity.
    public var namespaceRules: [AuthorizationRule]
    public var hybridConnections: [HybridConnectionConfiguration]
    public var limits: RelayLimits
    /// Entra ID access tokens accepted besides SAS, and the principals' rights.
    public var entra: EntraConfiguration?

    public init(
        listen: String = "127.0.0.1:9350", publicURL: String? = nil, tls: TLSFiles? = nil,
        namespaceRules: [AuthorizationRule] = [], hybridConnections: [HybridConnectionConfiguration] = [],
        limits: RelayLimits = RelayLimits(), entra: EntraConfiguration? = nil
    ) {
        self.listen = listen
        self.publicURL = publicURL
        self.tls = tls
        self.namespaceRules = namespaceRules
        self.hybridConnections = hybridConnections
        self.limits = limits
        self.entra = entra
    }

    private enum CodingKeys: String, CodingKey {
        case listen, publicURL, tls, namespaceRules, hybridConnections, limits, entra
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        listen = try container.decodeIfPresent(String.self, forKey: .listen) ?? "127.0.0.1:9350"
        publicURL = try container.decodeIfPresent(String.self, forKey: .publicURL)
        tls = try container.decodeIfPresent(TLSFiles.self, forKey: .tls)
        namespaceRules = try container.decodeIfPresent([AuthorizationRule].self, forKey: .namespaceRules) ?? []
        hybridConnections =
            try container.decodeIfPresent([HybridConnectionConfiguration].self, forKey: .hybridConnections) ?? []
        limits = try container.decodeIfPresent(RelayLimits.self, forKey: .limits) ?? RelayLimits()
        entra = try container.decodeIfPresent(EntraConfiguration.self, forKey: .entra)
    }

    /// Parses a YAML or JSON document (JSON is YAML). Keys are strict: an unknown one (a typo such as
    /// `tsl:` for `tls:`) is an error naming its line and the closest known key, never silently ignored.
    public static func parse(_ text: String) throws(ConfigurationError) -> RelayConfiguration {
        var root: Yams.Node?
        do {
            root = try Yams.compose(yaml: text)
            if let root { try ConfigurationSchema.relay.check(root, at: "the configuration") }
            return try YAMLDecoder().decode(RelayConfiguration.self, from: text)
        } catch let error as ConfigurationError {
            throw error
        } catch let error as DecodingError {
            let line = Self.line(of: error, in: root).map { "line \($0): " } ?? ""
            throw ConfigurationError(description: line + Self.describe(error))
        } catch {
            throw ConfigurationError(description: ErrorWords.rewritten("\(error)"))
        }
    }

    /// The line of the value a decoding error is about, found by walking its coding path in the YAML.
    static func line(of error: DecodingError, in root: Yams.Node?) -> Int? {
        let context: DecodingError.Context
        switch error {
        case .keyNotFound(_, let found), .typeMismatch(_, let found), .valueNotFound(_, let found),
            .dataCorrupted(let found):
            context = found
        @unknown default: return nil
        }
        var node = root
        for key in context.codingPath {
            guard let current = node else { break }
            if let index = key.intValue, let sequence = current.sequence, index < sequence.count {
                node = sequence[index]
            } else if let mapping = current.mapping, let value = mapping[key.stringValue] {
                node = value
            } else {
                break
            }
        }
        return node?.mark?.line
    }

    /// Whether a file's top-level keys are a relay's (camelCase) rather than an azbridge agent's (PascalCase).
    public static func looksLikeRelayConfiguration(_ text: String) -> Bool {
        guard let root = try? Yams.compose(yaml: text), let mapping = root.mapping else { return false }
        guard case .mapping(let keys) = ConfigurationSchema.relay else { return false }
        return mapping.keys.contains { $0.string.map { keys[$0] != nil } ?? false }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let joined = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(
                separator: ".")
            return joined.isEmpty ? "the document" : joined
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "\(path(context)): missing key '\(key.stringValue)'"
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            return "\(path(context)): \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }

    /// Checks what decoding cannot: names, duplicates, addresses, limits.
    public func validate() throws(ConfigurationError) {
        var problems: [String] = []
        if let problem = HostPort.problem(listen) { problems.append("listen: \(problem)") }
        if let publicURL, !(publicURL.hasPrefix("ws://") || publicURL.hasPrefix("wss://")) {
            problems.append("publicURL '\(publicURL)' must start with ws:// or wss://")
        }
        var seen = Set<String>()
        for entity in hybridConnections {
            let key = entity.name.lowercased()
            if entity.name.isEmpty || !entity.name.allSatisfy(Self.isEntityCharacter) {
                problems.append("hybrid connection name '\(entity.name)' may only use A-Z a-z 0-9 / _ - .")
            }
            if !seen.insert(key).inserted { problems.append("hybrid connection '\(entity.name)' is listed twice") }
        }
        for rule in namespaceRules + hybridConnections.flatMap(\.rules) {
            if rule.keyName.isEmpty || rule.keyName.count > 256 || rule.primaryKey.isEmpty
                || rule.primaryKey.count > 256
            {
                problems.append("rule '\(rule.keyName)': key name and key must be 1 to 256 characters")
            }
            if rule.rights.isEmpty { problems.append("rule '\(rule.keyName)' grants no rights") }
        }
        problems += limits.problems()
        problems += entra?.problems() ?? []
        if !problems.isEmpty { throw ConfigurationError(description: problems.joined(separator: "; ")) }
    }

    static func isEntityCharacter(_ character: Character) -> Bool {
        character.isASCII && (character.isLetter || character.isNumber || "/_-.".contains(character))
    }

    /// The base URL for `address` fields: `publicURL`, or the listen address with the right scheme.
    public var effectivePublicURL: String {
        if let publicURL { return publicURL.hasSuffix("/") ? String(publicURL.dropLast()) : publicURL }
        return "\(tls == nil ? "ws" : "wss")://\(listen)"
    }
}

/// The keys a relay configuration file may hold, nested as the file nests them.
indirect enum ConfigurationSchema: Sendable {
    case value
    case mapping([String: ConfigurationSchema])
    case list(ConfigurationSchema)

    static let rule = ConfigurationSchema.mapping([
        "keyName": .value, "primaryKey": .value, "secondaryKey": .value, "rights": .list(.value),
    ])

    static let relay = ConfigurationSchema.mapping([
        "listen": .value, "publicURL": .value,
        "tls": .mapping(["certificate": .value, "key": .value]),
        "namespaceRules": .list(rule),
        "hybridConnections": .list(
            .mapping(["name": .value, "requiresClientAuthorization": .value, "rules": .list(rule)])),
        "limits": .mapping(
            Dictionary(uniqueKeysWithValues: RelayLimits.CodingKeys.allCases.map { ($0.rawValue, .value) })),
        "entra": .mapping([
            "authority": .value, "tenant": .value, "keysRefreshSeconds": .value,
            "principals": .list(.mapping(["id": .value, "rights": .list(.value), "entity": .value])),
        ]),
    ])

    /// Keys earlier versions read, with what to do about them: refused by name rather than as unknown.
    static let retiredKeys = [
        "maxHTTPBodyBytes":
            "is no longer used: HTTP-mode bodies are streamed both ways, of any size; remove it"
    ]

    /// Refuses the first key `node` holds that the schema does not know. Shapes (a list where a mapping
    /// belongs) are left to the decoder, which names them by path.
    func check(_ node: Node, at place: String) throws(ConfigurationError) {
        switch (self, node) {
        case (.mapping(let keys), .mapping(let mapping)):
            for (key, value) in mapping {
                let name = key.string ?? "\(key)"
                guard let schema = keys[name] else {
                    let line = key.mark.map { "line \($0.line): " } ?? ""
                    if let retired = Self.retiredKeys[name] {
                        throw ConfigurationError(description: "\(line)'\(name)' in \(place) \(retired)")
                    }
                    throw ConfigurationError(
                        description:
                            "\(line)unknown key '\(name)' in \(place)\(Spelling.hint(for: name, among: keys.keys))")
                }
                try schema.check(value, at: "'\(name)'")
            }
        case (.list(let element), .sequence(let sequence)):
            for item in sequence { try element.check(item, at: place) }
        default:
            break
        }
    }
}

public struct ConfigurationError: Error, CustomStringConvertible, Equatable {
    public var description: String

    public init(description: String) { self.description = description }
}

/// `HOST:PORT` with an optional `[v6]` host.
public struct HostPort: Equatable, Sendable {
    public var host: String
    public var port: Int

    /// What is wrong with `text` as `HOST:PORT`, in words; nil when it is one.
    public static func problem(_ text: String) -> String? {
        guard let colon = text.lastIndex(of: ":") else { return "'\(text)' has no ':PORT'" }
        let portText = text[text.index(after: colon)...]
        guard let port = Int(portText) else { return "'\(portText)' in '\(text)' is not a port number" }
        guard (0...65535).contains(port) else { return "port \(port) in '\(text)' is not 0 to 65535" }
        guard HostPort(text) != nil else { return "'\(text)' has no host before ':\(port)'" }
        return nil
    }

    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.host = host
        self.port = port
    }
}
