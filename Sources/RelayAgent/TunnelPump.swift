import HybridConnections
import Logging
import NIOCore
import NIOWebSocket
import RelayIO
import RelayTelemetry
import Tracing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// What one tunnelled connection moved, and why it ended.
public struct TunnelSummary: Sendable, Equatable {
    /// Whether this is the edge's side of the tunnel (the service is its local peer) or the client's (the
    /// device is).
    public var atEdge = false
    /// Bytes from the local TCP peer toward the relay.
    public var bytesToRelay = 0
    /// Bytes from the relay toward the local TCP peer.
    public var bytesFromRelay = 0
    /// Bytes that flowed from the device toward the service, the same number at every hop
    /// (docs/telemetry.md): what the client sent to the relay, what the edge received from it.
    public var bytesUp: Int { atEdge ? bytesFromRelay : bytesToRelay }
    /// Bytes from the service back toward the device.
    public var bytesDown: Int { atEdge ? bytesToRelay : bytesFromRelay }
    /// Why it ended, in words for logs and spans.
    public var closeCause = "closed"
    /// Why it ended, as the bounded metric label.
    public var cause = TunnelCloseCause.closed
    public var causeLabel: String { cause.label }
    /// Seconds from the tunnel's start to its first payload byte from the relay, if one came.
    public var timeToFirstByte: Double?

    /// Whether the tunnel ended for a reason other than one side closing it.
    public var failed: Bool { cause.isFailure }
}

/// What a tunnel pumps to and from on the agent's side: the local connection (TCP now; Unix sockets, UDP flows
/// and HTTP exchanges are further kinds). The WebSocket side drives it through these calls only, on the
/// event loop they share.
protocol TunnelLocalSide: AnyObject {
    /// The local connection is open (a tunnel whose local side is already gone is not opened).
    var isActive: Bool { get }
    /// It takes more bytes without queuing (else the WebSocket side withholds its reads).
    var isWritable: Bool { get }
    /// Binds the WebSocket side; the local side reports its reads and closes to it.
    func attach(_ webSocket: TunnelWebSocketHandler)
    /// The tunnel is open: read the local connection from now on (what arrived before goes first).
    func startReading()
    /// The WebSocket side can take more: a withheld read may be made.
    func resumeReading()
    func write(_ data: ByteBuffer)
    func flush()
    /// The relay side closed: no more bytes toward the local peer, once the written ones are out.
    func shutdownOutput()
    /// Ends the local connection once the written bytes are out.
    func close()
}

/// The WebSocket side of an agent tunnel: runs what `TunnelStateMachine` answers to NIO's events and the local
/// side's, on the event loop both share. Outbound frames are masked word-wise (both agents are WebSocket
/// clients).
///
/// Back-pressure: each side withholds `read()` while the other side's channel is not writable.
/// Half-close: the local peer's end becomes `Close(1000, "Shutdown")`; a Close from the relay shuts the local
/// output down; the other direction keeps flowing until it ends too.
final class TunnelWebSocketHandler: ChannelDuplexHandler, RemovableChannelHandler {
    /// The relay connection's bytes, read here with `WebSocketFrameReader`: frames of any size, their payload
    /// passed to the local side as it arrives.
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    enum Role {
        /// Sends the preamble for `portName` in `mode` and waits for the answer (client agent).
        case sender(portName: String, mode: Preamble.Mode = .stream)
        /// Reads the preamble and asks `dial` to connect the named port (edge agent).
        case listener(dial: (_ portName: String, _ mode: Preamble.Mode, _ handler: TunnelWebSocketHandler) -> Void)
    }

    private let dial: ((_ portName: String, _ mode: Preamble.Mode, _ handler: TunnelWebSocketHandler) -> Void)?
    private var machine: TunnelStateMachine
    private var reader = WebSocketFrameReader()
    private var remainder = HeadRemainder()
    private(set) var context: ChannelHandlerContext?
    private var local: (any TunnelLocalSide)?
    /// Until the upgrade completes the HTTP decoder still sits in the pipeline and rejects frames, so frames
    /// written before it (a pong to a ping that came with the 101) wait here.
    private var heldFrames: [WebSocketFrame] = []
    private var closeWritten: EventLoopFuture<Void>?
    private var uncountedBytes = 0
    /// Bytes sent toward the relay since the live view last heard of them.
    private var unreportedSentBytes = 0
    /// The tunnel in the inspection API (`/v1/tunnels`), fed with both directions once per read burst.
    var live: LiveTunnel?
    private let preambleTimeout: TimeAmount
    private let countBytes: (Int) -> Void
    private let onFinished: (TunnelSummary) -> Void

    /// How long an edge waits for a sender's preamble once the rendezvous is open.
    static let defaultPreambleTimeout = TimeAmount.seconds(10)
    /// How long a peer has to answer this side's Close with its own before the connection is cut.
    static let closeReplyTimeout = TimeAmount.seconds(30)

    /// - Parameters:
    ///   - started: when the tunnel began (TCP accept on the client, `accept` on the edge).
    ///   - preambleTimeout: on the edge, how long the sender has to send its preamble.
    ///   - countBytes: payload bytes received from the relay, reported once per read burst.
    init(
        role: Role, local: (any TunnelLocalSide)?, started: NIODeadline = .now(),
        preambleTimeout: TimeAmount = TunnelWebSocketHandler.defaultPreambleTimeout,
        countBytes: @escaping (Int) -> Void = { _ in },
        onFinished: @escaping (TunnelSummary) -> Void
    ) {
        switch role {
        case .sender(let portName, let mode):
            machine = TunnelStateMachine(role: .sender(portName: portName, mode: mode), started: started)
            dial = nil
        case .listener(let dial):
            machine = TunnelStateMachine(role: .listener, started: started)
            self.dial = dial
        }
        self.local = local
        self.preambleTimeout = preambleTimeout
        self.countBytes = countBytes
        self.onFinished = onFinished
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        local?.attach(self)
        if let local, !local.isActive {
            machine.localSideMissing()
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case WebSocketUpgradeEvent.completed = event {
            let action = machine.upgradeCompleted()
            switch action {
            case .sendPreamble(let portName, let mode):
                let (header, name) = Preamble.request(portName: portName, mode: mode)
                sendFrame(.binary, ByteBuffer(bytes: header))
                sendFrame(.binary, ByteBuffer(bytes: name))
            case .armPreambleTimer:
                // A sender that never names its port would otherwise hold the rendezvous open for good.
                context.eventLoop.assumeIsolated().scheduleTask(in: preambleTimeout) { [weak self] in
                    guard let self,
                        let failure = self.machine.preambleTimedOut(
                            after: self.preambleTimeout.nanoseconds / 1_000_000_000)
                    else { return }
                    self.fail(failure)
                }
            case .close:
                break
            }
            for frame in heldFrames { context.write(wrapOutboundOut(frame), promise: nil) }
            heldFrames = []
            if case .close(let close) = action { run(close) }
            context.flush()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    private func sendFrame(_ opcode: WebSocketOpcode, _ data: ByteBuffer) {
        let frame = WebSocketFrame(fin: true, opcode: opcode, maskKey: .random(), data: data)
        guard machine.isUpgraded else {
            heldFrames.append(frame)
            return
        }
        context?.write(wrapOutboundOut(frame), promise: nil)
    }

    // MARK: From the relay

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = remainder.joined(unwrapInboundIn(data))
        do {
            while let part = try reader.read(from: &buffer) { received(part, context: context) }
        } catch {
            fail(machine.violation(error))
            return
        }
        remainder.keep(buffer)
    }

    private func received(_ part: WebSocketFrameReader.Part, context: ChannelHandlerContext) {
        switch part {
        case .head:
            break
        case .payload(let chunk):
            payloadReceived(chunk)
        case .control(let frame) where frame.opcode == .ping:
            guard machine.answersPings else { return }
            sendFrame(.pong, frame.data)
            context.flush()
        case .control(let frame) where frame.opcode == .connectionClose:
            var data = frame.data
            let code = data.readInteger(as: UInt16.self)
            run(machine.closeReceived(code: code, reason: data.readString(length: data.readableBytes) ?? ""))
        case .control:
            break
        }
    }

    private func payloadReceived(_ data: ByteBuffer) {
        switch machine.payloadReceived(data.readableBytesView, now: .now()) {
        case .none:
            break
        case .deliver:
            uncountedBytes &+= data.readableBytes
            local?.write(data)
        case .opened(let leftover):
            if !leftover.isEmpty {
                uncountedBytes &+= leftover.count
                local?.write(ByteBuffer(bytes: leftover))
            }
            startLocalReading()
        case .dial(let portName, let mode):
            dial?(portName, mode, self)
        case .fail(let reply, let failure):
            if let reply { sendFrame(.binary, ByteBuffer(bytes: reply)) }
            fail(failure)
        }
    }

    private func run(_ action: TunnelStateMachine.CloseReceivedAction) {
        switch action {
        case .none:
            return
        case .shutDownLocalOutput(let closeChannel):
            local?.shutdownOutput()
            if closeChannel, let context { context.close(after: closeWritten) }
        case .closeLocal(let closeChannel):
            local?.close()
            if closeChannel, let context { context.close(after: closeWritten) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        reportBytes()
        local?.flush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if machine.readRequested(localWritable: local?.isWritable ?? true) { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { local?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        reportBytes()
        local?.close()
        if let summary = machine.channelInactive() {
            local = nil
            onFinished(summary)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        machine.errorCaught(error)
        context.close(promise: nil)
    }

    /// Byte metrics move once per read burst, and once more when the channel goes.
    private func reportBytes() {
        guard uncountedBytes > 0 else { return }
        countBytes(uncountedBytes)
        reportLive(fromRelay: uncountedBytes, toRelay: 0)
        uncountedBytes = 0
    }

    private func reportLive(fromRelay: Int, toRelay: Int) {
        guard let live else { return }
        if case .listener = machine.role {
            live.count(up: fromRelay, down: toRelay)
        } else {
            live.count(up: toRelay, down: fromRelay)
        }
    }

    // MARK: From the local side

    /// The dial for this tunnel succeeded: answer the preamble and start pumping.
    func dialSucceeded(local: any TunnelLocalSide) {
        guard context != nil, case .open(let reply, let leftover) = machine.dialSucceeded() else {
            local.close()
            return
        }
        self.local = local
        local.attach(self)
        sendFrame(.binary, ByteBuffer(bytes: reply))
        context?.flush()
        if !leftover.isEmpty {
            local.write(ByteBuffer(bytes: leftover))
            local.flush()
        }
        startLocalReading()
        resumeReading()
    }

    /// The local side reads from now on; a FIN that came before the tunnel opened is passed on after the bytes
    /// that preceded it.
    private func startLocalReading() {
        local?.startReading()
        run(machine.localReadingStarted())
    }

    /// Refuses the sender's preamble with azbridge's answer bytes (a mode the port does not have), then ends the
    /// tunnel for `failure`.
    func refusePreamble(reply: [UInt8], _ failure: TunnelFailure) {
        sendFrame(.binary, ByteBuffer(bytes: reply))
        fail(failure)
    }

    /// Ends the tunnel for `failure`: the sender or the relay is told why with a Close.
    func fail(_ failure: TunnelFailure) {
        run(machine.fail(failure))
        local?.close()
    }

    /// The dial failed or the port name is unknown: tell the sender why, then close.
    func fail(code: WebSocketErrorCode, label: TunnelCloseCause, cause: String) {
        fail(TunnelFailure(code: code, label: label, cause: cause))
    }

    func send(_ data: ByteBuffer) {
        machine.localBytesSent(data.readableBytes)
        unreportedSentBytes += data.readableBytes
        sendFrame(.binary, data)
    }

    /// The local side's read burst is over: its bytes go out, and into the live view.
    func flush() {
        if unreportedSentBytes > 0 {
            reportLive(fromRelay: 0, toRelay: unreportedSentBytes)
            unreportedSentBytes = 0
        }
        context?.flush()
    }

    /// The local peer ended its input (TCP FIN).
    func localInputEnded() { run(machine.localInputEnded()) }

    /// The local side is gone or failed: end the tunnel's upstream direction with `code`.
    func sendClose(code: WebSocketErrorCode, reason: String) { run(machine.closeRequested(code: code, reason: reason)) }

    private func run(_ action: TunnelStateMachine.CloseAction) {
        guard case .write(let code, let reason, let closeChannelAfter) = action, let context else { return }
        var frame = FrameRules.closeFrame(code: code, reason: reason, allocator: context.channel.allocator)
        frame.maskKey = .random()
        // The Close is the last frame written, so its completion means everything before it is out.
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(frame), promise: written)
        closeWritten = written.futureResult
        if closeChannelAfter {
            context.close(after: closeWritten)
        } else {
            // The peer's Close reply ends it; a peer that never replies is cut off.
            context.eventLoop.assumeIsolated().scheduleTask(in: Self.closeReplyTimeout) { [weak self] in
                self?.context?.close(promise: nil)
            }
        }
    }

    /// The local side can take more again.
    func resumeReading() {
        guard machine.resumeReading(), let context else { return }
        context.read()
    }
}

@available(*, unavailable)
extension TunnelWebSocketHandler: Sendable {}

/// The TCP side of an agent tunnel. Reads stay off until the preamble exchange is done.
final class TunnelTCPHandler: ChannelDuplexHandler, RemovableChannelHandler, TunnelLocalSide {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var context: ChannelHandlerContext?
    private weak var webSocket: TunnelWebSocketHandler?
    private var gate = LocalReadGate()
    private var outputShut = false
    private var inputClosed = false
    private var uncountedBytes = 0
    /// Bytes read from the TCP peer and passed into the open tunnel, reported once per read burst: bytes of a
    /// tunnel that never opened are not counted as moved.
    var countBytes: (Int) -> Void
    /// Runs once, when the connection becomes active (the client opens its sender then).
    var onActive: (() -> Void)?

    init(countBytes: @escaping (Int) -> Void = { _ in }) {
        self.countBytes = countBytes
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    var isActive: Bool { context?.channel.isActive ?? false }

    /// A FIN that came before the WebSocket side was attached is reported to it now.
    func attach(_ webSocket: TunnelWebSocketHandler) {
        self.webSocket = webSocket
        if inputClosed { webSocket.localInputEnded() }
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        let action = onActive
        onActive = nil
        action?()
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        onActive = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let bytes = gate.received(unwrapInboundIn(data)) else { return }
        uncountedBytes &+= bytes.readableBytes
        webSocket?.send(bytes)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        reportBytes()
        webSocket?.flush()
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            inputClosed = true
            webSocket?.localInputEnded()
            if outputShut { close() }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func read(context: ChannelHandlerContext) {
        if gate.readRequested(webSocketWritable: webSocket?.isWritable ?? false) { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { webSocket?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        reportBytes()
        webSocket?.sendClose(code: .normalClosure, reason: FrameRules.Reason.shutdown)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        webSocket?.sendClose(code: .unexpectedServerError, reason: "TCP error: \(ErrorWords.describe(error))")
        context.close(promise: nil)
    }

    private func reportBytes() {
        guard uncountedBytes > 0 else { return }
        countBytes(uncountedBytes)
        uncountedBytes = 0
    }

    func startReading() {
        for data in gate.start() {
            uncountedBytes &+= data.readableBytes
            webSocket?.send(data)
        }
        reportBytes()
        webSocket?.flush()
        resumeReading()
    }

    func resumeReading() {
        guard let context, gate.resume() else { return }
        context.read()
    }

    func write(_ data: ByteBuffer) { context?.write(wrapOutboundOut(data), promise: nil) }

    func flush() { context?.flush() }

    /// The relay side closed: no more bytes toward the TCP peer.
    func shutdownOutput() {
        guard let context, !outputShut else { return }
        outputShut = true
        // After the peer's FIN NIO turns an output close into a full close, which drops queued writes:
        // wait for everything written so far first.
        afterPendingWrites(context) { context.close(mode: .output, promise: nil) }
    }

    func close() {
        guard let context else { return }
        afterPendingWrites(context) { context.close(promise: nil) }
    }

    /// Runs `body` once every write issued so far has reached the socket (writes complete in order).
    private func afterPendingWrites(_ context: ChannelHandlerContext, _ body: @escaping () -> Void) {
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in body() }
    }
}

@available(*, unavailable)
extension TunnelTCPHandler: Sendable {}

extension HopSpan {
    /// The bridge attributes of a finished tunnel.
    func record(_ summary: TunnelSummary) {
        attributes["bytes_up"] = summary.bytesUp
        attributes["bytes_down"] = summary.bytesDown
        attributes["close_cause"] = summary.causeLabel
        if let ttfb = summary.timeToFirstByte { attributes["ttfb_ms"] = (ttfb * 1000 * 1000).rounded() / 1000 }
        if summary.failed {
            setStatus(SpanStatus(code: .error, message: summary.closeCause))
        }
    }
}
