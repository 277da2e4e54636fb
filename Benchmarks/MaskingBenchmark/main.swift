import Dispatch
import NIOCore
import NIOWebSocket
import RelayIO

// Masking throughput: our word-wise copy-and-mask against NIO's byte loop (`webSocketMask`), on 256 KiB
// frames (the largest read a tunnel makes). Prints one JSON object. Run with a release build.
let frameSize = 256 * 1024
let key = WebSocketMaskingKey([0x12, 0x34, 0x56, 0x78])!
let allocator = ByteBufferAllocator()
var source = allocator.buffer(capacity: frameSize)
source.writeBytes((0..<frameSize).map { UInt8(truncatingIfNeeded: $0 &* 31) })

/// Runs `body` once to warm up and once timed; `body` masks `frames` frames.
func gigabytesPerSecond(frames: Int, _ body: (Int) -> Void) -> Double {
    body(frames)
    let start = DispatchTime.now().uptimeNanoseconds
    body(frames)
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    return Double(frameSize) * Double(frames) / seconds / 1e9
}

var checksum: UInt8 = 0
let wordWise = gigabytesPerSecond(frames: 2000) { frames in
    for _ in 0..<frames {
        let masked = source.webSocketMaskedCopy(key: key, allocator: allocator)
        checksum &+= masked.getInteger(at: frameSize - 1, as: UInt8.self)!
    }
}
let byteLoop = gigabytesPerSecond(frames: 100) { frames in
    for _ in 0..<frames {
        var copy = allocator.buffer(capacity: frameSize)
        copy.writeImmutableBuffer(source)
        copy.webSocketMask(key)
        checksum &+= copy.getInteger(at: frameSize - 1, as: UInt8.self)!
    }
}
print(
    "{\"frame_bytes\": \(frameSize), \"word_wise_gb_per_s\": \(wordWise), \"nio_byte_loop_gb_per_s\": \(byteLoop), "
        + "\"speedup\": \(wordWise / byteLoop), \"checksum\": \(checksum)}")
