import NIOCore
import NIOHTTP1
import NIOSSL

/// A response to one small request, its body cut at `HTTPProbe.maxBodyBytes`.
public struct HTTPProbeResponse: Sendable {
    public var status: Int
    public var reason: String
    public var headers: HTTPHeaders
    public var body: String

    public init(status: Int, reason: String, headers: HTTPHeaders, body: String) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
    }
}

/// One GET to a relay on a fresh connection, for start-up checks: is it there, does it know the entity,
/// does it take our credentials.
public enum HTTPProbe {
    static let maxBodyBytes = 64 * 1024

    public static func get(
        _ url: WebSocketURL, headers: HTTPHeaders, tlsContext: NIOSSLContext?, group: any EventLoopGroup,
        timeout: TimeAmount = .seconds(10), proxy: OutboundProxy? = nil
    ) -> EventLoopFuture<HTTPProbeResponse> {
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: HTTPProbeResponse.self)
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.target)
        head.headers.add(name: "Host", value: url.hostHeader)
        head.headers.add(name: "Connection", value: "close")
        head.headers.add(contentsOf: headers)
        let request = head
        HTTPConnection.connect(
            url: url, tlsContext: tlsContext, eventLoop: eventLoop, connectTimeout: timeout, proxy: proxy
        ) { channel, _, _ in
            try channel.pipeline.syncOperations.addHandler(ProbeHandler(request: request, promise: promise))
        }
        .whenComplete { result in
            switch result {
            case .success(let channel):
                let deadline = channel.eventLoop.scheduleTask(in: timeout) {
                    promise.fail(WebSocketClientError(description: "no answer within \(timeout)"))
                    channel.close(promise: nil)
                }
                promise.futureResult.whenComplete { _ in deadline.cancel() }
            case .failure(let error):
                promise.fail(error)
            }
        }
        return promise.futureResult
    }
}

final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let request: HTTPRequestHead
    private let promise: EventLoopPromise<HTTPProbeResponse>
    private var head: HTTPResponseHead?
    private var body = ""

    init(request: HTTPRequestHead, promise: EventLoopPromise<HTTPProbeResponse>) {
        self.request = request
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(request)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body(var chunk):
            let room = HTTPProbe.maxBodyBytes - body.utf8.count
            if room > 0, let text = chunk.readString(length: min(room, chunk.readableBytes)) { body += text }
        case .end:
            guard let head else { return }
            promise.succeed(
                HTTPProbeResponse(
                    status: Int(head.status.code), reason: head.status.reasonPhrase, headers: head.headers, body: body))
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(WebSocketClientError(description: "the connection closed before a response"))
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension ProbeHandler: Sendable {}
