import HybridConnections
import NIOCore
import NIOWebSocket
import RelayIO
import RelayTelemetry

/// Why a tunnel is being ended by this agent: the close code its peer gets, a bounded label for metrics and
/// the cause for logs and spans.
struct TunnelFailure: Equatable, Sendable {
    var code: WebSocketErrorCode
    var label: TunnelCloseCause
    var cause: String
}

/// One agent tunnel's WebSocket side as a value: the upgrade, the preamble exchange (the client's sender asks,
/// the edge's listener answers), pumping both ways, the close handshake that drains one direction at a time,
/// and why it ended. `TunnelWebSocketHandler` feeds it NIO's events and the local side's, and does what it
/// answers; the machine never touches a channel.
///
/// ```
/// upgrading ─┬─ sender ──▶ awaitingReply ──accepted──┐
///            └─ listener ▶ awaitingRequest ─▶ dialing ┴─▶ pumping ─▶ draining ─▶ closed
/// ```
/// A Close in either direction before `pumping` ends the tunnel; once pumping, the peer's Close stops the
/// downstream direction and the local side's end stops the upstream one, each on its own (half-close).
struct TunnelStateMachine {
    enum Role: Equatable, Sendable {
        /// The client agent: sends the preamble for `portName` in `mode` and waits for the answer.
        case sender(portName: String, mode: Preamble.Mode = .stream)
        /// The edge agent: reads the preamble and dials the named port.
        case listener
    }

    /// Where the tunnel is, as the docs and tests name it.
    enum State: Equatable, Sendable {
        case upgrading
        case awaitingPreambleReply
        case awaitingPreamble
        case dialing
        case pumping
        /// One direction has ended: `upstream` is local → relay (this side's Close not sent yet), `downstream`
        /// relay → local (the peer's Close not read yet).
        case draining(upstreamOpen: Bool, downstreamOpen: Bool)
        case closed
    }

    enum UpgradeAction: Equatable {
        /// Send the preamble naming this port, in this mode (sender).
        case sendPreamble(portName: String, mode: Preamble.Mode)
        /// Start the deadline for the sender's preamble (listener).
        case armPreambleTimer
        /// The local side ended during the upgrade: write its Close now, and no preamble.
        case close(CloseAction)
    }

    enum PayloadAction: Equatable {
        /// Write the bytes to the local side.
        case deliver
        /// Bytes after the peer's Close, or before the preamble is complete: nothing to do.
        case none
        /// The listener accepted the preamble: write `leftover` to the local side, then start reading it.
        case opened(leftover: [UInt8])
        /// The sender named a port and a mode: dial it (`dialSucceeded` or `fail` follows).
        case dial(portName: String, mode: Preamble.Mode)
        /// Write `reply` (a preamble answer) if any, then end the tunnel.
        case fail(reply: [UInt8]?, TunnelFailure)
    }

    enum CloseAction: Equatable {
        /// Nothing to write: a Close went already, or the upgrade is not done (it waits, see `upgradeCompleted`).
        case none
        /// Write this Close; then close the channel once it is out (the peer's Close came already), or give the
        /// peer a while to answer.
        case write(code: WebSocketErrorCode, reason: String, closeChannelAfter: Bool)
    }

    enum CloseReceivedAction: Equatable {
        /// Not the first Close.
        case none
        /// The tunnel was pumping: stop the downstream direction, keep the upstream one.
        case shutDownLocalOutput(closeChannel: Bool)
        /// The tunnel never opened: end the local side.
        case closeLocal(closeChannel: Bool)
    }

    enum DialAction: Equatable {
        /// Answer the preamble with `reply`, write `leftover` to the local side, start reading it.
        case open(reply: [UInt8], leftover: [UInt8])
        /// The tunnel ended while dialing: close the connection just made.
        case closeLocal
    }

    private enum Phase {
        case awaitingReply(PreambleResponseParser)
        case awaitingRequest(PreambleRequestParser)
        case dialing(mode: Preamble.Mode, leftover: [UInt8])
        case pumping
    }

    let role: Role
    private var phase: Phase
    /// The HTTP upgrade is done: frames may be written. (Frames may be read before: they can come in the same
    /// read as the 101.)
    private(set) var isUpgraded = false
    private(set) var closeState = WebSocketCloseState.open
    /// A Close asked for before the upgrade completed: the HTTP codec is still in the pipeline then.
    private var closeAwaitingUpgrade: (code: WebSocketErrorCode, reason: String)?
    /// The local side reads into the open tunnel (what it read before went first).
    private var localReading = false
    /// The local side ended its input before it was reading: its Close goes once the early bytes are out.
    private var localInputEndedEarly = false
    private var readWithheld = false
    private var finished = false
    private let started: NIODeadline
    private(set) var summary = TunnelSummary()

    init(role: Role, started: NIODeadline) {
        self.role = role
        self.started = started
        summary.atEdge = role == .listener
        switch role {
        case .sender(_, let mode): phase = .awaitingReply(PreambleResponseParser(expecting: mode))
        case .listener: phase = .awaitingRequest(PreambleRequestParser())
        }
    }

    var state: State {
        if finished { return .closed }
        if !isUpgraded { return .upgrading }
        switch phase {
        case .awaitingReply: return closeState == .open ? .awaitingPreambleReply : .closed
        case .awaitingRequest: return closeState == .open ? .awaitingPreamble : .closed
        case .dialing: return closeState == .open ? .dialing : .closed
        case .pumping:
            switch closeState {
            case .open: return .pumping
            case .closeSent: return .draining(upstreamOpen: false, downstreamOpen: true)
            case .closeReceived: return .draining(upstreamOpen: true, downstreamOpen: false)
            case .closed: return .closed
            }
        }
    }

    private var isPumping: Bool {
        if case .pumping = phase { return true }
        return false
    }

    // MARK: Opening

    /// The local connection was gone before the tunnel could start.
    mutating func localSideMissing() {
        set(label: .localClosedEarly, cause: "the local connection closed before the tunnel opened")
    }

    mutating func upgradeCompleted() -> UpgradeAction {
        isUpgraded = true
        if let (code, reason) = closeAwaitingUpgrade {
            closeAwaitingUpgrade = nil
            return .close(.write(code: code, reason: reason, closeChannelAfter: closeState.received))
        }
        switch role {
        case .sender(let portName, let mode): return .sendPreamble(portName: portName, mode: mode)
        case .listener: return .armPreambleTimer
        }
    }

    /// The preamble deadline passed: the failure to end the tunnel with, if the sender still has not named a
    /// port.
    func preambleTimedOut(after seconds: Int64) -> TunnelFailure? {
        guard isUpgraded, case .awaitingRequest = phase, closeState == .open else { return nil }
        return TunnelFailure(
            code: .policyViolation, label: .preambleTimeout, cause: "the sender sent no preamble within \(seconds) s")
    }

    mutating func dialSucceeded() -> DialAction {
        guard case .dialing(let mode, let leftover) = phase, !closeState.sent else { return .closeLocal }
        phase = .pumping
        summary.bytesFromRelay &+= leftover.count
        return .open(reply: Preamble.accepted(mode: mode), leftover: leftover)
    }

    /// The local side reads from now on: the Close it asked for before the tunnel opened, if it did.
    mutating func localReadingStarted() -> CloseAction {
        localReading = true
        guard localInputEndedEarly else { return .none }
        localInputEndedEarly = false
        return closeRequested(code: .normalClosure, reason: FrameRules.Reason.shutdown)
    }

    // MARK: From the relay

    /// Payload bytes from the peer; `now` is asked only for the first payload byte, not once per read.
    mutating func payloadReceived(_ bytes: ByteBufferView, now: @autoclosure () -> NIODeadline) -> PayloadAction {
        guard !closeState.received else { return .none }
        // This side ended the tunnel before it opened: a late preamble opens nothing.
        guard isPumping || !closeState.sent else { return .none }
        switch phase {
        case .pumping:
            if summary.timeToFirstByte == nil { summary.timeToFirstByte = (now() - started).seconds }
            summary.bytesFromRelay &+= bytes.count
            return .deliver
        case .awaitingReply(var parser):
            switch parser.feed(bytes) {
            case .needMore:
                phase = .awaitingReply(parser)
                return .none
            case .accepted(let leftover):
                phase = .pumping
                summary.bytesFromRelay &+= leftover.count
                return .opened(leftover: leftover)
            case .refused(_, let reason):
                return .fail(
                    reply: nil,
                    TunnelFailure(code: .protocolError, label: .preambleRefused, cause: "preamble refused: \(reason)")
                )
            }
        case .awaitingRequest(var parser):
            switch parser.feed(bytes) {
            case .needMore:
                phase = .awaitingRequest(parser)
                return .none
            case .complete(let portName, let mode, let leftover):
                phase = .dialing(mode: mode, leftover: leftover)
                return .dial(portName: portName, mode: mode)
            case .unsupportedVersion(let major):
                return .fail(
                    reply: Preamble.unsupportedVersion,
                    TunnelFailure(
                        code: .protocolError, label: .protocolError, cause: "unsupported preamble version \(major)"))
            case .invalid(let why):
                return .fail(
                    reply: nil,
                    TunnelFailure(code: .protocolError, label: .protocolError, cause: "invalid preamble: \(why)"))
            }
        case .dialing:
            // The sender waits for the preamble answer before sending payload.
            return .fail(
                reply: nil,
                TunnelFailure(
                    code: .protocolError, label: .protocolError,
                    cause: "payload arrived before the preamble was answered"))
        }
    }

    /// The peer's Close, with its code if it carried one.
    mutating func closeReceived(code: UInt16?, reason: String) -> CloseReceivedAction {
        guard closeState.receive() else { return .none }
        let closeChannel = closeState.sent
        if isPumping {
            setIfUnset(label: .remoteClose, cause: "remote close \(code.map(String.init) ?? "-")")
            return .shutDownLocalOutput(closeChannel: closeChannel)
        }
        let detail = reason.isEmpty ? "" : ": \(reason)"
        setIfUnset(
            label: .refusedByPeer,
            cause: "closed by peer before the tunnel opened (\(code.map(String.init) ?? "no code")\(detail))")
        return .closeLocal(closeChannel: closeChannel)
    }

    /// The peer broke the WebSocket protocol.
    func violation(_ error: FrameRules.Violation) -> TunnelFailure {
        TunnelFailure(
            code: error.code, label: .protocolError, cause: "the relay broke the WebSocket protocol: \(error.reason)")
    }

    /// A pong may be written in answer to a ping (not after this side's Close).
    var answersPings: Bool { !closeState.sent }

    // MARK: Reading

    /// NIO asks to read the relay connection: false to withhold it (while dialing, or while the local side
    /// cannot take more).
    mutating func readRequested(localWritable: Bool) -> Bool {
        switch phase {
        case .dialing:
            readWithheld = true
            return false
        case .pumping where !localWritable:
            readWithheld = true
            return false
        default:
            return true
        }
    }

    /// The local side can take more, or the tunnel opened: true to make the withheld read.
    mutating func resumeReading() -> Bool {
        guard readWithheld else { return false }
        readWithheld = false
        return true
    }

    // MARK: From the local side

    /// Bytes the local side read go to the relay (counted as sent).
    mutating func localBytesSent(_ count: Int) {
        summary.bytesToRelay &+= count
    }

    /// The local peer ended its input (TCP FIN): the upstream direction ends with `Close(1000)`, once the tunnel
    /// is open and what came before the FIN is sent (`localReadingStarted`).
    mutating func localInputEnded() -> CloseAction {
        guard isPumping && localReading else {
            localInputEndedEarly = true
            return .none
        }
        return closeRequested(code: .normalClosure, reason: FrameRules.Reason.shutdown)
    }

    /// This agent ends the tunnel (the local side is gone, a dial failed, the peer broke the rules).
    mutating func fail(_ failure: TunnelFailure) -> CloseAction {
        set(label: failure.label, cause: failure.cause)
        return closeRequested(code: failure.code, reason: failure.cause)
    }

    /// Asks for this side's Close (once).
    mutating func closeRequested(code: WebSocketErrorCode, reason: String) -> CloseAction {
        guard closeState.send() else { return .none }
        guard isUpgraded else {
            closeAwaitingUpgrade = (code, reason)
            return .none
        }
        return .write(code: code, reason: reason, closeChannelAfter: closeState.received)
    }

    // MARK: Endings

    mutating func errorCaught(_ error: any Error) {
        set(label: .error, cause: "websocket error: \(ErrorWords.describe(error))")
    }

    /// The relay connection is gone: the summary to report, the first time only.
    mutating func channelInactive() -> TunnelSummary? {
        guard !finished else { return nil }
        finished = true
        if !closeState.received { setIfUnset(label: .relayLost, cause: "relay connection lost") }
        return summary
    }

    private mutating func set(label: TunnelCloseCause, cause: String) {
        summary.cause = label
        summary.closeCause = cause
    }

    /// Keeps the first cause: a failure this side named is not overwritten by the Close that follows it.
    private mutating func setIfUnset(label: TunnelCloseCause, cause: String) {
        guard summary.cause == .closed else { return }
        set(label: label, cause: cause)
    }
}
