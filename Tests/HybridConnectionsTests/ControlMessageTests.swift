import Testing

@testable import HybridConnections

@Suite struct ControlMessageTests {
    @Test func acceptEncodesEveryField() throws {
        let accept = AcceptCommand(
            address: "wss://ns:443/$hc/hyco?sb-hc-action=accept&sb-hc-id=1_G0", id: "1",
            connectHeaders: ["Sec-WebSocket-Key": "k", "Host": "ns"],
            remoteEndpoint: RemoteEndpoint(address: "127.0.0.1", port: 5))
        let text = ControlMessage.accept(accept).encoded()
        #expect(text.hasPrefix("{\"accept\":{"))
        #expect(text.contains("\"address\":\"wss://ns:443/$hc/hyco?sb-hc-action=accept&sb-hc-id=1_G0\""))
        #expect(try ControlMessage(decoding: Array(text.utf8)) == .accept(accept))
    }

    @Test func rendezvousOnlyRequestOmitsMethodAndBody() {
        let request = RequestCommand(address: "wss://x", id: "7", requestTarget: "/h", method: "GET", body: false)
        #expect(
            ControlMessage.request(request.rendezvousOnly).encoded()
                == "{\"request\":{\"address\":\"wss://x\",\"id\":\"7\"}}")
    }

    @Test func responseStatusCodeAsNumberOrString() throws {
        let number = try ControlMessage(
            decoding: Array(#"{"response":{"requestId":"1","statusCode":201,"body":true}}"#.utf8))
        #expect(number == .response(ResponseCommand(requestId: "1", statusCode: 201, body: true)))
        let string = try ControlMessage(
            decoding: Array(
                #"{"response":{"requestId":"1","statusCode":"200","responseHeaders":{"content-type":"text/plain"}}}"#
                    .utf8))
        #expect(
            string
                == .response(
                    ResponseCommand(requestId: "1", statusCode: 200, responseHeaders: ["content-type": "text/plain"])))
    }

    @Test func renewToken() throws {
        let message = try ControlMessage(
            decoding: Array(#"{"renewToken":{"token":"SharedAccessSignature sr=a&sig=b&se=1&skn=c"}}"#.utf8))
        #expect(message == .renewToken(RenewTokenCommand(token: "SharedAccessSignature sr=a&sig=b&se=1&skn=c")))
    }

    @Test(arguments: [
        ("", "notJSON"), ("[1]", "notJSON"), ("{", "notJSON"), ("{\"hello\":1}", "unknownCommand"),
        (#"{"response":{"requestId":"1","statusCode":"abc"}}"#, "invalid"),
        (#"{"response":{"requestId":"1","statusCode":42}}"#, "invalid"),
        (#"{"response":{"statusCode":200}}"#, "invalid"),
        (#"{"renewToken":{"token":5}}"#, "invalid"), (#"{"renewToken":null}"#, "invalid"),
    ])
    func malformed(text: String, kind: String) {
        do {
            _ = try ControlMessage(decoding: Array(text.utf8))
            Issue.record("accepted \(text)")
        } catch {
            switch error {
            case .notJSON: #expect(kind == "notJSON")
            case .unknownCommand: #expect(kind == "unknownCommand")
            case .invalid: #expect(kind == "invalid")
            }
        }
    }
}
