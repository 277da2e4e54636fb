import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOWebSocket
import RelayIO
import TestSupport
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

/// Two bridge legs on embedded channels, each behind the streaming frame decoder: what one peer sends, the
/// other receives, unmasked, as it arrives.
@Suite struct WebSocketBridgeTests {
    struct Pair {
        let a: EmbeddedChannel
        let b: EmbeddedChannel
    }

    func makePair(
        readCounter: ReadCounter? = nil, onFinishedA: @escaping @Sendable (BridgeLegStatistics) -> Void = { _ in }
    ) throws -> Pair {
        let a = EmbeddedChannel()
        let b = EmbeddedChannel()
        let legA = WebSocketBridgeHandler(onFinished: onFinishedA)
        let legB = WebSocketBridgeHandler()
        if let readCounter { try a.pipeline.syncOperations.addHandler(readCounter) }
        try a.pipeline.syncOperations.addHandler(legA)
        try b.pipeline.syncOperations.addHandler(legB)
        legA.attach(partner: NIOLoopBound(legB, eventLoop: b.embeddedEventLoop))
        legB.attach(partner: NIOLoopBound(legA, eventLoop: a.embeddedEventLoop))
        try a.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        try b.connect(to: .init(ipAddress: "127.0.0.1", port: 2)).wait()
        return Pair(a: a, b: b)
    }

    /// The legs hold each other; once both channels are gone neither may outlive them (each tunnel leaked its two
    /// handlers, ~1.9 KB, until this was fixed: a churn soak grew the relay by 80 MiB in 50,000 tunnels).
    @Test func bothLegsAreFreedOnceTheirChannelsClose() throws {
        weak var legA: WebSocketBridgeHandler?
        weak var legB: WebSocketBridgeHandler?
        do {
            let pair = try makePair()
            legA = try pair.a.pipeline.syncOperations.handler(type: WebSocketBridgeHandler.self)
            legB = try pair.b.pipeline.syncOperations.handler(type: WebSocketBridgeHandler.self)
            try deliver(masked(.binary, [1, 2, 3]), into: pair.a, partner: pair.b)
            _ = try pair.a.finish(acceptAlreadyClosed: true)
            pair.b.embeddedEventLoop.run()
            _ = try pair.b.finish(acceptAlreadyClosed: true)
            pair.a.embeddedEventLoop.run()
        }
        #expect(legA == nil && legB == nil, "a bridge leg outlived its tunnel")
    }

    /// A frame as a client puts it on the wire.
    func masked(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true) -> ByteBuffer {
        var wire = ByteBuffer()
        let key = WebSocketMaskingKey([9, 8, 7, 6])!
        WebSocketFrameHeader.write(fin: fin, opcode: opcode, length: bytes.count, maskKey: key, into: &wire)
        wire.writeWebSocketMasked(ByteBuffer(bytes: bytes), key: key)
        return wire
    }

    func deliver(_ wire: ByteBuffer, into channel: EmbeddedChannel, partner: EmbeddedChannel) throws {
        try channel.writeInbound(wire)
        channel.pipeline.fireChannelReadComplete()
        partner.embeddedEventLoop.run()
    }

    /// The whole frames a leg wrote to its peer so far (all of them unmasked).
    func written(_ channel: EmbeddedChannel) throws -> [WebSocketFrame] {
        var wire = ByteBuffer()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&chunk) }
        return try frames(in: wire)
    }

    func frames(in bytes: ByteBuffer) throws -> [WebSocketFrame] {
        var wire = bytes
        var reader = WebSocketFrameReader()
        var frames: [WebSocketFrame] = []
        var current: (DataFrameHead, ByteBuffer)?
        while let part = try reader.read(from: &wire) {
            switch part {
            case .head(let head):
                current = (head, ByteBuffer())
                if head.length == 0 {
                    frames.append(WebSocketFrame(fin: head.fin, opcode: head.opcode, data: ByteBuffer()))
                }
            case .payload(var chunk):
                current!.1.writeBuffer(&chunk)
                if current!.1.readableBytes == Int(current!.0.length) {
                    frames.append(WebSocketFrame(fin: current!.0.fin, opcode: current!.0.opcode, data: current!.1))
                }
            case .control(let frame):
                frames.append(frame)
            }
        }
        #expect(wire.readableBytes == 0, "the leg wrote a partial frame")
        return frames
    }

    func code(_ frame: WebSocketFrame?) -> UInt16? {
        guard let frame, frame.opcode == .connectionClose else { return nil }
        return frame.data.getInteger(at: frame.data.readerIndex, as: UInt16.self)
    }

    @Test func forwardsDataUnmaskedWithOpcodesAndFin() throws {
        let pair = try makePair()
        try deliver(masked(.binary, [1, 2, 3], fin: false), into: pair.a, partner: pair.b)
        try deliver(masked(.continuation, [4]), into: pair.a, partner: pair.b)
        try deliver(masked(.text, Array("hi".utf8)), into: pair.a, partner: pair.b)
        let frames = try written(pair.b)
        #expect(frames.count == 3)
        #expect(frames[0].opcode == .binary && !frames[0].fin && frames[0].data == ByteBuffer(bytes: [1, 2, 3]))
        #expect(frames[1].opcode == .continuation && frames[1].fin && frames[1].data == ByteBuffer(bytes: [4]))
        #expect(frames[2].opcode == .text && frames[2].data == ByteBuffer(string: "hi"))
    }

    /// A frame is passed on while it arrives: the partner's peer has the head and the first piece before the
    /// rest exists, and the whole arrives byte-exact.
    @Test func aLargeFrameIsStreamedNotHeld() throws {
        let pair = try makePair()
        let payload = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        var wire = masked(.binary, payload)
        let first = wire.readSlice(length: 4096)!
        try deliver(first, into: pair.a, partner: pair.b)
        var out = ByteBuffer()
        while var chunk = try pair.b.readOutbound(as: ByteBuffer.self) { out.writeBuffer(&chunk) }
        #expect(out.readableBytes == 4096 - 14 + 10, "the unmasked head (10 bytes) and the 4082 payload bytes read")
        while wire.readableBytes > 0 {
            try deliver(wire.readSlice(length: min(65_536, wire.readableBytes))!, into: pair.a, partner: pair.b)
            while var chunk = try pair.b.readOutbound(as: ByteBuffer.self) { out.writeBuffer(&chunk) }
        }
        let frames = try frames(in: out)
        #expect(frames.count == 1 && frames[0].data == ByteBuffer(bytes: payload))
    }

    @Test func pingIsAnsweredPerLegAndNotForwarded() throws {
        let pair = try makePair()
        try deliver(masked(.ping, [7]), into: pair.a, partner: pair.b)
        try deliver(masked(.pong, [8]), into: pair.a, partner: pair.b)
        let frames = try written(pair.a)
        #expect(frames.count == 1 && frames[0].opcode == .pong && frames[0].data == ByteBuffer(bytes: [7]))
        #expect(try written(pair.b).isEmpty)
    }

    /// A ping that arrives while the partner's frame is half written to this leg's peer is answered after
    /// that frame: a pong inside a payload would corrupt the stream.
    @Test func aPongWaitsForTheFrameBeingWritten() throws {
        let pair = try makePair()
        var wire = masked(.binary, [UInt8](repeating: 5, count: 1000))
        try deliver(wire.readSlice(length: 500)!, into: pair.b, partner: pair.a)
        try deliver(masked(.ping, [1]), into: pair.a, partner: pair.b)
        try deliver(wire, into: pair.b, partner: pair.a)
        let frames = try written(pair.a)
        #expect(frames.map(\.opcode) == [.binary, .pong])
        #expect(frames[0].data.readableBytes == 1000)
    }

    @Test func halfCloseKeepsTheOtherDirectionOpen() throws {
        let pair = try makePair()
        try deliver(masked(.connectionClose, [0x03, 0xE8] + Array("Shutdown".utf8)), into: pair.a, partner: pair.b)
        let close = try written(pair.b)
        #expect(close.count == 1 && close[0].data == ByteBuffer(bytes: [0x03, 0xE8] + Array("Shutdown".utf8)))
        #expect(try written(pair.a).isEmpty, "the close is not echoed back at once")
        #expect(pair.a.isActive && pair.b.isActive)
        try deliver(masked(.binary, [42]), into: pair.b, partner: pair.a)
        #expect(try written(pair.a).first?.data == ByteBuffer(bytes: [42]))
        try deliver(masked(.connectionClose, [0x03, 0xE8]), into: pair.b, partner: pair.a)
        #expect(code(try written(pair.a).first) == 1000)
        #expect(!pair.a.isActive && !pair.b.isActive, "both legs close once each sent and received a Close")
    }

    @Test func readsAreWithheldWhileThePartnerIsNotWritable() throws {
        let readCounter = ReadCounter()
        let pair = try makePair(readCounter: readCounter)
        let before = readCounter.reads
        pair.a.read()
        #expect(readCounter.reads == before + 1)
        pair.b.isWritable = false
        pair.b.pipeline.fireChannelWritabilityChanged()
        pair.a.embeddedEventLoop.run()
        pair.a.read()
        #expect(readCounter.reads == before + 1, "read withheld while the partner is full")
        pair.b.isWritable = true
        pair.b.pipeline.fireChannelWritabilityChanged()
        pair.a.embeddedEventLoop.run()
        #expect(readCounter.reads == before + 2, "the withheld read resumes on writability")
    }

    @Test func aPeerThatDoesNotReadGetsOnlyTheLatestPong() throws {
        let pair = try makePair()
        pair.a.isWritable = false
        for byte: UInt8 in 1...100 { try deliver(masked(.ping, [byte]), into: pair.a, partner: pair.b) }
        #expect(try written(pair.a).isEmpty, "no pong queued while not writable")
        pair.a.isWritable = true
        pair.a.pipeline.fireChannelWritabilityChanged()
        let frames = try written(pair.a)
        #expect(frames.count == 1 && frames[0].opcode == .pong && frames[0].data == ByteBuffer(bytes: [100]))
    }

    @Test func aReservedOpcodeEndsTheLegWith1002AndThePartnerLearns() throws {
        let pair = try makePair()
        var wire = masked(.binary, [])
        wire.setInteger(UInt8(0x83), at: wire.readerIndex)
        try deliver(wire, into: pair.a, partner: pair.b)
        #expect(code(try written(pair.a).first) == 1002)
        #expect(!pair.a.isActive, "nothing more is read from the offender")
        // The bad frame is not forwarded: the partner's first frame is the 1001 for a peer that went away.
        #expect(code(try written(pair.b).first) == 1001)
    }

    /// A Close without a status code is a clean close: RFC 6455 reads it as 1005, not a lost connection.
    @Test func aCloseWithoutACodeCountsAs1005() throws {
        let finished = NIOLockedValueBox<BridgeLegStatistics?>(nil)
        let pair = try makePair(onFinishedA: { statistics in finished.withLockedValue { $0 = statistics } })
        try deliver(masked(.connectionClose, []), into: pair.a, partner: pair.b)
        pair.a.pipeline.fireChannelInactive()
        #expect(finished.withLockedValue { $0 }?.closeCode == 1005)
    }

    @Test func partnerLossSends1001() throws {
        let pair = try makePair()
        pair.b.pipeline.fireChannelInactive()
        pair.a.embeddedEventLoop.run()
        #expect(code(try written(pair.a).first) == 1001)
    }

    /// Gone in the middle of a frame, the partner leaves a frame that cannot be finished: a Close after it
    /// would be read as payload, so the connection is closed instead.
    @Test func partnerLossInTheMiddleOfAFrameClosesTheConnection() throws {
        let pair = try makePair()
        var wire = masked(.binary, [UInt8](repeating: 1, count: 100))
        try deliver(wire.readSlice(length: 50)!, into: pair.b, partner: pair.a)
        pair.b.pipeline.fireChannelInactive()
        pair.a.embeddedEventLoop.run()
        var out = ByteBuffer()
        while var chunk = try pair.a.readOutbound(as: ByteBuffer.self) { out.writeBuffer(&chunk) }
        #expect(out.readableBytes == 10 + 36, "the head and the payload that arrived, no Close")
        #expect(!pair.a.isActive)
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

/// Random bytes through the relay's frame decoder and bridge: malformed frame headers end the leg with a
/// Close or pass as frames, never a crash, and whatever the partner's peer receives is whole frames.
@Suite struct FrameFuzzTests {
    @Test func randomFrameBytesNeverCrashTheBridge() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            let a = EmbeddedChannel()
            let b = EmbeddedChannel()
            let legA = WebSocketBridgeHandler()
            let legB = WebSocketBridgeHandler()
            try a.pipeline.syncOperations.addHandler(legA)
            try b.pipeline.syncOperations.addHandler(legB)
            legA.attach(partner: NIOLoopBound(legB, eventLoop: b.embeddedEventLoop))
            legB.attach(partner: NIOLoopBound(legA, eventLoop: a.embeddedEventLoop))
            // A valid masked frame header, then random bytes, or random bytes from the start.
            var bytes: [UInt8] = Bool.random(using: &generator) ? [0x82, 0x85, 1, 2, 3, 4] : []
            bytes += (0..<Int.random(in: 0...64, using: &generator)).map { _ in
                UInt8.random(in: 0...255, using: &generator)
            }
            try a.writeInbound(ByteBuffer(bytes: bytes))
            a.pipeline.fireChannelReadComplete()
            b.embeddedEventLoop.run()
            var out = ByteBuffer()
            while var chunk = try b.readOutbound(as: ByteBuffer.self) { out.writeBuffer(&chunk) }
            var reader = WebSocketFrameReader()
            while try reader.read(from: &out) != nil {}
            _ = try? a.finish()
            _ = try? b.finish()
        }
    }
}
