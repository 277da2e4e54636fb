import NIOCore

/// One relay tunnel leg as a value: whether it may read (joined to its partner, and the partner's socket not
/// full), its close handshake in both directions, and what may be written to its peer while a frame from the
/// partner is half written. `WebSocketBridgeHandler` feeds it NIO's events and does what it answers.
public struct BridgeLegStateMachine: Sendable {
    /// What to do when the partner leg's channel is gone.
    public enum PartnerGoneAction: Sendable, Equatable {
        /// Nothing: the channel is gone already.
        case none
        /// Close now: a Close cannot follow the half-written frame.
        case closeNow
        /// Write a 1001 Close, then close once it is out (the peer's Close came already).
        case goingAwayThenClose
        /// Write a 1001 Close, then give the peer a while to answer with its own.
        case goingAwayThenAwaitReply
        /// This leg's Close is out already: close once it is written.
        case closeAfterCloseWritten
        /// This leg's Close is out already: give the peer a while to answer.
        case awaitReply
    }

    /// What to do when the peer broke the protocol.
    public enum ViolationAction: Sendable, Equatable {
        /// Write a Close naming the rule, then close.
        case closeWithReasonThenClose
        /// A Close is out already, or cannot follow the half-written frame: close.
        case close
    }

    public private(set) var closeState = WebSocketCloseState.open
    /// The close code this leg ended with: the peer's (1005, "no status received", for a Close without one), or
    /// the one this leg sent for a broken rule; nil while no Close came and none was sent for a violation.
    public private(set) var closeCode: Int?
    private var joined = false
    private var partnerWritable = true
    private var readWithheld = false
    /// The partner's frame being written to this leg's peer continues in bytes not written yet.
    private var insideFrame = false
    private var pongs = PongReplies()
    private var finished = false

    public init() {}

    // MARK: Reading

    /// NIO asks for a read: true to read now, false while the leg is not joined or the partner is full.
    public mutating func readRequested() -> Bool {
        guard joined && partnerWritable else {
            readWithheld = true
            return false
        }
        return true
    }

    /// The leg is joined to its partner: true to make the read that was withheld.
    public mutating func joinedPartner() -> Bool {
        joined = true
        return resumeReading()
    }

    /// The partner's socket filled or drained: true to make the read that was withheld.
    public mutating func partnerWritabilityChanged(_ writable: Bool) -> Bool {
        partnerWritable = writable
        return resumeReading()
    }

    private mutating func resumeReading() -> Bool {
        guard readWithheld, joined, partnerWritable else { return false }
        readWithheld = false
        return true
    }

    /// Data read from the peer: true to pass it on (nothing after the peer's Close is).
    public var takesData: Bool { !closeState.received }

    /// The peer pinged: the pong to write now, if one may be written (not after a Close, not inside a frame,
    /// not while the socket is full: then only the latest waits, see `PongReplies`).
    public mutating func pingReceived(_ payload: ByteBuffer, writable: Bool) -> ByteBuffer? {
        guard !closeState.sent else { return nil }
        return pongs.pingReceived(payload, writable: writable && !insideFrame)
    }

    /// The peer's Close, with its code if it had one: true to pass it on to the partner (only the first).
    public mutating func closeReceived(code: UInt16?) -> Bool {
        guard closeState.receive() else { return false }
        closeCode = code.map(Int.init) ?? 1005
        return true
    }

    /// A read burst ended: true to close the channel once this leg's Close is written (both Closes done).
    public var closesAfterReadBurst: Bool { closeState == .closed }

    // MARK: Writing what the partner read

    /// Bytes from the partner written to the peer; they may end inside a frame.
    public mutating func partnerBytesWritten(endsInsideFrame: Bool) {
        insideFrame = endsInsideFrame
    }

    /// The partner's peer closed: true to write its Close to this leg's peer (once).
    public mutating func partnerCloseArrived() -> Bool {
        closeState.send()
    }

    /// The partner's delivery is written: the pong that waited for the frame in progress, if one may go now,
    /// and whether to close once the Close is written.
    public mutating func deliveryWritten(writable: Bool) -> (pong: ByteBuffer?, close: Bool) {
        let pong = !insideFrame && !closeState.sent && writable ? pongs.becameWritable() : nil
        return (pong, closeState == .closed)
    }

    /// This leg's socket drained or filled: the pong that waited, if it may go now.
    public mutating func writabilityChanged(_ writable: Bool) -> ByteBuffer? {
        guard writable, !insideFrame, !closeState.sent else { return nil }
        return pongs.becameWritable()
    }

    // MARK: Endings

    /// The peer broke the protocol (this leg answers with `code`): nothing more is read from it.
    public mutating func violation(code: UInt16) -> ViolationAction {
        closeCode = Int(code)
        let canWrite = !closeState.sent && !insideFrame
        closeState = .closed
        return canWrite ? .closeWithReasonThenClose : .close
    }

    /// The partner's channel is gone; `active` is whether this leg's channel still is.
    public mutating func partnerGone(active: Bool) -> PartnerGoneAction {
        guard active else { return .none }
        if insideFrame { return .closeNow }
        if closeState.send() {
            return closeState.received ? .goingAwayThenClose : .goingAwayThenAwaitReply
        }
        return closeState.received ? .closeAfterCloseWritten : .awaitReply
    }

    /// This leg's channel is gone: true the first time (the leg reports its statistics then).
    public mutating func channelInactive() -> Bool {
        defer { finished = true }
        return !finished
    }

    /// True when the leg is gone (its partner, joining late, must learn at once).
    public var isFinished: Bool { finished }
}
