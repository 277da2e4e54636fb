import AzureIdentity
import HybridConnections
import NIOConcurrencyHelpers
import NIOHTTP1
import RelayIO

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Where the relay is and how to prove the right to use it, for one relay name.
public struct RelayAccess: Sendable, Hashable {
    /// The relay's base URL (`ws://host:port` or `wss://host[:port]`).
    public var base: WebSocketURL
    public var keyName: String?
    public var key: String?
    /// A pre-made token (`-s`): used as it is and never renewed.
    public var signature: String?
    public var noAuthentication = false
    /// How long the tokens this agent makes are valid, in seconds.
    public var tokenLifetime: Int64 = Self.defaultTokenLifetime
    /// The HTTP proxy this relay is reached through, if any.
    public var proxy: OutboundProxy?
    /// Entra ID sign-in, used when no SAS credential is configured (as azbridge does).
    public var entra: RefreshingToken?
    /// One of the addresses `base.host` resolves to, dialled instead of the name (relay discovery): an edge keeps a
    /// listener on each.
    public var address: String?
    /// What this agent tells the relay about itself (`X-HyRelay-Agent`).
    public var identity: AgentIdentity?

    /// The .NET SDK's token lifetime.
    public static let defaultTokenLifetime: Int64 = 3600

    public init(base: WebSocketURL, keyName: String? = nil, key: String? = nil, signature: String? = nil) {
        self.base = base
        self.keyName = keyName
        self.key = key
        self.signature = signature
    }

    /// Resolves endpoint and credentials as azbridge does: the entry's connection string, else the
    /// global one, then `-e`/`-K`/`-k`/`-s` values override.
    public static func resolve(
        configuration: AgentConfiguration, entryConnectionString: String?, relayName: String
    ) throws(AgentConfigurationError) -> RelayAccess {
        var endpoint = configuration.endpoint
        var keyName = configuration.sharedAccessKeyName
        var key = configuration.sharedAccessKey
        var signature = configuration.sharedAccessSignature
        if let text = entryConnectionString ?? configuration.connectionString {
            let parsed: RelayConnectionString
            do {
                parsed = try RelayConnectionString(parsing: text)
            } catch {
                throw AgentConfigurationError(line: nil, "connection string: \(error.description)")
            }
            if let entityPath = parsed.entityPath, entityPath.lowercased() != relayName.lowercased() {
                throw AgentConfigurationError(
                    line: nil,
                    "the connection string's EntityPath '\(entityPath)' does not allow relay name '\(relayName)'")
            }
            endpoint = configuration.endpoint ?? parsed.endpoint
            keyName = configuration.sharedAccessKeyName ?? parsed.sharedAccessKeyName
            key = configuration.sharedAccessKey ?? parsed.sharedAccessKey
            signature = configuration.sharedAccessSignature ?? parsed.sharedAccessSignature
        }
        guard let endpoint else {
            throw AgentConfigurationError(line: nil, "no relay endpoint: give -e, -x or AzureRelayEndpoint")
        }
        guard (keyName == nil) == (key == nil) else {
            throw AgentConfigurationError(
                line: nil, "a SAS key name needs a key and a key needs a key name (-K and -k)")
        }
        return RelayAccess(base: try baseURL(endpoint), keyName: keyName, key: key, signature: signature)
    }

    static func baseURL(_ endpoint: String) throws(AgentConfigurationError) -> WebSocketURL {
        guard let url = WebSocketURL(endpoint) else {
            throw AgentConfigurationError(line: nil, "endpoint '\(endpoint)' is not an sb://, ws:// or wss:// URL")
        }
        return WebSocketURL(secure: url.secure, host: url.host, port: url.port, target: "")
    }

    /// The same credentials for another relay endpoint.
    public func with(endpoint: String) throws(AgentConfigurationError) -> RelayAccess {
        var copy = self
        copy.base = try Self.baseURL(endpoint)
        return copy
    }

    /// Whether no SAS credential is configured: the agent then signs in with Entra ID when it can.
    public var lacksSharedAccessCredential: Bool { keyName == nil && key == nil && signature == nil }

    /// The token for `relayName`, or nil when none is configured. Audience as the .NET SDK forms it. A token
    /// made earlier is reused while more than half its life is left: signing (HMAC and the encodings around
    /// it) once per sender was a cost every new tunnel paid.
    public func token(relayName: String, now: Int64) -> (token: String, expiry: Int64?)? {
        if noAuthentication { return nil }
        if let signature { return (signature, nil) }
        if let entra {
            // The raw JWT, no `Bearer `, as the .NET SDK sends it.
            return entra.token.map { ($0.token, Int64($0.expiresOn)) }
        }
        guard let keyName, let key else { return nil }
        let resource = "http://\(base.host)/\(relayName)/"
        let cacheKey = TokenCache.Key(resource: resource, keyName: keyName, key: key, lifetime: tokenLifetime)
        if let cached = Self.tokens.reusable(cacheKey, now: now) { return (cached.token, cached.expiry) }
        let expiry = now + tokenLifetime
        let token = SharedAccessSignature.make(resource: resource, keyName: keyName, key: key, expiry: expiry)
        Self.tokens.store(cacheKey, token: token, expiry: expiry)
        return (token, expiry)
    }

    /// Tokens made by this process, shared by every relay connection of every agent in it.
    static let tokens = TokenCache()

    func url(relayName: String, query: String) -> WebSocketURL {
        var url = base
        url.target = "/$hc/\(relayName)?\(query)"
        return url
    }

    func headers(relayName: String) -> (HTTPHeaders, Int64?) {
        var headers = HTTPHeaders()
        let token = token(relayName: relayName, now: Int64(Date().timeIntervalSince1970))
        if let token { headers.add(name: "ServiceBusAuthorization", value: token.token) }
        if let identity { headers.add(name: AgentIdentity.headerName, value: identity.headerValue) }
        return (headers, token?.expiry)
    }
}

/// SAS tokens already made, by audience and key: reused while more than half their life is left.
final class TokenCache: Sendable {
    struct Key: Hashable {
        var resource: String
        var keyName: String
        var key: String
        var lifetime: Int64
    }

    private let entries = NIOLockedValueBox<[Key: (token: String, expiry: Int64)]>([:])

    func reusable(_ key: Key, now: Int64) -> (token: String, expiry: Int64)? {
        entries.withLockedValue { entries in
            guard let entry = entries[key], entry.expiry - now > key.lifetime / 2 else { return nil }
            return entry
        }
    }

    func store(_ key: Key, token: String, expiry: Int64) {
        entries.withLockedValue { $0[key] = (token, expiry) }
    }
}
