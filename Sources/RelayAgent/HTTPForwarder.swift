import HybridConnections
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import NIOWebSocket
import RelayIO
import RelayTelemetry
import Tracing

/// How long an HTTP target may take to start its response once it has the whole request. Below the relay's
/// 60 s, so a slow target gets the edge's 504 and its text, not the relay's.
public let defaultHTTPResponseTimeout = TimeAmount.seconds(50)

/// What every HTTP exchange of one edge listener shares.
struct HTTPForwarding: Sendable {
    var relayName: String
    var target: HTTPTarget
    var access: RelayAccess
    /// For the rendezvous (the relay's TLS).
    var relayTLS: NIOSSLContext?
    /// For an `https` target: verifying (system roots) or, with `Insecure`, not.
    var targetTLS: NIOSSLContext?
    /// How long the target may take to start its response before the sender gets 504.
    var responseTimeout: TimeAmount
    var metrics: RelayMetrics
    var tracer: HopTracer
    /// Counts the exchanges under way, for the drain at shutdown.
    var inFlight: TunnelCounter
    var logger: Logger

    /// How long the TCP (and TLS) connect to the target may take before the sender gets 502.
    static let connectTimeout = TimeAmount.seconds(10)

    /// A TLS context for `https` targets, or nil for `http` (or if BoringSSL cannot make one: then every request
    /// is answered 502 with the connection's "needs TLS" error).
    static func targetTLS(for target: HTTPTarget) -> NIOSSLContext? {
        guard target.secure else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["http/1.1"]
        if target.insecure { configuration.certificateVerification = .none }
        return try? NIOSSLContext(configuration: configuration)
    }
}

/// Runs one HTTP-mode request through an edge's HTTP forwarder, as `HTTPForwardStateMachine` decides: the
/// target's connection, the rendezvous when one is needed, and the back-pressure between them (a side's reads
/// wait while the other cannot take more). Everything lives on the control channel's event loop.
final class HTTPForwardExchange {
    private let forwarding: HTTPForwarding
    private let eventLoop: any EventLoop
    private var machine: HTTPForwardStateMachine
    private var command: RequestCommand
    /// Control-channel route: the request's whole body, if it has one.
    private let controlBody: ByteBuffer?
    /// Writes the response on the control channel (small responses to control-channel requests).
    private let replyOnControlChannel: (ControlMessage, ByteBuffer?) -> Void
    private var target: HTTPTargetHandler?
    private var rendezvous: HTTPRendezvousListenerHandler?
    /// Rendezvous route: body parts read before the target could take them.
    private var heldBody: [ByteBuffer] = []
    private var requestBodyEnded = false
    /// A streamed body sent to the target with the sender's `Content-Length`: the bytes it must have.
    private var declaredRequestBytes: Int?
    private var requestEndWritten = false
    private var timeout: Scheduled<Void>?
    private let started = ContinuousClock.now
    private let startedAt = DefaultTracerClock.now
    private var openedSpan: HopSpan?
    private var logger: Logger
    private var status = 0
    private var bytesUp = 0
    private var bytesDown = 0
    private var recorded = false
    /// Completed when the rendezvous has opened or failed to.
    private var rendezvousSettled: EventLoopPromise<Void>?
    /// Told once the exchange is over (the control channel's list of exchanges under way).
    var onFinish: (() -> Void)?

    init(
        command: RequestCommand, controlBody: ByteBuffer?, forwarding: HTTPForwarding, eventLoop: any EventLoop,
        replyOnControlChannel: @escaping (ControlMessage, ByteBuffer?) -> Void
    ) {
        self.command = command
        self.controlBody = controlBody
        self.forwarding = forwarding
        self.eventLoop = eventLoop
        self.replyOnControlChannel = replyOnControlChannel
        machine = HTTPForwardStateMachine(
            route: command.method == nil ? .rendezvous : .controlChannel, requestId: command.id)
        logger = forwarding.logger
        logger[metadataKey: "request_id"] = "\(command.id)"
        // On the control channel the request's headers, and with them the relay's `traceparent`, are here;
        // on a rendezvous they come with its request message, and the span waits for them.
        if machine.route == .controlChannel { _ = span }
    }

    /// The exchange's `edge.http` span, started at the exchange's start once the request's headers are known,
    /// so it continues the relay's `relay.http` span on either route (a failure before the rendezvous's request
    /// message came starts it as it is).
    private var span: HopSpan {
        if let openedSpan { return openedSpan }
        let traceparent = command.requestHeaders?.first { $0.key.lowercased() == "traceparent" }?.value
        let span = forwarding.tracer.startSpan(
            "edge.http", context: forwarding.tracer.context(traceparent: traceparent), ofKind: .client, at: startedAt)
        span.attributes["tunnel"] = forwarding.relayName
        span.attributes["target"] = forwarding.target.origin
        logger[metadataKey: "trace_id"] = "\(span.traceContext.traceID)"
        openedSpan = span
        return span
    }

    func start() {
        forwarding.inFlight.opened()
        run(machine.start)
    }

    /// Moves a control-channel exchange to its rendezvous before the control channel closes; the future
    /// completes once the rendezvous is open (or could not be), so the channel may close without losing it.
    func leaveControlChannel() -> EventLoopFuture<Void> {
        run(machine.leaveControlChannel())
        return rendezvousSettled?.futureResult ?? eventLoop.makeSucceededVoidFuture()
    }

    // MARK: Running the machine's actions

    private func run(_ action: HTTPForwardStateMachine.Action) {
        switch action {
        case .none:
            break
        case .openRendezvous:
            openRendezvous()
        case .dialTarget:
            dialTarget()
        case .reply(let head, let body):
            replyOnControlChannel(.response(head), body)
            finish()
        case .send(let head, let body, let end):
            rendezvous?.sendResponse(head: head, body: body, end: end)
            if end { finish() }
        case .abort(let failure):
            logger.warning(
                "http request cut", metadata: ["reason": "\(failure.reason)", "cause": "\(failure.text)"])
            rendezvous?.close(code: .unexpectedServerError, reason: failure.text)
            rendezvous = nil
            finish()
        }
        target?.readsAllowed = mayReadTarget
    }

    private var mayReadTarget: Bool {
        !machine.holdsTargetReads && (rendezvous.map(\.isWritable) ?? true)
    }

    private var targetTakesBody: Bool { machine.request == .forwarding && (target?.isWritable ?? false) }

    private func openRendezvous() {
        guard let url = WebSocketURL(command.address) else {
            run(machine.rendezvousEnded("the relay's rendezvous address is not a WebSocket URL"))
            return
        }
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let settled = eventLoop.makePromise(of: Void.self)
        rendezvousSettled = settled
        WebSocketClient.connect(
            to: url, tlsContext: forwarding.relayTLS, group: eventLoop, connectTimeout: HTTPForwarding.connectTimeout,
            proxy: forwarding.access.proxy
        ) { channel in
            let handler = HTTPRendezvousListenerHandler(exchange: bound.value)
            try channel.pipeline.syncOperations.addHandler(handler)
            bound.value.rendezvous = handler
        }.whenComplete { result in
            defer { settled.succeed() }
            let exchange = bound.value
            switch result {
            case .success(.upgraded):
                exchange.run(exchange.machine.rendezvousOpened())
            case .success(.rejected(let status, let reason, _)):
                exchange.run(exchange.machine.rendezvousEnded("the relay refused the rendezvous: \(status) \(reason)"))
            case .failure(let error):
                exchange.run(
                    exchange.machine.rendezvousEnded(
                        "cannot open the rendezvous: \(ConnectFailure(error, url: url).summary)"))
            }
        }
    }

    private func dialTarget() {
        let target = forwarding.target
        let body: HTTPForwardRewrite.RequestBody
        if machine.route == .controlChannel {
            body = command.body == true ? .complete(bytes: controlBody?.readableBytes ?? 0) : .none
        } else {
            body = command.body == true ? .streamed : .none
        }
        requestBodyEnded = body != .streamed
        let head: HTTPRequestHead
        do {
            head = try HTTPForwardRewrite.requestHead(
                command, relayName: forwarding.relayName, target: target, body: body,
                frontScheme: forwarding.access.base.secure ? "https" : "http", frontHost: forwarding.access.base.host)
        } catch {
            run(machine.targetFailed(.init(status: 400, reason: "path_escape", text: "Bad Request: \(error.reason)")))
            return
        }
        if body == .streamed, let length = head.headers.first(name: "content-length").flatMap(Int.init) {
            declaredRequestBytes = length
        }
        var withTrace = head
        withTrace.headers.replaceOrAdd(name: "traceparent", value: span.traceContext.traceparent)
        span.attributes["http.request.method"] = head.method.rawValue
        span.attributes["url.path"] = head.uri
        logger[metadataKey: "method"] = "\(head.method.rawValue)"
        logger[metadataKey: "path"] = "\(head.uri)"
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let requestHead = withTrace
        HTTPConnection.connect(
            url: WebSocketURL(secure: target.secure, host: target.host, port: target.port, target: "/"),
            tlsContext: forwarding.targetTLS, eventLoop: eventLoop, connectTimeout: HTTPForwarding.connectTimeout
        ) { channel, _, _ in
            let handler = HTTPTargetHandler(exchange: bound.value, requestHead: requestHead)
            try channel.pipeline.syncOperations.addHandler(handler)
            bound.value.target = handler
        }.whenComplete { result in
            let exchange = bound.value
            switch result {
            case .success:
                exchange.targetConnected()
            case .failure(let error):
                exchange.target = nil
                let failure = ConnectFailure(error, host: target.host, port: target.port)
                exchange.run(
                    exchange.machine.targetFailed(
                        .init(
                            status: 502, reason: "target_\(failure.label)",
                            text: "Bad Gateway: cannot reach \(target.origin): \(failure.summary)")))
            }
        }
    }

    private func targetConnected() {
        guard let target, !machine.isFinished else {
            target?.close()
            return
        }
        run(machine.targetConnected())
        target.writeHead()
        if let controlBody, controlBody.readableBytes > 0 {
            bytesUp += controlBody.readableBytes
            target.writeBody(controlBody)
        }
        flushHeldBody()
    }

    private func flushHeldBody() {
        guard let target, machine.request == .forwarding else { return }
        for part in heldBody { target.writeBody(part) }
        heldBody.removeAll()
        if requestBodyEnded && !requestEndWritten {
            requestEndWritten = true
            target.endRequest()
            // A target that answered early (a 413 before the whole upload) needs no deadline.
            if status == 0 { startResponseTimeout() }
        }
        target.flush()
        rendezvous?.readsAllowed = mayReadRendezvous
    }

    /// The target has the whole request: it must start answering within the response timeout.
    private func startResponseTimeout() {
        let origin = forwarding.target.origin
        let seconds = forwarding.responseTimeout.nanoseconds / 1_000_000_000
        timeout = eventLoop.assumeIsolated().scheduleTask(in: forwarding.responseTimeout) { [weak self] in
            guard let self else { return }
            self.run(
                self.machine.targetFailed(
                    .init(
                        status: 504, reason: "response_timeout",
                        text: "Gateway Timeout: \(origin) did not answer within \(seconds) s")))
        }
    }

    /// The rendezvous is read while the request's message is awaited, while the target takes the body, and
    /// for one read burst of body before the target is connected.
    private var mayReadRendezvous: Bool {
        switch machine.request {
        case .awaitingMessage: return true
        case .dialing: return heldBody.isEmpty
        case .forwarding: return requestBodyEnded || (target?.isWritable ?? false)
        }
    }

    // MARK: Events from the rendezvous

    func rendezvousRequest(_ request: RequestCommand) {
        command = RequestCommand(
            address: command.address, id: command.id, requestTarget: request.requestTarget, method: request.method,
            remoteEndpoint: request.remoteEndpoint, requestHeaders: request.requestHeaders, body: request.body)
        _ = span
        run(machine.requestMessage())
    }

    func rendezvousBody(_ part: ByteBuffer, last: Bool) {
        bytesUp += part.readableBytes
        // The target was promised the sender's Content-Length: more bytes would reach it as a request of their own,
        // fewer would leave it waiting. Either way the exchange ends here, the target's connection with it.
        if let declared = declaredRequestBytes, bytesUp > declared || (last && bytesUp != declared) {
            target?.close()
            target = nil
            run(
                machine.targetFailed(
                    .init(
                        status: 502, reason: "body_length_mismatch",
                        text:
                            "Bad Gateway: the request body (\(bytesUp) bytes) does not match its Content-Length (\(declared))"
                    )))
            return
        }
        if last { requestBodyEnded = true }
        if part.readableBytes > 0 { heldBody.append(part) }
        if targetTakesBody || (last && machine.request == .forwarding) { flushHeldBody() }
        rendezvous?.readsAllowed = mayReadRendezvous
    }

    func rendezvousWritabilityChanged() { target?.readsAllowed = mayReadTarget }

    func rendezvousClosed() {
        rendezvous = nil
        run(machine.rendezvousEnded("the relay closed the rendezvous"))
    }

    // MARK: Events from the target

    func targetWritabilityChanged() {
        if targetTakesBody { flushHeldBody() }
        rendezvous?.readsAllowed = mayReadRendezvous
    }

    func targetResponseHead(_ head: HTTPResponseHead) {
        timeout?.cancel()
        let code = Int(head.status.code)
        guard (200...599).contains(code) else {
            // A 1xx as the final answer (101 to a request that asked for no upgrade) would switch a proxy in
            // front of the relay to tunnelling; 600 and up are not statuses. Neither is forwarded.
            run(
                machine.targetFailed(
                    .init(
                        status: 502, reason: "target_bad_status",
                        text: "Bad Gateway: \(forwarding.target.origin) answered status \(code), not a final response"))
            )
            return
        }
        status = code
        let hasBody = HTTPForwardRewrite.responseHasBody(status: status, method: command.method)
        run(
            machine.responseHead(
                HTTPForwardRewrite.responseCommand(head, requestId: command.id, hasBody: hasBody)))
    }

    func targetResponseBody(_ part: ByteBuffer) {
        bytesDown += part.readableBytes
        run(machine.responseBody(part))
    }

    func targetResponseEnded() { run(machine.responseEnded()) }

    func targetClosed() {
        target = nil
        guard !machine.isFinished else { return }
        run(
            machine.targetFailed(
                .init(
                    status: 502, reason: "target_closed",
                    text: "Bad Gateway: \(forwarding.target.origin) closed the connection before its response ended")))
    }

    /// An error on the target's connection after it opened: mostly TLS, which NIO reports only now.
    func targetError(_ error: any Error) {
        guard !machine.isFinished else { return }
        let target = forwarding.target
        let failure = ConnectFailure(error, host: target.host, port: target.port)
        let why: String
        switch failure.label {
        case "tls_untrusted":
            why = "its TLS certificate is not signed by a CA this edge trusts (Insecure: true accepts any)"
        case "tls_wrong_host":
            why = "its TLS certificate does not name \(target.host)"
        case "other":
            why = ErrorWords.describe(error)
        default:
            why = failure.summary
        }
        run(
            machine.targetFailed(
                .init(status: 502, reason: "target_\(failure.label)", text: "Bad Gateway: \(target.origin): \(why)")))
    }

    // MARK: The end

    private func finish() {
        timeout?.cancel()
        target?.close()
        target = nil
        rendezvous?.closeNormally()
        rendezvous = nil
        guard !recorded else { return }
        recorded = true
        forwarding.inFlight.closed()
        onFinish?()
        onFinish = nil
        let failure = machine.failure
        let answered = failure.map { status == 0 ? $0.status : status } ?? status
        let seconds = (ContinuousClock.now - started).seconds
        forwarding.metrics.httpForwarded(
            entity: forwarding.relayName, status: answered, seconds: seconds, bytesUp: bytesUp, bytesDown: bytesDown,
            failure: failure?.reason, traceID: span.traceContext.traceID)
        span.attributes["http.response.status_code"] = answered
        span.attributes["bytes_up"] = bytesUp
        span.attributes["bytes_down"] = bytesDown
        if let failure { span.setStatus(SpanStatus(code: .error, message: failure.text)) }
        span.end()
        var metadata: Logger.Metadata = [
            "status": "\(answered)", "duration_ms": "\((ContinuousClock.now - started).milliseconds)",
            "bytes_up": "\(bytesUp)", "bytes_down": "\(bytesDown)", "target": "\(forwarding.target.origin)",
            "route": "\(machine.route == .controlChannel ? "control_channel" : "rendezvous")",
        ]
        if let failure {
            metadata["reason"] = "\(failure.reason)"
            metadata["cause"] = "\(failure.text)"
        }
        logger.log(level: failure == nil ? .info : .warning, "http request", metadata: metadata)
    }
}

/// `read()` held back while the other side of an exchange cannot take more, and made once it can.
struct WithheldRead {
    private(set) var allowed = true
    private var pending = false

    /// NIO asks to read: true to read now; otherwise the read waits.
    mutating func requested() -> Bool {
        if !allowed { pending = true }
        return allowed
    }

    /// Reading is allowed again (or not): true to make the read that waited.
    mutating func allow(_ allowed: Bool) -> Bool {
        self.allowed = allowed
        guard allowed, pending else { return false }
        pending = false
        return true
    }
}

/// The target's side: an HTTP/1.1 client connection that writes the request once it is active and hands the
/// response to the exchange, reading only while the exchange can pass the response on.
final class HTTPTargetHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// Kept until the handler leaves the pipeline: the exchange lives as long as one of its channels.
    private var exchange: HTTPForwardExchange?
    private let requestHead: HTTPRequestHead
    private var context: ChannelHandlerContext?
    private var responseEnded = false
    private var reads = WithheldRead()
    /// Reads wait while this is false; setting it true makes the read that was withheld.
    var readsAllowed: Bool {
        get { reads.allowed }
        set { if reads.allow(newValue) { context?.read() } }
    }

    init(exchange: HTTPForwardExchange, requestHead: HTTPRequestHead) {
        self.exchange = exchange
        self.requestHead = requestHead
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        exchange = nil
    }

    /// The request's head; TLS, if any, holds it until the handshake is done.
    func writeHead() { context?.write(wrapOutboundOut(.head(requestHead)), promise: nil) }

    func writeBody(_ part: ByteBuffer) {
        context?.write(wrapOutboundOut(.body(.byteBuffer(part))), promise: nil)
    }

    func endRequest() { context?.write(wrapOutboundOut(.end(nil)), promise: nil) }

    func flush() { context?.flush() }

    func close() { context?.close(promise: nil) }

    func read(context: ChannelHandlerContext) {
        if reads.requested() { context.read() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // NIO's decoder drops interim responses (100, 103): they are this hop's business only.
        switch unwrapInboundIn(data) {
        case .head(let head): exchange?.targetResponseHead(head)
        case .body(let part): exchange?.targetResponseBody(part)
        case .end:
            responseEnded = true
            exchange?.targetResponseEnded()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        exchange?.targetWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !responseEnded { exchange?.targetClosed() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !responseEnded { exchange?.targetError(error) }
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension HTTPTargetHandler: Sendable {}

/// The listener's end of an HTTP request's rendezvous: reads the relay's `request` and its streamed body (the
/// rendezvous route), writes the response message and its body as one binary message, and closes with 1000
/// when the exchange is done, as the .NET listener does after every response.
final class HTTPRendezvousListenerHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    /// Duplex only to hold back `read()`: it writes its own frames and passes nothing else.
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    /// Kept until the handler leaves the pipeline: the exchange lives as long as one of its channels.
    private var exchange: HTTPForwardExchange?
    private var context: ChannelHandlerContext?
    private var reader = WebSocketFrameReader()
    private var remainder = HeadRemainder()
    private var messages = MessageAssembler(
        limit: EdgeControlHandler.maxMessageBytes, frameLimit: .max, streamsBinary: true)
    private var pongs = PongReplies()
    private var closeState = WebSocketCloseState.open
    private var bodyStarted = false
    private var reads = WithheldRead()
    /// Reads wait while this is false (the target cannot take more body); setting it true makes the read that
    /// was withheld.
    var readsAllowed: Bool {
        get { reads.allowed }
        set { if reads.allow(newValue) { context?.read() } }
    }

    init(exchange: HTTPForwardExchange) { self.exchange = exchange }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        exchange = nil
    }

    /// The response head (once) and a piece of its body; `end` finishes the body's binary message.
    func sendResponse(head: ResponseCommand?, body: ByteBuffer, end: Bool) {
        guard let context, !closeState.sent else { return }
        if let head {
            var text = context.channel.allocator.buffer(capacity: 512)
            text.writeString(ControlMessage.response(head).encoded())
            context.write(
                wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: text)), promise: nil)
            if head.body != true {
                context.flush()
                return
            }
        }
        if body.readableBytes > 0 || end {
            let opcode: WebSocketOpcode = bodyStarted ? .continuation : .binary
            bodyStarted = true
            context.write(
                wrapOutboundOut(WebSocketFrame(fin: end, opcode: opcode, maskKey: .random(), data: body)), promise: nil)
        }
        context.flush()
    }

    func closeNormally() { close(code: .normalClosure, reason: FrameRules.Reason.normalClosure) }

    func close(code: WebSocketErrorCode, reason: String) {
        guard let context, closeState.send() else { return }
        context.closeWebSocket(code: code, reason: reason, maskKey: .random())
    }

    func read(context: ChannelHandlerContext) {
        if reads.requested() { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, !closeState.sent { context.sendPong(pongs.becameWritable()) }
        exchange?.rendezvousWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = remainder.joined(unwrapInboundIn(data))
        do {
            while !closeState.received, let part = try reader.read(from: &buffer) { received(part, context: context) }
        } catch {
            exchange?.rendezvousClosed()
            if closeState.send() { context.closeWebSocket(code: error.code, reason: error.reason, maskKey: .random()) }
            return
        }
        remainder.keep(buffer)
    }

    private func received(_ part: WebSocketFrameReader.Part, context: ChannelHandlerContext) {
        if case .control(let frame) = part {
            switch frame.opcode {
            case .ping:
                guard !closeState.sent else { return }
                context.sendPong(pongs.pingReceived(frame.data, writable: context.channel.isWritable))
            case .connectionClose:
                _ = closeState.receive()
                exchange?.rendezvousClosed()
                if closeState.send() { context.answerClose(frame, maskKey: .random()) }
            default:
                break
            }
            return
        }
        switch messages.receive(part) {
        case .none:
            break
        case .message(.text, let data):
            guard case .request(let request)? = try? ControlMessage(decoding: data.readableBytesView) else {
                protocolError("the rendezvous carried a text message that is not a request", context: context)
                return
            }
            exchange?.rendezvousRequest(request)
        case .binaryPart(let part, let last):
            exchange?.rendezvousBody(part, last: last)
        case .message, .tooLarge, .frameTooLarge:
            protocolError("the rendezvous carried a message this listener cannot take", context: context)
        }
    }

    private func protocolError(_ why: String, context: ChannelHandlerContext) {
        exchange?.rendezvousClosed()
        if closeState.send() { context.closeWebSocket(code: .unacceptableData, reason: why, maskKey: .random()) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !closeState.received { exchange?.rendezvousClosed() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension HTTPRendezvousListenerHandler: Sendable {}
