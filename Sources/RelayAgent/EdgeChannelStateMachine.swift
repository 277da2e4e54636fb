/// The edge's side of a listener control channel as a value: keep-alive pings against a relay gone silent,
/// renewing the token before the relay's deadline, and the channel's end. `EdgeControlHandler` runs it and
/// owns the timers; times come in as arguments.
///
/// ```
/// open ──┬─ 2 keep-alive pings unanswered ─▶ dead (closed without a Close: the relay would not read it)
///        ├─ the relay's Close ─────────────▶ closing (answered) ─▶ closed
///        └─ a broken frame, an oversized message ─▶ closing (Close 1002/1009) ─▶ closed
/// ```
struct EdgeChannelStateMachine: Sendable {
    enum State: Equatable, Sendable {
        case open
        case dead
        case closing
    }

    enum KeepAliveAction: Equatable, Sendable {
        /// Ping the relay and set the next tick.
        case ping
        /// The relay stopped answering: close the channel (the agent reconnects).
        case declareDead(unansweredPings: Int)
        case none
    }

    /// Keep-alive pings left unanswered before the channel counts as dead.
    static let deadAfterPings = 2

    private(set) var state = State.open
    private(set) var tokenExpiry: Int64?
    private var unansweredPings = 0

    init(tokenExpiry: Int64?) {
        self.tokenExpiry = tokenExpiry
    }

    /// Any frame from the relay: it is alive.
    mutating func heardFromRelay() {
        unansweredPings = 0
    }

    mutating func keepAliveTick() -> KeepAliveAction {
        guard state == .open else { return .none }
        if unansweredPings >= Self.deadAfterPings {
            state = .dead
            return .declareDead(unansweredPings: unansweredPings)
        }
        unansweredPings += 1
        return .ping
    }

    /// Seconds until the token is renewed: four fifths of what is left of its life (at least 1), so the relay's
    /// `se` plus grace is never reached; nil for a token that does not expire, or a channel that is ending.
    func renewalDelay(now: Int64) -> Int64? {
        guard state == .open, let tokenExpiry else { return nil }
        return max(1, (tokenExpiry - now) * 4 / 5)
    }

    /// A `renewToken` with a token expiring at `expiry` was sent.
    mutating func renewed(expiry: Int64?) {
        tokenExpiry = expiry
    }

    /// The relay's Close, or this side's answer to a broken frame: true the first time (write the Close).
    mutating func closing() -> Bool {
        guard state == .open else { return false }
        state = .closing
        return true
    }
}
