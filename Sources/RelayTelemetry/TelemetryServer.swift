import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// The side port every role serves with `--metrics HOST:PORT`: `/metrics` (Prometheus text 0.0.4),
/// `/healthz` (the process runs), `/readyz` (the role can do its job: relay listening, edge registered on every
/// relay, client's relay answering), and the inspection API: `/v1/tunnels` (every role) and `/v1/listeners`
/// (the relay).
public final class TelemetryServer: Sendable {
    /// Whether the role is ready, and a line saying why or why not.
    public typealias Readiness = @Sendable () -> (ready: Bool, detail: String)

    /// Who may use the side port and for how long. Its connections are not the role's: they have a cap of
    /// their own, so idle ones can never take the descriptors the role needs, and an idle timeout.
    public struct Access: Sendable {
        public static let defaultMaxConnections = 64
        public static let defaultIdleTimeoutSeconds: Double = 10

        /// Connections held at once; more are closed as they arrive, and counted.
        public var maxConnections: Int
        /// A connection that sends nothing for this long is closed.
        public var idleTimeout: TimeAmount
        /// When set, every path but `/healthz` and `/readyz` wants `Authorization: Bearer <token>`.
        public var bearerToken: String?

        public init(
            maxConnections: Int = defaultMaxConnections,
            idleTimeout: TimeAmount = .milliseconds(Int64(defaultIdleTimeoutSeconds * 1000)), bearerToken: String? = nil
        ) {
            self.maxConnections = maxConnections
            self.idleTimeout = idleTimeout
            self.bearerToken = bearerToken
        }
    }

    private let channel: any Channel

    public var localAddress: SocketAddress? { channel.localAddress }

    private init(channel: any Channel) { self.channel = channel }

    public static func start(
        host: String, port: Int, metrics: RelayMetrics, readiness: @escaping Readiness,
        listeners: (@Sendable () -> [LiveListenerInfo])? = nil, access: Access = Access(), group: any EventLoopGroup,
        logger: Logger
    ) async throws -> TelemetryServer {
        let inspection = Inspection(tunnels: metrics.liveTunnels, listeners: listeners)
        let open = InFlightWork()
        let throttle = NIOLockedValueBox(LogThrottle(interval: 1))
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard open.count < access.maxConnections else {
                        metrics.sidePortRefused(reason: "connection_limit")
                        let now = Double(NIODeadline.now().uptimeNanoseconds) / 1e9
                        if let suppressed = throttle.withLockedValue({ $0.shouldLog("limit", now: now) }) {
                            logger.warning(
                                "metrics connection refused: the side port holds its most connections (--metrics-max-connections \(access.maxConnections))",
                                metadata: [
                                    "peer": "\(channel.remoteAddress?.ipAddress ?? "?")", "suppressed": "\(suppressed)",
                                ])
                        }
                        channel.close(promise: nil)
                        return
                    }
                    open.add(1)
                    channel.closeFuture.whenComplete { _ in open.add(-1) }
                    try channel.pipeline.syncOperations.addHandler(
                        IdleStateHandler(readTimeout: access.idleTimeout))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        TelemetryHTTPHandler(
                            metrics: metrics, readiness: readiness, inspection: inspection,
                            bearerToken: access.bearerToken))
                }
            }
            .bindGuarded(
                host: host, port: port, socket: "metrics", purpose: "--metrics", metrics: metrics, logger: logger)
        return TelemetryServer(channel: channel)
    }

    public func stop() async {
        try? await channel.close()
    }
}

final class TelemetryHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let metrics: RelayMetrics
    private let readiness: TelemetryServer.Readiness
    private let inspection: Inspection
    private let expectedAuthorization: [UInt8]?
    private var head: HTTPRequestHead?

    init(
        metrics: RelayMetrics, readiness: @escaping TelemetryServer.Readiness, inspection: Inspection,
        bearerToken: String? = nil
    ) {
        self.metrics = metrics
        self.readiness = readiness
        self.inspection = inspection
        expectedAuthorization = bearerToken.map { Array("Bearer \($0)".utf8) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Whether the request may see `path`: always for the probes, else with the bearer token when one is set
    /// (compared in constant time).
    private func authorized(_ head: HTTPRequestHead, path: String) -> Bool {
        guard let expectedAuthorization, path != "/healthz", path != "/readyz" else { return true }
        let given = Array((head.headers.first(name: "authorization") ?? "").utf8)
        guard given.count == expectedAuthorization.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(given, expectedAuthorization) { difference |= a ^ b }
        return difference == 0
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(context: context, head: head)
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        let contentType: String
        var body = context.channel.allocator.buffer(capacity: 256)
        var extraHeaders: [(String, String)] = []
        switch (head.method, path) {
        case _ where !authorized(head, path: path):
            metrics.sidePortRefused(reason: "unauthorized")
            status = .unauthorized
            contentType = "text/plain; charset=utf-8"
            extraHeaders.append(("WWW-Authenticate", #"Bearer realm="hyrelay""#))
            body.writeString("unauthorized: send Authorization: Bearer with the token of --metrics-token-file\n")
        case (.GET, "/metrics"):
            status = .ok
            if head.headers[canonicalForm: "accept"].contains(where: { $0.contains("application/openmetrics-text") }) {
                contentType = PrometheusExposition.openMetricsContentType
                body.writeString(metrics.openMetricsExposition())
            } else {
                contentType = PrometheusExposition.textContentType
                body.writeString(metrics.exposition())
            }
        case (.GET, "/healthz"):
            status = .ok
            contentType = "text/plain; charset=utf-8"
            body.writeString("ok\n")
        case (.GET, "/readyz"):
            let (ready, detail) = readiness()
            status = ready ? .ok : .serviceUnavailable
            contentType = "text/plain; charset=utf-8"
            body.writeString(detail + "\n")
        case (.GET, "/v1/tunnels"):
            status = .ok
            contentType = "application/json"
            body.writeString(inspection.tunnelsJSON())
        case (.GET, "/v1/listeners"):
            if let listeners = inspection.listenersJSON() {
                status = .ok
                contentType = "application/json"
                body.writeString(listeners)
            } else {
                status = .notFound
                contentType = "application/json"
                body.writeString(#"{"error":"only a relay has listeners; try /v1/tunnels"}"#)
            }
        case (.GET, _):
            status = .notFound
            contentType = "text/plain; charset=utf-8"
            body.writeString("not found: try /metrics, /healthz, /readyz, /v1/tunnels or /v1/listeners\n")
        default:
            status = .methodNotAllowed
            contentType = "text/plain; charset=utf-8"
            body.writeString("only GET\n")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
            promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        if !head.isKeepAlive { context.close(promise: nil) }
    }
}

@available(*, unavailable)
extension TelemetryHTTPHandler: Sendable {}
