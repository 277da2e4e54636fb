/// URLs as messages show them: whatever stands between `scheme://` (or the start, for `host:port` forms) and
/// the last `@` of the authority is a credential (`user:password`), replaced by `***`. Every error or log line that
/// echoes a URL a user gave (a proxy, an authority, an endpoint) goes through this.
public enum RedactedURL {
    public static func text(_ url: String) -> String {
        let start = url.firstRange(of: "://")?.upperBound ?? url.startIndex
        let authority = url[start...].prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        guard let at = authority.lastIndex(of: "@") else { return url }
        return String(url[..<start]) + "***" + String(url[at...])
    }
}
