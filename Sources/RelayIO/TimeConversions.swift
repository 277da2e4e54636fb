import NIOCore

extension TimeAmount {
    /// A time amount from configuration seconds, which may have a fraction.
    public static func fractionalSeconds(_ seconds: Double) -> TimeAmount {
        .nanoseconds(Int64((seconds * 1_000_000_000).rounded()))
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
