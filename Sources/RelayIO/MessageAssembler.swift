import NIOCore
import NIOWebSocket

/// Joins WebSocket data frames, read as parts by `WebSocketFrameReader` (which has already checked their
/// order), into whole messages. A frame over `frameLimit` is refused from its head, a binary message over
/// `limit` or a text message over `textLimit` as soon as a head announces it would cross, never once
/// assembled. Control frames are not its business; callers handle them first.
public struct MessageAssembler: Sendable {
    public enum Event: Equatable, Sendable {
        case none
        case message(opcode: WebSocketOpcode, data: ByteBuffer)
        /// A message over its limit: Close 1009.
        case tooLarge
        /// A single frame over `frameLimit`: Close 1009 too, with its own reason.
        case frameTooLarge
    }

    private var opcode: WebSocketOpcode?
    private var buffer = ByteBuffer()
    private var frameRemaining: UInt64 = 0
    private var lastFrame = false
    public let limit: Int
    public let textLimit: Int
    public let frameLimit: Int

    public init(limit: Int, textLimit: Int? = nil, frameLimit: Int = .max) {
        self.limit = limit
        self.textLimit = min(textLimit ?? limit, limit)
        self.frameLimit = frameLimit
    }

    private func limit(for opcode: WebSocketOpcode) -> Int { opcode == .text ? textLimit : limit }

    public mutating func receive(_ part: WebSocketFrameReader.Part) -> Event {
        switch part {
        case .head(let head):
            guard head.length <= UInt64(frameLimit) else { return reset(.frameTooLarge) }
            let current = head.opcode == .continuation ? (opcode ?? .binary) : head.opcode
            guard UInt64(buffer.readableBytes) + head.length <= UInt64(limit(for: current)) else {
                return reset(.tooLarge)
            }
            opcode = current
            frameRemaining = head.length
            lastFrame = head.fin
            return head.length == 0 ? completed() : .none
        case .payload(var chunk):
            guard opcode != nil else { return .none }
            frameRemaining -= UInt64(chunk.readableBytes)
            buffer.writeBuffer(&chunk)
            return frameRemaining == 0 ? completed() : .none
        case .control:
            return .none
        }
    }

    /// A frame ended: the message, if it was the message's last frame.
    private mutating func completed() -> Event {
        guard lastFrame, let current = opcode else { return .none }
        let message = buffer
        buffer = ByteBuffer()
        opcode = nil
        return .message(opcode: current, data: message)
    }

    private mutating func reset(_ event: Event) -> Event {
        opcode = nil
        buffer = ByteBuffer()
        return event
    }
}
