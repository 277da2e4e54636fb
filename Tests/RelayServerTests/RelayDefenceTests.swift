import HybridConnections
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import RelayIO
import Testing
import Yams

@testable import RelayServer

@Suite struct RelayDefenceTests {
    @Test func controlTextIsRefusedWhenAHeadWouldCrossItsLimit() {
        var assembler = MessageAssembler(limit: 1000, textLimit: 10)
        let first = assembler.receive(.head(DataFrameHead(fin: false, opcode: .text, length: 5)))
        let firstBody = assembler.receive(.payload(ByteBuffer(string: "12345")))
        // The continuation's head announces 6 more: refused before any of its payload is read.
        let crossing = assembler.receive(.head(DataFrameHead(fin: false, opcode: .continuation, length: 6)))
        #expect(first == .none && firstBody == .none && crossing == .tooLarge)
        let body = ByteBuffer(repeating: 7, count: 900)
        let head = assembler.receive(.head(DataFrameHead(fin: true, opcode: .binary, length: 900)))
        let message = assembler.receive(.payload(body))
        #expect(head == .none && message == .message(opcode: .binary, data: body), "binary keeps the larger limit")
        #expect(MessageAssembler(limit: 5, textLimit: 10).textLimit == 5, "text never gets more than binary")
    }

    @Test func consumedCredentialHeaders() {
        let checked = HybridConnectionConfiguration(name: "hc")
        let open = HybridConnectionConfiguration(name: "open", requiresClientAuthorization: false)
        #expect(
            RelayPolicy.consumedHeaders(entity: checked, source: .authorization)
                == ["servicebusauthorization", "authorization"])
        #expect(
            RelayPolicy.consumedHeaders(entity: checked, source: .serviceBusAuthorization) == [
                "servicebusauthorization"
            ])
        #expect(RelayPolicy.consumedHeaders(entity: checked, source: .query) == ["servicebusauthorization"])
        #expect(RelayPolicy.consumedHeaders(entity: open, source: .authorization) == ["servicebusauthorization"])
    }

    @Test func limitsThatWouldTrapAreRefused() {
        var limits = RelayLimits()
        #expect(limits.problems().isEmpty)
        limits.clockSkewSeconds = 1e300
        limits.handshakeTimeoutSeconds = .nan
        limits.acceptTimeoutSeconds = .infinity
        limits.idleTimeoutSeconds = 0
        limits.maxRequestTargetBytes = 0
        limits.maxConnections = -1
        let problems = limits.problems().joined(separator: "; ")
        for name in [
            "clockSkewSeconds", "handshakeTimeoutSeconds", "acceptTimeoutSeconds", "idleTimeoutSeconds",
            "maxRequestTargetBytes", "maxConnections",
        ] {
            #expect(problems.contains(name), "\(name)")
        }
    }

    @Test func connectionLimitFollowsTheOpenFileLimit() {
        var limits = RelayLimits()
        #expect(limits.connectionLimit(openFiles: 1024) == 960)
        #expect(limits.connectionLimit(openFiles: 96) == 48)
        #expect(limits.connectionLimit(openFiles: 1) == 1)
        limits.maxConnections = 5000
        #expect(limits.connectionLimit(openFiles: 1024) == 5000, "an explicit limit wins")
    }

    @Test func parserLimitsSitAboveTheRelaysOwn() {
        let limits = RelayLimits()
        #expect(limits.decoderLimits.maxHeaderListSize > limits.maxHeaderBytes)
        #expect(limits.decoderLimits.maxHeaderFieldSize > limits.maxRequestTargetBytes)
    }
}

@Suite struct FrameRulesTests {
    /// Every opcode through the reader every role uses: the reserved ones and RSV bits are 1002.
    @Test func reservedBitsAndOpcodesAreProtocolErrors() {
        func violation(_ first: UInt8) -> FrameRules.Violation? {
            var reader = WebSocketFrameReader()
            var buffer = ByteBuffer(bytes: [first, 0x00])
            do {
                while try reader.read(from: &buffer) != nil {}
                return nil
            } catch {
                return error
            }
        }
        #expect(violation(0x82) == nil)
        #expect(violation(0xC2)?.code == .protocolError)
        for reserved: UInt8 in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            #expect(violation(0x80 | reserved)?.code == .protocolError, "opcode \(reserved)")
        }
        for allowed: UInt8 in [0x1, 0x2, 0x8, 0x9, 0xA] {
            #expect(violation(0x80 | allowed) == nil, "opcode \(allowed)")
        }
    }

    @Test func closeBodies() {
        #expect(FrameRules.closeViolation(ByteBuffer()) == nil)
        #expect(FrameRules.closeViolation(ByteBuffer(bytes: [0x03]))?.code == .protocolError)
        #expect(FrameRules.closeViolation(ByteBuffer(bytes: [0x03, 0xE8] + Array("bye ✓".utf8))) == nil)
        #expect(
            FrameRules.closeViolation(ByteBuffer(bytes: [0x03, 0xE8, 0xFF, 0xFE]))?.code == .dataInconsistentWithMessage
        )
        for code: UInt16 in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            var body = ByteBuffer()
            body.writeInteger(code)
            #expect(FrameRules.closeViolation(body)?.code == .protocolError, "code \(code)")
        }
    }

    @Test func closeReasonsAreCutOnACharacterBoundary() {
        let frame = FrameRules.closeFrame(
            code: .unexpectedServerError, reason: String(repeating: "é", count: 100), allocator: ByteBufferAllocator())
        var data = frame.data
        #expect(data.readInteger(as: UInt16.self) == 1011)
        let reason = data.readString(length: data.readableBytes)
        #expect(reason == String(repeating: "é", count: 60) + "…", "120 bytes of two-byte characters and the ellipsis")
        let words = String(repeating: "word ", count: 40)
        let cut = FrameRules.closeFrame(code: .unexpectedServerError, reason: words, allocator: ByteBufferAllocator())
            .data
        let text = cut.getString(at: cut.readerIndex + 2, length: cut.readableBytes - 2)!
        #expect(text.hasSuffix("word…") && text.utf8.count <= 123, "cut between words: \(text)")
    }

    @Test func onlyTheLatestPingWaitsForWritability() {
        var pongs = PongReplies()
        #expect(pongs.pingReceived(ByteBuffer(string: "1"), writable: true) == ByteBuffer(string: "1"))
        #expect(pongs.pingReceived(ByteBuffer(string: "2"), writable: false) == nil)
        #expect(pongs.pingReceived(ByteBuffer(string: "3"), writable: false) == nil)
        #expect(pongs.becameWritable() == ByteBuffer(string: "3"))
        #expect(pongs.becameWritable() == nil)
    }
}

@Suite struct RelayConfigurationKeysTests {
    @Test(arguments: [
        (
            "listen: 127.0.0.1:9350\ntsl:\n  certificate: c.pem\n  key: k.pem\n",
            "line 2: unknown key 'tsl' in the configuration (did you mean 'tls'?)"
        ),
        (
            "tls:\n  certifcate: c.pem\n  key: k.pem\n",
            "line 2: unknown key 'certifcate' in 'tls' (did you mean 'certificate'?)"
        ),
        (
            "hybridConnections:\n  - name: a\n  - name: b\n    requiresClientAuth: false\n",
            "line 4: unknown key 'requiresClientAuth' in 'hybridConnections'"
        ),
        (
            "limits:\n  acceptTimeout: 5\n",
            "line 2: unknown key 'acceptTimeout' in 'limits' (did you mean 'acceptTimeoutSeconds'?)"
        ),
        (
            "namespaceRules:\n  - keyName: k\n    primaryKey: v\n    right: [Listen]\n",
            "line 4: unknown key 'right' in 'namespaceRules' (did you mean 'rights'?)"
        ),
        ("{\"listen\": \"127.0.0.1:1\", \"bogus\": 1}\n", "unknown key 'bogus' in the configuration"),
        (
            "limits:\n  maxHTTPBodyBytes: 1048576\n",
            "line 2: 'maxHTTPBodyBytes' in 'limits' is no longer used: HTTP-mode bodies are streamed both ways, of any size; remove it"
        ),
    ])
    func unknownKeysAreRefusedWithTheirLine(yaml: String, message: String) {
        do {
            _ = try RelayConfiguration.parse(yaml)
            Issue.record("accepted: \(yaml)")
        } catch {
            #expect(error.description.contains(message), "\(error.description)")
        }
    }

    /// Every key the relay writes is one it reads: the schema cannot fall behind the types.
    @Test func aFullConfigurationRoundTripsThroughTheStrictParser() throws {
        var configuration = RelayConfiguration(
            listen: "0.0.0.0:443", publicURL: "wss://relay.example.com", tls: TLSFiles(certificate: "c", key: "k"),
            namespaceRules: [AuthorizationRule(keyName: "root", primaryKey: "p", secondaryKey: "s", rights: [.manage])],
            hybridConnections: [
                HybridConnectionConfiguration(
                    name: "hc", requiresClientAuthorization: false,
                    rules: [AuthorizationRule(keyName: "l", primaryKey: "x", rights: [.listen])])
            ])
        configuration.limits.maxConnections = 7
        let yaml = try YAMLEncoder().encode(configuration)
        #expect(try RelayConfiguration.parse(yaml) == configuration)
    }

    @Test func relayAndAgentFilesAreToldApart() {
        #expect(RelayConfiguration.looksLikeRelayConfiguration("listen: 1.2.3.4:5\nhybridConnections: []\n"))
        #expect(RelayConfiguration.looksLikeRelayConfiguration("tls: {certificate: a, key: b}\n"))
        #expect(!RelayConfiguration.looksLikeRelayConfiguration("LocalForward:\n  - RelayName: a\n    BindPort: 1\n"))
        #expect(!RelayConfiguration.looksLikeRelayConfiguration("[not, a, mapping]"))
    }
}
