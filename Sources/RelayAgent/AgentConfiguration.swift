import HybridConnections
import RelayIO
import Yams

/// A configuration problem, with the line of the YAML file it comes from when there is one.
public struct AgentConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    public var line: Int?
    public var message: String

    public init(line: Int?, _ message: String) {
        self.line = line
        self.message = message
    }

    public var description: String { line.map { "line \($0): \(message)" } ?? message }
}

/// What the agents run: azbridge's configuration model (reference §3.3), from its YAML schema and from
/// command-line flags.
public struct AgentConfiguration: Equatable, Sendable {
    public var connectionString: String?
    public var endpoint: String?
    public var sharedAccessKeyName: String?
    public var sharedAccessKey: String?
    public var sharedAccessSignature: String?
    public var bindAddress: String?
    public var keepAliveInterval: Double = 30
    public var exitOnForwardFailure = false
    /// `HttpProxy` (an extension of azbridge's schema): the HTTP proxy to reach the relay through.
    public var httpProxy: String?
    public var localForwards: [LocalForward] = []
    public var remoteForwards: [RemoteForward] = []

    public init() {}

    static let topLevelKeys: Set<String> = [
        "AddressFamily", "AzureRelayConnectionString", "AzureRelayEndpoint", "AzureRelaySharedAccessKeyName",
        "AzureRelaySharedAccessKey", "AzureRelaySharedAccessSignature", "BindAddress", "ClearAllForwardings",
        "ConnectionAttempts", "ConnectTimeout", "ExitOnForwardFailure", "GatewayPorts", "HttpProxy",
        "KeepAliveInterval",
        "LogLevel", "LogFileName", "LocalForward", "RemoteForward",
    ]
    static let localKeys: Set<String> = [
        "RelayName", "ConnectionString", "NoAuthentication", "BindAddress", "BindPort", "PortName", "BindLocalSocket",
        "HostName", "Bindings",
    ]
    static let localBindingKeys: Set<String> = [
        "BindAddress", "BindPort", "PortName", "BindLocalSocket", "HostName", "NoAuthentication",
    ]
    static let remoteKeys: Set<String> = [
        "RelayName", "ConnectionString", "Host", "HostPort", "PortName", "LocalSocket", "Http", "Insecure", "Path",
        "Bindings",
    ]
    static let remoteBindingKeys: Set<String> = [
        "Host", "HostPort", "PortName", "LocalSocket", "Http", "Insecure", "Path",
    ]

    /// Parses an azbridge YAML file. Keys are strict, as in azbridge: an unknown key is an error.
    public static func parse(yaml: String) throws(AgentConfigurationError) -> AgentConfiguration {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw AgentConfigurationError(line: Self.line(of: error), "not valid YAML: \(Self.problem(of: error))")
        } catch {
            throw AgentConfigurationError(line: nil, "not valid YAML: \(error)")
        }
        var configuration = AgentConfiguration()
        guard let root else { return configuration }
        let top = try Fields(root, allowed: topLevelKeys, what: "the configuration")
        configuration.connectionString = try top.string("AzureRelayConnectionString")
        configuration.endpoint = try top.string("AzureRelayEndpoint")
        configuration.sharedAccessKeyName = try top.string("AzureRelaySharedAccessKeyName")
        configuration.sharedAccessKey = try top.string("AzureRelaySharedAccessKey")
        configuration.sharedAccessSignature = try top.string("AzureRelaySharedAccessSignature")
        configuration.bindAddress = try top.string("BindAddress")
        // azbridge's log levels (NONE … DEBUG3) have no counterpart here: checked as text, then left to
        // --log-level, as docs/agents.md says.
        _ = try top.string("LogLevel")
        if let interval = try top.int("KeepAliveInterval") {
            guard interval > 0 else {
                throw AgentConfigurationError(line: top.line("KeepAliveInterval"), "KeepAliveInterval must be positive")
            }
            configuration.keepAliveInterval = Double(interval)
        }
        configuration.exitOnForwardFailure = try top.bool("ExitOnForwardFailure") ?? false
        configuration.httpProxy = try top.string("HttpProxy")
        if let proxy = configuration.httpProxy, OutboundProxy(url: proxy) == nil {
            throw AgentConfigurationError(
                line: top.line("HttpProxy"),
                "HttpProxy '\(RedactedURL.text(proxy))' is not http://[user:password@]host:port")
        }
        if let connectionString = configuration.connectionString {
            do {
                _ = try RelayConnectionString(parsing: connectionString)
            } catch {
                throw AgentConfigurationError(line: top.line("AzureRelayConnectionString"), error.description)
            }
        }
        for entry in try top.sequence("LocalForward") {
            configuration.localForwards.append(try parseLocal(entry, defaultBindAddress: configuration.bindAddress))
        }
        for entry in try top.sequence("RemoteForward") {
            let forward = try parseRemote(entry)
            do {
                configuration.remoteForwards = try RemoteForward.merged(configuration.remoteForwards + [forward])
            } catch {
                throw AgentConfigurationError(line: entry.mark?.line, error.description)
            }
        }
        return configuration
    }

    private static func parseLocal(
        _ node: Node, defaultBindAddress: String?
    ) throws(AgentConfigurationError) -> LocalForward {
        let fields = try Fields(node, allowed: localKeys, what: "a LocalForward entry")
        let relayName = try fields.relayName()
        func binding(_ fields: Fields) throws(AgentConfigurationError) -> LocalBinding? {
            if let path = try fields.string("BindLocalSocket") {
                return LocalBinding(
                    socketPath: try fields.socketPath(path, key: "BindLocalSocket"),
                    portName: try fields.string("PortName"))
            }
            guard let port = try fields.int("BindPort") else { return nil }
            // As in azbridge, a negative port is UDP.
            guard (1...65535).contains(abs(port)) else {
                throw AgentConfigurationError(
                    line: fields.line("BindPort"), "BindPort \(port) is not 1-65535 (negative for UDP)")
            }
            let address = try fields.string("BindAddress") ?? defaultBindAddress ?? "127.0.0.1"
            return LocalBinding(
                bindAddress: address == "localhost" ? "127.0.0.1" : address, port: abs(port),
                portName: try fields.string("PortName"), udp: port < 0)
        }
        let bindings = try fields.bindings(
            of: "LocalForward", relayName: relayName, portKey: "BindPort", allowed: localBindingKeys, parse: binding)
        return LocalForward(
            relayName: relayName, bindings: bindings, connectionString: try fields.string("ConnectionString"),
            noAuthentication: try fields.bool("NoAuthentication") ?? false)
    }

    private static func parseRemote(_ node: Node) throws(AgentConfigurationError) -> RemoteForward {
        let fields = try Fields(node, allowed: remoteKeys, what: "a RemoteForward entry")
        let relayName = try fields.relayName()
        func binding(_ fields: Fields) throws(AgentConfigurationError) -> RemoteBinding? {
            if try fields.bool("Http") == true { return try httpBinding(fields) }
            for key in ["Insecure", "Path"] where fields.has(key) {
                throw AgentConfigurationError(line: fields.line(key), "\(key) applies only to an Http binding")
            }
            if let path = try fields.string("LocalSocket") {
                return RemoteBinding(
                    portName: try fields.string("PortName"), socketPath: try fields.socketPath(path, key: "LocalSocket")
                )
            }
            guard let port = try fields.int("HostPort") else { return nil }
            // As in azbridge, a negative port is UDP.
            guard (1...65535).contains(abs(port)) else {
                throw AgentConfigurationError(
                    line: fields.line("HostPort"), "HostPort \(port) is not 1-65535 (negative for UDP)")
            }
            return RemoteBinding(
                portName: try fields.string("PortName"), host: try fields.string("Host") ?? "localhost",
                port: abs(port), udp: port < 0)
        }
        let bindings = try fields.bindings(
            of: "RemoteForward", relayName: relayName, portKey: "HostPort", allowed: remoteBindingKeys, parse: binding)
        let names = bindings.map(\.portName)
        guard Set(names).count == names.count else {
            throw AgentConfigurationError(line: fields.line, "RemoteForward '\(relayName)' names a port twice")
        }
        guard bindings.filter({ $0.http != nil }).count <= 1 else {
            throw AgentConfigurationError(
                line: fields.line,
                "RemoteForward '\(relayName)' has two HTTP targets; one listener forwards HTTP to one")
        }
        return RemoteForward(
            relayName: relayName, bindings: bindings, connectionString: try fields.string("ConnectionString"))
    }

    /// `Http: true`: `PortName` is the scheme (`http` or `https`), `Host` and `HostPort` the origin (the port
    /// defaulting to the scheme's), `Path` (an extension of azbridge's schema, which sets it only from `-H`) a
    /// path prefix, and `Insecure` skips checking the target's certificate.
    private static func httpBinding(_ fields: Fields) throws(AgentConfigurationError) -> RemoteBinding {
        let scheme = try fields.string("PortName")?.lowercased() ?? "http"
        guard scheme == "http" || scheme == "https" else {
            throw AgentConfigurationError(
                line: fields.line("PortName"), "an Http binding's PortName is http or https, not '\(scheme)'")
        }
        if fields.has("LocalSocket") {
            throw AgentConfigurationError(
                line: fields.line("LocalSocket"), "an Http binding forwards to Host, not a socket")
        }
        let port = try fields.int("HostPort")
        if let port, !(1...65535).contains(port) {
            throw AgentConfigurationError(line: fields.line("HostPort"), "HostPort \(port) is not 1-65535")
        }
        let path = try fields.string("Path") ?? ""
        let prefix: String
        do {
            prefix = try ForwardSpec.pathPrefix(Substring(path), in: "Path")
        } catch {
            throw AgentConfigurationError(line: fields.line("Path"), error.description)
        }
        let target = HTTPTarget(
            secure: scheme == "https", host: try fields.string("Host") ?? "localhost", port: port, pathPrefix: prefix,
            insecure: try fields.bool("Insecure") ?? false)
        return RemoteBinding(http: target)
    }

    private static func line(of error: YamlError) -> Int? {
        switch error {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _): return mark.line
        default: return nil
        }
    }

    private static func problem(of error: YamlError) -> String {
        switch error {
        case .scanner(_, let problem, _, _), .parser(_, let problem, _, _): return problem
        default: return "\(error)"
        }
    }
}

/// A YAML mapping whose keys are checked against an allowed set, with typed reads that name the line.
private struct Fields {
    let values: [String: Node]
    let keyLines: [String: Int]
    let line: Int?

    init(_ node: Node, allowed: Set<String>, what: String) throws(AgentConfigurationError) {
        line = node.mark?.line
        guard let mapping = node.mapping else { throw AgentConfigurationError(line: line, "\(what) must be a mapping") }
        var values: [String: Node] = [:]
        var keyLines: [String: Int] = [:]
        for (key, value) in mapping {
            guard let name = key.string else {
                throw AgentConfigurationError(line: key.mark?.line, "a key must be text")
            }
            guard allowed.contains(name) else {
                throw AgentConfigurationError(
                    line: key.mark?.line, "unknown key '\(name)' in \(what)\(Spelling.hint(for: name, among: allowed))")
            }
            values[name] = value
            keyLines[name] = key.mark?.line
        }
        self.values = values
        self.keyLines = keyLines
    }

    func has(_ key: String) -> Bool { values[key] != nil }

    func line(_ key: String) -> Int? { keyLines[key] ?? line }

    func string(_ key: String) throws(AgentConfigurationError) -> String? {
        guard let node = values[key] else { return nil }
        guard let scalar = node.scalar else {
            throw AgentConfigurationError(line: line(key), "\(key) must be a single value")
        }
        return scalar.string
    }

    func int(_ key: String) throws(AgentConfigurationError) -> Int? {
        guard let node = values[key] else { return nil }
        guard let value = node.int else {
            throw AgentConfigurationError(line: line(key), "\(key) must be a whole number")
        }
        return value
    }

    func bool(_ key: String) throws(AgentConfigurationError) -> Bool? {
        guard let node = values[key] else { return nil }
        guard let value = node.bool else {
            throw AgentConfigurationError(line: line(key), "\(key) must be true or false")
        }
        return value
    }

    func sequence(_ key: String) throws(AgentConfigurationError) -> [Node] {
        guard let node = values[key] else { return [] }
        guard let sequence = node.sequence else {
            throw AgentConfigurationError(line: line(key), "\(key) must be a list")
        }
        return Array(sequence)
    }

    /// The entry's own binding (its shorthand keys) followed by those under `Bindings`; at least one.
    func bindings<Binding>(
        of kind: String, relayName: String, portKey: String, allowed: Set<String>,
        parse: (Fields) throws(AgentConfigurationError) -> Binding?
    ) throws(AgentConfigurationError) -> [Binding] {
        var bindings: [Binding] = []
        if let single = try parse(self) { bindings.append(single) }
        for entry in try sequence("Bindings") {
            let entryFields = try Fields(entry, allowed: allowed, what: "a \(kind) binding")
            guard let parsed = try parse(entryFields) else {
                throw AgentConfigurationError(line: entryFields.line, "a \(kind) binding needs \(portKey) or a socket")
            }
            bindings.append(parsed)
        }
        guard !bindings.isEmpty else {
            throw AgentConfigurationError(
                line: line, "\(kind) '\(relayName)' has no \(portKey), no socket and no Bindings")
        }
        return bindings
    }

    /// A Unix socket path under `key`, checked as `-L`/`-T` check theirs.
    func socketPath(_ path: String, key: String) throws(AgentConfigurationError) -> String {
        do {
            return try ForwardSpec.socketPath(Substring(path), in: key)
        } catch {
            throw AgentConfigurationError(line: line(key), error.description)
        }
    }

    func relayName() throws(AgentConfigurationError) -> String {
        guard let name = try string("RelayName") else {
            throw AgentConfigurationError(line: line, "RelayName is required")
        }
        guard ForwardSpec.isValidRelayName(name) else {
            throw AgentConfigurationError(
                line: line("RelayName"), "RelayName '\(name)' may only use A-Z a-z 0-9 / _ - .")
        }
        return name
    }
}
