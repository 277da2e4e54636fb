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
        "content-length", "host", "expect", "proxy-authorization", "proxy-authenticate",
    ]

    /// A request path that would leave the target's path prefix, with the reason for the 400.
    struct PathEscape: Error, Equatable {
        var reason: String
    }

    /// `path` (and its query, untouched) with dot-segments resolved (RFC 3986 §5.2.4) after percent-encoded
    /// unreserved characters are decoded (`%2e` is `.`), so what the target resolves is what was checked.
    /// Refused: encoded slashes and backslashes (a target may decode them into separators), and `..` that
    /// climbs above the start, which with a prefix means out of it. A segment is a dot-segment also when
    /// parameters follow it (`..;x`), as some servers read it.
    static func confined(_ path: String) throws(PathEscape) -> String {
        let query = path.firstIndex(of: "?").map { path[$0...] } ?? ""
        let decoded = decodingUnreserved(path.prefix(while: { $0 != "?" }))
        let lowered = decoded.lowercased()
        guard !lowered.contains("%2f"), !lowered.contains("%5c"), !decoded.contains("\\") else {
            throw PathEscape(reason: "the path holds an encoded slash or a backslash")
        }
        var kept: [Substring] = []
        let segments = decoded.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        var trailingSlash = false
        for segment in segments {
            let bare = segment.prefix { $0 != ";" }
            trailingSlash = false
            if bare == "." {
                trailingSlash = true
            } else if bare == ".." {
                guard !kept.isEmpty else { throw PathEscape(reason: "the path climbs above the target's path prefix") }
                kept.removeLast()
                trailingSlash = true
            } else {
                kept.append(segment)
            }
        }
        var result = "/" + kept.joined(separator: "/")
        if trailingSlash && result != "/" { result += "/" }
        return result + query
    }

    /// Percent-encoded unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`) decoded; every other escape kept.
    static func decodingUnreserved(_ text: Substring) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        let bytes = Array(text.utf8)
        var index = 0
        func hex(_ byte: UInt8) -> UInt8? {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count, let high = hex(bytes[index + 1]),
                let low = hex(bytes[index + 2])
            {
                let value = high << 4 | low
                let unreserved =
                    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(value)
                    || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(value)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(value)
                    || value == UInt8(ascii: "-") || value == UInt8(ascii: ".") || value == UInt8(ascii: "_")
                    || value == UInt8(ascii: "~")
                if unreserved {
                    out.append(value)
                    index += 3
                    continue
                }
            }
            out.append(bytes[index])
            index += 1
        }
        return String(decoding: out, as: UTF8.self)
    }

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
    /// Throws `PathEscape` when the path would leave `target.pathPrefix`.
    static func requestHead(
        _ request: RequestCommand, relayName: String, target: HTTPTarget, body: RequestBody, frontScheme: String,
        frontHost: String
    ) throws(PathEscape) -> HTTPRequestHead {
        let method = HTTPMethod(rawValue: (request.method ?? "GET").uppercased())
        var path = path(of: request.requestTarget ?? "/", relayName: relayName)
        if !target.pathPrefix.isEmpty { path = try confined(path) }
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: target.pathPrefix + path)
        let fields = (request.requestHeaders ?? [:]).sorted { $0.key.lowercased() < $1.key.lowercased() }
        let dropped = hopByHop.union(connectionOptions(fields))
        var originalHost: String?
        var via: String?
        for (name, value) in fields {
            switch name.lowercased() {
            case "host": originalHost = value
            case "via": via = value
            // Addresses claimed by whoever sent the request are not believed: the target learns the address
            // the relay saw (`remoteEndpoint`), and only that.
            case "x-forwarded-proto", "x-forwarded-host", "x-forwarded-for", "forwarded": break
            case let lowered where dropped.contains(lowered): break
            default: head.headers.add(name: name, value: value)
            }
        }
        head.headers.add(name: "Host", value: target.hostHeader)
        head.headers.add(name: "Via", value: appended(via, "1.1 \(viaName)"))
        if let address = request.remoteEndpoint?.address {
            head.headers.add(name: "X-Forwarded-For", value: address)
        }
        head.headers.add(name: "X-Forwarded-Proto", value: frontScheme)
        head.headers.add(name: "X-Forwarded-Host", value: originalHost ?? frontHost)
        switch body {
        case .complete(let bytes): head.headers.add(name: "Content-Length", value: "\(bytes)")
        case .streamed:
            // The sender's framing, kept: a length it declared reaches the target (many servers and devices read
            // no chunked request bodies); only a body of unknown length goes chunked.
            if let declared = declaredLength(fields) {
                head.headers.add(name: "Content-Length", value: "\(declared)")
            } else {
                head.headers.add(name: "Transfer-Encoding", value: "chunked")
            }
        case .none where !bodilessMethods.contains(method.rawValue):
            head.headers.add(name: "Content-Length", value: "0")
        case .none: break
        }
        // One request per target connection: nothing would reuse it.
        head.headers.add(name: "Connection", value: "close")
        return head
    }

    /// The request's `Content-Length` as the sender gave it (one non-negative number), unless it also came chunked.
    static func declaredLength(_ fields: [(key: String, value: String)]) -> Int? {
        var length: Int?
        for (name, value) in fields {
            switch name.lowercased() {
            case "transfer-encoding": return nil
            case "content-length":
                guard let number = Int(value.trimmingWhitespace()), number >= 0 else { return nil }
                length = number
            default: break
            }
        }
        return length
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
