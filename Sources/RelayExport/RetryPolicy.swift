import HybridConnections

/// What one delivery attempt came to.
public enum DeliveryOutcome: Sendable, Equatable {
    case delivered
    /// Worth trying again later: 408, 429, 5xx, a network error, or a token that could not be had.
    case retry(status: String, retryAfter: Double?)
    /// Final: the batch is dropped and counted with the service's error code.
    case rejected(status: String, code: String)
    /// Application Insights 206: `retry` items go out again, `dropped` items were refused for good.
    case partial(retry: [Int], dropped: Int, retryAfter: Double?)
}

/// How the exporter treats an HTTP status from an ingestion endpoint (reference: Logs Ingestion retries
/// 408, 429 and 5xx; other 4xx are final).
public enum StatusClass: Sendable, Equatable {
    case success, retryable, final

    public static func of(_ status: Int, success: Set<Int>) -> StatusClass {
        if success.contains(status) { return .success }
        if status == 408 || status == 429 || (500...599).contains(status) { return .retryable }
        return .final
    }
}

/// Exponential backoff with jitter between attempts on one endpoint; a server's `Retry-After` wins but is
/// capped, so a hostile or broken value cannot park the exporter for a day.
public struct RetrySchedule: Sendable {
    public var baseSeconds: Double
    public var maxSeconds: Double
    public var retryAfterCapSeconds: Double
    public private(set) var consecutiveFailures = 0

    public init(baseSeconds: Double = 0.5, maxSeconds: Double = 30, retryAfterCapSeconds: Double = 120) {
        self.baseSeconds = baseSeconds
        self.maxSeconds = maxSeconds
        self.retryAfterCapSeconds = retryAfterCapSeconds
    }

    /// Records a failure; returns how long to wait before the next attempt. `random` is in 0..<1.
    public mutating func failed(retryAfter: Double?, random: Double) -> Double {
        consecutiveFailures += 1
        if let retryAfter, retryAfter >= 0 { return min(retryAfter, retryAfterCapSeconds) }
        let exponential = min(maxSeconds, baseSeconds * Double(1 << min(consecutiveFailures - 1, 20)))
        // Full jitter on the upper half keeps many exporters from retrying in lockstep.
        return exponential / 2 + exponential / 2 * random
    }

    public mutating func succeeded() { consecutiveFailures = 0 }
}

/// Reads a server's wish to be left alone: `retry-after-ms`, `x-ms-retry-after-ms`, or `Retry-After` as
/// seconds or an HTTP date. Returns seconds from `now` (Unix seconds).
public enum RetryAfter {
    public static func seconds(headers: [(String, String)], now: Double) -> Double? {
        func value(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name }?.1.trimmingWhitespace()
        }
        for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
            if let text = value(name), let milliseconds = Double(text), milliseconds >= 0, milliseconds.isFinite {
                return milliseconds / 1000
            }
        }
        guard let text = value("retry-after") else { return nil }
        // A number from the network: finite and not negative, or not a delay at all.
        if let seconds = Double(text), seconds >= 0, seconds.isFinite { return seconds }
        return httpDate(text).map { max(0, $0 - now) }
    }

    /// `Sun, 06 Nov 1994 08:49:37 GMT` → Unix seconds.
    static func httpDate(_ text: String) -> Double? {
        let parts = text.split(separator: " ")
        guard parts.count == 6, parts[5] == "GMT", let day = Int(parts[1]), let year = Int(parts[3]) else { return nil }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard let monthIndex = months.firstIndex(of: String(parts[2])) else { return nil }
        let clock = parts[4].split(separator: ":").compactMap { Int($0) }
        guard clock.count == 3, (1...9999).contains(year), (1...31).contains(day), (0...23).contains(clock[0]),
            (0...59).contains(clock[1]), (0...60).contains(clock[2])
        else { return nil }
        return Double(daysFromCivil(year: year, month: monthIndex + 1, day: day) * 86_400)
            + Double(clock[0] * 3600 + clock[1] * 60 + clock[2])
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let shifted = month <= 2 ? year - 1 : year
        let era = (shifted >= 0 ? shifted : shifted - 399) / 400
        let yearOfEra = shifted - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}
