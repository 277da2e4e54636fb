import HybridConnections
import NIOCore

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// An HTTP proxy the agents reach the relay through with `CONNECT` (a corporate network's way out): from
/// `--proxy URL`, else `HTTPS_PROXY` (for `wss`) or `HTTP_PROXY` (for `ws`), upper or lower case, unless the
/// relay's host matches `NO_PROXY`. Credentials in the URL (`http://user:password@proxy:3128`) are sent as
/// Basic `Proxy-Authorization`.
public struct OutboundProxy: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// `user:password`, as the URL gave it (percent-decoded).
    public var credentials: String?

    /// Parses `http://[user:password@]host[:port]` (port 80 by default, or 3128 with no scheme).
    public init?(url text: String) {
        var rest = Substring(text)
        var defaultPort = 3128
        if rest.lowercased().hasPrefix("http://") {
            rest = rest.dropFirst(7)
            defaultPort = 80
        } else if rest.contains("://") {
            return nil  // only plain-HTTP proxies speak CONNECT here
        }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            credentials = PercentEncoding.decode(userInfo, plusAsSpace: false) ?? String(userInfo)
            rest = rest[rest.index(after: at)...]
        }
        var portText: Substring?
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { return nil }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            portText = rest[rest.index(after: colon)...]
        } else {
            host = String(rest)
        }
        guard !host.isEmpty else { return nil }
        if let portText {
            guard let number = Int(portText), (1...65535).contains(number) else { return nil }
            port = number
        } else {
            port = defaultPort
        }
    }

    /// The proxy for `url` from `flag` or the environment; nil for a direct connection.
    public static func forRelay(
        _ url: WebSocketURL, flag: String?, environment: [String: String]
    ) throws(OutboundProxyError) -> OutboundProxy? {
        func variable(_ name: String) -> String? {
            (environment[name] ?? environment[name.lowercased()]).flatMap { $0.isEmpty ? nil : $0 }
        }
        let source = flag ?? variable(url.secure ? "HTTPS_PROXY" : "HTTP_PROXY")
        guard let source else { return nil }
        if flag == nil, let noProxy = variable("NO_PROXY"), bypasses(host: url.host, noProxy: noProxy) { return nil }
        guard let proxy = OutboundProxy(url: source) else {
            throw OutboundProxyError(
                description: "'\(RedactedURL.text(source))' is not an HTTP proxy URL (http://[user:password@]host:port)"
            )
        }
        return proxy
    }

    /// `NO_PROXY`: `*`, or comma-separated names, each matching the host or any name under it (`.corp` and
    /// `corp` both match `relay.corp`).
    static func bypasses(host: String, noProxy: String) -> Bool {
        let host = host.lowercased()
        for entry in noProxy.split(separator: ",") {
            let name = entry.filter { $0 != " " && $0 != "\t" }.lowercased()
            if name == "*" { return true }
            let bare = name.hasPrefix(".") ? String(name.dropFirst()) : name
            if !bare.isEmpty && (host == bare || host.hasSuffix("." + bare)) { return true }
        }
        return false
    }

    public var description: String { "http://\(credentials == nil ? "" : "***@")\(host):\(port)" }

    /// The `CONNECT` request for `target` (`host:port`).
    func connectRequest(target: String) -> String {
        var request = "CONNECT \(target) HTTP/1.1\r\nHost: \(target)\r\n"
        if let credentials {
            request += "Proxy-Authorization: Basic \(Data(credentials.utf8).base64EncodedString())\r\n"
        }
        return request + "\r\n"
    }
}

public struct OutboundProxyError: Error, Equatable, Sendable, CustomStringConvertible {
    public var description: String

    public init(description: String) { self.description = description }
}

/// Opens a tunnel through the proxy before anything else on the connection: it holds back `channelActive`,
/// sends `CONNECT`, and on a 2xx answer leaves the pipeline and lets the connection start (TLS, the upgrade) as
/// if it had just opened. Any other answer fails the connection with the proxy's status line.
final class ProxyConnectHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let proxy: OutboundProxy
    private let target: String
    private var received = ByteBuffer()

    init(proxy: OutboundProxy, target: String) {
        self.proxy = proxy
        self.target = target
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: proxy.connectRequest(target: target))), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        received.writeBuffer(&chunk)
        let bytes = received.readableBytesView
        guard let end = bytes.firstRange(of: Array("\r\n\r\n".utf8)) else {
            if received.readableBytes > 16 * 1024 {
                fail(context, "the proxy's answer to CONNECT has no end")
            }
            return
        }
        let head = String(decoding: bytes[..<end.lowerBound], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? head
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let status = Int(parts[1]), (200..<300).contains(status) else {
            fail(context, "the proxy \(proxy.host):\(proxy.port) refused CONNECT \(target): \(statusLine)")
            return
        }
        received.moveReaderIndex(to: end.upperBound)
        let leftover = received
        // Fired before leaving: a removed handler's context reaches nobody.
        context.fireChannelActive()
        if leftover.readableBytes > 0 { context.fireChannelRead(NIOAny(leftover)) }
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
    }

    private func fail(_ context: ChannelHandlerContext, _ why: String) {
        context.fireErrorCaught(OutboundProxyError(description: why))
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension ProxyConnectHandler: Sendable {}
