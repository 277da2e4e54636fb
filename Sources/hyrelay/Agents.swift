import ArgumentParser
import AzureIdentity
import HybridConnections
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import RelayAgent
import RelayIO
import RelayServer
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Endpoint, credentials and config-file options shared by `client` and `edge`, named as azbridge
/// names them.
struct AgentOptions: ParsableArguments {
    @Option(
        name: .customShort("x"),
        help: "Connection string: Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...[;EntityPath=...]")
    var connectionString: String?

    @Option(
        name: .customShort("e"),
        help: """
            Relay endpoint: sb://HOST[:PORT]/ (wss), or ws://HOST:PORT / wss://HOST[:PORT] for a self-hosted relay. \
            The edge takes several and listens on every one (relays behind a load balancer); the client takes one.
            """)
    var endpoints: [String] = []

    @Option(name: .customShort("K"), help: "SAS key name.")
    var keyName: String?

    @Option(
        name: .customShort("k"),
        help:
            "SAS key. On the command line it is visible to every local user (/proc/PID/cmdline): prefer --key-file or HYRELAY_SAS_KEY."
    )
    var key: String?

    @Option(name: .customLong("key-file"), help: "File holding the SAS key (one line), instead of -k.")
    var keyFile: String?

    /// The SAS key from `-k`, `--key-file` or `HYRELAY_SAS_KEY` (`-k` and `--key-file` together are refused).
    func sharedAccessKey() throws -> String? {
        if key != nil && keyFile != nil {
            throw ValidationError("give the SAS key with -k or with --key-file, not both")
        }
        if let key { return key }
        if let keyFile {
            let text: String
            do {
                text = try String(contentsOfFile: keyFile, encoding: .utf8)
            } catch {
                throw ValidationError("--key-file '\(keyFile)' cannot be read")
            }
            let key = text.trimmingWhitespace()
            guard !key.isEmpty else { throw ValidationError("--key-file '\(keyFile)' is empty") }
            return key
        }
        let variable = ProcessInfo.processInfo.environment["HYRELAY_SAS_KEY"]?.trimmingWhitespace() ?? ""
        return variable.isEmpty ? nil : variable
    }

    @Option(name: .customShort("s"), help: "A pre-made SAS token (never renewed).")
    var signature: String?

    @Option(name: .customShort("f"), help: "azbridge-style YAML configuration file (LocalForward / RemoteForward).")
    var configFile: String?

    @Option(name: .customLong("ca-file"), help: "PEM file of CA certificates to trust for wss (default: the system's).")
    var caFile: String?

    @Option(
        name: .customShort("a"), help: "Seconds between keep-alive pings on listener control channels (default 30).")
    var keepAlive: Double?

    @Option(
        name: .customLong("token-ttl"),
        help: "Lifetime in seconds of the SAS tokens the agent makes; renewed at 4/5 of it.")
    var tokenTTL: Int64 = RelayAccess.defaultTokenLifetime

    @Option(name: .customLong("grace"), help: "Seconds to let open tunnels finish on SIGTERM.")
    var grace: Double = 10

    @Option(
        name: .customLong("proxy"),
        help:
            "Reach the relay through this HTTP proxy with CONNECT: http://[user:password@]host:port (default: HTTPS_PROXY or HTTP_PROXY, unless NO_PROXY names the relay). A password here is visible to local users: prefer HTTPS_PROXY or HttpProxy in -f."
    )
    var proxy: String?

    @Flag(
        name: .customLong("entra"),
        help:
            "Sign in with Entra ID when no SAS credential is given (client secret or certificate from AZURE_*, workload or managed identity); implied by AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE or IDENTITY_ENDPOINT."
    )
    var entra = false

    @Option(
        name: .customLong("name"),
        help:
            "This agent's name, sent to the relay (X-HyRelay-Agent) and shown in its /v1/listeners, logs and metrics (default: the host name)."
    )
    var name: String?

    /// What this agent tells relays about itself.
    var identity: AgentIdentity {
        let host = ProcessInfo.processInfo.hostName
        return AgentIdentity(name: name ?? host, host: host, version: HybridRelayVersion.current)
    }

    @Option(
        name: .customLong("udp-idle"),
        help: "Seconds a UDP flow may see no datagram either way before its tunnel closes.")
    var udpIdle: Double = 240

    /// `--udp-idle` as a timer's amount.
    var udpIdleTimeout: TimeAmount { .nanoseconds(Int64(udpIdle * 1e9)) }

    func validate() throws {
        if let name,
            name.isEmpty || name.count > AgentIdentity.maxLength
                || AgentIdentity(name: name, host: "", version: "").name != name
        {
            throw ValidationError(
                "--name '\(name)' must be 1 to \(AgentIdentity.maxLength) letters, digits or . _ : @ + -")
        }
        guard udpIdle > 0, udpIdle <= 86_400 else {
            throw ValidationError("--udp-idle must be above 0 and at most 86400")
        }
    }

    @OptionGroup var telemetry: TelemetryOptions

    func loadConfiguration() throws -> AgentConfiguration {
        var configuration = AgentConfiguration()
        if let configFile {
            let text: String
            do {
                text = try String(contentsOfFile: configFile, encoding: .utf8)
            } catch {
                throw ValidationError("cannot read -f '\(configFile)': \(ErrorWords.describe(error))")
            }
            do {
                configuration = try AgentConfiguration.parse(yaml: text)
            } catch {
                throw ValidationError("\(configFile): \(error.description)")
            }
        }
        if let connectionString { configuration.connectionString = connectionString }
        if let endpoint = endpoints.first { configuration.endpoint = endpoint }
        if let keyName { configuration.sharedAccessKeyName = keyName }
        if let key = try sharedAccessKey() { configuration.sharedAccessKey = key }
        if let signature { configuration.sharedAccessSignature = signature }
        guard tokenTTL >= 2 else { throw ValidationError("--token-ttl must be at least 2 seconds") }
        if let keepAlive {
            guard keepAlive > 0 else { throw ValidationError("-a must be positive") }
            configuration.keepAliveInterval = keepAlive
        }
        return configuration
    }

    func access(_ configuration: AgentConfiguration, entry: String?, relayName: String) throws -> RelayAccess {
        do {
            var access = try RelayAccess.resolve(
                configuration: configuration, entryConnectionString: entry, relayName: relayName)
            access.tokenLifetime = tokenTTL
            let environment = ProcessInfo.processInfo.environment
            access.proxy = try OutboundProxy.forRelay(
                access.base, flag: proxy ?? configuration.httpProxy, environment: environment)
            try EntraSignIn.attach(to: &access, flag: entra, environment: environment)
            access.identity = identity
            return access
        } catch let error as OutboundProxyError {
            throw ValidationError("--proxy or HTTPS_PROXY/HTTP_PROXY: \(error.description)")
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func tlsContext() throws -> NIOSSLContext {
        do {
            return try TLSSetup.clientContext(caFile: caFile)
        } catch {
            throw ValidationError("\(error)")
        }
    }
}

struct Client: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Public side (azbridge -L): bind local TCP or UDP ports or Unix sockets and tunnel each connection (each UDP source) through the relay.",
        discussion: """
            Example: hyrelay client -e ws://127.0.0.1:9350 -K root -k KEY -L 127.0.0.1:8080:hc1
            -L takes [bind_address:]port[U][/port_name]{;...}:relay_name or /socket/path/port_name:relay_name
            and may be repeated.
            """
    )

    @OptionGroup var options: AgentOptions

    @Option(
        name: .customShort("L"),
        help:
            "[bind_address:]port[U][/port_name]{;...}:relay_name (U: UDP), or /socket/path/port_name:relay_name (repeatable)."
    )
    var localForwards: [String] = []

    @Option(
        name: .customLong("allow"),
        help:
            "Accept connections and UDP flows only from this address or CIDR network (repeatable; default: anyone who can reach the port)."
    )
    var allow: [String] = []

    @Option(
        name: .customLong("udp-max-flows"),
        help:
            "UDP flows (source addresses, each a tunnel) one UDP binding holds at most; datagrams from new sources beyond it are dropped and counted."
    )
    var udpMaxFlows: Int = UDPFlowLimits.defaultMaxFlows

    @Option(
        name: .customLong("udp-max-flows-per-source"),
        help: "UDP flows one source IP address may hold on a UDP binding (its ports are separate flows).")
    var udpMaxFlowsPerSource: Int = UDPFlowLimits.defaultMaxFlowsPerSource

    func validate() throws {
        guard (1...1_000_000).contains(udpMaxFlows) else {
            throw ValidationError("--udp-max-flows must be 1 to 1000000")
        }
        guard (1...1_000_000).contains(udpMaxFlowsPerSource) else {
            throw ValidationError("--udp-max-flows-per-source must be 1 to 1000000")
        }
    }

    @Option(
        name: .customLong("socket-mode"),
        help: "Permission bits of the Unix sockets -L binds, in octal, e.g. 660 (default: what the umask leaves).")
    var socketMode: String?

    /// `--socket-mode` as permission bits.
    func socketPermissions() throws -> mode_t? {
        guard let socketMode else { return nil }
        guard let bits = mode_t(socketMode, radix: 8), bits <= 0o777 else {
            throw ValidationError("--socket-mode '\(socketMode)' is not octal permission bits (000-777)")
        }
        return bits
    }

    /// The forwards from `-f` and the flags; read again on SIGHUP.
    func makeForwards() throws -> [(LocalForward, RelayAccess)] {
        var configuration = try options.loadConfiguration()
        for spec in localForwards {
            do {
                configuration.localForwards.append(try ForwardSpec.parseLocal(spec))
            } catch {
                throw ValidationError("-L \(error.description)")
            }
        }
        guard !configuration.localForwards.isEmpty else {
            throw ValidationError("You must specify at least one -L forwarder (or LocalForward in -f).")
        }
        return try configuration.localForwards.map { forward in
            var access = try options.access(
                configuration, entry: forward.connectionString, relayName: forward.relayName)
            access.noAuthentication = forward.noAuthentication
            return (forward, access)
        }
    }

    func run() async throws {
        guard options.endpoints.count <= 1 else {
            throw ValidationError(
                "the client takes one -e; put several relays behind a load balancer and give its address")
        }
        let forwards = try makeForwards()
        let allowedSources: AddressFilter?
        do {
            allowedSources = allow.isEmpty ? nil : try AddressFilter(allow)
        } catch {
            throw ValidationError("--allow \(error.description)")
        }
        try await EntraSignIn.start()
        let session = try TelemetrySession(telemetry: options.telemetry, role: "client", tracerLabel: "hyrelay.client")
        let logger = Logger(label: "hyrelay.client")
        let metrics = session.metrics
        let (agent, side) = try await session.starting {
            let agent = try await ClientAgent.start(
                forwards: forwards, tlsContext: try options.tlsContext(), group: MultiThreadedEventLoopGroup.singleton,
                logger: logger, metrics: metrics, tracer: session.tracer, allowedSources: allowedSources,
                socketMode: try socketPermissions(), udpIdleTimeout: options.udpIdleTimeout,
                udpFlowLimits: UDPFlowLimits(maxFlows: udpMaxFlows, maxFlowsPerSource: udpMaxFlowsPerSource))
            let side = try await options.telemetry.startServer(metrics: metrics, logger: logger) {
                agent.readiness
            }
            return (agent, side)
        }
        let probing = Task { await agent.watchRelays() }
        defer { probing.cancel() }
        try await serveUntilTerminated(agent, grace: options.grace, session: session, side: side, logger: logger) {
            let (added, removed) = try await agent.reload(forwards: try makeForwards())
            return [
                "changed": "\(added + removed == 0 ? "unchanged" : "ports")", "ports_added": "\(added)",
                "ports_removed": "\(removed)",
            ]
        }
    }
}

struct Edge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Firewalled side (azbridge -T, -H): listen on the relay; dial the configured targets, proxy HTTP requests.",
        discussion: """
            Example: hyrelay edge -e ws://127.0.0.1:9350 -K root -k KEY -T hc1:127.0.0.1:5432
            -T takes relay_name:[port_name/]host:port[U]{;...} or relay_name:[port_name/]/socket/path and may be
            repeated.
            -H relay_name:{http|https}/host[/path][:port] answers the relay's HTTP requests
            for that hybrid connection by proxying them to the target.
            Only these targets are ever dialled.
            """
    )

    @OptionGroup var options: AgentOptions

    @Option(
        name: .customShort("T"),
        help:
            "relay_name:[port_name/]host:port[U]{;...} (U: UDP), or relay_name:[port_name/]/socket/path (repeatable).")
    var remoteForwards: [String] = []

    @Option(
        name: .customShort("H"),
        help: "relay_name:{http|https}/host[/path][:port]: an HTTP reverse proxy for the relay's HTTP requests.")
    var httpForwards: [String] = []

    @Option(
        name: .customLong("http-timeout"),
        help: "Seconds an HTTP target may take to start answering once it has the whole request; then 504.")
    var httpTimeout: Double = 50

    @Option(
        name: .customLong("discovery-interval"),
        help:
            "Seconds between resolutions of the relay names: a name with several addresses gets a listener on each (0: off)."
    )
    var discoveryInterval: Double = 30

    func validate() throws {
        guard httpTimeout > 0, httpTimeout <= 3600 else {
            throw ValidationError("--http-timeout must be above 0 and at most 3600")
        }
        guard discoveryInterval == 0 || (discoveryInterval >= 0.5 && discoveryInterval <= 86_400) else {
            throw ValidationError("--discovery-interval must be 0 (off) or 0.5 to 86400 seconds")
        }
    }

    /// One listener per relay name and endpoint (with several relays, each can complete any rendezvous),
    /// from `-f` and the flags; read again on SIGHUP.
    func makeForwards() throws -> (
        forwards: [(RemoteForward, RelayAccess)], keepAliveInterval: Double, exitOnForwardFailure: Bool
    ) {
        var configuration = try options.loadConfiguration()
        for spec in remoteForwards {
            do {
                configuration.remoteForwards.append(try ForwardSpec.parseRemote(spec))
            } catch {
                throw ValidationError("-T \(error.description)")
            }
        }
        for spec in httpForwards {
            do {
                configuration.remoteForwards.append(try ForwardSpec.parseHTTP(spec))
            } catch {
                throw ValidationError("-H \(error.description)")
            }
        }
        guard !configuration.remoteForwards.isEmpty else {
            throw ValidationError("You must specify at least one -T or -H forwarder (or RemoteForward in -f).")
        }
        do {
            configuration.remoteForwards = try RemoteForward.merged(configuration.remoteForwards)
        } catch {
            throw ValidationError("-T \(error.description)")
        }
        var forwards: [(RemoteForward, RelayAccess)] = []
        for forward in configuration.remoteForwards {
            let access = try options.access(
                configuration, entry: forward.connectionString, relayName: forward.relayName)
            forwards.append((forward, access))
            for endpoint in options.endpoints.dropFirst() {
                do {
                    forwards.append((forward, try access.with(endpoint: endpoint)))
                } catch {
                    throw ValidationError("-e \(error.description)")
                }
            }
        }
        return (forwards, configuration.keepAliveInterval, configuration.exitOnForwardFailure)
    }

    /// The listeners for the configured forwards: with discovery on, one per address of each relay name.
    func listeners(_ forwards: [(RemoteForward, RelayAccess)]) async -> [(RemoteForward, RelayAccess)] {
        guard discoveryInterval > 0 else { return forwards }
        return await RelayDiscovery.expand(forwards, resolve: RelayDiscovery.systemResolver)
    }

    func run() async throws {
        let (forwards, keepAliveInterval, exitOnForwardFailure) = try makeForwards()
        try await EntraSignIn.start()
        let session = try TelemetrySession(telemetry: options.telemetry, role: "edge", tracerLabel: "hyrelay.edge")
        let logger = Logger(label: "hyrelay.edge")
        let metrics = session.metrics
        let configured = NIOLockedValueBox(forwards)
        let initial = await listeners(forwards)
        let (agent, side) = try await session.starting {
            let agent = EdgeAgent.start(
                forwards: initial, keepAliveInterval: keepAliveInterval, tlsContext: try options.tlsContext(),
                group: MultiThreadedEventLoopGroup.singleton, logger: logger, metrics: metrics, tracer: session.tracer,
                udpIdleTimeout: options.udpIdleTimeout, httpResponseTimeout: .nanoseconds(Int64(httpTimeout * 1e9)))
            let side = try await options.telemetry.startServer(metrics: metrics, logger: logger) {
                agent.readiness
            }
            return (agent, side)
        }
        if exitOnForwardFailure, let failure = await agent.firstStartFailure() {
            // azbridge's ExitOnForwardFailure: a forwarder that cannot start stops the edge, for a supervisor
            // to report, instead of retrying for ever with a wrong key or name.
            logger.error(
                "a forwarder cannot start; stopping (ExitOnForwardFailure)", metadata: ["cause": "\(failure)"])
            await stop(agent, grace: 0, session: session, side: side)
            throw ExitCode(1)
        }
        // Relay discovery: the relay names are resolved again on an interval and the listeners follow.
        let discovery = Task {
            guard discoveryInterval > 0 else { return }
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int64(discoveryInterval * 1000)))
                let (added, removed) = await agent.reload(forwards: await listeners(configured.withLockedValue { $0 }))
                if added + removed > 0 {
                    logger.info(
                        "relay addresses changed",
                        metadata: ["listeners_added": "\(added)", "listeners_removed": "\(removed)"])
                }
            }
        }
        defer { discovery.cancel() }
        try await serveUntilTerminated(agent, grace: options.grace, session: session, side: side, logger: logger) {
            let forwards = try makeForwards().forwards
            configured.withLockedValue { $0 = forwards }
            let (added, removed) = await agent.reload(forwards: await listeners(forwards))
            return [
                "changed": "\(added + removed == 0 ? "unchanged" : "listeners")", "listeners_added": "\(added)",
                "listeners_removed": "\(removed)",
            ]
        }
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Validate a configuration file (an agent's azbridge-style YAML, or a relay's) and report errors with their line.",
        discussion: """
            The kind is told from the top-level keys: a relay's are camelCase (listen, hybridConnections, ...), \
            azbridge's PascalCase (LocalForward, RemoteForward, ...).
            """
    )

    @Option(name: .customShort("f"), help: "The YAML file to check.")
    var file: String

    @Flag(
        name: .long,
        help:
            "Also ask the relay of every agent entry, with its credentials: LocalForward by a runtime-information query, RemoteForward by opening and closing a listener."
    )
    var online = false

    @Option(name: .customLong("ca-file"), help: "PEM file of CAs to trust for wss relays (default: system roots).")
    var caFile: String?

    @Flag(name: .long, help: "As the agents' --entra: sign in with Entra ID where no SAS credential is given.")
    var entra = false

    func run() async throws {
        let text: String
        do {
            text = try String(contentsOfFile: file, encoding: .utf8)
        } catch {
            throw ValidationError("cannot read '\(file)': \(ErrorWords.describe(error))")
        }
        if RelayConfiguration.looksLikeRelayConfiguration(text) {
            do {
                let configuration = try RelayConfiguration.parse(text)
                try configuration.validate()
                // What the relay loads at start and on every reload: a missing or unreadable file fails here.
                if let tls = configuration.tls {
                    _ = try TLSSetup.serverContext(certificatePath: tls.certificate, keyPath: tls.key)
                }
                print(
                    "\(file): OK (relay, \(configuration.hybridConnections.count) hybrid connections, tls \(configuration.tls == nil ? "off" : "on"))"
                )
                return
            } catch {
                print("\(file): \(error)")
                throw ExitCode(2)
            }
        }
        do {
            let configuration = try AgentConfiguration.parse(yaml: text)
            var credentials: [String] = []
            for entry in Self.entries(configuration) {
                let access = try access(configuration, entry)
                credentials.append("\(entry.kind) \(entry.relayName) signs in with \(Self.credential(access))")
            }
            print(
                "\(file): OK (\(configuration.localForwards.count) LocalForward, \(configuration.remoteForwards.count) RemoteForward)"
            )
            for line in credentials { print(line) }
            if online { try await checkOnline(configuration) }
        } catch let error as AgentConfigurationError {
            print("\(file): \(error.description)")
            throw ExitCode(2)
        }
    }

    /// One line per entry with what its relay said; exit status 2 when any is not ready. A LocalForward is
    /// asked by a runtime-information query, a RemoteForward by opening a listener.
    private func checkOnline(_ configuration: AgentConfiguration) async throws {
        let tls = try TLSSetup.clientContext(caFile: caFile)
        let group = MultiThreadedEventLoopGroup.singleton
        let entries = Self.entries(configuration)
        let accesses = try entries.map { try access(configuration, $0) }
        try await EntraSignIn.start()
        var failed = false
        for (entry, access) in zip(entries, accesses) {
            let listens = entry.kind == "RemoteForward"
            let outcome =
                listens
                ? await RelayProbe.probeListen(
                    access: access, relayName: entry.relayName, tlsContext: tls, group: group)
                : await RelayProbe.probe(access: access, relayName: entry.relayName, tlsContext: tls, group: group)
            let said = listens && outcome == .ready(listeners: 1) ? "listening works" : outcome.description
            print("\(entry.kind) \(entry.relayName) at \(access.base): \(said)")
            failed = failed || !outcome.isReady
        }
        if failed { throw ExitCode(2) }
    }

    private struct Entry {
        var kind: String
        var relayName: String
        var connectionString: String?
        var noAuthentication: Bool
    }

    private static func entries(_ configuration: AgentConfiguration) -> [Entry] {
        configuration.localForwards.map {
            Entry(
                kind: "LocalForward", relayName: $0.relayName, connectionString: $0.connectionString,
                noAuthentication: $0.noAuthentication)
        }
            + configuration.remoteForwards.map {
                Entry(
                    kind: "RemoteForward", relayName: $0.relayName, connectionString: $0.connectionString,
                    noAuthentication: false)
            }
    }

    /// The entry's access as the agent would build it, Entra sign-in included (not yet signed in).
    private func access(_ configuration: AgentConfiguration, _ entry: Entry) throws -> RelayAccess {
        var access = try RelayAccess.resolve(
            configuration: configuration, entryConnectionString: entry.connectionString, relayName: entry.relayName)
        access.noAuthentication = entry.noAuthentication
        try EntraSignIn.attach(to: &access, flag: entra, environment: ProcessInfo.processInfo.environment)
        return access
    }

    /// Which credential an entry uses, in words; never the secret.
    private static func credential(_ access: RelayAccess) -> String {
        if access.noAuthentication { return "no token (NoAuthentication)" }
        if access.signature != nil { return "a pre-made SAS token (never renewed)" }
        if let keyName = access.keyName { return "SAS key '\(keyName)'" }
        if let entra = access.entra { return "Entra ID: \(entra.credential.source.summary)" }
        return "no token: no SAS credential and no Entra sign-in (give -K/-k, -x, or AZURE_* variables or --entra)"
    }
}

/// What `serve` needs of a role: how many tunnels are open, and a graceful stop.
protocol DrainableAgent: Sendable {
    var tunnelCount: Int { get }
    func shutdown(grace: Duration) async
}

extension ClientAgent: DrainableAgent {}
extension EdgeAgent: DrainableAgent {}
extension RelayServer: DrainableAgent {}

/// Lets open tunnels finish for `grace` seconds, flushes the exporter and stops the side port.
func stop(_ agent: some DrainableAgent, grace: Double, session: TelemetrySession, side: TelemetryServer?) async {
    await agent.shutdown(grace: .milliseconds(Int(grace * 1000)))
    await session.finish()
    await side?.stop()
}
