import Crypto
import CryptoExtras

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Why an Entra access token was refused. `reason` is the metric and log label (prefixed `entra_` by the
/// relay, so SAS and Entra refusals tell apart); `description` is the text the sender gets, never the token.
public enum EntraTokenError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case unsupportedAlgorithm(String)
    case unknownKey(String)
    case invalidSignature
    case wrongIssuer(String)
    case wrongTenant(String)
    case wrongAudience(String)
    case expired(Int64)
    case notYetValid(Int64)
    /// No signing keys yet: the authority has not answered since the relay started.
    case keysUnavailable

    public var reason: String {
        switch self {
        case .malformed: return "malformed"
        case .unsupportedAlgorithm: return "unsupported_algorithm"
        case .unknownKey: return "unknown_key"
        case .invalidSignature: return "invalid_signature"
        case .wrongIssuer: return "wrong_issuer"
        case .wrongTenant: return "wrong_tenant"
        case .wrongAudience: return "wrong_audience"
        case .expired: return "expired"
        case .notYetValid: return "not_yet_valid"
        case .keysUnavailable: return "keys_unavailable"
        }
    }

    public static let allReasons = [
        EntraTokenError.malformed(""), .unsupportedAlgorithm(""), .unknownKey(""), .invalidSignature,
        .wrongIssuer(""), .wrongTenant(""), .wrongAudience(""), .expired(0), .notYetValid(0), .keysUnavailable,
    ].map(\.reason)

    public var description: String {
        switch self {
        case .malformed(let why): return "MalformedToken: The token is not a JSON Web Token: \(why)"
        case .unsupportedAlgorithm(let algorithm):
            return "InvalidSignature: The token's algorithm '\(algorithm)' is not accepted; Entra tokens are RS256"
        case .unknownKey(let kid):
            return "InvalidSignature: The token's signing key '\(kid)' is not among the authority's keys; retry shortly"
        case .invalidSignature: return "InvalidSignature: The token's signature does not verify"
        case .wrongIssuer(let issuer): return "InvalidIssuer: The token's issuer '\(issuer)' is not the configured one"
        case .wrongTenant(let tenant): return "InvalidIssuer: The token's tenant '\(tenant)' is not the configured one"
        case .wrongAudience(let audience):
            return "InvalidAudience: The token's audience '\(audience)' is not https://relay.azure.net"
        case .expired(let exp): return "ExpiredToken: The token expired at \(exp) (Unix time)"
        case .notYetValid(let nbf): return "InvalidToken: The token is not valid before \(nbf) (Unix time)"
        case .keysUnavailable:
            return "ServiceUnavailable: The relay has not yet fetched the Entra signing keys; retry shortly"
        }
    }
}

/// Who a valid token speaks for: the ids a principal rule may name.
public struct EntraPrincipal: Equatable, Sendable {
    /// `oid`: the user's or service principal's object id.
    public var objectID: String?
    /// `appid` (v1 tokens) or `azp` (v2): the calling application's client id.
    public var applicationID: String?
    public var groups: [String]
    public var roles: [String]
    public var expiry: Int64

    public init(objectID: String?, applicationID: String?, groups: [String], roles: [String], expiry: Int64) {
        self.objectID = objectID
        self.applicationID = applicationID
        self.groups = groups
        self.roles = roles
        self.expiry = expiry
    }

    /// Every id a rule may match: object id, application id, groups and app roles.
    public var identities: [String] { [objectID, applicationID].compactMap { $0 } + groups + roles }

    /// For logs: the object id, else the application id.
    public var label: String { objectID ?? applicationID ?? "unknown" }
}

/// The signing keys an authority publishes (JWKS), by key id.
public struct EntraKeySet: Sendable {
    public var keys: [String: _RSA.Signing.PublicKey]

    public init(keys: [String: _RSA.Signing.PublicKey] = [:]) { self.keys = keys }

    /// Reads RSA keys (`kty` RSA, with `kid`, `n`, `e`) from a JWKS document; other keys are skipped.
    public init(jwks body: [UInt8]) throws(IdentityError) {
        guard let document = try? JSONDecoder().decode([String: JSONValue].self, from: Data(body)),
            case .array(let entries)? = document["keys"]
        else { throw .credential("the key set is not a JWKS document") }
        var keys: [String: _RSA.Signing.PublicKey] = [:]
        for entry in entries {
            guard let fields = entry.objectValue, fields["kty"]?.stringValue == "RSA",
                let kid = fields["kid"]?.stringValue,
                let n = fields["n"]?.stringValue.flatMap(Base64URL.decode),
                let e = fields["e"]?.stringValue.flatMap(Base64URL.decode),
                let key = try? _RSA.Signing.PublicKey(n: n, e: e)
            else { continue }
            keys[kid] = key
        }
        self.keys = keys
    }
}

/// The checks on an Entra access token, without I/O: its form, RS256 signature with a published key, issuer,
/// tenant, audience and lifetime.
public struct EntraTokenCheck: Sendable {
    /// The tenant's issuer as OpenID discovery gives it; `https://sts.windows.net/{tenant}/` (v1 tokens) is taken too.
    public var issuer: String
    public var tenant: String
    public var audiences: Set<String>
    public var skewSeconds: Int64

    /// The audiences of Azure Relay tokens, with and without the trailing slash.
    public static let relayAudiences: Set<String> = ["https://relay.azure.net", "https://relay.azure.net/"]

    public init(issuer: String, tenant: String, audiences: Set<String> = relayAudiences, skewSeconds: Int64 = 300) {
        self.issuer = issuer
        self.tenant = tenant
        self.audiences = audiences
        self.skewSeconds = skewSeconds
    }

    /// Whether `token` looks like a JWT rather than a SAS token (three base64url parts).
    public static func isJSONWebToken(_ token: String) -> Bool {
        !token.hasPrefix("SharedAccessSignature")
            && token.split(separator: ".", omittingEmptySubsequences: false).count == 3
    }

    /// The longest token looked at: Entra access tokens stay well under this (past ~200 groups Entra sends an
    /// overage claim instead of the list), and anything longer is refused before it is decoded.
    public static let maxTokenBytes = 16 * 1024
    /// The longest header: `alg`, `kid`, `typ`, `x5t` and a few more fit many times over.
    static let maxHeaderBytes = 2048
    /// How deep arrays and objects may nest in a header (a flat object: 1) and in the claims (Entra's are at
    /// most 2 deep). Checked on the bytes before any JSON decoder sees them: deep nesting is what made a
    /// decoder spend seconds on one small token.
    static let maxHeaderDepth = 2
    static let maxClaimsDepth = 8
    /// The latest `exp`/`nbf` taken: the year 9999; later or fractional-overflowing values are not times.
    static let latestTime: Double = 253_402_300_799

    /// Checks a token. The cost of a refusal is bounded before anything is decoded: the size first, then a
    /// small flat header (`alg`, `kid`), then the signature; only a token signed by the authority's key has its
    /// claims decoded.
    public func validate(_ token: String, keys: EntraKeySet, now: Int64) throws(EntraTokenError) -> EntraPrincipal {
        guard token.utf8.count <= Self.maxTokenBytes else {
            throw .malformed("it is longer than \(Self.maxTokenBytes) bytes")
        }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformed("it has \(parts.count) parts, not 3") }
        guard parts[0].utf8.count <= Self.maxHeaderBytes * 4 / 3 + 4 else {
            throw .malformed("its header is longer than \(Self.maxHeaderBytes) bytes")
        }
        guard let headerBytes = Base64URL.decode(parts[0]) else { throw .malformed("a part is not base64url") }
        let header = try Self.object(headerBytes, maxDepth: Self.maxHeaderDepth, part: "header")
        // The algorithm is fixed here, never taken from the token: `none` and HS256 (with the public key as
        // the HMAC secret) are the classic forgeries.
        let algorithm = header["alg"]?.stringValue ?? ""
        guard algorithm == "RS256" else { throw .unsupportedAlgorithm(String(algorithm.prefix(32))) }
        let kid = header["kid"]?.stringValue ?? ""
        guard let key = keys.keys[kid] else {
            throw keys.keys.isEmpty ? .keysUnavailable : .unknownKey(String(kid.prefix(128)))
        }
        guard let claimBytes = Base64URL.decode(parts[1]), let signature = Base64URL.decode(parts[2]) else {
            throw .malformed("a part is not base64url")
        }
        let signed = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        guard
            key.isValidSignature(
                _RSA.Signing.RSASignature(rawRepresentation: signature), for: SHA256.hash(data: signed),
                padding: .insecurePKCS1v1_5)
        else { throw .invalidSignature }
        let claims = try Self.object(claimBytes, maxDepth: Self.maxClaimsDepth, part: "claims")
        let tokenTenant = claims["tid"]?.stringValue ?? ""
        guard tokenTenant.lowercased() == tenant.lowercased() else { throw .wrongTenant(tokenTenant) }
        let tokenIssuer = claims["iss"]?.stringValue ?? ""
        guard tokenIssuer == issuer || tokenIssuer == "https://sts.windows.net/\(tenant)/" else {
            throw .wrongIssuer(tokenIssuer)
        }
        let audience: [String]
        switch claims["aud"] {
        case .string(let one)?: audience = [one]
        case .array(let many)?: audience = many.compactMap(\.stringValue)
        default: audience = []
        }
        guard audience.contains(where: audiences.contains) else {
            throw .wrongAudience(audience.joined(separator: ", "))
        }
        guard let exp = try Self.time(claims["exp"], name: "exp") else { throw .malformed("it has no exp") }
        guard now <= exp + skewSeconds else { throw .expired(exp) }
        if let nbf = try Self.time(claims["nbf"], name: "nbf"), now + skewSeconds < nbf { throw .notYetValid(nbf) }
        func strings(_ name: String) -> [String] {
            if case .array(let values)? = claims[name] { return values.compactMap(\.stringValue) }
            return []
        }
        return EntraPrincipal(
            objectID: claims["oid"]?.stringValue,
            applicationID: claims["appid"]?.stringValue ?? claims["azp"]?.stringValue, groups: strings("groups"),
            roles: strings("roles"), expiry: exp)
    }

    /// A JSON object whose nesting was checked on its bytes first.
    static func object(_ bytes: [UInt8], maxDepth: Int, part: String) throws(EntraTokenError) -> [String: JSONValue] {
        guard JSONNesting.depth(of: bytes, limit: maxDepth) <= maxDepth else {
            throw .malformed("nesting in its \(part) is deeper than \(maxDepth)")
        }
        guard let object = try? JSONDecoder().decode([String: JSONValue].self, from: Data(bytes)) else {
            throw .malformed("its \(part) is not a JSON object")
        }
        return object
    }

    /// `exp` or `nbf`: absent is nil; a number of whole seconds from 0 to the year 9999 is the time; anything
    /// else (a string, a fraction beyond range, 1e308) refuses the token rather than being ignored or trapping.
    static func time(_ value: JSONValue?, name: String) throws(EntraTokenError) -> Int64? {
        guard let value else { return nil }
        guard let number = value.number, number.isFinite, number >= 0, number <= latestTime else {
            throw .malformed("its \(name) is not a Unix time in seconds")
        }
        return Int64(number)
    }
}

/// How deep arrays and objects nest in JSON text, read from its bytes (strings skipped, escapes honoured);
/// stops counting at `limit + 1`.
public enum JSONNesting {
    public static func depth(of bytes: [UInt8], limit: Int) -> Int {
        var depth = 0
        var deepest = 0
        var inString = false
        var escaped = false
        for byte in bytes {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > deepest {
                    deepest = depth
                    if deepest > limit { return deepest }
                }
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth -= 1
            default: break
            }
        }
        return deepest
    }
}

/// base64url (RFC 4648 §5) without padding, as JWTs use it.
public enum Base64URL {
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var base64 = String(text).replacing("-", with: "+").replacing("_", with: "/")
        while base64.utf8.count % 4 != 0 { base64 += "=" }
        return Data(base64Encoded: base64).map(Array.init)
    }

    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString().replacing("+", with: "-")
            .replacing("/", with: "_").replacing("=", with: "")
    }
}
