/// Reason phrases in Azure's shape, `"{text}. TrackingId:{id}, SystemTracker:{tracker}, Timestamp:{utc}"`,
/// because SDK users search logs for them (reference §1.10).
public struct RelayErrorText: Sendable {
    public static let noListeners = "There are no listeners connected for the endpoint"
    public static let endpointNotFound = "Endpoint does not exist"
    public static let webSocketOnly = "BadRequest: This endpoint is only for web-socket requests"
    public static let acceptTimeout =
        "None of the connected listeners accepted the connection within the allowed timeout"
    public static let responseTimeout =
        "The request was routed to the listener but the listener did not respond in the required time"
    public static let tooManyListeners =
        "MaximumListenersPerEndpoint: The maximum number of listeners (25) for the endpoint has been reached"
    public static let rendezvousNotFound = "The rendezvous address is not valid or has expired"

    /// Formats one reason phrase; `epochSeconds` becomes `yyyy-MM-ddTHH:mm:ss` UTC.
    public static func phrase(
        _ text: String, trackingId: String, systemTracker: String, epochSeconds: Int64
    )
        -> String
    {
        let trimmed = text.hasSuffix(".") ? String(text.dropLast()) : text
        let clean = trimmed.filter { $0 != "\r" && $0 != "\n" }
        return
            "\(clean). TrackingId:\(trackingId), SystemTracker:\(systemTracker), Timestamp:\(CivilTime.utc(epochSeconds))"
    }
}

/// UTC calendar time without a calendar API (FoundationEssentials has none to format with).
public enum CivilTime {
    /// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), so no calendar API is needed.
    public static func utc(_ epochSeconds: Int64) -> String {
        let days = epochSeconds >= 0 ? epochSeconds / 86_400 : (epochSeconds - 86_399) / 86_400
        let secondsOfDay = epochSeconds - days * 86_400
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return
            "\(year)-\(two(month))-\(two(day))T\(two(secondsOfDay / 3600)):\(two(secondsOfDay / 60 % 60)):\(two(secondsOfDay % 60))"
    }

    /// Seconds since 1970 of `YYYY-MM-DDTHH:MM:SS[.fff]Z` (what `utc` and the exporter write); nil otherwise.
    public static func epochSeconds(_ text: String) -> Double? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 20, bytes.last == UInt8(ascii: "Z"), bytes[4] == UInt8(ascii: "-"),
            bytes[7] == UInt8(ascii: "-"), bytes[10] == UInt8(ascii: "T"), bytes[13] == UInt8(ascii: ":"),
            bytes[16] == UInt8(ascii: ":")
        else { return nil }
        func number(_ range: Range<Int>) -> Int64? { Int64(String(decoding: bytes[range], as: UTF8.self)) }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
            let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var fraction = 0.0
        if bytes.count > 20 {
            guard bytes[19] == UInt8(ascii: "."),
                let digits = Double("0" + String(decoding: bytes[19..<(bytes.count - 1)], as: UTF8.self))
            else { return nil }
            fraction = digits
        }
        // Days from civil (Howard Hinnant), the inverse of `utc`.
        let shifted = month <= 2 ? year - 1 : year
        let era = (shifted >= 0 ? shifted : shifted - 399) / 400
        let yearOfEra = shifted - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        return Double(days * 86_400 + hour * 3600 + minute * 60 + second) + fraction
    }
}
