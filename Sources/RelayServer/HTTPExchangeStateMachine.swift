import HybridConnections
import NIOCore

/// One HTTP-mode request through the relay, seen from the HTTP client's connection, as a value: the request
/// going to the listener and the response coming back, each with its own state, in the style of
/// async-http-client's `RequestBag` (`.executing(request, response)`). `HTTPModeForwarder` runs its actions.
///
/// Request: a small request (headers and a declared body within `controlChannelRequestBytes`) is collected
/// whole and sent on the control channel. Anything else goes through a rendezvous: the listener is told at
/// once, body parts wait (at most `holdLimit` bytes, then reads stop) until the listener opens the rendezvous,
/// and from then on flow to it as they arrive, reads paced by the rendezvous socket.
///
/// ```
/// request:  collecting ────────────────────────────end──▶ sent
///           awaitingRendezvous ──opened──▶ streaming ──end──▶ sent
/// response: awaitingHead ──head──▶ streamingBody ──end──▶ (finished)
/// ```
/// Deadlines: the body may pause at most `bodyTimeout` (408 while no response started); once the request is
/// sent the response head must come within `responseTimeout` (504), and a response body may pause at most
/// that long (the client's connection is cut: its status is out already).
struct HTTPExchangeStateMachine: Sendable {
    enum Route: Equatable, Sendable {
        case controlChannel
        case rendezvous
    }

    enum RequestState: Equatable, Sendable {
        /// Collecting a small body whole for the control channel.
        case collecting
        /// The listener was told to open a rendezvous; `heldBytes` of body wait for it, `ended` when the body is
        /// complete.
        case awaitingRendezvous(heldBytes: Int, ended: Bool)
        /// Body parts go to the open rendezvous; `writable` is whether its socket takes more.
        case streaming(writable: Bool)
        /// The whole request is with the listener.
        case sent
    }

    enum ResponseState: Equatable, Sendable {
        case awaitingHead
        case streamingBody(Framing)
    }

    enum State: Equatable, Sendable {
        case executing(RequestState, ResponseState)
        /// Answered, refused, aborted or the client gone.
        case finished
    }

    /// How the response body is delimited toward the client.
    enum Framing: Equatable, Sendable {
        /// The whole body is known: `Content-Length`.
        case contentLength
        /// The listener gave `Content-Length`: kept for the client (a length-framed response stays one), the
        /// body passed on as it comes; `remaining` bytes are still to come.
        case declaredLength(remaining: Int)
        /// No body by definition (the answer to a HEAD, a 204 or 304): the listener's `Content-Length`, if any,
        /// kept (a HEAD's answer says how long the GET's body would be); body bytes are dropped.
        case bodiless
        /// HTTP/1.1 client: chunked transfer coding.
        case chunked
        /// HTTP/1.0 client: the body ends when the connection closes.
        case closeDelimited
    }

    enum BodyPartAction: Equatable, Sendable {
        /// Add it to the body collected for the control channel.
        case collect
        /// Keep it until the rendezvous opens.
        case hold
        /// Send it to the rendezvous now.
        case forward
        /// The exchange is over (or answered before the body ended): drop it.
        case discard
    }

    enum RequestEndAction: Equatable, Sendable {
        /// Send the request and its collected body on the control channel.
        case dispatchOnControlChannel
        /// The end waits with the held parts for the rendezvous.
        case hold
        /// End the body message on the rendezvous.
        case forwardEnd
        case none
    }

    enum RendezvousOpenedAction: Equatable, Sendable {
        /// Send the held parts, then the body's end if `end`.
        case flushHeld(end: Bool)
        /// A rendezvous for the response only (the request went on the control channel): keep it, to pace it.
        case attach
        /// The exchange is over: close the rendezvous.
        case close
    }

    enum ResponseBodyAction: Equatable, Sendable {
        case write
        /// Not part of the response (no response streaming, or a bodiless one).
        case discard
        /// More body than the listener's `Content-Length`: cut the connection.
        case abort(String)
    }

    enum ResponseEndAction: Equatable, Sendable {
        /// Write the end of the response; keep the connection for the next request, or close it after.
        case finish(keepAlive: Bool)
        case none
    }

    enum FailureAction: Equatable, Sendable {
        /// No response started: answer with this refusal and close.
        case refuse(Refusal)
        /// The response head is out: cut the connection (a chunked body left unfinished tells the client).
        case abort(String)
        case none
    }

    enum DeadlineAction: Equatable, Sendable {
        /// Check again at this time (progress was made since the check was set).
        case checkAgain(at: NIODeadline)
        case fail(FailureAction)
        case none
    }

    static let bodyTimeoutRefusal = Refusal(
        status: 408, text: "RequestTimeout: The request body did not arrive in time", reason: "body_timeout")
    static let responseTimeoutRefusal = Refusal(
        status: 504, text: RelayErrorText.responseTimeout, reason: "response_timeout")

    private(set) var state: State
    private let clientKeepAlive: Bool
    private let clientSpeaksHTTP11: Bool
    private let holdLimit: Int
    private let bodyTimeout: TimeAmount
    private let responseTimeout: TimeAmount
    private var lastProgress: NIODeadline

    init(
        route: Route, hasBody: Bool, clientKeepAlive: Bool, clientSpeaksHTTP11: Bool, holdLimit: Int,
        bodyTimeout: TimeAmount, responseTimeout: TimeAmount, now: NIODeadline
    ) {
        self.clientKeepAlive = clientKeepAlive
        self.clientSpeaksHTTP11 = clientSpeaksHTTP11
        self.holdLimit = holdLimit
        self.bodyTimeout = bodyTimeout
        self.responseTimeout = responseTimeout
        lastProgress = now
        let request: RequestState
        switch route {
        case .controlChannel: request = .collecting
        case .rendezvous: request = .awaitingRendezvous(heldBytes: 0, ended: !hasBody)
        }
        state = .executing(request, .awaitingHead)
    }

    var isFinished: Bool { state == .finished }

    // MARK: Request

    mutating func requestBodyPart(bytes: Int, now: NIODeadline) -> BodyPartAction {
        guard case .executing(let request, let response) = state else { return .discard }
        lastProgress = now
        switch request {
        case .collecting:
            return .collect
        case .awaitingRendezvous(let held, let ended):
            state = .executing(.awaitingRendezvous(heldBytes: held + bytes, ended: ended), response)
            return .hold
        case .streaming:
            return .forward
        case .sent:
            return .discard
        }
    }

    mutating func requestEnded(now: NIODeadline) -> RequestEndAction {
        guard case .executing(let request, let response) = state else { return .none }
        lastProgress = now
        switch request {
        case .collecting:
            state = .executing(.sent, response)
            return .dispatchOnControlChannel
        case .awaitingRendezvous(let held, _):
            state = .executing(.awaitingRendezvous(heldBytes: held, ended: true), response)
            return .hold
        case .streaming:
            state = .executing(.sent, response)
            return .forwardEnd
        case .sent:
            return .none
        }
    }

    mutating func rendezvousOpened(now: NIODeadline) -> RendezvousOpenedAction {
        guard case .executing(let request, let response) = state else { return .close }
        guard case .awaitingRendezvous(_, let ended) = request else { return .attach }
        lastProgress = now
        state = .executing(ended ? .sent : .streaming(writable: true), response)
        return .flushHeld(end: ended)
    }

    /// NIO asks to read the client: false to withhold it (held parts at the limit, the rendezvous full, or a
    /// response being written: the next request waits for it).
    func readAllowed() -> Bool {
        guard case .executing(let request, _) = state else { return true }
        switch request {
        case .collecting, .sent: return true
        case .awaitingRendezvous(let held, _): return held < holdLimit
        case .streaming(let writable): return writable
        }
    }

    /// The rendezvous socket filled or drained: true when reads may resume.
    mutating func rendezvousWritabilityChanged(_ writable: Bool) -> Bool {
        guard case .executing(.streaming, let response) = state else { return false }
        state = .executing(.streaming(writable: writable), response)
        return writable
    }

    // MARK: Response

    /// The listener's response head; `wholeBody` when its body is already complete, `declaredLength` its
    /// `Content-Length`, `bodiless` when the response has no body by definition. The framing to write it with,
    /// or nil when a response is not expected (a second one). The sender's framing wins where there is one.
    mutating func responseHead(
        wholeBody: Bool, declaredLength: Int? = nil, bodiless: Bool = false, now: NIODeadline
    ) -> Framing? {
        guard case .executing(let request, .awaitingHead) = state else { return nil }
        lastProgress = now
        let framing: Framing
        if bodiless {
            framing = .bodiless
        } else if let declaredLength {
            framing = .declaredLength(remaining: declaredLength)
        } else {
            framing = wholeBody ? .contentLength : clientSpeaksHTTP11 ? .chunked : .closeDelimited
        }
        state = .executing(request, .streamingBody(framing))
        return framing
    }

    /// A response body part of `bytes`: write it, drop it, or cut the response.
    mutating func responseBodyPart(bytes: Int, now: NIODeadline) -> ResponseBodyAction {
        guard case .executing(let request, .streamingBody(let framing)) = state else { return .discard }
        lastProgress = now
        switch framing {
        case .bodiless:
            return .discard
        case .declaredLength(let remaining):
            guard bytes <= remaining else {
                state = .finished
                return .abort("the listener sent more body than its Content-Length (\(remaining) bytes left)")
            }
            state = .executing(request, .streamingBody(.declaredLength(remaining: remaining - bytes)))
            return .write
        case .contentLength, .chunked, .closeDelimited:
            return .write
        }
    }

    mutating func responseEnded() -> ResponseEndAction {
        guard case .executing(let request, .streamingBody(let framing)) = state else { return .none }
        state = .finished
        // A body shorter than its declared length ends the connection too: the client is waiting for the rest.
        if case .declaredLength(let remaining) = framing, remaining > 0 { return .finish(keepAlive: false) }
        // A request body still on its way would be read as the next request: the connection ends with this one.
        return .finish(keepAlive: clientKeepAlive && framing != .closeDelimited && request == .sent)
    }

    /// The request cannot be answered by the listener (gone, or its response refused).
    mutating func failed(_ refusal: Refusal) -> FailureAction {
        guard case .executing(_, let response) = state else { return .none }
        state = .finished
        if response == .awaitingHead { return .refuse(refusal) }
        return .abort(refusal.text)
    }

    /// The deadline check set for `deadline` ran at `now`.
    mutating func deadlineCheck(now: NIODeadline) -> DeadlineAction {
        guard case .executing(let request, let response) = state else { return .none }
        let waitingForRequest = request != .sent
        let limit = waitingForRequest && response == .awaitingHead ? bodyTimeout : responseTimeout
        let due = lastProgress + limit
        if now < due { return .checkAgain(at: due) }
        if response == .awaitingHead {
            return .fail(failed(waitingForRequest ? Self.bodyTimeoutRefusal : Self.responseTimeoutRefusal))
        }
        return .fail(failed(Refusal(status: 504, text: "the response body stalled", reason: "response_stalled")))
    }

    /// When the next deadline check is due.
    var nextCheck: NIODeadline {
        guard case .executing(let request, let response) = state else { return .distantFuture }
        return lastProgress + (request != .sent && response == .awaitingHead ? bodyTimeout : responseTimeout)
    }

    /// The client's connection is gone: true when the exchange was still under way (its pending entry, record
    /// and any rendezvous are to be ended).
    mutating func clientGone() -> Bool {
        guard case .executing = state else { return false }
        state = .finished
        return true
    }

    private func isStreaming(_ response: ResponseState) -> Bool {
        if case .streamingBody = response { return true }
        return false
    }
}
