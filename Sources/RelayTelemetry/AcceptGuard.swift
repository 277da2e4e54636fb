import Logging
import NIOCore

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
/// gets its turn. The guard therefore holds one spare descriptor: on such a failure it frees it, the next
/// accept succeeds (that connection is served normally), and from then on reads wait out a one-second pause
/// in which connections finish and free descriptors. The spare is taken back once descriptors are free.
/// Each failure is counted; a log line at most once a second says what to change.
public final class AcceptGuard: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = Channel
    public typealias InboundOut = Channel
    public typealias OutboundIn = Channel

    static let pause = TimeAmount.seconds(1)

    private let socket: String
    private let metrics: RelayMetrics
    private let logger: Logger
    private var spare: CInt = -1
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
        reserveSpare()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        scheduledRead?.cancel()
        scheduledRead = nil
        releaseSpare()
    }

    private func reserveSpare() {
        guard spare < 0 else { return }
        spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
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
                "cannot accept connections, pausing accept for 1 s: \(ioError)",
                metadata: [
                    "socket": "\(socket)", "reason": "\(label)", "suppressed": "\(suppressed)",
                    "hint": "raise the open-file limit (LimitNOFILE) or lower limits.maxConnections",
                ])
        }
    }

    public func read(context: ChannelHandlerContext) {
        reserveSpare()
        guard scheduledRead == nil else { return }
        guard let pausedUntil, pausedUntil > .now() else {
            context.read()
            return
        }
        scheduledRead = context.eventLoop.assumeIsolated().scheduleTask(deadline: pausedUntil) { [weak self] in
            guard let self else { return }
            self.scheduledRead = nil
            self.pausedUntil = nil
            self.read(context: context)
        }
    }
}

@available(*, unavailable)
extension AcceptGuard: Sendable {}
