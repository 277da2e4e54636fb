import NIOCore
import NIOWebSocket

/// Client-side frame encoder: like NIO's `WebSocketFrameEncoder`, but masks word-wise while copying the
/// payload behind the header, in one pass. Frames without a mask key are written unmasked.
public final class MaskingFrameEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = WebSocketFrame
    public typealias OutboundOut = ByteBuffer

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        let length = frame.data.readableBytes
        var output = context.channel.allocator.buffer(capacity: WebSocketFrameHeader.maxLength + length)
        WebSocketFrameHeader.write(
            fin: frame.fin, opcode: frame.opcode, length: length, maskKey: frame.maskKey, into: &output,
            rsv: (frame.rsv1, frame.rsv2, frame.rsv3))
        if let key = frame.maskKey {
            output.writeWebSocketMasked(frame.data, key: key)
        } else {
            output.writeImmutableBuffer(frame.data)
        }
        context.write(wrapOutboundOut(output), promise: promise)
    }
}

@available(*, unavailable)
extension MaskingFrameEncoder: Sendable {}
