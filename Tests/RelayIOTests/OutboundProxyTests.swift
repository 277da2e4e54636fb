import Testing

@testable import RelayIO

@Suite struct OutboundProxyTests {
    @Test func proxyURLs() {
        let plain = OutboundProxy(url: "http://proxy.corp:3128")
        #expect(plain?.host == "proxy.corp" && plain?.port == 3128 && plain?.credentials == nil)
        let withUser = OutboundProxy(url: "http://me:p%40ss@10.0.0.1:8080/")
        #expect(withUser?.credentials == "me:p@ss" && withUser?.port == 8080)
        #expect(OutboundProxy(url: "http://proxy")?.port == 80)
        #expect(OutboundProxy(url: "proxy:3128")?.host == "proxy")
        #expect(OutboundProxy(url: "http://[::1]:3128")?.host == "::1")
        #expect(OutboundProxy(url: "https://proxy:443") == nil, "TLS to the proxy is not spoken here")
        #expect(OutboundProxy(url: "http://proxy:99999") == nil)
        #expect(OutboundProxy(url: "http://me:pw@proxy:1")?.description == "http://***@proxy:1", "no password in logs")
    }

    @Test func theEnvironmentPicksByScheme() throws {
        let secure = WebSocketURL("wss://relay.example.com")!
        let plain = WebSocketURL("ws://127.0.0.1:9350")!
        let environment = ["https_proxy": "http://a:1", "HTTP_PROXY": "http://b:2", "NO_PROXY": "localhost, 127.0.0.1"]
        #expect(try OutboundProxy.forRelay(secure, flag: nil, environment: environment)?.host == "a")
        #expect(try OutboundProxy.forRelay(plain, flag: nil, environment: environment) == nil, "NO_PROXY")
        #expect(
            try OutboundProxy.forRelay(plain, flag: "http://c:3", environment: environment)?.host == "c",
            "the flag wins, NO_PROXY included")
        #expect(try OutboundProxy.forRelay(secure, flag: nil, environment: [:]) == nil)
        #expect(throws: OutboundProxyError.self) {
            try OutboundProxy.forRelay(secure, flag: "socks5://x:1", environment: [:])
        }
    }

    @Test func noProxyMatchesNamesAndDomains() {
        #expect(OutboundProxy.bypasses(host: "relay.corp", noProxy: ".corp"))
        #expect(OutboundProxy.bypasses(host: "relay.corp", noProxy: "corp"))
        #expect(OutboundProxy.bypasses(host: "RELAY.corp", noProxy: "relay.corp"))
        #expect(!OutboundProxy.bypasses(host: "notcorp", noProxy: "corp"))
        #expect(OutboundProxy.bypasses(host: "anything", noProxy: "*"))
    }

    @Test func connectCarriesBasicCredentials() {
        let proxy = OutboundProxy(url: "http://user:secret@p:1")!
        #expect(
            proxy.connectRequest(target: "relay:443")
                == "CONNECT relay:443 HTTP/1.1\r\nHost: relay:443\r\nProxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n\r\n"
        )
    }
}
