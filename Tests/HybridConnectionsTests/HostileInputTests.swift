import Testing

@testable import HybridConnections

/// Input an attacker chooses: extreme token fields, huge paths, header and log injection.
@Suite struct HostileInputTests {
    static let key = "SGVsbG9Xb3JsZFNlY3JldEtleUZvclRlc3RpbmcxMjM0NTY="
    static let rule = AuthorizationRule(keyName: "k", primaryKey: key, rights: [.send])

    func validate(expiry: Int64, now: Int64 = 1_700_000_000) throws(TokenError) -> SharedAccessSignature {
        let token = SharedAccessSignature.make(resource: "http://relay/hc", keyName: "k", key: Self.key, expiry: expiry)
        return try TokenValidator(clockSkew: 300).validate(
            token: token, rules: [Self.rule], hosts: ["relay"], entityPath: "hc", right: .send, now: now)
    }

    @Test func expiryAtTheEdgesOfInt64NeitherTrapsNorPasses() throws {
        #expect(try validate(expiry: .max).expiry == .max)
        #expect(throws: TokenError.expired(expiry: .min)) { try validate(expiry: .min) }
        #expect(throws: TokenError.expired(expiry: 1_699_999_699)) { try validate(expiry: 1_699_999_699) }
        #expect(try validate(expiry: 1_699_999_700).expiry == 1_699_999_700, "the skew still applies")
    }

    @Test func malformedTokenTextIsNotEchoed() {
        let secret = "c2VjcmV0LXBhc3RlZC1pbi10aGUtd3JvbmctcGxhY2U="
        do {
            _ = try SharedAccessSignature(parsing: "\(secret) sr=a")
            Issue.record("parsed")
        } catch {
            #expect(!error.description.contains(secret.prefix(8)))
        }
    }

    @Test func entityResolutionIsLinearInPathSegments() {
        let resolver = EntityResolver(entityNames: ["a", "a/b/c", "deep/one"])
        // 200,000 segments: the old prefix-by-prefix search did about 2·10¹⁰ character copies here.
        let path = "a/b/c" + String(repeating: "/x", count: 200_000)
        let resolved = resolver.resolve(path)
        #expect(resolved?.entity == "a/b/c")
        #expect(resolved?.suffix.utf8.count == 400_000 - 1)
        #expect(resolver.resolve(String(repeating: "z/", count: 200_000)) == nil)
        #expect(resolver.resolve("//a//b/c//d/")! == ("a/b/c", "d"))
        #expect(resolver.resolve("deep/two") == nil)
        #expect(EntityResolver(entityNames: []).resolve("a") == nil)
    }

    @Test(arguments: ["X-Ok", "x-custom_1", "!#$%&'*+-.^_`|~"])
    func tokenHeaderNamesPass(name: String) {
        #expect(HTTPFieldSyntax.isValidName(name))
    }

    @Test(arguments: ["", "Bad Name", "X-Evil\r\nSet-Cookie", "a:b", "ä", "x\u{0}"])
    func otherHeaderNamesAreRefused(name: String) {
        #expect(!HTTPFieldSyntax.isValidName(name))
        #expect(HTTPFieldSyntax.problem(in: [name: "v"]) != nil)
    }

    @Test func headerValuesRefuseControlCharacters() {
        #expect(HTTPFieldSyntax.isValidValue("text/plain; q=0.5\twith tab, ünïcode"))
        for bad in ["a\r\nSet-Cookie: x", "a\nb", "a\rb", "a\u{0}b", "a\u{7F}b", "a\u{1B}[31m"] {
            #expect(!HTTPFieldSyntax.isValidValue(bad), "\(bad.debugDescription)")
        }
        let problem = HTTPFieldSyntax.problem(in: ["X-Ok": "fine", "X-Split": "a\r\nSet-Cookie: s=1"])
        #expect(problem == "header 'X-Split' has a control character in its value")
        #expect(HTTPFieldSyntax.problem(in: ["X-A": "1", "X-B": "2"]) == nil)
        #expect(HTTPFieldSyntax.problem(in: ["X-Evil\r\nSet": "v"])?.contains("\\r\\n") == true)
    }

    @Test func logTextEscapesWhatCouldStartALine() {
        #expect(LogText.escapingControlCharacters("plain text, ünïcode") == "plain text, ünïcode")
        #expect(LogText.escapingControlCharacters("x\nFORGED\r\n") == "x\\nFORGED\\r\\n")
        #expect(
            LogText.escapingControlCharacters("a\u{0}b\u{1B}c\u{85}d\u{2028}") == "a\\u{0}b\\u{1b}c\\u{85}d\\u{2028}")
    }
}
