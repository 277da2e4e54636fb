import HybridConnections
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket
import RelayIO
import RelayTelemetry
import Tracing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The first handler of every relay connection: reads HTTP/1.1 requests, decides what they are
/// (listener, sender, rendezvous, HTTP-mode request), answers refusals, holds senders until a
/// listener accepts, hands HTTP-mode requests to an `HTTPModeForwarder`, and swaps itself for the
/// WebSocket handlers on upgrade.
final class RelayHTTPHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case webSocketRequested(HTTPRequestHead, HybridConnectionRequest)
        /// A sender held by `senderHold` (its resources in `waitingSender`).
        case awaitingRendezvous
        /// An HTTP-mode request and its response, until the response is written.
        case forwarding(HTTPModeForwarder)
        case done
    }

    /// What a held sender's connection keeps until the hold ends.
    private struct WaitingSender {
        var key: String
        var trackingId: String
        var head: HTTPRequestHead
        var timeout: Scheduled<Void>
        var record: RendezvousRecord
        /// The listener it was dispatched to: its `/v1/listeners` entry counts the tunnel.
        var listener: ListenerHandle
    }

    /// An HTTP-mode request the relay admitted from its head.
    private struct HTTPModeRequest {
        var head: HTTPRequestHead
        var target: RequestTarget
        var entity: HybridConnectionConfiguration
        /// Lowercased names of the headers that carried the credential the relay consumed.
        var consumedHeaders: Set<String>
        var pinning: ListenerPinning
        /// A browser authorized by `?sb-hc-token=`: the `Set-Cookie` that lets its next requests in.
        var setCookie: String?
    }

    private let hub: RelayHub
    private let encoder: HTTPResponseEncoder
    private let decoder: ByteToMessageHandler<HTTPRequestDecoder>
    private var state = State.idle
    private var senderHold = SenderHoldStateMachine()
    private var waitingSender: WaitingSender?
    private var context: ChannelHandlerContext?
    /// The deadline of the current phase: request head and classification, HTTP body, or keep-alive idle.
    private var deadline: Scheduled<Void>?
    private var countedConnection = false
    /// The trace of the request being handled, once it has a span: its refusal's log line names it.
    private var requestTraceID: String?
    private var logger: Logger
    /// Taken once per connection: a reload's limits apply to connections that come after it.
    private let limits: RelayLimits

    init(hub: RelayHub, encoder: HTTPResponseEncoder, decoder: ByteToMessageHandler<HTTPRequestDecoder>) {
        self.hub = hub
        limits = hub.limits
        self.encoder = encoder
        self.decoder = decoder
        self.logger = hub.logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        logger[metadataKey: "peer"] = "\(context.channel.remoteAddress?.hostAndPort ?? "?")"
        if context.channel.isActive { connectionStarted(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        connectionStarted(context: context)
        context.fireChannelActive()
    }

    /// Counts the connection against its source's share and starts the handshake deadline.
    private func connectionStarted(context: ChannelHandlerContext) {
        guard !countedConnection else { return }
        countedConnection = true
        let source = context.channel.remoteAddress?.ipAddress
        let refusal = hub.connectionOpened(source: source)
        // This handler leaves the pipeline on upgrade; the count must follow the socket, not the handler.
        context.channel.closeFuture.whenComplete { [hub] _ in hub.connectionClosed(source: source) }
        if let refusal {
            refuse(context: context, refusal)
            return
        }
        arm(
            seconds: limits.handshakeTimeoutSeconds,
            Refusal(
                status: 408, text: "RequestTimeout: The request did not arrive in time", reason: "handshake_timeout"))
    }

    /// Replaces the running deadline: when it passes, `refusal` is answered and the connection closed
    /// (without one, closed silently).
    private func arm(seconds: Double, _ refusal: Refusal?) {
        deadline?.cancel()
        guard let context else { return }
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: .fractionalSeconds(seconds)) {
            [weak self] in
            guard let self, let context = self.context else { return }
            if let refusal {
                self.refuse(context: context, refusal)
            } else {
                self.state = .done
                context.close(promise: nil)
            }
        }
    }

    private func disarm() {
        deadline?.cancel()
        deadline = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (unwrapInboundIn(data), state) {
        case (.head(let head), .idle):
            requestHeadReceived(context: context, head: head)
        case (.body(let chunk), .forwarding(let forwarder)):
            if !forwarder.bodyPart(chunk) { refuse(context: context, .httpBufferFull) }
        case (.end, .webSocketRequested(let head, let request)):
            webSocketRequestReceived(context: context, head: head, request: request)
        case (.end, .forwarding(let forwarder)):
            forwarder.requestEnded()
        case (.head, .forwarding(let forwarder)):
            // A pipelined request: answered by no one here, so the connection closes after the current response
            // and the client sends it again on a new one (RFC 9112 §9.3.2).
            forwarder.closeAfterResponse()
        default:
            // Bytes of a request already refused, or of a pipelined one (see above).
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let refusal: Refusal
        if let parserError = error as? HTTPParserError, parserError == .headerOverflow {
            refusal = Refusal(
                status: 431, text: "RequestHeaderFieldsTooLarge: The request headers are too large",
                reason: "headers_too_large")
        } else if error is HTTPParserError {
            refusal = Refusal(
                status: 400, text: "BadRequest: The request is not valid HTTP/1.1 (\(ErrorWords.describe(error)))",
                reason: "malformed_http")
        } else {
            logger.debug("connection error: \(ErrorWords.describe(error))")
            context.close(promise: nil)
            return
        }
        refuse(context: context, refusal)
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch state {
        case .awaitingRendezvous:
            if let waiting = waitingSender {
                _ = hub.takePending(key: waiting.key)
                endHold(senderHold.senderLeft())
            }
        case .forwarding(let forwarder):
            forwarder.clientGone()
        default:
            break
        }
        state = .done
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if case .forwarding(let forwarder) = state, !forwarder.readRequested() { return }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .forwarding(let forwarder) = state { forwarder.clientWritabilityChanged(context.channel.isWritable) }
        context.fireChannelWritabilityChanged()
    }

    // MARK: Request classification

    private func requestHeadReceived(context: ChannelHandlerContext, head: HTTPRequestHead) {
        do {
            switch RequestClassifier.classify(head, limits: limits) {
            case .failure(let refusal):
                throw refusal
            case .success(.webSocket(let request)):
                state = .webSocketRequested(head, request)
            case .success(.runtimeInformation(let target)):
                try runtimeInformation(context: context, head: head, target: target)
            case .success(.httpMode(let target)):
                let request = try admitHTTPRequest(head: head, target: target)
                if head.headers.contains(name: "expect") {
                    // Admitted: the client may send its body now (RFC 9110 §10.1.1). A refusal above was the
                    // final answer instead, sent before the body.
                    context.writeAndFlush(
                        wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .continue))), promise: nil)
                }
                startForwarding(context: context, request)
            }
        } catch let refusal as Refusal {
            refuse(context: context, refusal)
        } catch let error as RequestTargetError {
            refuse(context: context, Refusal.from(error))
        } catch {
            refuse(
                context: context,
                Refusal(status: 400, text: "BadRequest: \(ErrorWords.describe(error))", reason: "malformed_url"))
        }
    }

    private func refuse(
        context: ChannelHandlerContext, _ refusal: Refusal, trackingId: String? = nil, entity: String? = nil
    ) {
        hub.metrics.refused(role: .relay, reason: refusal.reason, status: refusal.status)
        if refusal.isAuthorizationFailure { hub.metrics.authFailure(role: .relay, reason: refusal.reason) }
        var metadata: Logger.Metadata = ["status": "\(refusal.status)", "reason": "\(refusal.reason)"]
        if let peer = context.channel.remoteAddress?.ipAddress { metadata["peer"] = "\(peer)" }
        if let entity { metadata["entity"] = "\(entity)" }
        if let requestTraceID { metadata["trace_id"] = "\(requestTraceID)" }
        // What a flood produces once per connection is logged once a second, with the count of the rest.
        let suppressed = refusal.isFloodable ? hub.floodLogAllowance(refusal.reason) : 0
        if let suppressed {
            if refusal.isFloodable { metadata["suppressed"] = "\(suppressed)" }
            logger.warning("refused request: \(refusal.text)", metadata: metadata)
        }
        respond(context: context, refusal, trackingId: trackingId, entity: entity, close: true)
    }

    private func now() -> Int64 { Int64(hub.wallClock()) }

    private func hostHeader(_ head: HTTPRequestHead) -> String? { head.headers.first(name: "host") }

    private func token(_ head: HTTPRequestHead, queryToken: String?) -> (token: String, source: TokenSource)? {
        RelayPolicy.token(
            queryToken: queryToken, serviceBusAuthorization: head.headers.first(name: "servicebusauthorization"),
            authorization: head.headers.first(name: "authorization"))
    }

    /// Checks a token. A good token always passes; a failure from a source that spent its budget of
    /// failures is answered 429.
    private func authorize(
        entity: HybridConnectionConfiguration, token: String?, right: AccessRight, head: HTTPRequestHead
    ) throws(Refusal) -> Int64? {
        try authorize(entity: entity, token: token, anyOf: [right], head: head)
    }

    private func authorize(
        entity: HybridConnectionConfiguration, token: String?, anyOf rights: [AccessRight], head: HTTPRequestHead
    ) throws(Refusal) -> Int64? {
        do {
            return try hub.policy.authorize(
                entity: entity, token: token, anyOf: rights, requestHost: hostHeader(head), now: now())
        } catch {
            throw hub.authFailed(source: context?.channel.remoteAddress?.ipAddress) ?? error
        }
    }

    private func webSocketRequestReceived(
        context: ChannelHandlerContext, head: HTTPRequestHead, request: HybridConnectionRequest
    ) {
        do {
            if hub.isDraining && (request.action == .listen || request.action == .connect) {
                throw Refusal.draining
            }
            switch request.action {
            case .listen: try listen(context: context, head: head, request: request)
            case .connect: try connect(context: context, head: head, request: request)
            case .accept: try acceptRendezvous(context: context, head: head, request: request)
            case .request: try httpRendezvous(context: context, head: head, request: request)
            }
        } catch let refusal as Refusal {
            refuse(context: context, refusal, trackingId: request.id, entity: request.path)
        } catch {
            refuse(
                context: context,
                Refusal(status: 500, text: "InternalServerError: \(ErrorWords.describe(error))", reason: "internal"),
                trackingId: request.id, entity: request.path)
        }
    }

    // MARK: Listener control channel

    private func listen(context: ChannelHandlerContext, head: HTTPRequestHead, request: HybridConnectionRequest) throws
    {
        let (entity, _) = try hub.policy.entity(for: request.path)
        let expiry: Int64?
        do {
            expiry = try hub.policy.authorizeListener(
                entity: entity, token: token(head, queryToken: request.token)?.token, requestHost: hostHeader(head),
                now: hub.wallClock())
        } catch {
            throw hub.authFailed(source: context.channel.remoteAddress?.ipAddress) ?? error
        }
        let trackingId = request.id ?? UUID().uuidString.lowercased()
        let control = ListenerControlHandler(
            hub: hub, entity: entity, trackingId: trackingId, tokenExpiry: expiry, requestHost: hostHeader(head)
        )
        let agent = Self.agentIdentity(head)
        let handle = ListenerHandle(
            id: hub.makeID(), trackingId: trackingId, entity: entity.name, agent: agent,
            control: NIOLoopBound(control, eventLoop: context.eventLoop))
        control.handle = handle
        guard hub.register(handle) else {
            throw Refusal(status: 403, text: RelayErrorText.tooManyListeners, reason: "listener_limit")
        }
        hub.metrics.listenerEvent(role: .relay, entity: entity.name, event: .connect)
        var connected: Logger.Metadata = [
            "entity": "\(entity.name)", "listener_id": "\(trackingId)",
            "listeners": "\(hub.listenerCount(entity: entity.name))",
        ]
        if let agent {
            connected["agent"] = "\(agent.name)"
            connected["agent_host"] = "\(agent.host)"
            connected["agent_version"] = "\(agent.version)"
        }
        logger.info("listener connected", metadata: connected)
        upgrade(
            context: context, head: head, subprotocol: WebSocketHandshake.firstSubprotocol(head.headers),
            handler: control)
    }

    // MARK: Sender

    private func connect(context: ChannelHandlerContext, head: HTTPRequestHead, request: HybridConnectionRequest) throws
    {
        hub.metrics.connectionAccepted(role: .relay)
        let span = hub.tracer.startSpan(
            "relay.rendezvous", context: hub.tracer.context(traceparent: head.headers.first(name: "traceparent")),
            ofKind: .server)
        span.attributes["path"] = request.path
        requestTraceID = span.traceContext.traceID
        // Metric labels take only configured entity names; an unknown path must not mint new series.
        let record = RendezvousRecord(span: span, entity: "unknown", arrived: .now(), metrics: hub.metrics)
        let listener: ListenerHandle
        let key: String
        let accept: AcceptCommand
        let trackingId = request.id ?? UUID().uuidString.lowercased()
        // The sender's own id, on refusals too: what its logs and the listener's name it by.
        span.attributes["tracking_id"] = trackingId
        do throws(Refusal) {
            let (entity, _) = try hub.policy.entity(for: request.path)
            record.entity = entity.name
            let found = token(head, queryToken: request.token)
            _ = try authorize(entity: entity, token: found?.token, right: .send, head: head)
            let consumedHeaders = RelayPolicy.consumedHeaders(entity: entity, source: found?.source)
            key = hub.makeRendezvousKey(trackingId: trackingId)
            // The listener continues the trace from this hop, so the relay's span is its parent.
            var connectHeaders = Self.joinedHeaders(head.headers) {
                consumedHeaders.contains($0) || $0 == "proxy-authorization"
            }
            for name in connectHeaders.keys where name.lowercased() == "traceparent" { connectHeaders[name] = nil }
            connectHeaders["traceparent"] = span.traceContext.traceparent
            accept = AcceptCommand(
                address: hub.rendezvousAddress(
                    rawPath: request.target.rawPath, applicationQuery: request.target.applicationQuery,
                    action: .accept, key: key),
                id: trackingId, connectHeaders: connectHeaders, remoteEndpoint: remoteEndpoint(context))
            // Measured as the listener reads it, in JSON, before any listener is chosen: a head that would not
            // fit one control message is refused alone, never sent to close the channel every tunnel shares.
            let messageBytes = accept.encodedSizeBound
            guard messageBytes <= Self.maxRequestMessageBytes else {
                throw Refusal(
                    status: 431,
                    text:
                        "RequestHeaderFieldsTooLarge: The sender's headers take \(messageBytes) bytes as an accept message; the most a listener takes is \(Self.maxRequestMessageBytes)",
                    reason: "request_head_too_large")
            }
            let pending = PendingSender(handler: NIOLoopBound(self, eventLoop: context.eventLoop), entity: entity.name)
            listener = try hub.dispatch(
                entity: entity.name, key: key, pending: .webSocket(pending), pinning: Self.pinning(head.headers))
        } catch {
            record.finish(outcome: error.reason, status: error.status, error: error.text)
            throw error
        }
        span.attributes["listener_id"] = listener.trackingId
        span.attributes["rendezvous_id"] = key
        if let agent = listener.agent { span.attributes["listener_agent"] = agent.name }
        if let sender = Self.agentIdentity(head) {
            span.attributes["sender_agent"] = sender.name
        }
        let timeout = context.eventLoop.assumeIsolated().scheduleTask(
            in: .fractionalSeconds(limits.acceptTimeoutSeconds)
        ) { [weak self] in
            guard let self else { return }
            self.endHold(self.senderHold.acceptTimedOut(stillParked: self.hub.takePending(key: key) != nil))
        }
        disarm()
        state = .awaitingRendezvous
        waitingSender = WaitingSender(
            key: key, trackingId: trackingId, head: head, timeout: timeout, record: record, listener: listener)
        logger.info(
            "sender waiting for rendezvous",
            metadata: [
                "entity": "\(record.entity)", "rendezvous": "\(key)", "listener_id": "\(listener.trackingId)",
                "trace_id": "\(span.traceContext.traceID)", "span_id": "\(span.traceContext.spanID)",
            ])
        listener.send(.accept(accept))
    }

    /// The listeners a sender allows or excludes by tracking id.
    static func pinning(_ headers: HTTPHeaders) -> ListenerPinning {
        ListenerPinning(
            allowed: headers[ListenerPinning.allowedHeader], disallowed: headers[ListenerPinning.disallowedHeader])
    }

    /// Headers as the control messages carry them: one entry per name (as first spelled), repeated values
    /// joined with ", ", without the names `drop` (given lowercased) rejects.
    static func joinedHeaders(_ headers: HTTPHeaders, drop: (String) -> Bool) -> [String: String] {
        var result: [String: String] = [:]
        var names: [String: String] = [:]
        for (name, value) in headers where !drop(name.lowercased()) {
            let canonical = names[name.lowercased()] ?? name
            names[name.lowercased()] = canonical
            result[canonical] = result[canonical].map { "\($0), \(value)" } ?? value
        }
        return result
    }

    private func remoteEndpoint(_ context: ChannelHandlerContext) -> RemoteEndpoint? {
        guard let address = context.channel.remoteAddress, let ip = address.ipAddress, let port = address.port else {
            return nil
        }
        return RemoteEndpoint(address: ip, port: port)
    }

    /// The listener opened the rendezvous: upgrade the held sender and join the two legs.
    func joinRendezvous(
        partner: NIOLoopBound<WebSocketBridgeHandler>, subprotocol: String?, collector: BridgeSpanCollector,
        live: LiveTunnel
    ) {
        guard let context, let waiting = waitingSender, senderHold.accepted() == .join else {
            partner.eventLoop.execute { partner.value.partnerDidClose() }
            return
        }
        waiting.timeout.cancel()
        let metrics = hub.metrics
        waiting.record.finish(outcome: "accepted", status: 101)
        let bridgeSpan = hub.tracer.startSpan("relay.bridge", context: waiting.record.span.context, ofKind: .internal)
        bridgeSpan.attributes["entity"] = waiting.record.entity
        let joined = NIODeadline.now()
        collector.start(bridgeSpan, joined: joined)
        let active = metrics.activeTunnels(role: .relay)
        active.increment()
        let hub = self.hub
        hub.tunnelOpened()
        let upBytes = metrics.bytes(role: .relay, direction: .up)
        let logger = self.logger
        let listener = waiting.listener
        listener.tunnelOpened()
        live.update(
            state: "open", traceID: waiting.record.span.traceContext.traceID,
            peer: context.channel.remoteAddress?.hostAndPort ?? "")
        metrics.liveTunnels.add(live)
        let bridge = WebSocketBridgeHandler(countBytes: {
            upBytes.increment(by: Int64($0))
            live.count(up: $0)
        }) { statistics in
            collector.senderLegFinished(statistics)
            listener.tunnelClosed()
            metrics.liveTunnels.remove(live)
            active.decrement()
            hub.tunnelClosed()
            Self.logViolation(statistics, leg: "sender", logger: logger)
        }
        bridge.attach(partner: partner)
        logger.info(
            "rendezvous joined",
            metadata: [
                "rendezvous": "\(waiting.key)", "entity": "\(waiting.record.entity)",
                "trace_id": "\(waiting.record.span.traceContext.traceID)",
            ])
        upgrade(context: context, head: waiting.head, subprotocol: subprotocol, handler: bridge, writesBytes: true)
        let bound = NIOLoopBound(bridge, eventLoop: context.eventLoop)
        partner.eventLoop.execute { partner.value.attach(partner: bound) }
    }

    /// What an agent said about itself in `X-HyRelay-Agent`, bounded; nil for other clients.
    static func agentIdentity(_ head: HTTPRequestHead) -> AgentIdentity? {
        head.headers.first(name: AgentIdentity.headerName).flatMap(AgentIdentity.init(headerValue:))
    }

    /// A tunnel leg ended because its peer broke RFC 6455: say which side and how.
    static func logViolation(_ statistics: BridgeLegStatistics, leg: String, logger: Logger) {
        guard let violation = statistics.violation else { return }
        logger.warning(
            "tunnel closed: the \(leg) broke the WebSocket protocol: \(violation)",
            metadata: ["reason": "protocol_error", "close_code": "\(statistics.closeCode ?? 0)"])
    }

    /// The listener this sender was dispatched to went away before it opened the rendezvous.
    func listenerVanished(_ refusal: Refusal) {
        endHold(senderHold.listenerVanished(refusal))
    }

    /// The listener rejected the sender: the sender gets the listener's status.
    func rejected(status: Int, description: String?) {
        endHold(senderHold.rejected(status: status, description: description))
    }

    /// Runs the end of a sender's hold: the rendezvous record gets its outcome, the sender its answer.
    private func endHold(_ action: SenderHoldStateMachine.EndAction) {
        guard let waiting = waitingSender else { return }
        switch action {
        case .none:
            return
        case .refuse(let refusal, let outcome):
            waiting.timeout.cancel()
            waiting.record.finish(outcome: outcome, status: refusal.status, error: refusal.text)
            if let context {
                refuse(context: context, refusal, trackingId: waiting.trackingId, entity: waiting.record.entity)
            }
        case .forwardRejection(let status, let description):
            waiting.timeout.cancel()
            waiting.record.finish(outcome: "rejected", status: status, error: description ?? "rejected by the listener")
            logger.info("listener rejected sender", metadata: ["rendezvous": "\(waiting.key)", "status": "\(status)"])
            if let context {
                respond(
                    context: context, status: status,
                    reason: description ?? HTTPResponseStatus(statusCode: status).reasonPhrase, close: true)
            }
        case .recordAbandoned:
            waiting.timeout.cancel()
            waiting.record.finish(outcome: "abandoned", status: 0, error: "the sender left before a listener accepted")
            logger.info("sender left before a listener accepted", metadata: ["rendezvous": "\(waiting.key)"])
        }
    }

    // MARK: Rendezvous legs opened by listeners

    private func acceptRendezvous(
        context: ChannelHandlerContext, head: HTTPRequestHead, request: HybridConnectionRequest
    ) throws {
        guard let key = request.id, let entity = try? hub.policy.entity(for: request.path).entity,
            let sender = hub.takeSender(key: key, entity: entity.name)
        else {
            throw Refusal(status: 404, text: RelayErrorText.rendezvousNotFound, reason: "no_rendezvous")
        }
        let senderHandler = sender.handler
        if let requested = request.statusCode {
            // A rejection is an error answer: a 1xx or 2xx as the sender's final response would read as an upgrade
            // or a success that never carried a tunnel (a 101 switches a proxy in front of the relay into
            // tunnelling). Those become 502, with the listener's code in the text.
            let status = (300...599).contains(requested) ? requested : 502
            let description =
                status == requested
                ? request.statusDescription
                : "BadGateway: The listener rejected the connection with status \(requested)"
            senderHandler.eventLoop.execute { senderHandler.value.rejected(status: status, description: description) }
            respond(context: context, status: 410, reason: "Gone: the sender was rejected with \(status)", close: true)
            return
        }
        let subprotocol = WebSocketHandshake.firstSubprotocol(head.headers)
        let downBytes = hub.metrics.bytes(role: .relay, direction: .down)
        let collector = BridgeSpanCollector(metrics: hub.metrics)
        let logger = self.logger
        let live = LiveTunnel(id: key, entity: entity.name, traceID: "", peer: "", state: "joining")
        let bridge = WebSocketBridgeHandler(countBytes: {
            downBytes.increment(by: Int64($0))
            live.count(down: $0)
        }) { statistics in
            collector.listenerLegFinished(statistics)
            Self.logViolation(statistics, leg: "listener", logger: logger)
        }
        upgrade(context: context, head: head, subprotocol: subprotocol, handler: bridge, writesBytes: true)
        let bound = NIOLoopBound(bridge, eventLoop: context.eventLoop)
        senderHandler.eventLoop.execute {
            senderHandler.value.joinRendezvous(
                partner: bound, subprotocol: subprotocol, collector: collector, live: live)
        }
    }

    private func httpRendezvous(
        context: ChannelHandlerContext, head: HTTPRequestHead, request: HybridConnectionRequest
    ) throws {
        guard let key = request.id, let entity = try? hub.policy.entity(for: request.path).entity,
            let pending = hub.claimHTTPRendezvous(key: key, entity: entity.name)
        else {
            throw Refusal(status: 404, text: RelayErrorText.rendezvousNotFound, reason: "no_rendezvous")
        }
        let handler = HTTPRendezvousHandler(hub: hub, key: key, pending: pending)
        upgrade(
            context: context, head: head, subprotocol: WebSocketHandshake.firstSubprotocol(head.headers),
            handler: handler)
    }

    // MARK: Runtime information

    /// Answers a runtime-information query: the entity's listener count for a token with any right on it, an
    /// empty feed (Azure's "no such entity") for a path that is none.
    private func runtimeInformation(context: ChannelHandlerContext, head: HTTPRequestHead, target: RequestTarget) throws
    {
        let path = String(try target.decodedPath().dropFirst())
        let updated = JSONText.timestamp(Date(timeIntervalSince1970: hub.wallClock()))
        let id = "https://\(hub.policy.publicHost)/\(path)"
        guard let (entity, suffix) = try? hub.policy.entity(for: path), suffix.isEmpty else {
            writeResponse(
                context: context, status: .ok, contentType: RuntimeInformation.feedContentType,
                body: RuntimeInformation.emptyFeed(id: id, updated: updated), close: !head.isKeepAlive)
            return
        }
        let found = token(head, queryToken: try target.value(of: "sb-hc-token"))?.token
        // Any right on the entity may read it: Listen or Send (Manage implies both), the token decoded once.
        do {
            _ = try authorize(entity: entity, token: found, anyOf: [.listen, .send], head: head)
        } catch {
            refuse(context: context, error, entity: entity.name)
            return
        }
        let information = RuntimeInformation(
            path: entity.name, listenerCount: hub.listenerCount(entity: entity.name),
            requiresClientAuthorization: entity.requiresClientAuthorization)
        writeResponse(
            context: context, status: .ok, contentType: RuntimeInformation.entryContentType,
            body: information.entry(id: id, updated: updated), close: !head.isKeepAlive)
    }

    // MARK: HTTP mode

    /// Authorizes an HTTP-mode request from its head, and refuses what can be refused before a body is
    /// read: an expectation other than 100-continue, and an entity nobody listens on.
    private func admitHTTPRequest(head: HTTPRequestHead, target: RequestTarget) throws -> HTTPModeRequest {
        guard !hub.isDraining else { throw Refusal.draining }
        if let expectation = head.headers.first(name: "expect"), expectation.lowercased() != "100-continue" {
            throw Refusal(
                status: 417, text: "ExpectationFailed: Only 'Expect: 100-continue' is supported",
                reason: "expectation_failed")
        }
        let path = try target.decodedPath()
        let (entity, _) = try hub.policy.entity(for: String(path.dropFirst()))
        let found = RelayPolicy.token(
            queryToken: try target.value(of: "sb-hc-token"),
            serviceBusAuthorization: head.headers.first(name: "servicebusauthorization"),
            authorization: head.headers.first(name: "authorization"),
            cookie: BrowserCookie.token(in: head.headers[canonicalForm: "cookie"].map(String.init)))
        let expiry = try authorize(entity: entity, token: found?.token, right: .send, head: head)
        guard hub.listenerCount(entity: entity.name) > 0 else { throw Refusal.noHTTPListener }
        var setCookie: String?
        if let found, found.source == .query, entity.requiresClientAuthorization {
            setCookie = BrowserCookie.setCookie(
                token: found.token, entity: entity.name, expiry: expiry, now: now(),
                secure: hub.configuration.tls != nil || hub.configuration.effectivePublicURL.hasPrefix("https"))
        }
        return HTTPModeRequest(
            head: head, target: target, entity: entity,
            consumedHeaders: RelayPolicy.consumedHeaders(entity: entity, source: found?.source),
            pinning: Self.pinning(head.headers), setCookie: setCookie)
    }

    /// The largest `request` message the relay sends a listener, on its control channel or a rendezvous: what
    /// listeners read as one message (64 KiB), less room for the envelope.
    static let maxRequestMessageBytes = ListenerControlHandler.maxControlMessageBytes - 1024

    /// Request fields a sender may not hand a listener: credentials for a proxy on the way, and the client
    /// addresses earlier proxies claim, which the relay has no rule to believe (the listener gets the address
    /// the relay saw, as `remoteEndpoint`).
    static let untrustedRequestHeaders: Set<String> = ["proxy-authorization", "x-forwarded-for", "forwarded"]

    /// Connection-level headers the relay never forwards (RFC 7230); `Expect` the relay answers itself.
    static let hopByHopHeaders: Set<String> = [
        "connection", "content-length", "te", "trailer", "transfer-encoding", "upgrade", "keep-alive",
        "proxy-connection", "close", "expect",
    ]

    /// Starts forwarding an admitted request: its message for the listener (headers as the control messages
    /// carry them, the relay's `Via`, the trace continued from this hop) and the route it takes.
    private func startForwarding(context: ChannelHandlerContext, _ request: HTTPModeRequest) {
        disarm()
        // The fields `Connection` names are this hop's too (RFC 9110 §7.6.1).
        var connectionOptions = Set<String>()
        for value in request.head.headers[canonicalForm: "connection"] {
            connectionOptions.insert(value.trimmingWhitespace().lowercased())
        }
        let chunked = request.head.headers[canonicalForm: "transfer-encoding"].contains { $0.lowercased() == "chunked" }
        // The sender's framing is the listener's: a length it declared goes with the request (a listener, or
        // the target behind an edge, may not read chunked bodies); a chunked body stays unannounced.
        var headers = Self.joinedHeaders(request.head.headers) { name in
            (Self.hopByHopHeaders.contains(name) && (name != "content-length" || chunked))
                || Self.untrustedRequestHeaders.contains(name) || connectionOptions.contains(name)
                || request.consumedHeaders.contains(name) || name == "cookie"
        }
        // The relay's own cookie (a browser's token) never reaches the listener; the application's cookies do.
        if let cookies = BrowserCookie.strip(request.head.headers["cookie"]) { headers["Cookie"] = cookies }
        // A page opened with `?sb-hc-token=` names it in the Referer of everything it loads: not for the listener.
        for name in headers.keys where name.lowercased() == "referer" {
            headers[name] = headers[name].map(BrowserCookie.referer)
        }
        let via = "1.1 \(hub.policy.publicHost)"
        let viaName = headers.keys.first { $0.lowercased() == "via" } ?? "Via"
        headers[viaName] = headers[viaName].map { "\($0), \(via)" } ?? via

        let span = hub.tracer.startSpan(
            "relay.http", context: hub.tracer.context(traceparent: request.head.headers.first(name: "traceparent")),
            ofKind: .server)
        span.attributes["method"] = request.head.method.rawValue
        requestTraceID = span.traceContext.traceID
        let record = HTTPExchangeRecord(span: span, entity: request.entity.name, metrics: hub.metrics)
        // The listener continues the trace from this hop, as on a tunnel's accept.
        for name in headers.keys where name.lowercased() == "traceparent" { headers[name] = nil }
        headers["traceparent"] = span.traceContext.traceparent
        let trackingId = UUID().uuidString.lowercased()
        let key = hub.makeRendezvousKey(trackingId: trackingId)
        let declared = request.head.headers.first(name: "content-length").flatMap(Int.init) ?? 0
        let hasBody = chunked || declared > 0
        let command = RequestCommand(
            address: hub.rendezvousAddress(
                rawPath: "/$hc/\(request.entity.name)", applicationQuery: "", action: .request, key: key),
            id: key, requestTarget: request.target.applicationTarget, method: request.head.method.rawValue,
            remoteEndpoint: remoteEndpoint(context), requestHeaders: headers, body: hasBody)
        // Measured as the listener will read it, in JSON: escaping can double a header's bytes. A head that
        // no listener could take as one message is refused here, alone, before it reaches a control channel.
        let messageBytes = command.encodedSizeBound
        guard messageBytes <= Self.maxRequestMessageBytes else {
            span.attributes["http.response.status_code"] = 431
            record.finish(status: 431, error: "request head too large as a message")
            refuse(
                context: context,
                Refusal(
                    status: 431,
                    text:
                        "RequestHeaderFieldsTooLarge: The request's headers take \(messageBytes) bytes as a request message; the most a listener takes is \(Self.maxRequestMessageBytes)",
                    reason: "request_head_too_large"),
                trackingId: trackingId, entity: request.entity.name)
            return
        }
        // Small requests travel whole on the control channel; large, chunked (length unknown) ones stream
        // through a rendezvous.
        let route: HTTPExchangeStateMachine.Route =
            !chunked && messageBytes + declared <= limits.controlChannelRequestBytes ? .controlChannel : .rendezvous
        let entity = request.entity.name
        let forwarder = HTTPModeForwarder(
            hub: hub, context: context,
            request: HTTPModeForwarder.Request(
                head: request.head, entity: entity, key: key, trackingId: trackingId, command: command, route: route,
                hasBody: hasBody, pinning: request.pinning, setCookie: request.setCookie),
            record: record, logger: logger,
            refuse: { [weak self] refusal in
                guard let self, let context = self.context else { return }
                self.refuse(context: context, refusal, trackingId: trackingId, entity: entity)
            },
            finished: { [weak self] written, keepAlive in
                guard let self, let context = self.context else { return }
                self.responseEnded(context: context, written: written, close: !keepAlive)
            })
        state = .forwarding(forwarder)
        if route == .rendezvous { forwarder.dispatch() }
    }

    /// After a whole response: close once it is out, or wait for the next request.
    private func responseEnded(context: ChannelHandlerContext, written: EventLoopFuture<Void>, close: Bool) {
        if close {
            state = .done
            context.close(after: written)
        } else {
            state = .idle
            requestTraceID = nil
            armIdleDeadline()
        }
    }

    /// A kept-alive connection gets `idleTimeoutSeconds` for its next request head, then is closed without
    /// a reply (a 408 could cross a request the client is sending just then).
    private func armIdleDeadline() {
        arm(seconds: limits.idleTimeoutSeconds, nil)
    }

    // MARK: Replies and upgrade

    private func respond(
        context: ChannelHandlerContext, _ refusal: Refusal, trackingId: String?, entity: String?, close: Bool
    ) {
        let phrase = RelayErrorText.phrase(
            refusal.text, trackingId: "\(trackingId ?? UUID().uuidString.lowercased())_G0",
            systemTracker: hub.systemTracker(entity: entity), epochSeconds: now())
        respond(context: context, status: refusal.status, reason: phrase, close: close)
    }

    private func respond(context: ChannelHandlerContext, status: Int, reason: String, close: Bool) {
        let reason = Self.sanitizedReason(reason)
        writeResponse(
            context: context, status: Self.status(status, reason: reason), contentType: "text/plain; charset=utf-8",
            body: reason + "\n", close: close)
    }

    /// Writes a whole response the relay makes itself; with `close`, the connection ends after it, otherwise
    /// it waits for the next request.
    private func writeResponse(
        context: ChannelHandlerContext, status: HTTPResponseStatus, contentType: String, body text: String, close: Bool
    ) {
        guard context.channel.isActive else { return }
        disarm()
        var body = context.channel.allocator.buffer(capacity: text.utf8.count)
        body.writeString(text)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        if close { headers.add(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: .http1_1, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        responseEnded(context: context, written: context.writeAndFlush(wrapOutboundOut(.end(nil))), close: close)
    }

    /// NIO ignores a custom phrase for well-known codes, so build the status explicitly.
    static func status(_ code: Int, reason: String) -> HTTPResponseStatus {
        let phrase = sanitizedReason(reason)
        return phrase.isEmpty ? HTTPResponseStatus(statusCode: code) : .custom(code: UInt(code), reasonPhrase: phrase)
    }

    /// Reason phrases are ASCII on one line.
    static func sanitizedReason(_ text: String) -> String {
        String(
            text.unicodeScalars.map { $0.isASCII && $0.value >= 0x20 && $0.value != 0x7F ? Character($0) : "?" }.prefix(
                1024))
    }

    /// Answers 101 and replaces the HTTP handlers with `handler`, which reads the frames itself
    /// (`WebSocketFrameReader`): a tunnel leg also writes bytes, the message channels write frames through
    /// NIO's encoder.
    private func upgrade(
        context: ChannelHandlerContext, head: HTTPRequestHead, subprotocol: String?, handler: any ChannelHandler,
        writesBytes: Bool = false
    ) {
        state = .done
        disarm()
        let response = WebSocketHandshake.switchingProtocolsHead(request: head, subprotocol: subprotocol)
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        do {
            try WebSocketPipeline.switchToWebSocket(
                context: context, handshakeHandler: self, httpEncoder: encoder, httpDecoder: decoder,
                frameEncoder: writesBytes ? nil : WebSocketFrameEncoder()
            ) {
                try context.pipeline.syncOperations.addHandler(handler)
            }
        } catch {
            logger.error("upgrade failed: \(ErrorWords.describe(error))")
            context.close(promise: nil)
        }
    }
}

@available(*, unavailable)
extension RelayHTTPHandler: Sendable {}
