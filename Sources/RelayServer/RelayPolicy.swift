import AzureIdentity
import HybridConnections
import NIOConcurrencyHelpers

/// A refusal the relay answers with an HTTP status and an Azure-shaped reason phrase.
public struct Refusal: Error, Equatable, Sendable {
    public var status: Int
    public var text: String
    /// A short, bounded label for logs and metrics.
    public var reason: String

    public init(status: Int, text: String, reason: String) {
        self.status = status
        self.text = text
        self.reason = reason
    }

    /// Refusals that come from a token: counted as authentication failures too.
    public var isAuthorizationFailure: Bool { status == 401 || status == 403 && reason != "listener_limit" }

    /// Refusals an attacker can cause once per connection at no cost: logged at most once a second.
    var isFloodable: Bool {
        ["connection_limit", "source_connection_limit", "auth_rate_limited", "handshake_timeout", "http_buffer_full"]
            .contains(reason)
    }

    static let draining = Refusal(
        status: 503, text: "ServerBusy: The relay is shutting down; connect again (another relay will answer)",
        reason: "draining")

    /// HTTP mode with no listener online: Azure's 502.
    static let noHTTPListener = Refusal(status: 502, text: RelayErrorText.noListeners, reason: "no_listener")

    static let httpBufferFull = Refusal(
        status: 503, text: "ServerBusy: The relay holds too many request bodies; retry later",
        reason: "http_buffer_full")

    static func from(_ error: TokenError) -> Refusal {
        Refusal(status: error.httpStatus, text: error.description, reason: error.reason)
    }

    static func from(_ error: RequestTargetError) -> Refusal {
        Refusal(status: 400, text: "BadRequest: \(error.description)", reason: "malformed_url")
    }
}

/// Where a request's token came from, which decides what is stripped before forwarding (reference §2.5).
public enum TokenSource: Equatable, Sendable {
    case query, serviceBusAuthorization, authorization
    /// HTTP mode only: the cookie the relay set for a browser that came with `?sb-hc-token=` (`BrowserCookie`).
    case cookie
}

/// The cookie that lets a browser load a page published through HTTP mode with every sub-resource: a request
/// authorized by `?sb-hc-token=` gets the token back as an HttpOnly cookie scoped to the entity's path and
/// expiring with the token, and the browser's later requests (images, CSS, scripts, which carry no query) are
/// authorized by it. The entity stays protected: only a valid token becomes a cookie, the cookie is checked as
/// any token is, and it never reaches the listener.
public enum BrowserCookie {
    public static let name = "hyrelay-sb-hc-token"
    public static let maxAgeSeconds: Int64 = 86_400

    /// A `Referer` without the `sb-hc-token` a page's address carried, for the listener.
    public static func referer(_ value: String) -> String {
        guard let question = value.firstIndex(of: "?") else { return value }
        let kept = value[value.index(after: question)...].split(separator: "&").filter {
            !$0.lowercased().hasPrefix("sb-hc-token=")
        }
        return String(value[..<question]) + (kept.isEmpty ? "" : "?" + kept.joined(separator: "&"))
    }

    /// The token in a `Cookie` header, if our cookie is there.
    public static func token(in cookieHeaders: [String]) -> String? {
        for header in cookieHeaders {
            for pair in header.split(separator: ";") {
                let trimmed = pair.trimmingWhitespace()
                guard trimmed.hasPrefix(name + "=") else { continue }
                let value = String(trimmed.dropFirst(name.count + 1))
                return PercentEncoding.decode(value, plusAsSpace: false) ?? value
            }
        }
        return nil
    }

    /// `Cookie` headers without our cookie (nil when nothing else is left), for the listener.
    public static func strip(_ cookieHeaders: [String]) -> String? {
        let others = cookieHeaders.flatMap { $0.split(separator: ";") }.map { $0.trimmingWhitespace() }
            .filter { !$0.isEmpty && !$0.hasPrefix(name + "=") }
        return others.isEmpty ? nil : others.joined(separator: "; ")
    }

    /// `Set-Cookie` for `token` on `entity`, living until the token's `expiry` (Unix seconds).
    public static func setCookie(token: String, entity: String, expiry: Int64?, now: Int64, secure: Bool) -> String {
        var value = "\(name)=\(PercentEncoding.encode(token)); Path=/\(entity); HttpOnly; SameSite=Lax"
        // With the token, and a day at most: a year-long SAS does not become a year-long cookie on disk.
        value += "; Max-Age=\(min(max(0, (expiry ?? now + maxAgeSeconds) - now), maxAgeSeconds))"
        if secure { value += "; Secure" }
        return value
    }
}

/// Entity resolution and authorization, without I/O: the decisions the relay makes about a request
/// before any socket is touched.
public struct RelayPolicy: Sendable {
    public let resolver: EntityResolver
    private let entities: [String: HybridConnectionConfiguration]
    private let namespaceRules: [AuthorizationRule]
    private let validator: TokenValidator
    /// Tokens verified under this policy's keys; a reload makes a new policy, and a new, empty cache.
    private let verified = VerifiedTokenCache(capacity: 4096)
    /// Entra ID: the tenant's keys (nil when the relay takes SAS only) and the principals' rights.
    private let entra: (authority: EntraAuthority, configuration: EntraConfiguration)?
    /// Host names a token audience may name besides the request's own `Host`.
    public let publicHost: String
    /// How long past its token's expiry a control channel stays open (`limits.tokenGraceSeconds`).
    private let tokenGraceSeconds: Double

    public init(configuration: RelayConfiguration, entraAuthority: EntraAuthority? = nil) {
        resolver = EntityResolver(entityNames: configuration.hybridConnections.map(\.name))
        var entities: [String: HybridConnectionConfiguration] = [:]
        for entity in configuration.hybridConnections { entities[entity.name.lowercased()] = entity }
        self.entities = entities
        namespaceRules = configuration.namespaceRules
        validator = TokenValidator(clockSkew: Int64(configuration.limits.clockSkewSeconds))
        tokenGraceSeconds = configuration.limits.tokenGraceSeconds
        publicHost = WebSocketURLHost.host(of: configuration.effectivePublicURL)
        entra = entraAuthority.flatMap { authority in configuration.entra.map { (authority, $0) } }
    }

    /// The entity a path (after `/$hc/` or `/`) addresses, or 404 "Endpoint does not exist".
    public func entity(for path: String) throws(Refusal) -> (entity: HybridConnectionConfiguration, suffix: String) {
        guard let (name, suffix) = resolver.resolve(path), let entity = entities[name.lowercased()] else {
            throw Refusal(status: 404, text: RelayErrorText.endpointNotFound, reason: "no_entity")
        }
        return (entity, suffix)
    }

    /// Picks the token: `sb-hc-token` query, then `ServiceBusAuthorization`, then `Authorization`
    /// (with or without `Bearer `).
    public static func token(
        queryToken: String?, serviceBusAuthorization: String?, authorization: String?, cookie: String? = nil
    )
        -> (token: String, source: TokenSource)?
    {
        if let queryToken, !queryToken.isEmpty { return (queryToken, .query) }
        if let serviceBusAuthorization, !serviceBusAuthorization.isEmpty {
            return (serviceBusAuthorization, .serviceBusAuthorization)
        }
        if let authorization, !authorization.isEmpty {
            let bearer = "bearer "
            let stripped =
                authorization.lowercased().hasPrefix(bearer)
                ? String(authorization.dropFirst(bearer.count)) : authorization
            // A browser re-sends the site's own `Authorization: Basic …` with every request: with the relay's
            // cookie there, an Authorization that is no token of ours is the application's.
            let isOurs = stripped.hasPrefix("SharedAccessSignature") || EntraTokenCheck.isJSONWebToken(stripped)
            if let cookie, !cookie.isEmpty, !isOurs { return (cookie, .cookie) }
            return (stripped, .authorization)
        }
        if let cookie, !cookie.isEmpty { return (cookie, .cookie) }
        return nil
    }

    /// Lowercased names of the request headers a sender's credential travelled in, which never reach the
    /// listener (reference §2.5): `ServiceBusAuthorization` always; `Authorization` when the relay checked
    /// a token and found it there, otherwise it is the application's own (end-to-end) authorization.
    public static func consumedHeaders(entity: HybridConnectionConfiguration, source: TokenSource?) -> Set<String> {
        entity.requiresClientAuthorization && source == .authorization
            ? ["servicebusauthorization", "authorization"] : ["servicebusauthorization"]
    }

    /// Checks a token for `right` on `entity`. Returns the token's expiry, or nil when the entity lets
    /// senders in without one.
    public func authorize(
        entity: HybridConnectionConfiguration, token: String?, right: AccessRight, requestHost: String?, now: Int64
    ) throws(Refusal) -> Int64? {
        try authorize(entity: entity, token: token, anyOf: [right], requestHost: requestHost, now: now)
    }

    /// Checks a listener's token (on `listen` and on `renewToken`) with the window its control channel will be
    /// held to: a token the channel's expiry timer would end within the second is refused as expired now
    /// (401 `ExpiredToken` at the handshake), never admitted and closed at once, which a listener that
    /// reconnects without backoff turns into a loop.
    public func authorizeListener(
        entity: HybridConnectionConfiguration, token: String?, requestHost: String?, now: Double
    ) throws(Refusal) -> Int64? {
        let expiry = try authorize(
            entity: entity, token: token, anyOf: [.listen], requestHost: requestHost, now: Int64(now.rounded(.down)))
        if let expiry, Double(expiry) + tokenGraceSeconds < now + 1 {
            throw Refusal.from(TokenError.expired(expiry: expiry))
        }
        return expiry
    }

    /// Checks a token for any of `rights` (in order) on `entity`, decoding it once: the runtime-information
    /// query takes Listen or Send. The refusal is the one for the last right tried.
    public func authorize(
        entity: HybridConnectionConfiguration, token: String?, anyOf rights: [AccessRight], requestHost: String?,
        now: Int64
    ) throws(Refusal) -> Int64? {
        if rights.contains(.send) && !entity.requiresClientAuthorization { return nil }
        if let token, EntraTokenCheck.isJSONWebToken(token) {
            return try authorizeEntra(token, entity: entity.name, anyOf: rights, now: now)
        }
        var hosts = [publicHost]
        if let requestHost { hosts.append(requestHost) }
        var refusal = Refusal.from(TokenError.missing)
        for right in rights {
            do {
                return try validator.validate(
                    token: token, rules: entity.rules + namespaceRules, hosts: hosts, entityPath: entity.name,
                    right: right, now: now, verified: verified
                ).expiry
            } catch {
                refusal = Refusal.from(error)
                // Only a missing right is worth asking again for another: a bad token stays bad.
                guard case .insufficientRights = error else { break }
            }
        }
        throw refusal
    }
}

extension RelayPolicy {
    /// Every reason an Entra token is refused for, as the metrics label it.
    public static let entraRefusalReasons =
        EntraTokenError.allReasons.map { "entra_\($0)" } + ["entra_insufficient_rights", "entra_not_configured"]

    /// An Entra access token: valid for the configured tenant, then the principal's rights on the entity.
    func authorizeEntra(
        _ token: String, entity: String, anyOf wanted: [AccessRight], now: Int64
    ) throws(Refusal)
        -> Int64
    {
        guard let (authority, configuration) = entra else {
            throw Refusal(
                status: 401, text: "Unauthorized: This relay does not accept Entra ID tokens; use a SAS token",
                reason: "entra_not_configured")
        }
        let principal: EntraPrincipal
        do {
            principal = try authority.validate(token, now: now)
        } catch {
            throw Refusal(
                status: error == .keysUnavailable ? 503 : 401, text: error.description, reason: "entra_\(error.reason)")
        }
        let rights = configuration.rights(of: principal, entity: entity)
        guard rights.contains(.manage) || wanted.contains(where: rights.contains) else {
            let named = wanted.map(\.rawValue).joined(separator: " or ")
            throw Refusal(
                status: 403,
                text: "Unauthorized: The principal \(principal.label) does not hold the \(named) right on '\(entity)'",
                reason: "entra_insufficient_rights")
        }
        return principal.expiry
    }
}

enum WebSocketURLHost {
    /// The host of `scheme://host[:port]/…`, without brackets or port.
    static func host(of url: String) -> String {
        let afterScheme = url.split(separator: "://", maxSplits: 1).last ?? Substring(url)
        let authority = afterScheme.prefix { $0 != "/" && $0 != "?" }
        return String(Audience("x://\(authority)").host)
    }
}

/// Verified SAS tokens by token and entity, bounded: when full it starts again empty (a client's token is
/// verified once more; an attacker cannot fill it, since only tokens with a valid signature go in).
final class VerifiedTokenCache: VerifiedSignatures {
    private struct Key: Hashable {
        var token: String
        var entityPath: String
    }

    private let entries = NIOLockedValueBox<[Key: SharedAccessSignature]>([:])
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    func signature(token: String, entityPath: String) -> SharedAccessSignature? {
        entries.withLockedValue { $0[Key(token: token, entityPath: entityPath)] }
    }

    func remember(_ signature: SharedAccessSignature, token: String, entityPath: String) {
        entries.withLockedValue { entries in
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[Key(token: token, entityPath: entityPath)] = signature
        }
    }
}
