import Crypto
import NIOCore
import NIOHTTP1

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The HTTP/1.1 WebSocket opening handshake (RFC 6455 §4) as pure functions.
public enum WebSocketHandshake {
    static let magic = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
    public static func acceptValue(forKey key: String) -> String {
        Data(Insecure.SHA1.hash(data: Array((key + magic).utf8))).base64EncodedString()
    }

    /// A fresh random `Sec-WebSocket-Key`.
    public static func randomKey() -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        return Data(bytes).base64EncodedString()
    }

    /// Whether a request asks for a WebSocket upgrade (GET, `Upgrade: websocket`, a key, version 13).
    public static func isUpgradeRequest(_ head: HTTPRequestHead) -> Bool {
        head.method == .GET
            && head.headers[canonicalForm: "upgrade"].contains { $0.lowercased() == "websocket" }
            && head.headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
    }

    /// Why a request that asked for an upgrade cannot be upgraded, or nil when it can.
    public static func upgradeProblem(_ head: HTTPRequestHead) -> String? {
        guard let key = head.headers.first(name: "sec-websocket-key"), Data(base64Encoded: key)?.count == 16 else {
            return "Sec-WebSocket-Key is missing or not 16 base64-encoded bytes"
        }
        guard head.headers.first(name: "sec-websocket-version") == "13" else {
            return "Sec-WebSocket-Version must be 13"
        }
        return nil
    }

    /// The first subprotocol the client offered: what the .NET and Node listeners request.
    public static func firstSubprotocol(_ headers: HTTPHeaders) -> String? {
        headers[canonicalForm: "sec-websocket-protocol"].first.map { String($0) }.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The 101 reply; never any `Sec-WebSocket-Extensions`, so payloads stay opaque.
    public static func switchingProtocolsHead(request: HTTPRequestHead, subprotocol: String?) -> HTTPResponseHead {
        var headers = HTTPHeaders()
        headers.add(name: "Upgrade", value: "websocket")
        headers.add(name: "Connection", value: "Upgrade")
        headers.add(
            name: "Sec-WebSocket-Accept",
            value: acceptValue(forKey: request.headers.first(name: "sec-websocket-key") ?? ""))
        if let subprotocol { headers.add(name: "Sec-WebSocket-Protocol", value: subprotocol) }
        return HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers)
    }
}
