import Testing

@testable import HybridConnections

@Suite struct RequestTargetTests {
    @Test func listenWithGuidAndToken() throws {
        let target = try RequestTarget(
            parsing: "/$hc/hyco?sb-hc-action=listen&sb-hc-id=4cb5&sb-hc-token=SharedAccessSignature+sr%3Dx%26se%3D1")
        let request = try #require(try HybridConnectionRequest(target: target))
        #expect(request.action == .listen)
        #expect(request.path == "hyco")
        #expect(request.id == "4cb5")
        #expect(request.token == "SharedAccessSignature sr=x&se=1")
    }

    @Test func tokenWithPercentTwentySpace() throws {
        let target = try RequestTarget(parsing: "/$hc/a?sb-hc-token=SharedAccessSignature%20sr%3Dhttp%253A")
        let request = try #require(try HybridConnectionRequest(target: target))
        #expect(request.token == "SharedAccessSignature sr=http%3A")
        #expect(request.action == .connect)
    }

    @Test func connectWithSuffixAndAppQuery() throws {
        let target = try RequestTarget(parsing: "/$hc/hyco/sub/path?a=1&sb-hc-action=connect&sb-hc-undefined&b=x%20y")
        let request = try #require(try HybridConnectionRequest(target: target))
        #expect(request.action == .connect)
        #expect(request.path == "hyco/sub/path")
        #expect(target.applicationQuery == "a=1&sb-hc-undefined&b=x%20y")
        #expect(target.applicationTarget == "/$hc/hyco/sub/path?a=1&sb-hc-undefined&b=x%20y")
    }

    @Test func rejectParametersWithAndWithoutPrefix() throws {
        let prefixed = try #require(
            try HybridConnectionRequest(
                target: RequestTarget(
                    parsing: "/$hc/h?sb-hc-action=accept&sb-hc-id=1&sb-hc-statusCode=403&sb-hc-statusDescription=No+way"
                )))
        #expect(prefixed.action == .accept)
        #expect(prefixed.statusCode == 403)
        #expect(prefixed.statusDescription == "No way")
        let node = try #require(
            try HybridConnectionRequest(
                target: RequestTarget(
                    parsing: "/$hc/h?sb-hc-action=accept&sb-hc-id=1&statusCode=401&statusDescription=Go%20away")))
        #expect(node.statusCode == 401)
        #expect(node.statusDescription == "Go away")
    }

    @Test func notHybridConnectionPath() throws {
        #expect(try HybridConnectionRequest(target: RequestTarget(parsing: "/hyco/abc?x=1")) == nil)
    }

    @Test func malformed() {
        #expect(throws: RequestTargetError.notOriginForm) { try RequestTarget(parsing: "hyco") }
        #expect(throws: RequestTargetError.unknownAction("bogus")) {
            try HybridConnectionRequest(target: RequestTarget(parsing: "/$hc/h?sb-hc-action=bogus"))
        }
        #expect(throws: RequestTargetError.badStatusCode("99")) {
            try HybridConnectionRequest(target: RequestTarget(parsing: "/$hc/h?sb-hc-action=accept&statusCode=99"))
        }
        #expect(throws: RequestTargetError.badStatusCode("abc")) {
            try HybridConnectionRequest(target: RequestTarget(parsing: "/$hc/h?sb-hc-statusCode=abc"))
        }
        #expect(throws: RequestTargetError.badEscape("%G1")) {
            try HybridConnectionRequest(target: RequestTarget(parsing: "/$hc/h?sb-hc-token=%G1"))
        }
        #expect(throws: RequestTargetError.badEscape("/$hc/%")) {
            try HybridConnectionRequest(target: RequestTarget(parsing: "/$hc/%"))
        }
    }

    @Test func longestPrefixEntityResolution() {
        let resolver = EntityResolver(entityNames: ["a", "a/b", "microsoft.hybridcompute/machines/x/y", "Mixed"])
        #expect(resolver.resolve("a/b/c")! == ("a/b", "c"))
        #expect(resolver.resolve("a/c")! == ("a", "c"))
        #expect(resolver.resolve("a")! == ("a", ""))
        #expect(resolver.resolve("mixed/")! == ("Mixed", ""))
        #expect(
            resolver.resolve("microsoft.hybridcompute/machines/x/y/v2")! == (
                "microsoft.hybridcompute/machines/x/y", "v2"
            ))
        #expect(resolver.resolve("ab") == nil)
        #expect(resolver.resolve("") == nil)
    }

    @Test func percentEncodingRoundTrip() {
        let text = "SharedAccessSignature sr=http://h/p&sig=a+b/c="
        #expect(PercentEncoding.decode(PercentEncoding.encode(text), plusAsSpace: false) == text)
        #expect(PercentEncoding.encode("a b~") == "a%20b~")
        #expect(PercentEncoding.decode("%", plusAsSpace: false) == nil)
        #expect(PercentEncoding.decode("%FF", plusAsSpace: false) == nil)
    }
}
