import HybridConnections
import NIOConcurrencyHelpers
import NIOHTTP1
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// An Entra access token and when it expires (Unix seconds).
public struct AccessToken: Sendable, Equatable {
    public var token: String
    public var expiresOn: Double
    public var obtainedAt: Double

    public init(token: String, expiresOn: Double, obtainedAt: Double) {
        self.token = token
        self.expiresOn = expiresOn
        self.obtainedAt = obtainedAt
    }

    /// Renew when under five minutes remain, or past half the lifetime for short-lived tokens.
    public func needsRefresh(now: Double) -> Bool {
        let window = min(300, (expiresOn - obtainedAt) / 2)
        return now >= expiresOn - window
    }
}

/// Where tokens come from, chosen from the standard Azure environment variables.
public enum CredentialSource: Sendable, Equatable {
    case clientSecret(tenant: String, clientID: String, secret: String, authority: String)
    /// A PEM file with the application's certificate and its private key: a signed client assertion.
    case clientCertificate(tenant: String, clientID: String, path: String, authority: String)
    case workloadIdentity(tenant: String, clientID: String, tokenFile: String, authority: String)
    /// `clientID` selects a user-assigned identity.
    case managedIdentity(endpoint: String, clientID: String?)
    /// App Service and Functions: `IDENTITY_ENDPOINT` with the `IDENTITY_HEADER` secret.
    case appServiceIdentity(endpoint: String, header: String, clientID: String?)

    /// `AZURE_FEDERATED_TOKEN_FILE` → workload identity; `AZURE_CLIENT_SECRET` → client secret;
    /// `AZURE_CLIENT_CERTIFICATE_PATH` → client certificate; `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` → App
    /// Service managed identity; otherwise the instance metadata service (base URL from
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`, as azure-identity does).
    public static func fromEnvironment(_ environment: [String: String]) throws(IdentityError) -> CredentialSource {
        func value(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        var authority = value("AZURE_AUTHORITY_HOST") ?? "https://login.microsoftonline.com/"
        if !authority.hasSuffix("/") { authority += "/" }
        if let file = value("AZURE_FEDERATED_TOKEN_FILE") {
            guard let tenant = value("AZURE_TENANT_ID"), let client = value("AZURE_CLIENT_ID") else {
                throw .credential("AZURE_FEDERATED_TOKEN_FILE needs AZURE_TENANT_ID and AZURE_CLIENT_ID")
            }
            try AzureHTTP.checkURL(authority)
            return .workloadIdentity(tenant: tenant, clientID: client, tokenFile: file, authority: authority)
        }
        if let secret = value("AZURE_CLIENT_SECRET") {
            guard let tenant = value("AZURE_TENANT_ID"), let client = value("AZURE_CLIENT_ID") else {
                throw .credential("AZURE_CLIENT_SECRET needs AZURE_TENANT_ID and AZURE_CLIENT_ID")
            }
            try AzureHTTP.checkURL(authority)
            return .clientSecret(tenant: tenant, clientID: client, secret: secret, authority: authority)
        }
        if let path = value("AZURE_CLIENT_CERTIFICATE_PATH") {
            guard let tenant = value("AZURE_TENANT_ID"), let client = value("AZURE_CLIENT_ID") else {
                throw .credential("AZURE_CLIENT_CERTIFICATE_PATH needs AZURE_TENANT_ID and AZURE_CLIENT_ID")
            }
            try AzureHTTP.checkURL(authority)
            return .clientCertificate(tenant: tenant, clientID: client, path: path, authority: authority)
        }
        if let endpoint = value("IDENTITY_ENDPOINT"), let header = value("IDENTITY_HEADER") {
            try AzureHTTP.checkURL(endpoint)
            return .appServiceIdentity(endpoint: endpoint, header: header, clientID: value("AZURE_CLIENT_ID"))
        }
        var endpoint = value("AZURE_POD_IDENTITY_AUTHORITY_HOST") ?? "http://169.254.169.254"
        while endpoint.hasSuffix("/") { endpoint.removeLast() }
        try AzureHTTP.checkURL(endpoint, linkLocalHTTP: true)
        return .managedIdentity(endpoint: endpoint, clientID: value("AZURE_CLIENT_ID"))
    }

    public var kind: String {
        switch self {
        case .clientSecret: return "client_secret"
        case .clientCertificate: return "client_certificate"
        case .workloadIdentity: return "workload_identity"
        case .managedIdentity: return "managed_identity"
        case .appServiceIdentity: return "app_service_identity"
        }
    }

    /// What `hyrelay check` says about the credential: its kind and the ids it signs in with, never a secret.
    public var summary: String {
        switch self {
        case .clientSecret(let tenant, let clientID, _, let authority):
            return "client secret for application \(clientID) in tenant \(tenant) at \(authority)"
        case .clientCertificate(let tenant, let clientID, let path, let authority):
            return "client certificate \(path) for application \(clientID) in tenant \(tenant) at \(authority)"
        case .workloadIdentity(let tenant, let clientID, let tokenFile, let authority):
            return "workload identity (\(tokenFile)) for application \(clientID) in tenant \(tenant) at \(authority)"
        case .managedIdentity(let endpoint, let clientID):
            return "managed identity\(clientID.map { " \($0)" } ?? " (system-assigned)") via \(endpoint)"
        case .appServiceIdentity(let endpoint, _, let clientID):
            return "App Service managed identity\(clientID.map { " \($0)" } ?? "") via \(endpoint)"
        }
    }
}

/// The Azure cloud of an Azure Monitor endpoint, which fixes the token audience: Azure Government's and
/// Azure China's endpoints answer 401 to a token for the public cloud's audience, and the reverse.
public enum MonitorCloud: String, Sendable, CaseIterable {
    case publicCloud = "AzureCloud"
    case government = "AzureUSGovernment"
    case china = "AzureChinaCloud"

    public var audience: String {
        switch self {
        case .publicCloud: return "https://monitor.azure.com"
        case .government: return "https://monitor.azure.us"
        case .china: return "https://monitor.azure.cn"
        }
    }

    /// The cloud a host name belongs to, when it says (`*.ingest.monitor.azure.us`, `login.chinacloudapi.cn`).
    static func of(host: String) -> MonitorCloud? {
        let host = host.lowercased()
        if host.hasSuffix(".azure.us") || host.hasSuffix(".microsoftonline.us") { return .government }
        if host.hasSuffix(".azure.cn") || host.hasSuffix(".chinacloudapi.cn") || host.hasSuffix(".microsoftonline.cn") {
            return .china
        }
        if host.hasSuffix(".azure.com") || host.hasSuffix(".microsoftonline.com") { return .publicCloud }
        return nil
    }

    /// The Logs Ingestion token scope for `endpoint`: from its host name, else from `AZURE_AUTHORITY_HOST`,
    /// else the public cloud. An endpoint and an authority in different clouds can never work together.
    public static func logsIngestionScope(endpoint: String, authorityHost: String?) throws(IdentityError) -> String {
        let endpointCloud = AzureHTTP.host(of: endpoint).flatMap(Self.of(host:))
        let authorityCloud = authorityHost.flatMap(AzureHTTP.host(of:)).flatMap(Self.of(host:))
        if let endpointCloud, let authorityCloud, endpointCloud != authorityCloud {
            throw .configuration(
                "the ingestion endpoint is in \(endpointCloud.rawValue) but AZURE_AUTHORITY_HOST signs in to "
                    + "\(authorityCloud.rawValue); tokens of one cloud are refused by the other")
        }
        return scope(audience: (endpointCloud ?? authorityCloud ?? .publicCloud).audience)
    }

    /// The OAuth scope that asks for a token of `audience`.
    public static func scope(audience: String) -> String {
        audience.hasSuffix("/") ? "\(audience).default" : "\(audience)/.default"
    }
}

/// Fetches and caches tokens for one scope; refreshed before expiry and after a 401.
public final class TokenCredential: Sendable {
    public let source: CredentialSource
    /// e.g. `https://monitor.azure.com/.default`.
    public let scope: String
    private let http: AzureHTTP
    private let cached = NIOLockedValueBox<AccessToken?>(nil)
    private let refusalsInARow = NIOLockedValueBox(0)

    public init(source: CredentialSource, scope: String, http: AzureHTTP) {
        self.source = source
        self.scope = scope
        self.http = http
    }

    public func token() async throws(IdentityError) -> String {
        try await accessToken().token
    }

    /// The cached token while it is fresh, else a new one.
    public func accessToken() async throws(IdentityError) -> AccessToken {
        let now = Date().timeIntervalSince1970
        if let current = cached.withLockedValue({ $0 }), !current.needsRefresh(now: now) { return current }
        let fresh = try await fetch(now: now)
        cached.withLockedValue { $0 = fresh }
        return fresh
    }

    /// An endpoint answered 401. The cached token is dropped either way; the answer is whether a retry with
    /// a fresh one is worth it: once, yes (the token may have been revoked or rotated), but a 401 right after
    /// a fresh token means the audience, tenant or identity is wrong, and retrying cannot fix that.
    public func refused() -> Bool {
        cached.withLockedValue { $0 = nil }
        return refusalsInARow.withLockedValue { count in
            count += 1
            return count == 1
        }
    }

    /// An endpoint answered anything but 401 to this credential's token.
    public func accepted() {
        refusalsInARow.withLockedValue { $0 = 0 }
    }

    private func fetch(now: Double) async throws(IdentityError) -> AccessToken {
        let response: AzureResponse
        switch source {
        case .clientSecret(let tenant, let clientID, let secret, let authority):
            response = try await postForm(
                url: "\(authority)\(PercentEncoding.encode(tenant))/oauth2/v2.0/token",
                fields: [
                    ("client_id", clientID), ("client_secret", secret), ("grant_type", "client_credentials"),
                    ("scope", scope),
                ])
        case .clientCertificate(let tenant, let clientID, let path, let authority):
            let url = "\(authority)\(PercentEncoding.encode(tenant))/oauth2/v2.0/token"
            let assertion = try ClientAssertion.make(
                pemFile: path, clientID: clientID, audience: url, now: now, id: UUID().uuidString.lowercased())
            response = try await postForm(
                url: url,
                fields: [
                    ("client_assertion", assertion),
                    ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    ("client_id", clientID), ("grant_type", "client_credentials"), ("scope", scope),
                ])
        case .workloadIdentity(let tenant, let clientID, let tokenFile, let authority):
            let assertion: String
            do {
                assertion = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingWhitespace()
            } catch {
                throw .credential(
                    "cannot read AZURE_FEDERATED_TOKEN_FILE '\(tokenFile)': \(ErrorWords.describe(error))")
            }
            response = try await postForm(
                url: "\(authority)\(PercentEncoding.encode(tenant))/oauth2/v2.0/token",
                fields: [
                    ("client_assertion", assertion),
                    ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    ("client_id", clientID), ("grant_type", "client_credentials"), ("scope", scope),
                ])
        case .managedIdentity(let endpoint, let clientID):
            var url =
                "\(endpoint)/metadata/identity/oauth2/token?api-version=2018-02-01&resource=\(PercentEncoding.encode(resource(of: scope)))"
            if let clientID { url += "&client_id=\(PercentEncoding.encode(clientID))" }
            response = try await http.send(method: .GET, url: url, headers: [("Metadata", "true")], body: nil)
        case .appServiceIdentity(let endpoint, let header, let clientID):
            var url = "\(endpoint)?api-version=2019-08-01&resource=\(PercentEncoding.encode(resource(of: scope)))"
            if let clientID { url += "&client_id=\(PercentEncoding.encode(clientID))" }
            response = try await http.send(
                method: .GET, url: url, headers: [("X-IDENTITY-HEADER", header)], body: nil)
        }
        guard response.status == 200 else {
            throw .credential(
                "\(source.kind) token request answered \(response.status): \(response.bodyText.prefix(300))")
        }
        return try Self.parseToken(response.body, now: now)
    }

    /// Managed identity endpoints take a resource, not a scope: the scope without `/.default`.
    private func resource(of scope: String) -> String {
        scope.hasSuffix("/.default") ? String(scope.dropLast("/.default".count)) : scope
    }

    private func postForm(url: String, fields: [(String, String)]) async throws(IdentityError) -> AzureResponse {
        let form = fields.map { "\($0.0)=\(PercentEncoding.encode($0.1))" }.joined(separator: "&")
        return try await http.send(
            method: .POST, url: url,
            headers: [("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")],
            body: Array(form.utf8))
    }

    /// Reads `access_token` and `expires_in` (number or string) or `expires_on` (Unix seconds as a string).
    public static func parseToken(_ body: [UInt8], now: Double) throws(IdentityError) -> AccessToken {
        guard let fields = try? JSONDecoder().decode([String: JSONValue].self, from: Data(body)),
            let token = fields["access_token"]?.stringValue, !token.isEmpty
        else { throw .credential("token response has no access_token") }
        func seconds(_ name: String) -> Double? {
            switch fields[name] {
            case .string(let text)?: return Double(text)
            case let value?: return value.number
            case nil: return nil
            }
        }
        // Numbers from the network never trap or stall a timer: a lifetime is whole seconds from 1 s to a
        // year, an expiry time within a year of now; NaN, infinities and 1e300 are refused with the reason.
        let longest: Double = 366 * 86_400
        if let expiresOn = seconds("expires_on") {
            guard expiresOn.isFinite, expiresOn > now, expiresOn <= now + longest else {
                throw .credential("token response's expires_on '\(expiresOn)' is not a time within a year from now")
            }
            return AccessToken(token: token, expiresOn: expiresOn, obtainedAt: now)
        }
        guard let expiresIn = seconds("expires_in") else { throw .credential("token response has no expiry") }
        guard expiresIn.isFinite, expiresIn >= 1, expiresIn <= longest else {
            throw .credential("token response's expires_in '\(expiresIn)' is not a lifetime from 1 s to a year")
        }
        return AccessToken(token: token, expiresOn: now + expiresIn, obtainedAt: now)
    }
}
