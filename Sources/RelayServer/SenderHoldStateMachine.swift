import HybridConnections

/// The relay's hold on one sender (a `connect` request parked until a listener answers) as a value: it waits for
/// the listener's accept or rejection, and ends exactly once — bridged, rejected, timed out, its listener gone,
/// or the sender gone first. Events that arrive after the end (an accept racing the timeout, a rejection for a
/// sender that left) get the answer that leaves nothing open. `RelayHTTPHandler` runs the actions.
///
/// ```
/// waitingForAccept ─┬─ accept ──────────▶ bridged
///                   ├─ reject ──────────▶ rejected(status)
///                   ├─ deadline ────────▶ timedOut          (504)
///                   ├─ listener gone ───▶ listenerGone      (404, or 503 when others listen)
///                   └─ sender closed ───▶ senderLeft
/// ```
struct SenderHoldStateMachine: Sendable {
    enum State: Equatable, Sendable {
        case waitingForAccept
        case bridged
        case rejected(status: Int)
        case timedOut
        case listenerGone(status: Int)
        case senderLeft
    }

    enum AcceptAction: Equatable, Sendable {
        /// Upgrade the sender and join it to the listener's leg.
        case join
        /// The hold ended already: close the listener's leg that came for it.
        case closeListenerLeg
    }

    /// How the hold ends for the sender; each ends the rendezvous record with the outcome named.
    enum EndAction: Equatable, Sendable {
        /// The hold ended already, or the event does not apply to it.
        case none
        /// Answer the sender with the relay's refusal, then close.
        case refuse(Refusal, outcome: String)
        /// Answer the sender with the listener's status and description, then close (outcome `rejected`).
        case forwardRejection(status: Int, description: String?)
        /// The sender is gone before a listener answered: only record it (outcome `abandoned`).
        case recordAbandoned
    }

    private(set) var state = State.waitingForAccept

    static let acceptTimeout = Refusal(status: 504, text: RelayErrorText.acceptTimeout, reason: "accept_timeout")

    /// The listener opened the rendezvous for this sender.
    mutating func accepted() -> AcceptAction {
        guard state == .waitingForAccept else { return .closeListenerLeg }
        state = .bridged
        return .join
    }

    /// The listener rejected the sender with `status`.
    mutating func rejected(status: Int, description: String?) -> EndAction {
        guard state == .waitingForAccept else { return .none }
        state = .rejected(status: status)
        return .forwardRejection(status: status, description: description)
    }

    /// The accept deadline passed; `stillParked` is whether the relay took the rendezvous back from its table
    /// (false when a listener's accept took it first and is on its way here).
    mutating func acceptTimedOut(stillParked: Bool) -> EndAction {
        guard state == .waitingForAccept, stillParked else { return .none }
        state = .timedOut
        return .refuse(Self.acceptTimeout, outcome: "timeout")
    }

    /// The listener the sender was dispatched to closed its control channel without opening the rendezvous.
    mutating func listenerVanished(_ refusal: Refusal) -> EndAction {
        guard state == .waitingForAccept else { return .none }
        state = .listenerGone(status: refusal.status)
        return .refuse(refusal, outcome: refusal.reason)
    }

    /// The sender's connection closed before a listener answered (an accept on its way finds it gone).
    mutating func senderLeft() -> EndAction {
        guard state == .waitingForAccept else { return .none }
        state = .senderLeft
        return .recordAbandoned
    }
}
