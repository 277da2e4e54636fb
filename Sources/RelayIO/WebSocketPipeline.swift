import NIOCore
import NIOWebSocket

/// Fired through the pipeline once a WebSocket upgrade is complete and the HTTP codec is gone: from then
/// on handlers may write frames.
public enum WebSocketUpgradeEvent: Sendable {
    case completed
}

/// The pipeline surgery both sides of a WebSocket handshake perform after the 101.
public enum WebSocketPipeline {
    /// Replaces the HTTP/1.1 codec with the WebSocket handlers, which read the frames themselves
    /// (`WebSocketFrameReader`); without `frameEncoder` they write bytes too.
    ///
    /// Order matters. The HTTP codec observes and encodes writes, so it must be gone before anything
    /// writes a frame; the HTTP decoder goes last, so bytes that arrived past the handshake reach the
    /// frame decoder and the handlers `addHandlers` installs. A decoder removed from inside its own read
    /// finishes that read first, so `WebSocketUpgradeEvent.completed` is fired once it is really gone;
    /// handlers that write first wait for it.
    public static func switchToWebSocket(
        context: ChannelHandlerContext, handshakeHandler: any RemovableChannelHandler,
        httpEncoder: any RemovableChannelHandler, httpDecoder: any RemovableChannelHandler,
        frameEncoder: (any ChannelHandler)?, addHandlers: () throws -> Void
    ) throws {
        let sync = context.pipeline.syncOperations
        if let frameEncoder { try sync.addHandler(frameEncoder, position: .after(handshakeHandler)) }
        try addHandlers()
        sync.removeHandler(handshakeHandler, promise: nil)
        sync.removeHandler(httpEncoder, promise: nil)
        let pipeline = context.pipeline
        let removed = context.eventLoop.makePromise(of: Void.self)
        removed.futureResult.assumeIsolated().whenSuccess {
            pipeline.syncOperations.fireUserInboundEventTriggered(WebSocketUpgradeEvent.completed)
        }
        sync.removeHandler(httpDecoder, promise: removed)
    }
}

extension ChannelHandlerContext {
    /// Closes the channel once `lastWrite` completed (at once without one). NIO's full close drops writes
    /// still queued, so a side that just wrote its Close frame waits for it; writes complete in order.
    public func close(after lastWrite: EventLoopFuture<Void>?) {
        guard let lastWrite else {
            close(promise: nil)
            return
        }
        lastWrite.assumeIsolated().whenComplete { _ in self.close(promise: nil) }
    }
}
