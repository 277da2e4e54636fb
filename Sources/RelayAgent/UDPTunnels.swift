import HybridConnections
import Logging
import NIOCore
import NIOWebSocket
import RelayIO
import RelayTelemetry

/// How long a UDP flow may see no datagram either way before its tunnel closes (azbridge: 4 minutes).
public let defaultUDPIdleTimeout = TimeAmount.minutes(4)

/// Datagram, byte and drop counters of one role's UDP tunnels, taken once. `bytesIntoTunnel` is the direction
/// this role frames datagrams into the tunnel (the client's up, the edge's down): the other direction's bytes
/// are counted by the tunnel's WebSocket side, as for TCP.
struct UDPCounters: Sendable {
    let role: TelemetryRole
    let metrics: RelayMetrics
    let up: Counter
    let down: Counter
    let bytesIntoTunnel: Counter

    init(role: TelemetryRole, metrics: RelayMetrics) {
        self.role = role
        self.metrics = metrics
        up = metrics.udpDatagrams(role: role, direction: .up)
        down = metrics.udpDatagrams(role: role, direction: .down)
        bytesIntoTunnel = metrics.bytes(role: role, direction: role == .client ? .up : .down)
    }

    func dropped(_ reason: String) { metrics.udpDropped(role: role, reason: reason) }

    /// Reads as large as a datagram can be: NIO's default for datagram channels (2 KiB) would cut larger ones.
    static let receiveAllocator = FixedSizeRecvByteBufferAllocator(capacity: DatagramFraming.maxDatagram)
}

/// Datagrams and bytes counted in plain integers and added to the metrics once per read burst.
struct UDPTally {
    var datagrams = 0
    var bytes = 0

    mutating func add(bytes count: Int) {
        datagrams += 1
        bytes += count
    }

    /// Adds what was counted to `datagramCounter` (and the bytes to `byteCounter`), then starts again.
    mutating func flush(datagrams datagramCounter: Counter, bytes byteCounter: Counter? = nil) {
        guard datagrams > 0 else { return }
        datagramCounter.increment(by: Int64(datagrams))
        byteCounter?.increment(by: Int64(bytes))
        self = UDPTally()
    }
}

/// Ends a UDP flow after `timeout` without a datagram: one timer, pushed along by `touch()` (a field write per
/// datagram, not a timer), that checks again when it fires early.
final class FlowIdleTimer {
    private var lastActivity = NIODeadline.now()
    private let timeout: TimeAmount
    private let eventLoop: any EventLoop
    private var scheduled: Scheduled<Void>?
    private let expired: () -> Void

    init(timeout: TimeAmount, eventLoop: any EventLoop, expired: @escaping () -> Void) {
        self.timeout = timeout
        self.eventLoop = eventLoop
        self.expired = expired
        schedule()
    }

    func touch() { lastActivity = .now() }

    func cancel() { scheduled?.cancel() }

    private func schedule() {
        scheduled = eventLoop.assumeIsolated().scheduleTask(deadline: lastActivity + timeout) { [weak self] in
            guard let self else { return }
            if NIODeadline.now() >= self.lastActivity + self.timeout {
                self.expired()
            } else {
                self.schedule()
            }
        }
    }
}

/// The failure a flow ends with when its timer runs out.
private let idleFailure = TunnelFailure(
    code: .normalClosure, label: .idle, cause: "no datagram for the idle time")

/// The edge's side of one UDP flow: a datagram socket of its own toward the target. Datagrams from the tunnel
/// are cut out of its byte stream and sent to the target; the target's answers are framed into the tunnel.
/// Answers from any other address are dropped. The flow closes after `idleTimeout` without a datagram.
final class UDPTargetHandler: ChannelDuplexHandler, TunnelLocalSide {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let target: SocketAddress
    private let counters: UDPCounters
    private let idleTimeout: TimeAmount
    private var context: ChannelHandlerContext?
    private weak var webSocket: TunnelWebSocketHandler?
    private var deframer = DatagramDeframer()
    private var gate = LocalReadGate()
    private var idle: FlowIdleTimer?
    /// From the target into the tunnel, and from the tunnel to the target.
    private var fromTarget = UDPTally()
    private var toTarget = UDPTally()

    init(target: SocketAddress, counters: UDPCounters, idleTimeout: TimeAmount) {
        self.target = target
        self.counters = counters
        self.idleTimeout = idleTimeout
    }

    var isActive: Bool { context?.channel.isActive ?? false }
    var isWritable: Bool { context?.channel.isWritable ?? false }

    func attach(_ webSocket: TunnelWebSocketHandler) { self.webSocket = webSocket }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        idle = FlowIdleTimer(timeout: idleTimeout, eventLoop: context.eventLoop) { [weak self] in
            self?.webSocket?.fail(idleFailure)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idle?.cancel()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard envelope.remoteAddress == target else {
            counters.dropped("foreign_source")
            return
        }
        idle?.touch()
        var framed = context.channel.allocator.buffer(capacity: envelope.data.readableBytes + 2)
        _ = DatagramFraming.frame(envelope.data, into: &framed)
        fromTarget.add(bytes: framed.readableBytes)
        if let framed = gate.received(framed) { webSocket?.send(framed) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        fromTarget.flush(datagrams: counters.down, bytes: counters.bytesIntoTunnel)
        webSocket?.flush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if gate.readRequested(webSocketWritable: webSocket?.isWritable ?? false) { context.read() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        webSocket?.sendClose(code: .normalClosure, reason: "the target's socket closed")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP port unreachable surfaces here as ECONNREFUSED on a later read: the target is not listening.
        counters.dropped("target_unreachable")
    }

    // MARK: TunnelLocalSide

    func startReading() {
        for framed in gate.start() { webSocket?.send(framed) }
        webSocket?.flush()
        resumeReading()
    }

    func resumeReading() {
        guard let context, gate.resume() else { return }
        context.read()
    }

    func write(_ data: ByteBuffer) {
        guard let context else { return }
        idle?.touch()
        for datagram in deframer.feed(data) {
            toTarget.add(bytes: datagram.readableBytes)
            context.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: target, data: datagram)), promise: nil)
        }
    }

    func flush() {
        toTarget.flush(datagrams: counters.up)
        context?.flush()
    }

    /// The sender's side ended its flow: there is no half of a UDP flow to keep.
    func shutdownOutput() { close() }

    func close() { context?.close(promise: nil) }
}

@available(*, unavailable)
extension UDPTargetHandler: Sendable {}

/// How many flows one UDP binding holds: every flow is a tunnel through the relay held for the idle time,
/// and a datagram's source address costs an attacker nothing (it can be spoofed), so the binding's cap is the
/// defence and the per-source cap only keeps one address from taking the whole of it.
public struct UDPFlowLimits: Sendable, Equatable {
    public static let defaultMaxFlows = 1000
    public static let defaultMaxFlowsPerSource = 256

    public var maxFlows: Int
    public var maxFlowsPerSource: Int

    public init(maxFlows: Int = defaultMaxFlows, maxFlowsPerSource: Int = defaultMaxFlowsPerSource) {
        self.maxFlows = maxFlows
        self.maxFlowsPerSource = maxFlowsPerSource
    }
}

/// What the client's bound UDP port decides for a datagram from a source it has no flow for.
enum UDPAdmission: Equatable {
    case open
    /// Dropped, no tunnel opened; the reason labels the count and the log line.
    case refuse(reason: String)
}

/// The client's bound UDP port: every source address is a flow with a tunnel of its own (azbridge's routes),
/// opened on its first datagram and closed after `idleTimeout` without one. A new flow needs its source to
/// pass `--allow` and room under the binding's `UDPFlowLimits`; a refused datagram costs a dictionary lookup,
/// a counter and (at most once a second per reason) a log line, never a tunnel.
final class UDPRouter: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private var context: ChannelHandlerContext?
    private var routes: [SocketAddress: UDPRoute] = [:]
    /// Open flows by source IP address (no port), for the per-source cap.
    private var flowsPerSource: [String: Int] = [:]
    private let counters: UDPCounters
    private let idleTimeout: TimeAmount
    private let limits: UDPFlowLimits
    private let allowedSources: AddressFilter?
    private let logger: Logger
    private var throttle = LogThrottle(interval: 1)
    /// From the sources into the tunnels (framed), and from the tunnels back to the sources.
    private var fromSources = UDPTally()
    private var toSources = UDPTally()
    /// The flows that got datagrams in this read burst: their tunnels are flushed once at its end.
    private var burst: [ObjectIdentifier: UDPRoute] = [:]
    /// Opens the tunnel for a new flow.
    private let open: (_ route: UDPRoute, _ eventLoop: any EventLoop) -> Void

    init(
        counters: UDPCounters, idleTimeout: TimeAmount, limits: UDPFlowLimits = UDPFlowLimits(),
        allowedSources: AddressFilter? = nil, logger: Logger = Logger(label: "hyrelay.client"),
        open: @escaping (UDPRoute, any EventLoop) -> Void
    ) {
        self.counters = counters
        self.idleTimeout = idleTimeout
        self.limits = limits
        self.allowedSources = allowedSources
        self.logger = logger
        self.open = open
    }

    /// Whether a datagram from `source`, which has no flow yet, may open one.
    func admission(source: SocketAddress) -> UDPAdmission {
        let address = source.ipAddress ?? ""
        if let allowedSources, !allowedSources.allows(address) { return .refuse(reason: "source_not_allowed") }
        if routes.count >= limits.maxFlows { return .refuse(reason: "flow_limit") }
        if flowsPerSource[address, default: 0] >= limits.maxFlowsPerSource {
            return .refuse(reason: "source_flow_limit")
        }
        return .open
    }

    private func refused(_ reason: String, source: SocketAddress) {
        if reason == "source_not_allowed" {
            counters.metrics.refused(role: .client, reason: reason, status: 0)
        } else {
            counters.dropped(reason)
        }
        guard let suppressed = throttle.shouldLog(reason, now: Double(NIODeadline.now().uptimeNanoseconds) / 1e9)
        else { return }
        let why: String
        switch reason {
        case "source_not_allowed": why = "datagram refused: source not allowed (--allow)"
        case "flow_limit":
            why = "datagram dropped: the UDP port holds its most flows (--udp-max-flows \(limits.maxFlows))"
        default:
            why =
                "datagram dropped: this source holds its most flows (--udp-max-flows-per-source \(limits.maxFlowsPerSource))"
        }
        logger.warning(
            "\(why)",
            metadata: ["peer": "\(source.hostAndPort)", "flows": "\(routes.count)", "suppressed": "\(suppressed)"])
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        for route in routes.values { route.close() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        fromSources.add(bytes: envelope.data.readableBytes + 2)
        if let route = routes[envelope.remoteAddress] {
            route.datagramFromSource(envelope.data)
            burst[ObjectIdentifier(route)] = route
            return
        }
        if case .refuse(let reason) = admission(source: envelope.remoteAddress) {
            refused(reason, source: envelope.remoteAddress)
            return
        }
        let route = UDPRoute(
            source: envelope.remoteAddress, router: self, counters: counters, idleTimeout: idleTimeout,
            eventLoop: context.eventLoop)
        routes[envelope.remoteAddress] = route
        flowsPerSource[envelope.remoteAddress.ipAddress ?? "", default: 0] += 1
        route.datagramFromSource(envelope.data)
        open(route, context.eventLoop)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        fromSources.flush(datagrams: counters.up, bytes: counters.bytesIntoTunnel)
        for route in burst.values { route.flushIntoTunnel() }
        burst.removeAll(keepingCapacity: true)
        context.fireChannelReadComplete()
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func send(_ datagram: ByteBuffer, to source: SocketAddress) {
        toSources.add(bytes: datagram.readableBytes)
        context?.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: source, data: datagram)), promise: nil)
    }

    func flushToSources() {
        toSources.flush(datagrams: counters.down)
        context?.flush()
    }

    func routeEnded(_ route: UDPRoute) {
        guard routes[route.source] === route else { return }
        routes[route.source] = nil
        let address = route.source.ipAddress ?? ""
        let left = flowsPerSource[address, default: 1] - 1
        flowsPerSource[address] = left > 0 ? left : nil
    }
}

@available(*, unavailable)
extension UDPRouter: Sendable {}

/// One source's flow on the client's UDP port: the local side of its tunnel. Its datagrams wait (64 at most)
/// while the tunnel opens, then go framed into it; the tunnel's datagrams go back to the source.
final class UDPRoute: TunnelLocalSide {
    /// Datagrams held while the tunnel opens; more are dropped and counted.
    static let maxWaiting = 64

    let source: SocketAddress
    private weak var router: UDPRouter?
    private weak var webSocket: TunnelWebSocketHandler?
    private let counters: UDPCounters
    private var deframer = DatagramDeframer()
    private var waiting: [ByteBuffer] = []
    private var started = false
    private var closed = false
    private var idle: FlowIdleTimer?

    init(
        source: SocketAddress, router: UDPRouter, counters: UDPCounters, idleTimeout: TimeAmount,
        eventLoop: any EventLoop
    ) {
        self.source = source
        self.router = router
        self.counters = counters
        idle = FlowIdleTimer(timeout: idleTimeout, eventLoop: eventLoop) { [weak self] in
            guard let self, !self.closed else { return }
            self.webSocket?.fail(idleFailure)
            self.close()
        }
    }

    func datagramFromSource(_ payload: ByteBuffer) {
        idle?.touch()
        var framed = ByteBuffer()
        guard DatagramFraming.frame(payload, into: &framed) else {
            counters.dropped("too_large")
            return
        }
        if started, let webSocket {
            webSocket.send(framed)
        } else if waiting.count < Self.maxWaiting {
            waiting.append(framed)
        } else {
            counters.dropped("queue_full")
        }
    }

    // MARK: TunnelLocalSide

    var isActive: Bool { !closed }
    var isWritable: Bool { router?.isWritable ?? false }

    func attach(_ webSocket: TunnelWebSocketHandler) { self.webSocket = webSocket }

    func startReading() {
        started = true
        for framed in waiting { webSocket?.send(framed) }
        waiting.removeAll()
        webSocket?.flush()
    }

    /// Datagrams are read as they come for every flow; a full tunnel is paced by the source, not by reads.
    func resumeReading() {}

    func write(_ data: ByteBuffer) {
        idle?.touch()
        for datagram in deframer.feed(data) { router?.send(datagram, to: source) }
    }

    /// What the tunnel wrote to the source goes out.
    func flush() { router?.flushToSources() }

    /// The source's datagrams of this read burst go into the tunnel.
    func flushIntoTunnel() { webSocket?.flush() }

    func shutdownOutput() { close() }

    func close() {
        guard !closed else { return }
        closed = true
        idle?.cancel()
        router?.routeEnded(self)
        webSocket?.sendClose(code: .normalClosure, reason: "the UDP flow ended")
    }
}

@available(*, unavailable)
extension UDPRoute: Sendable {}

@available(*, unavailable)
extension FlowIdleTimer: Sendable {}
