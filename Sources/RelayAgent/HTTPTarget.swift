/// Where an edge's HTTP forwarder (azbridge `-H`, YAML `Http: true`) sends the relay's HTTP-mode requests:
/// an `http` or `https` origin and a path prefix put before every request's path.
public struct HTTPTarget: Hashable, Sendable {
    public var secure: Bool
    public var host: String
    public var port: Int
    /// Put before each request's path; empty, or `/segment[/…]` without a trailing slash.
    public var pathPrefix: String
    /// Skip verifying the target's certificate (YAML `Insecure`), for self-signed services inside the network.
    public var insecure: Bool

    public init(secure: Bool, host: String, port: Int? = nil, pathPrefix: String = "", insecure: Bool = false) {
        self.secure = secure
        self.host = host
        self.port = port ?? (secure ? 443 : 80)
        self.pathPrefix = pathPrefix
        self.insecure = insecure
    }

    public var scheme: String { secure ? "https" : "http" }

    /// The `Host` header for the target: an IPv6 address in brackets, the port only when not the default.
    public var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (secure ? 443 : 80) ? name : "\(name):\(port)"
    }

    /// `http[s]://host[:port][/prefix]`, for logs and spans.
    public var origin: String { "\(scheme)://\(hostHeader)\(pathPrefix)" }
}

extension ForwardSpec {
    /// `-H relay_name:{http|https}/host[/path…][:port]` (the port, after the path as azbridge has it, or after
    /// the host; 80 or 443 when absent); the relay name precedes the first `:`. The binding's port name is the scheme, as azbridge's YAML has it.
    public static func parseHTTP(_ spec: String, insecure: Bool = false) throws(ForwardSpecError) -> RemoteForward {
        let form = "expected relay_name:{http|https}/host[/path][:port]"
        guard let colon = spec.firstIndex(of: ":") else { throw ForwardSpecError("'\(spec)': \(form)") }
        let relayName = String(spec[..<colon])
        guard isValidRelayName(relayName) else {
            throw ForwardSpecError("'\(spec)': invalid relay name '\(relayName)'")
        }
        let rest = spec[spec.index(after: colon)...]
        guard let slash = rest.firstIndex(of: "/") else { throw ForwardSpecError("'\(spec)': \(form)") }
        let scheme = rest[..<slash].lowercased()
        guard scheme == "http" || scheme == "https" else {
            throw ForwardSpecError("'\(spec)': the scheme is http or https, not '\(rest[..<slash])'")
        }
        var location = rest[rest.index(after: slash)...]
        var port: Int?
        // azbridge puts the port last (`host/path:port`); `host:port/path` is read too. A colon inside an IPv6
        // literal's brackets is neither.
        if let last = location.lastIndex(of: ":"), !location[last...].contains("]"), !location[last...].contains("/") {
            port = try portNumber(location[location.index(after: last)...], in: spec)
            location = location[..<last]
        }
        let hostEnd = location.hasPrefix("[") ? location.firstIndex(of: "]").map(location.index(after:)) : nil
        let pathStart = location[(hostEnd ?? location.startIndex)...].firstIndex(of: "/") ?? location.endIndex
        var host = location[..<pathStart]
        if port == nil, let colon = host.lastIndex(of: ":"), !host[colon...].contains("]") {
            port = try portNumber(host[host.index(after: colon)...], in: spec)
            host = host[..<colon]
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty, !host.contains("/") else { throw ForwardSpecError("'\(spec)': empty host; \(form)") }
        let prefix = try pathPrefix(location[pathStart...], in: spec)
        let target = HTTPTarget(
            secure: scheme == "https", host: String(host), port: port, pathPrefix: prefix, insecure: insecure)
        return RemoteForward(relayName: relayName, bindings: [RemoteBinding(http: target)])
    }

    private static func portNumber(_ digits: Substring, in spec: String) throws(ForwardSpecError) -> Int {
        guard let number = Int(digits), (1...65535).contains(number) else {
            throw ForwardSpecError("'\(spec)': '\(digits)' is not a port number (1-65535)")
        }
        return number
    }

    /// A path prefix as given (`/api/v1/`), checked and without its trailing slash (`/api/v1`).
    static func pathPrefix(_ path: Substring, in spec: String) throws(ForwardSpecError) -> String {
        guard !path.isEmpty else { return "" }
        let allowed = "/-._~!$&'()*+,;=:@%"
        guard path.hasPrefix("/"),
            path.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || allowed.contains($0)) })
        else {
            throw ForwardSpecError("'\(spec)': the path '\(path)' may only use URL path characters (no ?, # or spaces)")
        }
        var prefix = path
        while prefix.hasSuffix("/") { prefix = prefix.dropLast() }
        return String(prefix)
    }
}
