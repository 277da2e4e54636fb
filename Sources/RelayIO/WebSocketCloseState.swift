/// The RFC 6455 close handshake as one side of a WebSocket sees it: the peer's Close read, this side's Close
/// written, or both. Shared by the relay's tunnel legs and the agents' tunnels.
public enum WebSocketCloseState: Sendable, Equatable {
    case open
    case closeReceived
    case closeSent
    case closed

    /// The peer's Close was read: nothing more comes from it.
    public var received: Bool { self == .closeReceived || self == .closed }
    /// This side's Close was written: nothing more may be sent.
    public var sent: Bool { self == .closeSent || self == .closed }

    /// The peer's Close arrived; false if one had already (only the first counts).
    public mutating func receive() -> Bool {
        switch self {
        case .open: self = .closeReceived
        case .closeSent: self = .closed
        case .closeReceived, .closed: return false
        }
        return true
    }

    /// This side's Close is written; false if it was already (a Close is sent once).
    public mutating func send() -> Bool {
        switch self {
        case .open: self = .closeSent
        case .closeReceived: self = .closed
        case .closeSent, .closed: return false
        }
        return true
    }
}
