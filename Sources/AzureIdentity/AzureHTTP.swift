import AsyncHTTPClient
import HybridConnections
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

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
            throw .transport("\(error)")
        }
    }

    /// Refuses URLs that would send a token or telemetry in clear text off the machine.
    /// `linkLocalHTTP` admits Azure's instance metadata service (169.254.169.254), which is plain http.
    public static func checkURL(_ url: String, linkLocalHTTP: Bool = false) throws(IdentityError) {
        let lower = url.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") {
            rest = lower.dropFirst(8)
        } else if lower.hasPrefix("http://") {
            rest = lower.dropFirst(7)
            let host = hostPart(rest)
            let loopback = host == "localhost" || host.hasPrefix("127.") || host == "[::1]"
            guard loopback || (linkLocalHTTP && host.hasPrefix("169.254.")) else {
                throw .invalidURL(url, reason: "plain http is allowed only on loopback; use https")
            }
        } else {
            throw .invalidURL(url, reason: "expected an https:// URL")
        }
        guard !hostPart(rest).isEmpty else { throw .invalidURL(url, reason: "no host") }
    }

    /// The host of an `http(s)://` URL, lower-cased; nil for anything else.
    public static func host(of url: String) -> String? {
        let lower = url.lowercased()
        guard let scheme = ["https://", "http://"].first(where: lower.hasPrefix) else { return nil }
        let host = hostPart(lower.dropFirst(scheme.count))
        return host.isEmpty ? nil : host
    }

    private static func hostPart(_ rest: Substring) -> String {
        let authority = rest.prefix { $0 != "/" && $0 != "?" }
        if authority.hasPrefix("[") { return String(authority.prefix { $0 != "]" }) + "]" }
        return String(authority.prefix { $0 != ":" })
    }
}
