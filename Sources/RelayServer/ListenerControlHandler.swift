import HybridConnections
import Logging
import NIOCore
import NIOWebSocket
import Prometheus
import RelayIO
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The relay's side of a listener control channel: sends `accept` and `request` messages, takes
/// `renewToken` and `response` messages, pings the listener and evicts it when it stops answering or
/// its token lapses.
final class ListenerControlHandler: ChannelInboundHandler, RemovableChannelHandler {
    /// The channel's bytes, read here with `WebSocketFrameReader` (the frame rules every role shares).
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    /// Control-channel JSON is kept under 64 KiB (the .NET listener's receive buffer).
    static let maxControlMessageBytes = 64 * 1024

    var handle: ListenerHandle?
    private let hub: RelayHub
    private let entity: HybridConnectionConfiguration
    private let trackingId: String
    private let requestHost: String?
    private var tokenExpiry: Int64
    private var context: ChannelHandlerContext?
    private var pingTask: Scheduled<Void>?
    /// Fires at the token's `se` plus the grace: the channel ends then, not at the next ping.
    private var expiryTask: Scheduled<Void>?
    private var missedPongs = 0
    private var pongs = PongReplies()
    /// Ticks in a row at which the listener's socket had unread data queued past the high-water mark.
    private var stalledTicks = 0
    private var closing = false
    /// Why the channel ended, as a bounded metric label.
    private var closeCause = "closed"
    private var reader = WebSocketFrameReader()
    private var remainder = HeadRemainder()
    private var messages: MessageAssembler
    private var responses = HTTPResponseAssembler()
    private var logger: Logger

    init(
        hub: RelayHub, entity: HybridConnectionConfiguration, trackingId: String, tokenExpiry: Int64,
        requestHost: String?
    ) {
        self.hub = hub
        self.entity = entity
        self.trackingId = trackingId
        self.tokenExpiry = tokenExpiry
        self.requestHost = requestHost
        messages = MessageAssembler(
            limit: max(Self.maxControlMessageBytes, hub.limits.maxHTTPBodyBytes),
            textLimit: Self.maxControlMessageBytes,
            frameLimit: hub.limits.maxFrameBytes)
        logger = hub.logger
        logger[metadataKey: "entity"] = "\(entity.name)"
        logger[metadataKey: "listener_id"] = "\(trackingId)"
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        scheduleTick()
        scheduleExpiry()
    }

    private func scheduleExpiry() {
        expiryTask?.cancel()
        guard let context, tokenExpiry != .max else { return }
        let deadline = Double(tokenExpiry) + hub.limits.tokenGraceSeconds - Date().timeIntervalSince1970
        expiryTask = context.eventLoop.assumeIsolated().scheduleTask(in: .fractionalSeconds(max(0, deadline))) {
            [weak self] in
            guard let self, !self.closing else { return }
            self.closeCause = "token_expired"
            self.logger.warning("listener token expired", metadata: ["reason": "token_expired"])
            self.close(code: 1008, reason: "The security token expired")
        }
    }

    private func scheduleTick() {
        guard let context else { return }
        pingTask = context.eventLoop.assumeIsolated().scheduleTask(
            in: .fractionalSeconds(hub.limits.pingIntervalSeconds)
        ) {
            [weak self] in
            self?.tick()
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        pingTask?.cancel()
        expiryTask?.cancel()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        pingTask?.cancel()
        expiryTask?.cancel()
        if let handle { hub.unregister(handle) }
        hub.metrics.listenerEvent(role: .relay, entity: entity.name, event: "disconnect", cause: closeCause)
        logger.info(
            "listener disconnected",
            metadata: ["listeners": "\(hub.listenerCount(entity: entity.name))", "cause": "\(closeCause)"])
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = remainder.joined(unwrapInboundIn(data))
        do {
            while !closing, let part = try reader.read(from: &buffer) { received(part, context: context) }
        } catch {
            closeCause = "protocol_error"
            logger.warning("listener broke the protocol: \(error.reason)", metadata: ["reason": "protocol_error"])
            close(code: error.code, reason: error.reason)
            return
        }
        remainder.keep(buffer)
    }

    private func received(_ part: WebSocketFrameReader.Part, context: ChannelHandlerContext) {
        if case .control(let frame) = part {
            switch frame.opcode {
            case .ping:
                context.sendPong(pongs.pingReceived(frame.data, writable: context.channel.isWritable))
            case .pong:
                // Solicited or not (the .NET runtime sends unsolicited pongs as heartbeats): proof of life.
                missedPongs = 0
            case .connectionClose:
                closeCause = "listener_closed"
                close(code: 1000, reason: "Normal Closure")
            default:
                break
            }
            return
        }
        missedPongs = 0
        switch messages.receive(part) {
        case .none: break
        case .message(.text, let data): textMessage(data)
        case .message(_, let data): binaryMessage(data)
        case .tooLarge:
            closeCause = "message_too_big"
            logger.warning("listener sent a message over the limit", metadata: ["reason": "message_too_big"])
            close(code: 1009, reason: "Message too big")
        case .frameTooLarge:
            closeCause = "message_too_big"
            let reason = "Message too big: frames over \(hub.limits.maxFrameBytes) bytes are not accepted here"
            logger.warning("listener sent \(reason)", metadata: ["reason": "message_too_big"])
            close(code: 1009, reason: reason)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if !closing, context.channel.isWritable { context.sendPong(pongs.becameWritable()) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !closing else { return }
        logger.warning("control channel error: \(error)", metadata: ["reason": "protocol_error"])
        context.close(promise: nil)
    }

    private func textMessage(_ data: ByteBuffer) {
        let message: ControlMessage
        do {
            message = try ControlMessage(decoding: data.readableBytesView)
        } catch {
            logger.warning("ignored control message: \(error)", metadata: ["reason": "bad_control_message"])
            return
        }
        switch message {
        case .renewToken(let renew):
            renewToken(renew.token)
        case .response(let response):
            handle(responses.response(response))
        case .accept, .request:
            logger.warning(
                "ignored control message the relay sends, not receives", metadata: ["reason": "bad_control_message"])
        }
    }

    private func binaryMessage(_ data: ByteBuffer) {
        handle(responses.binaryMessage(data))
    }

    private func handle(_ event: HTTPResponseAssembler.Event) {
        switch event {
        case .none:
            break
        case .complete(let head, let body):
            if !hub.completeHTTP(key: head.requestId, head: head, body: body) {
                logger.info("response for an unknown or expired request", metadata: ["request_id": "\(head.requestId)"])
            }
        case .unexpected(let why):
            logger.warning("ignored control message: \(why)", metadata: ["reason": "bad_control_message"])
        }
    }

    private func renewToken(_ token: String) {
        do {
            let expiry = try hub.policy.authorize(
                entity: entity, token: token, right: .listen, requestHost: requestHost,
                now: Int64(Date().timeIntervalSince1970))
            tokenExpiry = expiry ?? .max
            scheduleExpiry()
            hub.metrics.listenerEvent(role: .relay, entity: entity.name, event: "renew")
            logger.info("listener token renewed", metadata: ["expiry": "\(tokenExpiry)"])
        } catch {
            closeCause = "renew_refused"
            hub.metrics.authFailure(role: .relay, reason: error.reason)
            logger.warning("renewToken refused: \(error.text)", metadata: ["reason": "\(error.reason)"])
            close(code: 1008, reason: "Token renewal failed: \(error.reason)")
        }
    }

    private func tick() {
        guard let context, !closing else { return }
        // A listener that pongs but never reads would let accept and request messages pile up here.
        stalledTicks = context.channel.isWritable ? 0 : stalledTicks + 1
        if stalledTicks >= hub.limits.missedPongLimit {
            evict(context: context, cause: "not_reading", "listener evicted: it does not read its control channel")
            return
        }
        if missedPongs >= hub.limits.missedPongLimit {
            evict(
                context: context, cause: "ping_timeout", "listener evicted: no pong (\(missedPongs) pings unanswered)")
            return
        }
        missedPongs += 1
        context.writeAndFlush(
            wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer())), promise: nil)
        scheduleTick()
    }

    /// Drops a listener that no longer does its part, without a Close: it would not read one.
    private func evict(context: ChannelHandlerContext, cause: String, _ message: String) {
        closeCause = cause
        logger.warning("\(message)", metadata: ["reason": "\(cause)"])
        closing = true
        if let handle { hub.unregister(handle) }
        context.close(promise: nil)
    }

    /// The relay drains or the entity is gone: 1001, so the listener reconnects elsewhere.
    func goAway(reason: String) {
        closeCause = "going_away"
        close(code: 1001, reason: reason)
    }

    /// Writes `message` and its body back to back, so no other message can come between them.
    func send(_ message: ControlMessage, body: ByteBuffer?) {
        guard let context, !closing else { return }
        context.writeControlMessage(message, body: body)
    }

    private func close(code: UInt16, reason: String) {
        guard let context, !closing else { return }
        closing = true
        if let handle { hub.unregister(handle) }
        context.closeWebSocket(code: code, reason: reason)
    }
}

@available(*, unavailable)
extension ListenerControlHandler: Sendable {}

/// A listener's rendezvous for one HTTP-mode request (`sb-hc-action=request`): delivers the request
/// when it did not fit the control channel, then reads the `response` and its body.
final class HTTPRendezvousHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    private let hub: RelayHub
    private let key: String
    private let request: PendingHTTPRequest?
    private var reader = WebSocketFrameReader()
    private var remainder = HeadRemainder()
    private var messages: MessageAssembler
    private var responses = HTTPResponseAssembler()
    private var pongs = PongReplies()
    private var sentClose = false

    init(hub: RelayHub, key: String, request: PendingHTTPRequest?) {
        self.hub = hub
        self.key = key
        self.request = request
        messages = MessageAssembler(
            limit: hub.limits.maxHTTPBodyBytes, textLimit: ListenerControlHandler.maxControlMessageBytes,
            frameLimit: hub.limits.maxFrameBytes)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case WebSocketUpgradeEvent.completed = event { sendRequest(context: context) }
        context.fireUserInboundEventTriggered(event)
    }

    private func sendRequest(context: ChannelHandlerContext) {
        guard let request else { return }
        context.writeControlMessage(.request(request.command), body: request.command.body == true ? request.body : nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = remainder.joined(unwrapInboundIn(data))
        do {
            while !sentClose, let part = try reader.read(from: &buffer) { received(part, context: context) }
        } catch {
            hub.logger.warning(
                "listener broke the protocol on a request rendezvous: \(error.reason)",
                metadata: ["reason": "protocol_error"])
            sentClose = true
            context.closeWebSocket(code: error.code, reason: error.reason)
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
            context.writeAndFlush(
                wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: frame.data))
            )
            .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        case .control:
            break
        case .head, .payload:
            let event: HTTPResponseAssembler.Event
            switch messages.receive(part) {
            case .none: return
            case .message(.text, let data):
                guard let message = try? ControlMessage(decoding: data.readableBytesView),
                    case .response(let response) = message
                else {
                    hub.logger.warning(
                        "ignored rendezvous message that is not a response", metadata: ["reason": "bad_control_message"]
                    )
                    return
                }
                event = responses.response(response)
            case .message(_, let data): event = responses.binaryMessage(data)
            case .tooLarge:
                refuseResponse(
                    context: context, code: 1009,
                    reason: "Message too big: response bodies are limited to \(hub.limits.maxHTTPBodyBytes) bytes")
                return
            case .frameTooLarge:
                refuseResponse(
                    context: context, code: 1009,
                    reason: "Message too big: frames over \(hub.limits.maxFrameBytes) bytes are not accepted here")
                return
            }
            if case .complete(let head, let body) = event {
                // The response names its request; on a rendezvous it can only be this one.
                _ = hub.completeHTTP(key: key, head: head, body: body)
            }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if !sentClose, context.channel.isWritable { context.sendPong(pongs.becameWritable()) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !sentClose else { return }
        context.close(promise: nil)
    }

    /// The listener's response cannot be taken: the listener hears why (a Close), the waiting HTTP client
    /// gets 502 at once rather than a 504 when its timeout runs out, and both are logged and counted.
    private func refuseResponse(context: ChannelHandlerContext, code: UInt16, reason: String) {
        let label = code == 1009 ? "message_too_big" : "protocol_error"
        hub.logger.warning(
            "listener response refused on a request rendezvous: \(reason)", metadata: ["reason": "\(label)"])
        hub.failHTTP(
            key: key,
            Refusal(status: 502, text: "BadGateway: The listener's response was refused: \(reason)", reason: label))
        sentClose = true
        context.closeWebSocket(code: code, reason: reason)
    }
}

@available(*, unavailable)
extension HTTPRendezvousHandler: Sendable {}

extension ChannelHandlerContext {
    /// Writes a control message and the binary message that belongs to it back to back, so nothing can
    /// come between them (the SDKs take "the next message" as the body).
    fileprivate func writeControlMessage(_ message: ControlMessage, body: ByteBuffer?) {
        var text = channel.allocator.buffer(capacity: 512)
        text.writeString(message.encoded())
        write(NIOAny(WebSocketFrame(fin: true, opcode: .text, data: text)), promise: nil)
        if let body {
            write(NIOAny(WebSocketFrame(fin: true, opcode: .binary, data: body)), promise: nil)
        }
        flush()
    }
}
