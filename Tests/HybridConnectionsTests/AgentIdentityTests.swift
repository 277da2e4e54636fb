import HybridConnections
import Testing

@Suite struct AgentIdentityTests {
    @Test func roundTripsThroughTheHeader() throws {
        let identity = AgentIdentity(name: "edge-berlin", host: "gw01.example", version: "0.4.0")
        #expect(identity.headerValue == "name=edge-berlin; host=gw01.example; version=0.4.0")
        #expect(AgentIdentity(headerValue: identity.headerValue) == identity)
        #expect(AgentIdentity(headerValue: "version=1;future=x") == AgentIdentity(name: "", host: "", version: "1"))
        #expect(AgentIdentity(headerValue: "nothing useful") == nil)
    }

    @Test func whatAPeerSendsIsBoundedAndCannotInjectText() throws {
        let hostile = try #require(
            AgentIdentity(
                headerValue: "name=\(String(repeating: "x", count: 500)); host=a\"b{c}=d\u{1B}[31m; version=1 2"))
        #expect(hostile.name.count == AgentIdentity.maxLength)
        #expect(hostile.host == "a_b_c__d__31m")
        #expect(hostile.version == "1_2")
        #expect(AgentIdentity(name: "ünï", host: "", version: "").name == "_n_")
    }
}
