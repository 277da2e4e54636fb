import AzureIdentity
import HybridConnections
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RelayIO
import RelayTelemetry
import Synchronization
import Tracing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A registered listener control channel, usable from any event loop.
final class ListenerHandle: Sendable {
    let id: UInt64
    /// The listener's `sb-hc-id`, or one the relay made up.
    let trackingId: String
    let entity: String
    /// What the agent said about itself (`X-HyRelay-Agent`); nil for other clients (Microsoft's SDKs).
    let agent: AgentIdentity?
    /// Unix seconds.
    let connectedAt = Date().timeIntervalSince1970
    /// Tunnels this listener accepted that are open now.
    private let openTunnels = Atomic<Int>(0)
    private let control: NIOLoopBound<ListenerControlHandler>

    init(
        id: UInt64, trackingId: String, entity: String, agent: AgentIdentity? = nil,
        control: NIOLoopBound<ListenerControlHandler>
    ) {
        self.id = id
        self.trackingId = trackingId
        self.entity = entity
        self.agent = agent
        self.control = control
    }

    func tunnelOpened() { openTunnels.wrappingAdd(1, ordering: .relaxed) }
    func tunnelClosed() { openTunnels.wrappingAdd(-1, ordering: .relaxed) }

    var info: LiveListenerInfo {
        LiveListenerInfo(
            entity: entity, id: trackingId, agent: agent?.name ?? "", host: agent?.host ?? "",
            version: agent?.version ?? "", connectedAt: JSONText.timestamp(Date(timeIntervalSince1970: connectedAt)),
            tunnels: openTunnels.load(ordering: .relaxed))
    }

    /// Sends a control message, and the binary message that belongs to it, with nothing in between.
    func send(_ message: ControlMessage, body: ByteBuffer? = nil) {
        let control = self.control
        control.eventLoop.execute {
            control.value.send(message, body: body)
        }
    }

    /// Closes the control channel with 1001 Going Away: the listener reconnects, to another relay if there
    /// is one.
    func goAway(reason: String) {
        let control = self.control
        control.eventLoop.execute {
            control.value.goAway(reason: reason)
        }
    }
}

/// The relay's side of one tunnel once joined: the bridge span, started when the legs join, and the tunnel's
/// close cause, both decided when both legs have reported. A leg whose peer's connection ended with no Close
/// either way makes the tunnel `connection_lost`, whichever leg it was (the other leg's peer then answers the
/// relay's 1001, which is not how the tunnel ended); a broken rule makes it `protocol_error`; otherwise the
/// first Close's code names it.
final class BridgeSpanCollector: Sendable {
    private struct State {
        var span: HopSpan?
        var joined: NIODeadline?
        var sender: BridgeLegStatistics?
        var listener: BridgeLegStatistics?
        var closeCode: Int?
    }

    private let state = NIOLockedValueBox(State())
    private let metrics: RelayMetrics

    init(metrics: RelayMetrics) { self.metrics = metrics }

    func start(_ span: HopSpan, joined: NIODeadline) {
        finish { state in
            state.span = span
            state.joined = joined
        }
    }

    func senderLegFinished(_ statistics: BridgeLegStatistics) {
        finish { state in
            state.sender = statistics
            state.closeCode = state.closeCode ?? statistics.closeCode
        }
    }

    func listenerLegFinished(_ statistics: BridgeLegStatistics) {
        finish { state in
            state.listener = statistics
            state.closeCode = state.closeCode ?? statistics.closeCode
        }
    }

    private func finish(_ update: (inout State) -> Void) {
        let ready: (State, HopSpan, BridgeLegStatistics, BridgeLegStatistics)? = state.withLockedValue { state in
            update(&state)
            guard let span = state.span, let sender = state.sender, let listener = state.listener else { return nil }
            state.span = nil
            return (state, span, sender, listener)
        }
        guard let (state, span, sender, listener) = ready else { return }
        let cause: TunnelCloseCause
        var failure: String?
        if sender.lost || listener.lost {
            cause = .relayLeg(closeCode: nil)
            failure = "the \(sender.lost ? "sender" : "listener")'s connection ended without a Close"
        } else if let violation = sender.violation ?? listener.violation {
            cause = .protocolError
            failure = violation
        } else {
            cause = .relayLeg(closeCode: state.closeCode)
        }
        metrics.tunnelClosed(
            role: .relay, seconds: state.joined.map { (NIODeadline.now() - $0).seconds } ?? 0, cause: cause)
        span.attributes["bytes_up"] = sender.bytesIn
        span.attributes["bytes_down"] = listener.bytesIn
        span.attributes["close_code"] = state.closeCode.map { String($0) } ?? "none"
        span.attributes["close_cause"] = cause.label
        if let failure { span.setStatus(SpanStatus(code: .error, message: failure)) }
        span.end()
    }
}

/// One HTTP-mode request as telemetry sees it: the `relay.http` span, the request counter and duration, and
/// the body bytes both ways; finished exactly once, whoever answers.
final class HTTPExchangeRecord: @unchecked Sendable {
    // Touched only on the HTTP client's event loop.
    let span: HopSpan
    let entity: String
    private let arrived = NIODeadline.now()
    private let metrics: RelayMetrics
    private var finished = false

    /// Request body bytes taken from the client so far.
    var requestBytes = 0

    init(span: HopSpan, entity: String, metrics: RelayMetrics) {
        self.span = span
        self.entity = entity
        self.metrics = metrics
        span.attributes["entity"] = entity
    }

    func finish(status: Int, responseBytes: Int = 0, error: String? = nil) {
        guard !finished else { return }
        finished = true
        if requestBytes > 0 { metrics.bytes(role: .relay, direction: .up).increment(by: Int64(requestBytes)) }
        if responseBytes > 0 { metrics.bytes(role: .relay, direction: .down).increment(by: Int64(responseBytes)) }
        span.attributes["bytes_up"] = requestBytes
        metrics.httpRequest(
            entity: entity, status: status, seconds: (NIODeadline.now() - arrived).seconds,
            traceID: span.traceContext.traceID)
        span.attributes["http.response.status_code"] = status
        span.attributes["bytes_down"] = responseBytes
        if let error { span.setStatus(SpanStatus(code: .error, message: error)) }
        span.end()
    }
}

/// One sender's rendezvous as telemetry sees it: its span and metrics, finished exactly once.
final class RendezvousRecord: @unchecked Sendable {
    // Touched only on the sender's event loop.
    let span: HopSpan
    var entity: String
    let arrived: NIODeadline
    private let metrics: RelayMetrics
    private var finished = false

    init(span: HopSpan, entity: String, arrived: NIODeadline, metrics: RelayMetrics) {
        self.span = span
        self.entity = entity
        self.arrived = arrived
        self.metrics = metrics
    }

    /// Counts the outcome, records the wait, and ends the `relay.rendezvous` span.
    func finish(outcome: String, status: Int, error: String? = nil) {
        guard !finished else { return }
        finished = true
        let seconds = (NIODeadline.now() - arrived).seconds
        metrics.rendezvous(
            entity: entity, outcome: outcome, status: status, seconds: seconds, traceID: span.traceContext.traceID)
        span.attributes["entity"] = entity
        span.attributes["outcome"] = outcome
        span.attributes["http.response.status_code"] = status
        if let error { span.setStatus(SpanStatus(code: .error, message: error)) }
        span.end()
    }
}

/// A sender waiting for a listener to accept or reject.
struct PendingSender: Sendable {
    let handler: NIOLoopBound<RelayHTTPHandler>
    /// The configured entity name: an accept must address the same entity.
    let entity: String
}

/// An HTTP-mode request waiting for its response.
struct PendingHTTPRequest: Sendable {
    let forwarder: NIOLoopBound<HTTPModeForwarder>
    let entity: String
    let command: RequestCommand
    /// False when the listener was told to fetch the request from the rendezvous.
    let sentOnControlChannel: Bool
    /// Set once a listener opened the request's rendezvous: the address works once.
    var rendezvousClaimed = false
}

enum PendingRendezvous: Sendable {
    case webSocket(PendingSender)
    case http(PendingHTTPRequest)
}

/// State shared by every connection of one relay: listeners and waiting rendezvous.
public final class RelayHub: Sendable {
    /// What a reload replaces as one: the configuration and the decisions made from it.
    private struct Settings {
        var configuration: RelayConfiguration
        var policy: RelayPolicy
        var connectionLimit: Int

        init(_ configuration: RelayConfiguration, entraAuthority: EntraAuthority?) {
            self.configuration = configuration
            policy = RelayPolicy(configuration: configuration, entraAuthority: entraAuthority)
            connectionLimit = configuration.limits.connectionLimit(openFiles: OpenFiles.softLimit)
        }
    }

    private let settings: NIOLockedValueBox<Settings>
    let logger: Logger
    public let metrics: RelayMetrics
    public let tracer: HopTracer
    private let publicURLBox: NIOLockedValueBox<String>
    private let table: NIOLockedValueBox<RendezvousTable<ListenerHandle, PendingRendezvous>>
    private let nextID = Atomic<UInt64>(1)
    private let authFailures: NIOLockedValueBox<FailureRateLimiter>
    private let connectionsBySource = NIOLockedValueBox([String: Int]())
    private let openConnections = Atomic<Int>(0)
    private let bufferedHTTPBytes = Atomic<Int>(0)
    /// Joined tunnels and waiting rendezvous: what a drain waits for.
    let work = InFlightWork()
    private let draining = Atomic<Bool>(false)
    private let floodLogs = NIOLockedValueBox(LogThrottle(interval: 1))
    /// The `agent` label values listener metrics may use.
    let agentLabels = BoundedLabels(limit: 100)

    /// Seconds since 1970 now: token expiry, failure budgets, log throttling. Handler tests on virtual time
    /// pass a clock they move with it.
    let wallClock: @Sendable () -> Double

    /// The Entra tenant whose tokens are accepted; kept across reloads (its keys are fetched, not configured).
    public let entraAuthority: EntraAuthority?

    public init(
        configuration: RelayConfiguration, logger: Logger, metrics: RelayMetrics, tracer: HopTracer,
        entraAuthority: EntraAuthority? = nil,
        wallClock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }
    ) {
        self.wallClock = wallClock
        self.entraAuthority = entraAuthority
        settings = NIOLockedValueBox(Settings(configuration, entraAuthority: entraAuthority))
        self.logger = logger
        self.metrics = metrics
        self.tracer = tracer
        publicURLBox = NIOLockedValueBox(configuration.effectivePublicURL)
        table = NIOLockedValueBox(RendezvousTable(listenerLimit: configuration.limits.maxListenersPerEntity))
        authFailures = NIOLockedValueBox(
            FailureRateLimiter(
                burst: configuration.limits.authFailureBurst, perSecond: configuration.limits.authFailuresPerSecond))
        metrics.registerRelaySeries(
            entities: configuration.hybridConnections.map(\.name),
            authFailureReasons: TokenError.allReasons + (entraAuthority == nil ? [] : RelayPolicy.entraRefusalReasons))
    }

    public var configuration: RelayConfiguration { settings.withLockedValue { $0.configuration } }
    var policy: RelayPolicy { settings.withLockedValue { $0.policy } }
    var limits: RelayLimits { settings.withLockedValue { $0.configuration.limits } }
    /// Connections the relay holds at most (`limits.connectionLimit` for this process's open-file limit).
    var connectionLimit: Int { settings.withLockedValue { $0.connectionLimit } }

    /// Takes a reloaded configuration (already validated) for every request from now on. Listeners of
    /// entities that are gone are told with 1001; open tunnels are left alone.
    /// - Returns: the entity names added and removed.
    func apply(_ configuration: RelayConfiguration) -> (added: [String], removed: [String]) {
        let old = settings.withLockedValue { settings in
            defer { settings = Settings(configuration, entraAuthority: entraAuthority) }
            return settings.configuration
        }
        if let publicURL = configuration.publicURL { publicURLBox.withLockedValue { $0 = publicURL } }
        let oldNames = Set(old.hybridConnections.map { $0.name.lowercased() })
        let newNames = Set(configuration.hybridConnections.map { $0.name.lowercased() })
        let removed = old.hybridConnections.map(\.name).filter { !newNames.contains($0.lowercased()) }
        let added = configuration.hybridConnections.map(\.name).filter { !oldNames.contains($0.lowercased()) }
        let orphans = withTable { table in
            table.listenerLimit = configuration.limits.maxListenersPerEntity
            return removed.flatMap { table.listeners(entity: $0) }
        }
        for listener in orphans { listener.goAway(reason: "The hybrid connection was removed") }
        metrics.registerRelaySeries(entities: added, authFailureReasons: [])
        return (added, removed)
    }

    // MARK: Draining

    /// From now on listeners and senders are refused with 503 and every listener is told to go elsewhere
    /// (1001); rendezvous already under way complete, and open tunnels run on.
    func startDraining() {
        draining.store(true, ordering: .relaxed)
        for listener in withTable({ $0.allListeners }) {
            listener.goAway(reason: "The relay is shutting down")
        }
    }

    public var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Tunnels joined and not yet closed, plus rendezvous and HTTP requests waiting.
    var workInFlight: Int { work.count }

    func tunnelOpened() { work.add(1) }
    func tunnelClosed() { work.add(-1) }

    /// Runs `body` on the table; waiting rendezvous it adds or removes are counted as work in flight.
    private func withTable<T>(_ body: (inout RendezvousTable<ListenerHandle, PendingRendezvous>) -> T) -> T {
        let (result, added) = table.withLockedValue { table in
            let before = table.pendingCount
            let result = body(&table)
            return (result, table.pendingCount - before)
        }
        if added != 0 { work.add(added) }
        return result
    }

    /// Base of the `address` fields handed to listeners.
    public var publicURL: String { publicURLBox.withLockedValue { $0 } }

    /// With `listen` on port 0 and no `publicURL`, addresses must name the port actually bound.
    func boundTo(port: Int) {
        let configuration = self.configuration
        guard configuration.publicURL == nil, HostPort(configuration.listen)?.port == 0 else { return }
        var bound = HostPort(configuration.listen)!
        bound.port = port
        let host = bound.host.contains(":") ? "[\(bound.host)]" : bound.host
        publicURLBox.withLockedValue { $0 = "\(configuration.tls == nil ? "ws" : "wss")://\(host):\(port)" }
    }

    /// Counts a failed authentication. Returns the 429 refusal to answer instead when the source already
    /// spent its budget: only failures are limited, so good agents behind the same address keep working.
    func authFailed(source: String?) -> Refusal? {
        guard let source else { return nil }
        let now = wallClock()
        let blocked = authFailures.withLockedValue { limiter in
            defer { limiter.recordFailure(source: source, now: now) }
            return limiter.isBlocked(source: source, now: now)
        }
        guard blocked else { return nil }
        return Refusal(
            status: 429, text: "TooManyRequests: Too many failed authentication attempts from this address",
            reason: "auth_rate_limited")
    }

    /// Counts a new connection from `source`; returns the refusal to answer when the relay or the source
    /// holds more than its share. Every call is paired with `connectionClosed(source:)`.
    func connectionOpened(source: String?) -> Refusal? {
        let total = openConnections.wrappingAdd(1, ordering: .relaxed).newValue
        let fromSource = source.map { source in
            connectionsBySource.withLockedValue { counts in
                counts[source, default: 0] += 1
                return counts[source]!
            }
        }
        let (limit, perSource) = settings.withLockedValue {
            ($0.connectionLimit, $0.configuration.limits.maxConnectionsPerSource)
        }
        if total > limit {
            return Refusal(
                status: 503, text: "ServerBusy: The relay is at its connection limit (\(limit)); retry later",
                reason: "connection_limit")
        }
        if let fromSource, fromSource > perSource {
            return Refusal(
                status: 503, text: "ServerBusy: Too many connections from this address (limit \(perSource))",
                reason: "source_connection_limit")
        }
        return nil
    }

    func connectionClosed(source: String?) {
        openConnections.wrappingSubtract(1, ordering: .relaxed)
        guard let source else { return }
        connectionsBySource.withLockedValue { counts in
            let left = (counts[source] ?? 1) - 1
            counts[source] = left > 0 ? left : nil
        }
    }

    /// Reserves room for `bytes` of HTTP-mode request body in the relay-wide budget.
    func reserveHTTPBytes(_ bytes: Int) -> Bool {
        let total = bufferedHTTPBytes.wrappingAdd(bytes, ordering: .relaxed).newValue
        guard total > limits.maxBufferedHTTPBytes else { return true }
        bufferedHTTPBytes.wrappingSubtract(bytes, ordering: .relaxed)
        return false
    }

    func releaseHTTPBytes(_ bytes: Int) {
        guard bytes > 0 else { return }
        bufferedHTTPBytes.wrappingSubtract(bytes, ordering: .relaxed)
    }

    /// Whether a refusal a flood produces (one per connection) should be logged now, with how many were
    /// not logged since; the metric counts every one.
    func floodLogAllowance(_ reason: String) -> Int? {
        let now = wallClock()
        return floodLogs.withLockedValue { $0.shouldLog(reason, now: now) }
    }

    func makeID() -> UInt64 {
        nextID.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    /// A rendezvous key nobody can guess and no two senders share, even with the same `sb-hc-id`.
    func makeRendezvousKey(trackingId: String) -> String {
        "\(trackingId)_\(UUID().uuidString.lowercased().filter { $0 != "-" })"
    }

    func register(_ listener: ListenerHandle) -> Bool {
        let (result, count) = withTable { table in
            let result = table.addListener(entity: listener.entity, id: listener.id, listener)
            return (result, table.listenerCount(entity: listener.entity))
        }
        metrics.listeners(role: .relay, entity: listener.entity).set(to: Double(count))
        guard result == .added else { return false }
        metrics.listenerAgents(entity: listener.entity, agent: agentLabels.label(for: listener.agent?.name))
            .increment()
        return true
    }

    /// Every registered listener control channel, by entity and age: what `/v1/listeners` lists.
    public func listenersInfo() -> [LiveListenerInfo] {
        withTable { $0.allListeners }.sorted { ($0.entity, $0.connectedAt) < ($1.entity, $1.connectedAt) }.map(\.info)
    }

    /// Returns whether the listener was still registered. Senders and HTTP requests dispatched to it that it
    /// had not opened are answered at once instead of waiting for their timeout: 404 like any sender when no
    /// listener is left, else 503 (another listener will take a retry).
    @discardableResult
    func unregister(_ listener: ListenerHandle) -> Bool {
        let (result, count) = withTable { table in
            (
                table.removeListener(entity: listener.entity, id: listener.id),
                table.listenerCount(entity: listener.entity)
            )
        }
        metrics.listeners(role: .relay, entity: listener.entity).set(to: Double(count))
        if result.removed {
            metrics.listenerAgents(entity: listener.entity, agent: agentLabels.label(for: listener.agent?.name))
                .decrement()
        }
        if !result.orphans.isEmpty {
            let refusal =
                count == 0
                ? Refusal(status: 404, text: RelayErrorText.noListeners, reason: "no_listener")
                : Refusal(
                    status: 503, text: "ServiceUnavailable: The listener went away before it accepted; try again",
                    reason: "listener_gone")
            logger.warning(
                "listener gone with rendezvous it had not opened; their senders are answered now",
                metadata: [
                    "entity": "\(listener.entity)", "listener_id": "\(listener.trackingId)",
                    "rendezvous": "\(result.orphans.count)", "status": "\(refusal.status)",
                ])
            for orphan in result.orphans {
                switch orphan {
                case .webSocket(let sender):
                    let handler = sender.handler
                    handler.eventLoop.execute { handler.value.listenerVanished(refusal) }
                case .http(let request):
                    let gone = Refusal(status: 502, text: RelayErrorText.noListeners, reason: refusal.reason)
                    request.forwarder.send { $0.failed(gone) }
                }
            }
        }
        return result.removed
    }

    public func listenerCount(entity: String) -> Int {
        withTable { $0.listenerCount(entity: entity) }
    }

    /// Picks a listener the sender's `pinning` admits and, in the same critical section, parks the rendezvous,
    /// so a listener that answers at once finds it. Without a listener: 404, Azure's text saying whether none
    /// is online or none qualifies.
    func dispatch(
        entity: String, key: String, pending: PendingRendezvous, pinning: ListenerPinning
    ) throws(Refusal) -> ListenerHandle {
        let picked: ListenerHandle?? = withTable { table in
            var generator = SystemRandomNumberGenerator()
            guard table.listenerCount(entity: entity) > 0 else { return .none }
            guard
                let listener = table.pickListener(
                    entity: entity, using: &generator, isEligible: { pinning.admits(trackingId: $0.trackingId) })
            else { return .some(nil) }
            table.addPending(key: key, pending, dispatchedTo: listener.id)
            return listener
        }
        switch picked {
        case .some(.some(let listener)): return listener
        case .some(.none):
            throw Refusal(status: 404, text: ListenerPinning.noneQualify, reason: "no_listener_qualifies")
        case .none: throw Refusal(status: 404, text: RelayErrorText.noListeners, reason: "no_listener")
        }
    }

    func takePending(key: String) -> PendingRendezvous? {
        withTable { $0.takePending(key: key) }
    }

    /// Takes a waiting sender for an accept, only if the accept addresses the sender's entity.
    func takeSender(key: String, entity: String) -> PendingSender? {
        withTable { table in
            guard case .webSocket(let sender) = table.pending(key: key), sender.entity == entity else { return nil }
            _ = table.takePending(key: key)
            return sender
        }
    }

    /// Claims an HTTP request's rendezvous for the listener opening it: once, and only on its entity. The
    /// request stays parked; the response takes it.
    func claimHTTPRendezvous(key: String, entity: String) -> PendingHTTPRequest? {
        withTable { table in
            guard case .http(var request) = table.pending(key: key), request.entity == entity,
                !request.rendezvousClaimed
            else { return nil }
            request.rendezvousClaimed = true
            table.addPending(key: key, .http(request))
            return request
        }
    }

    /// Takes the HTTP exchange waiting for a response to `key`: the first response wins, later ones (and those
    /// for requests already answered or timed out) find nothing.
    func takeHTTPExchange(key: String) -> NIOLoopBound<HTTPModeForwarder>? {
        guard case .http(let pending) = takePending(key: key) else { return nil }
        return pending.forwarder
    }

    /// `sb://{host}/{entity}` for the SystemTracker part of reason phrases.
    func systemTracker(entity: String?) -> String {
        "sb://\(policy.publicHost)/\(entity ?? "")"
    }

    /// `{publicURL}/$hc/{path}?{appQuery&}sb-hc-action={action}&sb-hc-id={key}`.
    func rendezvousAddress(
        rawPath: String, applicationQuery: String, action: HybridConnectionAction, key: String
    )
        -> String
    {
        let query = applicationQuery.isEmpty ? "" : applicationQuery + "&"
        return "\(publicURL)\(rawPath)?\(query)sb-hc-action=\(action.rawValue)&sb-hc-id=\(PercentEncoding.encode(key))"
    }
}
