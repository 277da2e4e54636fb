import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import RelayIO
import RelayTelemetry

#if canImport(Glibc)
    import Glibc
#endif

/// A running relay: one listening socket serving listeners, senders and HTTP-mode requests.
public final class RelayServer: Sendable {
    public let hub: RelayHub
    private let channel: any Channel

    /// The bound address (useful with port 0).
    public var localAddress: SocketAddress? { channel.localAddress }

    private init(hub: RelayHub, channel: any Channel) {
        self.hub = hub
        self.channel = channel
    }

    /// Validates the configuration, loads TLS material and binds.
    public static func start(
        configuration: RelayConfiguration, group: any EventLoopGroup, logger: Logger,
        metrics: RelayMetrics = RelayMetrics(), tracer: HopTracer? = nil
    ) async throws -> RelayServer {
        try configuration.validate()
        guard let address = HostPort(configuration.listen) else {
            throw ConfigurationError(description: "listen '\(configuration.listen)' is not HOST:PORT")
        }
        let tlsContext = try configuration.tls.map {
            try TLSSetup.serverContext(certificatePath: $0.certificate, keyPath: $0.key)
        }
        let hub = RelayHub(
            configuration: configuration, logger: logger, metrics: metrics, tracer: tracer ?? HopTracer(logger: logger))
        let decoderLimits = configuration.limits.decoderLimits
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        AcceptGuard(socket: "relay", metrics: metrics, logger: logger))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: SocketTuning.writeWaterMark)
            .childChannelOption(
                .recvAllocator,
                value: SocketTuning.receiveAllocator
            )
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tlsContext {
                        try sync.addHandler(NIOSSLServerHandler(context: tlsContext))
                    }
                    let encoder = HTTPResponseEncoder()
                    let decoder = ByteToMessageHandler(
                        HTTPRequestDecoder(
                            leftOverBytesStrategy: .forwardBytes, informationalResponseStrategy: .drop,
                            limitConfiguration: decoderLimits))
                    try sync.addHandler(encoder)
                    try sync.addHandler(decoder)
                    try sync.addHandler(RelayHTTPHandler(hub: hub, encoder: encoder, decoder: decoder))
                }
            }
            .bind(host: address.host, port: address.port)
            .get()
        if let port = channel.localAddress?.port { hub.boundTo(port: port) }
        logger.info(
            "relay listening",
            metadata: [
                "max_connections": "\(hub.connectionLimit)",
                "address": "\(channel.localAddress.map { "\($0)" } ?? configuration.listen)",
                "public_url": "\(hub.publicURL)",
                "hybrid_connections": "\(configuration.hybridConnections.map(\.name).joined(separator: ","))",
            ])
        return RelayServer(hub: hub, channel: channel)
    }

    /// Stops accepting; established connections are left to finish.
    public func stop() async {
        try? await channel.close()
    }
}

/// This process's open-file limit.
enum OpenFiles {
    static var softLimit: Int {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return 1024 }
        return Int(clamping: min(limits.rlim_cur, UInt(Int32.max)))
    }
}
