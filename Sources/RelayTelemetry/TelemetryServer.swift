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

        /// Connections held at once; more are closed as they arrive, and counted. One source address may hold a
        /// quarter of them (at least 4), so one client cannot take every slot from the probes and the scraper.
        public var maxConnections: Int
        /// A connection gets this long from its accept, and from each answer, to send a whole request; then it
        /// is closed, however slowly it was sending (a byte every few seconds does not keep it).
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
        let slots = SidePortSlots(
            maxConnections: access.maxConnections, maxPerSource: max(4, access.maxConnections / 4))
        let throttle = NIOLockedValueBox(LogThrottle(interval: 1))
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let source = channel.remoteAddress?.ipAddress ?? "?"
                    guard slots.take(source: source) else {
                        metrics.sidePortRefused(reason: "connection_limit")
                        let now = Double(NIODeadline.now().uptimeNanoseconds) / 1e9
                        if let suppressed = throttle.withLockedValue({ $0.shouldLog("limit", now: now) }) {
                            logger.warning(
                                "metrics connection refused: the side port holds its most connections (--metrics-max-connections \(access.maxConnections), a quarter of them per source address)",
                                metadata: [
                                    "peer": "\(channel.remoteAddress?.ipAddress ?? "?")", "suppressed": "\(suppressed)",
                                ])
                        }
                        channel.close(promise: nil)
                        return
                    }
                    channel.closeFuture.whenComplete { _ in slots.give(source: source) }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        TelemetryHTTPHandler(
                            metrics: metrics, readiness: readiness, inspection: inspection,
                            bearerToken: access.bearerToken, requestTimeout: access.idleTimeout))
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
    private let expectedToken: [UInt8]?
    private let requestTimeout: TimeAmount
    private var deadline: Scheduled<Void>?
    private var head: HTTPRequestHead?

    init(
        metrics: RelayMetrics, readiness: @escaping TelemetryServer.Readiness, inspection: Inspection,
        bearerToken: String? = nil, requestTimeout: TimeAmount = .seconds(10)
    ) {
        self.metrics = metrics
        self.readiness = readiness
        self.inspection = inspection
        self.requestTimeout = requestTimeout
        expectedToken = bearerToken.map { Array($0.utf8) }
    }

    func handlerAdded(context: ChannelHandlerContext) { armDeadline(context: context) }

    func handlerRemoved(context: ChannelHandlerContext) { deadline?.cancel() }

    /// From now, the connection has `requestTimeout` to send a whole request.
    private func armDeadline(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: requestTimeout) { context.close(promise: nil) }
    }

    /// Whether the request may see `path`: always for the probes, else with the bearer token when one is set
    /// (the scheme in any case, as RFC 9110 §11.1 has it; the token compared in constant time).
    private func authorized(_ head: HTTPRequestHead, path: String) -> Bool {
        guard let expectedToken, path != "/healthz", path != "/readyz" else { return true }
        let given = head.headers.first(name: "authorization") ?? ""
        let scheme = "bearer "
        guard given.utf8.count > scheme.utf8.count, given.prefix(scheme.count).lowercased() == scheme else {
            return false
        }
        let token = Array(given.utf8.dropFirst(scheme.utf8.count))
        guard token.count == expectedToken.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(token, expectedToken) { difference |= a ^ b }
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
        if head.isKeepAlive { armDeadline(context: context) } else { context.close(promise: nil) }
    }
}

@available(*, unavailable)
extension TelemetryHTTPHandler: Sendable {}

/// The side port's connection slots: at most `maxConnections` in all and `maxPerSource` per source address,
/// taken and given back under one lock (connections arrive on every event loop at once).
final class SidePortSlots: Sendable {
    private struct State {
        var total = 0
        var perSource: [String: Int] = [:]
    }

    private let state = NIOLockedValueBox(State())
    let maxConnections: Int
    let maxPerSource: Int

    init(maxConnections: Int, maxPerSource: Int) {
        self.maxConnections = maxConnections
        self.maxPerSource = maxPerSource
    }

    /// Takes a slot for a connection from `source`; false when none is left for it.
    func take(source: String) -> Bool {
        state.withLockedValue { state in
            guard state.total < maxConnections, state.perSource[source, default: 0] < maxPerSource else { return false }
            state.total += 1
            state.perSource[source, default: 0] += 1
            return true
        }
    }

    func give(source: String) {
        state.withLockedValue { state in
            state.total -= 1
            let left = state.perSource[source, default: 1] - 1
            state.perSource[source] = left > 0 ? left : nil
        }
    }
}
