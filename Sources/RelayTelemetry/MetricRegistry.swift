import NIOConcurrencyHelpers
import Synchronization

/// A monotonically increasing count. Integer steps and fractional steps (seconds asked to wait) are kept apart
/// so the common integer case never loses precision.
public final class Counter: Sendable {
    private let whole = Synchronization.Atomic<Int64>(0)
    private let fractionBits = Synchronization.Atomic<UInt64>(Double.zero.bitPattern)

    init() {}

    public func increment() { increment(by: Int64(1)) }

    public func increment(by amount: Int64) {
        precondition(amount >= 0, "a counter only goes up")
        whole.wrappingAdd(amount, ordering: .relaxed)
    }

    public func increment(by amount: Double) {
        precondition(amount >= 0, "a counter only goes up")
        fractionBits.addToDouble(amount)
    }

    var integerValue: Int64 { whole.load(ordering: .relaxed) }
    var fractionValue: Double { Double(bitPattern: fractionBits.load(ordering: .relaxed)) }
    public var value: Double { Double(integerValue) + fractionValue }
}

/// A value that goes up and down.
public final class Gauge: Sendable {
    private let bits = Synchronization.Atomic<UInt64>(Double.zero.bitPattern)

    init() {}

    public func set(to value: Double) { bits.store(value.bitPattern, ordering: .relaxed) }

    public func increment(by amount: Double = 1) { add(amount) }

    public func decrement(by amount: Double = 1) { add(-amount) }

    private func add(_ amount: Double) { bits.addToDouble(amount) }

    public var value: Double { Double(bitPattern: bits.load(ordering: .relaxed)) }
}

extension Synchronization.Atomic where Value == UInt64 {
    /// Adds to the `Double` these bits hold, retrying while another thread got there first.
    fileprivate func addToDouble(_ amount: Double) {
        var current = load(ordering: .relaxed)
        while true {
            let (exchanged, original) = compareExchange(
                expected: current, desired: (Double(bitPattern: current) + amount).bitPattern, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }
}

/// The latest trace that landed in one histogram bucket.
public struct Exemplar: Sendable, Equatable {
    public var traceID: String
    public var value: Double
    /// Unix seconds.
    public var timestamp: Double

    public init(traceID: String, value: Double, timestamp: Double) {
        self.traceID = traceID
        self.value = value
        self.timestamp = timestamp
    }
}

/// Observations counted into fixed buckets, with their sum and, per bucket, the latest exemplar.
public final class ValueHistogram: Sendable {
    struct State {
        /// Per bucket, not cumulative; one more than `bounds` for +Inf.
        var counts: [UInt64]
        var sum: Double = 0
        var exemplars: [Int: Exemplar] = [:]
    }

    let bounds: [Double]
    private let state: NIOLockedValueBox<State>

    init(bounds: [Double]) {
        self.bounds = bounds
        state = NIOLockedValueBox(State(counts: Array(repeating: 0, count: bounds.count + 1)))
    }

    public func record(_ value: Double) { record(value, exemplar: nil) }

    /// Records `value`; with an exemplar, it becomes the latest of the bucket `value` falls in.
    public func record(_ value: Double, exemplar: Exemplar?) {
        let index = bounds.firstIndex { value <= $0 } ?? bounds.count
        state.withLockedValue { state in
            state.counts[index] += 1
            state.sum += value
            if let exemplar { state.exemplars[index] = exemplar }
        }
    }

    var point: HistogramPoint {
        state.withLockedValue { state in
            HistogramPoint(bounds: bounds, counts: state.counts, sum: state.sum, exemplars: state.exemplars)
        }
    }
}

/// A histogram's value at one moment.
public struct HistogramPoint: Sendable, Equatable {
    /// Upper bounds, without +Inf.
    public var bounds: [Double]
    /// Observations per bucket (not cumulative); the last is the +Inf bucket.
    public var counts: [UInt64]
    public var sum: Double
    /// By bucket index.
    public var exemplars: [Int: Exemplar]

    public var count: UInt64 { counts.reduce(0, +) }
}

public enum MetricKind: String, Sendable {
    case counter, gauge, histogram
}

/// One series' value at one moment.
public enum MetricValue: Sendable, Equatable {
    case counter(integer: Int64, fraction: Double)
    case gauge(Double)
    case histogram(HistogramPoint)
}

extension MetricValue {
    /// A counter's or gauge's value; a histogram's count.
    public var number: Double {
        switch self {
        case .counter(let integer, let fraction): return Double(integer) + fraction
        case .gauge(let value): return value
        case .histogram(let point): return Double(point.count)
        }
    }
}

public struct MetricPoint: Sendable, Equatable {
    /// In the order they were registered with.
    public var labels: [(String, String)]
    public var value: MetricValue

    public static func == (lhs: MetricPoint, rhs: MetricPoint) -> Bool {
        lhs.labels.elementsEqual(rhs.labels) { $0 == $1 } && lhs.value == rhs.value
    }
}

/// A metric family at one moment: what `/metrics`, OpenMetrics and every export sink render, typed once.
public struct MetricFamily: Sendable, Equatable {
    /// The exposition name: counters end in `_total`, duration histograms in `_seconds`.
    public var name: String
    public var help: String
    public var kind: MetricKind
    public var points: [MetricPoint]
}

/// One sample line of the Prometheus exposition: a counter's or gauge's value, or a histogram's cumulative
/// bucket (with `le`), sum or count. `/metrics` writes these, the Azure rows carry the same ones.
public struct MetricSample: Sendable {
    public var name: String
    public var labels: [(String, String)]
    public var value: Double
    /// The value as the exposition writes it: counts without a fraction, Go's spelling of special values.
    public var text: String
    /// A histogram bucket's latest exemplar (OpenMetrics only).
    public var exemplar: Exemplar?
}

extension MetricFamily {
    /// The family's samples in exposition order.
    public var samples: [MetricSample] {
        var samples: [MetricSample] = []
        for point in points {
            switch point.value {
            case .counter(let integer, let fraction):
                let value = Double(integer) + fraction
                let text = fraction == 0 ? String(integer) : PrometheusExposition.number(value)
                samples.append(MetricSample(name: name, labels: point.labels, value: value, text: text))
            case .gauge(let value):
                samples.append(
                    MetricSample(
                        name: name, labels: point.labels, value: value, text: PrometheusExposition.number(value)))
            case .histogram(let histogram):
                var cumulative: UInt64 = 0
                for (index, count) in histogram.counts.enumerated() {
                    cumulative += count
                    let bound =
                        index < histogram.bounds.count ? PrometheusExposition.number(histogram.bounds[index]) : "+Inf"
                    samples.append(
                        MetricSample(
                            name: name + "_bucket", labels: point.labels + [("le", bound)], value: Double(cumulative),
                            text: String(cumulative), exemplar: histogram.exemplars[index]))
                }
                samples.append(
                    MetricSample(
                        name: name + "_sum", labels: point.labels, value: histogram.sum,
                        text: PrometheusExposition.number(histogram.sum)))
                samples.append(
                    MetricSample(
                        name: name + "_count", labels: point.labels, value: Double(cumulative), text: String(cumulative)
                    ))
            }
        }
        return samples
    }
}

/// The process's metrics: families by name, series by label values, each created once and then updated
/// lock-free (counters, gauges) or under a per-histogram lock. Replaces a text-only registry so every sink reads
/// the same typed snapshot.
public final class MetricRegistry: Sendable {
    fileprivate enum Series {
        case counter(Counter)
        case gauge(Gauge)
        case histogram(ValueHistogram)
    }

    /// A series' labels as a dictionary key, hashed pair by pair: looking a series up (every counter update
    /// on a hot path does) builds no string.
    private struct LabelKey: Hashable {
        let labels: [(String, String)]

        static func == (lhs: LabelKey, rhs: LabelKey) -> Bool { lhs.labels.elementsEqual(rhs.labels) { $0 == $1 } }

        func hash(into hasher: inout Hasher) {
            hasher.combine(labels.count)
            for (key, value) in labels {
                hasher.combine(key)
                hasher.combine(value)
            }
        }
    }

    private struct Family {
        var help: String
        var kind: MetricKind
        var keys: [LabelKey] = []
        var series: [LabelKey: Series] = [:]
    }

    private struct State {
        var names: [String] = []
        var families: [String: Family] = [:]
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    public func counter(name: String, help: String, labels: [(String, String)]) -> Counter {
        series(name: name, help: help, kind: .counter, labels: labels) { .counter(Counter()) }.asCounter!
    }

    public func gauge(name: String, help: String, labels: [(String, String)]) -> Gauge {
        series(name: name, help: help, kind: .gauge, labels: labels) { .gauge(Gauge()) }.asGauge!
    }

    public func histogram(
        name: String, help: String, labels: [(String, String)], bounds: [Double]
    )
        -> ValueHistogram
    {
        series(name: name, help: help, kind: .histogram, labels: labels) { .histogram(ValueHistogram(bounds: bounds)) }
            .asHistogram!
    }

    private func series(
        name: String, help: String, kind: MetricKind, labels: [(String, String)], make: () -> Series
    ) -> Series {
        let key = LabelKey(labels: labels)
        return state.withLockedValue { state in
            if let existing = state.families[name]?.series[key] { return existing }
            var family = state.families[name] ?? Family(help: help, kind: kind)
            precondition(family.kind == kind, "metric \(name) registered as \(family.kind) and \(kind)")
            if state.families[name] == nil { state.names.append(name) }
            let created = make()
            family.keys.append(key)
            family.series[key] = created
            state.families[name] = family
            return created
        }
    }

    /// Every family and series as they are now, in registration order.
    public func snapshot() -> [MetricFamily] {
        let families = state.withLockedValue { state in
            state.names.map { name in
                let family = state.families[name]!
                return (name, family.help, family.kind, family.keys.map { ($0.labels, family.series[$0]!) })
            }
        }
        return families.map { name, help, kind, series in
            MetricFamily(
                name: name, help: help, kind: kind,
                points: series.map { labels, metric in
                    switch metric {
                    case .counter(let counter):
                        return MetricPoint(
                            labels: labels,
                            value: .counter(integer: counter.integerValue, fraction: counter.fractionValue))
                    case .gauge(let gauge): return MetricPoint(labels: labels, value: .gauge(gauge.value))
                    case .histogram(let histogram):
                        return MetricPoint(labels: labels, value: .histogram(histogram.point))
                    }
                })
        }
    }
}

extension MetricRegistry.Series {
    var asCounter: Counter? {
        if case .counter(let counter) = self { return counter }
        return nil
    }

    var asGauge: Gauge? {
        if case .gauge(let gauge) = self { return gauge }
        return nil
    }

    var asHistogram: ValueHistogram? {
        if case .histogram(let histogram) = self { return histogram }
        return nil
    }
}
