import NIOCore

/// Why a connection failed, in words a person can act on: a short bounded `label` for metrics and queries,
/// a `summary` of what happened, and a `hint` of what to try. NIO's and BoringSSL's own texts (kept by
/// callers as `error` where wanted) name internal types and source files instead.
public struct ConnectFailure: Sendable, Equatable {
    public var label: String
    public var summary: String
    public var hint: String?

    public init(_ error: any Error, host: String) {
        self.init(description: "\(error)", host: host)
    }

    /// Classifies by the error's text: NIO wraps the errno, DNS and TLS causes in several types whose
    /// descriptions all carry them.
    public init(description: String, host: String) {
        let text = description.lowercased()
        switch text {
        case _ where text.contains("certificate_verify_failed") || text.contains("unable to get local issuer"):
            self.init(
                "tls_untrusted", "the relay's TLS certificate is not signed by a CA this agent trusts",
                "pass --ca-file with the PEM certificate of the CA that signed it")
        case _ where text.contains("failedtovalidatehostname") || text.contains("unable to validate hostname"):
            self.init(
                "tls_wrong_host", "the relay's TLS certificate does not name \(host)",
                "issue a certificate with \(host) in its subjectAltName (docs/relay.md shows how)")
        case _ where text.contains("handshakefailed") || text.contains("sslerror") || text.contains("boringssl"):
            self.init(
                "tls_failed", "the TLS handshake failed", "check that the relay serves TLS 1.2 or newer on this port")
        case _ where text.contains("connection refused") || text.contains("errno: 111"):
            self.init("connection_refused", "connection refused", "nothing listens there; is the service running?")
        case _ where text.contains("timed out") || text.contains("timeout"):
            self.init("timeout", "no answer in time", "check the address, and firewalls on the way")
        case _ where text.contains("unreachable") || text.contains("no route"):
            self.init("unreachable", "the network is unreachable", "check routing and firewalls to that address")
        case _ where text.contains("resolution") || text.contains("unknownhost") || text.contains("name or service"):
            self.init("name_resolution", "\(host) does not resolve", "check the name, and DNS on this machine")
        case _ where text.contains("connection reset"):
            self.init("connection_reset", "the connection was reset", nil)
        case _ where text.contains("closed during the websocket handshake"):
            self.init(
                "closed_in_handshake", "the connection closed during the WebSocket handshake",
                "if the relay serves TLS, use a wss:// address")
        default:
            self.init("other", description, nil)
        }
    }

    private init(_ label: String, _ summary: String, _ hint: String?) {
        self.label = label
        self.summary = summary
        self.hint = hint
    }

    /// `HOST:PORT: summary; hint`.
    public func text(target: String) -> String {
        "\(target): \(summary)" + (hint.map { "; \($0)" } ?? "")
    }
}
