import Crypto
import HybridConnections
import NIOCore
import NIOSSL
import NIOWebSocket
import RelayIO
import RelayServer
import Testing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// End-to-end through a real relay on 127.0.0.1 with real sockets and WebSocket framing.
@Suite(.serialized) struct RelayIntegrationTests {
    @Test func echoIsByteExactUpTo64MiB() async throws {
        let relay = try await TestRelay.start()
        let control = try await relay.listen()
        async let accepted = relay.acceptWithEcho(on: control)
        let sender = try await relay.connect("/$hc/hc", token: relay.token("hc")).socket()
        _ = try await accepted

        for size in [1, 65_536, 1 << 20, 64 << 20] {
            let payload = randomBytes(size)
            let chunk = 64 * 1024
            async let sending: Void = {
                var offset = 0
                while offset < payload.count {
                    let end = min(offset + chunk, payload.count)
                    try await sender.send(.binary, ByteBuffer(bytes: payload[offset..<end]))
                    offset = end
                }
            }()
            var received = SHA256()
            var count = 0
            while count < size, let frame = await sender.next() {
                #expect(frame.opcode == .binary)
                received.update(data: Array(frame.data.readableBytesView))
                count += frame.data.readableBytes
            }
            try await sending
            #expect(count == size)
            #expect(received.finalize() == SHA256.hash(data: payload), "echo of \(size) bytes is byte-exact")
        }
        try await sender.close()
        try await relay.stop()
    }

    @Test func balancesAcrossThreeListeners() async throws {
        let relay = try await TestRelay.start()
        var controls: [TestSocket] = []
        for _ in 0..<3 { controls.append(try await relay.listen()) }
        let counts = AcceptCounter()
        var tasks: [Task<Void, Never>] = []
        for (index, control) in controls.enumerated() {
            tasks.append(
                Task {
                    while let message = try? await control.nextControlMessage() {
                        guard case .accept(let accept) = message else { continue }
                        await counts.add(index)
                        // Reject at once: only the routing matters here.
                        _ = try? await WebSocketClient.connect(
                            to: WebSocketURL(accept.address + "&sb-hc-statusCode=409")!, tlsContext: nil,
                            group: relay.group
                        ) { _ in }.get()
                    }
                })
        }
        for _ in 0..<60 {
            let result = try await relay.connect("/$hc/hc", token: relay.token("hc"))
            #expect(result.status == 409)
        }
        let perListener = await counts.counts
        #expect(perListener.values.reduce(0, +) == 60)
        #expect(perListener.count == 3 && perListener.values.allSatisfy { $0 >= 5 }, "\(perListener)")
        for control in controls { try await control.close() }
        for task in tasks { await task.value }
        try await relay.stop()
    }

    @Test func refusalsCarryAzureStatuses() async throws {
        let relay = try await TestRelay.start(entities: ["hc", "other"])
        #expect(try await relay.connect("/$hc/hc", token: relay.token("hc")).status == 404)
        #expect(try await relay.connect("/$hc/missing", token: relay.token("missing")).status == 404)
        #expect(try await relay.connect("/$hc/hc?sb-hc-action=listen", token: nil).status == 401)
        #expect(
            try await relay.connect("/$hc/hc?sb-hc-action=listen", token: relay.token("hc", expiry: 1_000)).status
                == 401)
        #expect(try await relay.connect("/$hc/hc?sb-hc-action=listen", token: relay.token("other")).status == 401)
        #expect(try await relay.connect("/$hc/hc?sb-hc-action=accept&sb-hc-id=nope", token: nil).status == 404)
        try await relay.stop()
    }

    @Test func listenerLimitIsEnforced() async throws {
        let relay = try await TestRelay.start { $0.maxListenersPerEntity = 3 }
        var controls: [TestSocket] = []
        for _ in 0..<3 { controls.append(try await relay.listen()) }
        let refused = try await relay.connect("/$hc/hc?sb-hc-action=listen", token: relay.token("hc"))
        #expect(refused.status == 403)
        #expect(relay.server.hub.listenerCount(entity: "hc") == 3)
        // The relay takes a listener out of the table before it answers its Close: once the answer is here,
        // the count is down, with no sleep.
        try await controls[0].close()
        #expect(await controls[0].next()?.opcode == .connectionClose)
        #expect(relay.server.hub.listenerCount(entity: "hc") == 2)
        _ = try await relay.listen()
        try await relay.stop()
    }

    @Test func tlsWithSelfSignedCA() async throws {
        let pki = try TestPKI.make()
        let relay = try await TestRelay.start(
            tls: TLSFiles(certificate: pki.serverCertificate, key: pki.serverKey), caFile: pki.caCertificate)
        let control = try await relay.listen()
        async let accepted = relay.acceptWithEcho(on: control)
        let sender = try await relay.connect("/$hc/hc", token: relay.token("hc")).socket()
        let accept = try await accepted
        #expect(accept.address.hasPrefix("wss://127.0.0.1:\(relay.port)/$hc/hc?"))
        try await sender.sendText("over tls")
        #expect(await sender.next()?.data == ByteBuffer(string: "over tls"))
        // A client that trusts only the system roots refuses the self-signed certificate, and says so.
        let untrusting = try TLSSetup.clientContext(caFile: nil)
        do {
            _ = try await WebSocketClient.connect(to: relay.url("/$hc/hc"), tlsContext: untrusting, group: relay.group)
            { _ in }.get()
            Issue.record("an untrusted certificate was accepted")
        } catch {
            #expect(ConnectFailure(error, url: relay.url("/$hc/hc")).label == "tls_untrusted", "\(error)")
        }
        // TLS 1.1 and older are refused: the relay's floor is 1.2.
        var legacy = TLSConfiguration.makeClientConfiguration()
        legacy.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(pki.caCertificate))
        legacy.minimumTLSVersion = .tlsv1
        legacy.maximumTLSVersion = .tlsv11
        let legacyContext = try NIOSSLContext(configuration: legacy)
        await #expect(throws: (any Error).self) {
            _ = try await WebSocketClient.connect(
                to: relay.url("/$hc/hc"), tlsContext: legacyContext, group: relay.group
            ) { _ in }.get()
        }
        try await relay.stop()
    }
}

/// Random bytes, drawn 8 at a time (a per-byte draw is slow in debug builds).
func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var offset = 0
        while offset < count {
            withUnsafeBytes(of: generator.next() as UInt64) { word in
                for index in 0..<min(8, count - offset) { raw[offset + index] = word[index] }
            }
            offset += 8
        }
    }
    return bytes
}

actor AcceptCounter {
    var counts: [Int: Int] = [:]
    func add(_ index: Int) { counts[index, default: 0] += 1 }
}

@Suite(.serialized) struct AuthenticationFloodTests {
    @Test func failedAuthenticationsAreRateLimitedPerSource() async throws {
        let relay = try await TestRelay.start {
            $0.authFailureBurst = 3
            // A refill of one failure per 100 s: the attempts below cannot earn one back however slowly a loaded
            // machine runs them (0.5 per second did, once, with the suites running in parallel on two cores).
            $0.authFailuresPerSecond = 0.01
        }
        let bad = SharedAccessSignature.make(
            resource: "http://127.0.0.1/hc", keyName: TestKeys.name, key: "wrong", expiry: 4_000_000_000)
        for _ in 0..<3 {
            #expect(try await relay.connect("/$hc/hc?sb-hc-action=listen", token: bad).status == 401)
        }
        #expect(try await relay.connect("/$hc/hc?sb-hc-action=listen", token: bad).status == 429)
        // Only failures are limited: a good agent behind the same address (a NAT, a balancer) gets in.
        _ = try await relay.connect("/$hc/hc?sb-hc-action=listen", token: relay.token("hc")).socket()
        #expect(try await relay.connect("/$hc/hc?sb-hc-action=listen", token: bad).status == 429)
        try await relay.stop()
    }
}
