import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import RelayIO
import Testing

@testable import RelayAgent

@Suite struct TunnelPumpTests {
    /// A client whose TCP peer leaves while the relay's 101 is still being processed: the HTTP decoder is
    /// still in the pipeline and rejects anything but HTTP parts, so the Close must wait for the upgrade.
    @Test func aCloseBeforeTheUpgradeCompletesWaitsForIt() throws {
        let tcpChannel = EmbeddedChannel()
        let tcp = TunnelTCPHandler()
        try tcpChannel.pipeline.syncOperations.addHandler(tcp)
        try tcpChannel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()

        let webSocket = EmbeddedChannel()
        let decoder = ByteToMessageHandler(HTTPResponseDecoder())
        let handler = TunnelWebSocketHandler(role: .sender(portName: "db"), tcp: tcp) { _ in }
        try webSocket.pipeline.syncOperations.addHandler(decoder)
        try webSocket.pipeline.syncOperations.addHandler(MaskingFrameEncoder())
        try webSocket.pipeline.syncOperations.addHandler(handler)
        try webSocket.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()

        // The TCP peer goes away: its Close is held, nothing reaches the decoder.
        tcpChannel.pipeline.fireChannelInactive()
        #expect(try webSocket.readOutbound(as: ByteBuffer.self) == nil)

        // Upgrade done: the HTTP decoder leaves, then the held Close goes out — and no preamble.
        webSocket.pipeline.syncOperations.removeHandler(decoder, promise: nil)
        webSocket.embeddedEventLoop.run()
        webSocket.pipeline.fireUserInboundEventTriggered(WebSocketUpgradeEvent.completed)
        let close = try #require(try webSocket.readOutbound(as: ByteBuffer.self))
        #expect(close.getInteger(at: close.readerIndex, as: UInt8.self) == 0x88)
        #expect(try webSocket.readOutbound(as: ByteBuffer.self) == nil)
        _ = try? webSocket.finish()
    }

    @Test func aPingBeforeTheUpgradeCompletesIsAnsweredAfterIt() throws {
        let webSocket = EmbeddedChannel()
        let decoder = ByteToMessageHandler(HTTPResponseDecoder())
        let handler = TunnelWebSocketHandler(role: .sender(portName: "db"), tcp: nil) { _ in }
        try webSocket.pipeline.syncOperations.addHandler(decoder)
        try webSocket.pipeline.syncOperations.addHandler(MaskingFrameEncoder())
        try webSocket.pipeline.syncOperations.addHandler(handler)
        // As the frame decoder would hand it over, past the HTTP decoder that is still there.
        try webSocket.pipeline.syncOperations.context(handlerType: MaskingFrameEncoder.self).fireChannelRead(
            NIOAny(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer(string: "hi"))))
        #expect(try webSocket.readOutbound(as: ByteBuffer.self) == nil)
        webSocket.pipeline.syncOperations.removeHandler(decoder, promise: nil)
        webSocket.embeddedEventLoop.run()
        webSocket.pipeline.fireUserInboundEventTriggered(WebSocketUpgradeEvent.completed)
        var opcodes: [UInt8] = []
        while let frame = try webSocket.readOutbound(as: ByteBuffer.self) {
            opcodes.append(frame.getInteger(at: frame.readerIndex, as: UInt8.self)! & 0x0f)
        }
        // The preamble's two binary frames, then the held pong.
        #expect(opcodes == [0x2, 0x2, 0xA])
        _ = try? webSocket.finish()
    }
}
