import NIOCore
import NIOWebSocket

/// The head of a data frame (text, binary or continuation): what a reader learns before any payload.
public struct DataFrameHead: Equatable, Sendable {
    public var fin: Bool
    public var opcode: WebSocketOpcode
    public var length: UInt64

    public init(fin: Bool, opcode: WebSocketOpcode, length: UInt64) {
        self.fin = fin
        self.opcode = opcode
        self.length = length
    }
}

/// Reads WebSocket frames from a byte stream without waiting for whole frames: a data frame comes out as its
/// head and then its payload in the pieces the network delivers, unmasked, so a frame of any size passes
/// through in memory bounded by one read. Control frames (at most 125 bytes) come out whole.
///
/// The frame rules of RFC 6455 that need no negotiated extension are checked here, once for every role:
/// RSV bits, reserved opcodes, fragmented or oversized control frames, continuations without a message and
/// messages started inside another, 64-bit lengths with the top bit set, and Close bodies (`FrameRules`).
/// A violation ends the stream: every later call reads nothing.
public struct WebSocketFrameReader: Sendable {
    public enum Part: Equatable, Sendable {
        case head(DataFrameHead)
        /// Unmasked payload of the data frame whose head came last; a slice of the buffer read from.
        case payload(ByteBuffer)
        /// A whole control frame (ping, pong, close), unmasked.
        case control(WebSocketFrame)
    }

    /// What `forward` makes of a peer's bytes: data frames rewritten for the other side, control frames whole.
    public enum ForwardPart: Equatable, Sendable {
        /// Data frames as a server writes them (heads without a mask key, payload unmasked), ready to write:
        /// `payloadBytes` of payload and `framesStarted` frame heads in it; `endsInsideFrame` when the last
        /// frame's payload continues in a later part, so nothing else may be written to that peer before it.
        case bytes(ByteBuffer, payloadBytes: Int, framesStarted: Int, endsInsideFrame: Bool)
        case control(WebSocketFrame)
    }

    private struct Head {
        var fin: Bool
        var opcode: WebSocketOpcode
        var length: UInt64
        var key: WebSocketMaskingKey?
    }

    private enum State: Sendable {
        case head
        case payload(remaining: UInt64, key: WebSocketMaskingKey?, offset: Int)
        case control(opcode: WebSocketOpcode, remaining: Int, key: WebSocketMaskingKey?, collected: ByteBuffer)
        case failed
    }

    private var state = State.head
    /// A fragmented message is open: continuations are expected, a new text or binary frame is not.
    private var messageOpen = false

    public init() {}

    /// The next part from `buffer`, consuming what it takes; nil when `buffer` holds too little for one (the
    /// caller keeps what is left and appends the next read to it). Payload is unmasked in `buffer` itself.
    public mutating func read(from buffer: inout ByteBuffer) throws(FrameRules.Violation) -> Part? {
        switch state {
        case .failed:
            return nil
        case .head:
            guard let head = try readHead(from: &buffer) else { return nil }
            guard !head.opcode.isControlOpcode else {
                if let frame = try startControl(head) { return .control(frame) }
                return try read(from: &buffer)
            }
            return .head(DataFrameHead(fin: head.fin, opcode: head.opcode, length: head.length))
        case .payload(let remaining, let key, let offset):
            let count = Int(min(remaining, UInt64(buffer.readableBytes)))
            guard count > 0 else { return nil }
            if let key { Self.unmask(&buffer, count: count, key: key, offset: offset) }
            advance(remaining: remaining, key: key, offset: offset, by: count)
            return .payload(buffer.readSlice(length: count)!)
        case .control:
            guard let frame = try continueControl(from: &buffer) else { return nil }
            return .control(frame)
        }
    }

    /// Rewritten data frames waiting to be handed on: one buffer for a whole read burst, so a burst of reads
    /// costs one allocation (and a growth or two), not one per read or per frame.
    public struct ForwardOutput: Sendable {
        fileprivate var buffer: ByteBuffer?
        fileprivate var payloadBytes = 0
        fileprivate var framesStarted = 0

        public init() {}
    }

    /// Reads everything `buffer` holds, rewritten for the other side of a relay: data frames copied once,
    /// unmasked, behind heads without a mask key, onto `output`; a control frame is handed to `emit` whole,
    /// after what `output` held before it (as a `.bytes` part). What is left in `buffer` is the start of a
    /// head, for the caller to keep for the next read. `take(_:)` hands on what `output` holds.
    public mutating func forward(
        from buffer: inout ByteBuffer, into output: inout ForwardOutput, allocator: ByteBufferAllocator,
        _ emit: (ForwardPart) -> Void
    ) throws(FrameRules.Violation) {
        // Taken out of `output` while written to, so no second reference makes the write copy it. Heads lose
        // their mask key, so a read's rewritten bytes never outgrow the read.
        func take() -> ByteBuffer {
            defer { output.buffer = nil }
            return output.buffer ?? allocator.buffer(capacity: buffer.readableBytes + WebSocketFrameHeader.maxLength)
        }
        loop: while true {
            switch state {
            case .failed:
                return
            case .head:
                guard let head = try readHead(from: &buffer) else { break loop }
                if head.opcode.isControlOpcode {
                    if let frame = try startControl(head) {
                        if let part = self.take(&output) { emit(part) }
                        emit(.control(frame))
                    }
                    continue
                }
                var written = take()
                WebSocketFrameHeader.write(
                    fin: head.fin, opcode: head.opcode, length: Int(head.length), maskKey: nil, into: &written)
                output.buffer = written
                output.framesStarted += 1
            case .payload(let remaining, let key, let offset):
                let count = Int(min(remaining, UInt64(buffer.readableBytes)))
                guard count > 0 else { break loop }
                var written = take()
                if let key {
                    buffer.withUnsafeReadableBytes { source in
                        _ = written.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { destination in
                            WebSocketMasking.apply(
                                key: key, offset: offset, source: source.baseAddress!,
                                destination: destination.baseAddress!, count: count)
                            return count
                        }
                    }
                    buffer.moveReaderIndex(forwardBy: count)
                } else {
                    var chunk = buffer.readSlice(length: count)!
                    written.writeBuffer(&chunk)
                }
                output.buffer = written
                output.payloadBytes += count
                advance(remaining: remaining, key: key, offset: offset, by: count)
            case .control:
                guard let frame = try continueControl(from: &buffer) else { break loop }
                if let part = self.take(&output) { emit(part) }
                emit(.control(frame))
            }
        }
    }

    /// What `output` holds, as one part to write, and `output` emptied; nil when it holds nothing.
    public func take(_ output: inout ForwardOutput) -> ForwardPart? {
        defer { output = ForwardOutput() }
        guard let written = output.buffer, written.readableBytes > 0 else { return nil }
        var insideFrame = false
        if case .payload = state { insideFrame = true }
        return .bytes(
            written, payloadBytes: output.payloadBytes, framesStarted: output.framesStarted,
            endsInsideFrame: insideFrame)
    }

    private mutating func advance(remaining: UInt64, key: WebSocketMaskingKey?, offset: Int, by count: Int) {
        state =
            remaining == UInt64(count)
            ? .head : .payload(remaining: remaining - UInt64(count), key: key, offset: offset + count)
    }

    /// A whole head from `buffer`, checked, or nil while it is incomplete. A data head moves to its payload.
    private mutating func readHead(from buffer: inout ByteBuffer) throws(FrameRules.Violation) -> Head? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let second = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self)
        else { return nil }
        let masked = second & 0x80 != 0
        let shortLength = second & 0x7F
        let lengthBytes = shortLength == 127 ? 8 : shortLength == 126 ? 2 : 0
        let headLength = 2 + lengthBytes + (masked ? 4 : 0)
        guard buffer.readableBytes >= headLength else { return nil }
        buffer.moveReaderIndex(forwardBy: 2)
        let length: UInt64
        switch lengthBytes {
        case 8: length = buffer.readInteger(as: UInt64.self)!
        case 2: length = UInt64(buffer.readInteger(as: UInt16.self)!)
        default: length = UInt64(shortLength)
        }
        var key: WebSocketMaskingKey?
        if masked {
            key = WebSocketMaskingKey(buffer.readableBytesView.prefix(4))
            buffer.moveReaderIndex(forwardBy: 4)
        }
        let fin = first & 0x80 != 0
        let opcode = WebSocketOpcode(encodedWebSocketOpcode: first & 0x0F)
        if let violation = Self.violation(
            first: first, opcode: opcode, fin: fin, length: length, messageOpen: messageOpen)
        {
            state = .failed
            throw violation
        }
        let head = Head(fin: fin, opcode: opcode!, length: length, key: key)
        if !head.opcode.isControlOpcode {
            messageOpen = !fin
            state = length == 0 ? .head : .payload(remaining: length, key: key, offset: 0)
        }
        return head
    }

    /// A control head: the frame itself when it has no body, else nil and its body is collected next.
    private mutating func startControl(_ head: Head) throws(FrameRules.Violation) -> WebSocketFrame? {
        let body = ByteBufferAllocator().buffer(capacity: Int(head.length))
        guard head.length > 0 else { return try control(opcode: head.opcode, body: body, key: head.key) }
        state = .control(opcode: head.opcode, remaining: Int(head.length), key: head.key, collected: body)
        return nil
    }

    /// More of a control frame's body; the frame once it is whole.
    private mutating func continueControl(from buffer: inout ByteBuffer) throws(FrameRules.Violation) -> WebSocketFrame?
    {
        guard case .control(let opcode, let remaining, let key, var collected) = state else { return nil }
        let count = min(remaining, buffer.readableBytes)
        guard count > 0 else { return nil }
        // The state lets go of the body while it grows, so writing to it does not copy it.
        state = .head
        var chunk = buffer.readSlice(length: count)!
        collected.writeBuffer(&chunk)
        guard remaining == count else {
            state = .control(opcode: opcode, remaining: remaining - count, key: key, collected: collected)
            return nil
        }
        state = .head
        return try control(opcode: opcode, body: collected, key: key)
    }

    private mutating func control(
        opcode: WebSocketOpcode, body: ByteBuffer, key: WebSocketMaskingKey?
    ) throws(FrameRules.Violation) -> WebSocketFrame {
        var body = body
        if let key { Self.unmask(&body, count: body.readableBytes, key: key, offset: 0) }
        if opcode == .connectionClose, let violation = FrameRules.closeViolation(body) {
            state = .failed
            throw violation
        }
        return WebSocketFrame(fin: true, opcode: opcode, data: body)
    }

    /// The header rules, before any payload is read.
    static func violation(
        first: UInt8, opcode: WebSocketOpcode?, fin: Bool, length: UInt64, messageOpen: Bool
    ) -> FrameRules.Violation? {
        if first & 0x70 != 0 {
            return FrameRules.Violation(code: .protocolError, reason: "RSV bits set without a negotiated extension")
        }
        guard let opcode else { return FrameRules.Violation(code: .protocolError, reason: "reserved opcode") }
        if length >> 63 != 0 {
            return FrameRules.Violation(code: .protocolError, reason: "frame length with the most significant bit set")
        }
        switch opcode {
        case .connectionClose, .ping, .pong:
            if !fin { return FrameRules.Violation(code: .protocolError, reason: "fragmented control frame") }
            if length > 125 {
                return FrameRules.Violation(code: .protocolError, reason: "control frame over 125 bytes")
            }
        case .continuation:
            if !messageOpen {
                return FrameRules.Violation(code: .protocolError, reason: "continuation frame without a message")
            }
        case .text, .binary:
            if messageOpen {
                return FrameRules.Violation(code: .protocolError, reason: "new message while a fragmented one is open")
            }
        default:
            return FrameRules.Violation(code: .protocolError, reason: "reserved opcode")
        }
        return nil
    }

    private static func unmask(_ buffer: inout ByteBuffer, count: Int, key: WebSocketMaskingKey, offset: Int) {
        buffer.withUnsafeMutableReadableBytes { bytes in
            WebSocketMasking.apply(
                key: key, offset: offset, source: bytes.baseAddress!, destination: bytes.baseAddress!, count: count)
        }
    }
}

/// Writes frame headers: the one encoding of RFC 6455 §5.2 every writer here uses.
public enum WebSocketFrameHeader {
    /// The most bytes a header takes (2 + 8 length + 4 mask key).
    public static let maxLength = 14

    public static func write(
        fin: Bool, opcode: WebSocketOpcode, length: Int, maskKey: WebSocketMaskingKey?, into output: inout ByteBuffer,
        rsv: (Bool, Bool, Bool) = (false, false, false)
    ) {
        var first: UInt8 = fin ? 0x80 : 0
        if rsv.0 { first |= 0x40 }
        if rsv.1 { first |= 0x20 }
        if rsv.2 { first |= 0x10 }
        first |= UInt8(webSocketOpcode: opcode)
        output.writeInteger(first)
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        switch length {
        case ..<126:
            output.writeInteger(maskBit | UInt8(length))
        case ..<65536:
            output.writeInteger(maskBit | 126)
            output.writeInteger(UInt16(length))
        default:
            output.writeInteger(maskBit | 127)
            output.writeInteger(UInt64(length))
        }
        if let maskKey { output.writeBytes(maskKey) }
    }

    /// A whole unmasked frame, as a server writes it.
    public static func unmaskedFrame(_ frame: WebSocketFrame, allocator: ByteBufferAllocator) -> ByteBuffer {
        var output = allocator.buffer(capacity: maxLength + frame.data.readableBytes)
        write(fin: frame.fin, opcode: frame.opcode, length: frame.data.readableBytes, maskKey: nil, into: &output)
        output.writeImmutableBuffer(frame.data)
        return output
    }
}

/// The few bytes of a frame head a read ended inside of, joined to the next read.
public struct HeadRemainder {
    private var bytes: ByteBuffer?

    public init() {}

    /// `buffer`, behind whatever the previous read left.
    public mutating func joined(_ buffer: ByteBuffer) -> ByteBuffer {
        guard var left = bytes else { return buffer }
        var buffer = buffer
        left.writeBuffer(&buffer)
        bytes = nil
        return left
    }

    /// Keeps what `buffer` has left (at most a head's few bytes), copied so the read buffer can go.
    public mutating func keep(_ buffer: ByteBuffer) {
        if buffer.readableBytes > 0 { bytes = ByteBuffer(bytes: buffer.readableBytesView) }
    }
}
