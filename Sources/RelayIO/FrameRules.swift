import NIOCore
import NIOWebSocket

/// The Close rules of RFC 6455 (`WebSocketFrameReader` checks every other frame rule): a Close body is empty
/// or a code a peer may send followed by UTF-8 text. And the one way Close frames are built.
public enum FrameRules {
    public struct Violation: Equatable, Sendable, Error {
        /// The Close code to answer with: 1002 protocol error or 1007 invalid payload.
        public var code: WebSocketErrorCode
        public var reason: String

        public init(code: WebSocketErrorCode, reason: String) {
            self.code = code
            self.reason = reason
        }
    }

    /// Checks an unmasked Close body.
    public static func closeViolation(_ body: ByteBuffer) -> Violation? {
        guard body.readableBytes > 0 else { return nil }
        guard let code = body.getInteger(at: body.readerIndex, as: UInt16.self) else {
            return Violation(code: .protocolError, reason: "close body of one byte")
        }
        guard isSendable(code) else {
            return Violation(code: .protocolError, reason: "close code \(code) may not be sent")
        }
        let reason = body.getBytes(at: body.readerIndex + 2, length: body.readableBytes - 2) ?? []
        guard String(validating: reason, as: UTF8.self) != nil else {
            return Violation(code: .dataInconsistentWithMessage, reason: "close reason is not UTF-8")
        }
        return nil
    }

    /// The Close reasons every role writes, as Azure's SDKs and azbridge word them.
    public enum Reason {
        /// A tunnel's local peer ended its side: a half-close, not an error (azbridge's wording).
        public static let shutdown = "Shutdown"
        public static let normalClosure = "Normal Closure"
        public static let messageTooBig = "Message too big"
    }

    /// Codes a peer may put on the wire (RFC 6455 §7.4, IANA registry); 1005, 1006 and 1015 are local only.
    static func isSendable(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: return true
        default: return false
        }
    }

    /// A Close frame with `code` and `reason`. A reason longer than the 123 bytes a control frame leaves is
    /// cut at a word (or at least a character) and ends in "…", so a reader sees it was shortened.
    public static func closeFrame(
        code: WebSocketErrorCode, reason: String, allocator: ByteBufferAllocator
    ) -> WebSocketFrame {
        let text = fitting(reason, bytes: 123)
        var data = allocator.buffer(capacity: 2 + text.utf8.count)
        data.writeInteger(UInt16(webSocketErrorCode: code))
        data.writeString(text)
        return WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
    }

    static func fitting(_ text: String, bytes: Int) -> String {
        guard text.utf8.count > bytes else { return text }
        let ellipsis = "…"
        var cut = Substring(text)
        while cut.utf8.count > bytes - ellipsis.utf8.count { cut = cut.dropLast() }
        if let space = cut.lastIndex(of: " "), cut.distance(from: cut.startIndex, to: space) > cut.count / 2 {
            cut = cut[..<space]
        }
        return cut + ellipsis
    }
}

extension ChannelHandlerContext {
    /// Writes a pong when `PongReplies` says one is due. Takes the payload, not the `PongReplies`: the write
    /// can fire a writability change into the same handler, which reads its `PongReplies` again.
    public func sendPong(_ payload: ByteBuffer?) {
        guard let payload else { return }
        writeAndFlush(NIOAny(WebSocketFrame(fin: true, opcode: .pong, data: payload)), promise: nil)
    }

    /// Sends a Close with `code` and `reason` and closes the channel once it is out.
    /// A client masks it: pass a `maskKey`.
    public func closeWebSocket(code: WebSocketErrorCode, reason: String, maskKey: WebSocketMaskingKey? = nil) {
        var frame = FrameRules.closeFrame(code: code, reason: reason, allocator: channel.allocator)
        frame.maskKey = maskKey
        close(after: writeAndFlush(NIOAny(frame)))
    }

    /// Answers the peer's Close with its own body (the close handshake's second half) and closes the channel
    /// once the answer is out. A client masks it: pass a `maskKey`.
    public func answerClose(_ peerClose: WebSocketFrame, maskKey: WebSocketMaskingKey? = nil) {
        let answer = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: maskKey, data: peerClose.data)
        close(after: writeAndFlush(NIOAny(answer)))
    }
}

/// Answers to pings without a queue. RFC 6455 §5.5.3 lets an endpoint answer only the most recent ping, so
/// while the socket is not writable the latest payload waits and older ones are forgotten: a peer that pings
/// and never reads costs one pending pong, not memory in proportion to its pings.
public struct PongReplies: Sendable {
    private var waiting: ByteBuffer?

    public init() {}

    /// The pong payload to write now, or nil when it has to wait for writability.
    public mutating func pingReceived(_ payload: ByteBuffer, writable: Bool) -> ByteBuffer? {
        guard writable else {
            waiting = payload
            return nil
        }
        waiting = nil
        return payload
    }

    /// The channel became writable: the pong that waited, if any.
    public mutating func becameWritable() -> ByteBuffer? {
        defer { waiting = nil }
        return waiting
    }
}
