import HybridConnections
import NIOCore
import NIOHTTP1
import NIOSSL
import RelayIO

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// What a relay said about one hybrid connection when asked at start-up.
public enum ProbeOutcome: Equatable, Sendable, CustomStringConvertible {
    /// The entity exists and took our credentials.
    case ready(listeners: Int)
    /// The relay answered but would not say with these rights (Azure may want Manage): not a failure.
    case unverified(String)
    case missingEntity
    case credentialsRefused(String)
    case unreachable(String)

    /// Whether the agent can expect its tunnels to work.
    public var isReady: Bool {
        switch self {
        case .ready, .unverified: return true
        case .missingEntity, .credentialsRefused, .unreachable: return false
        }
    }

    /// Whether to ask again at the short interval: a working relay, to notice when it stops answering, and one
    /// that did not answer. A refusal or a missing entity takes an operator, and each refused ask is an
    /// authentication failure at the relay.
    public var asksAgainSoon: Bool {
        switch self {
        case .ready, .unreachable: return true
        case .unverified, .missingEntity, .credentialsRefused: return false
        }
    }

    public var description: String {
        switch self {
        case .ready(let listeners): return "the hybrid connection exists, \(listeners) listener(s) online"
        case .unverified(let why): return "the relay answers; the hybrid connection could not be checked: \(why)"
        case .missingEntity: return "the relay has no such hybrid connection"
        case .credentialsRefused(let why): return "the relay refused the credentials: \(why)"
        case .unreachable(let why): return "cannot reach the relay: \(why)"
        }
    }

    /// Classifies the answer to a runtime-information query.
    public static func from(_ response: HTTPProbeResponse, relayName: String) -> ProbeOutcome {
        let detail = response.body.trimmingWhitespace().isEmpty ? response.reason : response.body.trimmingWhitespace()
        switch response.status {
        case 200:
            if response.headers.first(name: "content-type")?.lowercased().contains("type=feed") == true {
                return .missingEntity
            }
            guard let information = RuntimeInformation(entry: response.body, path: relayName) else {
                return .unverified("an answer that is not a hybrid connection description")
            }
            return .ready(listeners: information.listenerCount)
        case 404: return .missingEntity
        case 403 where detail.contains("claim(s) are required"): return .unverified("these rights may not read it")
        case 401, 403: return .credentialsRefused(String(detail.prefix(300)))
        default: return .unverified("HTTP \(response.status) \(String(detail.prefix(200)))")
        }
    }
}

/// Asks a relay about one hybrid connection with the agent's own credentials (a runtime-information query,
/// as the .NET SDK's `GetRuntimeInformationAsync`): no listener is disturbed and no tunnel is opened.
public enum RelayProbe {
    public static func probe(
        access: RelayAccess, relayName: String, tlsContext: NIOSSLContext?, group: any EventLoopGroup
    ) async -> ProbeOutcome {
        var url = access.base
        url.target = "/\(relayName)?api-version=\(RuntimeInformation.apiVersion)"
        var headers = HTTPHeaders()
        headers.add(name: "X-PROCESS-AT", value: "ServiceBus")
        if let token = access.token(relayName: relayName, now: Int64(Date().timeIntervalSince1970)) {
            headers.add(name: "Authorization", value: token.token)
        }
        do {
            let response = try await HTTPProbe.get(
                url, headers: headers, tlsContext: tlsContext, group: group, proxy: access.proxy
            ).get()
            return .from(response, relayName: relayName)
        } catch {
            return .unreachable(ConnectFailure(error, url: url).text)
        }
    }

    /// Opens a listener control channel and closes it again: the edge's own check, rights included.
    public static func probeListen(
        access: RelayAccess, relayName: String, tlsContext: NIOSSLContext?, group: any EventLoopGroup
    ) async -> ProbeOutcome {
        let url = access.url(
            relayName: relayName, query: "sb-hc-action=listen&sb-hc-id=\(UUID().uuidString.lowercased())")
        let (headers, _) = access.headers(relayName: relayName)
        do {
            let result = try await WebSocketClient.connect(
                to: url, headers: headers, tlsContext: tlsContext, group: group,
                connectTimeout: EdgeAgent.relayConnectTimeout, proxy: access.proxy
            ) { _ in }.get()
            switch result {
            case .upgraded(let channel, _):
                try? await channel.close()
                return .ready(listeners: 1)
            case .rejected(404, _, _): return .missingEntity
            case .rejected(let status, let reason, _) where status == 401 || status == 403:
                return .credentialsRefused("\(status) \(reason.prefix(300))")
            case .rejected(let status, let reason, _): return .unverified("HTTP \(status) \(reason.prefix(200))")
            }
        } catch {
            return .unreachable(ConnectFailure(error, url: url).text)
        }
    }
}
