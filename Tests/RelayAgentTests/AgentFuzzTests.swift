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
        var generator = SystemRandomNumberGenerator()
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
            _ = try? AgentConfiguration.parse(yaml: text)
            _ = try? ForwardSpec.parseLocal(text)
            _ = try? ForwardSpec.parseRemote(text)
        }
    }
}
