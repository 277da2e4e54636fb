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
        var output = context.channel.allocator.buffer(capacity: 14 + length)
        var first: UInt8 = frame.fin ? 0x80 : 0
        if frame.rsv1 { first |= 0x40 }
        if frame.rsv2 { first |= 0x20 }
        if frame.rsv3 { first |= 0x10 }
        first |= UInt8(webSocketOpcode: frame.opcode)
        output.writeInteger(first)
        let maskBit: UInt8 = frame.maskKey == nil ? 0 : 0x80
        switch length {
        case ..<126:
            output.writeInteger(maskBit | UInt8(length))
        case ..<65536:
            output.writeInteger(maskBit | 126)
            output.writeInteger(UInt16(length))
        default:
            output.writeInteger(maskBit | 127)
            output.writeInteger(UInt64(length))
        }
        if let key = frame.maskKey {
            output.writeBytes(key)
            output.writeWebSocketMasked(frame.data, key: key)
        } else {
            output.writeImmutableBuffer(frame.data)
        }
        context.write(wrapOutboundOut(output), promise: promise)
    }
}

@available(*, unavailable)
extension MaskingFrameEncoder: Sendable {}
