import HybridConnections
import NIOHTTP1
import Testing

@testable import RelayServer

/// Request heads to routes or refusals, without a socket: what the relay decides before any token or
/// listener is looked at.
@Suite struct RequestClassifierTests {
    func head(
        _ uri: String, method: HTTPMethod = .GET, upgrade: Bool = false, _ extra: [(String, String)] = []
    )
        -> HTTPRequestHead
    {
        var headers = HTTPHeaders([("Host", "relay.example")])
        if upgrade {
            headers.add(contentsOf: [
                ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ])
        }
        headers.add(contentsOf: extra)
        return HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)
    }

    func refusal(_ head: HTTPRequestHead, limits: RelayLimits = RelayLimits()) -> Refusal? {
        if case .failure(let refusal) = RequestClassifier.classify(head, limits: limits) { return refusal }
        return nil
    }

    func route(_ head: HTTPRequestHead) -> RequestRoute? {
        try? RequestClassifier.classify(head, limits: RelayLimits()).get()
    }

    @Test func routes() {
        guard case .webSocket(let listen)? = route(head("/$hc/hc?sb-hc-action=listen&sb-hc-id=1", upgrade: true))
        else {
            Issue.record("a listen upgrade is a WebSocket route")
            return
        }
        #expect(listen.action == .listen && listen.path == "hc")
        guard case .webSocket(let connect)? = route(head("/$hc/hc/app?x=1", upgrade: true)) else {
            Issue.record("a sender upgrade is a WebSocket route")
            return
        }
        #expect(connect.action == .connect)
        guard case .httpMode? = route(head("/hc/api", method: .POST)) else {
            Issue.record("a plain request outside /$hc/ is HTTP mode")
            return
        }
        guard case .runtimeInformation? = route(head("/hc?api-version=2016-07", [("X-PROCESS-AT", "ServiceBus")]))
        else {
            Issue.record("the SDK's runtime-information query")
            return
        }
    }

    @Test func refusalsWithTheirStatus() {
        var small = RelayLimits()
        small.maxRequestTargetBytes = 20
        small.maxHeaderBytes = 200
        #expect(refusal(head("/$hc/" + String(repeating: "a", count: 30), upgrade: true), limits: small)?.status == 414)
        #expect(
            refusal(head("/$hc/hc", upgrade: true, [("X-Big", String(repeating: "b", count: 300))]), limits: small)?
                .status == 431)
        #expect(refusal(head("/$hc/hc"))?.reason == "not_websocket")
        #expect(refusal(head("/hc/api", upgrade: true))?.reason == "websocket_outside_hc")
        #expect(refusal(head("/$hc/hc", upgrade: true, [("Content-Length", "5")]))?.reason == "upgrade_with_body")
        #expect(
            refusal(head("/$hc/hc", upgrade: true, [("Transfer-Encoding", "chunked")]))?.reason == "upgrade_with_body")
        #expect(refusal(head("/$hc/hc", upgrade: true, [("Content-Length", "0")])) == nil, "an empty body is none")
        #expect(refusal(head("/$hc/hc?sb-hc-action=fly", upgrade: true))?.status == 400)
        #expect(refusal(head("/$hc/h%zzc", upgrade: true))?.reason == "malformed_url")
        var broken = head("/$hc/hc", upgrade: true)
        broken.headers.replaceOrAdd(name: "Sec-WebSocket-Version", value: "8")
        #expect(refusal(broken)?.reason == "bad_handshake")
    }
}
