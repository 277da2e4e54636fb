import NIOCore
import NIOPosix
import RelayIO
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The options every tunnel socket gets, read back from a real socket.
@Suite struct SocketTuningTests {
    @Test func noDelayIsSetAtTheTCPLevelAndNothingPrivileged() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try SocketTuning.apply(to: channel, noDelay: true, remoteHalfClosure: true)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try SocketTuning.apply(to: channel, noDelay: true, remoteHalfClosure: true)
                }
            }
            .connect(to: server.localAddress!).get()
        let noDelay = try await client.getOption(.tcpOption(.tcp_nodelay)).get()
        #expect(noDelay != 0, "TCP_NODELAY on the connection")
        // SOL_SOCKET's option 1 is SO_DEBUG, which only a privileged process may set: it must stay off.
        let debug = try await client.getOption(.socketOption(.init(rawValue: SO_DEBUG))).get()
        #expect(debug == 0)
        try await client.close()
        try await server.close()
    }
}
