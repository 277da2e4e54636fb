import HybridConnections
import NIOHTTP1
import RelayIO

/// What a request asks for, decided from its head alone: no token is checked and no listener looked up yet.
enum RequestRoute: Equatable, Sendable {
    /// A WebSocket on `/$hc/`: listen, accept or reject, connect, or an HTTP request's rendezvous.
    case webSocket(HybridConnectionRequest)
    /// The .NET SDK's runtime-information query.
    case runtimeInformation(RequestTarget)
    /// An HTTP-mode request for a listener.
    case httpMode(RequestTarget)
}

/// Classifies request heads: sizes first (414, 431), then the target, then what the path and the upgrade
/// headers together ask for; every way a head can be wrong is a `Refusal` with its status.
enum RequestClassifier {
    static func classify(_ head: HTTPRequestHead, limits: RelayLimits) -> Result<RequestRoute, Refusal> {
        guard head.uri.utf8.count <= limits.maxRequestTargetBytes else {
            return .failure(
                Refusal(
                    status: 414,
                    text: "URITooLong: The request target exceeds \(limits.maxRequestTargetBytes) bytes",
                    reason: "uri_too_long"))
        }
        let headerBytes = head.headers.reduce(head.uri.utf8.count) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
        guard headerBytes <= limits.maxHeaderBytes else {
            return .failure(
                Refusal(
                    status: 431,
                    text: "RequestHeaderFieldsTooLarge: The request headers exceed \(limits.maxHeaderBytes) bytes",
                    reason: "headers_too_large"))
        }
        let target: RequestTarget
        let hybridConnection: HybridConnectionRequest?
        do {
            target = try RequestTarget(parsing: head.uri)
            hybridConnection = try HybridConnectionRequest(target: target)
        } catch {
            return .failure(Refusal.from(error))
        }
        let upgrade = WebSocketHandshake.isUpgradeRequest(head)
        if let hybridConnection {
            guard upgrade else {
                return .failure(Refusal(status: 400, text: RelayErrorText.webSocketOnly, reason: "not_websocket"))
            }
            if let problem = WebSocketHandshake.upgradeProblem(head) {
                return .failure(Refusal(status: 400, text: "BadRequest: \(problem)", reason: "bad_handshake"))
            }
            // A body would keep the request open past its head, and with it a socket nobody answers.
            guard !declaresBody(head) else {
                return .failure(
                    Refusal(
                        status: 400, text: "BadRequest: A WebSocket upgrade request cannot have a body",
                        reason: "upgrade_with_body"))
            }
            return .success(.webSocket(hybridConnection))
        }
        guard !upgrade else {
            return .failure(
                Refusal(
                    status: 400, text: "BadRequest: WebSocket requests must use the /$hc/ path",
                    reason: "websocket_outside_hc"))
        }
        if RuntimeInformation.isQuery(
            method: head.method.rawValue, target: target, processAtHeader: head.headers.first(name: "x-process-at"))
        {
            return .success(.runtimeInformation(target))
        }
        return .success(.httpMode(target))
    }

    /// Whether a request announces a body (`Content-Length` above 0, or any `Transfer-Encoding`).
    static func declaresBody(_ head: HTTPRequestHead) -> Bool {
        if head.headers.contains(name: "transfer-encoding") { return true }
        return head.headers[canonicalForm: "content-length"].contains { $0 != "0" }
    }
}
