import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// An error in words an operator can act on, for logs, spans and answers: never a NIO call signature
/// (`connect(descriptor:addr:size:)`), an `(errno: 111)`, a type's case name (`failedToLoadCertificate`,
/// `HTTPClientError.remoteConnectionClosed`) or an address's debug form (`[IPv4]127.0.0.1/127.0.0.1:80`).
/// Known errors are said plainly; for any other, those patterns are rewritten in its text.
public enum ErrorWords {
    public static func describe(_ error: any Error) -> String {
        switch error {
        case let error as IOError:
            return errnoWords(error.errnoCode)
        case let error as NIOConnectionError:
            if let first = error.connectionErrors.first {
                return "\(describe(first.error)) (\(address(first.target)))"
            }
            return "the name does not resolve"
        case let error as ChannelError:
            return channelWords(error)
        case is SocketAddressError.UnknownHost:
            return "the name does not resolve"
        case let error as DecodingError:
            return decodingWords(error)
        default:
            return rewritten("\(error)")
        }
    }

    /// `strerror`, lower-cased: "connection refused", "resource temporarily unavailable".
    public static func errnoWords(_ code: CInt) -> String {
        guard let text = strerror(code) else { return "system error \(code)" }
        let words = String(cString: text)
        return words.prefix(1).lowercased() + words.dropFirst()
    }

    /// `127.0.0.1:80` or `[::1]:80` or `unix:/path`.
    public static func address(_ address: SocketAddress) -> String {
        switch address {
        case .unixDomainSocket: return "unix:\(address.pathname ?? "?")"
        default:
            guard let ip = address.ipAddress else { return "?" }
            return ip.contains(":") ? "[\(ip)]:\(address.port ?? 0)" : "\(ip):\(address.port ?? 0)"
        }
    }

    static func channelWords(_ error: ChannelError) -> String {
        switch error {
        case .connectTimeout: return "no answer in time"
        case .ioOnClosedChannel, .alreadyClosed, .outputClosed, .inputClosed: return "the connection is closed"
        case .eof: return "the connection closed"
        case .unremovableHandler, .operationUnsupported, .inappropriateOperationForState:
            return "the connection could not do that now"
        default: return rewritten("\(error)")
        }
    }

    static func decodingWords(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
            return keys.isEmpty ? "the document" : keys.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "\(path(context)): '\(key.stringValue)' is missing"
        case .typeMismatch(let type, let context), .valueNotFound(let type, let context):
            return "\(path(context)): expected \(typeWords(type))"
        case .dataCorrupted(let context):
            return "\(path(context)): \(rewritten(context.debugDescription))"
        @unknown default:
            return "the document does not decode"
        }
    }

    static func typeWords(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "text"
        case is Bool.Type: return "true or false"
        case is Int.Type, is Int64.Type, is UInt16.Type: return "a whole number"
        case is Double.Type: return "a number"
        default: return "a value of another shape"
        }
    }

    /// The patterns of NIO's and Foundation's texts, rewritten in any text: `…(errno: N)` becomes what errno N
    /// means, a NIO call signature goes, `[IPv4]host/ip:port` becomes `ip:port`, `Type.caseName` becomes words.
    public static func rewritten(_ text: String) -> String {
        var out = text
        // "cannot x: connect(descriptor:addr:size:): Connection refused (errno: 111)" -> "cannot x: connection
        // refused": the call signature goes, the system's text and its errno become the errno's words, the
        // context around them stays.
        out.replace(#/[a-z0-9_]+\((?:[A-Za-z]+:)+\): /#) { _ in "" }
        out.replace(#/[A-Z][A-Za-z ,'-]*\)? \(errno: (\d+)\)/#) { match in
            CInt(match.output.1).map(errnoWords) ?? String(match.output.0)
        }
        for marker in ["[IPv4]", "[IPv6]"] {
            while let start = out.firstRange(of: marker) {
                // "[IPv4]127.0.0.1/127.0.0.1:80": the part after the slash is the address.
                let rest = out[start.upperBound...]
                let slash = rest.firstIndex(of: "/") ?? start.upperBound
                out.replaceSubrange(start.lowerBound..<out.index(after: slash), with: "")
            }
        }
        for prefix in ["HTTPClientError.", "NIOSSLError.", "ChannelError.", "NIOConnectionError."] {
            while let range = out.firstRange(of: prefix) {
                let name = out[range.upperBound...].prefix { $0.isLetter || $0.isNumber }
                out.replaceSubrange(range.lowerBound..<name.endIndex, with: words(camelCase: String(name)))
            }
        }
        if out.contains("CERTIFICATE_VERIFY_FAILED") { return "the peer's TLS certificate did not verify" }
        return out
    }

    /// `remoteConnectionClosed` -> "remote connection closed".
    static func words(camelCase name: String) -> String {
        var out = ""
        for character in name {
            if character.isUppercase && !out.isEmpty { out += " " }
            out += character.lowercased()
        }
        return out
    }
}
