import HybridConnections
import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import NIOWebSocket
import RelayIO
import RelayTelemetry
import Testing

@testable import RelayAgent

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The edge's control channel as a value: keep-alive, renewal timing, and one ending.
@Suite struct EdgeChannelStateMachineTests {
    @Test func aRelayThatAnswersStaysAlive() {
        var machine = EdgeChannelStateMachine(tokenExpiry: nil)
        for _ in 0..<10 {
            let tick = machine.keepAliveTick()
            #expect(tick == .ping)
            machine.heardFromRelay()
        }
        #expect(machine.state == .open)
    }

    @Test func twoUnansweredPingsDeclareTheChannelDead() {
        var machine = EdgeChannelStateMachine(tokenExpiry: nil)
        let first = machine.keepAliveTick()
        let second = machine.keepAliveTick()
        #expect(first == .ping && second == .ping)
        let third = machine.keepAliveTick()
        #expect(third == .declareDead(unansweredPings: 2))
        let after = machine.keepAliveTick()
        #expect(after == .none)
        #expect(machine.renewalDelay(now: 0) == nil, "nothing is renewed on a dead channel")
    }

    @Test func tokensAreRenewedAtFourFifthsOfWhatIsLeft() {
        var machine = EdgeChannelStateMachine(tokenExpiry: 1_000 + 3_600)
        #expect(machine.renewalDelay(now: 1_000) == 2_880)
        #expect(machine.renewalDelay(now: 4_599) == 1, "at least a second")
        #expect(machine.renewalDelay(now: 9_999) == 1, "an expired token is renewed at once")
        machine.renewed(expiry: 10_000)
        #expect(machine.renewalDelay(now: 5_000) == 4_000)
        machine.renewed(expiry: nil)
        #expect(machine.renewalDelay(now: 5_000) == nil, "a token that does not expire is not renewed")
    }

    @Test func theChannelEndsOnce() {
        var machine = EdgeChannelStateMachine(tokenExpiry: nil)
        let first = machine.closing()
        let second = machine.closing()
        #expect(first && !second)
        let tick = machine.keepAliveTick()
        #expect(tick == .none)
    }
}

/// `EdgeControlHandler` on an `EmbeddedChannel`: frames in as the relay writes them, frames out as the edge
/// masks them, timers on virtual time.
@Suite struct EdgeControlHandlerTests {
    struct Setup {
        let channel: EmbeddedChannel
        let metrics: RelayMetrics
    }

    func setUp(tokenExpiry: Int64? = nil, keepAlive: Double = 30) throws -> Setup {
        var logger = Logger(label: "test.edge")
        logger.logLevel = .critical
        let metrics = RelayMetrics()
        let settings = EdgeAgent.Settings(
            keepAliveInterval: keepAlive, tlsContext: nil, group: MultiThreadedEventLoopGroup.singleton,
            logger: logger, metrics: metrics, tracer: HopTracer(logger: logger),
            counter: TunnelCounter(gauge: metrics.activeTunnels(role: .edge)),
            httpExchanges: TunnelCounter(gauge: metrics.activeHTTPForwards()),
            onlineListeners: OnlineListeners(metrics: metrics))
        let listener = ListenerLoop(
            forward: RemoteForward(relayName: "hc", bindings: [RemoteBinding(port: 1)]),
            access: RelayAccess(base: WebSocketURL("ws://127.0.0.1:1")!, keyName: "k", key: "secret"),
            settings: settings)
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers(
            MaskingFrameEncoder(), EdgeControlHandler(listener: listener, tokenExpiry: tokenExpiry, logger: logger))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return Setup(channel: channel, metrics: metrics)
    }

    /// A frame as the relay writes it: unmasked.
    func wire(_ opcode: WebSocketOpcode, _ data: ByteBuffer) -> ByteBuffer {
        WebSocketFrameHeader.unmaskedFrame(WebSocketFrame(fin: true, opcode: opcode, data: data), allocator: .init())
    }

    /// The frames the edge wrote, unmasked.
    func written(_ channel: EmbeddedChannel) throws -> [(opcode: WebSocketOpcode, data: ByteBuffer)] {
        var wire = ByteBuffer()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&chunk) }
        var reader = WebSocketFrameReader()
        var assembler = MessageAssembler(limit: 1 << 20)
        var frames: [(opcode: WebSocketOpcode, data: ByteBuffer)] = []
        while let part = try reader.read(from: &wire) {
            switch part {
            case .control(let frame): frames.append((frame.opcode, frame.data))
            default:
                if case .message(let opcode, let data) = assembler.receive(part) { frames.append((opcode, data)) }
            }
        }
        return frames
    }

    @Test func aSilentRelayIsDroppedAfterTwoUnansweredPings() throws {
        let setup = try setUp(keepAlive: 1)
        setup.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        setup.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(try written(setup.channel).map(\.opcode) == [.ping, .ping])
        #expect(setup.channel.isActive)
        setup.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!setup.channel.isActive, "dead after two unanswered pings")
        let text = setup.metrics.openMetricsExposition()
        #expect(text.contains(#"event="dead_channel""#))
    }

    @Test func aRelayThatPongsKeepsTheChannel() throws {
        let setup = try setUp(keepAlive: 1)
        for _ in 0..<5 {
            setup.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
            try setup.channel.writeInbound(wire(.pong, ByteBuffer()))
        }
        #expect(setup.channel.isActive)
    }

    @Test func theRelaysPingIsAnsweredAndItsCloseEchoed() throws {
        let setup = try setUp()
        try setup.channel.writeInbound(wire(.ping, ByteBuffer(string: "hi")))
        try setup.channel.writeInbound(wire(.connectionClose, ByteBuffer(bytes: [0x03, 0xE9])))
        let frames = try written(setup.channel)
        #expect(frames.map(\.opcode) == [.pong, .connectionClose])
        #expect(frames[0].data == ByteBuffer(string: "hi"))
        #expect(frames[1].data == ByteBuffer(bytes: [0x03, 0xE9]), "the relay's 1001 comes back")
        setup.channel.embeddedEventLoop.run()
        #expect(!setup.channel.isActive)
    }

    @Test func theTokenIsRenewedBeforeItExpires() throws {
        let setup = try setUp(tokenExpiry: Int64(Date().timeIntervalSince1970) + 100, keepAlive: 3600)
        setup.channel.embeddedEventLoop.advanceTime(by: .seconds(70))
        #expect(try written(setup.channel).isEmpty)
        setup.channel.embeddedEventLoop.advanceTime(by: .seconds(15))
        let frames = try written(setup.channel)
        #expect(frames.map(\.opcode) == [.text])
        let message = try ControlMessage(decoding: frames[0].data.readableBytesView)
        guard case .renewToken(let renew) = message else {
            Issue.record("expected renewToken, got \(message)")
            return
        }
        #expect(renew.token.hasPrefix("SharedAccessSignature sr="))
    }

    @Test func anHTTPRequestIsAnswered501() throws {
        let setup = try setUp()
        let request = ControlMessage.request(
            RequestCommand(
                address: "ws://127.0.0.1/$hc/hc?sb-hc-action=request&sb-hc-id=r1", id: "r1", requestTarget: "/hc/x",
                method: "GET", remoteEndpoint: nil, requestHeaders: [:], body: false))
        try setup.channel.writeInbound(wire(.text, ByteBuffer(string: request.encoded())))
        let frames = try written(setup.channel)
        let message = try ControlMessage(decoding: frames[0].data.readableBytesView)
        guard case .response(let response) = message else {
            Issue.record("expected a response, got \(message)")
            return
        }
        #expect(response.requestId == "r1" && response.statusCode == 501)
    }
}
