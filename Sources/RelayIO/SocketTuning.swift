import NIOCore
import NIOPosix

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

    /// Sets a tunnel socket's options from its channel initializer, on its event loop. Bootstrap options do the
    /// same through a chain of futures per option and per connection (about five allocations each, some 40 per
    /// tunnel across the roles); `noDelay` only for TCP (a Unix socket refuses it).
    public static func apply(to channel: any Channel, noDelay: Bool, remoteHalfClosure: Bool) throws {
        guard let options = channel.syncOptions else { return }
        try options.setOption(.recvAllocator, value: receiveAllocator)
        try options.setOption(.writeBufferWaterMark, value: writeWaterMark)
        // TCP level: `.socketOption(.tcp_nodelay)` is SOL_SOCKET level, where the same number (1) is SO_DEBUG,
        // which needs CAP_NET_ADMIN: as root it was set instead of TCP_NODELAY, and as any other user (the
        // package's dynamic users) every connection was refused by its own initializer.
        if noDelay { try options.setOption(.tcpOption(.tcp_nodelay), value: 1) }
        if remoteHalfClosure { try options.setOption(.allowRemoteHalfClosure, value: true) }
    }

    /// Connects to an IP literal directly, and to a name through NIO's resolver (which starts a Happy Eyeballs
    /// race, some 20 allocations, even for a literal).
    public static func connect(_ bootstrap: ClientBootstrap, host: String, port: Int) -> EventLoopFuture<any Channel> {
        if let address = try? SocketAddress(ipAddress: host, port: port) { return bootstrap.connect(to: address) }
        return bootstrap.connect(host: host, port: port)
    }
}

extension SocketAddress {
    /// `127.0.0.1:5000` or `[::1]:5000`, for logs and span attributes (NIO's description repeats the address).
    public var hostAndPort: String {
        guard let ip = ipAddress else { return "\(self)" }
        return ip.contains(":") ? "[\(ip)]:\(port ?? 0)" : "\(ip):\(port ?? 0)"
    }
}
