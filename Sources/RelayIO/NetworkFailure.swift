import NIOCore

/// Why a connection failed, in words a person can act on: a short bounded `label` for metrics and queries,
/// a `summary` of what happened, and a `hint` of what to try. NIO's and BoringSSL's own texts (kept by
/// callers as `error` where wanted) name internal types and source files instead.
public struct ConnectFailure: Sendable, Equatable {
    /// `HOST:PORT` that was dialled.
    public var target: String
    public var label: String
    public var summary: String
    public var hint: String?

    public init(_ error: any Error, host: String, port: Int) {
        self.init(description: "\(error)", host: host, port: port)
    }

    public init(_ error: any Error, url: WebSocketURL) {
        self.init(error, host: url.host, port: url.port)
    }

    /// Classifies by the error's text: NIO wraps the errno, DNS and TLS causes in several types whose
    /// descriptions all carry them.
    public init(description: String, host: String, port: Int) {
        target = "\(host):\(port)"
        (label, summary, hint) = ("other", description, nil)
        let text = description.lowercased()
        switch text {
        case _ where text.contains("certificate_verify_failed") || text.contains("unable to get local issuer"):
            set(
                "tls_untrusted", "the relay's TLS certificate is not signed by a CA this agent trusts",
                "pass --ca-file with the PEM certificate of the CA that signed it")
        case _ where text.contains("failedtovalidatehostname") || text.contains("unable to validate hostname"):
            set(
                "tls_wrong_host", "the relay's TLS certificate does not name \(host)",
                "issue a certificate with \(host) in its subjectAltName (docs/relay.md shows how)")
        case _ where text.contains("handshakefailed") || text.contains("sslerror") || text.contains("boringssl"):
            set(
                "tls_failed", "the TLS handshake failed", "check that the relay serves TLS 1.2 or newer on this port")
        case _ where text.contains("connection refused") || text.contains("errno: 111"):
            set("connection_refused", "connection refused", "nothing listens there; is the service running?")
        case _ where text.contains("timed out") || text.contains("timeout"):
            set("timeout", "no answer in time", "check the address, and firewalls on the way")
        case _ where text.contains("unreachable") || text.contains("no route"):
            set("unreachable", "the network is unreachable", "check routing and firewalls to that address")
        case _ where text.contains("resolution") || text.contains("unknownhost") || text.contains("name or service"):
            set("name_resolution", "\(host) does not resolve", "check the name, and DNS on this machine")
        case _ where text.contains("connection reset"):
            set("connection_reset", "the connection was reset", nil)
        case _ where text.contains("closed during the websocket handshake"):
            set(
                "closed_in_handshake", "the connection closed during the WebSocket handshake",
                "if the relay serves TLS, use a wss:// address")
        default:
            break
        }
    }

    private mutating func set(_ label: String, _ summary: String, _ hint: String?) {
        self.label = label
        self.summary = summary
        self.hint = hint
    }

    /// `HOST:PORT: summary; hint`.
    public var text: String {
        "\(target): \(summary)" + (hint.map { "; \($0)" } ?? "")
    }
}
