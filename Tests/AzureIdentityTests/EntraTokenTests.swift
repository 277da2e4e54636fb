import AzureIdentity
import Crypto
import CryptoExtras
import Testing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Entra access tokens as the relay checks them, made here with keys the test generates.
@Suite struct EntraTokenCheckTests {
    static let key = try! _RSA.Signing.PrivateKey(keySize: .bits2048)
    static let otherKey = try! _RSA.Signing.PrivateKey(keySize: .bits2048)
    let tenant = "3f1c0d5e-0000-4000-8000-000000000001"
    var issuer: String { "https://login.example/\(tenant)/v2.0" }
    let now: Int64 = 1_800_000_000

    var keys: EntraKeySet { EntraKeySet(keys: ["k1": Self.key.publicKey]) }
    var check: EntraTokenCheck { EntraTokenCheck(issuer: issuer, tenant: tenant, skewSeconds: 60) }

    func claims(
        aud: String = "https://relay.azure.net", tid: String? = nil, iss: String? = nil, exp: Int64? = nil,
        nbf: Int64? = nil
    ) -> JSONValue {
        .object([
            "aud": .string(aud), "tid": .string(tid ?? tenant), "iss": .string(iss ?? issuer),
            "exp": .int(exp ?? now + 3600), "nbf": .int(nbf ?? now - 10), "oid": .string("oid-1"),
            "appid": .string("app-1"), "groups": .array([.string("group-1")]), "roles": .array([.string("Relay.Send")]),
        ])
    }

    func token(
        _ claims: JSONValue, alg: String = "RS256", kid: String = "k1",
        key: _RSA.Signing.PrivateKey = EntraTokenCheckTests.key
    ) -> String {
        let header = JSONValue.object(["alg": .string(alg), "kid": .string(kid), "typ": .string("JWT")])
        let input = Base64URL.encode(Array(header.text.utf8)) + "." + Base64URL.encode(Array(claims.text.utf8))
        let signature = try! key.signature(for: SHA256.hash(data: Array(input.utf8)), padding: .insecurePKCS1v1_5)
        return input + "." + Base64URL.encode(signature.rawRepresentation)
    }

    @Test func aGoodTokenNamesItsPrincipal() throws {
        let principal = try check.validate(token(claims()), keys: keys, now: now)
        #expect(principal.objectID == "oid-1" && principal.applicationID == "app-1")
        #expect(principal.identities == ["oid-1", "app-1", "group-1", "Relay.Send"])
        #expect(principal.expiry == now + 3600)
        let slash = try check.validate(token(claims(aud: "https://relay.azure.net/")), keys: keys, now: now)
        #expect(slash.objectID == "oid-1", "the .NET audience form, with its slash")
        let v1 = try check.validate(token(claims(iss: "https://sts.windows.net/\(tenant)/")), keys: keys, now: now)
        #expect(v1.objectID == "oid-1", "v1 tokens carry the sts.windows.net issuer")
    }

    @Test func forgeriesAndMisfitsAreRefused() {
        let good = token(claims())
        let parts = good.split(separator: ".").map(String.init)
        let noneToken =
            Base64URL.encode(Array(#"{"alg":"none","kid":"k1"}"#.utf8)) + "." + parts[1] + "."
        let hmacInput = Base64URL.encode(Array(#"{"alg":"HS256","kid":"k1"}"#.utf8)) + "." + parts[1]
        let hmac = HMAC<SHA256>.authenticationCode(
            for: Array(hmacInput.utf8), using: SymmetricKey(data: Array(Self.key.publicKey.pemRepresentation.utf8)))
        let cases: [(String, EntraTokenError)] = [
            ("not-a-token", .malformed("it has 1 parts, not 3")),
            (noneToken, .unsupportedAlgorithm("none")),
            (hmacInput + "." + Base64URL.encode(hmac), .unsupportedAlgorithm("HS256")),
            (token(claims(), kid: "k9"), .unknownKey("k9")),
            (token(claims(), key: Self.otherKey), .invalidSignature),
            (
                parts[0] + "." + token(claims(exp: now + 7200)).split(separator: ".")[1] + "." + parts[2],
                .invalidSignature
            ),
            (token(claims(aud: "https://management.azure.com")), .wrongAudience("https://management.azure.com")),
            (token(claims(tid: "other-tenant")), .wrongTenant("other-tenant")),
            (
                token(claims(iss: "https://evil.example/\(tenant)/v2.0")),
                .wrongIssuer("https://evil.example/\(tenant)/v2.0")
            ),
            (token(claims(exp: now - 61)), .expired(now - 61)),
            (token(claims(nbf: now + 61)), .notYetValid(now + 61)),
        ]
        for (text, expected) in cases {
            #expect(throws: expected) { try check.validate(text, keys: keys, now: now) }
        }
        #expect(throws: EntraTokenError.keysUnavailable) { try check.validate(good, keys: EntraKeySet(), now: now) }
        #expect(throws: Never.self) { try check.validate(token(claims(exp: now - 59)), keys: keys, now: now) }
    }

    @Test func sizeAndNestingAreRefusedBeforeAnyDecoding() {
        let deep = String(repeating: "[", count: 511) + String(repeating: "]", count: 511)
        let header = Base64URL.encode(Array(#"{"alg":"RS256","kid":"k1","x":\#(deep)}"#.utf8))
        let rest = token(claims()).split(separator: ".").dropFirst().joined(separator: ".")
        #expect(throws: EntraTokenError.malformed("nesting in its header is deeper than 2")) {
            try check.validate(header + "." + rest, keys: keys, now: now)
        }
        let long = token(claims()) + String(repeating: "A", count: EntraTokenCheck.maxTokenBytes)
        #expect(throws: EntraTokenError.malformed("it is longer than \(EntraTokenCheck.maxTokenBytes) bytes")) {
            try check.validate(long, keys: keys, now: now)
        }
        // Deep claims without the key's signature never reach a decoder: the signature is checked first.
        var nested = claims()
        if case .object(var fields) = nested {
            fields["x"] = .array([.array([.array([.array([.array([.array([.array([.array([.array([])])])])])])])])])
            nested = .object(fields)
        }
        #expect(throws: EntraTokenError.invalidSignature) {
            try check.validate(token(nested, key: Self.otherKey), keys: keys, now: now)
        }
        #expect(throws: EntraTokenError.malformed("nesting in its claims is deeper than 8")) {
            try check.validate(token(nested), keys: keys, now: now)
        }
        #expect(JSONNesting.depth(of: Array(#"{"a":"[[[[","b":[1,{"c":"\"]"}]}"#.utf8), limit: 8) == 3)
    }

    @Test(arguments: [
        JSONValue.double(1e308), .double(-1e308), .double(18_446_744_073_709_551_616), .int(Int64.max),
        .string("0"), .double(.nan),
    ])
    func timesThatAreNotTimesRefuseTheToken(value: JSONValue) {
        for name in ["exp", "nbf"] {
            var fields = claims()
            if case .object(var members) = fields {
                members[name] = value
                fields = .object(members)
            }
            #expect(throws: EntraTokenError.malformed("its \(name) is not a Unix time in seconds")) {
                try check.validate(token(fields), keys: keys, now: now)
            }
        }
    }

    @Test func jsonWebTokensAreToldFromSAS() {
        #expect(EntraTokenCheck.isJSONWebToken(token(claims())))
        #expect(!EntraTokenCheck.isJSONWebToken("SharedAccessSignature sr=a&sig=b.c.d&se=1&skn=k"))
        #expect(!EntraTokenCheck.isJSONWebToken("opaque"))
    }

    @Test func keySetsAreReadFromJWKS() throws {
        let publicKey = try Self.key.publicKey.getKeyPrimitives()
        let jwks = JSONValue.object([
            "keys": .array([
                .object([
                    "kty": .string("RSA"), "kid": .string("k1"), "use": .string("sig"),
                    "n": .string(Base64URL.encode(publicKey.modulus)),
                    "e": .string(Base64URL.encode(publicKey.publicExponent)),
                ]),
                .object(["kty": .string("EC"), "kid": .string("ec"), "crv": .string("P-256")]),
            ])
        ])
        let keys = try EntraKeySet(jwks: Array(jwks.text.utf8))
        #expect(Array(keys.keys.keys) == ["k1"], "other key types are skipped")
        #expect(throws: Never.self) { try check.validate(token(claims()), keys: keys, now: now) }
        #expect(throws: IdentityError.self) { try EntraKeySet(jwks: Array("[]".utf8)) }
    }

    @Test func aClientAssertionIsSignedWithTheCertificatesKey() throws {
        let certificate: [UInt8] = Array("not really DER, only hashed".utf8)
        let assertion = ClientAssertion.sign(
            key: Self.key, certificateDER: certificate, clientID: "app-1", audience: "https://login.example/t/token",
            now: Double(now), id: "jti-1")
        let parts = assertion.split(separator: ".").map(String.init)
        #expect(parts.count == 3)
        let header = try JSONDecoder().decode([String: JSONValue].self, from: Data(Base64URL.decode(parts[0])!))
        #expect(header["x5t"]?.stringValue == Base64URL.encode(Insecure.SHA1.hash(data: certificate)))
        let claims = try JSONDecoder().decode([String: JSONValue].self, from: Data(Base64URL.decode(parts[1])!))
        #expect(claims["iss"]?.stringValue == "app-1" && claims["sub"]?.stringValue == "app-1")
        #expect(claims["aud"]?.stringValue == "https://login.example/t/token")
        #expect(claims["exp"]?.number == Double(now + 600))
        let signature = _RSA.Signing.RSASignature(rawRepresentation: Base64URL.decode(parts[2])!)
        #expect(
            Self.key.publicKey.isValidSignature(
                signature, for: SHA256.hash(data: Array((parts[0] + "." + parts[1]).utf8)),
                padding: .insecurePKCS1v1_5))
    }

    @Test func base64URLRoundTrips() {
        for count in 0..<40 {
            let bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 250) }
            let text = Base64URL.encode(bytes)
            #expect(!text.contains("=") && !text.contains("+") && !text.contains("/"))
            #expect(Base64URL.decode(text) == bytes)
        }
    }
}
