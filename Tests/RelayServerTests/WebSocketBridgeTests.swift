import NIOCore
import NIOEmbedded
import NIOWebSocket
import RelayIO
import Testing

@Suite struct WebSocketMaskingTests {
    @Test(arguments: [0, 1, 7, 8, 9, 63, 64, 1001, 65536 + 3])
    func wordMaskMatchesByteLoop(count: Int) {
        let key = WebSocketMaskingKey([0x12, 0x34, 0xAB, 0xCD])!
        var buffer = ByteBuffer(bytes: (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        let fast = buffer.webSocketMaskedCopy(key: key, allocator: ByteBufferAllocator())
        buffer.webSocketMask(key)
        #expect(fast == buffer)
    }

    @Test func offsetRotatesTheKey() {
        let key = WebSocketMaskingKey([1, 2, 3, 4])!
        let source: [UInt8] = Array(repeating: 0, count: 11)
        var output = [UInt8](repeating: 0, count: 11)
        source.withUnsafeBytes { src in
            output.withUnsafeMutableBytes { dst in
                WebSocketMasking.apply(
                    key: key, offset: 2, source: src.baseAddress!, destination: dst.baseAddress!, count: 11)
            }
        }
        #expect(output == [3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1])
    }
}

/// Two bridge legs on embedded channels: what one peer sends, the other receives, unmasked.
@Suite struct WebSocketBridgeTests {
    struct Pair {
        let a: EmbeddedChannel
        let b: EmbeddedChannel
    }

    func makePair() throws -> Pair {
        let a = EmbeddedChannel()
        let b = EmbeddedChannel()
        let legA = WebSocketBridgeHandler()
        let legB = WebSocketBridgeHandler()
        try a.pipeline.syncOperations.addHandler(legA)
        try b.pipeline.syncOperations.addHandler(legB)
        legA.attach(partner: NIOLoopBound(legB, eventLoop: b.embeddedEventLoop))
        legB.attach(partner: NIOLoopBound(legA, eventLoop: a.embeddedEventLoop))
        try a.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        try b.connect(to: .init(ipAddress: "127.0.0.1", port: 2)).wait()
        return Pair(a: a, b: b)
    }

    func masked(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true) -> WebSocketFrame {
        let key = WebSocketMaskingKey([9, 8, 7, 6])!
        var data = ByteBuffer(bytes: bytes)
        data.webSocketMask(key)
        return WebSocketFrame(fin: fin, opcode: opcode, maskKey: key, data: data)
    }

    func deliver(_ frame: WebSocketFrame, into channel: EmbeddedChannel, partner: EmbeddedChannel) throws {
        try channel.writeInbound(frame)
        channel.pipeline.fireChannelReadComplete()
        partner.embeddedEventLoop.run()
    }

    @Test func forwardsDataUnmaskedWithOpcodesAndFin() throws {
        let pair = try makePair()
        try deliver(masked(.binary, [1, 2, 3], fin: false), into: pair.a, partner: pair.b)
        try deliver(masked(.continuation, [4]), into: pair.a, partner: pair.b)
        try deliver(masked(.text, Array("hi".utf8)), into: pair.a, partner: pair.b)
        let first = try #require(try pair.b.readOutbound(as: WebSocketFrame.self))
        #expect(
            first.opcode == .binary && !first.fin && first.maskKey == nil && first.data == ByteBuffer(bytes: [1, 2, 3]))
        let second = try #require(try pair.b.readOutbound(as: WebSocketFrame.self))
        #expect(second.opcode == .continuation && second.fin && second.data == ByteBuffer(bytes: [4]))
        let third = try #require(try pair.b.readOutbound(as: WebSocketFrame.self))
        #expect(third.opcode == .text && third.data == ByteBuffer(string: "hi"))
    }

    @Test func pingIsAnsweredPerLegAndNotForwarded() throws {
        let pair = try makePair()
        try deliver(masked(.ping, [7]), into: pair.a, partner: pair.b)
        try deliver(masked(.pong, [8]), into: pair.a, partner: pair.b)
        let pong = try #require(try pair.a.readOutbound(as: WebSocketFrame.self))
        #expect(pong.opcode == .pong && pong.data == ByteBuffer(bytes: [7]))
        #expect(try pair.b.readOutbound(as: WebSocketFrame.self) == nil)
    }

    @Test func halfCloseKeepsTheOtherDirectionOpen() throws {
        let pair = try makePair()
        try deliver(masked(.connectionClose, [0x03, 0xE8] + Array("Shutdown".utf8)), into: pair.a, partner: pair.b)
        let close = try #require(try pair.b.readOutbound(as: WebSocketFrame.self))
        #expect(
            close.opcode == .connectionClose && close.data == ByteBuffer(bytes: [0x03, 0xE8] + Array("Shutdown".utf8)))
        #expect(try pair.a.readOutbound(as: WebSocketFrame.self) == nil, "the close is not echoed back at once")
        #expect(pair.a.isActive && pair.b.isActive)
        try deliver(masked(.binary, [42]), into: pair.b, partner: pair.a)
        #expect(try pair.a.readOutbound(as: WebSocketFrame.self)?.data == ByteBuffer(bytes: [42]))
        try deliver(masked(.connectionClose, [0x03, 0xE8]), into: pair.b, partner: pair.a)
        #expect(try pair.a.readOutbound(as: WebSocketFrame.self)?.opcode == .connectionClose)
        #expect(!pair.a.isActive && !pair.b.isActive, "both legs close once each sent and received a Close")
    }

    @Test func readsAreWithheldWhileThePartnerIsNotWritable() throws {
        let a = EmbeddedChannel()
        let b = EmbeddedChannel()
        let legA = WebSocketBridgeHandler()
        let legB = WebSocketBridgeHandler()
        let readCounter = ReadCounter()
        try a.pipeline.syncOperations.addHandler(readCounter)
        try a.pipeline.syncOperations.addHandler(legA)
        try b.pipeline.syncOperations.addHandler(legB)
        legA.attach(partner: NIOLoopBound(legB, eventLoop: b.embeddedEventLoop))
        legB.attach(partner: NIOLoopBound(legA, eventLoop: a.embeddedEventLoop))
        a.read()
        #expect(readCounter.reads == 1)
        b.isWritable = false
        b.pipeline.fireChannelWritabilityChanged()
        a.embeddedEventLoop.run()
        a.read()
        #expect(readCounter.reads == 1, "read withheld while the partner is full")
        b.isWritable = true
        b.pipeline.fireChannelWritabilityChanged()
        a.embeddedEventLoop.run()
        #expect(readCounter.reads == 2, "the withheld read resumes on writability")
    }

    @Test func aPeerThatDoesNotReadGetsOnlyTheLatestPong() throws {
        let pair = try makePair()
        pair.a.isWritable = false
        for byte: UInt8 in 1...100 { try deliver(masked(.ping, [byte]), into: pair.a, partner: pair.b) }
        #expect(try pair.a.readOutbound(as: WebSocketFrame.self) == nil, "no pong queued while not writable")
        pair.a.isWritable = true
        pair.a.pipeline.fireChannelWritabilityChanged()
        let pong = try #require(try pair.a.readOutbound(as: WebSocketFrame.self))
        #expect(pong.opcode == .pong && pong.data == ByteBuffer(bytes: [100]))
        #expect(try pair.a.readOutbound(as: WebSocketFrame.self) == nil)
    }

    @Test func aReservedOpcodeEndsTheLegWith1002AndThePartnerLearns() throws {
        let pair = try makePair()
        try deliver(
            WebSocketFrame(fin: true, opcode: WebSocketOpcode(encodedWebSocketOpcode: 0x3)!, data: ByteBuffer()),
            into: pair.a, partner: pair.b)
        let close = try #require(try pair.a.readOutbound(as: WebSocketFrame.self))
        #expect(
            close.opcode == .connectionClose
                && close.data.getInteger(at: close.data.readerIndex, as: UInt16.self) == 1002)
        #expect(!pair.a.isActive, "nothing more is read from the offender")
        // The bad frame is not forwarded: the partner's first frame is the 1001 for a peer that went away.
        let partnerClose = try #require(try pair.b.readOutbound(as: WebSocketFrame.self))
        #expect(
            partnerClose.opcode == .connectionClose
                && partnerClose.data.getInteger(at: partnerClose.data.readerIndex, as: UInt16.self) == 1001)
    }

    @Test func partnerLossSends1001() throws {
        let pair = try makePair()
        pair.b.pipeline.fireChannelInactive()
        pair.a.embeddedEventLoop.run()
        let close = try #require(try pair.a.readOutbound(as: WebSocketFrame.self))
        #expect(
            close.opcode == .connectionClose
                && close.data.getInteger(at: close.data.readerIndex, as: UInt16.self) == 1001)
    }
}

/// Counts `read()` calls that reach the head of the pipeline.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var reads = 0

    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

@Suite struct MaskingFrameEncoderTests {
    @Test(arguments: [0, 5, 125, 126, 65_535, 65_536, 200_000])
    func roundTripsThroughNIODecoder(size: Int) throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(MaskingFrameEncoder())
        let payload = ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        let key = WebSocketMaskingKey([0xDE, 0xAD, 0xBE, 0xEF])!
        try channel.writeOutbound(WebSocketFrame(fin: false, opcode: .binary, maskKey: key, data: payload))
        let bytes = try #require(try channel.readOutbound(as: ByteBuffer.self))

        let decoder = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
        try decoder.writeInbound(bytes)
        let frame = try #require(try decoder.readInbound(as: WebSocketFrame.self))
        #expect(!frame.fin && frame.opcode == .binary && frame.maskKey == key)
        #expect(frame.unmaskedData == payload)
    }
}

/// Random bytes through the relay's frame decoder and bridge: malformed frame headers end in a decoder
/// error, never a crash, and nothing past `maxFrameSize` is buffered.
@Suite struct FrameFuzzTests {
    @Test func randomFrameBytesNeverCrashTheBridge() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            let a = EmbeddedChannel()
            let b = EmbeddedChannel()
            let legA = WebSocketBridgeHandler()
            let legB = WebSocketBridgeHandler()
            try a.pipeline.syncOperations.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 4096)))
            try a.pipeline.syncOperations.addHandler(legA)
            try b.pipeline.syncOperations.addHandler(legB)
            legA.attach(partner: NIOLoopBound(legB, eventLoop: b.embeddedEventLoop))
            legB.attach(partner: NIOLoopBound(legA, eventLoop: a.embeddedEventLoop))
            // A valid masked frame header, then random bytes, or random bytes from the start.
            var bytes: [UInt8] = Bool.random(using: &generator) ? [0x82, 0x85, 1, 2, 3, 4] : []
            bytes += (0..<Int.random(in: 0...64, using: &generator)).map { _ in
                UInt8.random(in: 0...255, using: &generator)
            }
            do {
                try a.writeInbound(ByteBuffer(bytes: bytes))
                a.pipeline.fireChannelReadComplete()
            } catch {
                // A malformed or oversized frame: the decoder's error, as documented.
            }
            b.embeddedEventLoop.run()
            while try b.readOutbound(as: WebSocketFrame.self) != nil {}
            _ = try? a.finish()
            _ = try? b.finish()
        }
    }
}
