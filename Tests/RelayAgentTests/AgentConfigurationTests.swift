import HybridConnections
import NIOHTTP1
import RelayIO
import Testing

@testable import RelayAgent

@Suite struct ForwardSpecTests {
    @Test func localForms() throws {
        #expect(
            try ForwardSpec.parseLocal("8080:hc1")
                == LocalForward(relayName: "hc1", bindings: [LocalBinding(port: 8080)]))
        let full = try ForwardSpec.parseLocal("0.0.0.0:1433/sql;127.0.0.2:3389/rdp:db/relay")
        #expect(full.relayName == "db/relay")
        #expect(
            full.bindings == [
                LocalBinding(bindAddress: "0.0.0.0", port: 1433, portName: "sql"),
                LocalBinding(bindAddress: "127.0.0.2", port: 3389, portName: "rdp"),
            ])
        #expect(try ForwardSpec.parseLocal("[::1]:22:ssh").bindings == [LocalBinding(bindAddress: "::1", port: 22)])
        #expect(try ForwardSpec.parseLocal("localhost:22:ssh").bindings[0].bindAddress == "127.0.0.1")
    }

    @Test func remoteForms() throws {
        #expect(
            try ForwardSpec.parseRemote("hc1:5432")
                == RemoteForward(relayName: "hc1", bindings: [RemoteBinding(port: 5432)]))
        let full = try ForwardSpec.parseRemote("db:sql/10.0.0.5:1433;rdp/host.internal:3389")
        #expect(
            full.bindings == [
                RemoteBinding(portName: "sql", host: "10.0.0.5", port: 1433),
                RemoteBinding(portName: "rdp", host: "host.internal", port: 3389),
            ])
        #expect(full.binding(forPortName: "rdp")?.port == 3389)
        #expect(full.binding(forPortName: "ssh") == nil)
        let single = try ForwardSpec.parseRemote("hc:127.0.0.1:80")
        #expect(single.binding(forPortName: "8080")?.port == 80, "one numeric binding takes any port name")
    }

    /// azbridge's UDP forms: a `U` suffix on `-L`/`-T` ports, negative ports in YAML; the port name then ends in U.
    @Test func udpSpecs() throws {
        let local = try ForwardSpec.parseLocal("127.0.0.1:5353U;8080:dns")
        #expect(local.bindings == [LocalBinding(port: 5353, udp: true), LocalBinding(port: 8080)])
        #expect(local.bindings[0].portName == "5353U" && local.bindings[0].endpoint == "udp:127.0.0.1:5353")
        let remote = try ForwardSpec.parseRemote("dns:10.0.0.53:53U")
        #expect(remote.bindings == [RemoteBinding(host: "10.0.0.53", port: 53, udp: true)])
        #expect(remote.bindings[0].portName == "53U")
        let yaml = """
            LocalForward:
              - {RelayName: dns, BindPort: -5353}
            RemoteForward:
              - {RelayName: dns, Host: 10.0.0.53, HostPort: -53, PortName: dns}
            """
        let configuration = try AgentConfiguration.parse(yaml: yaml)
        #expect(configuration.localForwards[0].bindings == [LocalBinding(port: 5353, udp: true)])
        #expect(
            configuration.remoteForwards[0].bindings == [
                RemoteBinding(portName: "dns", host: "10.0.0.53", port: 53, udp: true)
            ])
    }

    /// azbridge's Unix-socket forms: `-L /path/port_name:relay` (the port name last) and
    /// `-T relay:[port_name/]/path` (without a name, the socket's file name).
    @Test func unixSocketSpecs() throws {
        let local = try ForwardSpec.parseLocal("/run/app/app.sock/web;127.0.0.1:8080:hc")
        #expect(
            local.bindings == [
                LocalBinding(socketPath: "/run/app/app.sock", portName: "web"), LocalBinding(port: 8080),
            ])
        #expect(local.bindings[0].endpoint == "unix:/run/app/app.sock")
        let remote = try ForwardSpec.parseRemote("hc:web//run/app.sock;/var/run/postgresql/.s.PGSQL.5432")
        #expect(
            remote.bindings == [
                RemoteBinding(portName: "web", socketPath: "/run/app.sock"),
                RemoteBinding(portName: ".s.PGSQL.5432", socketPath: "/var/run/postgresql/.s.PGSQL.5432"),
            ])
        #expect(remote.binding(forPortName: "web")?.target == "unix:/run/app.sock")
        let long = "/" + String(repeating: "d", count: 120)
        #expect(throws: ForwardSpecError.self) { try ForwardSpec.parseRemote("hc:x/\(long)") }
    }

    @Test(arguments: [
        "hc1", "abc:hc1", "8080:", "8080:bad name", "70000:hc", "3434X:hc", "0U:hc", "/sock:hc", "/tmp/sock/:hc",
        "1:/x:hc",
        ":80:hc",
    ])
    func badLocal(spec: String) {
        #expect(throws: ForwardSpecError.self) { try ForwardSpec.parseLocal(spec) }
    }

    @Test(arguments: [
        "hc", ":80", "hc:", "hc:host:x", "hc:a/1;a/2", "bad name:80", "hc::80", "hc:name/relative.sock", "hc:/",
        "hc:a//x.sock;a//y.sock",
    ])
    func badRemote(spec: String) {
        #expect(throws: ForwardSpecError.self) { try ForwardSpec.parseRemote(spec) }
    }

    @Test func backoffFollowsTheSdkScheduleWithJitter() {
        var backoff = ReconnectBackoff()
        var generator = SystemRandomNumberGenerator()
        let delays = (0..<8).map { _ in backoff.nextDelay(using: &generator) }
        for (delay, base) in zip(delays, [0.0, 1, 2, 5, 10, 30, 30, 30]) {
            #expect(delay >= base && delay <= base * 1.2)
        }
        backoff.reset()
        #expect(backoff.nextDelay(using: &generator) == 0)
    }
}

@Suite struct PreambleTests {
    @Test func requestAcrossMessagesWithLeftover() {
        let (header, name) = Preamble.request(portName: "sql")
        #expect(header == [1, 0, 0, 3] && name == Array("sql".utf8))
        var parser = PreambleRequestParser()
        #expect(parser.feed(header.prefix(2)) == .needMore)
        #expect(parser.feed(header.suffix(2) + [UInt8(ascii: "s")]) == .needMore)
        #expect(parser.feed(Array("ql".utf8) + [9, 9]) == .complete(portName: "sql", mode: .stream, leftover: [9, 9]))
    }

    @Test func requestRefusals() {
        var version = PreambleRequestParser()
        #expect(version.feed([2, 0, 0, 0]) == .unsupportedVersion(major: 2))
        var mode = PreambleRequestParser()
        #expect(mode.feed([1, 0, 7, 0]) == .invalid("unknown mode 7"))
        var utf8 = PreambleRequestParser()
        #expect(utf8.feed([1, 0, 0, 1, 0xFF]) == .invalid("the port name is not UTF-8"))
    }

    @Test func responses() {
        var ok = PreambleResponseParser()
        #expect(ok.feed([1, 0]) == .needMore)
        #expect(ok.feed([0, 42]) == .accepted(leftover: [42]))
        for (bytes, code) in [([0, 0, 0], 0), ([0, 0, 1], 1), ([0, 0, 255], 255), ([7, 7, 7], 7)] as [([UInt8], UInt8)]
        {
            var parser = PreambleResponseParser()
            guard case .refused(let refusedCode, _) = parser.feed(bytes) else {
                Issue.record("\(bytes) accepted")
                continue
            }
            #expect(refusedCode == code)
        }
    }
}

@Suite struct AgentConfigurationTests {
    /// The shapes of azbridge's README/CONFIG examples (reference §3.3).
    @Test func azbridgeExamples() throws {
        let yaml = """
            AzureRelayConnectionString: Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc=
            KeepAliveInterval: 15
            ExitOnForwardFailure: false
            LogLevel: INFO
            LocalForward:
              - RelayName: sql
                BindAddress: 127.0.0.1
                BindPort: 1433
                PortName: sql
              - RelayName: multi
                Bindings:
                  - BindAddress: 0.0.0.0
                    BindPort: 3389
                    PortName: rdp
                  - BindPort: 8022
            RemoteForward:
              - RelayName: db
                Host: 10.1.1.1
                HostPort: 1433
                PortName: sql
              - RelayName: web
                ConnectionString: Endpoint=sb://other.servicebus.windows.net/;SharedAccessKeyName=l;SharedAccessKey=k;EntityPath=web
                Bindings:
                  - Host: localhost
                    HostPort: 80
                    PortName: http80
            """
        let configuration = try AgentConfiguration.parse(yaml: yaml)
        #expect(configuration.keepAliveInterval == 15 && !configuration.exitOnForwardFailure)
        #expect(configuration.localForwards.count == 2)
        #expect(
            configuration.localForwards[1].bindings == [
                LocalBinding(bindAddress: "0.0.0.0", port: 3389, portName: "rdp"), LocalBinding(port: 8022),
            ])
        #expect(
            configuration.remoteForwards[0].bindings == [RemoteBinding(portName: "sql", host: "10.1.1.1", port: 1433)])
        let web = try RelayAccess.resolve(
            configuration: configuration, entryConnectionString: configuration.remoteForwards[1].connectionString,
            relayName: "web")
        #expect(web.base.host == "other.servicebus.windows.net" && web.base.secure && web.base.port == 443)
        #expect(web.keyName == "l")
        #expect(throws: AgentConfigurationError.self) {
            try RelayAccess.resolve(
                configuration: configuration, entryConnectionString: configuration.remoteForwards[1].connectionString,
                relayName: "other")
        }
    }

    @Test func unixSocketsInYAML() throws {
        let yaml = """
            LocalForward:
              - RelayName: app
                BindLocalSocket: /run/hyrelay/app.sock
                PortName: app
            RemoteForward:
              - RelayName: app
                Bindings:
                  - {LocalSocket: /run/app/app.sock, PortName: app}
                  - {LocalSocket: /run/postgresql/.s.PGSQL.5432}
            """
        let configuration = try AgentConfiguration.parse(yaml: yaml)
        #expect(
            configuration.localForwards[0].bindings == [
                LocalBinding(socketPath: "/run/hyrelay/app.sock", portName: "app")
            ])
        let proxied = try AgentConfiguration.parse(yaml: "HttpProxy: http://u:p@proxy.corp:3128\n")
        #expect(proxied.httpProxy == "http://u:p@proxy.corp:3128")
        #expect(
            configuration.remoteForwards[0].bindings == [
                RemoteBinding(portName: "app", socketPath: "/run/app/app.sock"),
                RemoteBinding(socketPath: "/run/postgresql/.s.PGSQL.5432"),
            ])
    }

    @Test(arguments: [
        (
            "LocalForward:\n  - RelayName: a\n    BindPort: 1\n    RemoteHostName: x\n", 4,
            "unknown key 'RemoteHostName'"
        ),
        ("Bogus: 1\n", 1, "unknown key 'Bogus'"),
        ("LocalForward:\n  - BindPort: 1\n", 2, "RelayName is required"),
        ("RemoteForward:\n  - RelayName: a\n    HostPort: -70000\n", 3, "HostPort -70000"),
        ("RemoteForward:\n  - RelayName: a\n    Http: true\n    PortName: ftp\n", 4, "PortName is http or https"),
        ("RemoteForward:\n  - RelayName: a\n    HostPort: 80\n    Insecure: true\n", 4, "only to an Http binding"),
        ("RemoteForward:\n  - RelayName: a\n    Http: true\n    Path: api\n", 4, "the path 'api'"),
        ("RemoteForward:\n  - RelayName: a\n    Http: true\n    HostPort: 0\n", 4, "HostPort 0 is not"),
        (
            "RemoteForward:\n  - RelayName: a\n    Bindings:\n      - {Http: true}\n      - {Http: true, PortName: https}\n",
            2, "two HTTP targets"
        ),
        ("KeepAliveInterval: soon\n", 1, "KeepAliveInterval must be a whole number"),
        (
            "LocalForward:\n  - RelayName: a\n    BindLocalSocket: relative.sock\n", 3,
            "a Unix socket is an absolute path"
        ),
        ("HttpProxy: socks5://p:1\n", 1, "HttpProxy 'socks5://p:1' is not"),
        ("LocalForward:\n  - RelayName: a\n", 2, "has no BindPort"),
        ("LocalForward: [\n", 2, "not valid YAML"),
        ("AzureRelayConnectionString: nonsense\n", 1, "is not Key=Value"),
        ("RemoteForward:\n  - RelayName: bad name\n    HostPort: 1\n", 2, "RelayName 'bad name'"),
        (
            "RemoteForward:\n  - RelayName: db\n    HostPort: 5432\n  - RelayName: DB\n    HostPort: 5432\n", 4,
            "names port '5432' twice"
        ),
        (
            "RemoteForward:\n  - RelayName: db\n    HostPort: 1\n    PortName: a\n"
                + "  - RelayName: db\n    HostPort: 2\n    PortName: b\n"
                + "    ConnectionString: Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=v\n", 5,
            "different connection strings"
        ),
    ])
    func badFilesNameTheLine(yaml: String, line: Int, fragment: String) {
        do {
            _ = try AgentConfiguration.parse(yaml: yaml)
            Issue.record("accepted: \(yaml)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.description.contains(fragment), "\(error)")
        }
    }

    @Test func entriesForOneRelayBecomeOneListenerWithEveryBinding() throws {
        let yaml = """
            RemoteForward:
              - RelayName: db
                HostPort: 5432
                PortName: pg
              - RelayName: cache
                HostPort: 6379
              - RelayName: DB
                HostPort: 5433
                PortName: replica
            """
        let configuration = try AgentConfiguration.parse(yaml: yaml)
        #expect(configuration.remoteForwards.map(\.relayName) == ["db", "cache"])
        #expect(configuration.remoteForwards[0].bindings.map(\.portName) == ["pg", "replica"])
        #expect(configuration.remoteForwards[0].binding(forPortName: "replica")?.port == 5433)
        let flags = try RemoteForward.merged([
            ForwardSpec.parseRemote("web:a/127.0.0.1:80"), ForwardSpec.parseRemote("web:b/127.0.0.1:81"),
        ])
        #expect(flags.count == 1 && flags[0].bindings.map(\.portName) == ["a", "b"])
        #expect(throws: ForwardSpecError.self) {
            try RemoteForward.merged([ForwardSpec.parseRemote("web:80"), ForwardSpec.parseRemote("web:80")])
        }
    }

    /// Senders reuse a token while more than half its life is left, instead of signing one per tunnel.
    @Test func tokensAreReusedWhileMoreThanHalfTheirLifeIsLeft() throws {
        var access = RelayAccess(base: WebSocketURL("ws://token-cache.test:1")!, keyName: "k", key: "c2VjcmV0")
        access.tokenLifetime = 1000
        let first = try #require(access.token(relayName: "hc", now: 10_000))
        let again = try #require(access.token(relayName: "hc", now: 10_499))
        #expect(again.token == first.token && again.expiry == 11_000)
        let renewed = try #require(access.token(relayName: "hc", now: 10_500))
        #expect(renewed.token != first.token && renewed.expiry == 11_500, "half its life gone: a new one")
        let other = try #require(access.token(relayName: "other", now: 10_500))
        #expect(other.token != renewed.token, "one token per audience")
    }

    @Test func accessResolution() throws {
        var configuration = AgentConfiguration()
        configuration.endpoint = "ws://127.0.0.1:9350"
        configuration.sharedAccessKeyName = "root"
        configuration.sharedAccessKey = "key"
        let access = try RelayAccess.resolve(configuration: configuration, entryConnectionString: nil, relayName: "hc")
        #expect(access.base == WebSocketURLProbe.url("ws://127.0.0.1:9350"))
        let token = try #require(access.token(relayName: "hc", now: 1000))
        #expect(token.expiry == 1000 + RelayAccess.defaultTokenLifetime)
        let sas = try SharedAccessSignature(parsing: token.token)
        #expect(sas.resource == "http://127.0.0.1/hc/" && sas.isSigned(with: "key"))

        configuration.sharedAccessSignature = "SharedAccessSignature sr=x&sig=y&se=1&skn=z"
        let premade = try RelayAccess.resolve(configuration: configuration, entryConnectionString: nil, relayName: "hc")
        #expect(premade.token(relayName: "hc", now: 0)?.token == configuration.sharedAccessSignature)

        #expect(throws: AgentConfigurationError.self) {
            try RelayAccess.resolve(configuration: AgentConfiguration(), entryConnectionString: nil, relayName: "hc")
        }
        var halfKey = AgentConfiguration()
        halfKey.endpoint = "sb://ns.servicebus.windows.net/"
        halfKey.sharedAccessKeyName = "only-name"
        #expect(throws: AgentConfigurationError.self) {
            try RelayAccess.resolve(configuration: halfKey, entryConnectionString: nil, relayName: "hc")
        }
    }
}

@Suite struct AddressFilterTests {
    @Test func networksAndSingleAddresses() throws {
        let filter = try AddressFilter(["10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"])
        for allowed in ["10.1.2.3", "10.255.255.255", "192.168.1.7", "fd12::1", "::1", "::ffff:10.0.0.1"] {
            #expect(filter.allows(allowed), "\(allowed)")
        }
        for refused in ["11.0.0.1", "192.168.1.8", "fe80::1", "::2", "not an ip", ""] {
            #expect(!filter.allows(refused), "\(refused)")
        }
        #expect(try AddressFilter(["0.0.0.0/0"]).allows("8.8.8.8"))
        #expect(try AddressFilter(["127.0.0.1/31"]).allows("127.0.0.0"))
    }

    @Test(arguments: ["10.0.0.0/33", "::/129", "nonsense", "10.0.0/8", "10.0.0.0/x", "/8"])
    func badSpecs(spec: String) {
        #expect(throws: ForwardSpecError.self) { try AddressFilter([spec]) }
    }
}

@Suite struct ProbeOutcomeTests {
    func response(_ status: Int, _ body: String, contentType: String = "text/plain") -> HTTPProbeResponse {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        return HTTPProbeResponse(status: status, reason: "Reason", headers: headers, body: body)
    }

    @Test func answersBecomeOutcomes() {
        let entry = RuntimeInformation(path: "hc", listenerCount: 2, requiresClientAuthorization: true).entry(
            id: "x", updated: "y")
        #expect(
            ProbeOutcome.from(response(200, entry, contentType: RuntimeInformation.entryContentType), relayName: "hc")
                == .ready(listeners: 2))
        let feed = RuntimeInformation.emptyFeed(id: "x", updated: "y")
        #expect(
            ProbeOutcome.from(response(200, feed, contentType: RuntimeInformation.feedContentType), relayName: "hc")
                == .missingEntity)
        #expect(ProbeOutcome.from(response(404, "Endpoint does not exist"), relayName: "hc") == .missingEntity)
        #expect(
            ProbeOutcome.from(response(401, "InvalidSignature: bad"), relayName: "hc")
                == .credentialsRefused("InvalidSignature: bad"))
        let rights = ProbeOutcome.from(
            response(403, "Unauthorized access. 'Manage' claim(s) are required"), relayName: "hc")
        #expect(rights.isReady, "Azure may keep the answer from a Send key: not a failure")
        #expect(!ProbeOutcome.unreachable("x").isReady && !ProbeOutcome.missingEntity.isReady)
        #expect(ProbeOutcome.from(response(200, "<html/>"), relayName: "hc").isReady)
    }
}
