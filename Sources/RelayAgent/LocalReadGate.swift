import NIOCore

/// The reading rule every channel-backed local side follows (TCP and Unix-socket connections, the edge's UDP
/// socket): nothing is read until the tunnel opens, nor while the WebSocket side is full, and what arrived
/// before the tunnel opened (NIO drains a socket on a peer's FIN whether or not `read()` was asked for) is held
/// and sent first.
struct LocalReadGate {
    private(set) var started = false
    private var readPending = false
    private var early: [ByteBuffer] = []

    /// Data read from the local peer: to send now, or nil while it waits for the tunnel to open.
    mutating func received(_ data: ByteBuffer) -> ByteBuffer? {
        guard started else {
            early.append(data)
            return nil
        }
        return data
    }

    /// NIO asks to read: true to read now, false to withhold the read until `resume()` allows it.
    mutating func readRequested(webSocketWritable: Bool) -> Bool {
        guard started && webSocketWritable else {
            readPending = true
            return false
        }
        return true
    }

    /// The tunnel opened: what arrived before, to send first.
    mutating func start() -> [ByteBuffer] {
        started = true
        defer { early = [] }
        return early
    }

    /// The WebSocket side can take more: true to make the read that was withheld.
    mutating func resume() -> Bool {
        guard readPending, started else { return false }
        readPending = false
        return true
    }
}
