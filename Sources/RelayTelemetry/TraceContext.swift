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
    /// spec's rule: ignore it and start a new trace).
    public init?(traceparent: String) {
        let parts = traceparent.trimmingWhitespace().split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0].count == 2, Self.isHex(parts[0]), parts[0] != "ff",
            parts[1].count == 32, Self.isHex(parts[1]), parts[2].count == 16, Self.isHex(parts[2]),
            parts[3].count == 2, Self.isHex(parts[3]), let flags = UInt8(parts[3], radix: 16)
        else { return nil }
        // Version 00 has exactly four fields; later versions may add more.
        if parts[0] == "00" && parts.count != 4 { return nil }
        guard parts[1].contains(where: { $0 != "0" }), parts[2].contains(where: { $0 != "0" }) else { return nil }
        traceID = parts[1].lowercased()
        spanID = parts[2].lowercased()
        sampled = flags & 1 == 1
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

    static func randomHex(bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        var text = ""
        repeat {
            text = ""
            for _ in 0..<bytes {
                let byte = UInt8.random(in: 0...255, using: &generator)
                text += byte < 16 ? "0" + String(byte, radix: 16) : String(byte, radix: 16)
            }
        } while !text.contains(where: { $0 != "0" })
        return text
    }

    static func isHex(_ text: Substring) -> Bool {
        text.allSatisfy { $0.isHexDigit && ($0.isNumber || $0.isLowercase || $0.isUppercase) && $0.isASCII }
    }
}
