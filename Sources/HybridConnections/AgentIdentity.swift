/// Who an agent is, sent on its listen and connect upgrades as `X-HyRelay-Agent: name=…; host=…; version=…` so
/// a relay can show it (`/v1/listeners`, logs, spans) and label listener metrics by it. Our extension: Azure
/// Relay ignores the header. Each part is bounded (64 characters of letters, digits and `._:@+-`; anything
/// else becomes `_`), so a peer can neither inject text into logs nor mint unbounded label values.
public struct AgentIdentity: Sendable, Hashable {
    public static let headerName = "X-HyRelay-Agent"
    public static let maxLength = 64

    public var name: String
    public var host: String
    public var version: String

    public init(name: String, host: String, version: String) {
        self.name = Self.bounded(name)
        self.host = Self.bounded(host)
        self.version = Self.bounded(version)
    }

    /// The header's value.
    public var headerValue: String { "name=\(name); host=\(host); version=\(version)" }

    /// Reads a header value; unknown parts are ignored, missing ones stay empty. Nil without any known part.
    public init?(headerValue: String) {
        var name = ""
        var host = ""
        var version = ""
        var known = false
        for part in headerValue.split(separator: ";").prefix(8) {
            let pair = part.split(separator: "=", maxSplits: 1)
            guard pair.count == 2 else { continue }
            let key = pair[0].trimmingWhitespace().lowercased()
            let value = pair[1].trimmingWhitespace()
            switch key {
            case "name": name = value
            case "host": host = value
            case "version": version = value
            default: continue
            }
            known = true
        }
        guard known else { return nil }
        self.init(name: name, host: host, version: version)
    }

    static func bounded(_ text: String) -> String {
        String(
            text.unicodeScalars.prefix(maxLength).map { scalar -> Character in
                let allowed =
                    scalar.isASCII
                    && (("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)
                        || "._:@+-".unicodeScalars.contains(scalar))
                return allowed ? Character(scalar) : "_"
            })
    }
}
