import HybridConnections
import Testing

/// Text a peer chose, measured and shown safely: message sizes as JSON counts them, log fields that stay one
/// field, URLs without their credentials.
@Suite struct MessageTextTests {
    @Test(arguments: [
        ("", 2), ("plain", 7), (#"""#, 4), ("\\", 4), ("a\tb", 6), ("\u{1}", 8), ("é", 4),
        (String(repeating: "\"", count: 32_600), 65_202),
    ])
    func encodedLengthIsWhatJSONTakes(text: String, length: Int) {
        #expect(JSONText.encodedLength(text) == length)
        var out = ""
        JSONText.appendString(text, to: &out)
        #expect(out.utf8.count <= length, "appendString never writes more than the bound")
    }

    @Test func aRequestMessageIsMeasuredEscaped() {
        let quotes = String(repeating: "\"", count: 32_600)
        let command = RequestCommand(
            address: "wss://relay/$hc/hc?sb-hc-action=request&sb-hc-id=1", id: "1", requestTarget: "/hc/x",
            method: "GET", remoteEndpoint: RemoteEndpoint(address: "127.0.0.1", port: 1),
            requestHeaders: ["X-Quote": quotes])
        let encoded = ControlMessage.request(command).encoded().utf8.count
        #expect(encoded > 2 * 32_600, "twice the raw bytes")
        #expect(command.encodedSizeBound >= encoded)
        let response = ResponseCommand(requestId: "1", statusCode: 200, responseHeaders: ["X": quotes])
        #expect(response.encodedSizeBound >= ControlMessage.response(response).encoded().utf8.count)
    }

    @Test(arguments: [
        ("/$hc/nope peer=10.9.9.9", #""/$hc/nope peer=10.9.9.9""#), ("plain", "plain"), ("", #""""#),
        (#"say "hi"\"#, #""say \"hi\"\\""#), ("a=b", #""a=b""#), ("x\ny", #"x\ny"#),
    ])
    func logFieldValuesStayOneField(value: String, shown: String) {
        #expect(LogText.fieldValue(value) == shown)
    }

    @Test(arguments: [
        ("http://user:s3cret@proxy:3128", "http://***@proxy:3128"), ("http://proxy:3128", "http://proxy:3128"),
        ("user:pw@host:1", "***@host:1"), ("https://a@b@host/x@y", "https://***@host/x@y"),
    ])
    func credentialsInURLsAreRedacted(url: String, shown: String) {
        #expect(RedactedURL.text(url) == shown)
    }
}
