/// At most one log line per key and interval, for events a flood produces once per connection; the
/// lines in between are summed into the next one's `suppressed` count.
public struct LogThrottle: Sendable {
    public let interval: Double
    private var lastLogged: [String: Double] = [:]
    private var suppressed: [String: Int] = [:]

    public init(interval: Double) {
        self.interval = interval
    }

    /// Returns the number of lines suppressed since the last one when a line may be written now, or nil.
    public mutating func shouldLog(_ key: String, now: Double) -> Int? {
        if let last = lastLogged[key], now - last < interval {
            suppressed[key, default: 0] += 1
            return nil
        }
        lastLogged[key] = now
        return suppressed.removeValue(forKey: key) ?? 0
    }
}
