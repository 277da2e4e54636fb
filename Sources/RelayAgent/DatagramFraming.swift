import NIOCore

/// azbridge's datagram tunnels (preamble mode 1): each datagram travels in the byte stream as a big-endian
/// 16-bit length and its payload, whatever WebSocket frames carry the bytes.
enum DatagramFraming {
    /// The largest datagram a 16-bit length can carry.
    static let maxDatagram = Int(UInt16.max)

    /// Appends `payload` framed; false (nothing written) for one too large to frame.
    static func frame(_ payload: ByteBuffer, into output: inout ByteBuffer) -> Bool {
        guard payload.readableBytes <= maxDatagram else { return false }
        output.writeInteger(UInt16(payload.readableBytes))
        var payload = payload
        output.writeBuffer(&payload)
        return true
    }
}

/// Cuts a datagram stream back into datagrams, however it was split: a datagram is given out only once all of
/// it arrived, and at most one partial datagram (64 KiB) is held.
struct DatagramDeframer: Sendable {
    private var pending = ByteBuffer()

    /// The whole datagrams `bytes` completes, in order.
    mutating func feed(_ bytes: ByteBuffer) -> [ByteBuffer] {
        var bytes = bytes
        if pending.readableBytes > 0 {
            pending.writeBuffer(&bytes)
            bytes = pending
            pending = ByteBuffer()
        }
        var datagrams: [ByteBuffer] = []
        while let length = bytes.getInteger(at: bytes.readerIndex, as: UInt16.self),
            bytes.readableBytes >= 2 + Int(length)
        {
            bytes.moveReaderIndex(forwardBy: 2)
            datagrams.append(bytes.readSlice(length: Int(length))!)
        }
        if bytes.readableBytes > 0 { pending = ByteBuffer(buffer: bytes) }
        return datagrams
    }

    /// Bytes of a datagram begun and not finished.
    var pendingBytes: Int { pending.readableBytes }
}

extension ByteBuffer {
    /// A compact copy of what `buffer` has left to read (so a held partial datagram does not pin a large read).
    fileprivate init(buffer: ByteBuffer) {
        self.init()
        var source = buffer
        writeBuffer(&source)
    }
}
