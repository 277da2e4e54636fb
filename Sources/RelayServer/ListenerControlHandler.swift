import HybridConnections
import Logging
import NIOCore
import NIOWebSocket
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
    private var machine: ListenerChannelStateMachine
    private var context: ChannelHandlerContext?
    private var pingTask: Scheduled<Void>?
    private var expiryTask: Scheduled<Void>?
    private var recycleTask: Scheduled<Void>?
    private var pongs = PongReplies()
    private var reader = WebSocketFrameReader()
    private var remainder = HeadRemainder()
    private var messages: MessageAssembler
    private var responses = HTTPResponseAssembler()
    private var logger: Logger

    /// - Parameter tokenExpiry: the listen token's `se`, nil if it does not expire.
    init(
        hub: RelayHub, entity: HybridConnectionConfiguration, trackingId: String, tokenExpiry: Int64?,
        requestHost: String?
    ) {
        self.hub = hub
        self.entity = entity
        self.trackingId = trackingId
        self.requestHost = requestHost
        machine = ListenerChannelStateMachine(
            tokenExpiry: tokenExpiry, missedPongLimit: hub.limits.missedPongLimit,
            tokenGraceSeconds: hub.limits.tokenGraceSeconds)
        messages = MessageAssembler(
            limit: max(Self.maxControlMessageBytes, hub.limits.maxFrameBytes),
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
        let recycle = hub.limits.listenerRecycleSeconds
        if recycle > 0 {
            recycleTask = context.eventLoop.assumeIsolated().scheduleTask(in: .fractionalSeconds(recycle)) {
                [weak self] in
                guard let self, let close = self.machine.recycleTimerFired() else { return }
                self.logger.info("listener control channel recycled", metadata: ["after_seconds": "\(recycle)"])
                self.run(close)
            }
        }
    }

    /// Sets the token timer for the machine's deadline (after a renewal, the new token's).
    private func scheduleExpiry() {
        expiryTask?.cancel()
        guard let context, let deadline = machine.expiryDeadline else { return }
        // At most a day at a time: a token valid for centuries is past what a timer holds.
        let delay = min(max(0, deadline - hub.wallClock()), 86_400)
        expiryTask = context.eventLoop.assumeIsolated().scheduleTask(in: .fractionalSeconds(delay)) {
            [weak self] in
            guard let self else { return }
            if let close = self.machine.expiryTimerFired(now: hub.wallClock()) {
                self.logger.warning("listener token expired", metadata: ["reason": "token_expired"])
                self.run(close)
            } else if self.machine.isOpen {
                self.scheduleExpiry()
            }
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
        recycleTask?.cancel()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        pingTask?.cancel()
        expiryTask?.cancel()
        recycleTask?.cancel()
        if let handle { hub.unregister(handle) }
        let cause = machine.channelInactive()
        hub.metrics.listenerEvent(role: .relay, entity: entity.name, event: .disconnect, cause: cause)
        logger.info(
            "listener disconnected",
            metadata: ["listeners": "\(hub.listenerCount(entity: entity.name))", "cause": "\(cause)"])
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = remainder.joined(unwrapInboundIn(data))
        do {
            while machine.isOpen, let part = try reader.read(from: &buffer) { received(part, context: context) }
        } catch {
            logger.warning("listener broke the protocol: \(error.reason)", metadata: ["reason": "protocol_error"])
            run(machine.violation(code: error.code, reason: error.reason))
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
                machine.heardFromListener()
            case .connectionClose:
                run(machine.closeReceived())
            default:
                break
            }
            return
        }
        machine.heardFromListener()
        switch messages.receive(part) {
        case .none: break
        case .message(.text, let data): textMessage(data)
        case .message(_, let data): binaryMessage(data)
        case .binaryPart: break  // this assembler joins binary messages whole
        case .tooLarge:
            logger.warning("listener sent a message over the limit", metadata: ["reason": "message_too_big"])
            run(machine.messageTooLarge(reason: FrameRules.Reason.messageTooBig))
        case .frameTooLarge:
            let reason =
                "\(FrameRules.Reason.messageTooBig): frames over \(hub.limits.maxFrameBytes) bytes are not accepted here"
            logger.warning("listener sent \(reason)", metadata: ["reason": "message_too_big"])
            run(machine.messageTooLarge(reason: reason))
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if machine.isOpen, context.channel.isWritable { context.sendPong(pongs.becameWritable()) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard machine.isOpen else { return }
        logger.warning("control channel error: \(ErrorWords.describe(error))", metadata: ["reason": "protocol_error"])
        context.close(promise: nil)
    }

    private func textMessage(_ data: ByteBuffer) {
        let message: ControlMessage
        do {
            message = try ControlMessage(decoding: data.readableBytesView)
        } catch {
            logger.warning(
                "ignored control message: \(ErrorWords.describe(error))", metadata: ["reason": "bad_control_message"])
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
            guard let forwarder = hub.takeHTTPExchange(key: head.requestId) else {
                logger.info("response for an unknown or expired request", metadata: ["request_id": "\(head.requestId)"])
                return
            }
            forwarder.send { $0.responseHead(head, body: body, ended: true) }
        case .unexpected(let why):
            logger.warning("ignored control message: \(why)", metadata: ["reason": "bad_control_message"])
        }
    }

    private func renewToken(_ token: String) {
        do {
            let expiry = try hub.policy.authorizeListener(
                entity: entity, token: token, requestHost: requestHost, now: hub.wallClock())
            machine.tokenRenewed(expiry: expiry)
            scheduleExpiry()
            hub.metrics.listenerEvent(role: .relay, entity: entity.name, event: .renew)
            logger.info("listener token renewed", metadata: ["expiry": "\(expiry.map(String.init) ?? "none")"])
        } catch {
            hub.metrics.authFailure(role: .relay, reason: error.reason)
            logger.warning("renewToken refused: \(error.text)", metadata: ["reason": "\(error.reason)"])
            run(machine.renewalRefused(reason: error.reason))
        }
    }

    private func tick() {
        guard let context else { return }
        switch machine.tick(writable: context.channel.isWritable) {
        case .none:
            return
        case .ping:
            context.writeAndFlush(
                wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer())), promise: nil)
            scheduleTick()
        case .evict(let cause, let message):
            // No Close: a listener that does not read would not read one either.
            logger.warning("\(message)", metadata: ["reason": "\(cause)"])
            if let handle { hub.unregister(handle) }
            context.close(promise: nil)
        }
    }

    /// The relay drains or the entity is gone: 1001, so the listener reconnects elsewhere.
    func goAway(reason: String) {
        run(machine.goAway(reason: reason))
    }

    /// Writes `message` and its body back to back, so no other message can come between them.
    func send(_ message: ControlMessage, body: ByteBuffer?) {
        guard let context, machine.isOpen else { return }
        context.writeControlMessage(message, body: body)
    }

    /// Writes the machine's Close; the listener leaves the dispatch table at once.
    private func run(_ close: ListenerChannelStateMachine.Close?) {
        guard let close, let context else { return }
        if let handle { hub.unregister(handle) }
        context.closeWebSocket(code: close.code, reason: close.reason)
    }
}

@available(*, unavailable)
extension ListenerControlHandler: Sendable {}

extension ChannelHandlerContext {
    /// Writes a control message and the binary message that belongs to it back to back, so nothing can
    /// come between them (the SDKs take "the next message" as the body).
    func writeControlMessage(_ message: ControlMessage, body: ByteBuffer?) {
        var text = channel.allocator.buffer(capacity: 512)
        text.writeString(message.encoded())
        write(NIOAny(WebSocketFrame(fin: true, opcode: .text, data: text)), promise: nil)
        if let body {
            write(NIOAny(WebSocketFrame(fin: true, opcode: .binary, data: body)), promise: nil)
        }
        flush()
    }
}
