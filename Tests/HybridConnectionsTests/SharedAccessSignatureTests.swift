import Testing

@testable import HybridConnections

@Suite struct SharedAccessSignatureTests {
    static let key = "SGVsbG9Xb3JsZFNlY3JldEtleUZvclRlc3RpbmcxMjM0NTY="
    static let keyName = "RootManageSharedAccessKey"

    @Test(arguments: [
        ("http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F", "l6b4It2oAUJDaSSiA0r/As20mQ7oWfuZnv9dAOFTAlM="),
        ("http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco", "xy2qWAX6UATGUKOixJwrz5/h58k6NdzPNmD5htwYM+4="),
        ("http%3a%2f%2fcontoso.servicebus.windows.net%2fhyco%2f", "RHc+1aJG41Zqbvg8gBvVaXHs4LeveJG1C7cxJsxThH0="),
    ])
    func referenceVectors(rawResource: String, expected: String) {
        #expect(
            SharedAccessSignature.signature(rawResource: rawResource, rawExpiry: "1700000000", key: Self.key)
                == expected)
    }

    @Test func fullTokenMatchesReference() {
        let token = SharedAccessSignature.make(
            resource: "http://contoso.servicebus.windows.net/hyco/", keyName: Self.keyName, key: Self.key,
            expiry: 1_700_000_000)
        #expect(
            token
                == "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F&sig=l6b4It2oAUJDaSSiA0r%2FAs20mQ7oWfuZnv9dAOFTAlM%3D&se=1700000000&skn=RootManageSharedAccessKey"
        )
    }

    static let rule = AuthorizationRule(keyName: keyName, primaryKey: "wrong", secondaryKey: key, rights: [.listen])
    static let hosts = ["contoso.servicebus.windows.net"]

    func validate(
        _ token: String?, right: AccessRight = .listen, entity: String = "hyco", now: Int64 = 1_700_000_000
    )
        throws(TokenError) -> SharedAccessSignature
    {
        try TokenValidator().validate(
            token: token, rules: [Self.rule], hosts: Self.hosts, entityPath: entity, right: right, now: now)
    }

    @Test func secondaryKeyAndLowercaseEscapesValidate() throws {
        let lower =
            "SharedAccessSignature sr=http%3a%2f%2fcontoso.servicebus.windows.net%2fhyco%2f&sig=RHc%2B1aJG41Zqbvg8gBvVaXHs4LeveJG1C7cxJsxThH0%3D&se=1700000000&skn=RootManageSharedAccessKey"
        let sas = try validate(lower)
        #expect(sas.expiry == 1_700_000_000)
        #expect(sas.resource == "http://contoso.servicebus.windows.net/hyco/")
    }

    @Test func base64DecodedKeyIsRejected() {
        let wrong =
            "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F&sig=4m8Hu1kLwR00YG6iMV7Rh29uBE82sGG0hbdnJjxxVHA%3D&se=1700000000&skn=RootManageSharedAccessKey"
        #expect(throws: TokenError.invalidSignature) { try validate(wrong) }
    }

    @Test func audienceForms() throws {
        for resource in [
            "http://contoso.servicebus.windows.net/hyco", "sb://contoso.servicebus.windows.net/hyco/",
            "https://CONTOSO.servicebus.windows.net:443/$hc/hyco", "http://contoso.servicebus.windows.net/",
            "http://contoso.servicebus.windows.net",
        ] {
            let token = SharedAccessSignature.make(
                resource: resource, keyName: Self.keyName, key: Self.key, expiry: 1_700_000_100)
            _ = try validate(token)
            _ = try validate(token, entity: "hyco/deeper/path")
        }
    }

    @Test func audienceMismatches() {
        for resource in [
            "http://contoso.servicebus.windows.net/other/", "http://evil.example/hyco/",
            "http://contoso.servicebus.windows.net/hycoX", "http://contoso.servicebus.windows.net/hyco/sub",
        ] {
            let token = SharedAccessSignature.make(
                resource: resource, keyName: Self.keyName, key: Self.key, expiry: 1_700_000_100)
            #expect(throws: TokenError.audienceMismatch(audience: resource)) { try validate(token) }
        }
    }

    @Test func expiryHonoursSkew() throws {
        let token = SharedAccessSignature.make(
            resource: "http://contoso.servicebus.windows.net/hyco", keyName: Self.keyName, key: Self.key,
            expiry: 1_700_000_000)
        _ = try validate(token, now: 1_700_000_299)
        #expect(throws: TokenError.expired(expiry: 1_700_000_000)) { try validate(token, now: 1_700_000_301) }
    }

    @Test func rights() throws {
        let token = SharedAccessSignature.make(
            resource: "http://contoso.servicebus.windows.net/hyco", keyName: Self.keyName, key: Self.key,
            expiry: 1_700_000_000)
        #expect(throws: TokenError.insufficientRights(.send)) { try validate(token, right: .send) }
        #expect(TokenError.insufficientRights(.send).httpStatus == 403)
        let manage = AuthorizationRule(keyName: "m", primaryKey: "k", rights: [.manage])
        #expect(manage.grants(.listen) && manage.grants(.send))
    }

    @Test(arguments: [
        "", "SharedAccessSignature", "Bearer abc", "SharedAccessSignature sr=a&sig=b&se=1",
        "SharedAccessSignature sr=a&sig=b&se=x&skn=k", "SharedAccessSignature sr=a&sig=%zz&se=1&skn=k",
        "SharedAccessSignature sr=a sig=b", "SharedAccessSignature noequals", "SharedAccessSignature sr=a&&&",
    ])
    func malformedTokens(token: String) {
        #expect(throws: TokenError.self) { try validate(token) }
    }

    @Test func unknownKeyNameAndMissingToken() {
        let token = SharedAccessSignature.make(
            resource: "http://contoso.servicebus.windows.net/hyco", keyName: "other", key: Self.key,
            expiry: 1_700_000_000)
        #expect(throws: TokenError.unknownKeyName("other")) { try validate(token) }
        #expect(throws: TokenError.missing) { try validate(nil) }
        #expect(throws: TokenError.missing) { try validate("") }
    }

    @Test func errorTextsNeverCarryTheSignature() {
        let error = TokenError.invalidSignature
        #expect(!error.description.contains("sig="))
        #expect(error.reason == "invalid_signature")
    }
}
