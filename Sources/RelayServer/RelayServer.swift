import AzureIdentity
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import RelayIO
import RelayTelemetry

/// A running relay: one listening socket serving listeners, senders and HTTP-mode requests.
public final class RelayServer: Sendable {
    public let hub: RelayHub
    private let channel: any Channel
    /// Read for every new connection, so a reload can renew the certificate without touching open ones.
    private let tlsContext: NIOLockedValueBox<NIOSSLContext?>
    /// Keeps the Entra signing keys fresh, when the relay accepts Entra tokens.
    private let entraKeys: (task: Task<Void, Never>, http: AzureHTTP)?

    /// The bound address (useful with port 0).
    public var localAddress: SocketAddress? { channel.localAddress }

    private init(
        hub: RelayHub, channel: any Channel, tlsContext: NIOLockedValueBox<NIOSSLContext?>,
        entraKeys: (task: Task<Void, Never>, http: AzureHTTP)?
    ) {
        self.hub = hub
        self.channel = channel
        self.tlsContext = tlsContext
        self.entraKeys = entraKeys
    }

    /// Validates the configuration, loads TLS material and binds.
    /// The handlers of one relay connection behind TLS: the HTTP codec and `RelayHTTPHandler`, which
    /// replaces the codec with the WebSocket handlers on an upgrade.
    static func addHTTPHandlers(to pipeline: ChannelPipeline.SynchronousOperations, hub: RelayHub) throws {
        // The relay frames every response itself (Content-Length, chunked, close-delimited, or none for a HEAD or
        // a 204): NIO's framing would add chunked coding, and its terminator, to a HEAD answer without a length,
        // which a kept-alive client reads as the start of its next response.
        var encoding = HTTPResponseEncoder.Configuration()
        encoding.automaticallySetFramingHeaders = false
        let encoder = HTTPResponseEncoder(configuration: encoding)
        let decoder = ByteToMessageHandler(
            HTTPRequestDecoder(
                leftOverBytesStrategy: .forwardBytes, informationalResponseStrategy: .drop,
                limitConfiguration: hub.limits.decoderLimits))
        try pipeline.addHandler(encoder)
        try pipeline.addHandler(decoder)
        try pipeline.addHandler(RelayHTTPHandler(hub: hub, encoder: encoder, decoder: decoder))
    }

    public static func start(
        configuration: RelayConfiguration, group: any EventLoopGroup, logger: Logger,
        metrics: RelayMetrics = RelayMetrics(), tracer: HopTracer? = nil
    ) async throws -> RelayServer {
        try configuration.validate()
        guard let address = HostPort(configuration.listen) else {
            throw ConfigurationError(
                description:
                    "listen: \(HostPort.problem(configuration.listen) ?? "'\(configuration.listen)' is not HOST:PORT")")
        }
        let tlsContext = NIOLockedValueBox(try Self.loadTLS(configuration))
        var entraKeys: (task: Task<Void, Never>, http: AzureHTTP)?
        var authority: EntraAuthority?
        if let entra = configuration.entra {
            let http = AzureHTTP(requestTimeoutSeconds: 10, group: group)
            let keys = try EntraAuthority(
                authority: entra.authority, tenant: entra.tenant,
                skewSeconds: Int64(configuration.limits.clockSkewSeconds),
                refreshInterval: .seconds(entra.keysRefreshSeconds ?? 3600), http: http)
            // Keys in hand before the first listener comes, when the authority answers; if not, the relay
            // starts anyway (SAS works) and answers Entra tokens 503 until the keys arrive.
            do {
                try await keys.fetch()
                logger.info(
                    "entra tokens accepted",
                    metadata: [
                        "authority": "\(entra.authority)", "tenant": "\(entra.tenant)",
                        "principals": "\(entra.principals.count)",
                    ])
            } catch {
                logger.warning(
                    "entra signing keys not fetched yet; retrying",
                    metadata: ["discovery": "\(keys.discoveryURL)", "cause": "\(error.description)"])
            }
            entraKeys = (Task { await keys.run() }, http)
            authority = keys
        }
        let hub = RelayHub(
            configuration: configuration, logger: logger, metrics: metrics, tracer: tracer ?? HopTracer(logger: logger),
            entraAuthority: authority)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try SocketTuning.apply(to: channel, noDelay: true, remoteHalfClosure: false)
                    let sync = channel.pipeline.syncOperations
                    if let tls = tlsContext.withLockedValue({ $0 }) {
                        try sync.addHandler(NIOSSLServerHandler(context: tls))
                    }
                    try Self.addHTTPHandlers(to: sync, hub: hub)
                }
            }
            .bindGuarded(
                host: address.host, port: address.port, socket: "relay", purpose: "the relay", metrics: metrics,
                logger: logger)
        if let port = channel.localAddress?.port { hub.boundTo(port: port) }
        logger.info(
            "relay listening",
            metadata: [
                "tls": "\(configuration.tls == nil ? "off" : "on")", "max_connections": "\(hub.connectionLimit)",
                "address": "\(channel.localAddress?.hostAndPort ?? configuration.listen)",
                "public_url": "\(hub.publicURL)",
                "hybrid_connections": "\(configuration.hybridConnections.map(\.name).joined(separator: ","))",
            ])
        if configuration.tls == nil, hub.publicURL.lowercased().hasPrefix("wss://") {
            // Right behind a TLS-terminating balancer; wrong when a `tls:` section was meant and mistyped.
            logger.warning(
                "publicURL is wss:// but this relay serves plain ws: terminate TLS in front of it, or configure tls",
                metadata: ["public_url": "\(hub.publicURL)"])
        }
        return RelayServer(hub: hub, channel: channel, tlsContext: tlsContext, entraKeys: entraKeys)
    }

    private static func loadTLS(_ configuration: RelayConfiguration) throws -> NIOSSLContext? {
        try configuration.tls.map { try TLSSetup.serverContext(certificatePath: $0.certificate, keyPath: $0.key) }
    }

    /// Applies a configuration read again (SIGHUP): hybrid connections, rules and keys, limits, public URL,
    /// and the TLS certificate for new connections. Open tunnels and control channels are kept. Throws, and
    /// changes nothing, when the new configuration is invalid or changes what only a restart can.
    public func reload(
        _ configuration: RelayConfiguration
    ) throws -> (
        added: [String], removed: [String], changed: [String]
    ) {
        try configuration.validate()
        let running = hub.configuration
        guard configuration.listen == running.listen else {
            throw ConfigurationError(
                description: "listen cannot change on reload ('\(running.listen)' → '\(configuration.listen)'); restart"
            )
        }
        guard (configuration.tls == nil) == (running.tls == nil) else {
            throw ConfigurationError(description: "tls cannot be switched on or off on reload; restart")
        }
        guard configuration.entra?.authority == running.entra?.authority,
            configuration.entra?.tenant == running.entra?.tenant
        else {
            throw ConfigurationError(
                description: "entra authority and tenant cannot change on reload (principals can); restart")
        }
        let kept = Set(configuration.hybridConnections.map { $0.name.lowercased() })
        if running.hybridConnections.count > 1,
            !running.hybridConnections.contains(where: { kept.contains($0.name.lowercased()) })
        {
            // Every entity gone at once is what a truncated file looks like, rarely what was meant.
            throw ConfigurationError(
                description:
                    "the new configuration removes every hybrid connection (\(running.hybridConnections.count)); configuration not reloaded: restart to replace them all"
            )
        }
        if !running.namespaceRules.isEmpty && configuration.namespaceRules.isEmpty {
            throw ConfigurationError(
                description:
                    "the new configuration removes every namespace rule (\(running.namespaceRules.count)); configuration not reloaded: restart to remove them all"
            )
        }
        let context = try Self.loadTLS(configuration)
        tlsContext.withLockedValue { $0 = context }
        // What differs, by section, for the log: `unchanged` tells an operator the edit did not land.
        var changed: [String] = []
        if running.hybridConnections != configuration.hybridConnections { changed.append("hybridConnections") }
        if running.namespaceRules != configuration.namespaceRules { changed.append("namespaceRules") }
        if running.limits != configuration.limits { changed.append("limits") }
        if running.publicURL != configuration.publicURL { changed.append("publicURL") }
        if running.entra != configuration.entra { changed.append("entra") }
        if running.tls != configuration.tls { changed.append("tls") }
        let (added, removed) = hub.apply(configuration)
        return (added, removed, changed)
    }

    /// Tunnels and rendezvous under way.
    public var tunnelCount: Int { hub.workInFlight }

    /// Drains (SIGTERM): new listeners, senders and HTTP requests are refused with 503, listeners are told
    /// to go elsewhere with 1001, rendezvous under way complete and open tunnels run for up to `grace`;
    /// then the listening socket closes.
    public func shutdown(grace: Duration) async {
        hub.startDraining()
        _ = await hub.work.waitUntilIdle(timeout: grace)
        hub.logger.info("relay stopped", metadata: ["open_tunnels": "\(hub.workInFlight)"])
        await stop()
    }

    /// Stops accepting; established connections are left to finish.
    public func stop() async {
        try? await channel.close()
        if let entraKeys {
            entraKeys.task.cancel()
            await entraKeys.task.value
            await entraKeys.http.shutdown()
        }
    }
}
