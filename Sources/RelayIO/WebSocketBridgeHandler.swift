import NIOCore
import NIOWebSocket

/// Byte and frame counts of one bridged leg, kept as plain integers on the leg's event loop.
public struct BridgeLegStatistics: Sendable, Equatable {
    /// Payload bytes received from this leg's peer and forwarded to the partner.
    public var bytesIn: Int = 0
    public var framesIn: Int = 0
    /// Close code the peer sent, if it sent one.
    public var closeCode: Int?
    /// Why the leg was ended for a frame that broke RFC 6455, if it was.
    public var violation: String?

    public init() {}
}

/// One leg of a joined WebSocket pair (sender ↔ listener rendezvous). Frames are forwarded as they are:
/// opcodes, FIN bits and close codes pass through, payloads are unmasked word-wise. Pings are answered
/// per leg (only the latest while the peer does not read, see `PongReplies`); pongs are dropped. A frame
/// that breaks `FrameRules` ends the leg with 1002/1007; text payloads are not checked for UTF-8 (the
/// endpoints do, and the relay would have to hold fragmented messages to do it).
///
/// Back-pressure: a leg withholds `read()` while its partner's channel is not writable, and resumes
/// when the partner reports writability again, so a slow reader slows the writer and memory stays
/// bounded by one read burst per leg.
///
/// Half-close (reference §1.5 point 5): a Close from one peer is forwarded to the other peer, not
/// echoed; the other direction keeps flowing until that peer closes too. A leg's channel closes once
/// it has both received and sent a Close.
public final class WebSocketBridgeHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = WebSocketFrame
    public typealias OutboundIn = WebSocketFrame
    public typealias OutboundOut = WebSocketFrame

    /// How long a leg waits for its peer's Close reply after the partner leg vanished.
    public static let closeReplyTimeout: TimeAmount = .seconds(5)

    private var partner: NIOLoopBound<WebSocketBridgeHandler>?
    private var context: ChannelHandlerContext?
    private var pending: [WebSocketFrame] = []
    private var partnerWritable = true
    private var pongs = PongReplies()
    private var readPending = false
    private var receivedClose = false
    private var sentClose = false
    private var closeWritten: EventLoopFuture<Void>?
    private var partnerGone = false
    private var finished = false
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
        if finished {
            // This leg went away before it was joined: the partner learns now.
            partner.eventLoop.execute { partner.value.partnerDidClose() }
            return
        }
        // Frames can arrive before the join despite withheld reads: NIO drains input on a peer's FIN.
        forwardPending()
        if readPending, let context {
            readPending = false
            context.read()
        }
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if let violation = FrameRules.violation(in: frame) {
            protocolViolated(violation, context: context)
            return
        }
        switch frame.opcode {
        case .ping:
            guard !sentClose else { return }
            context.sendPong(
                pongs.pingReceived(
                    frame.unmasked(allocator: context.channel.allocator).data, writable: context.channel.isWritable))
        case .pong:
            break
        case .connectionClose:
            guard !receivedClose else { return }
            let unmasked = frame.unmasked(allocator: context.channel.allocator)
            if let violation = FrameRules.closeViolation(unmasked.data) {
                protocolViolated(violation, context: context)
                return
            }
            receivedClose = true
            var data = unmasked.data
            statistics.closeCode = data.readInteger(as: UInt16.self).map(Int.init)
            pending.append(unmasked)
        default:
            guard !receivedClose else { return }
            statistics.bytesIn &+= frame.length
            statistics.framesIn &+= 1
            uncountedBytes &+= frame.length
            pending.append(frame.unmasked(allocator: context.channel.allocator))
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        if uncountedBytes > 0 {
            countBytes(uncountedBytes)
            uncountedBytes = 0
        }
        forwardPending()
        if receivedClose && sentClose {
            context.close(after: closeWritten)
        }
        context.fireChannelReadComplete()
    }

    private func forwardPending() {
        guard !pending.isEmpty, let partner else { return }
        let frames = pending
        // A fresh array: keeping the capacity would only copy the one just handed over.
        pending = []
        partner.eventLoop.execute {
            partner.value.deliver(frames)
        }
    }

    /// Frames from the partner leg, written to this leg's peer in one flush.
    private func deliver(_ frames: [WebSocketFrame]) {
        guard let context, !sentClose else { return }
        for frame in frames {
            if frame.opcode == .connectionClose {
                writeClose(frame, context: context)
                break
            }
            context.write(wrapOutboundOut(frame), promise: nil)
        }
        context.flush()
        if sentClose && receivedClose {
            context.close(after: closeWritten)
        }
    }

    public func read(context: ChannelHandlerContext) {
        if partnerWritable && partner != nil {
            context.read()
        } else {
            readPending = true
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        if !sentClose, context.channel.isWritable { context.sendPong(pongs.becameWritable()) }
        if let partner {
            partner.eventLoop.execute {
                partner.value.partnerWritabilityChanged(writable)
            }
        }
        context.fireChannelWritabilityChanged()
    }

    private func partnerWritabilityChanged(_ writable: Bool) {
        partnerWritable = writable
        if writable && readPending, let context {
            readPending = false
            context.read()
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if uncountedBytes > 0 {
            countBytes(uncountedBytes)
            uncountedBytes = 0
        }
        forwardPending()
        finish()
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
        receivedClose = true
        statistics.closeCode = Int(violation.code)
        statistics.violation = violation.reason
        if !sentClose {
            writeClose(
                FrameRules.closeFrame(
                    code: violation.code, reason: violation.reason, allocator: context.channel.allocator),
                context: context)
            context.flush()
        }
        context.close(after: closeWritten)
    }

    /// The partner's channel is gone. If its peer never sent a Close, ours learns with 1001; then we
    /// wait briefly for our peer's Close reply.
    public func partnerDidClose() {
        partnerGone = true
        guard let context, context.channel.isActive else { return }
        if !sentClose {
            writeClose(
                FrameRules.closeFrame(code: 1001, reason: "The peer went away", allocator: context.channel.allocator),
                context: context)
            context.flush()
        }
        if receivedClose {
            context.close(after: closeWritten)
        } else {
            context.eventLoop.assumeIsolated().scheduleTask(in: Self.closeReplyTimeout) { [weak self] in
                self?.context?.close(promise: nil)
            }
        }
    }

    /// The Close is the last frame this leg writes, so its completion means everything before it is out.
    private func writeClose(_ frame: WebSocketFrame, context: ChannelHandlerContext) {
        sentClose = true
        let written = context.eventLoop.makePromise(of: Void.self)
        context.write(wrapOutboundOut(frame), promise: written)
        closeWritten = written.futureResult
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func finish() {
        guard !finished else { return }
        finished = true
        onFinished(statistics)
    }
}

@available(*, unavailable)
extension WebSocketBridgeHandler: Sendable {}
