/// RFC 9110 §5 field syntax: what may be written into an HTTP/1.1 head. Listener-supplied headers pass
/// through it, so a CR or LF in a value can never start a header (or a response) of its own.
public enum HTTPFieldSyntax {
    /// `token = 1*tchar`.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy(isTokenCharacter)
    }

    /// Visible characters, spaces and tabs (obs-text included); no CR, LF, NUL or other controls.
    public static func isValidValue(_ value: String) -> Bool {
        value.utf8.allSatisfy { $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }
    }

    /// Why `headers` cannot be sent, naming the first offending field; nil when all are valid.
    public static func problem(in headers: [String: String]) -> String? {
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) {
            guard isValidName(name) else { return "header name '\(escaped(name))' is not an HTTP token" }
            guard isValidValue(value) else { return "header '\(name)' has a control character in its value" }
        }
        return nil
    }

    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }

    /// A name shown in an error: control characters escaped, at most 64 characters.
    static func escaped(_ text: String) -> String {
        LogText.escapingControlCharacters(String(text.prefix(64)))
    }
}

/// Text that goes into a log line on behalf of a peer.
public enum LogText {
    /// Control characters as `\n`, `\r`, `\t` or `\u{XX}`, so no value can start a line of its own.
    public static func escapingControlCharacters(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var out = ""
        out.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where isControl(scalar): out += "\\u{\(String(scalar.value, radix: 16))}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// A `key=value` field's value: control characters escaped, and quoted (`"` and `\\` escaped inside) when it
    /// holds a space, `=` or `"` or is empty, so a value a peer chose (`/$hc/x peer=10.9.9.9`) stays one field.
    public static func fieldValue(_ text: String) -> String {
        let escaped = escapingControlCharacters(text)
        let needsQuotes =
            escaped.isEmpty
            || escaped.utf8.contains { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "=") || $0 == UInt8(ascii: "\"") }
        guard needsQuotes else { return escaped }
        var out = "\""
        for character in escaped {
            if character == "\"" || character == "\\" { out.append("\\") }
            out.append(character)
        }
        return out + "\""
    }

    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar == "\u{2028}" || scalar == "\u{2029}"
    }
}
