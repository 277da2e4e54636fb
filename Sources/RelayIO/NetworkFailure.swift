import NIOCore
import NIOPosix
import NIOSSL
import RelayTelemetry

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why a connection failed, in words a person can act on: a short bounded `label` for metrics and queries,
/// a `summary` of what happened, and a `hint` of what to try. NIO's and BoringSSL's own texts (kept by
/// callers as `error` where wanted) name internal types and source files instead.
public struct ConnectFailure: Sendable, Equatable {
    /// `HOST:PORT` that was dialled.
    public var target: String
    public var label: String
    public var summary: String
    public var hint: String?

    /// Classified by the error's type: NIO's connection errors carry the errno, DNS and timeout causes as
    /// values; BoringSSL reports a failed verification only as reason text inside a typed handshake error.
    public init(_ error: any Error, host: String, port: Int) {
        target = "\(host):\(port)"
        (label, summary, hint) = ("other", ErrorWords.describe(error), nil)
        classify(error, host: host)
    }

    public init(_ error: any Error, url: WebSocketURL) {
        self.init(error, host: url.host, port: url.port)
    }

    /// A Unix socket at `socketPath` could not be connected.
    public init(_ error: any Error, socketPath: String) {
        target = "unix:\(socketPath)"
        (label, summary, hint) = ("other", ErrorWords.describe(error), nil)
        switch (error as? IOError)?.errnoCode {
        case ENOENT:
            set("no_socket", "no socket at \(socketPath)", "is the service running, and is the path right?")
        case EACCES:
            set("permission_denied", "permission denied", "the socket's mode must let this user connect")
        default:
            classify(error, host: socketPath)
        }
    }

    private mutating func classify(_ error: any Error, host: String) {
        switch error {
        case let error as OutboundProxyError:
            set("proxy_refused", error.description, "check the proxy's address and the credentials in its URL")
        case let error as NIOConnectionError:
            // Every address failed: the first one's cause stands for all; with no address, DNS failed.
            if let first = error.connectionErrors.first {
                classify(first.error, host: host)
            } else if error.dnsAError != nil || error.dnsAAAAError != nil {
                set("name_resolution", "\(host) does not resolve", "check the name, and DNS on this machine")
            }
        case let error as IOError:
            switch error.errnoCode {
            case ECONNREFUSED:
                set("connection_refused", "connection refused", "nothing listens there; is the service running?")
            case ETIMEDOUT:
                set("timeout", "no answer in time", "check the address, and firewalls on the way")
            case ENETUNREACH, EHOSTUNREACH:
                set("unreachable", "the network is unreachable", "check routing and firewalls to that address")
            case ECONNRESET:
                set("connection_reset", "the connection was reset", nil)
            default:
                break
            }
        case ChannelError.connectTimeout:
            set("timeout", "no answer in time", "check the address, and firewalls on the way")
        case is SocketAddressError.UnknownHost:
            set("name_resolution", "\(host) does not resolve", "check the name, and DNS on this machine")
        case let error as NIOSSLExtraError where error == .failedToValidateHostname:
            set(
                "tls_wrong_host", "the relay's TLS certificate does not name \(host)",
                "issue a certificate with \(host) in its subjectAltName (docs/relay.md shows how)")
        case let error as NIOSSLError:
            if case .handshakeFailed(.sslError(let reasons)) = error,
                reasons.contains(where: { "\($0)".contains("CERTIFICATE_VERIFY_FAILED") })
            {
                set(
                    "tls_untrusted", "the relay's TLS certificate is not signed by a CA this agent trusts",
                    "pass --ca-file with the PEM certificate of the CA that signed it")
            } else {
                set(
                    "tls_failed", "the TLS handshake failed",
                    "check that the relay serves TLS 1.2 or newer on this port")
            }
        case let error as WebSocketClientError where error.kind == .closedDuringHandshake:
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
