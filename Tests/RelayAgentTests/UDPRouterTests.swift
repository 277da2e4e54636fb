import NIOCore
import NIOEmbedded
import RelayTelemetry
import Testing

@testable import RelayAgent

/// The client's UDP port admits a flow per source only within `--allow` and its caps; what it refuses opens
/// no tunnel and is counted.
@Suite struct UDPRouterTests {
    func datagram(from host: String, port: Int) throws -> AddressedEnvelope<ByteBuffer> {
        AddressedEnvelope(remoteAddress: try SocketAddress(ipAddress: host, port: port), data: ByteBuffer(string: "x"))
    }

    @Test func flowsStopAtTheBindingAndPerSourceCaps() throws {
        let metrics = RelayMetrics()
        var opened: [String] = []
        let router = UDPRouter(
            counters: UDPCounters(role: .client, metrics: metrics), idleTimeout: .seconds(60),
            limits: UDPFlowLimits(maxFlows: 3, maxFlowsPerSource: 2)
        ) { route, _ in opened.append("\(route.source)") }
        let channel = EmbeddedChannel(handler: router)
        for port in 1000..<1005 { try channel.writeInbound(try datagram(from: "127.0.0.1", port: port)) }
        #expect(opened.count == 2, "two flows from one address")
        try channel.writeInbound(try datagram(from: "127.0.0.1", port: 1000))
        #expect(opened.count == 2, "a datagram of an open flow opens nothing")
        for host in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
            try channel.writeInbound(try datagram(from: host, port: 9))
        }
        #expect(opened.count == 3, "three flows in all")
        let text = metrics.exposition()
        #expect(text.contains(#"hyrelay_udp_drops_total{role="client",reason="source_flow_limit"} 3"#), "\(text)")
        #expect(text.contains(#"hyrelay_udp_drops_total{role="client",reason="flow_limit"} 2"#))
        _ = try channel.finish()
    }

    @Test func sourcesOutsideAllowAreRefused() throws {
        let metrics = RelayMetrics()
        var opened = 0
        let router = UDPRouter(
            counters: UDPCounters(role: .client, metrics: metrics), idleTimeout: .seconds(60),
            allowedSources: try AddressFilter(["10.0.0.0/8"])
        ) { _, _ in opened += 1 }
        let channel = EmbeddedChannel(handler: router)
        try channel.writeInbound(try datagram(from: "127.0.0.1", port: 5))
        try channel.writeInbound(try datagram(from: "10.1.2.3", port: 5))
        #expect(opened == 1)
        #expect(
            metrics.exposition().contains(
                #"hyrelay_refused_requests_total{role="client",reason="source_not_allowed",status="0"} 1"#))
        _ = try channel.finish()
    }
}
