import NIOCore
import NIOWebSocket
import RelayIO
import Testing

@Suite struct WebSocketFrameReaderTests {
    static let key: WebSocketMaskingKey = [0x11, 0x22, 0x33, 0x44]

    /// One frame as a client writes it.
    static func frame(
        _ opcode: WebSocketOpcode, _ payload: [UInt8], fin: Bool = true, masked: Bool = true, firstByte: UInt8? = nil
    ) -> [UInt8] {
        var buffer = ByteBuffer()
        WebSocketFrameHeader.write(
            fin: fin, opcode: opcode, length: payload.count, maskKey: masked ? key : nil, into: &buffer)
        if masked {
            buffer.writeWebSocketMasked(ByteBuffer(bytes: payload), key: key)
        } else {
            buffer.writeBytes(payload)
        }
        var bytes = Array(buffer.readableBytesView)
        if let firstByte { bytes[0] = firstByte }
        return bytes
    }

    /// Feeds `bytes` in reads of `chunk` bytes, as a handler does: what a read leaves is kept for the next.
    static func parts(_ bytes: [UInt8], chunk: Int) throws(FrameRules.Violation) -> [WebSocketFrameReader.Part] {
        var reader = WebSocketFrameReader()
        var parts: [WebSocketFrameReader.Part] = []
        var left = ByteBuffer()
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + chunk)
            left.writeBytes(bytes[offset..<end])
            offset = end
            while let part = try reader.read(from: &left) { parts.append(part) }
            left.discardReadBytes()
        }
        return parts
    }

    /// Payload bytes of every data frame, joined, and the heads seen.
    static func payload(_ parts: [WebSocketFrameReader.Part]) -> (heads: [DataFrameHead], bytes: [UInt8]) {
        var heads: [DataFrameHead] = []
        var bytes: [UInt8] = []
        for part in parts {
            switch part {
            case .head(let head): heads.append(head)
            case .payload(let chunk): bytes += chunk.readableBytesView
            case .control: break
            }
        }
        return (heads, bytes)
    }

    @Test(arguments: [1, 2, 3, 7, 13, 14, 15, 1000, 70_000])
    func aMaskedFrameSplitAnywhereComesOutWhole(chunk: Int) throws {
        let payload = (0..<66_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let wire = Self.frame(.binary, payload) + Self.frame(.ping, [1, 2, 3]) + Self.frame(.text, [])
        let parts = try Self.parts(wire, chunk: chunk)
        let (heads, bytes) = Self.payload(parts)
        #expect(
            heads == [
                DataFrameHead(fin: true, opcode: .binary, length: 66_000), .init(fin: true, opcode: .text, length: 0),
            ])
        #expect(bytes == payload)
        #expect(parts.contains(.control(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer(bytes: [1, 2, 3])))))
        // Payload never waits for the whole frame: with small reads it comes out in as many pieces.
        if chunk < 1000 { #expect(parts.count > 66_000 / chunk / 2) }
    }

    @Test func lengthsOfEverySizeClassAndEmptyControlFrames() throws {
        for count in [0, 125, 126, 65_535, 65_536, 1 << 20] {
            let payload = [UInt8](repeating: 0xAB, count: count)
            let (heads, bytes) = Self.payload(try Self.parts(Self.frame(.binary, payload, masked: false), chunk: 4096))
            #expect(heads.map(\.length) == [UInt64(count)] && bytes == payload)
        }
        let close = try Self.parts(Self.frame(.connectionClose, []), chunk: 1)
        #expect(close == [.control(WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer()))])
    }

    @Test func aFragmentedMessageMayCarryControlFramesBetweenItsFrames() throws {
        let wire =
            Self.frame(.text, Array("ab".utf8), fin: false) + Self.frame(.ping, [])
            + Self.frame(.continuation, Array("c".utf8), fin: false)
            + Self.frame(.continuation, Array("d".utf8)) + Self.frame(.binary, [9])
        let (heads, bytes) = Self.payload(try Self.parts(wire, chunk: 5))
        #expect(heads.map(\.opcode) == [.text, .continuation, .continuation, .binary])
        #expect(heads.map(\.fin) == [false, false, true, true])
        #expect(bytes == Array("abcd".utf8) + [9])
    }

    @Test(arguments: [
        ("rsv", Self.frame(.binary, [1], firstByte: 0xC2), "RSV bits set without a negotiated extension"),
        ("reserved opcode", Self.frame(.binary, [1], firstByte: 0x83), "reserved opcode"),
        ("fragmented ping", Self.frame(.ping, [1], fin: false), "fragmented control frame"),
        ("long ping", Self.frame(.ping, [UInt8](repeating: 0, count: 126)), "control frame over 125 bytes"),
        ("lone continuation", Self.frame(.continuation, [1]), "continuation frame without a message"),
        (
            "message in message", Self.frame(.text, [1], fin: false) + Self.frame(.binary, [2]),
            "new message while a fragmented one is open"
        ),
        ("one-byte close", Self.frame(.connectionClose, [3]), "close body of one byte"),
        ("close 1005", Self.frame(.connectionClose, [0x03, 0xED]), "close code 1005 may not be sent"),
        ("length msb", [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1], "frame length with the most significant bit set"),
    ])
    func violationsAreReportedWithTheirCloseCodeAndEndTheStream(name: String, wire: [UInt8], reason: String) throws {
        var reader = WebSocketFrameReader()
        var buffer = ByteBuffer(bytes: wire + Self.frame(.binary, [7]))
        var caught: FrameRules.Violation?
        do {
            while try reader.read(from: &buffer) != nil {}
        } catch {
            caught = error
        }
        #expect(caught?.reason == reason, "\(name)")
        #expect(caught?.code == .protocolError, "\(name)")
        #expect(try reader.read(from: &buffer) == nil, "nothing is read after a violation")
    }

    /// A relay's rewrite: whatever the reads, the bytes handed on are the same frames as a server writes them,
    /// one buffer per read unless a control frame comes between, with the frame-in-progress flag right.
    @Test(arguments: [1, 5, 14, 100, 4096, 1 << 20])
    func forwardingRewritesFramesForTheOtherSide(chunk: Int) throws {
        let payload = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        let wire =
            Self.frame(.binary, payload) + Self.frame(.text, Array("ab".utf8), fin: false) + Self.frame(.ping, [4])
            + Self.frame(.continuation, Array("c".utf8)) + Self.frame(.connectionClose, [0x03, 0xE8])
        var reader = WebSocketFrameReader()
        var left = ByteBuffer()
        var forwarded = ByteBuffer()
        var controls: [WebSocketOpcode] = []
        var payloadBytes = 0
        var frames = 0
        var offset = 0
        while offset < wire.count {
            let end = min(wire.count, offset + chunk)
            left.writeBytes(wire[offset..<end])
            offset = end
            var partsThisRead = 0
            var controlsThisRead = 0
            var output = WebSocketFrameReader.ForwardOutput()
            func take(_ part: WebSocketFrameReader.ForwardPart) {
                switch part {
                case .bytes(var bytes, let payloadCount, let started, let inside):
                    partsThisRead += 1
                    payloadBytes += payloadCount
                    frames += started
                    forwarded.writeBuffer(&bytes)
                    // Inside a frame exactly when the frames seen so far announce more payload than arrived.
                    #expect(inside == (offset < wire.count && Self.insideFrame(forwarded)))
                case .control(let frame):
                    controlsThisRead += 1
                    controls.append(frame.opcode)
                }
            }
            try reader.forward(from: &left, into: &output, allocator: ByteBufferAllocator(), take)
            if let rest = reader.take(&output) { take(rest) }
            #expect(partsThisRead <= controlsThisRead + 1, "one buffer per read, split only by control frames")
            left.discardReadBytes()
        }
        var expected = ByteBuffer()
        for (opcode, bytes, fin) in [
            (WebSocketOpcode.binary, payload, true), (.text, Array("ab".utf8), false),
            (.continuation, Array("c".utf8), true),
        ] {
            WebSocketFrameHeader.write(fin: fin, opcode: opcode, length: bytes.count, maskKey: nil, into: &expected)
            expected.writeBytes(bytes)
        }
        #expect(forwarded == expected)
        #expect(controls == [.ping, .connectionClose])
        #expect(payloadBytes == 70_003 && frames == 3)
    }

    /// Whether unmasked frames in `bytes` end inside a frame's payload.
    static func insideFrame(_ bytes: ByteBuffer) -> Bool {
        var reader = WebSocketFrameReader()
        var copy = bytes
        var owed: UInt64 = 0
        while let part = try? reader.read(from: &copy) {
            switch part {
            case .head(let head): owed = head.length
            case .payload(let chunk): owed -= UInt64(chunk.readableBytes)
            case .control: break
            }
        }
        return owed > 0 || copy.readableBytes > 0
    }

    @Test func aCloseReasonThatIsNotUTF8Is1007() {
        var reader = WebSocketFrameReader()
        var buffer = ByteBuffer(bytes: Self.frame(.connectionClose, [0x03, 0xE8, 0xFF, 0xFE]))
        #expect(throws: FrameRules.Violation(code: .dataInconsistentWithMessage, reason: "close reason is not UTF-8")) {
            try reader.read(from: &buffer)
        }
    }
}
