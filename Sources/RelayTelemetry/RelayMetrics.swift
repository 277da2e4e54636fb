import NIOConcurrencyHelpers

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The process's role in a tunnel, the `role` label on every metric.
public enum TelemetryRole: String, Sendable, CaseIterable {
    case relay, client, edge
}

/// Byte direction: `up` flows from the device (client side) toward the service (edge side).
public enum ByteDirection: String, Sendable, CaseIterable {
    case up, down
}

/// How an edge's dial of its target ended (`hyrelay_dials_total{outcome}`).
public enum DialOutcome: String, Sendable, CaseIterable {
    case connected, failed
    case unknownPort = "unknown_port"
    /// The sender asked for datagrams and the port is TCP, or the other way round.
    case modeMismatch = "mode_mismatch"
}

/// A listener control channel's lifecycle (`hyrelay_listener_events_total{event}`).
public enum ListenerEvent: String, Sendable, CaseIterable {
    case connect, reconnect, disconnect, renew, refused
    case deadChannel = "dead_channel"
}

/// Why a tunnel ended (`hyrelay_tunnels_closed_total{cause}`, the bridge spans' `close_cause`).
public enum TunnelCloseCause: Sendable, Equatable {
    /// One side closed it (the agent's local peer, or the agent itself).
    case closed
    /// The other end closed it with a Close.
    case remoteClose
    case relayRefused, relayUnreachable, refusedByPeer, relayLost
    case dialFailed, unknownPort, modeMismatch, protocolError, preambleRefused, preambleTimeout, localClosedEarly
    /// A UDP flow saw no datagram either way for the idle time.
    case idle
    case rendezvousRefused, rendezvousFailed
    case error
    /// Relay: a leg ended with a Close carrying this code, or without a Close at all (nil).
    case relayLeg(closeCode: Int?)

    public var label: String {
        switch self {
        case .closed: return "closed"
        case .remoteClose: return "remote_close"
        case .relayRefused: return "relay_refused"
        case .relayUnreachable: return "relay_unreachable"
        case .refusedByPeer: return "refused_by_peer"
        case .relayLost: return "relay_lost"
        case .dialFailed: return "dial_failed"
        case .unknownPort: return "unknown_port"
        case .modeMismatch: return "mode_mismatch"
        case .idle: return "idle"
        case .protocolError: return "protocol_error"
        case .preambleRefused: return "preamble_refused"
        case .preambleTimeout: return "preamble_timeout"
        case .localClosedEarly: return "local_closed_early"
        case .rendezvousRefused: return "rendezvous_refused"
        case .rendezvousFailed: return "rendezvous_failed"
        case .error: return "error"
        case .relayLeg(let closeCode): return RelayCloseCause.label(closeCode: closeCode)
        }
    }

    /// Whether the tunnel ended for a reason other than one side closing it.
    public var isFailure: Bool {
        switch self {
        case .closed, .remoteClose, .idle: return false
        case .relayLeg(let closeCode): return closeCode == nil
        default: return true
        }
    }
}

/// The `cause` label of a relay tunnel leg that ended with a Close: the codes RFC 6455 defines by name, and one
/// label for the 2,000 application codes (3000–4999) a peer may choose, so a peer cannot mint series.
public enum RelayCloseCause {
    public static func label(closeCode: Int?) -> String {
        guard let closeCode else { return "connection_lost" }
        switch closeCode {
        case 1000...1015: return "close_\(closeCode)"
        default: return "close_application"
        }
    }
}

/// Every metric HybridRelay exposes, registered in one place with help texts, so the exposition always
/// carries `# HELP` and `# TYPE` and label sets stay bounded (role, entity, outcome, reason; never a
/// connection id). The registry is our own (`MetricRegistry`): `/metrics`, OpenMetrics and every export sink read
/// its typed snapshot.
public final class RelayMetrics: Sendable {
    public let registry: MetricRegistry
    /// The tunnels open now, with live byte counts: what `/v1/tunnels` lists.
    public let liveTunnels = LiveTunnels()

    /// Latency buckets in seconds, 0.5 ms to 30 s.
    public static let latencyBuckets: [Double] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
    ]
    /// Connection lifetimes in seconds, 10 ms to 1 h.
    public static let durationBuckets: [Double] = [0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600]

    public init(registry: MetricRegistry = MetricRegistry()) {
        self.registry = registry
    }

    /// A counter `hyrelay_<name>_total`; the registry returns the same one for the same name and labels.
    public func counter(_ name: String, _ help: String, _ labels: [(String, String)]) -> Counter {
        registry.counter(name: "hyrelay_\(name)_total", help: help, labels: labels)
    }

    /// A gauge `hyrelay_<name>`.
    public func gauge(_ name: String, _ help: String, _ labels: [(String, String)]) -> Gauge {
        registry.gauge(name: "hyrelay_\(name)", help: help, labels: labels)
    }

    /// Records `value` and, with a trace id, keeps it as the exemplar of the bucket it falls in.
    private func observe(
        _ name: String, _ help: String, _ labels: [(String, String)], buckets: [Double], value: Double, traceID: String?
    ) {
        let exemplar = traceID.map { Exemplar(traceID: $0, value: value, timestamp: Date().timeIntervalSince1970) }
        histogram(name, help, labels, buckets: buckets).record(value, exemplar: exemplar)
    }

    private func histogram(
        _ name: String, _ help: String, _ labels: [(String, String)], buckets: [Double]
    ) -> ValueHistogram {
        registry.histogram(name: "hyrelay_\(name)_seconds", help: help, labels: labels, bounds: buckets)
    }

    // MARK: Counters

    /// The live byte counter for a role and direction; connections add to it on every read burst.
    public func bytes(role: TelemetryRole, direction: ByteDirection) -> Counter {
        counter(
            "transferred_bytes", "Payload bytes moved through tunnels, counted as they flow.",
            [("role", role.rawValue), ("direction", direction.rawValue)])
    }

    public func connectionAccepted(role: TelemetryRole) {
        counter(
            "connections_accepted",
            "Connections accepted: TCP on client ports, senders at the relay, accepts at the edge.",
            [("role", role.rawValue)]
        ).increment()
    }

    /// One sender's rendezvous at the relay, with how it ended and how long it took.
    public func rendezvous(entity: String, outcome: String, status: Int, seconds: Double, traceID: String? = nil) {
        rendezvousCounter(entity: entity, outcome: outcome, status: status).increment()
        observe(
            "rendezvous_duration", "Sender arrival to listener accept, reject or timeout.", [("entity", entity)],
            buckets: Self.latencyBuckets, value: seconds, traceID: traceID)
    }

    private func rendezvousCounter(entity: String, outcome: String, status: Int) -> Counter {
        counter(
            "rendezvous", "Sender rendezvous at the relay by outcome and HTTP status.",
            [("entity", entity), ("outcome", outcome), ("status", Self.rendezvousStatus(status))])
    }

    /// The statuses a rendezvous ends with as the relay answers them itself; any other (a listener may reject
    /// with whatever code it likes) is counted under its class, so a listener cannot mint series.
    static let rendezvousStatuses: Set<Int> = [0, 101, 200, 400, 401, 403, 404, 408, 409, 410, 429, 500, 502, 503, 504]

    static func rendezvousStatus(_ status: Int) -> String {
        rendezvousStatuses.contains(status) ? String(status) : statusClass(status)
    }

    /// The relay's alerting series at zero from the start, for every configured entity and token failure
    /// reason: an alert on `increase()` misses a series' first event (a series born at 1 shows no increase),
    /// and one on a gauge cannot fire while the gauge does not exist.
    public func registerRelaySeries(entities: [String], authFailureReasons: [String]) {
        for reason in authFailureReasons { _ = authFailureCounter(role: .relay, reason: reason) }
        for entity in entities {
            _ = rendezvousCounter(entity: entity, outcome: "no_listener", status: 404)
            listeners(role: .relay, entity: entity).set(to: 0)
        }
    }

    /// Every dial outcome as a zero series from the start, so the first failure is an increase that `rate()`
    /// and the failure-ratio alert see (a series born at 3 shows no increase at all).
    public func registerDialOutcomes() {
        for outcome in DialOutcome.allCases { _ = dialCounter(outcome) }
    }

    private func dialCounter(_ outcome: DialOutcome) -> Counter {
        counter("dials", "Edge dials of targets by outcome.", [("outcome", outcome.rawValue)])
    }

    public func dial(outcome: DialOutcome, seconds: Double?, traceID: String? = nil) {
        dialCounter(outcome).increment()
        if let seconds {
            observe(
                "dial_duration", "Edge TCP connect to the target.", [], buckets: Self.latencyBuckets, value: seconds,
                traceID: traceID)
        }
    }

    public func clientConnect(outcome: String, seconds: Double, traceID: String? = nil) {
        counter("client_connects", "Client sender upgrades by outcome.", [("outcome", outcome)]).increment()
        observe(
            "client_connect_duration",
            "Client sender upgrade until 101 or refusal (the rendezvous as the client sees it).",
            [], buckets: Self.latencyBuckets, value: seconds, traceID: traceID)
    }

    public func timeToFirstByte(role: TelemetryRole, seconds: Double, traceID: String? = nil) {
        observe(
            "time_to_first_byte", "Tunnel open until the first payload byte.", [("role", role.rawValue)],
            buckets: Self.latencyBuckets, value: seconds, traceID: traceID)
    }

    /// A tunnel ended.
    public func tunnelClosed(role: TelemetryRole, seconds: Double, cause: TunnelCloseCause) {
        counter(
            "tunnels_closed", "Tunnels ended, by role and close cause.",
            [("role", role.rawValue), ("cause", cause.label)]
        ).increment()
        histogram(
            "connection_duration", "Tunnel lifetime.", [("role", role.rawValue)], buckets: Self.durationBuckets
        ).record(seconds)
    }

    /// Listener lifecycle events; `cause` bounded.
    public func listenerEvent(role: TelemetryRole, entity: String, event: ListenerEvent, cause: String = "none") {
        counter(
            "listener_events", "Listener control channel lifecycle events by cause.",
            [("role", role.rawValue), ("entity", entity), ("event", event.rawValue), ("cause", cause)]
        ).increment()
    }

    private func authFailureCounter(role: TelemetryRole, reason: String) -> Counter {
        counter("auth_failures", "Refused tokens by reason.", [("role", role.rawValue), ("reason", reason)])
    }

    public func authFailure(role: TelemetryRole, reason: String) {
        authFailureCounter(role: role, reason: reason).increment()
    }

    /// `accept(2)` failed on a listening socket (`relay`, `client`, `metrics`); `error` is `emfile`, `enfile`
    /// or `other`.
    public func acceptError(socket: String, error: String) {
        counter(
            "accept_errors", "Failed accepts on listening sockets (descriptor tables full), by socket and error.",
            [("socket", socket), ("error", error)]
        ).increment()
    }

    /// Datagrams through UDP tunnels (`up`: from the device toward the service), counted per read burst.
    public func udpDatagrams(role: TelemetryRole, direction: ByteDirection) -> Counter {
        counter(
            "udp_datagrams", "Datagrams through UDP tunnels, by direction.",
            [("role", role.rawValue), ("direction", direction.rawValue)])
    }

    /// A datagram a UDP tunnel could not carry: `too_large` (over 65,535 bytes), `queue_full` (the tunnel was
    /// still opening and 64 datagrams waited already), `foreign_source` (an answer from another address than
    /// the target).
    public func udpDropped(role: TelemetryRole, reason: String) {
        counter(
            "udp_drops", "Datagrams UDP tunnels dropped, by reason.", [("role", role.rawValue), ("reason", reason)]
        ).increment()
    }

    /// A connection or request the side port (`--metrics`) turned away: `connection_limit`, `unauthorized`.
    public func sidePortRefused(reason: String) {
        counter(
            "side_port_refusals", "Connections and requests the --metrics port refused, by reason.",
            [("reason", reason)]
        )
        .increment()
    }

    public func refused(role: TelemetryRole, reason: String, status: Int) {
        counter(
            "refused_requests", "Requests refused by reason and HTTP status.",
            [("role", role.rawValue), ("reason", reason), ("status", String(status))]
        ).increment()
    }

    /// One HTTP-mode request answered (by the listener or by the relay on its behalf): counted by status
    /// class, its duration recorded once.
    public func httpRequest(entity: String, status: Int, seconds: Double, traceID: String? = nil) {
        counter(
            "http_requests", "HTTP-mode requests answered, by entity and status class (2xx … 5xx).",
            [("entity", entity), ("code", Self.statusClass(status))]
        ).increment()
        observe(
            "http_request_duration", "HTTP-mode request received until its response was written.",
            [("entity", entity)], buckets: Self.latencyBuckets, value: seconds, traceID: traceID)
    }

    /// `2xx` … `5xx` (anything out of range clamped), the `code` label of HTTP counters.
    static func statusClass(_ status: Int) -> String { "\(min(max(status / 100, 1), 5))xx" }

    /// One request an edge's HTTP forwarder answered (or cut): by status class, its duration, the body bytes
    /// each way (up: toward the target) and, when it failed, why (`reason`).
    public func httpForwarded(
        entity: String, status: Int, seconds: Double, bytesUp: Int, bytesDown: Int, failure: String?,
        traceID: String? = nil
    ) {
        counter(
            "http_forwarded_requests", "Requests the edge's HTTP forwarder answered, by entity and status class.",
            [("entity", entity), ("code", Self.statusClass(status))]
        ).increment()
        observe(
            "http_forwarded_duration", "Edge HTTP forwarder: request received until its response was handed back.",
            [("entity", entity)], buckets: Self.latencyBuckets, value: seconds, traceID: traceID)
        httpForwardedBytes(entity: entity, direction: .up).increment(by: Int64(bytesUp))
        httpForwardedBytes(entity: entity, direction: .down).increment(by: Int64(bytesDown))
        if let failure { httpForwardFailures(entity: entity, reason: failure).increment() }
    }

    private func httpForwardedBytes(entity: String, direction: ByteDirection) -> Counter {
        counter(
            "http_forwarded_bytes", "Body bytes through the edge's HTTP forwarder (up: toward the target).",
            [("entity", entity), ("direction", direction.rawValue)])
    }

    private func httpForwardFailures(entity: String, reason: String) -> Counter {
        counter(
            "http_forward_failures", "Edge HTTP forwarder requests that failed, by reason.",
            [("entity", entity), ("reason", reason)])
    }

    // MARK: Gauges

    public func activeTunnels(role: TelemetryRole) -> Gauge {
        gauge("active_tunnels", "Tunnels open now.", [("role", role.rawValue)])
    }

    /// Requests an edge's HTTP forwarder is answering now.
    public func activeHTTPForwards() -> Gauge {
        gauge("http_forwards_active", "Requests the edge's HTTP forwarder is answering now.", [])
    }

    /// Listener control channels: registered at the relay, or online at the edge.
    public func listeners(role: TelemetryRole, entity: String) -> Gauge {
        gauge(
            "listeners", "Listener control channels online, per entity.", [("role", role.rawValue), ("entity", entity)])
    }

    /// Listener control channels registered at the relay, by the agent's name (`X-HyRelay-Agent`); the label
    /// comes from `BoundedLabels`, so a fleet cannot grow the series without bound.
    public func listenerAgents(entity: String, agent: String) -> Gauge {
        gauge(
            "listener_agents", "Listener control channels registered now, by entity and agent name.",
            [("entity", entity), ("agent", agent)])
    }

    /// OpenMetrics 1.0 with trace-id exemplars on latency buckets.
    public func openMetricsExposition() -> String { PrometheusExposition.openMetrics(registry.snapshot()) }

    /// Text exposition format 0.0.4.
    public func exposition() -> String { PrometheusExposition.text(registry.snapshot()) }
}
