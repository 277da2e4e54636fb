import NIOCore
import NIOPosix
import NIOSSL
import RelayIO
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct ConnectFailureTests {
    func failure(_ error: any Error) -> ConnectFailure {
        ConnectFailure(error, host: "relay.example", port: 35661)
    }

    /// A real refused connection: NIO's happy-eyeballs error, its per-address cause the errno.
    @Test func aRefusedConnectionSaysSo() async throws {
        let closed = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = closed.localAddress!.port!
        try await closed.close()
        do {
            _ = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: port).get()
            Issue.record("connected to a closed port")
        } catch {
            let failure = ConnectFailure(error, host: "127.0.0.1", port: port)
            #expect(failure.label == "connection_refused", "\(error)")
            #expect(failure.text.hasPrefix("127.0.0.1:\(port): connection refused; "))
        }
    }

    /// Each kind of error NIO and NIOSSL raise, by its type, and what a person reads instead.
    @Test func errorsBecomeAReasonAndWhatToTry() {
        #expect(failure(IOError(errnoCode: EHOSTUNREACH, reason: "connect")).label == "unreachable")
        #expect(failure(IOError(errnoCode: ECONNRESET, reason: "read")).label == "connection_reset")
        #expect(failure(ChannelError.connectTimeout(.seconds(10))).label == "timeout")
        let wrongHost = failure(NIOSSLExtraError.failedToValidateHostname)
        #expect(wrongHost.label == "tls_wrong_host")
        #expect(wrongHost.summary == "the relay's TLS certificate does not name relay.example")
        let handshake = failure(NIOSSLError.handshakeFailed(.sslError([])))
        #expect(handshake.label == "tls_failed" && handshake.hint?.contains("TLS 1.2") == true)
        let closed = failure(WebSocketClientError(.closedDuringHandshake, description: "closed"))
        #expect(closed.label == "closed_in_handshake" && closed.hint?.contains("wss://") == true)
        // Text alone classifies nothing: an error of another kind that mentions a cause stays "other", its text
        // in words.
        let unknown = failure(WebSocketClientError(description: "Connection refused (errno: 111)"))
        #expect(unknown.label == "other" && unknown.summary == "connection refused")
    }
}
