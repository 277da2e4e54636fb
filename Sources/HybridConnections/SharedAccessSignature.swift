import Crypto

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A right an authorization rule grants. Manage implies Listen and Send, as in Azure.
public enum AccessRight: String, Codable, Sendable, CaseIterable {
    case listen = "Listen"
    case send = "Send"
    case manage = "Manage"

    /// A right as configurations spell it; anything else is refused naming the ones there are.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let right = AccessRight(rawValue: text) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "'\(text)' is not a right: Listen, Send or Manage")
        }
        self = right
    }
}

/// A shared access authorization rule: a key name, one or two keys, and rights.
public struct AuthorizationRule: Codable, Equatable, Sendable {
    public var keyName: String
    public var primaryKey: String
    public var secondaryKey: String?
    public var rights: Set<AccessRight>

    public init(keyName: String, primaryKey: String, secondaryKey: String? = nil, rights: Set<AccessRight>) {
        self.keyName = keyName
        self.primaryKey = primaryKey
        self.secondaryKey = secondaryKey
        self.rights = rights
    }

    public func grants(_ right: AccessRight) -> Bool {
        rights.contains(right) || rights.contains(.manage)
    }

    var keys: [String] { [primaryKey] + (secondaryKey.map { [$0] } ?? []) }
}

/// Why a token was refused. `httpStatus` is what Azure answers for it.
public enum TokenError: Error, Equatable, Sendable, CustomStringConvertible {
    case missing
    case malformed(String)
    case unknownKeyName(String)
    case invalidSignature
    case expired(expiry: Int64)
    case audienceMismatch(audience: String)
    case insufficientRights(AccessRight)

    public var httpStatus: Int {
        if case .insufficientRights = self { return 403 }
        return 401
    }

    /// Every `reason`, for metrics registered before the first refusal.
    public static let allReasons = [
        TokenError.missing, .malformed(""), .unknownKeyName(""), .invalidSignature, .expired(expiry: 0),
        .audienceMismatch(audience: ""), .insufficientRights(.listen),
    ].map(\.reason)

    /// A short stable label for metrics and logs.
    public var reason: String {
        switch self {
        case .missing: return "missing"
        case .malformed: return "malformed"
        case .unknownKeyName: return "unknown_key_name"
        case .invalidSignature: return "invalid_signature"
        case .expired: return "expired"
        case .audienceMismatch: return "audience_mismatch"
        case .insufficientRights: return "insufficient_rights"
        }
    }

    public var description: String {
        switch self {
        case .missing: return "MissingToken: The request has no authorization token"
        case .malformed(let why): return "MalformedToken: The token is not a SharedAccessSignature: \(why)"
        case .unknownKeyName(let name):
            return "InvalidSignature: The token has an invalid signature (unknown key name '\(name)')"
        case .invalidSignature: return "InvalidSignature: The token has an invalid signature"
        case .expired(let expiry): return "ExpiredToken: The token is expired. Expiration time: \(expiry)"
        case .audienceMismatch(let audience):
            return "InvalidAudience: The token audience '\(audience)' does not cover this endpoint"
        case .insufficientRights(let right):
            return "Unauthorized access. '\(right.rawValue)' claim(s) are required to perform this operation"
        }
    }
}

/// A parsed `SharedAccessSignature sr=…&sig=…&se=…&skn=…` token (reference §2).
public struct SharedAccessSignature: Equatable, Sendable {
    /// `sr` exactly as it stands in the token: the signature covers these bytes, not a re-encoding.
    public var rawResource: String
    /// `sig` decoded once: base64 text.
    public var signature: String
    public var rawExpiry: String
    public var expiry: Int64
    public var keyName: String

    public static let scheme = "SharedAccessSignature"

    public init(parsing token: String) throws(TokenError) {
        // Tokens are ASCII: spaces and tabs are told apart by their byte, not by a Unicode property lookup per
        // character (2 % of the relay's CPU under new-tunnel load); other white space still separates.
        let parts = token.split { character in
            if let ascii = character.asciiValue { return ascii == 0x20 || (0x09...0x0D).contains(ascii) }
            return character.isWhitespace
        }
        guard parts.count == 2 else { throw .malformed("expected '\(Self.scheme) <fields>'") }
        guard parts[0].lowercased() == Self.scheme.lowercased() else {
            // The scheme is not echoed: a mistyped token may be a secret pasted in the wrong place.
            throw .malformed("unknown scheme")
        }
        var fields: [String: Substring] = [:]
        for field in parts[1].split(separator: "&") {
            let pair = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pair.count == 2 else { throw .malformed("field without '='") }
            fields[pair[0].lowercased()] = pair[1]
        }
        guard let sr = fields["sr"], let sig = fields["sig"], let se = fields["se"], let skn = fields["skn"] else {
            throw .malformed("sr, sig, se and skn are all required")
        }
        guard let expiry = Int64(se) else { throw .malformed("se is not a number") }
        guard let signature = PercentEncoding.decode(sig, plusAsSpace: false),
            let keyName = PercentEncoding.decode(skn, plusAsSpace: false),
            PercentEncoding.decode(sr, plusAsSpace: false) != nil
        else { throw .malformed("bad percent-escape") }
        rawResource = String(sr)
        self.signature = signature
        rawExpiry = String(se)
        self.expiry = expiry
        self.keyName = keyName
    }

    /// The decoded audience URI.
    public var resource: String { PercentEncoding.decode(rawResource, plusAsSpace: false) ?? rawResource }

    /// HMAC-SHA256 over `raw_sr + "\n" + se`, keyed with the key's UTF-8 text (not base64-decoded).
    public static func signature(rawResource: String, rawExpiry: String, key: String) -> String {
        let mac = HMAC<SHA256>.authenticationCode(
            for: Array("\(rawResource)\n\(rawExpiry)".utf8), using: SymmetricKey(data: Array(key.utf8)))
        return Data(mac).base64EncodedString()
    }

    /// Builds a token for `resource` (for example `http://host/entity/`), valid until `expiry`
    /// (Unix seconds).
    public static func make(resource: String, keyName: String, key: String, expiry: Int64) -> String {
        let rawResource = PercentEncoding.encode(resource)
        let sig = signature(rawResource: rawResource, rawExpiry: String(expiry), key: key)
        return
            "\(scheme) sr=\(rawResource)&sig=\(PercentEncoding.encode(sig))&se=\(expiry)&skn=\(PercentEncoding.encode(keyName))"
    }

    /// Checks the signature against `key` in constant time.
    public func isSigned(with key: String) -> Bool {
        guard let provided = Data(base64Encoded: signature) else { return false }
        return HMAC<SHA256>.isValidAuthenticationCode(
            provided, authenticating: Array("\(rawResource)\n\(rawExpiry)".utf8),
            using: SymmetricKey(data: Array(key.utf8)))
    }
}

/// Tokens whose signatures a validator checked, kept by whoever owns the keys (a relay's policy, rebuilt when
/// its keys are reloaded, so a removed key stops validating at once).
public protocol VerifiedSignatures: Sendable {
    func signature(token: String, entityPath: String) -> SharedAccessSignature?
    func remember(_ signature: SharedAccessSignature, token: String, entityPath: String)
}

/// Validates SAS tokens for one request (reference §2.4).
public struct TokenValidator: Sendable {
    /// Tolerated clock difference at handshake time, in seconds.
    public var clockSkew: Int64

    public init(clockSkew: Int64 = 300) {
        self.clockSkew = clockSkew
    }

    /// - Parameters:
    ///   - rules: the entity's rules first, then the namespace's; the first rule with the key name decides.
    ///   - hosts: host names the audience may name (the public host and the `Host` the client used).
    ///   - entityPath: the entity the request addresses.
    ///   - now: Unix seconds.
    ///   - verified: tokens whose signature was already checked against these `rules`, for `entityPath`: a
    ///     client reuses its token for every sender, and parsing and signing it again was 5 % of the relay's CPU.
    ///     Only verified tokens go in; expiry, audience and rights are checked on every call.
    public func validate(
        token: String?, rules: [AuthorizationRule], hosts: [String], entityPath: String, right: AccessRight,
        now: Int64, verified: (any VerifiedSignatures)? = nil
    ) throws(TokenError) -> SharedAccessSignature {
        guard let token, !token.isEmpty else { throw .missing }
        let sas: SharedAccessSignature
        let rule: AuthorizationRule
        if let known = verified?.signature(token: token, entityPath: entityPath),
            let knownRule = rules.first(where: { $0.keyName == known.keyName })
        {
            sas = known
            rule = knownRule
        } else {
            sas = try SharedAccessSignature(parsing: token)
            guard let found = rules.first(where: { $0.keyName == sas.keyName }) else {
                throw .unknownKeyName(sas.keyName)
            }
            guard found.keys.contains(where: sas.isSigned(with:)) else { throw .invalidSignature }
            rule = found
            verified?.remember(sas, token: token, entityPath: entityPath)
        }
        // `now - clockSkew` cannot overflow for any real clock; `expiry + clockSkew` does for `se` near Int64.max.
        guard sas.expiry >= now - clockSkew else { throw .expired(expiry: sas.expiry) }
        guard Audience(sas.resource).covers(hosts: hosts, entityPath: entityPath) else {
            throw .audienceMismatch(audience: sas.resource)
        }
        guard rule.grants(right) else { throw .insufficientRights(right) }
        return sas
    }
}

/// A token audience normalised for comparison: scheme, port, `$hc/` and trailing `/` do not matter;
/// host and path compare case-insensitively.
public struct Audience: Equatable, Sendable {
    public var host: String
    public var pathSegments: [String]

    public init(_ uri: String) {
        var rest = Substring(uri)
        if let colon = rest.firstIndex(of: ":"), rest[colon...].hasPrefix("://") {
            rest = rest[colon...].dropFirst(3)
        }
        rest = rest.prefix { $0 != "?" && $0 != "#" }
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        host = Self.hostWithoutPort(authority).lowercased()
        var segments = path.split(separator: "/").map { $0.lowercased() }
        if segments.first == "$hc" { segments.removeFirst() }
        pathSegments = segments
    }

    static func hostWithoutPort(_ authority: Substring) -> Substring {
        let hostPart = authority.split(separator: "@").last ?? authority
        if hostPart.hasPrefix("[") {
            return hostPart.prefix { $0 != "]" }.dropFirst()
        }
        return hostPart.prefix { $0 != ":" }
    }

    /// "A SAS token is valid for all resources under the resource URI": whole-segment prefix.
    public func covers(hosts: [String], entityPath: String) -> Bool {
        guard hosts.contains(where: { Self.hostWithoutPort(Substring($0)).lowercased() == host }) else { return false }
        let target = entityPath.split(separator: "/").map { $0.lowercased() }
        return pathSegments.count <= target.count && zip(pathSegments, target).allSatisfy { $0 == $1 }
    }
}
