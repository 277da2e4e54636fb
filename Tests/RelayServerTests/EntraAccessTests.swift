import AzureIdentity
import HybridConnections
import Testing

@testable import RelayServer

/// Which rights an Entra principal holds, from the `entra:` section and `--entra-principal`.
@Suite struct EntraAccessTests {
    let configuration = EntraConfiguration(
        tenant: "t",
        principals: [
            EntraPrincipalRule(id: "edge-oid", rights: [.listen], entity: "hc"),
            EntraPrincipalRule(id: "CLIENT-APP", rights: [.send]),
            EntraPrincipalRule(id: "owners", rights: [.manage]),
        ])

    func principal(oid: String? = nil, app: String? = nil, groups: [String] = []) -> EntraPrincipal {
        EntraPrincipal(objectID: oid, applicationID: app, groups: groups, roles: [], expiry: 0)
    }

    @Test func rulesMatchAnyOfThePrincipalsIds() {
        #expect(configuration.rights(of: principal(oid: "edge-oid"), entity: "HC") == [.listen])
        #expect(configuration.rights(of: principal(oid: "edge-oid"), entity: "other").isEmpty, "the rule names hc")
        #expect(configuration.rights(of: principal(app: "client-app"), entity: "any") == [.send], "ids ignore case")
        #expect(configuration.rights(of: principal(oid: "x", groups: ["owners"]), entity: "hc") == [.manage])
        #expect(
            configuration.rights(of: principal(oid: "edge-oid", app: "client-app"), entity: "hc") == [.listen, .send])
        #expect(configuration.rights(of: principal(oid: "stranger"), entity: "hc").isEmpty)
    }

    @Test func principalFlagsParse() throws {
        #expect(
            try EntraPrincipalRule(parsing: "abc=Listen,send@hc")
                == EntraPrincipalRule(id: "abc", rights: [.listen, .send], entity: "hc"))
        #expect(try EntraPrincipalRule(parsing: "abc=Manage") == EntraPrincipalRule(id: "abc", rights: [.manage]))
        for bad in ["abc", "=Listen", "abc=", "abc=Read", "abc=Listen@"] {
            #expect(throws: ConfigurationError.self, "\(bad)") { try EntraPrincipalRule(parsing: bad) }
        }
    }

    @Test func theYAMLSectionIsCheckedLikeTheRest() throws {
        let yaml = """
            hybridConnections: [{name: hc}]
            entra:
              tenant: 5b9f3c2a-1111-4a4a-9c9c-0123456789ab
              principals:
                - {id: edge-oid, rights: [Listen], entity: hc}
            """
        let parsed = try RelayConfiguration.parse(yaml)
        #expect(parsed.entra?.authority == "https://login.microsoftonline.com/")
        #expect(parsed.entra?.principals == [EntraPrincipalRule(id: "edge-oid", rights: [.listen], entity: "hc")])
        try parsed.validate()
        #expect(throws: ConfigurationError.self) {
            try RelayConfiguration.parse("entra:\n  tenant: t\n  principal: []\n")
        }
        var plainHTTP = parsed
        plainHTTP.entra?.authority = "http://login.example/"
        #expect(throws: ConfigurationError.self) { try plainHTTP.validate() }
        var noRights = parsed
        noRights.entra?.principals = [EntraPrincipalRule(id: "x", rights: [])]
        #expect(throws: ConfigurationError.self) { try noRights.validate() }
    }

    @Test func aSASOnlyRelayRefusesEntraTokensByName() {
        let policy = RelayPolicy(
            configuration: RelayConfiguration(hybridConnections: [HybridConnectionConfiguration(name: "hc")]))
        #expect(throws: Refusal.self) {
            try policy.authorizeEntra("a.b.c", entity: "hc", anyOf: [.listen], now: 0)
        }
        do {
            _ = try policy.authorizeEntra("a.b.c", entity: "hc", anyOf: [.listen], now: 0)
        } catch {
            #expect(error.status == 401 && error.reason == "entra_not_configured")
        }
    }
}
