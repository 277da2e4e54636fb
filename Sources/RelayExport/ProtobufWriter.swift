/// The protobuf wire format, as much as OTLP needs: varints, fixed 64-bit values and length-delimited fields.
/// Hand-written because the OTLP messages are few and fixed; swift-protobuf's generator would cost a plugin
/// build in every CI run (see docs/architecture.md).
public struct ProtobufWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    private enum WireType: UInt64 {
        case varint = 0, fixed64 = 1, lengthDelimited = 2, fixed32 = 5
    }

    private mutating func tag(_ field: UInt64, _ type: WireType) { varint(field << 3 | type.rawValue) }

    private mutating func varint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }

    private mutating func littleEndian(_ value: UInt64) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// A varint field (uint64, int64 as two's complement, enum, bool); zero is the default and is left out
    /// unless `always` (inside a `oneof`, zero is a value).
    public mutating func uint64(_ field: UInt64, _ value: UInt64, always: Bool = false) {
        guard value != 0 || always else { return }
        tag(field, .varint)
        varint(value)
    }

    public mutating func int64(_ field: UInt64, _ value: Int64, always: Bool = false) {
        uint64(field, UInt64(bitPattern: value), always: always)
    }

    public mutating func bool(_ field: UInt64, _ value: Bool) { uint64(field, value ? 1 : 0) }

    /// A fixed64 field (timestamps, counts); written even when zero where `always` says so (a histogram's count).
    public mutating func fixed64(_ field: UInt64, _ value: UInt64, always: Bool = false) {
        guard value != 0 || always else { return }
        tag(field, .fixed64)
        littleEndian(value)
    }

    public mutating func sfixed64(_ field: UInt64, _ value: Int64) {
        tag(field, .fixed64)
        littleEndian(UInt64(bitPattern: value))
    }

    /// A double field, always written: in a `oneof` (a point's value) zero is a value, not an absence.
    public mutating func double(_ field: UInt64, _ value: Double) {
        tag(field, .fixed64)
        littleEndian(value.bitPattern)
    }

    public mutating func fixed32(_ field: UInt64, _ value: UInt32) {
        guard value != 0 else { return }
        tag(field, .fixed32)
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func string(_ field: UInt64, _ value: String) {
        guard !value.isEmpty else { return }
        bytes(field, Array(value.utf8))
    }

    public mutating func bytes(_ field: UInt64, _ value: [UInt8]) {
        tag(field, .lengthDelimited)
        varint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    /// A nested message, written by `body`.
    public mutating func message(_ field: UInt64, _ body: (inout ProtobufWriter) -> Void) {
        var nested = ProtobufWriter()
        body(&nested)
        bytes(field, nested.bytes)
    }

    /// A packed repeated fixed64 field.
    public mutating func packedFixed64(_ field: UInt64, _ values: [UInt64]) {
        guard !values.isEmpty else { return }
        tag(field, .lengthDelimited)
        varint(UInt64(values.count * 8))
        for value in values { littleEndian(value) }
    }

    /// A packed repeated double field.
    public mutating func packedDoubles(_ field: UInt64, _ values: [Double]) {
        packedFixed64(field, values.map(\.bitPattern))
    }
}
