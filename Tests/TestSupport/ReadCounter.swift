import NIOCore

/// Counts `read()` calls that reach the head of the pipeline: what a handler that withholds reads let through.
public final class ReadCounter: ChannelOutboundHandler {
    public typealias OutboundIn = NIOAny
    public private(set) var reads = 0

    public init() {}

    public func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

@available(*, unavailable)
extension ReadCounter: Sendable {}
