import ArgumentParser
import AzureIdentity
import HybridConnections
import Logging
import NIOCore
import NIOPosix
import RelayServer
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The release this binary is, as `hyrelay --version` prints it.
enum HybridRelayVersion {
    static let current = "0.4.0"
}

@main
struct Hyrelay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hyrelay",
        abstract: "A self-hostable Azure Relay Hybrid Connections relay, with tunnel agents and telemetry.",
        version: HybridRelayVersion.current,
        subcommands: [Relay.self, Client.self, Edge.self, Demo.self, Check.self, Token.self, Status.self, Export.self]
    )
}

struct Relay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the rendezvous service (listen, connect, accept, reject, HTTP mode).",
        discussion: """
            Entities come from --config (YAML or JSON, see docs/relay.md) and from --hybrid-connection. \
            --sas-key-name/--sas-key add one namespace rule with Listen, Send and Manage on every entity.

            Example:
              hyrelay relay --listen 127.0.0.1:9350 --hybrid-connection hc1 --sas-key-name root --sas-key SECRET
            """
    )

    @Option(name: .long, help: "Configuration file (YAML or JSON); flags override its values.")
    var config: String?

    @Option(name: .long, help: "Address to bind, HOST:PORT (default 127.0.0.1:9350).")
    var listen: String?

    @Option(
        name: .customLong("hybrid-connection"),
        help: "A hybrid connection (entity) to serve; repeatable. Names may contain '/'.")
    var hybridConnections: [String] = []

    @Option(
        name: .customLong("anonymous-sender"),
        help: "An entity whose senders need no token (requiresClientAuthorization=false); repeatable.")
    var anonymousSenders: [String] = []

    @Option(name: .customLong("sas-key-name"), help: "Key name of a namespace-wide rule with Listen, Send and Manage.")
    var sasKeyName: String?

    @Option(name: .customLong("sas-key"), help: "Key of that rule (used as UTF-8 text, as Azure does).")
    var sasKey: String?

    @Option(
        name: .customLong("public-url"),
        help: "Base URL put into accept/request addresses, e.g. wss://relay.example.com (default: from --listen).")
    var publicURL: String?

    @Option(name: .long, help: "PEM certificate chain; with --key serves wss/https.")
    var cert: String?

    @Option(name: .long, help: "PEM private key for --cert.")
    var key: String?

    @Option(name: .customLong("accept-timeout"), help: "Seconds a sender waits for a listener to accept (default 30).")
    var acceptTimeout: Double?

    @Option(
        name: .customLong("ping-interval"), help: "Seconds between pings on listener control channels (default 30).")
    var pingInterval: Double?

    @Option(
        name: .customLong("max-connections"),
        help: "Connections held at most, then 503 (default: the open-file limit less 64, or half of a small one).")
    var maxConnections: Int?

    @Option(
        name: .customLong("max-connections-per-source"),
        help: "Connections one source address may hold, then 503 (default 10000).")
    var maxConnectionsPerSource: Int?

    @Option(
        name: .customLong("grace"),
        help: "Seconds to let open tunnels finish on SIGTERM, while new ones are refused.")
    var grace: Double = 30

    @Option(
        name: .customLong("entra-authority"),
        help: "Accept Entra ID access tokens from this authority (default https://login.microsoftonline.com/).")
    var entraAuthority: String?

    @Option(name: .customLong("entra-tenant"), help: "The Entra tenant (id) whose tokens are accepted.")
    var entraTenant: String?

    @Option(
        name: .customLong("entra-principal"),
        help: "OBJECT_ID=RIGHTS[@ENTITY]: rights (Listen,Send,Manage) of an Entra principal, group or app role.")
    var entraPrincipals: [String] = []

    @OptionGroup var telemetry: TelemetryOptions

    func validate() throws {
        guard grace >= 0 && grace <= 86_400 else { throw ValidationError("--grace must be 0 to 86400 seconds") }
    }

    /// `--entra-*` over the file's `entra:` section.
    func applyEntra(to configuration: inout RelayConfiguration) throws {
        guard entraAuthority != nil || entraTenant != nil || !entraPrincipals.isEmpty else { return }
        guard let tenant = entraTenant ?? configuration.entra?.tenant else {
            throw ValidationError("--entra-authority and --entra-principal need --entra-tenant")
        }
        var entra = configuration.entra ?? EntraConfiguration(tenant: tenant)
        entra.tenant = tenant
        if let entraAuthority { entra.authority = entraAuthority }
        for text in entraPrincipals {
            do {
                entra.principals.append(try EntraPrincipalRule(parsing: text))
            } catch {
                throw ValidationError(error.description)
            }
        }
        configuration.entra = entra
    }

    /// The configuration from `--config` and the flags. `reloading`: read again on SIGHUP, where a file caught
    /// half-written (an editor or `cp` still writing it) must not be applied: it must end with a newline.
    func makeConfiguration(reloading: Bool = false) throws -> RelayConfiguration {
        var configuration = RelayConfiguration()
        if let config {
            let text: String
            do {
                text = try String(contentsOfFile: config, encoding: .utf8)
            } catch {
                throw ValidationError("cannot read --config '\(config)': \(ErrorWords.describe(error))")
            }
            if reloading && !text.hasSuffix("\n") {
                throw ValidationError(
                    "--config '\(config)' does not end with a newline, as a file still being written would not; configuration not reloaded (write the new file beside it and rename it over the old one)"
                )
            }
            do {
                configuration = try RelayConfiguration.parse(text)
            } catch {
                throw ValidationError("--config '\(config)': \(error.description)")
            }
        }
        if let listen { configuration.listen = listen }
        if let publicURL { configuration.publicURL = publicURL }
        switch (cert, key) {
        case (let cert?, let key?): configuration.tls = TLSFiles(certificate: cert, key: key)
        case (nil, nil): break
        default: throw ValidationError("--cert and --key go together")
        }
        switch (sasKeyName, sasKey) {
        case (let name?, let key?):
            configuration.namespaceRules.append(
                AuthorizationRule(keyName: name, primaryKey: key, rights: [.listen, .send, .manage]))
        case (nil, nil): break
        default: throw ValidationError("--sas-key-name and --sas-key go together")
        }
        for name in hybridConnections
        where !configuration.hybridConnections.contains(where: { $0.name.lowercased() == name.lowercased() }) {
            configuration.hybridConnections.append(HybridConnectionConfiguration(name: name))
        }
        for name in anonymousSenders {
            if let index = configuration.hybridConnections.firstIndex(where: {
                $0.name.lowercased() == name.lowercased()
            }) {
                configuration.hybridConnections[index].requiresClientAuthorization = false
            } else {
                configuration.hybridConnections.append(
                    HybridConnectionConfiguration(name: name, requiresClientAuthorization: false))
            }
        }
        if let acceptTimeout { configuration.limits.acceptTimeoutSeconds = acceptTimeout }
        if let pingInterval { configuration.limits.pingIntervalSeconds = pingInterval }
        if let maxConnections { configuration.limits.maxConnections = maxConnections }
        if let maxConnectionsPerSource { configuration.limits.maxConnectionsPerSource = maxConnectionsPerSource }
        try applyEntra(to: &configuration)
        if configuration.hybridConnections.isEmpty {
            throw ValidationError(
                "no hybrid connection configured: give --hybrid-connection NAME or a --config with hybridConnections")
        }
        do {
            try configuration.validate()
        } catch {
            throw ValidationError(error.description)
        }
        return configuration
    }

    func run() async throws {
        let configuration = try makeConfiguration()
        let session = try TelemetrySession(telemetry: telemetry, role: "relay", tracerLabel: "hyrelay.relay")
        let logger = Logger(label: "hyrelay.relay")
        let metrics = session.metrics
        let files = OpenFiles.raiseToHardLimit()
        logger.info("open-file limit", metadata: ["soft": "\(files.soft)", "hard": "\(files.hard)"])
        let (server, side) = try await session.starting {
            let server = try await RelayServer.start(
                configuration: configuration, group: MultiThreadedEventLoopGroup.singleton, logger: logger,
                metrics: metrics, tracer: session.tracer)
            let side = try await telemetry.startServer(
                metrics: metrics, logger: logger, listeners: { [hub = server.hub] in hub.listenersInfo() }
            ) {
                server.hub.isDraining
                    ? (false, "relay draining") : (true, "relay listening on \(configuration.listen)")
            }
            return (server, side)
        }
        try await serveUntilTerminated(server, grace: grace, session: session, side: side, logger: logger) {
            if let config {
                // A file still being written changes under us: read it twice, 200 ms apart.
                let first = try? String(contentsOfFile: config, encoding: .utf8)
                try await Task.sleep(for: .milliseconds(200))
                guard first == (try? String(contentsOfFile: config, encoding: .utf8)) else {
                    throw ValidationError(
                        "--config '\(config)' changed while it was read (still being written?); configuration not reloaded: send SIGHUP again once it is written"
                    )
                }
            }
            let (added, removed, changed) = try server.reload(try makeConfiguration(reloading: true))
            return [
                "changed": "\(changed.isEmpty ? "unchanged" : changed.joined(separator: ","))",
                "hybrid_connections_added": "\(added.joined(separator: ","))",
                "hybrid_connections_removed": "\(removed.joined(separator: ","))",
                "tls": "\(configuration.tls == nil ? "off" : "certificate and key read again")",
            ]
        }
    }
}

struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a SAS token for a resource URI, or (--entra) the Entra ID token an agent would send.",
        discussion: """
            Example: hyrelay token --resource http://127.0.0.1:9350/hc1 --key-name root --key SECRET --ttl 3600
            With --entra it signs in as the agents do (AZURE_* variables, workload or managed identity) and prints the
            access token for https://relay.azure.net, for debugging sign-in.
            """
    )

    @Option(name: .long, help: "Resource (audience) URI, e.g. http://HOST/ENTITY or sb://NAMESPACE/ENTITY.")
    var resource: String?

    @Option(name: .customLong("key-name"), help: "Shared access key name.")
    var keyName: String?

    @Option(name: .long, help: "Shared access key.")
    var key: String?

    @Option(name: .long, help: "Lifetime in seconds.")
    var ttl: Int = 3600

    @Flag(name: .long, help: "Sign in with Entra ID as the agents do and print that token instead.")
    var entra = false

    func run() async throws {
        if entra {
            let token = try EntraSignIn.token(environment: ProcessInfo.processInfo.environment)
            try await EntraSignIn.start()
            print(token.token?.token ?? "")
            return
        }
        guard let resource, let keyName, let key else {
            throw ValidationError("give --resource, --key-name and --key (or --entra)")
        }
        guard ttl > 0, ttl <= 10 * 365 * 86_400 else { throw ValidationError("--ttl must be 1 to 315360000 seconds") }
        let expiry = Int64(Date().timeIntervalSince1970) + Int64(ttl)
        print(SharedAccessSignature.make(resource: resource, keyName: keyName, key: key, expiry: expiry))
    }
}
