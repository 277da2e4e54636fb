#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The JSON text rules shared by the log lines and the exporter's rows.
public enum JSONText {
    /// Appends `value` as a quoted JSON string, escaping quotes, backslashes and control characters.
    public static func appendString(_ value: String, to out: inout String) {
        out += "\""
        // Most values need no escape: appended whole, not scalar by scalar.
        if !value.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out += value
            out += "\""
            return
        }
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    /// The bytes `value` takes as a quoted JSON string, quotes included, escaped as `appendString` and
    /// Foundation's encoder escape it (`"` and `\\` two bytes, other control characters up to six). What fits in
    /// a message is measured in these, not in the raw bytes: a header of 32 KiB of `"` is 64 KiB of JSON.
    public static func encodedLength(_ value: String) -> Int {
        var length = 2
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"),
                0x08, 0x0C:
                length += 2
            case ..<0x20: length += 6
            default: length += 1
            }
        }
        return length
    }

    /// `2026-11-29T14:02:54.123Z`: UTC with millisecond precision, as Azure Monitor's `datetime` columns take it.
    public static func timestamp(_ date: Date) -> String {
        timestamp(millisecondsSinceEpoch: Int64((date.timeIntervalSince1970 * 1000).rounded(.down)))
    }

    public static func timestamp(millisecondsSinceEpoch milliseconds: Int64) -> String {
        let seconds = milliseconds / 1000
        let fraction = Int(milliseconds % 1000)
        let pad = fraction < 10 ? "00" : fraction < 100 ? "0" : ""
        return "\(CivilTime.utc(seconds)).\(pad)\(fraction)Z"
    }
}
