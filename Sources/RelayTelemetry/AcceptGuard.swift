import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The first handler of a listening socket: keeps `accept(2)` failures from spinning a core.
///
/// When the descriptor table is full (EMFILE, ENFILE) the socket stays readable and NIO retries the accept
/// at once, without asking the pipeline to read again until an accept succeeds, so a plain backoff never
/// gets its turn. The guard therefore holds one spare descriptor and lets NIO accept only while it holds
/// it: on such a failure it frees the spare, the next accept succeeds (that connection is served normally),
/// and reads then wait out a one-second pause in which connections finish and free descriptors. Accepting
/// resumes once the spare could be taken back. Each failure is counted; a log line at most once a second
/// says what to change.
public final class AcceptGuard: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = Channel
    public typealias InboundOut = Channel
    public typealias OutboundIn = Channel

    static let pause = TimeAmount.seconds(1)

    private let socket: String
    private let metrics: RelayMetrics
    private let logger: Logger
    private var spare: CInt = -1
    /// False where no spare can be had for another reason than a full table (no `/dev/null`): then the
    /// guard only pauses.
    private var spareWorks = true
    private var pausedUntil: NIODeadline?
    private var scheduledRead: Scheduled<Void>?
    private var logs = LogThrottle(interval: 1)

    /// - Parameter socket: what listens here (`relay`, `client`, `metrics`), the metric's label.
    public init(socket: String, metrics: RelayMetrics, logger: Logger) {
        self.socket = socket
        self.metrics = metrics
        self.logger = logger
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        _ = reserveSpare()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        scheduledRead?.cancel()
        scheduledRead = nil
        releaseSpare()
    }

    /// Whether the spare is held (or cannot be had at all, so accepting must not wait for it).
    private func reserveSpare() -> Bool {
        guard spareWorks, spare < 0 else { return true }
        spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if spare < 0 && errno != EMFILE && errno != ENFILE { spareWorks = false }
        return spare >= 0 || !spareWorks
    }

    private func releaseSpare() {
        guard spare >= 0 else { return }
        _ = Glibc.close(spare)
        spare = -1
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let ioError = error as? IOError else {
            context.fireErrorCaught(error)
            return
        }
        let label: String
        switch ioError.errnoCode {
        case EMFILE: label = "emfile"
        case ENFILE: label = "enfile"
        default: label = "other"
        }
        metrics.acceptError(socket: socket, error: label)
        pausedUntil = .now() + Self.pause
        releaseSpare()
        if let suppressed = logs.shouldLog(label, now: Date().timeIntervalSince1970) {
            logger.error(
                "cannot accept connections, pausing accept for 1 s: \(ErrorWords.errnoWords(ioError.errnoCode))",
                metadata: [
                    "socket": "\(socket)", "reason": "\(label)", "suppressed": "\(suppressed)",
                    "hint": "raise the open-file limit (LimitNOFILE) or lower limits.maxConnections",
                ])
        }
    }

    public func read(context: ChannelHandlerContext) {
        guard scheduledRead == nil else { return }
        if let pausedUntil, pausedUntil > .now() {
            readLater(at: pausedUntil, context: context)
            return
        }
        // Without the spare, an accept that fails would leave NIO retrying it in a loop: wait for descriptors.
        guard reserveSpare() else {
            readLater(at: .now() + Self.pause, context: context)
            return
        }
        pausedUntil = nil
        context.read()
    }

    private func readLater(at deadline: NIODeadline, context: ChannelHandlerContext) {
        scheduledRead = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            guard let self else { return }
            self.scheduledRead = nil
            self.read(context: context)
        }
    }
}

@available(*, unavailable)
extension AcceptGuard: Sendable {}

extension ServerBootstrap {
    /// Binds one of HybridRelay's listening sockets: its accepts guarded by an `AcceptGuard` counted under
    /// `socket`, and a bind failure that names the address and `purpose`.
    public func bindGuarded(
        host: String, port: Int, socket: String, purpose: String, metrics: RelayMetrics, logger: Logger
    ) async throws -> any Channel {
        try await serverChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    AcceptGuard(socket: socket, metrics: metrics, logger: logger))
            }
        }
        .bind(host: host, port: port)
        .flatMapErrorThrowing { error in throw BindFailure(error, host: host, port: port, what: purpose) }
        .get()
    }

    /// `bindGuarded` for a Unix socket at `unixDomainSocketPath`.
    public func bindGuarded(
        unixDomainSocketPath path: String, socket: String, purpose: String, metrics: RelayMetrics, logger: Logger
    ) async throws -> any Channel {
        try await serverChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    AcceptGuard(socket: socket, metrics: metrics, logger: logger))
            }
        }
        .bind(unixDomainSocketPath: path)
        .flatMapErrorThrowing { error in throw BindFailure(error, path: path, what: purpose) }
        .get()
    }
}
