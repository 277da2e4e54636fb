import HybridConnections
import Logging
import NIOCore
import NIOHTTP1
import RelayIO
import RelayTelemetry

/// Forwards one HTTP-mode request from its client to a listener and streams the response back, as
/// `HTTPExchangeStateMachine` says: the request on the control channel (small) or through a rendezvous
/// (large, chunked, streamed), its body passed on as it arrives, the response written as it comes, each
/// direction paced by the other side's socket. `RelayHTTPHandler` feeds it the client's request parts and
/// reads; the listener's side (`ListenerControlHandler`, `HTTPRendezvousHandler`) calls it on this loop.
final class HTTPModeForwarder {
    /// What the relay knows of the request when it starts forwarding it.
    struct Request {
        var head: HTTPRequestHead
        var entity: String
        var key: String
        var trackingId: String
        var command: RequestCommand
        var route: HTTPExchangeStateMachine.Route
        var hasBody: Bool
        var pinning: ListenerPinning
        /// A cookie the relay sets for a browser with the response (`BrowserCookie`).
        var setCookie: String? = nil
    }

    /// Parts held before the rendezvous opens stop the client's reads at this many bytes.
    static let holdLimit = 64 * 1024

    private let hub: RelayHub
    private let context: ChannelHandlerContext
    private let request: Request
    private let record: HTTPExchangeRecord
    private var machine: HTTPExchangeStateMachine
    private var collected = ByteBuffer()
    private var held: [ByteBuffer] = []
    /// Bytes held in the relay-wide budget for the collected or held body.
    private var reservedBytes = 0
    private var rendezvous: NIOLoopBound<HTTPRendezvousHandler>?
    private var readWithheld = false
    private var deadline: Scheduled<Void>?
    private var responseBytes = 0
    /// The listener's `Content-Length`, to tell a body that ended short of it.
    private var declaredLength: Int?
    /// A pipelined request came: the connection ends with this response.
    private var closesAfterResponse = false
    private var status = 0
    private let logger: Logger
    /// Renders a refusal the one way every refusal goes (logged, counted, answered, connection closed).
    private let refuse: (Refusal) -> Void
    /// The response is written: wait for the next request or close.
    private let finished: (_ written: EventLoopFuture<Void>, _ keepAlive: Bool) -> Void

    init(
        hub: RelayHub, context: ChannelHandlerContext, request: Request, record: HTTPExchangeRecord, logger: Logger,
        refuse: @escaping (Refusal) -> Void,
        finished: @escaping (_ written: EventLoopFuture<Void>, _ keepAlive: Bool) -> Void
    ) {
        self.hub = hub
        self.context = context
        self.request = request
        self.record = record
        self.logger = logger
        self.refuse = refuse
        self.finished = finished
        let limits = hub.limits
        machine = HTTPExchangeStateMachine(
            route: request.route, hasBody: request.hasBody, clientKeepAlive: request.head.isKeepAlive,
            clientSpeaksHTTP11: request.head.version != .http1_0 && request.head.version != .http0_9,
            holdLimit: Self.holdLimit,
            bodyTimeout: .fractionalSeconds(limits.httpBodyTimeoutSeconds),
            responseTimeout: .fractionalSeconds(limits.httpResponseTimeoutSeconds), now: context.eventLoop.now)
        scheduleCheck()
    }

    var bound: NIOLoopBound<HTTPModeForwarder> { NIOLoopBound(self, eventLoop: context.eventLoop) }

    /// Sends the request's message to a listener: at once for the rendezvous route (the body follows there),
    /// at the body's end for the control channel.
    func dispatch(body: ByteBuffer? = nil) {
        let pending = PendingHTTPRequest(
            forwarder: bound, entity: request.entity, command: request.command,
            sentOnControlChannel: request.route == .controlChannel)
        let listener: ListenerHandle
        do {
            listener = try hub.dispatch(
                entity: request.entity, key: request.key, pending: .http(pending), pinning: request.pinning)
        } catch {
            // HTTP mode answers "no listener" with 502, as Azure does; "none qualifies" keeps its 404.
            failed(error.reason == "no_listener" ? .noHTTPListener : error)
            return
        }
        logger.info(
            "http request routed",
            metadata: [
                "entity": "\(request.entity)", "request_id": "\(request.key)",
                "control_channel": "\(request.route == .controlChannel)",
            ])
        switch request.route {
        case .controlChannel:
            listener.send(.request(request.command), body: request.command.body == true ? body : nil)
        case .rendezvous:
            listener.send(.request(request.command.rendezvousOnly))
        }
    }

    // MARK: The client's request

    /// A body part from the client; false if the relay-wide budget for held bodies is spent (the caller
    /// refuses with 503).
    func bodyPart(_ part: ByteBuffer) -> Bool {
        record.requestBytes += part.readableBytes
        switch machine.requestBodyPart(bytes: part.readableBytes, now: context.eventLoop.now) {
        case .collect:
            guard reserve(part.readableBytes) else { return false }
            var part = part
            collected.writeBuffer(&part)
        case .hold:
            guard reserve(part.readableBytes) else { return false }
            held.append(part)
        case .forward:
            rendezvous?.send { $0.bodyParts([part], end: false) }
        case .discard:
            break
        }
        return true
    }

    func requestEnded() {
        switch machine.requestEnded(now: context.eventLoop.now) {
        case .dispatchOnControlChannel:
            let body = collected
            collected = ByteBuffer()
            release()
            dispatch(body: body)
        case .forwardEnd:
            rendezvous?.send { $0.bodyParts([], end: true) }
        case .hold, .none:
            break
        }
        scheduleCheck()
    }

    /// The client sent another request before this one's response: the connection closes after the response.
    func closeAfterResponse() {
        closesAfterResponse = true
    }

    /// NIO asks to read the client: false while the machine withholds it (resumed here later).
    func readRequested() -> Bool {
        guard machine.readAllowed() else {
            readWithheld = true
            return false
        }
        return true
    }

    /// The client's socket filled or drained: the rendezvous reads the response only while it takes more.
    func clientWritabilityChanged(_ writable: Bool) {
        rendezvous?.send { $0.clientWritabilityChanged(writable) }
    }

    /// The client's connection closed.
    func clientGone() {
        deadline?.cancel()
        release()
        guard machine.clientGone() else { return }
        _ = hub.takePending(key: request.key)
        record.finish(status: status, responseBytes: responseBytes, error: "the client left before the response ended")
        rendezvous?.send { $0.exchangeAbandoned() }
    }

    // MARK: The listener's side

    /// The listener opened the request's rendezvous (and wrote the request message on it).
    func rendezvousOpened(_ handler: NIOLoopBound<HTTPRendezvousHandler>) {
        switch machine.rendezvousOpened(now: context.eventLoop.now) {
        case .flushHeld(let end):
            rendezvous = handler
            let parts = held
            held = []
            release()
            if !parts.isEmpty || end { handler.send { $0.bodyParts(parts, end: end) } }
            resumeReading()
        case .attach:
            rendezvous = handler
        case .close:
            handler.send { $0.exchangeAbandoned() }
        }
    }

    func rendezvousWritabilityChanged(_ writable: Bool) {
        if machine.rendezvousWritabilityChanged(writable) { resumeReading() }
    }

    /// The response head, with its body if the body is already complete (`ended`).
    func responseHead(_ head: HTTPResponseAssembler.ResponseHead, body: ByteBuffer, ended: Bool) {
        if let problem = HTTPFieldSyntax.problem(in: head.headers) {
            // Forwarding it would let a listener write headers, or a whole response, of its own choosing.
            failed(
                Refusal(
                    status: 502, text: "BadGateway: The listener's response is not valid HTTP: \(problem)",
                    reason: "bad_listener_response"))
            return
        }
        guard (200...599).contains(head.statusCode) else {
            // A 1xx sent as the final answer would leave the client, or a proxy in front, reading what follows
            // as another protocol (101) or waiting for a response that never comes; HTTP mode carries no upgrade.
            failed(
                Refusal(
                    status: 502,
                    text: "BadGateway: The listener answered \(head.statusCode); a final response is 200 to 599",
                    reason: "bad_listener_response"))
            return
        }
        let declared = head.headers.first { $0.key.lowercased() == "content-length" }.flatMap { Int($0.value) }
        if ended, let declared, declared != body.readableBytes, request.head.method != .HEAD,
            head.statusCode != 204, head.statusCode != 304
        {
            failed(
                Refusal(
                    status: 502,
                    text:
                        "BadGateway: The listener's Content-Length (\(declared)) does not match its body (\(body.readableBytes) bytes)",
                    reason: "bad_listener_response"))
            return
        }
        declaredLength = declared
        let status204or304 = head.statusCode == 204 || head.statusCode == 304
        guard
            let framing = machine.responseHead(
                wholeBody: ended, declaredLength: declared.flatMap { $0 >= 0 ? $0 : nil },
                bodiless: request.head.method == .HEAD || status204or304, now: context.eventLoop.now)
        else { return }
        status = head.statusCode
        var headers = HTTPHeaders()
        for (name, value) in head.headers.sorted(by: { $0.key < $1.key })
        where !RelayHTTPHandler.hopByHopHeaders.contains(name.lowercased()) {
            headers.add(name: name, value: value)
        }
        if let setCookie = request.setCookie {
            headers.add(name: "Set-Cookie", value: setCookie)
            // The page's address holds the token: its links to other sites must not carry it in a Referer.
            if headers.first(name: "referrer-policy") == nil {
                headers.add(name: "Referrer-Policy", value: "same-origin")
            }
        }
        let via = "1.1 \(hub.policy.publicHost)"
        if let existing = headers.first(name: "via") {
            headers.replaceOrAdd(name: "Via", value: "\(existing), \(via)")
        } else {
            headers.add(name: "Via", value: via)
        }
        switch framing {
        case .contentLength: headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        case .declaredLength(let length): headers.add(name: "Content-Length", value: "\(length)")
        case .bodiless:
            if let declared, !status204or304 { headers.add(name: "Content-Length", value: "\(declared)") }
        case .chunked: headers.add(name: "Transfer-Encoding", value: "chunked")
        case .closeDelimited: break
        }
        if framing == .closeDelimited || !request.head.isKeepAlive || closesAfterResponse {
            headers.add(name: "Connection", value: "close")
        }
        let status = RelayHTTPHandler.status(head.statusCode, reason: head.statusDescription ?? "")
        // An HTTP/1.0 status line keeps NIO's encoder from choosing chunked coding the client cannot read.
        let version: HTTPVersion = framing == .closeDelimited ? .http1_0 : .http1_1
        context.write(
            NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: status, headers: headers))),
            promise: nil)
        responseBody(body, ended: ended)
    }

    /// A piece of the response body; `ended` with its last.
    func responseBody(_ body: ByteBuffer, ended: Bool) {
        if body.readableBytes > 0 {
            switch machine.responseBodyPart(bytes: body.readableBytes, now: context.eventLoop.now) {
            case .write:
                responseBytes += body.readableBytes
                context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(body))), promise: nil)
            case .discard:
                break
            case .abort(let why):
                run(.abort(why))
                return
            }
        }
        guard ended else {
            context.flush()
            return
        }
        guard case .finish(let keepAlive) = machine.responseEnded() else { return }
        deadline?.cancel()
        let written = context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)))
        var error: String? = status >= 500 ? "the listener answered \(status)" : nil
        if let declaredLength, responseBytes < declaredLength, request.head.method != .HEAD,
            status != 204, status != 304
        {
            error = "the listener's body ended \(declaredLength - responseBytes) bytes short of its Content-Length"
            hub.metrics.refused(role: .relay, reason: "response_aborted", status: status)
            logger.warning(
                "http response cut off: \(error!)",
                metadata: ["reason": "response_aborted", "entity": "\(request.entity)", "request_id": "\(request.key)"])
        }
        record.finish(status: status, responseBytes: responseBytes, error: error)
        finished(written, keepAlive && !closesAfterResponse)
    }

    /// The listener cannot answer: gone, its response refused, or its rendezvous closed too early.
    func failed(_ refusal: Refusal) {
        run(machine.failed(refusal))
    }

    // MARK: Running actions

    private func run(_ action: HTTPExchangeStateMachine.FailureAction) {
        switch action {
        case .none:
            return
        case .refuse(let refusal):
            end()
            record.finish(status: refusal.status, error: refusal.text)
            refuse(refusal)
        case .abort(let why):
            end()
            record.finish(status: status, responseBytes: responseBytes, error: why)
            hub.metrics.refused(role: .relay, reason: "response_aborted", status: status)
            logger.warning(
                "http response cut off: \(why)",
                metadata: ["reason": "response_aborted", "entity": "\(request.entity)", "request_id": "\(request.key)"])
            context.close(promise: nil)
        }
    }

    /// Takes the exchange out of the table and tells an open rendezvous it is over.
    private func end() {
        deadline?.cancel()
        release()
        _ = hub.takePending(key: request.key)
        rendezvous?.send { $0.exchangeAbandoned() }
    }

    private func scheduleCheck() {
        deadline?.cancel()
        let at = machine.nextCheck
        guard at != .distantFuture else { return }
        deadline = context.eventLoop.assumeIsolated().scheduleTask(deadline: at) { [weak self] in
            guard let self else { return }
            switch self.machine.deadlineCheck(now: self.context.eventLoop.now) {
            case .checkAgain: self.scheduleCheck()
            case .fail(let action): self.run(action)
            case .none: break
            }
        }
    }

    private func resumeReading() {
        guard readWithheld, machine.readAllowed() else { return }
        readWithheld = false
        context.read()
    }

    private func reserve(_ bytes: Int) -> Bool {
        guard hub.reserveHTTPBytes(bytes) else { return false }
        reservedBytes += bytes
        return true
    }

    private func release() {
        hub.releaseHTTPBytes(reservedBytes)
        reservedBytes = 0
    }
}

@available(*, unavailable)
extension HTTPModeForwarder: Sendable {}

extension NIOLoopBound where Value: AnyObject {
    /// Runs `body` with the value on its event loop.
    func send(_ body: @escaping @Sendable (Value) -> Void) {
        let bound = self
        eventLoop.execute { body(bound.value) }
    }
}
