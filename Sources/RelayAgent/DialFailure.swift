/// A short, bounded name for why a target dial failed, for span attributes, logs and queries; NIO's error
/// text (kept in `error`) is long and varies with the address.
public enum DialFailure {
    public static func label(_ description: String) -> String {
        let text = description.lowercased()
        if text.contains("connection refused") || text.contains("errno: 111") { return "connection_refused" }
        if text.contains("timed out") || text.contains("timeout") { return "timeout" }
        if text.contains("unreachable") || text.contains("no route") { return "unreachable" }
        if text.contains("resolution") || text.contains("resolve") || text.contains("name or service") {
            return "name_resolution"
        }
        if text.contains("connection reset") { return "connection_reset" }
        return "other"
    }
}
