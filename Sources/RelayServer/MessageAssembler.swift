import HybridConnections
import NIOCore
import NIOWebSocket

/// Joins fragmented WebSocket data frames into whole messages, refusing binary messages larger than
/// `limit` and text messages larger than `textLimit` as soon as they cross it, not once assembled.
/// Control frames are not its business; callers handle them first.
struct MessageAssembler {
    enum Event: Equatable {
        case none
        case message(opcode: WebSocketOpcode, data: ByteBuffer)
        case tooLarge
        case protocolError(String)
    }

    private var opcode: WebSocketOpcode?
    private var buffer: ByteBuffer?
    let limit: Int
    let textLimit: Int

    init(limit: Int, textLimit: Int? = nil) {
        self.limit = limit
        self.textLimit = min(textLimit ?? limit, limit)
    }

    private func limit(for opcode: WebSocketOpcode) -> Int { opcode == .text ? textLimit : limit }

    /// Feeds one already-unmasked data frame.
    mutating func receive(_ frame: WebSocketFrame) -> Event {
        var data = frame.data
        switch frame.opcode {
        case .continuation:
            guard let current = opcode, var collected = buffer else {
                return .protocolError("continuation frame without a message to continue")
            }
            guard collected.readableBytes + data.readableBytes <= limit(for: current) else { return reset(.tooLarge) }
            buffer = nil
            collected.writeBuffer(&data)
            if frame.fin {
                opcode = nil
                return .message(opcode: current, data: collected)
            }
            buffer = collected
            return .none
        case .text, .binary:
            guard opcode == nil else { return reset(.protocolError("new message before the previous one finished")) }
            guard data.readableBytes <= limit(for: frame.opcode) else { return reset(.tooLarge) }
            if frame.fin { return .message(opcode: frame.opcode, data: data) }
            opcode = frame.opcode
            buffer = data
            return .none
        default:
            return .none
        }
    }

    private mutating func reset(_ event: Event) -> Event {
        opcode = nil
        buffer = nil
        return event
    }
}

/// Builds the listener's HTTP response from the `response` message and the binary message that follows
/// it when `body` is true (reference §1.7), on the control channel or a rendezvous.
struct HTTPResponseAssembler {
    enum Event: Equatable {
        case none
        case complete(ResponseHead, body: ByteBuffer)
        case unexpected(String)
    }

    struct ResponseHead: Equatable {
        var requestId: String
        var statusCode: Int
        var statusDescription: String?
        var headers: [String: String]
    }

    private var awaitingBody: ResponseHead?

    mutating func response(_ command: ResponseCommand) -> Event {
        let head = ResponseHead(
            requestId: command.requestId, statusCode: command.statusCode, statusDescription: command.statusDescription,
            headers: command.responseHeaders ?? [:])
        if command.body == true {
            awaitingBody = head
            return .none
        }
        return .complete(head, body: ByteBuffer())
    }

    mutating func binaryMessage(_ data: ByteBuffer) -> Event {
        guard let head = awaitingBody else {
            return .unexpected("a binary message arrived with no response waiting for it")
        }
        awaitingBody = nil
        return .complete(head, body: data)
    }
}
