/// Listener registrations and waiting rendezvous, as plain values: no locks, no I/O. The relay keeps one
/// behind a mutex; tests drive it directly.
struct RendezvousTable<Listener, Pending> {
    enum AddListenerResult: Equatable {
        case added
        case limitReached
    }

    private var listeners: [String: [(id: UInt64, listener: Listener)]] = [:]
    /// Waiting rendezvous by key, with the listener each was dispatched to until that listener opens it.
    private var pending: [String: (value: Pending, listenerID: UInt64?)] = [:]
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

    /// Removes a listener. `orphans` are the rendezvous dispatched to it that it had not opened: they are
    /// removed too, since the answer their senders wait for can no longer come.
    mutating func removeListener(entity: String, id: UInt64) -> (removed: Bool, orphans: [Pending]) {
        guard var list = listeners[Self.key(entity)], let index = list.firstIndex(where: { $0.id == id }) else {
            return (false, [])
        }
        list.remove(at: index)
        listeners[Self.key(entity)] = list.isEmpty ? nil : list
        let orphanKeys = pending.filter { $0.value.listenerID == id }.map(\.key)
        return (true, orphanKeys.compactMap { pending.removeValue(forKey: $0)?.value })
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

    /// Parks a rendezvous; `listenerID` is the listener it was dispatched to, nil once that listener has
    /// opened it (it then no longer depends on the listener's control channel).
    mutating func addPending(key: String, _ value: Pending, dispatchedTo listenerID: UInt64? = nil) {
        pending[key] = (value, listenerID)
    }

    /// A waiting rendezvous, left in place.
    func pending(key: String) -> Pending? {
        pending[key]?.value
    }

    /// Removes and returns a waiting rendezvous: each address works once.
    mutating func takePending(key: String) -> Pending? {
        pending.removeValue(forKey: key)?.value
    }

    var pendingCount: Int { pending.count }
}

extension RendezvousTable: Sendable where Listener: Sendable, Pending: Sendable {}
