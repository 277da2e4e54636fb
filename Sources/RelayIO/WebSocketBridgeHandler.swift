import NIOCore
import NIOWebSocket

/// Byte and frame counts of one bridged leg, kept as plain integers on the leg's event loop.
public struct BridgeLegStatistics: Sendable, Equatable {
    /// Payload bytes received from this leg's peer and forwarded to the partner.
    public var bytesIn: Int = 0
    public var framesIn: Int = 0
    /// Close code the peer sent, if it sent a Close: 1005 ("no status received", RFC 6455 §7.1.5) for a
    /// Close without a body, which is as clean a close as any.
    public var closeCode: Int?
    /// Why the leg was ended for a frame that broke RFC 6455, if it was.
    public var violation: String?
    /// The peer's connection ended with no Close either way (a dropped socket, a killed process): the tunnel
    /// was lost here, not closed. A peer that drops after the relay's Close was sent to it is not.
    public var lost = false

    public init() {}
}

/// One leg of a joined WebSocket pair (sender ↔ listener rendezvous), reading its peer's bytes itself. Frames
/// pass through as they arrive, without waiting for their end: `WebSocketFrameReader.forward` rewrites each
/// read into the bytes the partner's peer gets (heads without a mask key, payload unmasked, one copy into one
/// buffer), so a frame of any size crosses in memory bounded by the write watermarks. Opcodes, FIN bits and close codes
/// pass through. Pings are answered per leg (only the latest while the peer does not read, see
/// `PongReplies`), never inside a frame being written; pongs are dropped. A frame that breaks the rules ends
/// the leg with 1002/1007; text payloads are not checked for UTF-8 (the endpoints do, and the relay would
/// have to hold whole messages to do it).
///
/// Back-pressure: a leg withholds `read()` while its partner's channel is not writable, and resumes
/// when the partner reports writability again, so a slow reader slows the writer.
///
/// Half-close (reference §1.5 point 5): a Close from one peer is forwarded to the other peer, not
/// echoed; the other direction keeps flowing until that peer closes too. A leg's channel closes once
/// it has both received and sent a Close. A leg whose partner vanished in the middle of a frame cannot
/// send a Close any more (it would land inside that frame's payload): its connection is closed instead.
public final class WebSocketBridgeHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    /// How long a leg waits for its peer's Close reply after the partner leg vanished.
    public static let closeReplyTimeout: TimeAmount = .seconds(5)

    private var partner: NIOLoopBound<WebSocketBridgeHandler>?
    private var context: ChannelHandlerContext?
    private var state = BridgeLegStateMachine()
    private var reader = WebSocketFrameReader()
    private var remainder = HeadRemainder()
    /// The rewritten bytes of the current read burst, handed on at read-complete.
    private var output = WebSocketFrameReader.ForwardOutput()
    private var pending: [WebSocketFrameReader.ForwardPart] = []
    private var closeWritten: EventLoopFuture<Void>?
    private var statistics = BridgeLegStatistics()
    private var uncountedBytes = 0
    private let countBytes: @Sendable (Int) -> Void
    private let onFinished: @Sendable (BridgeLegStatistics) -> Void

    /// - Parameters:
    ///   - countBytes: called once per read burst with the payload bytes received since the last call,
    ///     so byte metrics move while a connection runs at the cost of one update per burst.
    ///   - onFinished: called once, on this leg's loop, when the leg's channel is gone.
    public init(
        countBytes: @escaping @Sendable (Int) -> Void = { _ in },
        onFinished: @escaping @Sendable (BridgeLegStatistics) -> Void = { _ in }
    ) {
        self.countBytes = countBytes
        self.onFinished = onFinished
    }

    /// Joins this leg to its partner. Until then reads are withheld, so nothing is lost.
    public func attach(partner: NIOLoopBound<WebSocketBridgeHandler>) {
        self.partner = partner
        if state.isFinished {
            // This leg went away before it was joined: the partner learns now.
            partner.eventLoop.execute { partner.value.partnerDidClose() }
            return
        }
        // Frames can arrive before the join despite withheld reads: NIO drains input on a peer's FIN.
        forwardPending()
        if state.joinedPartner() { context?.read() }
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        // The legs hold each other: without this, every tunnel's two handlers (and all they hold) outlived it.
        partner = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state.takesData else { return }
        var buffer = remainder.joined(unwrapInboundIn(data))
        do {
            try reader.forward(from: &buffer, into: &output, allocator: context.channel.allocator) { part in
                received(part, context: context)
            }
        } catch {
            protocolViolated(error, context: context)
            return
        }
        remainder.keep(buffer)
    }

    private func received(_ part: WebSocketFrameReader.ForwardPart, context: ChannelHandlerContext) {
        guard state.takesData else { return }
        switch part {
        case .bytes:
            queue(part)
        case .control(let frame) where frame.opcode == .ping:
            sendPong(state.pingReceived(frame.data, writable: context.channel.isWritable), context: context)
        case .control(let frame) where frame.opcode == .connectionClose:
            guard state.closeReceived(code: frame.data.getInteger(at: frame.data.readerIndex, as: UInt16.self))
            else { return }
            pending.append(part)
        case .control:
            break
        }
    }

    /// Rewritten bytes for the partner, counted as they are queued.
    private func queue(_ part: WebSocketFrameReader.ForwardPart) {
        if case .bytes(_, let payloadBytes, let framesStarted, _) = part {
            statistics.framesIn &+= framesStarted
            statistics.bytesIn &+= payloadBytes
            uncountedBytes &+= payloadBytes
        }
        pending.append(part)
    }

    /// The read burst's rewritten bytes join the queue (a Close read in the burst already took them).
    private func queueOutput() {
        guard state.takesData, let part = reader.take(&output) else { return }
        queue(part)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        queueOutput()
        reportBytes()
        forwardPending()
        if state.closesAfterReadBurst { context.close(after: closeWritten) }
        context.fireChannelReadComplete()
    }

    private func reportBytes() {
        guard uncountedBytes > 0 else { return }
        countBytes(uncountedBytes)
        uncountedBytes = 0
    }

    private func forwardPending() {
        guard !pending.isEmpty, let partner else { return }
        let parts = pending
        // A fresh array: keeping the capacity would only copy the one just handed over.
        pending = []
        partner.eventLoop.execute {
            partner.value.deliver(parts)
        }
    }

    /// Parts from the partner leg, written to this leg's peer in one flush.
    private func deliver(_ parts: [WebSocketFrameReader.ForwardPart]) {
        guard let context, !state.closeState.sent else { return }
        for part in parts {
            switch part {
            case .bytes(let bytes, _, _, let endsInsideFrame):
                state.partnerBytesWritten(endsInsideFrame: endsInsideFrame)
                context.write(wrapOutboundOut(bytes), promise: nil)
            case .control(let frame):
                if state.partnerCloseArrived() { writeClose(frame, context: context) }
            }
            if state.closeState.sent { break }
        }
        let (pong, close) = state.deliveryWritten(writable: context.channel.isWritable)
        sendPong(pong, context: context)
        context.flush()
        if close { context.close(after: closeWritten) }
    }

    private func sendPong(_ payload: ByteBuffer?, context: ChannelHandlerContext) {
        guard let payload else { return }
        let frame = WebSocketFrame(fin: true, opcode: .pong, data: payload)
        context.writeAndFlush(
            wrapOutboundOut(WebSocketFrameHeader.unmaskedFrame(frame, allocator: context.channel.allocator)),
            promise: nil)
    }

    public func read(context: ChannelHandlerContext) {
        if state.readRequested() { context.read() }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        sendPong(state.writabilityChanged(writable), context: context)
        if let partner {
            partner.eventLoop.execute {
                partner.value.partnerWritabilityChanged(writable)
            }
        }
        context.fireChannelWritabilityChanged()
    }

    private func partnerWritabilityChanged(_ writable: Bool) {
        if state.partnerWritabilityChanged(writable) { context?.read() }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        queueOutput()
        reportBytes()
        forwardPending()
        if state.channelInactive() {
            statistics.closeCode = state.closeCode
            statistics.lost = state.closeState == .open && statistics.violation == nil
            onFinished(statistics)
        }
        if let partner {
            partner.eventLoop.execute {
                partner.value.partnerDidClose()
            }
        }
        context.fireChannelInactive()
    }

    /// This leg's peer broke the protocol: it gets a Close with the reason and the leg ends; the partner's
    /// peer learns with 1001 when this channel is gone. Nothing more is read from the offender.
    private func protocolViolated(_ violation: FrameRules.Violation, context: ChannelHandlerContext) {
        statistics.violation = violation.reason
        if state.violation(code: UInt16(webSocketErrorCode: violation.code)) == .closeWithReasonThenClose {
            writeClose(
                FrameRules.closeFrame(
                    code: violation.code, reason: violation.reason, allocator: context.channel.allocator),
                context: context)
            context.flush()
        }
        context.close(after: closeWritten)
    }

    /// The partner's channel is gone. If its peer never sent a Close, ours learns with 1001; then we
    /// wait briefly for our peer's Close reply. Gone in the middle of a frame, the frame cannot be finished
    /// nor a Close sent after it: the connection is closed.
    public func partnerDidClose() {
        guard let context else { return }
        let action = state.partnerGone(active: context.channel.isActive)
        switch action {
        case .none:
            return
        case .closeNow:
            context.close(promise: nil)
            return
        case .goingAwayThenClose, .goingAwayThenAwaitReply:
            writeClose(
                FrameRules.closeFrame(
                    code: .goingAway, reason: "The peer went away", allocator: context.channel.allocator),
                context: context)
            context.flush()
        case .closeAfterCloseWritten, .awaitReply:
            break
        }
        if action == .goingAwayThenClose || action == .closeAfterCloseWritten {
            context.close(after: closeWritten)
        } else {
            context.eventLoop.assumeIsolated().scheduleTask(in: Self.closeReplyTimeout) { [weak self] in
                self?.context?.close(promise: nil)
            }
        }
    }

    /// The Close is the last frame this leg writes, so its completion means everything before it is out.
    private func writeClose(_ frame: WebSocketFrame, context: ChannelHandlerContext) {
        let written = context.eventLoop.makePromise(of: Void.self)
        context.write(
            wrapOutboundOut(WebSocketFrameHeader.unmaskedFrame(frame, allocator: context.channel.allocator)),
            promise: written)
        closeWritten = written.futureResult
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension WebSocketBridgeHandler: Sendable {}
