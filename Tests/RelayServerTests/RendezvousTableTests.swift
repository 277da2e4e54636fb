import HybridConnections
import NIOCore
import NIOWebSocket
import RelayIO
import Testing

@testable import RelayServer

@Suite struct RendezvousTableTests {
    @Test func listenerLimitAndRemoval() {
        var table = RendezvousTable<String, Int>(listenerLimit: 25)
        for id in 0..<25 {
            let result = table.addListener(entity: "HC", id: UInt64(id), "l\(id)")
            #expect(result == .added)
        }
        let overLimit = table.addListener(entity: "hc", id: 99, "extra")
        #expect(overLimit == .limitReached)
        #expect(table.listenerCount(entity: "hc") == 25)
        let removed = table.removeListener(entity: "hc", id: 3).removed
        let removedAgain = table.removeListener(entity: "hc", id: 3).removed
        #expect(removed && !removedAgain)
        let replacement = table.addListener(entity: "hc", id: 99, "extra")
        let other = table.addListener(entity: "other", id: 100, "o")
        #expect(replacement == .added && other == .added)
    }

    @Test func pickIsRandomAcrossListeners() {
        var table = RendezvousTable<String, Int>(listenerLimit: 25)
        for name in ["a", "b", "c"] { _ = table.addListener(entity: "hc", id: UInt64(name.hashValue & 0xFFFF), name) }
        var generator = SystemRandomNumberGenerator()
        var counts: [String: Int] = [:]
        for _ in 0..<3000 { counts[table.pickListener(entity: "hc", using: &generator)!, default: 0] += 1 }
        #expect(counts.count == 3)
        #expect(counts.values.allSatisfy { $0 > 800 })
        #expect(table.pickListener(entity: "none", using: &generator) == nil)
        #expect(table.pickListener(entity: "hc", using: &generator, isEligible: { $0 == "b" }) == "b")
    }

    /// A listener that goes away takes with it the rendezvous dispatched to it and not yet opened, so their
    /// senders can be answered at once; rendezvous it already opened, or dispatched elsewhere, stay.
    @Test func aListenerLeavesItsUnopenedRendezvousAsOrphans() {
        var table = RendezvousTable<String, Int>(listenerLimit: 5)
        _ = table.addListener(entity: "hc", id: 1, "one")
        _ = table.addListener(entity: "hc", id: 2, "two")
        table.addPending(key: "a", 10, dispatchedTo: 1)
        table.addPending(key: "b", 11, dispatchedTo: 1)
        table.addPending(key: "c", 12, dispatchedTo: 2)
        table.addPending(key: "d", 13)  // opened: no longer tied to a listener
        let result = table.removeListener(entity: "hc", id: 1)
        #expect(result.removed && result.orphans.sorted() == [10, 11])
        #expect(table.pending(key: "a") == nil && table.pending(key: "c") == 12 && table.pending(key: "d") == 13)
        #expect(table.removeListener(entity: "hc", id: 1).orphans.isEmpty)
    }

    @Test func pendingIsSingleUse() {
        var table = RendezvousTable<String, Int>(listenerLimit: 1)
        table.addPending(key: "k", 7)
        let first = table.takePending(key: "k")
        let second = table.takePending(key: "k")
        #expect(first == 7 && second == nil)
        #expect(table.pendingCount == 0)
    }
}

@Suite struct MessageAssemblerTests {
    /// The parts the reader makes of a frame: its head, then its payload in two pieces.
    func frame(_ opcode: WebSocketOpcode, _ text: String, fin: Bool) -> [WebSocketFrameReader.Part] {
        let bytes = Array(text.utf8)
        let half = bytes.count / 2
        return [
            .head(DataFrameHead(fin: fin, opcode: opcode, length: UInt64(bytes.count))),
            .payload(ByteBuffer(bytes: bytes[..<half])), .payload(ByteBuffer(bytes: bytes[half...])),
        ]
    }

    func feed(_ assembler: inout MessageAssembler, _ parts: [WebSocketFrameReader.Part]) -> [MessageAssembler.Event] {
        parts.map { assembler.receive($0) }.filter { $0 != .none }
    }

    @Test func joinsFragments() {
        var assembler = MessageAssembler(limit: 100)
        let parts =
            frame(.text, "{\"a\":", fin: false) + frame(.continuation, "1}", fin: true) + frame(.binary, "x", fin: true)
        #expect(
            feed(&assembler, parts) == [
                .message(opcode: .text, data: ByteBuffer(string: "{\"a\":1}")),
                .message(opcode: .binary, data: ByteBuffer(string: "x")),
            ])
        let empty = feed(&assembler, [.head(DataFrameHead(fin: true, opcode: .binary, length: 0))])
        #expect(empty == [.message(opcode: .binary, data: ByteBuffer())])
    }

    @Test func refusesOversizeMessagesAndFrames() {
        var assembler = MessageAssembler(limit: 4)
        #expect(feed(&assembler, [.head(DataFrameHead(fin: true, opcode: .text, length: 5))]) == [.tooLarge])
        #expect(feed(&assembler, frame(.text, "123", fin: false)).isEmpty)
        #expect(feed(&assembler, [.head(DataFrameHead(fin: true, opcode: .continuation, length: 2))]) == [.tooLarge])
        var frames = MessageAssembler(limit: 1000, frameLimit: 10)
        #expect(feed(&frames, [.head(DataFrameHead(fin: true, opcode: .binary, length: 11))]) == [.frameTooLarge])
        #expect(feed(&frames, frame(.binary, "0123456789", fin: true)).count == 1)
    }

    @Test func responseWithAndWithoutBody() {
        var responses = HTTPResponseAssembler()
        #expect(
            responses.binaryMessage(ByteBuffer(string: "stray"))
                == .unexpected("a binary message arrived with no response waiting for it"))
        let head = HTTPResponseAssembler.ResponseHead(
            requestId: "1", statusCode: 200, statusDescription: nil, headers: [:])
        #expect(
            responses.response(ResponseCommand(requestId: "1", statusCode: 200)) == .complete(head, body: ByteBuffer()))
        #expect(responses.response(ResponseCommand(requestId: "1", statusCode: 200, body: true)) == .none)
        #expect(responses.binaryMessage(ByteBuffer(string: "b")) == .complete(head, body: ByteBuffer(string: "b")))
    }
}

@Suite struct RelayPolicyTests {
    static let configuration = RelayConfiguration(
        publicURL: "wss://relay.example.com",
        namespaceRules: [AuthorizationRule(keyName: "root", primaryKey: "k", rights: [.manage])],
        hybridConnections: [
            HybridConnectionConfiguration(
                name: "hc", rules: [AuthorizationRule(keyName: "listen", primaryKey: "l", rights: [.listen])]),
            HybridConnectionConfiguration(name: "open", requiresClientAuthorization: false),
        ])

    @Test func tokenPrecedence() {
        #expect(RelayPolicy.token(queryToken: "q", serviceBusAuthorization: "s", authorization: "a")! == ("q", .query))
        #expect(
            RelayPolicy.token(queryToken: nil, serviceBusAuthorization: "s", authorization: "a")! == (
                "s", .serviceBusAuthorization
            ))
        #expect(
            RelayPolicy.token(queryToken: "", serviceBusAuthorization: nil, authorization: "Bearer t")! == (
                "t", .authorization
            ))
        #expect(RelayPolicy.token(queryToken: nil, serviceBusAuthorization: nil, authorization: nil) == nil)
    }

    @Test func authorization() throws {
        let policy = RelayPolicy(configuration: Self.configuration)
        #expect(policy.publicHost == "relay.example.com")
        let (hc, _) = try policy.entity(for: "hc/x")
        let listenToken = SharedAccessSignature.make(
            resource: "sb://relay.example.com/hc", keyName: "listen", key: "l", expiry: 2_000_000_000)
        #expect(
            try policy.authorize(entity: hc, token: listenToken, right: .listen, requestHost: nil, now: 1)
                == 2_000_000_000)
        #expect(
            throws: Refusal(
                status: 403, text: TokenError.insufficientRights(.send).description, reason: "insufficient_rights")
        ) {
            try policy.authorize(entity: hc, token: listenToken, right: .send, requestHost: nil, now: 1)
        }
        let localToken = SharedAccessSignature.make(
            resource: "http://127.0.0.1/hc", keyName: "root", key: "k", expiry: 2_000_000_000)
        #expect(throws: Refusal.self) {
            try policy.authorize(entity: hc, token: localToken, right: .send, requestHost: nil, now: 1)
        }
        _ = try policy.authorize(entity: hc, token: localToken, right: .send, requestHost: "127.0.0.1:9350", now: 1)
        let (open, _) = try policy.entity(for: "open")
        #expect(try policy.authorize(entity: open, token: nil, right: .send, requestHost: nil, now: 1) == nil)
        #expect(throws: Refusal.self) {
            try policy.authorize(entity: open, token: nil, right: .listen, requestHost: nil, now: 1)
        }
        #expect(throws: Refusal(status: 404, text: RelayErrorText.endpointNotFound, reason: "no_entity")) {
            try policy.entity(for: "nope")
        }
    }

    @Test func configurationParsingAndValidation() throws {
        let yaml = """
            listen: 0.0.0.0:443
            publicURL: wss://relay.example.com/
            tls: {certificate: /c.pem, key: /k.pem}
            hybridConnections:
              - name: a/b
                requiresClientAuthorization: false
            limits:
              acceptTimeoutSeconds: 5
            """
        let parsed = try RelayConfiguration.parse(yaml)
        #expect(parsed.effectivePublicURL == "wss://relay.example.com")
        #expect(
            parsed.hybridConnections == [HybridConnectionConfiguration(name: "a/b", requiresClientAuthorization: false)]
        )
        #expect(parsed.limits.acceptTimeoutSeconds == 5)
        #expect(parsed.limits.maxListenersPerEntity == 25)
        try parsed.validate()
        let json = try RelayConfiguration.parse(#"{"hybridConnections":[{"name":"x"}]}"#)
        #expect(json.effectivePublicURL == "ws://127.0.0.1:9350")

        #expect(throws: ConfigurationError.self) { try RelayConfiguration.parse("hybridConnections: [{rules: []}]") }
        #expect(throws: ConfigurationError.self) {
            try RelayConfiguration.parse("limits: {acceptTimeoutSeconds: soon}")
        }
        var bad = RelayConfiguration(
            listen: "nowhere", hybridConnections: [.init(name: "a b"), .init(name: "x"), .init(name: "X")])
        bad.namespaceRules = [AuthorizationRule(keyName: "", primaryKey: "k", rights: [])]
        do {
            try bad.validate()
            Issue.record("invalid configuration accepted")
        } catch {
            for fragment in ["listen: 'nowhere' has no ':PORT'", "'a b'", "listed twice", "grants no rights"] {
                #expect(error.description.contains(fragment), "\(fragment)")
            }
        }
    }
}

@Suite struct FailureRateLimiterTests {
    @Test func budgetSpendsAndRefills() {
        var limiter = FailureRateLimiter(burst: 3, perSecond: 1)
        for second in 0..<3 {
            #expect(!limiter.isBlocked(source: "a", now: 100 + Double(second) * 0.01))
            limiter.recordFailure(source: "a", now: 100 + Double(second) * 0.01)
        }
        #expect(limiter.isBlocked(source: "a", now: 100.1))
        #expect(!limiter.isBlocked(source: "b", now: 100.1), "other sources are not affected")
        #expect(!limiter.isBlocked(source: "a", now: 101.2), "one failure's worth came back after a second")
    }

    @Test func memoryStaysBounded() {
        var limiter = FailureRateLimiter(burst: 2, perSecond: 0.001, maxSources: 100)
        for index in 0..<10_000 {
            limiter.recordFailure(source: "10.0.\(index / 256).\(index % 256)", now: Double(index))
        }
        #expect(limiter.sourceCount <= 100)
    }
}
