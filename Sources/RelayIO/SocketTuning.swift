import NIOCore

/// Socket settings every tunnel connection uses, relay and agents alike.
public enum SocketTuning {
    /// Reads start small, so an idle tunnel holds little memory, and grow to 256 KiB under load, so a
    /// busy one moves large frames with few syscalls.
    public static var receiveAllocator: AdaptiveRecvByteBufferAllocator {
        AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 4096, maximum: 256 * 1024)
    }

    /// A side stops reading while its partner holds more than this much unwritten.
    public static let writeWaterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 64 * 1024, high: 256 * 1024)
}
