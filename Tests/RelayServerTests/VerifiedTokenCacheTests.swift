import HybridConnections
import Testing

@testable import RelayServer

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

@Suite struct VerifiedTokenCacheTests {
    static let key = "SGVsbG9Xb3JsZFNlY3JldEtleUZvclRlc3RpbmcxMjM0NTY="
    static let rule = AuthorizationRule(keyName: "send", primaryKey: key, rights: [.send])
    static let hosts = ["relay.example"]

    static func validate(
        _ token: String, cache: VerifiedTokenCache, rules: [AuthorizationRule] = [rule], entity: String = "hc1",
        right: AccessRight = .send, now: Int64 = 1_700_000_000
    ) throws(TokenError) -> Int64 {
        try TokenValidator().validate(
            token: token, rules: rules, hosts: hosts, entityPath: entity, right: right, now: now, verified: cache
        ).expiry
    }

    static func token(expiry: Int64 = 1_700_000_600, key: String = key) -> String {
        SharedAccessSignature.make(resource: "http://relay.example/hc1", keyName: "send", key: key, expiry: expiry)
    }

    @Test func aCachedTokenIsStillCheckedForExpiryAudienceAndRights() throws {
        let cache = VerifiedTokenCache(capacity: 8)
        let token = Self.token()
        #expect(try Self.validate(token, cache: cache) == 1_700_000_600)
        #expect(cache.signature(token: token, entityPath: "hc1") != nil, "verified once, then kept")
        #expect(throws: TokenError.self) { try Self.validate(token, cache: cache, now: 1_700_001_000) }
        #expect(throws: TokenError.self) { try Self.validate(token, cache: cache, right: .listen) }
        #expect(throws: TokenError.self) { try Self.validate(token, cache: cache, entity: "other") }
    }

    @Test func onlyVerifiedTokensAreKeptAndAnotherKeySetDecidesAgain() throws {
        let cache = VerifiedTokenCache(capacity: 8)
        let forged = Self.token(key: "c29tZSBvdGhlciBrZXkgb2YgdGhlIHNhbWUgbGVuZ3RoIQ==")
        #expect(throws: TokenError.invalidSignature) { try Self.validate(forged, cache: cache) }
        #expect(cache.signature(token: forged, entityPath: "hc1") == nil)
        // A tampered copy of a verified token is a different string: verified on its own, and refused.
        let token = Self.token()
        _ = try Self.validate(token, cache: cache)
        let tampered = token.replacing("se=1700000600", with: "se=1800000600")
        #expect(throws: TokenError.invalidSignature) { try Self.validate(tampered, cache: cache) }
        // The rule is gone (a reload makes a new policy and cache; here the old cache sees new rules): no key name.
        #expect(throws: TokenError.self) { try Self.validate(token, cache: VerifiedTokenCache(capacity: 8), rules: []) }
    }

    @Test func theCacheStaysWithinItsCapacity() throws {
        let cache = VerifiedTokenCache(capacity: 4)
        let tokens = (0..<10).map { Self.token(expiry: 1_700_000_600 + Int64($0)) }
        for token in tokens { _ = try Self.validate(token, cache: cache) }
        let kept = tokens.filter { cache.signature(token: $0, entityPath: "hc1") != nil }
        #expect(kept.count <= 4 && kept.contains(tokens.last!))
    }
}
