import HybridConnections
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import RelayIO
import Testing

@testable import RelayAgent

@Suite struct TunnelPumpTests {
    /// A frame as the relay writes it (unmasked).
    static func wire(_ opcode: WebSocketOpcode, _ data: ByteBuffer) -> ByteBuffer {
        WebSocketFrameHeader.unmaskedFrame(
            WebSocketFrame(fin: true, opcode: opcode, data: data), allocator: ByteBufferAllocator())
    }

    /// A client whose TCP peer leaves while the relay's 101 is still being processed: the HTTP decoder is
    /// still in the pipeline and rejects anything but HTTP parts, so the Close must wait for the upgrade.
    @Test func aCloseBeforeTheUpgradeCompletesWaitsForIt() throws {
        let tcpChannel = EmbeddedChannel()
        let tcp = TunnelTCPHandler()
        try tcpChannel.pipeline.syncOperations.addHandler(tcp)
        try tcpChannel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()

        let webSocket = EmbeddedChannel()
        let decoder = ByteToMessageHandler(HTTPResponseDecoder())
        let handler = TunnelWebSocketHandler(role: .sender(portName: "db"), local: tcp) { _ in }
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
        let handler = TunnelWebSocketHandler(role: .sender(portName: "db"), local: nil) { _ in }
        try webSocket.pipeline.syncOperations.addHandler(decoder)
        try webSocket.pipeline.syncOperations.addHandler(MaskingFrameEncoder())
        try webSocket.pipeline.syncOperations.addHandler(handler)
        // Frame bytes that arrived with the 101, handed past the HTTP decoder that is still there.
        try webSocket.pipeline.syncOperations.context(handlerType: MaskingFrameEncoder.self).fireChannelRead(
            NIOAny(Self.wire(.ping, ByteBuffer(string: "hi"))))
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

@Suite struct EdgePreambleTests {
    /// A sender that opens a tunnel and never names its port cannot hold the edge's rendezvous for ever.
    @Test func aSenderWithoutPreambleIsClosedAfterTheDeadline() throws {
        let webSocket = EmbeddedChannel()
        var summary: TunnelSummary?
        let handler = TunnelWebSocketHandler(
            role: .listener(dial: { _, _, _ in Issue.record("nothing to dial") }), local: nil,
            preambleTimeout: .seconds(10)
        ) { summary = $0 }
        try webSocket.pipeline.syncOperations.addHandler(MaskingFrameEncoder())
        try webSocket.pipeline.syncOperations.addHandler(handler)
        try webSocket.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        webSocket.pipeline.fireUserInboundEventTriggered(WebSocketUpgradeEvent.completed)
        // Half a preamble is not a preamble.
        try webSocket.writeInbound(TunnelPumpTests.wire(.binary, ByteBuffer(bytes: [1, 0])))
        webSocket.embeddedEventLoop.advanceTime(by: .seconds(9))
        #expect(try webSocket.readOutbound(as: ByteBuffer.self) == nil)
        webSocket.embeddedEventLoop.advanceTime(by: .seconds(2))
        let close = try #require(try webSocket.readOutbound(as: ByteBuffer.self))
        #expect(close.getInteger(at: close.readerIndex, as: UInt8.self) == 0x88)
        // Masked close: 2 header bytes, 4 mask bytes, then the code under the mask.
        let mask = close.getBytes(at: close.readerIndex + 2, length: 4)!
        let code = close.getBytes(at: close.readerIndex + 6, length: 2)!
        #expect(UInt16(code[0] ^ mask[0]) << 8 | UInt16(code[1] ^ mask[1]) == 1008)
        webSocket.pipeline.fireChannelInactive()
        #expect(summary?.causeLabel == "preamble_timeout")
    }

    @Test func aTimelyPreambleIsNotCutOff() throws {
        let webSocket = EmbeddedChannel()
        var dialed: String?
        let handler = TunnelWebSocketHandler(
            role: .listener(dial: { name, _, _ in dialed = name }), local: nil, preambleTimeout: .seconds(10)
        ) { _ in }
        try webSocket.pipeline.syncOperations.addHandler(MaskingFrameEncoder())
        try webSocket.pipeline.syncOperations.addHandler(handler)
        try webSocket.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        webSocket.pipeline.fireUserInboundEventTriggered(WebSocketUpgradeEvent.completed)
        let (header, name) = Preamble.request(portName: "db")
        try webSocket.writeInbound(TunnelPumpTests.wire(.binary, ByteBuffer(bytes: header + name)))
        #expect(dialed == "db")
        webSocket.embeddedEventLoop.advanceTime(by: .seconds(11))
        #expect(try webSocket.readOutbound(as: ByteBuffer.self) == nil, "no close once the preamble arrived")
    }
}

@Suite struct TunnelTCPHandlerTests {
    /// The client opens its sender when the accepted connection is active, not while it is being set up:
    /// under a burst of accepts a relay could finish the upgrade before the connection is registered.
    @Test func theSenderOpensOnceTheConnectionIsActive() throws {
        let channel = EmbeddedChannel()
        let tcp = TunnelTCPHandler()
        var opened = 0
        tcp.onActive = { opened += 1 }
        try channel.pipeline.syncOperations.addHandler(tcp)
        #expect(opened == 0 && !tcp.isActive)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        #expect(opened == 1 && tcp.isActive)
        channel.pipeline.fireChannelActive()
        #expect(opened == 1, "once")
    }
}

/// A client tunnel pumping between an embedded TCP connection and an embedded relay WebSocket: half-close
/// each way, with what is in flight delivered.
@Suite struct TunnelHalfCloseTests {
    struct Pump {
        let tcp: EmbeddedChannel
        let webSocket: EmbeddedChannel
    }

    func pumping() throws -> Pump {
        let tcpChannel = EmbeddedChannel()
        let tcp = TunnelTCPHandler()
        try tcpChannel.pipeline.syncOperations.addHandler(tcp)
        try tcpChannel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let webSocket = EmbeddedChannel()
        let handler = TunnelWebSocketHandler(role: .sender(portName: "db"), local: tcp) { _ in }
        try webSocket.pipeline.syncOperations.addHandlers(MaskingFrameEncoder(), handler)
        try webSocket.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        webSocket.pipeline.fireUserInboundEventTriggered(WebSocketUpgradeEvent.completed)
        _ = try frames(webSocket)  // the preamble
        try webSocket.writeInbound(TunnelPumpTests.wire(.binary, ByteBuffer(bytes: Preamble.accepted())))
        webSocket.pipeline.fireChannelReadComplete()
        return Pump(tcp: tcpChannel, webSocket: webSocket)
    }

    /// The frames the client wrote to the relay, unmasked.
    func frames(_ channel: EmbeddedChannel) throws -> [WebSocketFrame] {
        var frames: [WebSocketFrame] = []
        while let bytes = try channel.readOutbound(as: ByteBuffer.self) {
            let decoder = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
            try decoder.writeInbound(bytes)
            while let frame = try decoder.readInbound(as: WebSocketFrame.self) { frames.append(frame) }
        }
        return frames
    }

    func tcpOutput(_ channel: EmbeddedChannel) throws -> [UInt8] {
        var out: [UInt8] = []
        while let bytes = try channel.readOutbound(as: ByteBuffer.self) { out += bytes.readableBytesView }
        return out
    }

    @Test func theLocalPeersFinClosesOneWayOnly() throws {
        let pump = try pumping()
        try pump.tcp.writeInbound(ByteBuffer(string: "request"))
        pump.tcp.pipeline.fireChannelReadComplete()
        pump.tcp.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        let sent = try frames(pump.webSocket)
        #expect(sent.map(\.opcode) == [.binary, .connectionClose])
        #expect(sent[0].unmaskedData == ByteBuffer(string: "request"))
        #expect(sent[1].unmaskedData.getInteger(at: sent[1].unmaskedData.readerIndex, as: UInt16.self) == 1000)
        // The relay's direction still flows after the local peer's FIN.
        try pump.webSocket.writeInbound(TunnelPumpTests.wire(.binary, ByteBuffer(string: "answer")))
        pump.webSocket.pipeline.fireChannelReadComplete()
        #expect(try tcpOutput(pump.tcp) == Array("answer".utf8))
        #expect(pump.tcp.isActive && pump.webSocket.isActive)
    }

    /// A short-lived client writes its request and its FIN before the relay connection even exists: both wait
    /// for the tunnel, and the Close follows the bytes.
    @Test func aFinBeforeTheTunnelExistsFollowsTheEarlyBytes() throws {
        let tcpChannel = EmbeddedChannel()
        let tcp = TunnelTCPHandler()
        try tcpChannel.pipeline.syncOperations.addHandler(tcp)
        try tcpChannel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try tcpChannel.writeInbound(ByteBuffer(string: "GET / HTTP/1.0\r\n\r\n"))
        tcpChannel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)

        let webSocket = EmbeddedChannel()
        let handler = TunnelWebSocketHandler(role: .sender(portName: "db"), local: tcp) { _ in }
        try webSocket.pipeline.syncOperations.addHandlers(MaskingFrameEncoder(), handler)
        try webSocket.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        webSocket.pipeline.fireUserInboundEventTriggered(WebSocketUpgradeEvent.completed)
        #expect(try frames(webSocket).count == 2, "the preamble only: the tunnel is not open")
        try webSocket.writeInbound(TunnelPumpTests.wire(.binary, ByteBuffer(bytes: Preamble.accepted())))
        let sent = try frames(webSocket)
        #expect(sent.map(\.opcode) == [.binary, .connectionClose])
        #expect(sent.first?.unmaskedData == ByteBuffer(string: "GET / HTTP/1.0\r\n\r\n"))
    }

    /// The relay's Close shuts the way toward the local peer once what came before it is written. (The other
    /// way staying open needs a real socket's half-close, which `EmbeddedChannel` does not have; the
    /// conformance suite covers it.)
    @Test func theRelaysCloseComesAfterWhatPrecededIt() throws {
        let pump = try pumping()
        try pump.webSocket.writeInbound(TunnelPumpTests.wire(.binary, ByteBuffer(string: "last words")))
        try pump.webSocket.writeInbound(
            TunnelPumpTests.wire(.connectionClose, ByteBuffer(bytes: [0x03, 0xE8])))
        pump.webSocket.pipeline.fireChannelReadComplete()
        #expect(try tcpOutput(pump.tcp) == Array("last words".utf8))
    }
}
