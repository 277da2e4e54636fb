import HybridConnections
import NIOCore

/// One HTTP-mode request forwarded by an edge, as the listener side of Hybrid Connections allows it to go:
/// the request arrives on the control channel (whole) or through a rendezvous (streamed); the target is dialled
/// once the request's head is known; the response goes back on the control channel when it is complete within
/// `controlChannelBudget` bytes and no rendezvous is open (as the .NET listener does), otherwise through the
/// rendezvous, streamed. A failure before the response started is answered with a status of its own (502, 504);
/// after, the exchange can only be cut.
struct HTTPForwardStateMachine {
    /// Where the relay put the request.
    enum Route: Equatable {
        case controlChannel
        case rendezvous
    }

    enum Request: Equatable {
        /// Rendezvous route: the `request` message has not come yet.
        case awaitingMessage
        case dialing
        /// The head is written to the target; the body goes on as it comes.
        case forwarding
    }

    enum Response: Equatable {
        case awaitingHead
        /// Control-channel route: held while it may still fit the control channel.
        case buffering(ResponseCommand, body: ByteBuffer)
        /// Too large for the control channel: held until the rendezvous is open.
        case awaitingRendezvous(ResponseCommand, body: ByteBuffer, ended: Bool)
        case streaming
        case finished
    }

    enum Rendezvous: Equatable {
        case none, opening, open
    }

    /// A failure answered on the sender's behalf, or the reason an exchange was cut.
    struct Failure: Equatable, Error {
        var status: Int
        /// `bad_gateway_connect`, `gateway_timeout`, … (the metric's `reason` label).
        var reason: String
        var text: String
    }

    enum Action: Equatable {
        case none
        case openRendezvous
        case dialTarget
        /// The whole response on the control channel; the exchange is over.
        case reply(ResponseCommand, body: ByteBuffer?)
        /// Response head (when not sent yet) and body on the rendezvous; with `end` the exchange is over.
        case send(ResponseCommand?, body: ByteBuffer, end: Bool)
        /// Nothing more can be answered: close the target and the rendezvous (with an error), count `failure`.
        case abort(Failure)
    }

    let route: Route
    let requestId: String
    let controlChannelBudget: Int
    private(set) var request: Request
    private(set) var response = Response.awaitingHead
    private(set) var rendezvous: Rendezvous
    /// The failure the response reports, once one was answered on the sender's behalf.
    private(set) var failure: Failure?

    init(route: Route, requestId: String, controlChannelBudget: Int = 64 * 1024) {
        self.route = route
        self.requestId = requestId
        self.controlChannelBudget = controlChannelBudget
        request = route == .controlChannel ? .dialing : .awaitingMessage
        rendezvous = route == .controlChannel ? .none : .opening
    }

    /// What to do first: open the rendezvous to read the request there, or dial the target at once.
    var start: Action { route == .controlChannel ? .dialTarget : .openRendezvous }

    var isFinished: Bool { response == .finished }

    // MARK: Rendezvous

    mutating func rendezvousOpened() -> Action {
        guard rendezvous == .opening else { return .none }
        rendezvous = .open
        guard case .awaitingRendezvous(let head, let body, let ended) = response else { return .none }
        response = ended ? .finished : .streaming
        return .send(head, body: body, end: ended)
    }

    /// The request's message on the rendezvous: dial now. A second one breaks the protocol.
    mutating func requestMessage() -> Action {
        guard request == .awaitingMessage else {
            return abort(
                Failure(
                    status: 502, reason: "protocol_error", text: "The relay sent a second request on one rendezvous"))
        }
        request = .dialing
        return .dialTarget
    }

    /// The rendezvous could not open, or closed before the response was out. A control-channel request whose
    /// response has not started still gets a 502 there.
    mutating func rendezvousEnded(_ why: String) -> Action {
        rendezvous = .none
        let failure = Failure(status: 502, reason: "rendezvous_failed", text: "Bad Gateway: \(why)")
        guard route == .controlChannel, !responseStarted else { return abort(failure) }
        return answer(failure)
    }

    /// The control channel is about to close (the edge is stopping): a control-channel request whose response
    /// has not gone moves to its rendezvous, which the relay keeps after the listener leaves.
    mutating func leaveControlChannel() -> Action {
        guard route == .controlChannel, rendezvous == .none, response != .finished else { return .none }
        rendezvous = .opening
        if case .buffering(let head, let body) = response {
            response = .awaitingRendezvous(head, body: body, ended: false)
        }
        return .openRendezvous
    }

    // MARK: Target

    mutating func targetConnected() -> Action {
        if request == .dialing { request = .forwarding }
        return .none
    }

    /// The target could not be reached, broke off, or took too long: a status of its own while no byte of the
    /// response has gone out, a cut exchange after.
    mutating func targetFailed(_ failure: Failure) -> Action {
        responseStarted ? abort(failure) : answer(failure)
    }

    /// Whether part of the response has gone to the relay (only then can a failure no longer be answered).
    private var responseStarted: Bool { response == .streaming || response == .finished }

    /// Answers a failure in place of whatever response was held: on the rendezvous when it is open, on the control
    /// channel when there is none, or once the rendezvous opens.
    private mutating func answer(_ failure: Failure) -> Action {
        guard response != .finished else { return .none }
        self.failure = failure
        var body = ByteBuffer()
        body.writeString(failure.text + "\n")
        let head = ResponseCommand(
            requestId: requestId, statusCode: failure.status, statusDescription: nil,
            responseHeaders: ["Content-Type": "text/plain; charset=utf-8"], body: true)
        switch rendezvous {
        case .open:
            response = .finished
            return .send(head, body: body, end: true)
        case .none:
            response = .finished
            return .reply(head, body: body)
        case .opening:
            response = .awaitingRendezvous(head, body: body, ended: true)
            return .none
        }
    }

    // MARK: The target's response

    /// The largest `response` message the edge sends: what a relay reads as one message (64 KiB, on its control
    /// channel and on a rendezvous alike), less room for the envelope. A head past it (thousands of fields, or
    /// quotes that JSON doubles) would make the relay close the channel every exchange shares; it is answered
    /// 502 instead, alone.
    static let maxResponseMessageBytes = 63 * 1024

    mutating func responseHead(_ head: ResponseCommand) -> Action {
        guard response == .awaitingHead else { return .none }
        let messageBytes = head.encodedSizeBound
        guard messageBytes <= Self.maxResponseMessageBytes else {
            return targetFailed(
                Failure(
                    status: 502, reason: "response_head_too_large",
                    text:
                        "Bad Gateway: the target's response head takes \(messageBytes) bytes as a response message; a relay takes \(Self.maxResponseMessageBytes)"
                ))
        }
        if rendezvous == .open {
            response = .streaming
            return .send(head, body: ByteBuffer(), end: false)
        }
        if route == .controlChannel && rendezvous == .none {
            response = .buffering(head, body: ByteBuffer())
            return .none
        }
        response = .awaitingRendezvous(head, body: ByteBuffer(), ended: false)
        return .none
    }

    mutating func responseBody(_ part: ByteBuffer) -> Action {
        switch response {
        case .buffering(let head, var body):
            var part = part
            body.writeBuffer(&part)
            guard body.readableBytes > controlChannelBudget else {
                response = .buffering(head, body: body)
                return .none
            }
            response = .awaitingRendezvous(head, body: body, ended: false)
            rendezvous = .opening
            return .openRendezvous
        case .awaitingRendezvous(let head, var body, let ended):
            var part = part
            body.writeBuffer(&part)
            response = .awaitingRendezvous(head, body: body, ended: ended)
            return .none
        case .streaming:
            return .send(nil, body: part, end: false)
        case .awaitingHead, .finished:
            return .none
        }
    }

    mutating func responseEnded() -> Action {
        switch response {
        case .buffering(let head, let body):
            response = .finished
            return .reply(head, body: head.body == true ? body : nil)
        case .awaitingRendezvous(let head, let body, _):
            response = .awaitingRendezvous(head, body: body, ended: true)
            return .none
        case .streaming:
            response = .finished
            return .send(nil, body: ByteBuffer(), end: true)
        case .awaitingHead, .finished:
            return .none
        }
    }

    /// Whether reads from the target must wait: its response is held for a rendezvous still opening.
    var holdsTargetReads: Bool {
        if case .awaitingRendezvous = response { return true }
        return false
    }

    private mutating func abort(_ failure: Failure) -> Action {
        guard response != .finished else { return .none }
        response = .finished
        self.failure = failure
        return .abort(failure)
    }
}
