import NIOConcurrencyHelpers

/// Work under way that a graceful stop waits for (open tunnels, rendezvous not answered yet): a count, and the
/// stops waiting for it to reach zero, woken when it does rather than polling it.
public final class InFlightWork: Sendable {
    private struct State {
        var count = 0
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    public var count: Int { state.withLockedValue { $0.count } }

    /// Adds `amount` (negative when work ends); waiters resume once the count is zero.
    public func add(_ amount: Int) {
        let woken: [CheckedContinuation<Void, Never>] = state.withLockedValue { state in
            state.count += amount
            guard state.count <= 0, !state.waiters.isEmpty else { return [] }
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in woken { waiter.resume() }
    }

    /// Waits until no work is under way or `timeout` passes; returns whether none is.
    public func waitUntilIdle(timeout: Duration) async -> Bool {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.idle() }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
        return count <= 0
    }

    /// Returns once the count is zero, or the task is cancelled.
    private func idle() async {
        let id = state.withLockedValue { state -> Int in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLockedValue { state -> Bool in
                    // Cancelled before it could wait: `wake(id)` already ran and found nothing to resume.
                    if state.count <= 0 || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLockedValue { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}
