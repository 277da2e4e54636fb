import HybridConnections
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import RelayIO
import RelayTelemetry
import Tracing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The public side (azbridge `-L`): binds local TCP ports; every accepted connection opens its own
/// sender WebSocket to the relay, sends the preamble, and pumps bytes.
public final class ClientAgent: Sendable {
    /// One bound port: what it forwards to, with which credentials.
    struct BindingKey: Hashable {
        var relayName: String
        var binding: LocalBinding
        var access: RelayAccess
    }

    private struct Settings: Sendable {
        var tlsContext: NIOSSLContext?
        var group: any EventLoopGroup
        var logger: Logger
        var metrics: RelayMetrics
        var tracer: HopTracer
        var allowedSources: AddressFilter?
        /// Permission bits for the Unix sockets bound (default: what the umask leaves).
        var socketMode: mode_t?
        /// A UDP flow with no datagram either way for this long is closed.
        var udpIdleTimeout: TimeAmount
        var udpFlowLimits: UDPFlowLimits
        var counter: TunnelCounter
    }

    private let settings: Settings
    private let bound = NIOLockedValueBox<[(key: BindingKey, channel: any Channel)]>([])
    /// What each relay said about each hybrid connection at the last probe, by relay name.
    private let probes = NIOLockedValueBox<[String: ProbeOutcome]>([:])

    /// The bound addresses, in configuration order.
    public var localAddresses: [SocketAddress] { bound.withLockedValue { $0.compactMap(\.channel.localAddress) } }

    public var tunnelCount: Int { settings.counter.current }

    private init(settings: Settings) {
        self.settings = settings
    }

    public static func start(
        forwards: [(LocalForward, RelayAccess)], tlsContext: NIOSSLContext?, group: any EventLoopGroup, logger: Logger,
        metrics: RelayMetrics = RelayMetrics(), tracer: HopTracer? = nil, allowedSources: AddressFilter? = nil,
        socketMode: mode_t? = nil, udpIdleTimeout: TimeAmount = defaultUDPIdleTimeout,
        udpFlowLimits: UDPFlowLimits = UDPFlowLimits()
    ) async throws -> ClientAgent {
        let agent = ClientAgent(
            settings: Settings(
                tlsContext: tlsContext, group: group, logger: logger, metrics: metrics,
                tracer: tracer ?? HopTracer(logger: logger), allowedSources: allowedSources, socketMode: socketMode,
                udpIdleTimeout: udpIdleTimeout, udpFlowLimits: udpFlowLimits,
                counter: TunnelCounter(gauge: metrics.activeTunnels(role: .client))))
        do {
            _ = try await agent.reload(forwards: forwards)
        } catch {
            await agent.closePorts()
            throw error
        }
        return agent
    }

    /// Asks the relay about every hybrid connection this client forwards to, for as long as the client runs:
    /// a client whose hybrid connection does not exist, or whose key is refused, says so at start and in
    /// `/readyz` instead of failing every connection later, and a relay that stops answering takes `/readyz`
    /// down with it. A ready or unreachable relay is asked again every `interval`; a refusal or a missing
    /// entity, which take an operator to fix, every `slowInterval` (each refused ask is an authentication
    /// failure at the relay).
    public func watchRelays(interval: Duration = .seconds(10), slowInterval: Duration = .seconds(120)) async {
        let watched = Dictionary(
            bound.withLockedValue { $0.map { ($0.key.relayName, $0.key.access) } },
            uniquingKeysWith: { first, _ in first })
        var due: [String: ContinuousClock.Instant] = [:]
        while !watched.isEmpty && !Task.isCancelled {
            let now = ContinuousClock.now
            for (relayName, access) in watched.sorted(by: { $0.key < $1.key }) where (due[relayName] ?? now) <= now {
                let outcome = await RelayProbe.probe(
                    access: access, relayName: relayName, tlsContext: settings.tlsContext, group: settings.group)
                let previous = probes.withLockedValue { probes in
                    defer { probes[relayName] = outcome }
                    return probes[relayName]
                }
                if previous != outcome {
                    settings.logger.log(
                        level: outcome.isReady ? .info : .warning, "relay probed",
                        metadata: ["relay_name": "\(relayName)", "relay": "\(access.base)", "result": "\(outcome)"])
                }
                let retryIn = outcome.asksAgainSoon ? interval : slowInterval
                due[relayName] = .now + retryIn
            }
            try? await Task.sleep(for: interval)
        }
    }

    /// Ready while every port is bound and the relay answered the latest ask for each hybrid connection with a
    /// listener online (not yet asked is not ready): with no edge listening, every connection a balancer sends
    /// here would be refused, so the balancer should send it elsewhere.
    public var readiness: (ready: Bool, detail: String) {
        let relayNames = Set(bound.withLockedValue { $0.map(\.key.relayName) })
        let problems = probes.withLockedValue { probes in
            relayNames.sorted().compactMap { name -> String? in
                guard let outcome = probes[name] else { return "\(name): relay not asked yet" }
                if case .ready(listeners: 0) = outcome {
                    return "\(name): no listener online at the relay (no edge listens on this hybrid connection)"
                }
                return outcome.isReady ? nil : "\(name): \(outcome)"
            }
        }
        guard problems.isEmpty else { return (false, problems.joined(separator: "; ")) }
        return (true, "\(localAddresses.count) client port(s) bound")
    }

    /// Makes the bound ports match `forwards`: binds what is new, closes what is gone, keeps the rest.
    /// Tunnels already open are never touched, whatever their port's fate.
    @discardableResult
    public func reload(forwards: [(LocalForward, RelayAccess)]) async throws -> (added: Int, removed: Int) {
        let wanted = forwards.flatMap { forward, access in
            forward.bindings.map { (BindingKey(relayName: forward.relayName, binding: $0, access: access), forward) }
        }
        let wantedKeys = Set(wanted.map(\.0))
        let (kept, gone) = bound.withLockedValue { bound in
            let gone = bound.filter { !wantedKeys.contains($0.key) }
            bound.removeAll { !wantedKeys.contains($0.key) }
            return (Set(bound.map(\.key)), gone)
        }
        for (key, channel) in gone {
            try? await channel.close()
            if let path = key.binding.socketPath { UnixSocketFile.remove(path) }
            settings.logger.info(
                "client port closed", metadata: ["relay_name": "\(key.relayName)", "bind": "\(key.binding.endpoint)"])
        }
        var added = 0
        for (key, forward) in wanted where !kept.contains(key) {
            let channel = try await bind(key: key, forward: forward)
            bound.withLockedValue { $0.append((key, channel)) }
            added += 1
        }
        return (added, gone.count)
    }

    /// A UDP port: every source address is a flow with a tunnel of its own (`UDPRouter`).
    private func bindUDP(
        binding: LocalBinding, forward: LocalForward, access: RelayAccess, purpose: String
    ) async throws -> any Channel {
        let settings = self.settings
        let counters = UDPCounters(role: .client, metrics: settings.metrics)
        do {
            return try await DatagramBootstrap(group: settings.group)
                .channelOption(.recvAllocator, value: UDPCounters.receiveAllocator)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let router = UDPRouter(
                            counters: counters, idleTimeout: settings.udpIdleTimeout, limits: settings.udpFlowLimits,
                            allowedSources: settings.allowedSources, logger: settings.logger
                        ) { route, eventLoop in
                            Self.openSender(
                                on: eventLoop, peer: route.source.hostAndPort,
                                local: NIOLoopBound(route, eventLoop: eventLoop),
                                forward: forward, binding: binding, access: access, tlsContext: settings.tlsContext,
                                counter: settings.counter, metrics: settings.metrics, tracer: settings.tracer,
                                logger: settings.logger)
                        }
                        try channel.pipeline.syncOperations.addHandler(router)
                    }
                }
                .bind(host: binding.bindAddress, port: binding.port).get()
        } catch {
            throw BindFailure(error, host: binding.bindAddress, port: binding.port, what: purpose)
        }
    }

    private func bind(key: BindingKey, forward: LocalForward) async throws -> any Channel {
        let binding = key.binding
        let purpose = "relay '\(forward.relayName)'"
        let channel =
            binding.udp
            ? try await bindUDP(binding: binding, forward: forward, access: key.access, purpose: purpose)
            : try await bindStream(key: key, forward: forward, purpose: purpose)
        settings.logger.info(
            "client port bound",
            metadata: [
                "bind": "\(binding.socketPath.map { "unix:\($0)" } ?? channel.localAddress?.hostAndPort ?? "?")",
                "relay_name": "\(forward.relayName)",
                "port_name": "\(binding.portName)", "relay": "\(key.access.base)",
            ])
        return channel
    }

    /// A TCP port or a Unix socket: every accepted connection is a tunnel.
    private func bindStream(key: BindingKey, forward: LocalForward, purpose: String) async throws -> any Channel {
        let settings = self.settings
        let binding = key.binding
        let access = key.access
        let isSocket = binding.socketPath != nil
        var bootstrap = ServerBootstrap(group: settings.group)
            .serverChannelOption(.backlog, value: 1024)
        if !isSocket {
            // TCP only: a Unix socket refuses it.
            bootstrap = bootstrap.serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        }
        bootstrap = bootstrap.childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try SocketTuning.apply(to: channel, noDelay: !isSocket, remoteHalfClosure: true)
                // A Unix socket's peers are local processes, kept out by the file's mode rather than by address.
                if !isSocket, let allowed = settings.allowedSources,
                    !allowed.allows(channel.remoteAddress?.ipAddress ?? "")
                {
                    // Refused before any relay traffic: the port is not an open door.
                    settings.metrics.refused(role: .client, reason: "source_not_allowed", status: 0)
                    settings.logger.warning(
                        "connection refused: source not allowed",
                        metadata: ["peer": "\(channel.remoteAddress?.hostAndPort ?? "?")"])
                    channel.close(promise: nil)
                    return
                }
                let tcp = TunnelTCPHandler()
                // The sender opens once the connection is registered and active: opened from here, a fast
                // relay could complete the upgrade first under a burst of accepts, and the tunnel would
                // take the not-yet-active connection for one already closed.
                let upBytes = settings.metrics.bytes(role: .client, direction: .up)
                tcp.countBytes = { upBytes.increment(by: Int64($0)) }
                tcp.onActive = { [tcp] in
                    Self.openSender(
                        on: channel.eventLoop, peer: channel.remoteAddress?.hostAndPort ?? "?",
                        local: NIOLoopBound(tcp, eventLoop: channel.eventLoop), forward: forward,
                        binding: binding, access: access, tlsContext: settings.tlsContext,
                        counter: settings.counter, metrics: settings.metrics, tracer: settings.tracer,
                        logger: settings.logger)
                }
                try channel.pipeline.syncOperations.addHandler(tcp)
            }
        }
        let channel: any Channel
        if let path = binding.socketPath {
            try await UnixSocketFile.prepare(path, group: settings.group)
            channel = try await bootstrap.bindGuarded(
                unixDomainSocketPath: path, socket: "client", purpose: purpose, metrics: settings.metrics,
                logger: settings.logger)
            if let mode = settings.socketMode {
                do {
                    try UnixSocketFile.setMode(path, mode: mode)
                } catch {
                    try? await channel.close()
                    UnixSocketFile.remove(path)
                    throw error
                }
            }
        } else {
            channel = try await bootstrap.bindGuarded(
                host: binding.bindAddress, port: binding.port, socket: "client", purpose: purpose,
                metrics: settings.metrics, logger: settings.logger)
        }
        return channel
    }

    /// Closes every bound port; a Unix socket's file goes with it.
    private func closePorts() async {
        let ports = bound.withLockedValue { bound in
            defer { bound.removeAll() }
            return bound
        }
        for (key, channel) in ports {
            try? await channel.close()
            if let path = key.binding.socketPath { UnixSocketFile.remove(path) }
        }
    }

    /// Stops accepting, then waits up to `grace` for open tunnels to finish.
    public func shutdown(grace: Duration) async {
        await closePorts()
        await settings.counter.waitUntilClosed(timeout: grace)
        settings.logger.info("client stopped", metadata: ["open_tunnels": "\(tunnelCount)"])
    }
}

/// Open tunnels, shared by every connection of an agent.
final class TunnelCounter: Sendable {
    private let work = InFlightWork()
    private let gauge: Gauge

    init(gauge: Gauge) { self.gauge = gauge }

    var current: Int { work.count }

    func opened() {
        work.add(1)
        gauge.increment()
    }

    func closed() {
        work.add(-1)
        gauge.decrement()
    }

    /// Waits up to `timeout` for every open tunnel to close.
    func waitUntilClosed(timeout: Duration) async {
        _ = await work.waitUntilIdle(timeout: timeout)
    }
}

extension ClientAgent {
    /// Opens the sender WebSocket for one accepted connection (or one UDP flow), on that connection's event
    /// loop, so the two sides of the tunnel call each other directly.
    static func openSender(
        on eventLoop: any EventLoop, peer: String, local: NIOLoopBound<any TunnelLocalSide>, forward: LocalForward,
        binding: LocalBinding, access: RelayAccess, tlsContext: NIOSSLContext?, counter: TunnelCounter,
        metrics: RelayMetrics, tracer: HopTracer, logger: Logger
    ) {
        let acceptSpan = tracer.startSpan("client.accept", context: .topLevel, ofKind: .server)
        acceptSpan.attributes["tunnel"] = forward.relayName
        acceptSpan.attributes["port_name"] = binding.portName
        acceptSpan.attributes["bind"] = binding.endpoint
        acceptSpan.attributes["peer"] = peer
        let connectSpan = tracer.startSpan("client.connect", context: acceptSpan.context, ofKind: .client)
        var logger = logger
        logger[metadataKey: "relay_name"] = "\(forward.relayName)"
        logger[metadataKey: "port_name"] = "\(binding.portName)"
        logger[metadataKey: "peer"] = "\(peer)"
        logger[metadataKey: "trace_id"] = "\(acceptSpan.traceContext.traceID)"
        counter.opened()
        metrics.connectionAccepted(role: .client)
        var (headers, _) = access.headers(relayName: forward.relayName)
        // The relay continues this trace; against Azure Relay the header reaches the listener as it is.
        headers.add(name: "traceparent", value: connectSpan.traceContext.traceparent)
        let trackingID = UUID().uuidString.lowercased()
        let url = access.url(relayName: forward.relayName, query: "sb-hc-action=connect&sb-hc-id=\(trackingID)")
        let live = LiveTunnel(
            id: trackingID, entity: forward.relayName, traceID: acceptSpan.traceContext.traceID, peer: peer,
            portName: binding.portName, state: "connecting")
        metrics.liveTunnels.add(live)
        connectSpan.attributes["relay"] = "\(access.base)"
        let started = ContinuousClock.now
        let startedDeadline = NIODeadline.now()
        let downBytes = metrics.bytes(role: .client, direction: .down)
        let tunnelLogger = logger

        /// Ends the tunnel's telemetry when it never opened.
        @Sendable func failed(cause: TunnelCloseCause, outcome: String, status: Int?, message: String) {
            counter.closed()
            metrics.liveTunnels.remove(live)
            metrics.clientConnect(outcome: outcome, seconds: (ContinuousClock.now - started).seconds)
            metrics.tunnelClosed(role: .client, seconds: (ContinuousClock.now - started).seconds, cause: cause)
            if let status { connectSpan.attributes["http.response.status_code"] = status }
            connectSpan.setStatus(SpanStatus(code: .error, message: message))
            connectSpan.end()
            acceptSpan.attributes["close_cause"] = cause.label
            acceptSpan.setStatus(SpanStatus(code: .error, message: message))
            acceptSpan.end()
        }

        WebSocketClient.connect(
            to: url, headers: headers, tlsContext: tlsContext, group: eventLoop, proxy: access.proxy
        ) { webSocket in
            let bridgeSpan = tracer.startSpan("client.bridge", context: acceptSpan.context, ofKind: .internal)
            let handler = TunnelWebSocketHandler(
                role: .sender(portName: binding.portName, mode: binding.udp ? .datagram : .stream), local: local.value,
                started: startedDeadline,
                countBytes: { downBytes.increment(by: Int64($0)) }
            ) { summary in
                counter.closed()
                metrics.liveTunnels.remove(live)
                let seconds = (ContinuousClock.now - started).seconds
                metrics.tunnelClosed(role: .client, seconds: seconds, cause: summary.cause)
                if let ttfb = summary.timeToFirstByte {
                    metrics.timeToFirstByte(role: .client, seconds: ttfb, traceID: acceptSpan.traceContext.traceID)
                }
                bridgeSpan.record(summary)
                bridgeSpan.end()
                acceptSpan.attributes["close_cause"] = summary.causeLabel
                acceptSpan.end()
                // A tunnel the edge or the relay refused is a failure the operator should see.
                tunnelLogger.log(
                    level: summary.failed ? .warning : .info,
                    "tunnel closed",
                    metadata: [
                        "bytes_up": "\(summary.bytesUp)", "bytes_down": "\(summary.bytesDown)",
                        "duration_ms": "\((ContinuousClock.now - started).milliseconds)",
                        "cause": "\(summary.closeCause)", "cause_label": "\(summary.causeLabel)",
                    ])
            }
            handler.live = live
            try webSocket.pipeline.syncOperations.addHandler(handler)
        }.assumeIsolated().whenComplete { result in
            switch result {
            case .success(.upgraded):
                live.update(state: "open")
                metrics.clientConnect(
                    outcome: "connected", seconds: (ContinuousClock.now - started).seconds,
                    traceID: connectSpan.traceContext.traceID)
                connectSpan.attributes["http.response.status_code"] = 101
                connectSpan.end()
                logger.debug(
                    "sender connected", metadata: ["connect_ms": "\((ContinuousClock.now - started).milliseconds)"])
            case .success(.rejected(let status, let reason, _)):
                failed(cause: .relayRefused, outcome: "refused_\(status)", status: status, message: reason)
                logger.warning(
                    "sender refused by relay, closing local connection",
                    metadata: ["status": "\(status)", "cause": "\(reason)"])
                local.value.close()
            case .failure(let error):
                let failure = ConnectFailure(error, url: url)
                failed(cause: .relayUnreachable, outcome: "unreachable", status: nil, message: failure.summary)
                logger.warning(
                    "cannot reach relay, closing local connection",
                    metadata: [
                        "cause": "\(failure.text)", "reason": "\(failure.label)",
                    ])
                local.value.close()
            }
        }
    }
}
