import NIOCore
import NIOWebSocket

/// Joins WebSocket data frames, read as parts by `WebSocketFrameReader` (which has already checked their
/// order), into whole messages. A frame over `frameLimit` is refused from its head, a binary message over
/// `limit` or a text message over `textLimit` as soon as a head announces it would cross, never once
/// assembled. With `streamsBinary`, binary messages are not joined but passed on in the pieces read, of any
/// size (an HTTP body on a rendezvous). Control frames are not its business; callers handle them first.
public struct MessageAssembler: Sendable {
    public enum Event: Equatable, Sendable {
        case none
        case message(opcode: WebSocketOpcode, data: ByteBuffer)
        /// A message over its limit: Close 1009.
        case tooLarge
        /// A single frame over `frameLimit`: Close 1009 too, with its own reason.
        case frameTooLarge
        /// A piece of a streamed binary message; `last` with the message's end (it may be empty).
        case binaryPart(ByteBuffer, last: Bool)
    }

    private var opcode: WebSocketOpcode?
    private var buffer = ByteBuffer()
    private var frameRemaining: UInt64 = 0
    private var lastFrame = false
    public let limit: Int
    public let textLimit: Int
    public let frameLimit: Int
    public let streamsBinary: Bool

    public init(limit: Int, textLimit: Int? = nil, frameLimit: Int = .max, streamsBinary: Bool = false) {
        self.limit = limit
        self.textLimit = min(textLimit ?? limit, limit)
        self.frameLimit = frameLimit
        self.streamsBinary = streamsBinary
    }

    private var streaming: Bool { streamsBinary && opcode == .binary }

    private func limit(for opcode: WebSocketOpcode) -> Int { opcode == .text ? textLimit : limit }

    public mutating func receive(_ part: WebSocketFrameReader.Part) -> Event {
        switch part {
        case .head(let head):
            let current = head.opcode == .continuation ? (opcode ?? .binary) : head.opcode
            if streamsBinary && current == .binary {
                opcode = current
                frameRemaining = head.length
                lastFrame = head.fin
                return head.length == 0 ? streamed(ByteBuffer()) : .none
            }
            guard head.length <= UInt64(frameLimit) else { return reset(.frameTooLarge) }
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
            if streaming { return streamed(chunk) }
            buffer.writeBuffer(&chunk)
            return frameRemaining == 0 ? completed() : .none
        case .control:
            return .none
        }
    }

    /// A streamed piece; the message ends with the last frame's last byte.
    private mutating func streamed(_ chunk: ByteBuffer) -> Event {
        let last = frameRemaining == 0 && lastFrame
        if last { opcode = nil }
        return .binaryPart(chunk, last: last)
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
