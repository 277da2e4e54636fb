import NIOConcurrencyHelpers
import NIOHTTP1

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// An Entra token for Azure Relay kept fresh in the background and read without waiting: an agent's relay
/// connections take the current token synchronously (each sender's upgrade, a listener's `renewToken`).
public final class RefreshingToken: Sendable, Hashable {
    /// The scope of Azure Relay tokens, as azbridge asks for it.
    public static let relayScope = "https://relay.azure.net/.default"

    public let credential: TokenCredential
    private let current = NIOLockedValueBox<AccessToken?>(nil)
    private let refresher = NIOLockedValueBox<Task<Void, Never>?>(nil)
    private let failures = NIOLockedValueBox(0)

    public init(credential: TokenCredential) { self.credential = credential }

    /// Signs in once (an agent that cannot sign in says so at start), then refreshes before each expiry.
    public func start() async throws(IdentityError) {
        let first = try await credential.accessToken()
        current.withLockedValue { $0 = first }
        let task = Task { [weak self] in
            guard let self else { return }
            await self.refreshLoop()
        }
        refresher.withLockedValue { $0 = task }
    }

    public func stop() {
        refresher.withLockedValue { $0?.cancel() }
    }

    /// The current token, nil before `start`.
    public var token: AccessToken? { current.withLockedValue { $0 } }

    /// Refreshes failed in a row (the token in hand may be running out).
    public var refreshFailures: Int { failures.withLockedValue { $0 } }

    private func refreshLoop() async {
        while !Task.isCancelled {
            guard let token else { return }
            let now = Date().timeIntervalSince1970
            let window = min(300, (token.expiresOn - token.obtainedAt) / 2)
            // A failed refresh is retried every 5 s while the token in hand lasts.
            let wait = failures.withLockedValue { $0 } > 0 ? 5 : max(0, token.expiresOn - window - now)
            try? await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
            if Task.isCancelled { return }
            do {
                let fresh = try await credential.accessToken()
                current.withLockedValue { $0 = fresh }
                failures.withLockedValue { $0 = 0 }
            } catch {
                failures.withLockedValue { $0 += 1 }
            }
        }
    }

    public static func == (lhs: RefreshingToken, rhs: RefreshingToken) -> Bool { lhs === rhs }

    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// The relay's view of one Entra tenant: its issuer and signing keys from OpenID discovery, fetched at start,
/// refreshed every `refreshInterval`, and fetched again (at most every 10 s) when a token names a key not in
/// hand, as after a key rollover. Validation itself never waits for the network.
public final class EntraAuthority: Sendable {
    public let authority: String
    public let tenant: String
    public let skewSeconds: Int64
    public let refreshInterval: Duration
    private let http: AzureHTTP
    private let state = NIOLockedValueBox(State())

    private struct State {
        var check: EntraTokenCheck?
        var keys = EntraKeySet()
        var lastAttempt: Double = 0
        var fetching = false
        var lastError: String?
    }

    /// Fetches are at least this far apart when tokens with unknown keys keep coming.
    static let refetchSpacing: Double = 10

    public init(
        authority: String, tenant: String, skewSeconds: Int64 = 300, refreshInterval: Duration = .seconds(3600),
        http: AzureHTTP
    ) throws(IdentityError) {
        var authority = authority
        if !authority.hasSuffix("/") { authority += "/" }
        try AzureHTTP.checkURL(authority)
        self.authority = authority
        self.tenant = tenant
        self.skewSeconds = skewSeconds
        self.refreshInterval = refreshInterval
        self.http = http
    }

    /// `{authority}{tenant}/v2.0/.well-known/openid-configuration`.
    public var discoveryURL: String { "\(authority)\(tenant)/v2.0/.well-known/openid-configuration" }

    /// Whether the keys are in hand, and the last fetch error if not.
    public var status: (ready: Bool, lastError: String?) {
        state.withLockedValue { ($0.check != nil && !$0.keys.keys.isEmpty, $0.lastError) }
    }

    /// Discovery, then the key set; replaces both at once.
    public func fetch() async throws(IdentityError) {
        state.withLockedValue {
            $0.fetching = true
            $0.lastAttempt = Date().timeIntervalSince1970
        }
        defer { state.withLockedValue { $0.fetching = false } }
        do throws(IdentityError) {
            let discovery = try await http.send(method: .GET, url: discoveryURL, headers: [], body: nil)
            guard discovery.status == 200,
                let document = try? JSONDecoder().decode([String: JSONValue].self, from: Data(discovery.body)),
                let issuer = document["issuer"]?.stringValue, let jwksURL = document["jwks_uri"]?.stringValue
            else {
                throw .credential(
                    "OpenID discovery at \(discoveryURL) answered \(discovery.status) without issuer and jwks_uri")
            }
            try AzureHTTP.checkURL(jwksURL)
            let jwks = try await http.send(method: .GET, url: jwksURL, headers: [], body: nil)
            guard jwks.status == 200 else {
                throw .credential("the key set at \(jwksURL) answered \(jwks.status)")
            }
            let keys = try EntraKeySet(jwks: jwks.body)
            let check = EntraTokenCheck(
                issuer: issuer.replacing("{tenantid}", with: tenant), tenant: tenant, skewSeconds: skewSeconds)
            state.withLockedValue { state in
                state.check = check
                state.keys = keys
                state.lastError = nil
            }
        } catch {
            state.withLockedValue { $0.lastError = error.description }
            throw error
        }
    }

    /// Fetches until the keys are in hand (backing off to 30 s), then every `refreshInterval`; until cancelled.
    public func run() async {
        var delay: Double = 1
        if status.ready { try? await Task.sleep(for: refreshInterval) }
        while !Task.isCancelled {
            do {
                try await fetch()
                delay = 1
                try? await Task.sleep(for: refreshInterval)
            } catch {
                try? await Task.sleep(for: .milliseconds(Int64(delay * 1000)))
                delay = min(delay * 2, 30)
            }
        }
    }

    /// Checks a token against the keys in hand. An unknown key id starts a fetch in the background (a rollover),
    /// so the sender's retry finds the new key.
    public func validate(_ token: String, now: Int64) throws(EntraTokenError) -> EntraPrincipal {
        let (check, keys) = state.withLockedValue { ($0.check, $0.keys) }
        guard let check else {
            refetchSoon()
            throw .keysUnavailable
        }
        do {
            return try check.validate(token, keys: keys, now: now)
        } catch {
            if case .unknownKey = error { refetchSoon() }
            throw error
        }
    }

    private func refetchSoon() {
        let due = state.withLockedValue { state in
            let now = Date().timeIntervalSince1970
            guard !state.fetching, now - state.lastAttempt >= Self.refetchSpacing else { return false }
            state.lastAttempt = now
            return true
        }
        if due { Task { try? await self.fetch() } }
    }
}
