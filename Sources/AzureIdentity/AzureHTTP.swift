import AsyncHTTPClient
import HybridConnections
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import RelayTelemetry

/// A response as the exporter and the credentials need it: status, headers, and a bounded body.
public struct AzureResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(String, String)], body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public var bodyText: String { String(decoding: body, as: UTF8.self) }

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// Why a token, a key set or an HTTP exchange with an Azure endpoint failed.
public enum IdentityError: Error, Equatable, CustomStringConvertible {
    case invalidURL(String, reason: String)
    case transport(String)
    case credential(String)
    case configuration(String)

    public var description: String {
        switch self {
        case .invalidURL(let url, let reason): return "'\(url)': \(reason)"
        case .transport(let cause): return "transport: \(cause)"
        case .credential(let cause): return "credential: \(cause)"
        case .configuration(let cause): return cause
        }
    }
}

/// The HTTP client for Azure endpoints (token services, key sets, ingestion): no redirects (a bearer token must not follow one to
/// another host), bounded time per request, and plain `http` only where it cannot leave the machine.
public final class AzureHTTP: Sendable {
    let client: HTTPClient
    let requestTimeout: TimeAmount

    public init(requestTimeoutSeconds: Double = 30, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(10), read: .seconds(Int64(max(1, requestTimeoutSeconds)))))
        configuration.httpVersion = .http1Only
        client = HTTPClient(eventLoopGroup: group, configuration: configuration)
        requestTimeout = .milliseconds(Int64(requestTimeoutSeconds * 1000))
    }

    public func shutdown() async {
        try? await client.shutdown()
    }

    /// For a start-up that fails before the first request: a client must be shut down before it is dropped.
    public func shutdownBeforeUse() {
        try? client.syncShutdown()
    }

    public func send(
        method: HTTPMethod, url: String, headers: [(String, String)], body: [UInt8]?, maxResponseBytes: Int = 1 << 20
    ) async throws(IdentityError) -> AzureResponse {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        do {
            let response = try await client.execute(request, timeout: requestTimeout)
            var buffer = try await response.body.collect(upTo: maxResponseBytes)
            return AzureResponse(
                status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) },
                body: buffer.readBytes(length: buffer.readableBytes) ?? [])
        } catch {
            throw .transport(ErrorWords.describe(error))
        }
    }

    /// Refuses URLs that would send a token or telemetry in clear text off the machine.
    /// `linkLocalHTTP` admits Azure's instance metadata service (169.254.169.254), which is plain http.
    /// The host checked is the one the URL really names: credentials before an `@` are refused outright (in
    /// `http://127.0.0.1:1@192.0.2.2/` the host is 192.0.2.2), and loopback means `localhost`, `[::1]` or an
    /// IPv4 address 127.x.y.z, not a name that starts with `127.`.
    public static func checkURL(_ url: String, linkLocalHTTP: Bool = false) throws(IdentityError) {
        let lower = url.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") {
            rest = lower.dropFirst(8)
        } else if lower.hasPrefix("http://") {
            rest = lower.dropFirst(7)
        } else {
            throw .invalidURL(RedactedURL.text(url), reason: "expected an https:// URL")
        }
        let shown = RedactedURL.text(url)
        let host = hostPart(rest)
        guard !host.isEmpty else { throw .invalidURL(shown, reason: "no host") }
        // After the host only `:port` may follow (`http://[::1]evil/` names no host a client agrees on).
        var afterHost = authority(rest)
        if let at = afterHost.lastIndex(of: "@") { afterHost = afterHost[afterHost.index(after: at)...] }
        let tail = afterHost.dropFirst(host.count)
        guard tail.isEmpty || (tail.first == ":" && tail.dropFirst().allSatisfy { $0.isASCII && $0.isNumber }) else {
            throw .invalidURL(shown, reason: "'\(tail)' after the host is not a port")
        }
        if lower.hasPrefix("http://") {
            let loopback = host == "localhost" || host == "[::1]" || ipv4(host)?.first == 127
            let linkLocal = ipv4(host).map { $0[0] == 169 && $0[1] == 254 } ?? false
            guard loopback || (linkLocalHTTP && linkLocal) else {
                throw .invalidURL(shown, reason: "plain http is allowed only on loopback (not \(host)); use https")
            }
        }
        guard !authority(rest).contains("@") else {
            throw .invalidURL(shown, reason: "credentials in the URL (before '@') are not accepted")
        }
    }

    /// The host of an `http(s)://` URL, lower-cased; nil for anything else.
    public static func host(of url: String) -> String? {
        let lower = url.lowercased()
        guard let scheme = ["https://", "http://"].first(where: lower.hasPrefix) else { return nil }
        let host = hostPart(lower.dropFirst(scheme.count))
        return host.isEmpty ? nil : host
    }

    private static func authority(_ rest: Substring) -> Substring {
        rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
    }

    private static func hostPart(_ rest: Substring) -> String {
        var authority = authority(rest)
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        if authority.hasPrefix("[") { return String(authority.prefix { $0 != "]" }) + "]" }
        return String(authority.prefix { $0 != ":" })
    }

    /// The four octets of a dotted IPv4 address, or nil.
    private static func ipv4(_ host: String) -> [Int]? {
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var octets: [Int] = []
        for part in parts {
            guard (1...3).contains(part.utf8.count), part.utf8.allSatisfy({ (48...57).contains($0) }),
                let value = Int(part),
                value <= 255
            else { return nil }
            octets.append(value)
        }
        return octets
    }
}
