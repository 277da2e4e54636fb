import HybridConnections
import Logging
import NIOCore
import NIOEmbedded
import NIOWebSocket
import RelayIO
import RelayTelemetry
import Testing

@testable import RelayServer

/// One relay connection on an `EmbeddedChannel`, its pipeline built as the relay builds it: requests in as
/// bytes, answers out as bytes, timers on virtual time.
@Suite struct RelayHTTPHandlerTests {
    func connection(
        hub: RelayHub? = nil, configure: (inout RelayLimits) -> Void = { _ in }
    ) throws -> (EmbeddedChannel, RelayHub) {
        let hub = hub ?? RelayHub.test(configure: configure)
        let channel = EmbeddedChannel()
        try RelayServer.addHTTPHandlers(to: channel.pipeline.syncOperations, hub: hub)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40_000)).wait()
        return (channel, hub)
    }

    var token: String {
        SharedAccessSignature.make(
            resource: "http://127.0.0.1/hc/", keyName: TestKeys.name, key: TestKeys.key, expiry: 4_000_000_000)
    }

    func send(_ channel: EmbeddedChannel, _ request: String) throws -> String {
        try channel.writeInbound(ByteBuffer(string: request))
        return try answer(channel)
    }

    func answer(_ channel: EmbeddedChannel) throws -> String {
        var out = ""
        while let bytes = try channel.readOutbound(as: ByteBuffer.self) { out += String(buffer: bytes) }
        return out
    }

    @Test func aNonUpgradeOnTheWebSocketPathIs400() throws {
        let (channel, _) = try connection()
        let reply = try send(channel, "GET /$hc/hc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        #expect(reply.hasPrefix("HTTP/1.1 400 ") && reply.contains("only for web-socket requests"))
    }

    @Test func aTargetOverTheLimitIs414() throws {
        let (channel, _) = try connection { $0.maxRequestTargetBytes = 100 }
        let reply = try send(channel, "GET /hc/\(String(repeating: "a", count: 200)) HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(reply.hasPrefix("HTTP/1.1 414 "))
    }

    @Test func httpModeWithoutAListenerIs502BeforeTheBody() throws {
        let (channel, _) = try connection()
        let reply = try send(
            channel,
            "POST /hc/api HTTP/1.1\r\nHost: 127.0.0.1\r\nServiceBusAuthorization: \(token)\r\nContent-Length: 5\r\n\r\n"
        )
        #expect(reply.hasPrefix("HTTP/1.1 502 ") && reply.contains("no listeners"))
    }

    @Test func theRuntimeInformationQueryCountsListeners() throws {
        let (channel, _) = try connection()
        let reply = try send(
            channel,
            "GET /hc?api-version=2016-07 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-PROCESS-AT: ServiceBus\r\n"
                + "ServiceBusAuthorization: \(token)\r\n\r\n")
        #expect(reply.hasPrefix("HTTP/1.1 200 ") && reply.contains("<ListenerCount>0</ListenerCount>"))
    }

    var listenRequest: String {
        "GET /$hc/hc?sb-hc-action=listen&sb-hc-id=l1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
            + "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            + "ServiceBusAuthorization: \(token)\r\n\r\n"
    }

    @Test func aListenUpgradeRegistersTheListener() throws {
        let (channel, hub) = try connection()
        let reply = try send(channel, listenRequest)
        #expect(reply.hasPrefix("HTTP/1.1 101 "))
        #expect(reply.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "the RFC 6455 example key's accept value")
        #expect(hub.listenerCount(entity: "hc") == 1)
    }

    /// A listener's control channel on its own embedded connection to `hub`.
    func listener(_ hub: RelayHub) throws -> EmbeddedChannel {
        let (channel, _) = try connection(hub: hub)
        #expect(try send(channel, listenRequest).hasPrefix("HTTP/1.1 101 "))
        return channel
    }

    /// A small HTTP-mode request goes whole on the control channel, its body the next message; the listener's
    /// response comes back with `Content-Length` and the relay's `Via`.
    @Test func aSmallHTTPModeRequestRoundTripsOnTheControlChannel() throws {
        let (client, hub) = try connection()
        let control = try listener(hub)
        try client.writeInbound(
            ByteBuffer(
                string: "POST /hc/api?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nServiceBusAuthorization: \(token)\r\n"
                    + "Content-Length: 5\r\n\r\nhello"))
        control.embeddedEventLoop.run()
        let messages = try writtenMessages(control)
        #expect(messages.map(\.opcode) == [.text, .binary])
        let request = try ControlMessage(decoding: messages[0].data.readableBytesView)
        guard case .request(let command) = request else {
            Issue.record("expected a request, got \(request)")
            return
        }
        #expect(command.method == "POST" && command.requestTarget == "/hc/api?x=1" && command.body == true)
        #expect(command.requestHeaders?["ServiceBusAuthorization"] == nil, "the consumed credential stays here")
        #expect(String(buffer: messages[1].data) == "hello")

        let response = ControlMessage.response(
            ResponseCommand(requestId: command.id, statusCode: 201, statusDescription: "Created", body: true))
        try control.writeInbound(maskedFrame(.text, ByteBuffer(string: response.encoded())))
        try control.writeInbound(maskedFrame(.binary, ByteBuffer(string: "world")))
        client.embeddedEventLoop.run()
        let reply = try answer(client)
        #expect(reply.hasPrefix("HTTP/1.1 201 Created\r\n"))
        #expect(reply.contains("Content-Length: 5\r\n") && reply.contains("Via: 1.1 ") && reply.hasSuffix("world"))
        #expect(client.isActive, "kept alive for the next request")
    }

    /// A listener that never answers: 504 once the response deadline passes, on virtual time.
    @Test func anUnansweredHTTPModeRequestIs504() throws {
        let hub = RelayHub.test { $0.httpResponseTimeoutSeconds = 5 }
        let (client, _) = try connection(hub: hub)
        let control = try listener(hub)
        try client.writeInbound(
            ByteBuffer(string: "GET /hc/api HTTP/1.1\r\nHost: 127.0.0.1\r\nServiceBusAuthorization: \(token)\r\n\r\n"))
        control.embeddedEventLoop.run()
        #expect(try writtenMessages(control).count == 1, "the request, without a body")
        client.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(try answer(client).isEmpty)
        client.embeddedEventLoop.advanceTime(by: .seconds(2))
        let reply = try answer(client)
        #expect(reply.hasPrefix("HTTP/1.1 504 ") && reply.contains("did not respond"))
    }

    /// A client that leaves before its answer takes its request out of the relay's table: nothing waits for a
    /// response nobody will read, and a drain does not wait for it.
    @Test func aClientThatLeavesTakesItsRequestAlong() throws {
        let (client, hub) = try connection()
        let control = try listener(hub)
        try client.writeInbound(
            ByteBuffer(string: "GET /hc/api HTTP/1.1\r\nHost: 127.0.0.1\r\nServiceBusAuthorization: \(token)\r\n\r\n"))
        control.embeddedEventLoop.run()
        #expect(hub.workInFlight == 1, "the request waits for its response")
        _ = try client.finish()
        #expect(hub.workInFlight == 0)
    }

    /// A second request pipelined behind the first is not lost in silence: the first response says the connection
    /// closes, and it does, so the client sends the second again.
    @Test func aPipelinedRequestClosesTheConnectionAfterTheFirstResponse() throws {
        let (client, hub) = try connection()
        let control = try listener(hub)
        func request(_ path: String) -> String {
            "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nServiceBusAuthorization: \(token)\r\n\r\n"
        }
        try client.writeInbound(ByteBuffer(string: request("/hc/a") + request("/hc/b")))
        control.embeddedEventLoop.run()
        let messages = try writtenMessages(control)
        #expect(messages.count == 1, "only the first is forwarded")
        guard case .request(let command) = try ControlMessage(decoding: messages[0].data.readableBytesView) else {
            Issue.record("expected a request")
            return
        }
        let response = ControlMessage.response(ResponseCommand(requestId: command.id, statusCode: 204))
        try control.writeInbound(maskedFrame(.text, ByteBuffer(string: response.encoded())))
        client.embeddedEventLoop.run()
        let reply = try answer(client)
        #expect(reply.hasPrefix("HTTP/1.1 204 ") && reply.contains("Connection: close"))
        #expect(!client.isActive)
    }

    @Test func aHeadThatNeverEndsIs408() throws {
        let (channel, _) = try connection { $0.handshakeTimeoutSeconds = 2 }
        try channel.writeInbound(ByteBuffer(string: "GET /$hc/hc HTTP/1.1\r\nHost: 127.0"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(try answer(channel).isEmpty)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(try answer(channel).hasPrefix("HTTP/1.1 408 "))
    }
}
