import NIOConcurrencyHelpers

/// Label values chosen by peers (agent names), capped: the first `limit` distinct values keep their own series
/// for the life of the process, later ones share `other`, and a missing value is `unknown`. A fleet of any size,
/// or a peer inventing names, cannot grow the exposition without bound.
public final class BoundedLabels: Sendable {
    public static let other = "other"
    public static let unknown = "unknown"

    private let seen = NIOLockedValueBox(Set<String>())
    public let limit: Int

    public init(limit: Int) {
        self.limit = limit
    }

    public func label(for value: String?) -> String {
        guard let value, !value.isEmpty else { return Self.unknown }
        return seen.withLockedValue { seen in
            if seen.contains(value) { return value }
            guard seen.count < limit else { return Self.other }
            seen.insert(value)
            return value
        }
    }
}
