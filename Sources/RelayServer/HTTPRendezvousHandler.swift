import HybridConnections
import Logging
import NIOCore
import NIOWebSocket
import RelayIO

/// A listener's rendezvous for one HTTP-mode request (`sb-hc-action=request`). For a request the control
/// channel could not carry it writes the `request` message, then the body as one binary message whose frames
/// the client's forwarder hands over as they arrive. It reads the listener's `response` and streams its body
/// to the forwarder in the pieces read, withholding reads while the client's socket is full; a response whose
/// body is complete within one read burst goes over whole (the client then gets a `Content-Length`).
final class HTTPRendezvousHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private enum Response {
        case awaitingHead
        /// The head is known and not handed over yet: it waits for the end of the read burst, or of the body.
        case headHeld(HTTPResponseAssembler.ResponseHead)
        case streaming
        case complete
    }

    private let hub: RelayHub
    private let key: String
    private let pending: PendingHTTPRequest
    private var context: ChannelHandlerContext?
    private var reader = WebSocketFrameReader()
    private var remainder = HeadRemainder()
    private var messages: MessageAssembler
    private var pongs = PongReplies()
    private var response = Response.awaitingHead
    /// Response body read in this burst, not handed over yet.
    private var burst = ByteBuffer()
    private var sentClose = false
    /// The request body's first frame is written: the rest are continuations.
    private var bodyStarted = false
    private var clientWritable = true
    private var readWithheld = false

    init(hub: RelayHub, key: String, pending: PendingHTTPRequest) {
        self.hub = hub
        self.key = key
        self.pending = pending
        messages = MessageAssembler(
            limit: ListenerControlHandler.maxControlMessageBytes, frameLimit: hub.limits.maxFrameBytes,
            streamsBinary: true)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case WebSocketUpgradeEvent.completed = event {
            if !pending.sentOnControlChannel { context.writeControlMessage(.request(pending.command), body: nil) }
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            pending.forwarder.send { $0.rendezvousOpened(bound) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: The request body, from the forwarder

    /// Writes request body parts as frames of one binary message; `end` finishes it.
    func bodyParts(_ parts: [ByteBuffer], end: Bool) {
        guard let context, !sentClose else { return }
        let nonEmpty = parts.filter { $0.readableBytes > 0 }
        for (index, part) in nonEmpty.enumerated() {
            writeBodyFrame(part, fin: end && index == nonEmpty.count - 1, context: context)
        }
        if end && nonEmpty.isEmpty { writeBodyFrame(ByteBuffer(), fin: true, context: context) }
        context.flush()
    }

    private func writeBodyFrame(_ data: ByteBuffer, fin: Bool, context: ChannelHandlerContext) {
        let frame = WebSocketFrame(fin: fin, opcode: bodyStarted ? .continuation : .binary, data: data)
        bodyStarted = true
        context.write(wrapOutboundOut(frame), promise: nil)
    }

    func clientWritabilityChanged(_ writable: Bool) {
        clientWritable = writable
        guard writable, readWithheld, let context else { return }
        readWithheld = false
        context.read()
    }

    /// The exchange ended on the client's side (answered by the relay, timed out, the client gone).
    func exchangeAbandoned() {
        guard let context, !sentClose else { return }
        sentClose = true
        context.closeWebSocket(code: .goingAway, reason: "The HTTP exchange ended")
    }

    // MARK: The listener's response

    func read(context: ChannelHandlerContext) {
        guard clientWritable else {
            readWithheld = true
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        pending.forwarder.send { $0.rendezvousWritabilityChanged(writable) }
        if !sentClose, writable { context.sendPong(pongs.becameWritable()) }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = remainder.joined(unwrapInboundIn(data))
        do {
            while !sentClose, let part = try reader.read(from: &buffer) { received(part, context: context) }
        } catch {
            hub.logger.warning(
                "listener broke the protocol on a request rendezvous: \(error.reason)",
                metadata: ["reason": "protocol_error"])
            refuseResponse(context: context, code: error.code, reason: error.reason, label: "protocol_error")
            return
        }
        remainder.keep(buffer)
    }

    private func received(_ part: WebSocketFrameReader.Part, context: ChannelHandlerContext) {
        switch part {
        case .control(let frame) where frame.opcode == .ping:
            context.sendPong(pongs.pingReceived(frame.data, writable: context.channel.isWritable))
        case .control(let frame) where frame.opcode == .connectionClose:
            // The .NET listener closes the rendezvous after every response; answer and hang up.
            sentClose = true
            context.answerClose(frame)
        case .control:
            break
        case .head, .payload:
            switch messages.receive(part) {
            case .none: break
            case .message(.text, let data): textMessage(data, context: context)
            case .message: break
            case .binaryPart(var piece, let last): bodyPiece(&piece, last: last)
            case .tooLarge, .frameTooLarge:
                refuseResponse(
                    context: context, code: .messageTooLarge,
                    reason:
                        "\(FrameRules.Reason.messageTooBig): text messages are limited to "
                        + "\(ListenerControlHandler.maxControlMessageBytes) bytes",
                    label: "message_too_big")
            }
        }
    }

    private func textMessage(_ data: ByteBuffer, context: ChannelHandlerContext) {
        guard case .awaitingHead = response,
            let message = try? ControlMessage(decoding: data.readableBytesView),
            case .response(let command) = message
        else {
            hub.logger.warning(
                "ignored rendezvous message that is not an awaited response",
                metadata: ["reason": "bad_control_message"])
            return
        }
        // The response names its request; on a rendezvous it can only be this one. The first response wins.
        guard hub.takeHTTPExchange(key: key) != nil else {
            hub.logger.info("response for an unknown or expired request", metadata: ["request_id": "\(key)"])
            response = .complete
            return
        }
        let head = HTTPResponseAssembler.ResponseHead(
            requestId: command.requestId, statusCode: command.statusCode,
            statusDescription: command.statusDescription, headers: command.responseHeaders ?? [:])
        if command.body == true {
            response = .headHeld(head)
        } else {
            response = .complete
            pending.forwarder.send { $0.responseHead(head, body: ByteBuffer(), ended: true) }
        }
    }

    private func bodyPiece(_ piece: inout ByteBuffer, last: Bool) {
        switch response {
        case .headHeld, .streaming:
            burst.writeBuffer(&piece)
            if last { handOver(ended: true) }
        case .awaitingHead, .complete:
            hub.logger.warning(
                "ignored binary message with no response waiting for it", metadata: ["reason": "bad_control_message"])
        }
    }

    /// Gives the forwarder what this burst read: the head with the body so far, or the next piece.
    private func handOver(ended: Bool) {
        let body = burst
        burst = ByteBuffer()
        switch response {
        case .headHeld(let head):
            response = ended ? .complete : .streaming
            pending.forwarder.send { $0.responseHead(head, body: body, ended: ended) }
        case .streaming:
            if ended { response = .complete }
            pending.forwarder.send { $0.responseBody(body, ended: ended) }
        case .awaitingHead, .complete:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        switch response {
        case .headHeld: handOver(ended: false)
        case .streaming where burst.readableBytes > 0: handOver(ended: false)
        default: break
        }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch response {
        case .complete:
            break
        case .headHeld, .streaming:
            pending.forwarder.send {
                $0.failed(
                    Refusal(
                        status: 502, text: "BadGateway: The listener closed the rendezvous before its response ended",
                        reason: "listener_gone"))
            }
        case .awaitingHead:
            // Answered on the control channel, or not at all: the forwarder's deadline covers the latter.
            if !pending.sentOnControlChannel {
                pending.forwarder.send {
                    $0.failed(
                        Refusal(
                            status: 502, text: "BadGateway: The listener closed the rendezvous without a response",
                            reason: "listener_gone"))
                }
            }
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !sentClose else { return }
        context.close(promise: nil)
    }

    /// The listener's response cannot be taken: the listener hears why (a Close), the waiting HTTP client
    /// gets 502 at once rather than a 504 when its timeout runs out, and both are logged and counted.
    private func refuseResponse(
        context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String, label: String
    ) {
        hub.logger.warning(
            "listener response refused on a request rendezvous: \(reason)", metadata: ["reason": "\(label)"])
        response = .complete
        pending.forwarder.send {
            $0.failed(
                Refusal(status: 502, text: "BadGateway: The listener's response was refused: \(reason)", reason: label))
        }
        sentClose = true
        context.closeWebSocket(code: code, reason: reason)
    }
}

@available(*, unavailable)
extension HTTPRendezvousHandler: Sendable {}
