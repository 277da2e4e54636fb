// Heap allocations of one server-side WebSocket upgrade, two ways, on an EmbeddedChannel: the relay's own
// handshake (an HTTP handler answering 101 and `WebSocketPipeline.switchToWebSocket`, as `RelayHTTPHandler`
// does) and NIO's typed upgrader (`configureUpgradableHTTPServerPipeline` with
// `NIOTypedWebSocketServerUpgrader`). Both upgrade the same request to the same byte-reading handler, and
// neither authorizes anything, so the difference is the mechanism alone.
//
//     LD_PRELOAD=alloc_counter.so ALLOC_COUNTER_FILE=counts .build/release/UpgradeBenchmark
//
// Benchmarks/allocations/upgrade.sh builds the counter and runs it; docs/performance.md has the figures,
// docs/architecture.md the decision they support.
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import RelayIO

#if canImport(Glibc)
    import Glibc
#endif

let request = ByteBuffer(
    string: "GET /$hc/hc?sb-hc-action=listen&sb-hc-id=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
        + "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")

/// What a tunnel leg is after the upgrade: it reads bytes.
final class ByteSink: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
}

/// The relay's way: answer 101, then swap the HTTP codec for the WebSocket handlers.
final class RelayStyleHandshake: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let encoder: HTTPResponseEncoder
    let decoder: ByteToMessageHandler<HTTPRequestDecoder>
    var head: HTTPRequestHead?

    init(encoder: HTTPResponseEncoder, decoder: ByteToMessageHandler<HTTPRequestDecoder>) {
        self.encoder = encoder
        self.decoder = decoder
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head, WebSocketHandshake.upgradeProblem(head) == nil else { return }
            let response = WebSocketHandshake.switchingProtocolsHead(request: head, subprotocol: nil)
            context.write(wrapOutboundOut(.head(response)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            try! WebSocketPipeline.switchToWebSocket(
                context: context, handshakeHandler: self, httpEncoder: encoder, httpDecoder: decoder,
                frameEncoder: nil
            ) {
                try context.pipeline.syncOperations.addHandler(ByteSink())
            }
        }
    }
}

func relayStyleUpgrade() throws {
    let channel = EmbeddedChannel()
    let encoder = HTTPResponseEncoder()
    let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
    try channel.pipeline.syncOperations.addHandlers(
        encoder, decoder, RelayStyleHandshake(encoder: encoder, decoder: decoder))
    try channel.writeInbound(request)
    let answer = try channel.readOutbound(as: ByteBuffer.self)
    precondition(answer != nil, "no 101")
    _ = try channel.finish()
}

func typedUpgraderUpgrade() throws {
    let channel = EmbeddedChannel()
    let upgrader = NIOTypedWebSocketServerUpgrader<Void>(
        shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
        upgradePipelineHandler: { channel, _ in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(ByteSink()) }
        })
    let configuration = NIOTypedHTTPServerUpgradeConfiguration<Void>(
        upgraders: [upgrader], notUpgradingCompletionHandler: { $0.eventLoop.makeSucceededVoidFuture() })
    let upgraded = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(
        configuration: .init(upgradeConfiguration: configuration))
    try channel.writeInbound(request)
    channel.embeddedEventLoop.run()
    let answer = try channel.readOutbound(as: ByteBuffer.self)
    precondition(answer != nil, "no 101")
    try upgraded.wait()
    _ = try channel.finish()
}

/// Total allocations so far, as the preloaded counter reports them on SIGUSR2 (nil without it).
func allocations() -> Int? {
    guard let path = getenv("ALLOC_COUNTER_FILE").map({ String(cString: $0) }) else { return nil }
    raise(SIGUSR2)
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var last: String?
    var line = [CChar](repeating: 0, count: 128)
    while fgets(&line, Int32(line.count), file) != nil {
        last = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    return last?.split(separator: " ").first.flatMap { Int($0) }
}

let rounds = 2_000
var results: [String] = []
for (name, upgrade) in [("relay handshake", relayStyleUpgrade), ("NIO typed upgrader", typedUpgraderUpgrade)] {
    for _ in 0..<100 { try upgrade() }
    let before = allocations()
    for _ in 0..<rounds { try upgrade() }
    let after = allocations()
    let perUpgrade = before.flatMap { before in after.map { Double($0 - before) / Double(rounds) } }
    results.append("\"\(name)\": \(perUpgrade.map { String($0) } ?? "null")")
}
print("{\"allocations_per_upgrade\": {\(results.joined(separator: ", "))}, \"rounds\": \(rounds)}")
