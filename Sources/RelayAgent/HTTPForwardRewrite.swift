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
    /// unreserved characters are decoded (`%2e` is `.`), so what the target resolves is what was checked. Read as
    /// bytes, not characters (a combining mark cannot hide a `..`). Refused: what a target might decode into a
    /// separator or a dot later (an encoded slash or backslash, a `%` not followed by two hex digits, as in
    /// `%%32%65`), a raw backslash, `#`, control or non-ASCII byte in the path, and a `..` that climbs above the
    /// start, which with a prefix means out of it. A segment is a dot-segment also when parameters follow it
    /// (`..;x`), as some servers read it.
    static func confined(_ path: String) throws(PathEscape) -> String {
        let bytes = Array(path.utf8)
        let queryStart = bytes.firstIndex(of: UInt8(ascii: "?")) ?? bytes.count
        let raw = bytes[..<queryStart]
        guard !bytes.contains(UInt8(ascii: "#")) else { throw PathEscape(reason: "the path holds a '#'") }
        guard !raw.contains(where: { $0 < 0x21 || $0 >= 0x7F || $0 == UInt8(ascii: "\\") }) else {
            throw PathEscape(reason: "the path holds a backslash, a control character or a raw non-ASCII byte")
        }
        guard let decoded = decodingUnreserved(raw) else {
            throw PathEscape(reason: "the path holds a '%' that is not followed by two hex digits")
        }
        let lowered = decoded.map { $0 | 0x20 }
        for escape in ["%2f", "%5c"] where lowered.firstRange(of: Array(escape.utf8)) != nil {
            throw PathEscape(reason: "the path holds an encoded slash or backslash")
        }
        var kept: [ArraySlice<UInt8>] = []
        var trailingSlash = false
        for segment in decoded.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropFirst() {
            let bare = segment.prefix { $0 != UInt8(ascii: ";") }
            trailingSlash = false
            if bare.elementsEqual([UInt8(ascii: ".")]) {
                trailingSlash = true
            } else if bare.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                guard !kept.isEmpty else { throw PathEscape(reason: "the path climbs above the target's path prefix") }
                kept.removeLast()
                trailingSlash = true
            } else {
                kept.append(segment)
            }
        }
        var result: [UInt8] = [UInt8(ascii: "/")]
        for (index, segment) in kept.enumerated() {
            if index > 0 { result.append(UInt8(ascii: "/")) }
            result += segment
        }
        if trailingSlash && result.count > 1 { result.append(UInt8(ascii: "/")) }
        result += bytes[queryStart...]
        return String(decoding: result, as: UTF8.self)
    }

    /// Percent-encoded unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`) decoded, every other escape kept;
    /// nil when a `%` is not followed by two hex digits.
    static func decodingUnreserved(_ bytes: ArraySlice<UInt8>) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        func hex(_ byte: UInt8) -> UInt8? {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            guard byte == UInt8(ascii: "%") else {
                out.append(byte)
                index += 1
                continue
            }
            guard index + 2 < bytes.endIndex, let high = hex(bytes[index + 1]), let low = hex(bytes[index + 2]) else {
                return nil
            }
            let value = high << 4 | low
            let unreserved =
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(value)
                || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(value)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(value)
                || value == UInt8(ascii: "-") || value == UInt8(ascii: ".") || value == UInt8(ascii: "_")
                || value == UInt8(ascii: "~")
            if unreserved {
                out.append(value)
            } else {
                out += bytes[index...(index + 2)]
            }
            index += 3
        }
        return out
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
