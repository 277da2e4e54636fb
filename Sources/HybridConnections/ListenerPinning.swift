/// A sender's choice of listeners (`Microsoft-Relay-AllowedListeners` / `Microsoft-Relay-DisallowedListeners`,
/// comma-separated tracking ids, the `sb-hc-id` each listener listened with): only allowed ones, if any are
/// named, and never a disallowed one. Ids compare case-insensitively, as GUIDs do.
public struct ListenerPinning: Equatable, Sendable {
    public static let allowedHeader = "Microsoft-Relay-AllowedListeners"
    public static let disallowedHeader = "Microsoft-Relay-DisallowedListeners"
    /// Azure's text when listeners are online and none qualifies (a 404).
    public static let noneQualify =
        "None of the connected listeners meet the AllowedListeners/DisallowedListeners criteria"

    /// Nil: every listener is allowed.
    public var allowed: Set<String>?
    public var disallowed: Set<String>

    /// From the header values (each possibly repeated, so several values are joined).
    public init(allowed: [String], disallowed: [String]) {
        let allowedIds = Self.ids(allowed)
        // A header that names nobody restricts nothing (rather than shutting every listener out).
        self.allowed = allowedIds.isEmpty ? nil : allowedIds
        self.disallowed = Self.ids(disallowed)
    }

    /// Whether the sender restricts its listeners at all.
    public var restricts: Bool { allowed != nil || !disallowed.isEmpty }

    public func admits(trackingId: String) -> Bool {
        let id = trackingId.lowercased()
        if disallowed.contains(id) { return false }
        return allowed?.contains(id) ?? true
    }

    private static func ids(_ values: [String]) -> Set<String> {
        Set(
            values.flatMap { $0.split(separator: ",") }
                .map { $0.trimmingCharacters(in: " \t").lowercased() }
                .filter { !$0.isEmpty })
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}
