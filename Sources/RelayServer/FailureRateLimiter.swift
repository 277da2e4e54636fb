/// Per-source budget of failed authentications: a token bucket of `burst` failures refilling at
/// `perSecond`. Failures from a source that used it up are answered 429; tokens are always checked, so a
/// good one passes whatever its neighbours behind the same address did. Memory is bounded by `maxSources`.
struct FailureRateLimiter {
    private struct Bucket {
        var tokens: Double
        var updated: Double
    }

    let burst: Double
    let perSecond: Double
    let maxSources: Int
    private var buckets: [String: Bucket] = [:]

    init(burst: Double, perSecond: Double, maxSources: Int = 10_000) {
        self.burst = burst
        self.perSecond = perSecond
        self.maxSources = maxSources
    }

    private func refilled(_ bucket: Bucket, now: Double) -> Bucket {
        Bucket(tokens: min(burst, bucket.tokens + (now - bucket.updated) * perSecond), updated: now)
    }

    /// Whether `source` has no failures left to spend.
    func isBlocked(source: String, now: Double) -> Bool {
        guard let bucket = buckets[source] else { return false }
        return refilled(bucket, now: now).tokens < 1
    }

    mutating func recordFailure(source: String, now: Double) {
        var bucket = buckets[source].map { refilled($0, now: now) } ?? Bucket(tokens: burst, updated: now)
        bucket.tokens = max(0, bucket.tokens - 1)
        if buckets[source] == nil && buckets.count >= maxSources { evict(now: now) }
        buckets[source] = bucket
    }

    /// Drops sources whose budget is whole again, then, if still full, the least recently failing half.
    private mutating func evict(now: Double) {
        buckets = buckets.filter { refilled($0.value, now: now).tokens < burst }
        if buckets.count >= maxSources {
            let keep = buckets.sorted { $0.value.updated > $1.value.updated }.prefix(maxSources / 2)
            buckets = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
        }
    }

    var sourceCount: Int { buckets.count }
}
