import CompressNIO
import NIOCore

/// gzip through the system zlib. Decompression reads concatenated members, as the file sink writes them.
public enum Gzip {
    public static func compress(_ bytes: [UInt8]) throws -> [UInt8] {
        var input = ByteBuffer(bytes: bytes)
        var output = try input.compress(with: .gzip())
        return output.readBytes(length: output.readableBytes) ?? []
    }

    /// Every member of `bytes`, up to `maxSize` bytes of output. With `tolerateTruncation`, a damaged
    /// member (a crash while writing) ends the output instead of failing it.
    public static func decompress(
        _ bytes: [UInt8], maxSize: Int = 64 << 20, tolerateTruncation: Bool = false
    ) throws
        -> [UInt8]
    {
        var input = ByteBuffer(bytes: bytes)
        var output: [UInt8] = []
        while input.readableBytes > 0 {
            let before = input
            do {
                var member = try input.decompress(with: .gzip(), maxSize: maxSize - output.count)
                output += member.readBytes(length: member.readableBytes) ?? []
            } catch {
                if tolerateTruncation { break }
                throw error
            }
            if input.readableBytes == before.readableBytes { break }
        }
        return output
    }
}
