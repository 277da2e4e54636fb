import HybridConnections
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import RelayIO
import RelayServer
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

enum TestKeys {
    static let name = "root"
    static let key = "dGVzdC1rZXktZm9yLWludGVncmF0aW9uLXRlc3Rz"
}

extension RelayConfiguration {
    /// A loopback relay with `entities` and the test key holding every right.
    static func test(
        entities: [String] = ["hc"], tls: TLSFiles? = nil, configure: (inout RelayLimits) -> Void = { _ in }
    ) -> RelayConfiguration {
        var limits = RelayLimits()
        configure(&limits)
        return RelayConfiguration(
            listen: "127.0.0.1:0", tls: tls,
            namespaceRules: [AuthorizationRule(keyName: TestKeys.name, primaryKey: TestKeys.key, rights: [.manage])],
            hybridConnections: entities.map { HybridConnectionConfiguration(name: $0) }, limits: limits)
    }
}

extension RelayHub {
    /// A hub for handler tests on embedded channels: the test configuration, logging only what is critical.
    static func test(
        clock: ManualWallClock = ManualWallClock(), configure: (inout RelayLimits) -> Void = { _ in }
    ) -> RelayHub {
        var logger = Logger(label: "test.hub")
        logger.logLevel = .critical
        return RelayHub(
            configuration: .test(configure: configure), logger: logger, metrics: RelayMetrics(),
            tracer: HopTracer(logger: logger), wallClock: { clock.now })
    }
}

/// Wall-clock time that moves only when a test says, together with an `EmbeddedEventLoop`'s virtual time.
final class ManualWallClock: Sendable {
    private let seconds: NIOLockedValueBox<Double>

    init(start: Double = 1_800_000_000) {
        seconds = NIOLockedValueBox(start)
    }

    var now: Double { seconds.withLockedValue { $0 } }

    /// Moves this clock and `loop`'s virtual time by the same amount, running what falls due.
    func advance(by amount: TimeAmount, loop: EmbeddedEventLoop) {
        seconds.withLockedValue { $0 += Double(amount.nanoseconds) / 1e9 }
        loop.advanceTime(by: amount)
    }
}

/// A relay running in this process on an ephemeral loopback port.
struct TestRelay {
    let server: RelayServer
    let port: Int
    let group: MultiThreadedEventLoopGroup
    let tlsClientContext: NIOSSLContext?

    static func start(
        entities: [String] = ["hc"], tls: TLSFiles? = nil, caFile: String? = nil,
        configure: (inout RelayLimits) -> Void = { _ in }
    ) async throws -> TestRelay {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let configuration = RelayConfiguration.test(entities: entities, tls: tls, configure: configure)
        var logger = Logger(label: "test.relay")
        logger.logLevel = .warning
        let server = try await RelayServer.start(configuration: configuration, group: group, logger: logger)
        let port = server.localAddress!.port!
        return TestRelay(
            server: server, port: port, group: group,
            tlsClientContext: try caFile.map { try TLSSetup.clientContext(caFile: $0) })
    }

    func stop() async throws {
        await server.stop()
        try await group.shutdownGracefully()
    }

    var scheme: String { tlsClientContext == nil ? "ws" : "wss" }

    func token(_ entity: String, expiry: Int64 = 4_000_000_000) -> String {
        SharedAccessSignature.make(
            resource: "http://127.0.0.1/\(entity)/", keyName: TestKeys.name, key: TestKeys.key, expiry: expiry)
    }

    func url(_ target: String) -> WebSocketURL {
        WebSocketURL("\(scheme)://127.0.0.1:\(port)\(target)")!
    }

    func connect(_ target: String, token: String?, subprotocols: [String] = []) async throws -> TestSocketResult {
        try await connect(url: url(target), token: token, subprotocols: subprotocols)
    }

    func connect(url: WebSocketURL, token: String?, subprotocols: [String] = []) async throws -> TestSocketResult {
        var headers = HTTPHeaders()
        if let token { headers.add(name: "ServiceBusAuthorization", value: token) }
        let (stream, continuation) = AsyncStream<WebSocketFrame>.makeStream()
        let result = try await WebSocketClient.connect(
            to: url, headers: headers, subprotocols: subprotocols, tlsContext: tlsClientContext, group: group
        ) { channel in
            try channel.pipeline.syncOperations.addHandlers(
                WholeFrameDecoder(), FrameCollector(continuation: continuation))
        }.get()
        switch result {
        case .upgraded(let channel, let subprotocol):
            return .open(TestSocket(channel: channel, frames: stream, subprotocol: subprotocol))
        case .rejected(let status, let reason, _):
            return .rejected(status: status, reason: reason)
        }
    }

    func listen(_ entity: String = "hc") async throws -> TestSocket {
        try await connect("/$hc/\(entity)?sb-hc-action=listen&sb-hc-id=\(UUID().uuidString)", token: token(entity))
            .socket()
    }
}

enum TestSocketResult {
    case open(TestSocket)
    case rejected(status: Int, reason: String)

    struct NotOpen: Error { var status: Int; var reason: String }

    func socket() throws -> TestSocket {
        switch self {
        case .open(let socket): return socket
        case .rejected(let status, let reason): throw NotOpen(status: status, reason: reason)
        }
    }

    var status: Int? {
        if case .rejected(let status, _) = self { return status }
        return nil
    }
}

/// A client WebSocket whose received frames arrive on an async stream.
final class TestSocket: Sendable {
    let channel: any Channel
    let frames: AsyncStream<WebSocketFrame>
    let subprotocol: String?

    init(channel: any Channel, frames: AsyncStream<WebSocketFrame>, subprotocol: String?) {
        self.channel = channel
        self.frames = frames
        self.subprotocol = subprotocol
    }

    func send(_ opcode: WebSocketOpcode, _ data: ByteBuffer, fin: Bool = true) async throws {
        try await channel.writeAndFlush(WebSocketFrame(fin: fin, opcode: opcode, maskKey: .random(), data: data))
    }

    func sendText(_ text: String) async throws { try await send(.text, ByteBuffer(string: text)) }

    func close(code: UInt16 = 1000) async throws {
        var data = ByteBuffer()
        data.writeInteger(code)
        try await send(.connectionClose, data)
    }

    /// The next data or close frame, skipping pings and pongs.
    func next() async -> WebSocketFrame? {
        for await frame in frames where frame.opcode != .ping && frame.opcode != .pong {
            return frame
        }
        return nil
    }

    /// The next control-channel message.
    func nextControlMessage() async throws -> ControlMessage {
        guard let frame = await next(), frame.opcode == .text else {
            throw TestSocketResult.NotOpen(status: 0, reason: "no text frame")
        }
        return try ControlMessage(decoding: frame.data.readableBytesView)
    }
}

/// Whole frames for the test handlers, read from the bytes with the reader every role uses.
final class WholeFrameDecoder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = WebSocketFrame
    private var reader = WebSocketFrameReader()
    private var remainder = HeadRemainder()
    private var head: DataFrameHead?
    private var payload = ByteBuffer()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = remainder.joined(unwrapInboundIn(data))
        while let part = try? reader.read(from: &buffer) {
            switch part {
            case .head(let next):
                head = next
                payload = ByteBuffer()
            case .payload(var chunk):
                payload.writeBuffer(&chunk)
            case .control(let frame):
                context.fireChannelRead(wrapInboundOut(frame))
                continue
            }
            if let current = head, payload.readableBytes == Int(current.length) {
                context.fireChannelRead(
                    wrapInboundOut(WebSocketFrame(fin: current.fin, opcode: current.opcode, data: payload)))
                head = nil
            }
        }
        remainder.keep(buffer)
    }
}

final class FrameCollector: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    let continuation: AsyncStream<WebSocketFrame>.Continuation

    init(continuation: AsyncStream<WebSocketFrame>.Continuation) { self.continuation = continuation }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if frame.opcode == .ping {
            context.writeAndFlush(
                wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.data)),
                promise: nil)
        }
        continuation.yield(frame)
    }

    func channelInactive(context: ChannelHandlerContext) {
        continuation.finish()
        context.fireChannelInactive()
    }
}

/// Echoes every data frame back (masked, as a client must).
final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .binary, .text, .continuation:
            context.write(
                wrapOutboundOut(
                    WebSocketFrame(fin: frame.fin, opcode: frame.opcode, maskKey: .random(), data: frame.data)),
                promise: nil)
        case .connectionClose:
            context.writeAndFlush(
                wrapOutboundOut(
                    WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: frame.data))
            )
            .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

extension TestRelay {
    /// Accepts the next sender on `control` with an echoing rendezvous.
    func acceptWithEcho(on control: TestSocket) async throws -> AcceptCommand {
        guard case .accept(let accept) = try await control.nextControlMessage() else {
            throw TestSocketResult.NotOpen(status: 0, reason: "expected accept")
        }
        let result = try await WebSocketClient.connect(
            to: WebSocketURL(accept.address)!, tlsContext: tlsClientContext, group: group
        ) { channel in
            try channel.pipeline.syncOperations.addHandlers(WholeFrameDecoder(), EchoHandler())
        }.get()
        guard case .upgraded = result else { throw TestSocketResult.NotOpen(status: 0, reason: "rendezvous refused") }
        return accept
    }
}

/// A frame as a listener or sender writes it: masked.
func maskedFrame(_ opcode: WebSocketOpcode, _ data: ByteBuffer) -> ByteBuffer {
    let key = WebSocketMaskingKey([3, 1, 4, 1])!
    var bytes = ByteBuffer()
    WebSocketFrameHeader.write(fin: true, opcode: opcode, length: data.readableBytes, maskKey: key, into: &bytes)
    bytes.writeWebSocketMasked(data, key: key)
    return bytes
}

/// The data messages a relay connection wrote, joined from its frames.
func writtenMessages(_ channel: EmbeddedChannel) throws -> [(opcode: WebSocketOpcode, data: ByteBuffer)] {
    var wire = ByteBuffer()
    while var chunk = try channel.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&chunk) }
    var reader = WebSocketFrameReader()
    var assembler = MessageAssembler(limit: 1 << 20)
    var messages: [(opcode: WebSocketOpcode, data: ByteBuffer)] = []
    while let part = try reader.read(from: &wire) {
        if case .message(let opcode, let data) = assembler.receive(part) { messages.append((opcode, data)) }
    }
    return messages
}
