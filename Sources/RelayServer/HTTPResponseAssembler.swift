import HybridConnections
import NIOCore
import NIOWebSocket

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
