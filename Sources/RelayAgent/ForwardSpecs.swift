/// A local port or Unix socket the client agent binds; each accepted connection becomes a sender to `relayName`.
public struct LocalBinding: Hashable, Sendable {
    public var bindAddress: String
    public var port: Int
    /// A Unix socket to bind instead of a TCP port (absolute path).
    public var socketPath: String?
    /// A UDP port (azbridge's `U` suffix): datagrams, one tunnel per source address.
    public var udp = false
    /// Named in the preamble; azbridge's default is the port number as text, with `U` for UDP (a socket's file
    /// name here).
    public var portName: String

    public init(bindAddress: String = "127.0.0.1", port: Int, portName: String? = nil, udp: Bool = false) {
        self.bindAddress = bindAddress
        self.port = port
        self.udp = udp
        self.portName = portName ?? (udp ? "\(port)U" : String(port))
    }

    public init(socketPath: String, portName: String? = nil) {
        bindAddress = ""
        port = 0
        self.socketPath = socketPath
        self.portName = portName ?? ForwardSpec.fileName(socketPath)
    }

    /// `host:port` or `unix:PATH`, for logs and spans.
    public var endpoint: String {
        if let socketPath { return "unix:\(socketPath)" }
        let address = bindAddress.contains(":") ? "[\(bindAddress)]:\(port)" : "\(bindAddress):\(port)"
        return udp ? "udp:\(address)" : address
    }
}

/// What the edge agent dials for a port name (a TCP host and port, a UDP target or a Unix socket), or where it
/// forwards the relay's HTTP-mode requests.
public struct RemoteBinding: Hashable, Sendable {
    public var portName: String
    public var host: String
    public var port: Int
    /// A Unix socket to connect to instead of a TCP target (absolute path).
    public var socketPath: String?
    /// A UDP target: the tunnel's datagrams go to it, its answers come back.
    public var udp = false
    /// An HTTP forwarder: it answers HTTP-mode requests, not tunnels.
    public var http: HTTPTarget?

    public init(portName: String? = nil, host: String = "localhost", port: Int, udp: Bool = false) {
        self.portName = portName ?? (udp ? "\(port)U" : String(port))
        self.host = host
        self.port = port
        self.udp = udp
    }

    public init(portName: String? = nil, socketPath: String) {
        self.portName = portName ?? ForwardSpec.fileName(socketPath)
        host = ""
        port = 0
        self.socketPath = socketPath
    }

    /// Forwards HTTP-mode requests to `http`; its port name is the scheme unless given.
    public init(portName: String? = nil, http: HTTPTarget) {
        self.portName = portName ?? http.scheme
        host = http.host
        port = http.port
        self.http = http
    }

    /// `host:port`, `udp:host:port`, `unix:PATH` or the HTTP origin, for logs and spans.
    public var target: String {
        if let http { return http.origin }
        return socketPath.map { "unix:\($0)" } ?? (udp ? "udp:\(host):\(port)" : "\(host):\(port)")
    }
}

/// `-L` / `LocalForward`: the public side of one hybrid connection.
public struct LocalForward: Equatable, Sendable {
    public var relayName: String
    public var bindings: [LocalBinding]
    public var connectionString: String?
    /// Connect with no token (the entity must allow anonymous senders).
    public var noAuthentication: Bool

    public init(
        relayName: String, bindings: [LocalBinding], connectionString: String? = nil, noAuthentication: Bool = false
    ) {
        self.relayName = relayName
        self.bindings = bindings
        self.connectionString = connectionString
        self.noAuthentication = noAuthentication
    }
}

/// `-T` / `RemoteForward`: the firewalled side of one hybrid connection.
public struct RemoteForward: Hashable, Sendable {
    public var relayName: String
    public var bindings: [RemoteBinding]
    public var connectionString: String?

    public init(relayName: String, bindings: [RemoteBinding], connectionString: String? = nil) {
        self.relayName = relayName
        self.bindings = bindings
        self.connectionString = connectionString
    }

    /// Entries for the same hybrid connection (two `-T`, two `RemoteForward`, or one of each) as one
    /// listener with every binding: two listeners that each knew half the port names would refuse about half
    /// of all tunnels. Names compare case-insensitively, as entity names do. Refused: a port name given twice
    /// for one relay, and one relay given with two different connection strings.
    public static func merged(_ forwards: [RemoteForward]) throws(ForwardSpecError) -> [RemoteForward] {
        var result: [RemoteForward] = []
        for forward in forwards {
            guard let index = result.firstIndex(where: { $0.relayName.lowercased() == forward.relayName.lowercased() })
            else {
                result.append(forward)
                continue
            }
            guard result[index].connectionString == forward.connectionString else {
                throw ForwardSpecError(
                    "relay '\(forward.relayName)' is forwarded twice with different connection strings")
            }
            for binding in forward.bindings {
                guard binding.http == nil || result[index].httpBinding == nil else {
                    throw ForwardSpecError(
                        "relay '\(forward.relayName)' has two HTTP targets; one edge listener forwards HTTP to one")
                }
                guard !result[index].bindings.contains(where: { $0.portName == binding.portName }) else {
                    throw ForwardSpecError(
                        "relay '\(forward.relayName)' names port '\(binding.portName)' twice; give each target its own port name"
                    )
                }
                result[index].bindings.append(binding)
            }
        }
        return result
    }

    /// The binding for a preamble port name. As in azbridge, a single binding with a default (numeric) name
    /// takes any port name: the client's port number need not be the target's (`53U` for UDP).
    /// An HTTP forwarder answers requests, never a tunnel's preamble.
    public func binding(forPortName name: String) -> RemoteBinding? {
        let tunnels = bindings.filter { $0.http == nil }
        if let exact = tunnels.first(where: { $0.portName == name }) { return exact }
        guard tunnels.count == 1 else { return nil }
        let only = tunnels[0].portName
        return Int(only.hasSuffix("U") ? String(only.dropLast()) : only) != nil ? tunnels[0] : nil
    }

    /// The binding that answers this relay's HTTP-mode requests, if it has one.
    public var httpBinding: RemoteBinding? { bindings.first { $0.http != nil } }
}

public struct ForwardSpecError: Error, Equatable, Sendable, CustomStringConvertible {
    public var description: String

    public init(_ description: String) { self.description = description }
}

public enum ForwardSpec {
    /// Relay names as azbridge allows them: `^[0-9A-Za-z/_\-\.]+$`.
    public static func isValidRelayName(_ name: String) -> Bool {
        !name.isEmpty && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "/_-.".contains($0)) }
    }

    /// A port number, with azbridge's `U` suffix for UDP.
    static func port(_ text: Substring, in spec: String) throws(ForwardSpecError) -> (port: Int, udp: Bool) {
        let udp = text.hasSuffix("U") || text.hasSuffix("u")
        guard let port = Int(udp ? text.dropLast() : text), (1...65535).contains(port) else {
            throw ForwardSpecError(
                "'\(spec)': '\(text)' is not a port number (1-65535, U for UDP), nor a Unix socket (an absolute path)")
        }
        return (port, udp)
    }

    /// The last component of a socket path: a socket binding's port name when none is given.
    static func fileName(_ path: String) -> String {
        String(path.split(separator: "/").last ?? Substring(path))
    }

    /// Checks a Unix socket path: absolute, and short enough for `sockaddr_un` (107 bytes and a NUL).
    static func socketPath(_ path: Substring, in spec: String) throws(ForwardSpecError) -> String {
        guard path.hasPrefix("/"), path.count > 1 else {
            throw ForwardSpecError("'\(spec)': a Unix socket is an absolute path, not '\(path)'")
        }
        guard path.utf8.count <= 107 else {
            throw ForwardSpecError("'\(spec)': the socket path is \(path.utf8.count) bytes; Unix sockets allow 107")
        }
        return String(path)
    }

    /// `-L [bind_address:]port[/port_name]{;...}:relay_name` or `-L /socket/path/port_name:relay_name` (a Unix
    /// socket: its last path component is the port name, as azbridge's `local_socket[/port_name]` needs one);
    /// the relay name follows the last `:`.
    public static func parseLocal(_ spec: String) throws(ForwardSpecError) -> LocalForward {
        guard let colon = spec.lastIndex(of: ":") else {
            throw ForwardSpecError("'\(spec)': expected [bind_address:]port[/port_name]{;...}:relay_name")
        }
        let relayName = String(spec[spec.index(after: colon)...])
        guard isValidRelayName(relayName) else {
            throw ForwardSpecError("'\(spec)': invalid relay name '\(relayName)'")
        }
        var bindings: [LocalBinding] = []
        for part in spec[..<colon].split(separator: ";", omittingEmptySubsequences: false) {
            if part.hasPrefix("/") {
                let slash = part.lastIndex(of: "/")!
                let name = part[part.index(after: slash)...]
                guard !name.isEmpty, slash != part.startIndex else {
                    throw ForwardSpecError(
                        "'\(spec)': a Unix socket binding is /socket/path/port_name (the port name comes last)")
                }
                bindings.append(
                    LocalBinding(socketPath: try socketPath(part[..<slash], in: spec), portName: String(name)))
                continue
            }
            var rest = part
            var portName: String?
            if let slash = rest.lastIndex(of: "/") {
                portName = String(rest[rest.index(after: slash)...])
                rest = rest[..<slash]
                guard !(portName ?? "").isEmpty else { throw ForwardSpecError("'\(spec)': empty port name") }
            }
            var address = "127.0.0.1"
            var portText = rest
            if let separator = rest.lastIndex(of: ":") {
                address = String(rest[..<separator])
                portText = rest[rest.index(after: separator)...]
                if address.hasPrefix("[") && address.hasSuffix("]") { address = String(address.dropFirst().dropLast()) }
                if address == "localhost" { address = "127.0.0.1" }
                guard !address.isEmpty else { throw ForwardSpecError("'\(spec)': empty bind address") }
            }
            let (number, udp) = try port(portText, in: spec)
            bindings.append(LocalBinding(bindAddress: address, port: number, portName: portName, udp: udp))
        }
        return LocalForward(relayName: relayName, bindings: bindings)
    }

    /// `-T relay_name:[port_name/]host:port{;...}`, `relay_name:[port_name/]port` or
    /// `relay_name:[port_name/]/socket/path` (a Unix socket; without a port name, its file name); the relay name
    /// precedes the first `:`.
    public static func parseRemote(_ spec: String) throws(ForwardSpecError) -> RemoteForward {
        guard let colon = spec.firstIndex(of: ":") else {
            throw ForwardSpecError("'\(spec)': expected relay_name:[port_name/]host:port{;...}")
        }
        let relayName = String(spec[..<colon])
        guard isValidRelayName(relayName) else {
            throw ForwardSpecError("'\(spec)': invalid relay name '\(relayName)'")
        }
        var bindings: [RemoteBinding] = []
        for part in spec[spec.index(after: colon)...].split(separator: ";", omittingEmptySubsequences: false) {
            var rest = part
            var portName: String?
            if !rest.hasPrefix("/"), let slash = rest.firstIndex(of: "/") {
                portName = String(rest[..<slash])
                rest = rest[rest.index(after: slash)...]
                guard !(portName ?? "").isEmpty else { throw ForwardSpecError("'\(spec)': empty port name") }
            }
            if rest.hasPrefix("/") {
                bindings.append(RemoteBinding(portName: portName, socketPath: try socketPath(rest, in: spec)))
                continue
            }
            var host = "localhost"
            var portText = rest
            if let separator = rest.lastIndex(of: ":") {
                host = String(rest[..<separator])
                portText = rest[rest.index(after: separator)...]
                if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
                guard !host.isEmpty else { throw ForwardSpecError("'\(spec)': empty host") }
            }
            let (number, udp) = try port(portText, in: spec)
            bindings.append(RemoteBinding(portName: portName, host: host, port: number, udp: udp))
        }
        let names = bindings.map(\.portName)
        guard Set(names).count == names.count else { throw ForwardSpecError("'\(spec)': a port name appears twice") }
        return RemoteForward(relayName: relayName, bindings: bindings)
    }
}

/// The reconnect schedule of the .NET listener: 0, 1, 2, 5, 10, 30, 30, … seconds, plus up to 20 %
/// jitter so a fleet does not reconnect in step.
public struct ReconnectBackoff: Sendable {
    public static let schedule: [Double] = [0, 1, 2, 5, 10, 30]
    private(set) var attempt = 0

    public init() {}

    public mutating func nextDelay(using generator: inout some RandomNumberGenerator) -> Double {
        let base = Self.schedule[min(attempt, Self.schedule.count - 1)]
        attempt += 1
        return base + base * Double.random(in: 0...0.2, using: &generator)
    }

    /// Called once the channel is online again.
    public mutating func reset() { attempt = 0 }
}
