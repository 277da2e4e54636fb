import NIOCore

extension TimeAmount {
    /// A time amount from configuration seconds, which may have a fraction. Saturating: NaN is zero and
    /// anything beyond ±100 years is 100 years, so no value can trap the conversion.
    public static func fractionalSeconds(_ seconds: Double) -> TimeAmount {
        guard !seconds.isNaN else { return .zero }
        let bounded = min(max(seconds, -3_155_760_000), 3_155_760_000)
        return .nanoseconds(Int64((bounded * 1_000_000_000).rounded()))
    }

    /// Seconds, for metrics and spans.
    public var seconds: Double { Double(nanoseconds) / 1e9 }
}

extension Duration {
    /// Seconds, for metrics and spans.
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }

    /// Whole milliseconds, for log lines.
    public var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
