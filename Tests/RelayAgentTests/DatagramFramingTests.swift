import NIOCore
import Testing

@testable import RelayAgent

/// Datagrams in a byte stream: framed with a 16-bit length, cut back out however the stream was split.
@Suite struct DatagramFramingTests {
    @Test func datagramsSurviveEverySplit() {
        let datagrams = [ByteBuffer(string: "a"), ByteBuffer(), ByteBuffer(bytes: Array(repeating: 7, count: 65_535))]
        var stream = ByteBuffer()
        for datagram in datagrams { #expect(DatagramFraming.frame(datagram, into: &stream)) }
        for piece in [1, 2, 3, 1000, stream.readableBytes] {
            var deframer = DatagramDeframer()
            var out: [ByteBuffer] = []
            var rest = stream
            while rest.readableBytes > 0 {
                out += deframer.feed(rest.readSlice(length: min(piece, rest.readableBytes))!)
            }
            #expect(out == datagrams, "pieces of \(piece)")
            #expect(deframer.pendingBytes == 0)
        }
    }

    @Test func aDatagramTooLargeToFrameIsRefused() {
        var stream = ByteBuffer()
        #expect(!DatagramFraming.frame(ByteBuffer(bytes: Array(repeating: 0, count: 65_536)), into: &stream))
        #expect(stream.readableBytes == 0)
    }

    @Test func aPartialDatagramIsHeldUntilItEnds() {
        var deframer = DatagramDeframer()
        let first = deframer.feed(ByteBuffer(bytes: [0, 3, 0x61]))
        #expect(first.isEmpty && deframer.pendingBytes == 3)
        let second = deframer.feed(ByteBuffer(bytes: [0x62, 0x63, 0, 1]))
        #expect(second == [ByteBuffer(string: "abc")] && deframer.pendingBytes == 2)
    }
}
