import HybridConnections

/// A W3C trace context (`traceparent: 00-{trace-id}-{parent-id}-{flags}`), as plain values.
public struct TraceContext: Sendable, Hashable, CustomStringConvertible {
    /// 32 lowercase hex digits.
    public var traceID: String
    /// 16 lowercase hex digits: the span this context names.
    public var spanID: String
    public var sampled: Bool

    public init(traceID: String, spanID: String, sampled: Bool = true) {
        self.traceID = traceID
        self.spanID = spanID
        self.sampled = sampled
    }

    /// Parses a `traceparent` header; nil for anything malformed, all-zero ids or version `ff` (the
    /// spec's rule: ignore it and start a new trace). Byte by byte: it runs for every sender and accept.
    public init?(traceparent: String) {
        var header = traceparent
        guard
            let parsed = header.withUTF8({ bytes -> (String, String, Bool)? in
                var start = 0
                var end = bytes.count
                while start < end, bytes[start] == 0x20 || bytes[start] == 0x09 { start += 1 }
                while end > start, bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09 { end -= 1 }
                let field = UnsafeBufferPointer(rebasing: bytes[start..<end])
                // version(2) - trace-id(32) - parent-id(16) - flags(2): 55 bytes; version 00 has exactly these,
                // later versions may append "-…".
                let dash = UInt8(ascii: "-")
                guard field.count >= 55, field[2] == dash, field[35] == dash, field[52] == dash,
                    let version = Self.hexByte(field[0], field[1]), version != 0xFF,
                    let flags = Self.hexByte(field[53], field[54]),
                    field.count == 55 || (version != 0 && field[55] == dash),
                    let traceID = Self.lowercaseHex(field, 3..<35), let spanID = Self.lowercaseHex(field, 36..<52)
                else { return nil }
                return (traceID, spanID, flags & 1 == 1)
            })
        else { return nil }
        (traceID, spanID, sampled) = parsed
    }

    private static func hexByte(_ high: UInt8, _ low: UInt8) -> UInt8? {
        guard let high = PercentEncoding.hexValue(high), let low = PercentEncoding.hexValue(low) else { return nil }
        return high << 4 | low
    }

    /// The range as lowercase hex, nil when it holds anything but hex digits or only zeros.
    private static func lowercaseHex(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> String? {
        var nonZero = false
        for index in range {
            guard PercentEncoding.hexValue(bytes[index]) != nil else { return nil }
            if bytes[index] != UInt8(ascii: "0") { nonZero = true }
        }
        guard nonZero else { return nil }
        return String(unsafeUninitializedCapacity: range.count) { out in
            for (offset, index) in range.enumerated() {
                let byte = bytes[index]
                out[offset] = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "F") ? byte + 32 : byte
            }
            return range.count
        }
    }

    public var traceparent: String { "00-\(traceID)-\(spanID)-\(sampled ? "01" : "00")" }

    public var description: String { traceparent }

    /// A new root context.
    public static func newTrace() -> TraceContext {
        TraceContext(traceID: randomHex(bytes: 16), spanID: randomHex(bytes: 8))
    }

    /// A new span in the same trace.
    public func child() -> TraceContext {
        TraceContext(traceID: traceID, spanID: Self.randomHex(bytes: 8), sampled: sampled)
    }

    /// `bytes` random bytes as lowercase hex, never all zeros; one allocation.
    static func randomHex(bytes count: Int) -> String {
        let digits: StaticString = "0123456789abcdef"
        var generator = SystemRandomNumberGenerator()
        while true {
            var nonZero = false
            let text = String(unsafeUninitializedCapacity: count * 2) { out in
                digits.withUTF8Buffer { digits in
                    // Eight bytes per draw: each draw is a getrandom(2) call.
                    var word: UInt64 = 0
                    for index in 0..<count {
                        if index % 8 == 0 { word = generator.next() }
                        let byte = UInt8(truncatingIfNeeded: word >> (8 * UInt64(index % 8)))
                        if byte != 0 { nonZero = true }
                        out[2 * index] = digits[Int(byte >> 4)]
                        out[2 * index + 1] = digits[Int(byte & 0x0F)]
                    }
                }
                return count * 2
            }
            if nonZero { return text }
        }
    }
}
