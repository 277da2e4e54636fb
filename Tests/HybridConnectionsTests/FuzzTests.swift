import Testing

@testable import HybridConnections

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Property-based robustness: every pure parser takes arbitrary input and either parses it or throws its
/// documented error, never crashes. Inputs mix random bytes with mutations of valid samples, from a fixed
/// seed so a failure replays. `HYRELAY_FUZZ_ITERATIONS` raises the count for long runs (the default keeps
/// the unit suite fast).
@Suite struct FuzzTests {
    static let iterations = Int(ProcessInfo.processInfo.environment["HYRELAY_FUZZ_ITERATIONS"] ?? "") ?? 20_000

    /// SplitMix64: small, fast and reproducible.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let alphabet = Array("%+&=?/$:;#\"{}[],\\ \t\r\n0123456789abcdefABCDEF-_.~sbhcSharedAccessSignature".utf8)

    /// A random input: raw bytes, or a sample with bytes flipped, inserted, cut or duplicated.
    static func input(_ samples: [String], using generator: inout SeededGenerator) -> String {
        var bytes: [UInt8]
        if Bool.random(using: &generator) {
            bytes = (0..<Int.random(in: 0...64, using: &generator)).map { _ in
                Bool.random(using: &generator)
                    ? alphabet.randomElement(using: &generator)! : UInt8.random(in: 0...255, using: &generator)
            }
        } else {
            bytes = Array(samples.randomElement(using: &generator)!.utf8)
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                let position = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<4, using: &generator) {
                case 0 where !bytes.isEmpty: bytes[position] = alphabet.randomElement(using: &generator)!
                case 1: bytes.insert(UInt8.random(in: 0...255, using: &generator), at: position)
                case 2 where !bytes.isEmpty: bytes.removeSubrange(position..<min(bytes.count, position + 3))
                default: bytes += bytes.prefix(8)
                }
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static let targets = [
        "/$hc/hyco?sb-hc-action=listen&sb-hc-id=1&sb-hc-token=SharedAccessSignature+sr%3Dx",
        "/$hc/a/b?x=1&sb-hc-action=accept&sb-hc-id=2&statusCode=401&statusDescription=no",
    ]
    static let tokens = [
        SharedAccessSignature.make(resource: "http://h/e", keyName: "k", key: "v", expiry: 1_700_000_000),
        "SharedAccessSignature sr=a&sig=b&se=1&skn=c",
    ]
    static let connectionStrings = ["Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey=b;EntityPath=c"]
    static let messages = [
        #"{"accept":{"address":"wss://h/$hc/e","id":"1","connectHeaders":{"Host":"h"}}}"#,
        #"{"response":{"requestId":"1","statusCode":"200","body":true}}"#, #"{"renewToken":{"token":"x"}}"#,
    ]

    @Test func requestTargetsNeverCrash() {
        var generator = SeededGenerator(state: 1)
        for _ in 0..<Self.iterations {
            let text = Self.input(Self.targets, using: &generator)
            if let target = try? RequestTarget(parsing: text) {
                _ = try? HybridConnectionRequest(target: target)
                _ = target.applicationTarget
            }
        }
    }

    @Test func tokensNeverCrashAndNeverValidateByAccident() {
        var generator = SeededGenerator(state: 2)
        let rule = AuthorizationRule(keyName: "k", primaryKey: "v", rights: [.listen])
        var accepted = 0
        for _ in 0..<Self.iterations {
            let text = Self.input(Self.tokens, using: &generator)
            if (try? TokenValidator().validate(
                token: text, rules: [rule], hosts: ["h"], entityPath: "e", right: .listen, now: 0)) != nil
            {
                accepted += 1
                // Only mutations that left every signed byte intact may pass.
                #expect((try? SharedAccessSignature(parsing: text))?.isSigned(with: "v") == true)
            }
        }
        #expect(accepted < Self.iterations / 10)
    }

    @Test func connectionStringsAndMessagesNeverCrash() {
        var generator = SeededGenerator(state: 3)
        for _ in 0..<Self.iterations {
            _ = try? RelayConnectionString(parsing: Self.input(Self.connectionStrings, using: &generator))
            _ = try? ControlMessage(decoding: Array(Self.input(Self.messages, using: &generator).utf8))
        }
    }

    @Test func preamblesNeverCrash() {
        var generator = SeededGenerator(state: 4)
        for _ in 0..<Self.iterations {
            var request = PreambleRequestParser()
            var response = PreambleResponseParser()
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let chunk = (0..<Int.random(in: 0...8, using: &generator)).map { _ in
                    UInt8.random(in: 0...3, using: &generator)
                }
                _ = request.feed(chunk)
                _ = response.feed(chunk)
            }
        }
    }
}
