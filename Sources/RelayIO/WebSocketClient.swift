import HybridConnections
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

/// A `ws://` or `wss://` URL split for connecting.
public struct WebSocketURL: Hashable, Sendable, CustomStringConvertible {
    public var secure: Bool
    public var host: String
    public var port: Int
    /// Path and query, origin form.
    public var target: String

    public init(secure: Bool, host: String, port: Int, target: String) {
        self.secure = secure
        self.host = host
        self.port = port
        self.target = target
    }

    /// Parses `ws[s]://host[:port][/path][?query]`; `http[s]` and `sb` are taken as their WebSocket
    /// equivalents (`sb` means `wss`, as the SDKs build it).
    public init?(_ text: String) {
        guard let schemeEnd = text.firstIndex(of: ":"), text[schemeEnd...].hasPrefix("://") else { return nil }
        switch text[..<schemeEnd].lowercased() {
        case "ws", "http": secure = false
        case "wss", "https", "sb": secure = true
        default: return nil
        }
        let rest = text[text.index(schemeEnd, offsetBy: 3)...]
        let authority = rest.prefix { $0 != "/" && $0 != "?" }
        let remainder = rest.dropFirst(authority.count)
        target = remainder.isEmpty ? "/" : (remainder.hasPrefix("?") ? "/" + remainder : String(remainder))
        var hostPart = Substring(authority)
        var portPart: Substring?
        if hostPart.hasPrefix("[") {
            guard let close = hostPart.firstIndex(of: "]") else { return nil }
            let after = hostPart[hostPart.index(after: close)...]
            if after.hasPrefix(":") { portPart = after.dropFirst() } else if !after.isEmpty { return nil }
            hostPart = hostPart[hostPart.index(after: hostPart.startIndex)..<close]
        } else if let colon = hostPart.lastIndex(of: ":") {
            portPart = hostPart[hostPart.index(after: colon)...]
            hostPart = hostPart[..<colon]
        }
        guard !hostPart.isEmpty else { return nil }
        host = String(hostPart)
        if let portPart {
            guard let value = Int(portPart), (1...65535).contains(value) else { return nil }
            port = value
        } else {
            port = secure ? 443 : 80
        }
    }

    /// `Host` header value: the port is omitted when it is the scheme's default.
    public var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (secure ? 443 : 80) ? name : "\(name):\(port)"
    }

    public var description: String { "\(secure ? "wss" : "ws")://\(hostHeader)\(target)" }
}

/// The outcome of a WebSocket client handshake.
public enum WebSocketConnectResult: Sendable {
    /// The channel now carries `WebSocketFrame`s; `configure` has added the caller's handlers.
    case upgraded(any Channel, subprotocol: String?)
    /// The server answered with something other than 101; the channel is closed.
    case rejected(status: Int, reason: String, headers: HTTPHeaders)
}

public struct WebSocketClientError: Error, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case closedDuringHandshake
        case other
    }

    public var kind: Kind
    public var description: String

    public init(_ kind: Kind = .other, description: String) {
        self.kind = kind
        self.description = description
    }
}

/// Opens client WebSockets: TCP (and TLS), the HTTP/1.1 upgrade, then frame codecs.
public enum WebSocketClient {
    /// - Parameters:
    ///   - connectTimeout: limits the TCP connect and, separately, the wait for the handshake response.
    ///   - configure: runs on the channel's event loop once the upgrade succeeded, before any frame is
    ///     read; it adds the handlers that consume frames.
    public static func connect(
        to url: WebSocketURL,
        headers extraHeaders: HTTPHeaders = [:],
        subprotocols: [String] = [],
        tlsContext: NIOSSLContext?,
        group: any EventLoopGroup,
        connectTimeout: TimeAmount = .seconds(30),
        proxy: OutboundProxy? = nil,
        address: String? = nil,
        configure: @escaping @Sendable (any Channel) throws -> Void
    ) -> EventLoopFuture<WebSocketConnectResult> {
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: WebSocketConnectResult.self)
        let key = WebSocketHandshake.randomKey()
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.target)
        head.headers.add(name: "Host", value: url.hostHeader)
        head.headers.add(name: "Upgrade", value: "websocket")
        head.headers.add(name: "Connection", value: "Upgrade")
        head.headers.add(name: "Sec-WebSocket-Key", value: key)
        head.headers.add(name: "Sec-WebSocket-Version", value: "13")
        if !subprotocols.isEmpty {
            head.headers.add(name: "Sec-WebSocket-Protocol", value: subprotocols.joined(separator: ", "))
        }
        head.headers.add(contentsOf: extraHeaders)
        let requestHead = head
        HTTPConnection.connect(
            url: url, tlsContext: tlsContext, eventLoop: eventLoop, connectTimeout: connectTimeout, proxy: proxy,
            address: address
        ) { channel, encoder, decoder in
            try channel.pipeline.syncOperations.addHandler(
                ClientHandshakeHandler(
                    request: requestHead, expectedAccept: WebSocketHandshake.acceptValue(forKey: key),
                    promise: promise, handshakeTimeout: connectTimeout,
                    configure: configure, encoder: encoder, decoder: decoder))
        }.whenFailure { error in
            promise.fail(error)
        }
        return promise.futureResult
    }
}

/// A client HTTP/1.1 connection (to a relay, or an edge's HTTP target): TCP, TLS for `wss`/`https` (with SNI for names), and the HTTP/1.1 codec.
public enum HTTPConnection {
    /// Connects, failing at once when a secure URL comes without a TLS context; through `proxy` with `CONNECT`.
    /// `address` is dialled instead of the URL's host (one of several a name resolves to), which stays in SNI and
    /// the `Host` header.
    public static func connect(
        url: WebSocketURL, tlsContext: NIOSSLContext?, eventLoop: any EventLoop, connectTimeout: TimeAmount,
        proxy: OutboundProxy? = nil, address: String? = nil,
        addHandler:
            @escaping @Sendable (any Channel, HTTPRequestEncoder, ByteToMessageHandler<HTTPResponseDecoder>)
            throws -> Void
    ) -> EventLoopFuture<any Channel> {
        if url.secure && tlsContext == nil {
            return eventLoop.makeFailedFuture(
                WebSocketClientError(description: "\(url) needs TLS but no TLS context was given"))
        }
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try SocketTuning.apply(to: channel, noDelay: true, remoteHalfClosure: false)
                    let sync = channel.pipeline.syncOperations
                    if let proxy {
                        let target = url.host.contains(":") ? "[\(url.host)]:\(url.port)" : "\(url.host):\(url.port)"
                        try sync.addHandler(ProxyConnectHandler(proxy: proxy, target: target))
                    }
                    if url.secure, let tlsContext {
                        let serverName = url.host.first?.isNumber == true || url.host.contains(":") ? nil : url.host
                        try sync.addHandler(NIOSSLClientHandler(context: tlsContext, serverHostname: serverName))
                    }
                    let encoder = HTTPRequestEncoder()
                    let decoder = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes))
                    try sync.addHandler(encoder)
                    try sync.addHandler(decoder)
                    try addHandler(channel, encoder, decoder)
                }
            }
        return SocketTuning.connect(bootstrap, host: proxy?.host ?? address ?? url.host, port: proxy?.port ?? url.port)
    }
}

/// Sends the upgrade request, reads the response, and on 101 swaps the HTTP codec for the frame codec.
final class ClientHandshakeHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = Never
    typealias OutboundOut = HTTPClientRequestPart

    private let request: HTTPRequestHead
    private let expectedAccept: String
    private let promise: EventLoopPromise<WebSocketConnectResult>
    private let configure: @Sendable (any Channel) throws -> Void
    private let encoder: HTTPRequestEncoder
    private let decoder: ByteToMessageHandler<HTTPResponseDecoder>
    private var response: HTTPResponseHead?
    private var rejectionBody = ""
    private let handshakeTimeout: TimeAmount
    private var timeout: Scheduled<Void>?
    private var done = false

    init(
        request: HTTPRequestHead, expectedAccept: String, promise: EventLoopPromise<WebSocketConnectResult>,
        handshakeTimeout: TimeAmount,
        configure: @escaping @Sendable (any Channel) throws -> Void,
        encoder: HTTPRequestEncoder, decoder: ByteToMessageHandler<HTTPResponseDecoder>
    ) {
        self.handshakeTimeout = handshakeTimeout
        self.request = request
        self.expectedAccept = expectedAccept
        self.promise = promise
        self.configure = configure
        self.encoder = encoder
        self.decoder = decoder
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(request)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        // A server that accepts the connection but never answers (a frozen process) must not hold the
        // caller forever.
        timeout = context.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) { [weak self] in
            guard let self, !self.done else { return }
            self.fail(
                context: context,
                WebSocketClientError(description: "no handshake response within \(self.handshakeTimeout)"))
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response = head
        case .body(var chunk):
            // NIO keeps only standard reason phrases for known codes; the relay repeats its phrase in
            // the body, so keep the start of it.
            if rejectionBody.count < 1024, let text = chunk.readString(length: min(chunk.readableBytes, 1024)) {
                rejectionBody += text
            }
        case .end:
            guard let response, !done else { return }
            done = true
            timeout?.cancel()
            finish(context: context, response: response)
        }
    }

    private func finish(context: ChannelHandlerContext, response: HTTPResponseHead) {
        guard response.status == .switchingProtocols else {
            promise.succeed(
                .rejected(
                    status: Int(response.status.code), reason: rejectionReason(response), headers: response.headers))
            context.close(promise: nil)
            return
        }
        guard response.headers.first(name: "sec-websocket-accept") == expectedAccept else {
            fail(context: context, WebSocketClientError(description: "the server sent a wrong Sec-WebSocket-Accept"))
            return
        }
        do {
            try WebSocketPipeline.switchToWebSocket(
                context: context, handshakeHandler: self, httpEncoder: encoder, httpDecoder: decoder,
                frameEncoder: MaskingFrameEncoder()
            ) {
                try configure(context.channel)
            }
            // Succeeded on the next loop turn: this runs inside the HTTP decoder's read, which sees a frame
            // written now (by a caller's callback) as an HTTP request part and traps.
            let result = WebSocketConnectResult.upgraded(
                context.channel, subprotocol: response.headers.first(name: "sec-websocket-protocol"))
            context.eventLoop.assumeIsolated().execute { [promise] in promise.succeed(result) }
        } catch {
            fail(context: context, error)
        }
    }

    private func rejectionReason(_ response: HTTPResponseHead) -> String {
        let body = rejectionBody.trimmingWhitespace()
        return body.isEmpty ? response.status.reasonPhrase : String(body.prefix(512))
    }

    private func fail(context: ChannelHandlerContext, _ error: any Error) {
        done = true
        timeout?.cancel()
        promise.fail(error)
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done { fail(context: context, error) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(
                WebSocketClientError(
                    .closedDuringHandshake, description: "the connection closed during the WebSocket handshake"))
        }
        context.fireChannelInactive()
    }
}
