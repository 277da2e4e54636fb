import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// A connection to a Unix socket that waits for a full backlog as TCP does. A non-blocking `connect(2)` to a Unix
/// socket whose listen backlog is full fails at once with EAGAIN, where a TCP connect would wait for the server to
/// take it; a burst of tunnels to a busy local service would lose some. The dial is tried again, every 2 ms
/// growing to 50 ms, until `deadline`, as a blocking client would have waited.
enum UnixSocketDial {
    static func connect(
        path: String, eventLoop: any EventLoop, deadline: NIODeadline, delay: TimeAmount = .milliseconds(2),
        bootstrap: @escaping @Sendable () -> ClientBootstrap
    ) -> EventLoopFuture<any Channel> {
        bootstrap().connect(unixDomainSocketPath: path).flatMapError { error in
            guard (error as? IOError)?.errnoCode == EAGAIN, NIODeadline.now() + delay < deadline else {
                return eventLoop.makeFailedFuture(error)
            }
            return eventLoop.scheduleTask(in: delay) {}.futureResult.flatMap {
                connect(
                    path: path, eventLoop: eventLoop, deadline: deadline,
                    delay: min(delay * 2, .milliseconds(50)), bootstrap: bootstrap)
            }
        }
    }
}
