import HybridConnections
import NIOConcurrencyHelpers
import Synchronization

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// One open tunnel as `/v1/tunnels` shows it. Byte counts are added where the metrics are (once per read
/// burst, never per frame), so the live view costs two atomic adds per burst.
public final class LiveTunnel: Sendable {
    struct Details {
        var traceID: String
        var peer: String
        var portName: String
        var state: String
    }

    public let id: String
    public let entity: String
    /// Unix seconds.
    public let openedAt: Double
    private let details: NIOLockedValueBox<Details>
    private let up = Synchronization.Atomic<Int64>(0)
    private let down = Synchronization.Atomic<Int64>(0)
    private let lastActivityMilliseconds: Synchronization.Atomic<Int64>

    public init(id: String, entity: String, traceID: String, peer: String, portName: String = "", state: String) {
        self.id = id
        self.entity = entity
        let now = Date().timeIntervalSince1970
        openedAt = now
        details = NIOLockedValueBox(Details(traceID: traceID, peer: peer, portName: portName, state: state))
        lastActivityMilliseconds = Synchronization.Atomic(Int64(now * 1000))
    }

    /// Bytes that moved in one read burst: up (toward the service) and down (toward the device).
    public func count(up: Int = 0, down: Int = 0) {
        if up > 0 { self.up.wrappingAdd(Int64(up), ordering: .relaxed) }
        if down > 0 { self.down.wrappingAdd(Int64(down), ordering: .relaxed) }
        touch()
    }

    private func touch() {
        lastActivityMilliseconds.store(Int64(Date().timeIntervalSince1970 * 1000), ordering: .relaxed)
    }

    public func update(state: String? = nil, traceID: String? = nil, peer: String? = nil, portName: String? = nil) {
        details.withLockedValue { details in
            if let state { details.state = state }
            if let traceID { details.traceID = traceID }
            if let peer { details.peer = peer }
            if let portName { details.portName = portName }
        }
    }

    public var bytesUp: Int64 { up.load(ordering: .relaxed) }
    public var bytesDown: Int64 { down.load(ordering: .relaxed) }

    /// The tunnel as the inspection API writes it.
    public var info: LiveTunnelInfo {
        let details = self.details.withLockedValue { $0 }
        return LiveTunnelInfo(
            id: id, traceId: details.traceID, entity: entity, portName: details.portName, peer: details.peer,
            state: details.state, openedAt: JSONText.timestamp(Date(timeIntervalSince1970: openedAt)),
            bytesUp: bytesUp, bytesDown: bytesDown,
            lastActivity: JSONText.timestamp(
                Date(timeIntervalSince1970: Double(lastActivityMilliseconds.load(ordering: .relaxed)) / 1000)))
    }
}

/// `GET /v1/tunnels`' items.
public struct LiveTunnelInfo: Codable, Sendable, Equatable {
    public var id: String
    public var traceId: String
    public var entity: String
    public var portName: String
    public var peer: String
    public var state: String
    public var openedAt: String
    public var bytesUp: Int64
    public var bytesDown: Int64
    public var lastActivity: String
}

/// `GET /v1/listeners`' items (the relay's registered control channels).
public struct LiveListenerInfo: Codable, Sendable, Equatable {
    public var entity: String
    public var id: String
    public var agent: String
    public var host: String
    public var version: String
    public var connectedAt: String
    public var tunnels: Int

    public init(
        entity: String, id: String, agent: String, host: String, version: String, connectedAt: String, tunnels: Int
    ) {
        self.entity = entity
        self.id = id
        self.agent = agent
        self.host = host
        self.version = version
        self.connectedAt = connectedAt
        self.tunnels = tunnels
    }
}

/// The open tunnels of one process, for the inspection API. Entries are added when a tunnel opens and removed
/// when it closes; reading copies them under the lock and renders outside it.
public final class LiveTunnels: Sendable {
    private let tunnels = NIOLockedValueBox<[ObjectIdentifier: LiveTunnel]>([:])

    public init() {}

    public func add(_ tunnel: LiveTunnel) {
        tunnels.withLockedValue { $0[ObjectIdentifier(tunnel)] = tunnel }
    }

    public func remove(_ tunnel: LiveTunnel) {
        _ = tunnels.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(tunnel)) }
    }

    public var count: Int { tunnels.withLockedValue { $0.count } }

    /// Every open tunnel, oldest first.
    public func snapshot() -> [LiveTunnelInfo] {
        let open = tunnels.withLockedValue { Array($0.values) }
        return open.sorted { ($0.openedAt, $0.id) < ($1.openedAt, $1.id) }.map(\.info)
    }
}

/// What the side port's `/v1/…` endpoints read: every role has tunnels; the relay has listeners too.
public struct Inspection: Sendable {
    public let tunnels: LiveTunnels
    public let listeners: (@Sendable () -> [LiveListenerInfo])?

    public init(tunnels: LiveTunnels, listeners: (@Sendable () -> [LiveListenerInfo])? = nil) {
        self.tunnels = tunnels
        self.listeners = listeners
    }

    private static func encode(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    /// `GET /v1/tunnels`' body, as the side port writes it and `hyrelay status` reads it.
    public struct TunnelsBody: Codable, Sendable {
        public var tunnels: [LiveTunnelInfo]
    }

    /// `GET /v1/listeners`' body.
    public struct ListenersBody: Codable, Sendable {
        public var listeners: [LiveListenerInfo]
    }

    /// `{"tunnels": […]}`.
    public func tunnelsJSON() -> String { Self.encode(TunnelsBody(tunnels: tunnels.snapshot())) }

    /// `{"listeners": […]}`, or nil on a role that has none.
    public func listenersJSON() -> String? {
        listeners.map { Self.encode(ListenersBody(listeners: $0())) }
    }
}
