import RelayIO
import Testing

@testable import RelayAgent

/// Relay names expanded into one listener per address, with a resolver the test controls.
@Suite struct RelayDiscoveryTests {
    func forward(_ relay: String = "hc") -> RemoteForward {
        RemoteForward(relayName: relay, bindings: [RemoteBinding(port: 80)])
    }

    func access(_ endpoint: String) -> RelayAccess {
        RelayAccess(base: WebSocketURLProbe.url(endpoint), keyName: "k", key: "v")
    }

    @Test func aNameWithSeveralAddressesGetsAListenerOnEach() async {
        let expanded = await RelayDiscovery.expand([(forward(), access("wss://relays.svc:443"))]) { host in
            host == "relays.svc" ? ["10.0.0.3", "10.0.0.2", "10.0.0.3", "fd00::9"] : nil
        }
        #expect(expanded.map(\.1.address) == ["10.0.0.2", "10.0.0.3"], "sorted, unique, IPv4 preferred")
        #expect(expanded.allSatisfy { $0.1.base.host == "relays.svc" }, "the name stays for TLS and Host")
    }

    @Test func whatCannotOrNeedNotBeExpandedStaysAsItIs() async {
        var proxied = access("wss://relays.svc:443")
        proxied.proxy = OutboundProxy(url: "http://proxy:3128")
        let entries = [
            (forward("a"), access("ws://127.0.0.1:9350")), (forward("b"), access("ws://[::1]:9350")),
            (forward("c"), access("wss://single.svc")), (forward("d"), access("wss://gone.svc")),
            (forward("e"), proxied),
        ]
        let expanded = await RelayDiscovery.expand(entries) { host in
            switch host {
            case "single.svc": return ["10.0.0.1"]
            case "relays.svc": return ["10.0.0.1", "10.0.0.2"]
            default: return nil
            }
        }
        #expect(expanded.map(\.0.relayName) == ["a", "b", "c", "d", "e"])
        #expect(expanded.allSatisfy { $0.1.address == nil })
    }

    @Test func onlyIPv6NamesKeepTheirIPv6Addresses() {
        #expect(RelayDiscovery.preferred(["fd00::2", "fd00::1"]) == ["fd00::1", "fd00::2"])
        #expect(RelayDiscovery.preferred(["::1", "127.0.0.1"]) == ["127.0.0.1"])
    }
}
