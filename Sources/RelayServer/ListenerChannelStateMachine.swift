import NIOWebSocket
import RelayIO

/// A listener's control channel, as the relay keeps it, as a value: liveness (pings answered, the socket read),
/// the token's lifetime and its renewal, and why the channel ended. `ListenerControlHandler` runs its actions
/// and owns the timers; time comes in as arguments (seconds since 1970), so tests need no clock.
///
/// ```
/// open ──┬─ Close from the listener, renewal refused, token expired, protocol broken,
///        │  message too big, relay going away, recycled ─────────────▶ closing(cause) ─▶ closed
///        └─ pings unanswered, socket not read ───────────────────────▶ evicted(cause) ─▶ closed
/// ```
struct ListenerChannelStateMachine: Sendable {
    enum State: Equatable, Sendable {
        case open
        /// A Close is written; the channel ends once it is out.
        case closing(cause: String)
        /// Dropped without a Close: the listener would not read one.
        case evicted(cause: String)
        case closed(cause: String)
    }

    enum TickAction: Equatable, Sendable {
        /// Ping the listener and schedule the next tick.
        case ping
        /// Drop the listener now (no Close); log `message`.
        case evict(cause: String, message: String)
        /// The channel is ending: nothing more to do.
        case none
    }

    /// A Close to write, then the channel ends; nil when it is ending already.
    struct Close: Equatable, Sendable {
        var code: WebSocketErrorCode
        var reason: String
        /// The bounded label the disconnect is counted under.
        var cause: String
    }

    private(set) var state = State.open
    /// The token's `se` (seconds since 1970), nil for a token that does not expire.
    private(set) var tokenExpiry: Int64?
    private let missedPongLimit: Int
    private let tokenGraceSeconds: Double
    private var missedPongs = 0
    /// Ticks in a row at which the listener's socket had unread data queued past the high-water mark.
    private var stalledTicks = 0

    init(tokenExpiry: Int64?, missedPongLimit: Int, tokenGraceSeconds: Double) {
        self.tokenExpiry = tokenExpiry
        self.missedPongLimit = missedPongLimit
        self.tokenGraceSeconds = tokenGraceSeconds
    }

    var isOpen: Bool { state == .open }

    /// When the channel ends for its token (seconds since 1970): `se` plus the grace, not the next ping.
    var expiryDeadline: Double? { tokenExpiry.map { Double($0) + tokenGraceSeconds } }

    // MARK: Liveness

    /// A pong, solicited or not (the .NET runtime sends unsolicited ones as heartbeats), or any message: proof
    /// of life.
    mutating func heardFromListener() {
        missedPongs = 0
    }

    /// The ping interval passed; `writable` is whether the listener's socket takes more.
    mutating func tick(writable: Bool) -> TickAction {
        guard isOpen else { return .none }
        // A listener that pongs but never reads would let accept and request messages pile up here.
        stalledTicks = writable ? 0 : stalledTicks + 1
        if stalledTicks >= missedPongLimit {
            return evict(cause: "not_reading", "listener evicted: it does not read its control channel")
        }
        if missedPongs >= missedPongLimit {
            return evict(cause: "ping_timeout", "listener evicted: no pong (\(missedPongs) pings unanswered)")
        }
        missedPongs += 1
        return .ping
    }

    private mutating func evict(cause: String, _ message: String) -> TickAction {
        state = .evicted(cause: cause)
        return .evict(cause: cause, message: message)
    }

    // MARK: Token

    /// The expiry timer fired at `now`: the Close, if the token (as renewed since) has lapsed; else nil, and
    /// the timer is set again for `expiryDeadline`.
    mutating func expiryTimerFired(now: Double) -> Close? {
        guard isOpen, let deadline = expiryDeadline, now >= deadline else { return nil }
        return close(code: .policyViolation, reason: "The security token expired", cause: "token_expired")
    }

    /// A `renewToken` was accepted; `expiry` is the new token's `se`.
    mutating func tokenRenewed(expiry: Int64?) {
        tokenExpiry = expiry
    }

    /// A `renewToken` was refused for `reason` (the policy's label).
    mutating func renewalRefused(reason: String) -> Close? {
        close(code: .policyViolation, reason: "Token renewal failed: \(reason)", cause: "renew_refused")
    }

    // MARK: Endings

    /// The listener's Close: answered with 1000.
    mutating func closeReceived() -> Close? {
        close(code: .normalClosure, reason: FrameRules.Reason.normalClosure, cause: "listener_closed")
    }

    /// The listener broke RFC 6455.
    mutating func violation(code: WebSocketErrorCode, reason: String) -> Close? {
        close(code: code, reason: reason, cause: "protocol_error")
    }

    /// A message over the control channel's limit.
    mutating func messageTooLarge(reason: String) -> Close? {
        close(code: .messageTooLarge, reason: reason, cause: "message_too_big")
    }

    /// The channel has lived `limits.listenerRecycleSeconds`: 1011, as Azure Relay recycles its control channels;
    /// the listener reconnects, and tunnels already joined go on (they are connections of their own).
    mutating func recycleTimerFired() -> Close? {
        close(
            code: .unexpectedServerError, reason: "The control channel is being recycled; connect again",
            cause: "recycled")
    }

    /// The relay drains, or the entity left the configuration: 1001, so the listener reconnects elsewhere.
    mutating func goAway(reason: String) -> Close? {
        close(code: .goingAway, reason: reason, cause: "going_away")
    }

    /// The channel is gone: the cause to count the disconnect under.
    mutating func channelInactive() -> String {
        let cause: String
        switch state {
        case .open: cause = "closed"
        case .closing(let named), .evicted(let named), .closed(let named): cause = named
        }
        state = .closed(cause: cause)
        return cause
    }

    private mutating func close(code: WebSocketErrorCode, reason: String, cause: String) -> Close? {
        guard isOpen else { return nil }
        state = .closing(cause: cause)
        return Close(code: code, reason: reason, cause: cause)
    }
}
