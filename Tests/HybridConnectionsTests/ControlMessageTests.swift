import Testing

@testable import HybridConnections

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

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

@Suite struct AcceptEncodingTests {
    /// What JSONEncoder writes for the same command (the encoder every other message still uses).
    static func viaJSONEncoder(_ accept: AcceptCommand) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return String(decoding: try encoder.encode(["accept": accept]), as: UTF8.self)
    }

    @Test func theDirectWriterMatchesJSONEncoderByteForByte() throws {
        var generator = SystemRandomNumberGenerator()
        let pieces = ["a", "Z", "/", "\"", "\\", "é", "€", "😀", " ", "-", "_", "0", "sb-hc", "$hc", "?", "&", "="]
        func text(_ maxCount: Int) -> String {
            (0..<Int.random(in: 0...maxCount, using: &generator)).map { _ in pieces.randomElement(using: &generator)! }
                .joined()
        }
        for _ in 0..<2000 {
            var headers: [String: String] = [:]
            for _ in 0..<Int.random(in: 0...5, using: &generator) { headers[text(6)] = text(12) }
            let accept = AcceptCommand(
                address: "wss://" + text(20), id: text(8), connectHeaders: headers,
                remoteEndpoint: Bool.random(using: &generator)
                    ? RemoteEndpoint(address: text(8), port: Int.random(in: 0...65535, using: &generator)) : nil)
            let direct = ControlMessage.accept(accept).encoded()
            #expect(direct == (try Self.viaJSONEncoder(accept)))
            #expect(try ControlMessage(decoding: Array(direct.utf8)) == .accept(accept))
        }
    }

    @Test func controlCharactersAreEscapedAndReadBack() throws {
        let accept = AcceptCommand(
            address: "wss://a/\u{0}\u{1F}\n\t\r", id: "\u{7F}\u{2028}", connectHeaders: ["k\u{8}": "v\u{C}"],
            remoteEndpoint: nil)
        let direct = ControlMessage.accept(accept).encoded()
        #expect(!direct.unicodeScalars.contains { $0.value < 0x20 })
        #expect(try ControlMessage(decoding: Array(direct.utf8)) == .accept(accept))
    }
}
