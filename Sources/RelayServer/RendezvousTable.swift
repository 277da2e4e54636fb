/// Listener registrations and waiting rendezvous, as plain values: no locks, no I/O. The relay keeps one
/// behind a mutex; tests drive it directly.
struct RendezvousTable<Listener, Pending> {
    enum AddListenerResult: Equatable {
        case added
        case limitReached
    }

    private var listeners: [String: [(id: UInt64, listener: Listener)]] = [:]
    private var pending: [String: Pending] = [:]
    var listenerLimit: Int

    init(listenerLimit: Int) {
        self.listenerLimit = listenerLimit
    }

    private static func key(_ entity: String) -> String { entity.lowercased() }

    mutating func addListener(entity: String, id: UInt64, _ listener: Listener) -> AddListenerResult {
        var list = listeners[Self.key(entity), default: []]
        guard list.count < listenerLimit else { return .limitReached }
        list.append((id, listener))
        listeners[Self.key(entity)] = list
        return .added
    }

    /// Returns whether the listener was still registered.
    @discardableResult
    mutating func removeListener(entity: String, id: UInt64) -> Bool {
        guard var list = listeners[Self.key(entity)], let index = list.firstIndex(where: { $0.id == id }) else {
            return false
        }
        list.remove(at: index)
        listeners[Self.key(entity)] = list.isEmpty ? nil : list
        return true
    }

    func listenerCount(entity: String) -> Int {
        listeners[Self.key(entity)]?.count ?? 0
    }

    func listeners(entity: String) -> [Listener] {
        listeners[Self.key(entity)]?.map(\.listener) ?? []
    }

    var allListeners: [Listener] { listeners.values.flatMap { $0.map(\.listener) } }

    /// A uniformly random listener among those `isEligible` accepts ("balanced across them in random
    /// order").
    func pickListener(
        entity: String, using generator: inout some RandomNumberGenerator,
        isEligible: (Listener) -> Bool = { _ in true }
    ) -> Listener? {
        let eligible = (listeners[Self.key(entity)] ?? []).filter { isEligible($0.listener) }
        return eligible.randomElement(using: &generator)?.listener
    }

    mutating func addPending(key: String, _ value: Pending) {
        pending[key] = value
    }

    /// A waiting rendezvous, left in place.
    func pending(key: String) -> Pending? {
        pending[key]
    }

    /// Removes and returns a waiting rendezvous: each address works once.
    mutating func takePending(key: String) -> Pending? {
        pending.removeValue(forKey: key)
    }

    var pendingCount: Int { pending.count }
}

extension RendezvousTable: Sendable where Listener: Sendable, Pending: Sendable {}
