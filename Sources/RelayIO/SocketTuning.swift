import NIOCore

/// Socket settings every tunnel connection uses, relay and agents alike.
public enum SocketTuning {
    /// Reads start small, so an idle tunnel holds little memory (NIO keeps one read buffer per channel for
    /// reuse: 512 bytes instead of 4 KiB saves ~21 KiB per idle tunnel over its six sockets), and grow to
    /// 256 KiB within two full reads under load, so a busy one moves large frames with few syscalls.
    public static var receiveAllocator: AdaptiveRecvByteBufferAllocator {
        AdaptiveRecvByteBufferAllocator(minimum: 256, initial: 512, maximum: 256 * 1024)
    }

    /// A side stops reading while its partner holds more than this much unwritten.
    public static let writeWaterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 64 * 1024, high: 256 * 1024)
}

extension SocketAddress {
    /// `127.0.0.1:5000` or `[::1]:5000`, for logs and span attributes (NIO's description repeats the address).
    public var hostAndPort: String {
        guard let ip = ipAddress else { return "\(self)" }
        return ip.contains(":") ? "[\(ip)]:\(port ?? 0)" : "\(ip):\(port ?? 0)"
    }
}
