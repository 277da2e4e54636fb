import TestSupport
import Testing

@testable import RelayAgent

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The agent's parsers take arbitrary input without crashing (see FuzzTests in HybridConnectionsTests).
@Suite struct AgentFuzzTests {
    static let iterations = Int(ProcessInfo.processInfo.environment["HYRELAY_FUZZ_ITERATIONS"] ?? "") ?? 5_000

    static let samples = [
        "LocalForward:\n  - RelayName: db\n    BindPort: 1433\n    Bindings:\n      - {BindPort: 2, PortName: x}\n",
        "RemoteForward:\n  - RelayName: db\n    Host: h\n    HostPort: 1\nKeepAliveInterval: 30\n",
        "0.0.0.0:1433/sql;127.0.0.1:22:relay/name", "db:sql/10.0.0.5:1433;rdp/host:3389",
    ]
    static let alphabet = Array(":;/[]{}-\n \t#&*!|>'\"0123456789abcXYZ".utf8)

    @Test func configurationsAndSpecsNeverCrash() {
        var generator = SeededGenerator(state: 5)
        for _ in 0..<Self.iterations {
            var bytes = Array(Self.samples.randomElement(using: &generator)!.utf8)
            for _ in 0..<Int.random(in: 1...5, using: &generator) {
                let position = Int.random(in: 0..<bytes.count, using: &generator)
                if Bool.random(using: &generator) {
                    bytes[position] = Self.alphabet.randomElement(using: &generator)!
                } else {
                    bytes.insert(Self.alphabet.randomElement(using: &generator)!, at: position)
                }
            }
            let text = String(decoding: bytes, as: UTF8.self)
            do {
                let configuration = try AgentConfiguration.parse(yaml: text)
                // Every forward accepted names a relay azbridge would accept, and ports a socket can bind.
                for forward in configuration.localForwards {
                    #expect(ForwardSpec.isValidRelayName(forward.relayName), "\(text)")
                    #expect(forward.bindings.allSatisfy { (0...65535).contains($0.port) }, "\(text)")
                }
                for forward in configuration.remoteForwards {
                    #expect(ForwardSpec.isValidRelayName(forward.relayName), "\(text)")
                    #expect(forward.bindings.allSatisfy { (1...65535).contains($0.port) }, "\(text)")
                }
            } catch {
                #expect(!error.message.isEmpty, "a refusal says why")
            }
            if let local = try? ForwardSpec.parseLocal(text) {
                #expect(ForwardSpec.isValidRelayName(local.relayName), "\(text)")
            }
            if let remote = try? ForwardSpec.parseRemote(text) {
                #expect(ForwardSpec.isValidRelayName(remote.relayName), "\(text)")
            }
        }
    }
}
