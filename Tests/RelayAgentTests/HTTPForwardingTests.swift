import HybridConnections
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import RelayTelemetry
import TestSupport
import Testing

@testable import RelayAgent

/// `-H` specs and the `Http: true` YAML form.
@Suite struct HTTPForwardSpecTests {
    @Test(arguments: [
        ("web:http/localhost:8080", HTTPTarget(secure: false, host: "localhost", port: 8080)),
        ("web:https/example.com", HTTPTarget(secure: true, host: "example.com", port: 443)),
        ("web:HTTP/example.com", HTTPTarget(secure: false, host: "example.com", port: 80)),
        (
            "web:https/10.0.0.5/api/v1/:8443",
            HTTPTarget(secure: true, host: "10.0.0.5", port: 8443, pathPrefix: "/api/v1")
        ),
        ("web:http/[::1]/x:81", HTTPTarget(secure: false, host: "::1", port: 81, pathPrefix: "/x")),
        ("web:http/[::1]", HTTPTarget(secure: false, host: "::1", port: 80)),
        ("web:http/host:8080/api", HTTPTarget(secure: false, host: "host", port: 8080, pathPrefix: "/api")),
        ("web:http/[::1]:8080/api", HTTPTarget(secure: false, host: "::1", port: 8080, pathPrefix: "/api")),
    ])
    func specsParse(spec: String, target: HTTPTarget) throws {
        let forward = try ForwardSpec.parseHTTP(spec)
        #expect(forward.relayName == "web")
        #expect(forward.bindings == [RemoteBinding(http: target)])
        #expect(forward.httpBinding?.portName == target.scheme)
    }

    @Test(arguments: [
        ("web", "expected relay_name"),
        ("web:localhost:8080", "expected relay_name"),
        ("web:ftp/host", "the scheme is http or https"),
        ("web:http/:80", "empty host"),
        ("web:http/host:99999", "'99999' is not a port"),
        ("web:http/host/a b", "URL path characters"),
        ("web:http/host:x/a", "'x' is not a port"),
        ("web:http/host/a?b=1", "URL path characters"),
        ("bad name:http/host", "invalid relay name"),
    ])
    func badSpecsSayWhy(spec: String, fragment: String) {
        do {
            _ = try ForwardSpec.parseHTTP(spec)
            Issue.record("accepted \(spec)")
        } catch {
            #expect(error.description.contains(fragment), "\(error)")
        }
    }

    @Test func theTargetRendersItsOriginAndHost() {
        let target = HTTPTarget(secure: true, host: "::1", port: 8443, pathPrefix: "/api")
        #expect(target.origin == "https://[::1]:8443/api")
        #expect(HTTPTarget(secure: false, host: "web", port: 80).hostHeader == "web")
    }

    @Test func yamlHttpBindingsMatchTheFlag() throws {
        let yaml = """
            RemoteForward:
              - RelayName: web
                Bindings:
                  - {Http: true, PortName: https, Host: intranet.corp, HostPort: 8443, Insecure: true, Path: /app/}
                  - {HostPort: 5432, PortName: db}
            """
        let forward = try AgentConfiguration.parse(yaml: yaml).remoteForwards[0]
        #expect(
            forward.httpBinding?.http
                == HTTPTarget(secure: true, host: "intranet.corp", port: 8443, pathPrefix: "/app", insecure: true))
        let plain = try AgentConfiguration.parse(yaml: "RemoteForward:\n  - RelayName: w\n    Http: true\n")
        #expect(plain.remoteForwards[0].httpBinding?.http == HTTPTarget(secure: false, host: "localhost", port: 80))
    }

    @Test func tunnelsNeverReachTheHTTPBinding() throws {
        let named = try RemoteForward.merged([
            try ForwardSpec.parseRemote("web:db/5432"), try ForwardSpec.parseHTTP("web:http/localhost:8080"),
        ])
        #expect(named.count == 1)
        #expect(named[0].binding(forPortName: "http") == nil, "a preamble port name never selects the HTTP target")
        let numeric = try RemoteForward.merged([
            try ForwardSpec.parseRemote("web:5432"), try ForwardSpec.parseHTTP("web:http/localhost:8080"),
        ])
        #expect(numeric[0].binding(forPortName: "9999")?.port == 5432, "the single TCP binding still takes any name")
        let onlyHTTP = try ForwardSpec.parseHTTP("web:http/localhost:8080")
        #expect(onlyHTTP.binding(forPortName: "80") == nil)
        #expect(throws: ForwardSpecError.self) {
            try RemoteForward.merged([onlyHTTP, try ForwardSpec.parseHTTP("web:https/other")])
        }
    }
}

/// The reverse proxy's rewriting of requests and responses.
@Suite struct HTTPForwardRewriteTests {
    let target = HTTPTarget(secure: false, host: "intranet", port: 8080, pathPrefix: "/app")

    func request(
        target requestTarget: String = "/Web/items/7?q=1", method: String = "POST", headers: [String: String]
    )
        -> RequestCommand
    {
        RequestCommand(
            address: "wss://relay/$hc/web?sb-hc-action=request&sb-hc-id=1", id: "1", requestTarget: requestTarget,
            method: method, remoteEndpoint: RemoteEndpoint(address: "203.0.113.9", port: 50000),
            requestHeaders: headers, body: true)
    }

    @Test(arguments: [
        ("/web/items/7?q=1", "/items/7?q=1"), ("/WEB/items", "/items"), ("/web", "/"), ("/web?x=1", "/?x=1"),
        ("/webber/x", "/webber/x"), ("/", "/"),
    ])
    func theRelayNameIsStrippedFromThePath(requestTarget: String, path: String) {
        #expect(HTTPForwardRewrite.path(of: requestTarget, relayName: "web") == path)
    }

    @Test func theRequestHeadIsAProxysHead() throws {
        let head = try HTTPForwardRewrite.requestHead(
            request(headers: [
                "Host": "ns.servicebus.windows.net", "Connection": "keep-alive, X-Hop", "X-Hop": "secret",
                "Keep-Alive": "timeout=5", "Transfer-Encoding": "chunked", "Content-Length": "12", "TE": "trailers",
                "Upgrade": "h2c", "Via": "1.1 ns.servicebus.windows.net", "X-Forwarded-For": "198.51.100.1",
                "X-Forwarded-Proto": "spoofed", "Accept": "text/html", "traceparent": "00-abc",
                "Proxy-Authorization": "Basic c2VjcmV0", "Forwarded": "for=198.51.100.2",
            ]), relayName: "web", target: target, body: .complete(bytes: 12), frontScheme: "https",
            frontHost: "ns.servicebus.windows.net")
        #expect(head.method == .POST)
        #expect(head.uri == "/app/items/7?q=1")
        #expect(head.headers["Host"] == ["intranet:8080"])
        for dropped in [
            "Keep-Alive", "Transfer-Encoding", "TE", "Upgrade", "X-Hop", "Proxy-Authorization", "Forwarded",
        ] {
            #expect(!head.headers.contains(name: dropped), "\(dropped) is this hop's own")
        }
        #expect(head.headers["Content-Length"] == ["12"])
        #expect(head.headers["Connection"] == ["close"])
        #expect(head.headers["Via"] == ["1.1 ns.servicebus.windows.net, 1.1 hyrelay"])
        #expect(head.headers["X-Forwarded-For"] == ["203.0.113.9"], "the sender's own claim is not believed")
        #expect(head.headers["X-Forwarded-Proto"] == ["https"])
        #expect(head.headers["X-Forwarded-Host"] == ["ns.servicebus.windows.net"])
        #expect(head.headers["Accept"] == ["text/html"])
        #expect(head.headers["traceparent"] == ["00-abc"])
    }

    @Test func bodiesAreFramedForTheTarget() {
        func head(_ method: String, _ body: HTTPForwardRewrite.RequestBody) -> HTTPHeaders {
            try! HTTPForwardRewrite.requestHead(
                request(method: method, headers: [:]), relayName: "web", target: target, body: body,
                frontScheme: "http", frontHost: "relay"
            ).headers
        }
        #expect(head("PUT", .streamed)["Transfer-Encoding"] == ["chunked"])
        #expect(!head("PUT", .streamed).contains(name: "Content-Length"))
        #expect(head("POST", .none)["Content-Length"] == ["0"])
        #expect(!head("GET", .none).contains(name: "Content-Length"))
        #expect(head("GET", .none)["X-Forwarded-Host"] == ["relay"], "no Host in the request: the relay's")
    }

    @Test(arguments: [
        ("/a/b", "/a/b"), ("/a/./b/", "/a/b/"), ("/a/../b?x=/../y", "/b?x=/../y"), ("/%61pp/%7euser", "/app/~user"),
        ("/a/%2e%2E/b", "/b"), ("//../x", "/x"), ("/a/..", "/"), ("/", "/"), ("/%41%2B", "/A%2B"),
    ])
    func pathsStayInsideThePrefix(path: String, confined: String) throws {
        #expect(try HTTPForwardRewrite.confined(path) == confined)
    }

    @Test(arguments: [
        "/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/.%2e/secret.txt", "/a/../../secret",
        "/..%5csecret", "/..\\secret", "/..;x/secret", "/%2E%2E", "/x/%2F..", "/%%32%65%%32%65/secret",
        "/%%32%45/x", "/..#", "/a?b#..", "/..;\u{301}/secret", "/caf\u{e9}/../../x", "/%zz", "/a%2",
    ])
    func pathsThatLeaveThePrefixAreRefused(path: String) {
        #expect(throws: HTTPForwardRewrite.PathEscape.self) { try HTTPForwardRewrite.confined(path) }
    }

    @Test func aPrefixedTargetNeverSeesADotSegment() throws {
        let head = try HTTPForwardRewrite.requestHead(
            request(target: "/WEB/a/%2e/../b", headers: [:]), relayName: "web", target: target, body: .none,
            frontScheme: "http", frontHost: "relay")
        #expect(head.uri == "/app/b")
        #expect(throws: HTTPForwardRewrite.PathEscape.self) {
            try HTTPForwardRewrite.requestHead(
                request(target: "/WEB/..", headers: [:]), relayName: "web", target: target, body: .none,
                frontScheme: "http", frontHost: "relay")
        }
    }

    @Test func theResponseLosesConnectionFieldsAndGainsVia() {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain")
        headers.add(name: "Content-Length", value: "5")
        headers.add(name: "Connection", value: "close, X-Private")
        headers.add(name: "X-Private", value: "1")
        headers.add(name: "Transfer-Encoding", value: "chunked")
        headers.add(name: "cache-control", value: "no-cache")
        headers.add(name: "Cache-Control", value: "no-store")
        let command = HTTPForwardRewrite.responseCommand(
            HTTPResponseHead(version: .http1_1, status: .created, headers: headers), requestId: "7", hasBody: true)
        #expect(command.requestId == "7" && command.statusCode == 201 && command.statusDescription == "Created")
        #expect(
            command.responseHeaders == [
                "Content-Type": "text/plain", "Content-Length": "5", "cache-control": "no-cache, no-store",
                "Via": "1.1 hyrelay",
            ])
        #expect(command.body == true)
    }

    @Test(arguments: [
        (200, "GET", true), (204, "GET", false), (304, "GET", false), (200, "HEAD", false), (101, "GET", false),
    ])
    func whichResponsesHaveBodies(status: Int, method: String, hasBody: Bool) {
        #expect(HTTPForwardRewrite.responseHasBody(status: status, method: method) == hasBody)
    }
}

/// The forwarder's exchange as a value.
@Suite struct HTTPForwardStateMachineTests {
    typealias Machine = HTTPForwardStateMachine

    let head = ResponseCommand(
        requestId: "r", statusCode: 200, statusDescription: "OK", responseHeaders: [:], body: true)

    func bytes(_ count: Int) -> ByteBuffer { ByteBuffer(repeating: 0x61, count: count) }

    @Test func aSmallResponseGoesBackOnTheControlChannel() {
        var machine = Machine(route: .controlChannel, requestId: "r", controlChannelBudget: 100)
        #expect(machine.start == .dialTarget)
        #expect(machine.targetConnected() == .none)
        #expect(machine.responseHead(head) == .none)
        #expect(machine.responseBody(bytes(60)) == .none)
        #expect(machine.responseBody(bytes(40)) == .none)
        #expect(machine.responseEnded() == .reply(head, body: bytes(100)))
        #expect(machine.isFinished)
        let late = machine.targetFailed(.init(status: 502, reason: "target_closed", text: "x"))
        #expect(late == .none, "a finished exchange ignores late failures")
    }

    @Test func aLargeResponseOpensTheRendezvousAndStreams() {
        var machine = Machine(route: .controlChannel, requestId: "r", controlChannelBudget: 100)
        _ = machine.targetConnected()
        _ = machine.responseHead(head)
        #expect(machine.responseBody(bytes(101)) == .openRendezvous)
        #expect(machine.holdsTargetReads)
        #expect(machine.responseBody(bytes(5)) == .none, "held until the rendezvous is open")
        #expect(machine.rendezvousOpened() == .send(head, body: bytes(106), end: false))
        #expect(!machine.holdsTargetReads)
        #expect(machine.responseBody(bytes(7)) == .send(nil, body: bytes(7), end: false))
        #expect(machine.responseEnded() == .send(nil, body: ByteBuffer(), end: true))
        #expect(machine.isFinished)
    }

    @Test func aResponseThatEndsWhileTheRendezvousOpensGoesWhole() {
        var machine = Machine(route: .controlChannel, requestId: "r", controlChannelBudget: 10)
        _ = machine.responseHead(head)
        _ = machine.responseBody(bytes(11))
        #expect(machine.responseEnded() == .none)
        #expect(machine.rendezvousOpened() == .send(head, body: bytes(11), end: true))
        #expect(machine.isFinished)
    }

    @Test func aTargetThatFailsBeforeAnsweringGets502OnTheControlChannel() {
        var machine = Machine(route: .controlChannel, requestId: "r")
        let action = machine.targetFailed(.init(status: 502, reason: "target_refused", text: "Bad Gateway: refused"))
        guard case .reply(let response, let body) = action else {
            Issue.record("expected a reply, got \(action)")
            return
        }
        #expect(response.requestId == "r" && response.statusCode == 502)
        #expect(body.map { String(buffer: $0) } == "Bad Gateway: refused\n")
        #expect(machine.failure?.reason == "target_refused")
    }

    @Test func aFailureWhileBufferingReplacesTheHeldResponse() {
        var machine = Machine(route: .controlChannel, requestId: "r")
        _ = machine.responseHead(head)
        _ = machine.responseBody(bytes(10))
        let action = machine.targetFailed(.init(status: 502, reason: "target_closed", text: "cut"))
        guard case .reply(let response, _) = action else {
            Issue.record("expected a reply, got \(action)")
            return
        }
        #expect(response.statusCode == 502, "nothing went out yet, so the sender learns the truth")
    }

    @Test func aFailureAfterStreamingStartedCutsTheExchange() {
        var machine = Machine(route: .rendezvous, requestId: "r")
        _ = machine.rendezvousOpened()
        _ = machine.requestMessage()
        _ = machine.responseHead(head)
        let failure = Machine.Failure(status: 502, reason: "target_closed", text: "cut")
        #expect(machine.targetFailed(failure) == .abort(failure))
        #expect(machine.isFinished)
        #expect(machine.rendezvousEnded("closed") == .none)
    }

    @Test func theRendezvousRouteReadsTheRequestThere() {
        var machine = Machine(route: .rendezvous, requestId: "r")
        #expect(machine.start == .openRendezvous)
        #expect(machine.request == .awaitingMessage)
        #expect(machine.rendezvousOpened() == .none)
        #expect(machine.requestMessage() == .dialTarget)
        #expect(machine.responseHead(head) == .send(head, body: ByteBuffer(), end: false))
        let second = machine.requestMessage()
        guard case .abort(let failure) = second else {
            Issue.record("a second request must cut the exchange, got \(second)")
            return
        }
        #expect(failure.reason == "protocol_error")
    }

    @Test func aTimeoutOnTheRendezvousRouteAnswersThere() {
        var machine = Machine(route: .rendezvous, requestId: "r")
        _ = machine.rendezvousOpened()
        _ = machine.requestMessage()
        let action = machine.targetFailed(.init(status: 504, reason: "response_timeout", text: "slow"))
        guard case .send(let response?, _, true) = action else {
            Issue.record("expected the 504 on the rendezvous, got \(action)")
            return
        }
        #expect(response.statusCode == 504)
    }

    @Test func aRendezvousThatCannotOpenStillAnswersAControlChannelRequest() {
        var machine = Machine(route: .controlChannel, requestId: "r", controlChannelBudget: 1)
        _ = machine.responseHead(head)
        #expect(machine.responseBody(bytes(2)) == .openRendezvous)
        let action = machine.rendezvousEnded("refused")
        guard case .reply(let response, _) = action else {
            Issue.record("expected a 502 on the control channel, got \(action)")
            return
        }
        #expect(response.statusCode == 502)
        #expect(machine.failure?.reason == "rendezvous_failed")
    }

    @Test func leavingTheControlChannelMovesTheResponseToTheRendezvous() {
        var buffered = Machine(route: .controlChannel, requestId: "r")
        _ = buffered.responseHead(head)
        _ = buffered.responseBody(bytes(10))
        #expect(buffered.leaveControlChannel() == .openRendezvous)
        #expect(buffered.responseEnded() == .none, "the control channel is no longer an answer")
        #expect(buffered.rendezvousOpened() == .send(head, body: bytes(10), end: true))

        var waiting = Machine(route: .controlChannel, requestId: "r")
        #expect(waiting.leaveControlChannel() == .openRendezvous)
        #expect(waiting.leaveControlChannel() == .none, "one rendezvous")
        #expect(waiting.rendezvousOpened() == .none)
        #expect(waiting.responseHead(head) == .send(head, body: ByteBuffer(), end: false))

        var onRendezvous = Machine(route: .rendezvous, requestId: "r")
        #expect(onRendezvous.leaveControlChannel() == .none)
        var done = Machine(route: .controlChannel, requestId: "r")
        _ = done.targetFailed(.init(status: 502, reason: "x", text: "x"))
        #expect(done.leaveControlChannel() == .none)
    }

    @Test func aRendezvousRouteWithoutItsRendezvousIsCut() {
        var machine = Machine(route: .rendezvous, requestId: "r")
        let action = machine.rendezvousEnded("refused")
        guard case .abort(let failure) = action else {
            Issue.record("expected an abort, got \(action)")
            return
        }
        #expect(failure.reason == "rendezvous_failed")
    }
}

/// The forwarder's handlers hold back `read()` while the other side cannot take more: the pacing that keeps a
/// 1 GiB upload or download in constant memory.
@Suite struct HTTPForwardBackPressureTests {
    func exchange(on loop: EmbeddedEventLoop) -> HTTPForwardExchange {
        let logger = Logger(label: "test")
        let forwarding = HTTPForwarding(
            relayName: "web", target: HTTPTarget(secure: false, host: "127.0.0.1", port: 1),
            access: RelayAccess(base: WebSocketURLProbe.url("ws://127.0.0.1:2")), relayTLS: nil, targetTLS: nil,
            responseTimeout: .seconds(1), metrics: RelayMetrics(), tracer: HopTracer(logger: logger),
            inFlight: TunnelCounter(gauge: RelayMetrics().activeHTTPForwards()), logger: logger)
        return HTTPForwardExchange(
            command: RequestCommand(address: "ws://127.0.0.1:2/$hc/web", id: "r"), controlBody: nil,
            forwarding: forwarding, eventLoop: loop, replyOnControlChannel: { _, _ in })
    }

    @Test func theRendezvousReadsOnlyWhenAllowed() throws {
        let channel = EmbeddedChannel()
        let counter = ReadCounter()
        let handler = HTTPRendezvousListenerHandler(exchange: exchange(on: channel.embeddedEventLoop))
        try channel.pipeline.syncOperations.addHandlers([counter, handler])
        handler.readsAllowed = false
        channel.read()
        channel.read()
        #expect(counter.reads == 0, "a read while the target is full is held back")
        handler.readsAllowed = true
        #expect(counter.reads == 1, "and resumed once, when the target drains")
        channel.read()
        #expect(counter.reads == 2)
    }

    @Test func theTargetReadsOnlyWhenAllowed() throws {
        let channel = EmbeddedChannel()
        let counter = ReadCounter()
        let handler = HTTPTargetHandler(
            exchange: exchange(on: channel.embeddedEventLoop),
            requestHead: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/"))
        try channel.pipeline.syncOperations.addHandlers([counter, handler])
        handler.readsAllowed = false
        channel.read()
        #expect(counter.reads == 0)
        handler.readsAllowed = true
        #expect(counter.reads == 1)
    }
}
