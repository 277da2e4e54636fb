import HybridConnections
import NIOHTTP1

/// How an edge's HTTP forwarder turns the relay's `request` into a request for its target, and the target's
/// response head into the `response` message: the rules of a reverse proxy (RFC 9110 §7.6), kept pure.
enum HTTPForwardRewrite {
    /// Who this hop is in `Via`: a pseudonym, as RFC 9110 §7.6.3 allows, so no host name leaks to targets.
    static let viaName = "hyrelay"

    /// Connection-level fields a proxy never passes on (RFC 9110 §7.6.1), plus those it frames itself.
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length", "host", "expect",
    ]

    /// How the request's body reaches the target.
    enum RequestBody: Equatable {
        case none
        /// Whole and known (it came on the control channel): `Content-Length`.
        case complete(bytes: Int)
        /// Streamed from a rendezvous, length unknown: chunked.
        case streamed
    }

    /// The request line and headers for the target.
    /// - Parameters:
    ///   - frontScheme: the scheme senders used at the relay (`https` for Azure Relay), for `X-Forwarded-Proto`.
    ///   - frontHost: the relay's host, for `X-Forwarded-Host` when the request does not name one.
    static func requestHead(
        _ request: RequestCommand, relayName: String, target: HTTPTarget, body: RequestBody, frontScheme: String,
        frontHost: String
    ) -> HTTPRequestHead {
        let method = HTTPMethod(rawValue: (request.method ?? "GET").uppercased())
        var head = HTTPRequestHead(
            version: .http1_1, method: method,
            uri: target.pathPrefix + path(of: request.requestTarget ?? "/", relayName: relayName))
        let fields = (request.requestHeaders ?? [:]).sorted { $0.key.lowercased() < $1.key.lowercased() }
        let dropped = hopByHop.union(connectionOptions(fields))
        var forwardedFor: String?
        var originalHost: String?
        var via: String?
        for (name, value) in fields {
            switch name.lowercased() {
            case "x-forwarded-for": forwardedFor = value
            case "host": originalHost = value
            case "via": via = value
            case "x-forwarded-proto", "x-forwarded-host": break
            case let lowered where dropped.contains(lowered): break
            default: head.headers.add(name: name, value: value)
            }
        }
        head.headers.add(name: "Host", value: target.hostHeader)
        head.headers.add(name: "Via", value: appended(via, "1.1 \(viaName)"))
        if let address = request.remoteEndpoint?.address {
            head.headers.add(name: "X-Forwarded-For", value: appended(forwardedFor, address))
        } else if let forwardedFor {
            head.headers.add(name: "X-Forwarded-For", value: forwardedFor)
        }
        head.headers.add(name: "X-Forwarded-Proto", value: frontScheme)
        head.headers.add(name: "X-Forwarded-Host", value: originalHost ?? frontHost)
        switch body {
        case .complete(let bytes): head.headers.add(name: "Content-Length", value: "\(bytes)")
        case .streamed: head.headers.add(name: "Transfer-Encoding", value: "chunked")
        case .none where !bodilessMethods.contains(method.rawValue):
            head.headers.add(name: "Content-Length", value: "0")
        case .none: break
        }
        // One request per target connection: nothing would reuse it.
        head.headers.add(name: "Connection", value: "close")
        return head
    }

    /// Methods whose requests carry no `Content-Length: 0` when empty (RFC 9110 §8.6: a user agent should not).
    static let bodilessMethods: Set<String> = ["GET", "HEAD", "OPTIONS", "TRACE", "DELETE", "CONNECT"]

    /// The path for the target: `requestTarget` without its leading `/{relayName}` (compared as entity names
    /// are, ignoring case), always starting with `/`.
    static func path(of requestTarget: String, relayName: String) -> String {
        var rest = Substring(requestTarget)
        let entity = "/" + relayName
        if rest.lowercased().hasPrefix(entity.lowercased()) {
            let after = rest.dropFirst(entity.count)
            if after.isEmpty || after.hasPrefix("/") || after.hasPrefix("?") { rest = after }
        }
        return rest.hasPrefix("/") ? String(rest) : "/" + rest
    }

    /// The `response` message for a target's response head: its fields without the connection-level ones
    /// (repeated fields joined with ", ", as the message's one value per name requires), `Via` extended.
    static func responseCommand(_ head: HTTPResponseHead, requestId: String, hasBody: Bool) -> ResponseCommand {
        let fields = head.headers.map { ($0.name, $0.value) }
        let dropped = hopByHop.subtracting(["content-length"]).union(connectionOptions(fields))
        var headers: [String: String] = [:]
        var spelling: [String: String] = [:]
        for (name, value) in fields where !dropped.contains(name.lowercased()) {
            let key = spelling[name.lowercased(), default: name]
            spelling[name.lowercased()] = key
            headers[key] = headers[key].map { "\($0), \(value)" } ?? value
        }
        let viaKey = spelling["via", default: "Via"]
        headers[viaKey] = appended(headers[viaKey], "\(head.version.major).\(head.version.minor) \(viaName)")
        return ResponseCommand(
            requestId: requestId, statusCode: Int(head.status.code), statusDescription: head.status.reasonPhrase,
            responseHeaders: headers, body: hasBody)
    }

    /// Whether a response to `method` with this status has a body (RFC 9112 §6.3).
    static func responseHasBody(status: Int, method: String?) -> Bool {
        !(method?.uppercased() == "HEAD" || (100...199).contains(status) || status == 204 || status == 304)
    }

    /// Fields that the `Connection` header names as this hop's own (RFC 9110 §7.6.1).
    private static func connectionOptions(_ fields: [(String, String)]) -> Set<String> {
        var options = Set<String>()
        for (name, value) in fields where name.lowercased() == "connection" {
            for option in value.split(separator: ",") { options.insert(option.trimmingWhitespace().lowercased()) }
        }
        return options
    }

    private static func appended(_ existing: String?, _ value: String) -> String {
        guard let existing, !existing.isEmpty else { return value }
        return "\(existing), \(value)"
    }
}
