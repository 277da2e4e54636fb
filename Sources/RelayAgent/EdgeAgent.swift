import HybridConnections
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOWebSocket
import RelayIO
import RelayTelemetry
import Tracing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The firewalled side (azbridge `-T`): holds one listener control channel per relay name, and on
/// each `accept` opens the rendezvous, reads the preamble and dials the configured target.
public final class EdgeAgent: Sendable {
    struct ListenerKey: Hashable {
        var forward: RemoteForward
        var access: RelayAccess
    }

    struct Settings: Sendable {
        var keepAliveInterval: Double
        var tlsContext: NIOSSLContext?
        var group: any EventLoopGroup
        var logger: Logger
        var metrics: RelayMetrics
        var tracer: HopTracer
        var counter: TunnelCounter
        /// HTTP requests being forwarded (`-H`): a drain waits for them as for tunnels.
        var httpExchanges: TunnelCounter
        /// Control channels online per relay name, across relays: the `listeners` gauge.
        var onlineListeners: OnlineListeners
        /// A UDP flow with no datagram either way for this long is closed.
        var udpIdleTimeout = defaultUDPIdleTimeout
        /// How long an HTTP target may take to start its response once it has the request.
        var httpResponseTimeout = defaultHTTPResponseTimeout
    }

    /// How long opening a control channel to the relay (TCP, TLS and the upgrade) may take.
    static let relayConnectTimeout = TimeAmount.seconds(10)
    /// How long the edge's TCP connect to a target may take before the sender is told it failed.
    static let dialTimeout = TimeAmount.seconds(10)

    private let settings: Settings
    private let listeners = NIOLockedValueBox<[(key: ListenerKey, loop: ListenerLoop)]>([])

    private init(settings: Settings) {
        self.settings = settings
    }

    public static func start(
        forwards: [(RemoteForward, RelayAccess)], keepAliveInterval: Double, tlsContext: NIOSSLContext?,
        group: any EventLoopGroup, logger: Logger, metrics: RelayMetrics = RelayMetrics(), tracer: HopTracer? = nil,
        udpIdleTimeout: TimeAmount = defaultUDPIdleTimeout,
        httpResponseTimeout: TimeAmount = defaultHTTPResponseTimeout
    ) -> EdgeAgent {
        metrics.registerDialOutcomes()
        // Offline until registered: an edge that never reaches the relay is a 0, which the listener-down
        // alert sees, not a missing series, which no alert does.
        for (forward, _) in forwards { metrics.listeners(role: .edge, entity: forward.relayName).set(to: 0) }
        let agent = EdgeAgent(
            settings: Settings(
                keepAliveInterval: keepAliveInterval, tlsContext: tlsContext, group: group, logger: logger,
                metrics: metrics, tracer: tracer ?? HopTracer(logger: logger),
                counter: TunnelCounter(gauge: metrics.activeTunnels(role: .edge)),
                httpExchanges: TunnelCounter(gauge: metrics.activeHTTPForwards()),
                onlineListeners: OnlineListeners(metrics: metrics), udpIdleTimeout: udpIdleTimeout,
                httpResponseTimeout: httpResponseTimeout))
        agent.startListeners(for: forwards.map { ListenerKey(forward: $0.0, access: $0.1) })
        return agent
    }

    private func startListeners(for keys: [ListenerKey]) {
        let loops = keys.map {
            (key: $0, loop: ListenerLoop(forward: $0.forward, access: $0.access, settings: settings))
        }
        listeners.withLockedValue { $0 += loops }
        for (_, loop) in loops { loop.start() }
    }

    /// Makes the listeners match `forwards`: starts what is new, stops what is gone (or changed), keeps the
    /// rest. Tunnels already open are never touched.
    @discardableResult
    public func reload(forwards: [(RemoteForward, RelayAccess)]) async -> (added: Int, removed: Int) {
        let wanted = forwards.map { ListenerKey(forward: $0.0, access: $0.1) }
        let wantedKeys = Set(wanted)
        let (kept, gone) = listeners.withLockedValue { listeners in
            let gone = listeners.filter { !wantedKeys.contains($0.key) }
            listeners.removeAll { !wantedKeys.contains($0.key) }
            return (Set(listeners.map(\.key)), gone)
        }
        for (_, loop) in gone { await loop.stop() }
        let added = wanted.filter { !kept.contains($0) }
        startListeners(for: added)
        return (added.count, gone.count)
    }

    /// True once every listener control channel is online.
    public var allOnline: Bool { listeners.withLockedValue { $0.allSatisfy(\.loop.isOnline) } }

    /// Ready while a control channel is registered for every hybrid connection on every relay (and relay
    /// address) it was given; the detail names those that are not.
    public var readiness: (ready: Bool, detail: String) {
        let (total, offline) = listeners.withLockedValue { listeners in
            (
                listeners.count,
                listeners.filter { !$0.loop.isOnline }.map { key, _ in
                    "\(key.forward.relayName) on \(key.access.address ?? key.access.base.description)"
                }.sorted()
            )
        }
        guard offline.isEmpty else { return (false, "not registered: " + offline.joined(separator: ", ")) }
        return (true, "\(total) listener(s) registered")
    }

    public var tunnelCount: Int { settings.counter.current }

    /// Waits until every listener's first open has either succeeded or failed, and returns the first failure
    /// (azbridge's `ExitOnForwardFailure`: a forwarder that cannot start stops the edge), nil when all started.
    public func firstStartFailure() async -> String? {
        while true {
            let outcomes = listeners.withLockedValue { $0.map { ($0.key.forward.relayName, $0.loop.firstOpen) } }
            for (relayName, outcome) in outcomes {
                if case .failed(let why) = outcome { return "\(relayName): \(why)" }
            }
            if outcomes.allSatisfy({ $0.1 == .online }) { return nil }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Waits until every listener is online or `timeout` passes; returns whether they all are.
    public func waitUntilOnline(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !allOnline && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return allOnline
    }

    /// Closes the control channels (no new tunnels), then waits up to `grace` for open tunnels.
    public func shutdown(grace: Duration) async {
        let loops = listeners.withLockedValue { listeners in
            defer { listeners.removeAll() }
            return listeners.map(\.loop)
        }
        for loop in loops { await loop.stop() }
        let deadline = ContinuousClock.now + grace
        await settings.counter.waitUntilClosed(timeout: grace)
        await settings.httpExchanges.waitUntilClosed(timeout: deadline - ContinuousClock.now)
        settings.logger.info(
            "edge stopped",
            metadata: [
                "open_tunnels": "\(settings.counter.current)",
                "open_http_requests": "\(settings.httpExchanges.current)",
            ])
    }
}

/// How many of an entity's control channels are online (one per relay the edge listens on), as the
/// `hyrelay_listeners{role="edge"}` gauge shows it.
final class OnlineListeners: Sendable {
    private let metrics: RelayMetrics
    private let counts = NIOLockedValueBox<[String: Int]>([:])

    init(metrics: RelayMetrics) { self.metrics = metrics }

    func changed(entity: String, by delta: Int) {
        let count = counts.withLockedValue { counts in
            counts[entity, default: 0] = max(0, counts[entity, default: 0] + delta)
            return counts[entity, default: 0]
        }
        metrics.listeners(role: .edge, entity: entity).set(to: Double(count))
    }
}

/// One listener control channel, reconnected with backoff for as long as the agent runs.
final class ListenerLoop: Sendable {
    private struct State {
        var stopped = false
        var online = false
        var firstOpen = FirstOpen.pending
        var channel: (any Channel)?
        var task: Task<Void, Never>?
    }

    /// How the first attempt to open the control channel ended.
    enum FirstOpen: Equatable {
        case pending
        case online
        case failed(String)
    }

    let forward: RemoteForward
    let access: RelayAccess
    let settings: EdgeAgent.Settings
    let logger: Logger
    /// Set when the relay has an HTTP binding: the listener then answers HTTP-mode requests.
    let httpForwarding: HTTPForwarding?
    private let state = NIOLockedValueBox(State())

    init(forward: RemoteForward, access: RelayAccess, settings: EdgeAgent.Settings) {
        self.forward = forward
        self.access = access
        self.settings = settings
        var logger = settings.logger
        logger[metadataKey: "relay_name"] = "\(forward.relayName)"
        self.logger = logger
        httpForwarding = forward.httpBinding?.http.map { target in
            HTTPForwarding(
                relayName: forward.relayName, target: target, access: access, relayTLS: settings.tlsContext,
                targetTLS: HTTPForwarding.targetTLS(for: target), responseTimeout: settings.httpResponseTimeout,
                metrics: settings.metrics, tracer: settings.tracer, inFlight: settings.httpExchanges, logger: logger)
        }
    }

    var isOnline: Bool { state.withLockedValue { $0.online } }

    var firstOpen: FirstOpen { state.withLockedValue { $0.firstOpen } }

    private func firstOpenEnded(_ outcome: FirstOpen) {
        state.withLockedValue { state in
            if state.firstOpen == .pending { state.firstOpen = outcome }
        }
    }

    func start() {
        let task = Task { await self.run() }
        state.withLockedValue { $0.task = task }
    }

    func stop() async {
        let (channel, task) = state.withLockedValue { state in
            state.stopped = true
            return (state.channel, state.task)
        }
        if let channel {
            // HTTP requests the relay gave this channel move to their rendezvous first, or the relay would
            // answer them 502 the moment the channel closes.
            try? await channel.eventLoop.flatSubmit {
                do {
                    return try channel.pipeline.syncOperations.handler(type: EdgeControlHandler.self)
                        .leaveControlChannel()
                } catch {
                    return channel.eventLoop.makeSucceededVoidFuture()
                }
            }.get()
        }
        try? await channel?.close()
        task?.cancel()
        await task?.value
    }

    private func run() async {
        var backoff = ReconnectBackoff()
        var generator = SystemRandomNumberGenerator()
        var attempt = 0
        var wasOnline = false
        while !state.withLockedValue({ $0.stopped }) {
            attempt += 1
            let listenerId = UUID().uuidString.lowercased()
            let (headers, expiry) = access.headers(relayName: forward.relayName)
            let url = access.url(relayName: forward.relayName, query: "sb-hc-action=listen&sb-hc-id=\(listenerId)")
            do {
                let result = try await WebSocketClient.connect(
                    to: url, headers: headers, tlsContext: settings.tlsContext, group: settings.group,
                    connectTimeout: EdgeAgent.relayConnectTimeout, proxy: access.proxy, address: access.address
                ) { [self] channel in
                    try channel.pipeline.syncOperations.addHandler(
                        EdgeControlHandler(listener: self, tokenExpiry: expiry, logger: logger))
                }.get()
                switch result {
                case .upgraded(let channel, _):
                    firstOpenEnded(.online)
                    let stopped = state.withLockedValue { state in
                        state.channel = channel
                        state.online = true
                        return state.stopped
                    }
                    if stopped { try? await channel.close() }
                    backoff.reset()
                    settings.metrics.listenerEvent(
                        role: .edge, entity: forward.relayName, event: wasOnline ? .reconnect : .connect)
                    settings.onlineListeners.changed(entity: forward.relayName, by: 1)
                    logger.info(
                        wasOnline ? "listener reconnected" : "listener online",
                        metadata: [
                            "listener_id": "\(listenerId)", "relay": "\(access.base)",
                            "address": "\(access.address ?? access.base.host)", "attempt": "\(attempt)",
                        ])
                    attempt = 0
                    wasOnline = true
                    try? await channel.closeFuture.get()
                    state.withLockedValue { state in
                        state.online = false
                        state.channel = nil
                    }
                    settings.onlineListeners.changed(entity: forward.relayName, by: -1)
                    settings.metrics.listenerEvent(
                        role: .edge, entity: forward.relayName, event: .disconnect, cause: "channel_closed")
                    if !state.withLockedValue({ $0.stopped }) {
                        logger.warning("listener offline, reconnecting", metadata: ["cause": "control channel closed"])
                    }
                case .rejected(let status, let reason, _):
                    firstOpenEnded(.failed("the relay refused the listener: \(status) \(reason.prefix(200))"))
                    settings.metrics.listenerEvent(
                        role: .edge, entity: forward.relayName, event: .refused, cause: "status_\(status)")
                    logger.error(
                        "listener refused by relay",
                        metadata: ["status": "\(status)", "cause": "\(reason)", "attempt": "\(attempt)"])
                }
            } catch {
                let failure = ConnectFailure(error, url: url)
                firstOpenEnded(.failed("cannot reach the relay: \(failure.text)"))
                settings.metrics.listenerEvent(
                    role: .edge, entity: forward.relayName, event: .refused, cause: "unreachable")
                logger.warning(
                    "cannot reach relay",
                    metadata: [
                        "cause": "\(failure.text)", "reason": "\(failure.label)",
                        "attempt": "\(attempt)",
                    ])
            }
            guard !state.withLockedValue({ $0.stopped }) else { break }
            let delay = backoff.nextDelay(using: &generator)
            try? await Task.sleep(for: .milliseconds(Int(delay * 1000)))
        }
    }

    /// The relay asks us to accept a sender: open the rendezvous and let the preamble pick the target.
    func accept(_ command: AcceptCommand) {
        guard let url = WebSocketURL(command.address) else {
            logger.warning("accept with an unusable address", metadata: ["address": "\(command.address)"])
            return
        }
        let subprotocols =
            command.connectHeaders.first { $0.key.lowercased() == "sec-websocket-protocol" }
            .map { [String($0.value.split(separator: ",")[0]).trimmingWhitespace()] } ?? []
        // The sender's trace, continued from the relay's hop (or from the sender itself on Azure Relay).
        let parent = settings.tracer.context(
            traceparent: command.connectHeaders.first { $0.key.lowercased() == "traceparent" }?.value)
        let bridgeSpan = settings.tracer.startSpan("edge.bridge", context: parent, ofKind: .internal)
        bridgeSpan.attributes["tunnel"] = forward.relayName
        var logger = logger
        logger[metadataKey: "tunnel_id"] = "\(command.id)"
        logger[metadataKey: "trace_id"] = "\(bridgeSpan.traceContext.traceID)"
        settings.counter.opened()
        settings.metrics.connectionAccepted(role: .edge)
        let started = ContinuousClock.now
        let startedDeadline = NIODeadline.now()
        let forward = self.forward
        let counter = settings.counter
        let metrics = settings.metrics
        let tracer = settings.tracer
        let udpIdleTimeout = settings.udpIdleTimeout
        let upBytes = metrics.bytes(role: .edge, direction: .up)
        let tunnelLogger = logger
        let live = LiveTunnel(
            id: command.id, entity: forward.relayName, traceID: bridgeSpan.traceContext.traceID,
            peer: command.remoteEndpoint.map { "\($0.address):\($0.port)" } ?? "", state: "rendezvous")
        metrics.liveTunnels.add(live)
        WebSocketClient.connect(
            to: url, subprotocols: subprotocols, tlsContext: settings.tlsContext, group: settings.group,
            proxy: access.proxy
        ) { channel in
            let handler = TunnelWebSocketHandler(
                role: .listener(dial: { portName, mode, handler in
                    live.update(state: "open", portName: portName)
                    return Self.dial(
                        portName: portName, mode: mode, forward: forward, handler: handler, metrics: metrics,
                        span: tracer.startSpan("edge.dial", context: parent, ofKind: .client), logger: tunnelLogger,
                        udpIdleTimeout: udpIdleTimeout)
                }), local: nil, started: startedDeadline, countBytes: { upBytes.increment(by: Int64($0)) }
            ) { summary in
                counter.closed()
                metrics.liveTunnels.remove(live)
                metrics.tunnelClosed(
                    role: .edge, seconds: (ContinuousClock.now - started).seconds, cause: summary.cause)
                if let ttfb = summary.timeToFirstByte {
                    metrics.timeToFirstByte(role: .edge, seconds: ttfb, traceID: bridgeSpan.traceContext.traceID)
                }
                bridgeSpan.record(summary)
                bridgeSpan.end()
                tunnelLogger.log(
                    level: summary.failed ? .warning : .info,
                    "tunnel closed",
                    metadata: [
                        "bytes_up": "\(summary.bytesUp)", "bytes_down": "\(summary.bytesDown)",
                        "duration_ms": "\((ContinuousClock.now - started).milliseconds)",
                        "cause": "\(summary.closeCause)",
                    ])
            }
            handler.live = live
            try channel.pipeline.syncOperations.addHandler(handler)
        }.whenComplete { result in
            switch result {
            case .success(.upgraded): break
            case .success(.rejected(let status, let reason, _)):
                counter.closed()
                metrics.liveTunnels.remove(live)
                metrics.tunnelClosed(
                    role: .edge, seconds: (ContinuousClock.now - started).seconds, cause: .rendezvousRefused)
                tunnelLogger.warning("rendezvous refused", metadata: ["status": "\(status)", "cause": "\(reason)"])
                bridgeSpan.setStatus(SpanStatus(code: .error, message: "rendezvous refused: \(status) \(reason)"))
                bridgeSpan.end()
            case .failure(let error):
                counter.closed()
                metrics.liveTunnels.remove(live)
                metrics.tunnelClosed(
                    role: .edge, seconds: (ContinuousClock.now - started).seconds, cause: .rendezvousFailed)
                tunnelLogger.warning(
                    "rendezvous failed",
                    metadata: [
                        "cause": "\(ConnectFailure(error, url: url).text)"
                    ])
                bridgeSpan.setStatus(
                    SpanStatus(code: .error, message: "rendezvous failed: \(ErrorWords.describe(error))"))
                bridgeSpan.end()
            }
        }
    }

    /// Dials the target configured for `portName`, and nothing else, if its mode is the one the sender asked
    /// for.
    static func dial(
        portName: String, mode: Preamble.Mode, forward: RemoteForward, handler: TunnelWebSocketHandler,
        metrics: RelayMetrics, span: HopSpan, logger: Logger, udpIdleTimeout: TimeAmount
    ) {
        span.attributes["port_name"] = portName
        span.attributes["tunnel"] = forward.relayName
        guard let binding = forward.binding(forPortName: portName), let eventLoop = handler.context?.eventLoop else {
            let known = forward.bindings.map(\.portName).joined(separator: ", ")
            logger.warning("unknown port name", metadata: ["port_name": "\(portName)", "known": "\(known)"])
            metrics.dial(outcome: .unknownPort, seconds: nil)
            handler.fail(code: .policyViolation, label: .unknownPort, cause: "unknown port name '\(portName)'")
            span.attributes["outcome"] = "unknown_port"
            span.setStatus(SpanStatus(code: .error, message: "unknown port name '\(portName)'"))
            span.end()
            return
        }
        if binding.udp != (mode == .datagram) {
            // azbridge answers a mode mismatch with these bytes and closes; it logs nothing (its issue #10).
            let asked = mode == .datagram ? "datagrams (UDP)" : "a stream (TCP)"
            let has = binding.udp ? "UDP" : "TCP"
            let cause = "port '\(portName)' is \(has) (\(binding.target)) but the sender asked for \(asked)"
            logger.warning("mode mismatch", metadata: ["port_name": "\(portName)", "cause": "\(cause)"])
            metrics.dial(outcome: .modeMismatch, seconds: nil)
            handler.refusePreamble(
                reply: binding.udp ? [0, 0, 1] : [0, 0, 255],
                TunnelFailure(code: .unacceptableData, label: .modeMismatch, cause: cause))
            span.attributes["outcome"] = DialOutcome.modeMismatch.rawValue
            span.setStatus(SpanStatus(code: .error, message: cause))
            span.end()
            return
        }
        if binding.udp {
            dialUDP(
                binding: binding, eventLoop: eventLoop, handler: handler, metrics: metrics, span: span, logger: logger,
                idleTimeout: udpIdleTimeout)
            return
        }
        let downBytes = metrics.bytes(role: .edge, direction: .down)
        // One local side per connection attempt (a Unix socket may be tried again): the last is the tunnel's.
        let attempt = NIOLoopBoundBox(
            TunnelTCPHandler(countBytes: { downBytes.increment(by: Int64($0)) }), eventLoop: eventLoop)
        let boundHandler = NIOLoopBound(handler, eventLoop: eventLoop)
        span.attributes["target"] = binding.target
        let started = ContinuousClock.now
        let isSocket = binding.socketPath != nil
        let bootstrap: @Sendable () -> ClientBootstrap = {
            ClientBootstrap(group: eventLoop)
                .connectTimeout(EdgeAgent.dialTimeout)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try SocketTuning.apply(to: channel, noDelay: !isSocket, remoteHalfClosure: true)
                        try channel.pipeline.syncOperations.addHandler(attempt.value)
                    }
                }
        }
        let connected: EventLoopFuture<any Channel>
        if let path = binding.socketPath {
            connected = UnixSocketDial.connect(
                path: path, eventLoop: eventLoop, deadline: .now() + EdgeAgent.dialTimeout
            ) {
                attempt.value = TunnelTCPHandler(countBytes: { downBytes.increment(by: Int64($0)) })
                return bootstrap()
            }
        } else {
            connected = SocketTuning.connect(bootstrap(), host: binding.host, port: binding.port)
        }
        connected
            .whenComplete { result in
                switch result {
                case .success:
                    metrics.dial(
                        outcome: .connected, seconds: (ContinuousClock.now - started).seconds,
                        traceID: span.traceContext.traceID)
                    span.attributes["outcome"] = DialOutcome.connected.rawValue
                    span.end()
                    logger.debug(
                        "target dialled",
                        metadata: [
                            "target": "\(binding.target)",
                            "dial_ms": "\((ContinuousClock.now - started).milliseconds)",
                        ])
                    boundHandler.value.dialSucceeded(local: attempt.value)
                case .failure(let error):
                    let failure =
                        binding.socketPath.map { ConnectFailure(error, socketPath: $0) }
                        ?? ConnectFailure(error, host: binding.host, port: binding.port)
                    let target = binding.target
                    logger.warning(
                        "target dial failed",
                        metadata: [
                            "target": "\(target)", "reason": "\(failure.label)",
                            "cause": "\(failure.text)",
                        ])
                    metrics.dial(outcome: .failed, seconds: (ContinuousClock.now - started).seconds)
                    span.attributes["outcome"] = "failed"
                    span.attributes["reason"] = failure.label
                    span.attributes["error"] = failure.summary
                    span.setStatus(SpanStatus(code: .error, message: failure.text))
                    span.end()
                    // A close reason has 123 bytes: the short summary always fits whole.
                    boundHandler.value.fail(
                        code: .unexpectedServerError, label: .dialFailed,
                        cause: "dial \(target) failed: \(failure.summary)")
                }
            }
    }
}

/// The agent's side of a listener control channel: takes `accept` messages, keeps the channel alive
/// with pings, notices a dead channel, and renews the token before it expires.
final class EdgeControlHandler: ChannelInboundHandler {
    /// The channel's bytes, read with `WebSocketFrameReader` and joined into messages.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    /// Control messages are JSON under 64 KiB; no frame on this channel needs more than 1 MiB.
    static let maxMessageBytes = 64 * 1024
    static let maxFrameBytes = 1 << 20

    private let listener: ListenerLoop
    private var machine: EdgeChannelStateMachine
    private let logger: Logger
    private var context: ChannelHandlerContext?
    private var keepAliveTask: Scheduled<Void>?
    private var renewTask: Scheduled<Void>?
    private var reader = WebSocketFrameReader()
    private var remainder = HeadRemainder()
    private var messages = MessageAssembler(
        limit: EdgeControlHandler.maxMessageBytes, frameLimit: EdgeControlHandler.maxFrameBytes)
    /// A `request` whose body is the next message on this channel.
    private var requestAwaitingBody: RequestCommand?
    /// HTTP requests under way that came on this channel, and whether the channel is being left.
    private var exchanges: [ObjectIdentifier: HTTPForwardExchange] = [:]
    private var leaving = false

    init(listener: ListenerLoop, tokenExpiry: Int64?, logger: Logger) {
        self.listener = listener
        machine = EdgeChannelStateMachine(tokenExpiry: tokenExpiry)
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        scheduleKeepAlive()
        scheduleRenewal()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        keepAliveTask?.cancel()
        renewTask?.cancel()
        self.context = nil
    }

    private func send(_ opcode: WebSocketOpcode, _ data: ByteBuffer) {
        context?.writeAndFlush(
            wrapOutboundOut(WebSocketFrame(fin: true, opcode: opcode, maskKey: .random(), data: data)), promise: nil)
    }

    private func scheduleKeepAlive() {
        keepAliveTask = context?.eventLoop.assumeIsolated().scheduleTask(
            in: .fractionalSeconds(listener.settings.keepAliveInterval)
        ) {
            [weak self] in
            guard let self, let context = self.context else { return }
            switch self.machine.keepAliveTick() {
            case .ping:
                self.send(.ping, ByteBuffer())
                self.scheduleKeepAlive()
            case .declareDead(let unanswered):
                self.logger.warning("control channel dead: no pong", metadata: ["unanswered_pings": "\(unanswered)"])
                self.listener.settings.metrics.listenerEvent(
                    role: .edge, entity: self.listener.forward.relayName, event: .deadChannel, cause: "ping_timeout")
                context.close(promise: nil)
            case .none:
                break
            }
        }
    }

    /// Renews at four fifths of the token's life, well before the relay's grace runs out.
    private func scheduleRenewal() {
        guard let context, let delay = machine.renewalDelay(now: Int64(Date().timeIntervalSince1970)) else { return }
        renewTask = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(delay)) { [weak self] in
            guard let self else { return }
            let now = Int64(Date().timeIntervalSince1970)
            guard let (token, expiry) = self.listener.access.token(relayName: self.listener.forward.relayName, now: now)
            else { return }
            self.machine.renewed(expiry: expiry)
            self.send(.text, ByteBuffer(string: ControlMessage.renewToken(RenewTokenCommand(token: token)).encoded()))
            self.listener.settings.metrics.listenerEvent(
                role: .edge, entity: self.listener.forward.relayName, event: .renew)
            self.logger.info("token renewed", metadata: ["expiry": "\(expiry.map(String.init) ?? "none")"])
            self.scheduleRenewal()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = remainder.joined(unwrapInboundIn(data))
        do {
            while machine.state == .open, let part = try reader.read(from: &buffer) {
                received(part, context: context)
            }
        } catch {
            logger.warning(
                "the relay broke the WebSocket protocol: \(error.reason)", metadata: ["reason": "protocol_error"])
            if machine.closing() { context.closeWebSocket(code: error.code, reason: error.reason, maskKey: .random()) }
            return
        }
        remainder.keep(buffer)
    }

    private func received(_ part: WebSocketFrameReader.Part, context: ChannelHandlerContext) {
        machine.heardFromRelay()
        if case .control(let frame) = part {
            switch frame.opcode {
            case .ping:
                send(.pong, frame.data)
            case .connectionClose:
                var data = frame.data
                let code = data.readInteger(as: UInt16.self)
                let reason = data.readString(length: data.readableBytes) ?? ""
                logger.warning(
                    "relay closed the control channel",
                    metadata: ["code": "\(code.map(String.init) ?? "-")", "cause": "\(reason)"])
                if machine.closing() { context.answerClose(frame, maskKey: .random()) }
            default:
                break
            }
            return
        }
        switch messages.receive(part) {
        case .none:
            break
        case .message(.text, let data):
            do {
                switch try ControlMessage(decoding: data.readableBytesView) {
                case .accept(let accept):
                    listener.accept(accept)
                case .request(let request):
                    requestArrived(request, context: context)
                case .response, .renewToken:
                    logger.warning("ignored control message the relay should not send")
                }
            } catch {
                logger.warning("ignored control message: \(ErrorWords.describe(error))")
            }
        case .message(.binary, let body) where requestAwaitingBody != nil:
            if let request = requestAwaitingBody { forward(request, body: body, context: context) }
            requestAwaitingBody = nil
        case .message, .binaryPart:
            logger.warning("ignored binary message on the control channel")
        case .tooLarge, .frameTooLarge:
            logger.warning(
                "the relay sent a control message over \(Self.maxMessageBytes) bytes",
                metadata: ["reason": "message_too_big"])
            if machine.closing() {
                context.closeWebSocket(
                    code: .messageTooLarge, reason: FrameRules.Reason.messageTooBig, maskKey: .random())
            }
        }
    }

    /// A request on the control channel: forwarded at once, or when its body (the next message) has come.
    private func requestArrived(_ request: RequestCommand, context: ChannelHandlerContext) {
        if request.method != nil && request.body == true {
            requestAwaitingBody = request
            return
        }
        forward(request, body: nil, context: context)
    }

    private func forward(_ request: RequestCommand, body: ByteBuffer?, context: ChannelHandlerContext) {
        guard let forwarding = listener.httpForwarding else {
            answerHTTPNotConfigured(request)
            return
        }
        let exchange = HTTPForwardExchange(
            command: request, controlBody: body, forwarding: forwarding, eventLoop: context.eventLoop
        ) { [weak self] message, body in
            self?.send(.text, ByteBuffer(string: message.encoded()))
            if let body { self?.send(.binary, body) }
        }
        let key = ObjectIdentifier(exchange)
        exchanges[key] = exchange
        exchange.onFinish = { [weak self] in self?.exchanges[key] = nil }
        exchange.start()
        if leaving { _ = exchange.leaveControlChannel() }
    }

    /// The edge is stopping: every HTTP exchange still to answer here moves to its rendezvous; the future
    /// completes when they have.
    func leaveControlChannel() -> EventLoopFuture<Void> {
        leaving = true
        guard let context else { return listener.settings.group.next().makeSucceededVoidFuture() }
        let moves = exchanges.values.map { $0.leaveControlChannel() }
        return EventLoopFuture.andAllComplete(moves, on: context.eventLoop)
    }

    /// This edge has no HTTP forwarder for the relay; HTTP-mode requests get 501 as from an SDK listener
    /// without a handler.
    private func answerHTTPNotConfigured(_ request: RequestCommand) {
        let response = ResponseCommand(
            requestId: request.id, statusCode: 501,
            statusDescription: "RequestHandler has not been configured on this edge")
        if request.method != nil {
            send(.text, ByteBuffer(string: ControlMessage.response(response).encoded()))
        }
        logger.warning(
            "HTTP request refused: this edge has no HTTP forwarding", metadata: ["request_id": "\(request.id)"])
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.warning("control channel error", metadata: ["cause": "\(ErrorWords.describe(error))"])
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension EdgeControlHandler: Sendable {}

extension ListenerLoop {
    /// A UDP flow: a datagram socket of the edge's own toward the target, its answers framed back.
    static func dialUDP(
        binding: RemoteBinding, eventLoop: any EventLoop, handler: TunnelWebSocketHandler, metrics: RelayMetrics,
        span: HopSpan, logger: Logger, idleTimeout: TimeAmount
    ) {
        let boundHandler = NIOLoopBound(handler, eventLoop: eventLoop)
        let target: SocketAddress
        do {
            // Resolved here, on the loop: UDP targets are addresses or local names in practice.
            target = try SocketAddress.makeAddressResolvingHost(binding.host, port: binding.port)
        } catch {
            let failure = ConnectFailure(error, host: binding.host, port: binding.port)
            metrics.dial(outcome: .failed, seconds: nil)
            span.setStatus(SpanStatus(code: .error, message: failure.summary))
            span.end()
            handler.fail(
                code: .unexpectedServerError, label: .dialFailed,
                cause: "dial \(binding.target) failed: \(failure.summary)")
            return
        }
        let udp = UDPTargetHandler(
            target: target, counters: UDPCounters(role: .edge, metrics: metrics), idleTimeout: idleTimeout)
        let boundUDP = NIOLoopBound(udp, eventLoop: eventLoop)
        DatagramBootstrap(group: eventLoop)
            .channelOption(.recvAllocator, value: UDPCounters.receiveAllocator)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(boundUDP.value) }
            }
            .bind(host: target.protocol == .inet6 ? "::" : "0.0.0.0", port: 0)
            .whenComplete { result in
                switch result {
                case .success:
                    metrics.dial(outcome: .connected, seconds: 0, traceID: span.traceContext.traceID)
                    span.attributes["outcome"] = DialOutcome.connected.rawValue
                    span.end()
                    boundHandler.value.dialSucceeded(local: boundUDP.value)
                case .failure(let error):
                    metrics.dial(outcome: .failed, seconds: nil)
                    span.setStatus(SpanStatus(code: .error, message: ErrorWords.describe(error)))
                    span.end()
                    logger.warning(
                        "udp socket failed",
                        metadata: ["target": "\(binding.target)", "cause": "\(ErrorWords.describe(error))"])
                    boundHandler.value.fail(
                        code: .unexpectedServerError, label: .dialFailed,
                        cause: "dial \(binding.target) failed: \(ErrorWords.describe(error))")
                }
            }
    }
}
