import HybridConnections
import Logging
import NIOCore
import NIOEmbedded
import NIOWebSocket
import RelayIO
import RelayTelemetry
import Testing

@testable import RelayServer

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The listener control channel on an `EmbeddedChannel`: its timers run on virtual time, so liveness and token
/// expiry are tested without sleeping.
@Suite struct ListenerControlHandlerTests {
    struct Setup {
        let channel: EmbeddedChannel
        let hub: RelayHub
        let handler: ListenerControlHandler
        let clock: ManualWallClock

        /// Moves the relay's wall clock and the channel's virtual time together.
        func advance(by amount: TimeAmount) { clock.advance(by: amount, loop: channel.embeddedEventLoop) }
    }

    func setUp(
        tokenExpiry: Int64? = nil, clock: ManualWallClock = ManualWallClock(),
        configure: (inout RelayLimits) -> Void = { _ in }
    ) throws -> Setup {
        let hub = RelayHub.test(clock: clock, configure: configure)
        let channel = EmbeddedChannel()
        let handler = ListenerControlHandler(
            hub: hub, entity: hub.configuration.hybridConnections[0], trackingId: "l1", tokenExpiry: tokenExpiry,
            requestHost: "127.0.0.1")
        let handle = ListenerHandle(
            id: hub.makeID(), trackingId: "l1", entity: "hc",
            control: NIOLoopBound(handler, eventLoop: channel.embeddedEventLoop))
        handler.handle = handle
        #expect(hub.register(handle))
        try channel.pipeline.syncOperations.addHandlers(WebSocketFrameEncoder(), handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return Setup(channel: channel, hub: hub, handler: handler, clock: clock)
    }

    func wire(_ opcode: WebSocketOpcode, _ data: ByteBuffer) -> ByteBuffer { maskedFrame(opcode, data) }

    /// The frames the handler wrote, decoded.
    func written(_ channel: EmbeddedChannel) throws -> [WebSocketFrame] {
        var wire = ByteBuffer()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&chunk) }
        var reader = WebSocketFrameReader()
        var frames: [WebSocketFrame] = []
        while let part = try reader.read(from: &wire) {
            if case .control(let frame) = part { frames.append(frame) }
        }
        return frames
    }

    func closeCode(_ frames: [WebSocketFrame]) -> UInt16? {
        frames.first { $0.opcode == .connectionClose }.flatMap { $0.data.getInteger(at: $0.data.readerIndex) }
    }

    @Test func aListenerThatNeverAnswersPingsIsEvicted() throws {
        let setup = try setUp {
            $0.pingIntervalSeconds = 1
            $0.missedPongLimit = 2
        }
        setup.advance(by: .seconds(1))
        setup.advance(by: .seconds(1))
        #expect(try written(setup.channel).filter { $0.opcode == .ping }.count == 2)
        #expect(setup.hub.listenerCount(entity: "hc") == 1)
        setup.advance(by: .seconds(1))
        #expect(setup.hub.listenerCount(entity: "hc") == 0, "evicted after two unanswered pings")
        #expect(!setup.channel.isActive)
    }

    @Test func pongsKeepAListenerRegistered() throws {
        let setup = try setUp {
            $0.pingIntervalSeconds = 1
            $0.missedPongLimit = 2
        }
        for _ in 0..<10 {
            setup.advance(by: .seconds(1))
            try setup.channel.writeInbound(wire(.pong, ByteBuffer()))
        }
        #expect(setup.hub.listenerCount(entity: "hc") == 1 && setup.channel.isActive)
    }

    /// The token ends the channel at `se` plus the grace, on its own timer: no ping is due for an hour.
    @Test func aTokenEndsTheChannelAtItsExpiryPlusGrace() throws {
        let clock = ManualWallClock()
        let now = Int64(clock.now)
        let setup = try setUp(tokenExpiry: now + 5, clock: clock) {
            $0.pingIntervalSeconds = 3600
            $0.tokenGraceSeconds = 2
        }
        setup.advance(by: .seconds(5))
        let early = try written(setup.channel)
        #expect(setup.channel.isActive && early.isEmpty)
        setup.advance(by: .seconds(3))
        #expect(closeCode(try written(setup.channel)) == 1008)
        #expect(setup.hub.listenerCount(entity: "hc") == 0)
    }

    /// A renewed token moves the deadline.
    @Test func renewTokenMovesTheDeadline() throws {
        let clock = ManualWallClock()
        let now = Int64(clock.now)
        let setup = try setUp(tokenExpiry: now + 5, clock: clock) {
            $0.pingIntervalSeconds = 3600
            $0.tokenGraceSeconds = 2
        }
        let token = SharedAccessSignature.make(
            resource: "http://127.0.0.1/hc/", keyName: TestKeys.name, key: TestKeys.key, expiry: now + 60)
        var text = ByteBuffer()
        text.writeString(#"{"renewToken":{"token":"\#(token)"}}"#)
        try setup.channel.writeInbound(wire(.text, text))
        setup.advance(by: .seconds(30))
        let beforeDeadline = try written(setup.channel)
        #expect(setup.channel.isActive && closeCode(beforeDeadline) == nil)
        setup.advance(by: .seconds(33))
        #expect(closeCode(try written(setup.channel)) == 1008)
    }
}
