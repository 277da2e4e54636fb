import Logging
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

    private let channel: any Channel

    public var localAddress: SocketAddress? { channel.localAddress }

    private init(channel: any Channel) { self.channel = channel }

    public static func start(
        host: String, port: Int, metrics: RelayMetrics, readiness: @escaping Readiness,
        listeners: (@Sendable () -> [LiveListenerInfo])? = nil, group: any EventLoopGroup, logger: Logger
    ) async throws -> TelemetryServer {
        let inspection = Inspection(tunnels: metrics.liveTunnels, listeners: listeners)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        TelemetryHTTPHandler(metrics: metrics, readiness: readiness, inspection: inspection))
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
    private var head: HTTPRequestHead?

    init(metrics: RelayMetrics, readiness: @escaping TelemetryServer.Readiness, inspection: Inspection) {
        self.metrics = metrics
        self.readiness = readiness
        self.inspection = inspection
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
        switch (head.method, path) {
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
