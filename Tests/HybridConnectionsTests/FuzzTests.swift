import TestSupport
import Testing

@testable import HybridConnections

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Property-based robustness: every pure parser takes arbitrary input and either parses it or throws its
/// documented error, never crashes, and what it accepts keeps the properties asserted per parser. Inputs mix random bytes with mutations of valid samples, from a fixed
/// seed so a failure replays. `HYRELAY_FUZZ_ITERATIONS` raises the count for long runs (the default keeps
/// the unit suite fast).
@Suite struct FuzzTests {
    static let iterations = Int(ProcessInfo.processInfo.environment["HYRELAY_FUZZ_ITERATIONS"] ?? "") ?? 20_000

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
                // What a listener sees never carries the relay's own parameters.
                let query = target.applicationTarget.split(separator: "?", maxSplits: 1).dropFirst().first ?? ""
                #expect(
                    !query.split(separator: "&").contains { $0.lowercased().hasPrefix("sb-hc-") && $0.contains("=") },
                    "\(text)")
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
            do {
                let message = try ControlMessage(decoding: Array(Self.input(Self.messages, using: &generator).utf8))
                // Whatever is accepted means what it encodes to.
                #expect(try ControlMessage(decoding: Array(message.encoded().utf8)) == message)
            } catch {
                #expect(!error.description.isEmpty, "a refusal says why")
            }
        }
    }

    @Test func preamblesNeverCrash() {
        var generator = SeededGenerator(state: 4)
        for _ in 0..<Self.iterations {
            var request = PreambleRequestParser()
            var response = PreambleResponseParser()
            var fed: [UInt8] = []
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let chunk = (0..<Int.random(in: 0...8, using: &generator)).map { _ in
                    UInt8.random(in: 0...3, using: &generator)
                }
                fed += chunk
                // A complete preamble is exactly header, name and leftover: nothing lost, nothing invented.
                if case .complete(let name, let mode, let leftover) = request.feed(chunk) {
                    // (Any minor version is taken: a newer sender stays compatible.)
                    let header: [UInt8] = [1, fed[1], mode.rawValue, UInt8(name.utf8.count)]
                    #expect(header + Array(name.utf8) + leftover == fed)
                }
                if case .accepted(let leftover) = response.feed(chunk) {
                    #expect(fed.count == 3 + leftover.count && fed[0] == 1 && fed[2] == 0)
                }
            }
        }
    }
}
