import AzureIdentity
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import RelayTelemetry
import ServiceLifecycle

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Time as the exporter sees it: injected, so retries, cuts and snapshots can be driven by a test's clock.
public protocol ExportClock: Sendable {
    /// Unix seconds.
    var now: Double { get }
    func sleep(seconds: Double) async
}

/// The wall clock and `Task.sleep`.
public struct SystemExportClock: ExportClock {
    public init() {}
    public var now: Double { Date().timeIntervalSince1970 }
    public func sleep(seconds: Double) async { try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000))) }
}

/// How the exporter batches, retries and buffers.
public struct ExporterConfiguration: Sendable {
    /// A batch is cut at the latest this long after its first record.
    public var flushIntervalSeconds: Double = 5
    /// Metric snapshots every so many seconds; 0 turns them off.
    public var metricsIntervalSeconds: Double = 60
    /// Items waiting per sink; beyond this they are dropped and counted (`queue_full`).
    public var queueCapacity = 100_000
    /// Batches held in memory per sink while it is slow; overflow goes to the spool, or is dropped without one.
    public var maxMemoryBatches = 16
    /// Where batches wait while an endpoint is down or throttling; nil keeps them in memory only.
    public var spoolDirectory: String?
    public var spoolMaxBytes = 256 << 20
    public var spoolMaxAgeSeconds: Double = 48 * 3600
    /// How long shutdown keeps delivering before it spools (or, without a spool, drops) what is left.
    public var shutdownDeadlineSeconds: Double = 10
    public var retry = RetrySchedule()
    /// Per sink name: a flush and snapshot interval of its own (OTLP's `OTEL_BSP_SCHEDULE_DELAY`,
    /// `OTEL_METRIC_EXPORT_INTERVAL`).
    public var intervals: [String: (flush: Double, metrics: Double)] = [:]

    public init() {}
}

/// Takes items from any thread without blocking: a locked array with a bound. The exporter keeps one per sink
/// and hands every item to each, so a sink that falls behind fills (and drops from) its own queue only.
public final class ExportIntake: Sendable {
    private struct State {
        var items: [TelemetryItem] = []
        var dropped = 0
        var targets: [ExportIntake] = []
    }

    private let state = NIOLockedValueBox(State())
    public let capacity: Int

    public init(capacity: Int) {
        self.capacity = capacity
    }

    public func submit(_ item: TelemetryItem) {
        let targets = state.withLockedValue { state -> [ExportIntake] in
            guard state.targets.isEmpty else { return state.targets }
            if state.items.count < capacity {
                state.items.append(item)
            } else {
                state.dropped += 1
            }
            return []
        }
        for target in targets { target.submit(item) }
    }

    /// Items waiting; once fanned out, the longest of the sinks' queues.
    public var count: Int {
        let (own, targets) = state.withLockedValue { ($0.items.count, $0.targets) }
        return targets.isEmpty ? own : targets.map(\.count).max() ?? 0
    }

    /// From now on every item goes to `targets`; what waited here already goes to each of them too.
    func fanOut(to targets: [ExportIntake]) {
        let (waiting, dropped) = state.withLockedValue { state in
            state.targets = targets
            defer {
                state.items = []
                state.dropped = 0
            }
            return (state.items, state.dropped)
        }
        for target in targets {
            for item in waiting { target.submit(item) }
            target.state.withLockedValue { $0.dropped += dropped }
        }
    }

    func drain() -> (items: [TelemetryItem], dropped: Int) {
        state.withLockedValue { state in
            defer {
                state.items = []
                state.dropped = 0
            }
            return (state.items, state.dropped)
        }
    }
}

/// Ships telemetry to one or more sinks, each in a task of its own (a stalled endpoint never delays another):
/// batches by stream, bytes, count and time; gzip; retries with backoff and `Retry-After`; a timeout per
/// delivery; a disk spool while an endpoint is unavailable; a flush on shutdown. A `Service`: it runs until
/// the service group shuts down gracefully, then flushes within its deadline.
public final class TelemetryExporter: Service, Sendable {
    public let intake: ExportIntake
    private let stopDeadline = NIOLockedValueBox<Double?>(nil)
    private let tasks = NIOLockedValueBox<[Task<Void, Never>]>([])
    private let configuration: ExporterConfiguration
    private let clock: any ExportClock

    /// Starts the exporter. `snapshot`, when given, is read every metrics interval (per sink) for metric points.
    /// `intake` may exist (and fill) before the exporter starts, so logging can be set up first.
    public init(
        sinks: [any ExportSink], configuration: ExporterConfiguration, source: ExportSource, metrics: RelayMetrics,
        logger: Logger, intake: ExportIntake? = nil, snapshot: (@Sendable () -> [MetricFamily])? = nil,
        clock: any ExportClock = SystemExportClock()
    ) throws(ExportError) {
        self.intake = intake ?? ExportIntake(capacity: configuration.queueCapacity)
        self.configuration = configuration
        self.clock = clock
        var loops: [SinkLoop] = []
        for sink in sinks {
            let spool: Spool?
            if let directory = configuration.spoolDirectory, sink.usesSpool {
                spool = try Spool(
                    directory: "\(directory)/\(sink.name)", maxBytes: configuration.spoolMaxBytes,
                    maxAgeSeconds: configuration.spoolMaxAgeSeconds)
                if let spool, !spool.isEmpty {
                    logger.info(
                        "export spool found; delivering it first",
                        metadata: ["sink": "\(sink.name)", "batches": "\(spool.depth.batches)"])
                }
            } else {
                spool = nil
            }
            let worker = SinkWorker(
                sink: sink, spool: spool, schedule: configuration.retry,
                maxMemoryBatches: configuration.maxMemoryBatches, metrics: metrics, logger: logger, clock: clock,
                stopDeadline: stopDeadline)
            let intervals = configuration.intervals[sink.name]
            loops.append(
                SinkLoop(
                    queue: ExportIntake(capacity: configuration.queueCapacity), worker: worker, source: source,
                    flushInterval: intervals?.flush ?? configuration.flushIntervalSeconds,
                    metricsInterval: intervals?.metrics ?? configuration.metricsIntervalSeconds,
                    metrics: metrics, logger: logger, snapshot: snapshot, stopDeadline: stopDeadline, clock: clock))
        }
        self.intake.fanOut(to: loops.map(\.queue))
        tasks.withLockedValue { tasks in tasks = loops.map { loop in Task { await loop.run() } } }
    }

    public func submit(_ item: TelemetryItem) { intake.submit(item) }

    /// Hands many items over, waiting while a sink's queue is more than half full (replay uses this).
    public func submit(contentsOf items: some Sequence<TelemetryItem>) async {
        for item in items {
            while intake.count >= intake.capacity / 2 { await clock.sleep(seconds: 0.005) }
            intake.submit(item)
        }
    }

    /// Runs until a graceful shutdown, then delivers what is queued within the configured deadline.
    public func run() async throws {
        try? await gracefulShutdown()
        await shutdown(deadlineSeconds: configuration.shutdownDeadlineSeconds)
    }

    /// Delivers what is queued, spooling what the deadline leaves; returns when every sink's task has ended.
    public func shutdown(deadlineSeconds: Double) async {
        let now = clock.now
        stopDeadline.withLockedValue { $0 = now + deadlineSeconds }
        for task in tasks.withLockedValue({ $0 }) { await task.value }
    }
}

/// One sink's task: everything mutable lives here, touched by this task alone.
private struct SinkLoop: Sendable {
    let queue: ExportIntake
    let worker: SinkWorker
    let source: ExportSource
    let flushInterval: Double
    let metricsInterval: Double
    let metrics: RelayMetrics
    let logger: Logger
    let snapshot: (@Sendable () -> [MetricFamily])?
    let stopDeadline: NIOLockedValueBox<Double?>
    let clock: any ExportClock

    func run() async {
        var worker = self.worker
        let name = worker.sink.name
        var now = clock.now
        var nextCut = now + flushInterval
        var nextSnapshot = metricsInterval > 0 && snapshot != nil ? now + metricsInterval : .infinity
        while true {
            now = clock.now
            let deadline = stopDeadline.withLockedValue { $0 }
            // A last snapshot on shutdown, so even a short-lived process leaves its counters behind.
            if now >= nextSnapshot || (deadline != nil && nextSnapshot.isFinite), let snapshot {
                let time = UInt64(max(0, now) * 1e9)
                queue.submit(.metrics(MetricSnapshot(time: time, families: snapshot())))
                nextSnapshot = deadline == nil ? now + metricsInterval : .infinity
            }
            let (items, dropped) = queue.drain()
            metrics.exportQueue(sink: name, items: items.count)
            if dropped > 0 {
                metrics.exportDropped(sink: name, reason: .queueFull, count: dropped)
                logger.warning(
                    "export records dropped: the queue is full",
                    metadata: ["sink": "\(name)", "records": "\(dropped)", "reason": "queue_full"])
            }
            await worker.add(items, source: source)
            let cutting = now >= nextCut || deadline != nil
            if cutting {
                await worker.cutAll()
                nextCut = now + flushInterval
            }
            await worker.expireSpool()
            let busy = await worker.pump(until: deadline)
            if let deadline {
                let stuck = worker.isIdle || worker.waits(past: deadline)
                if (stuck && queue.count == 0) || clock.now >= deadline {
                    await worker.abandon()
                    return
                }
            }
            if !busy && queue.count < queue.capacity / 4 {
                await clock.sleep(seconds: deadline == nil ? 0.1 : 0.01)
            }
        }
    }
}

/// One sink's batches: builders per stream, a short in-memory line, the spool, and the retry clock.
struct SinkWorker: Sendable {
    let sink: any ExportSink
    let spool: Spool?
    var schedule: RetrySchedule
    let maxMemoryBatches: Int
    let metrics: RelayMetrics
    let logger: Logger
    let clock: any ExportClock
    /// Set by shutdown; a delivery in flight is cut when it passes.
    let stopDeadline: NIOLockedValueBox<Double?>
    private var builders: [String: BatchBuilder] = [:]
    private var memory: [PreparedBatch] = []
    /// Unix seconds before which no attempt is made (backoff or `Retry-After`).
    private var nextAttempt: Double = 0
    private var healthy = true

    init(
        sink: any ExportSink, spool: Spool?, schedule: RetrySchedule, maxMemoryBatches: Int, metrics: RelayMetrics,
        logger: Logger, clock: any ExportClock, stopDeadline: NIOLockedValueBox<Double?>
    ) {
        self.clock = clock
        self.stopDeadline = stopDeadline
        self.sink = sink
        self.spool = spool
        self.schedule = schedule
        self.maxMemoryBatches = maxMemoryBatches
        self.metrics = metrics
        self.logger = logger
        metrics.registerExportSeries(sink: sink.name)
        reportSpool()
    }

    var isIdle: Bool { memory.isEmpty && (spool?.isEmpty ?? true) && builders.values.allSatisfy(\.isEmpty) }

    /// Backing off beyond `deadline`: nothing more will be sent before it.
    func waits(past deadline: Double) -> Bool { nextAttempt >= deadline }

    private var nowMilliseconds: Int64 { Int64(clock.now * 1000) }

    mutating func add(_ items: [TelemetryItem], source: ExportSource) async {
        for item in items {
            for row in sink.encode(item, source: source) {
                var builder = builders[row.stream] ?? BatchBuilder(stream: row.stream, maxBytes: sink.maxBatchBytes)
                switch builder.add(row.bytes) {
                case .added: break
                case .full(let batch): await enqueue(batch)
                case .oversize:
                    drop(
                        .oversize, count: 1, detail: ["bytes": "\(row.bytes.count)", "limit": "\(sink.maxBatchBytes)"])
                }
                builders[row.stream] = builder
            }
        }
    }

    mutating func cutAll() async {
        for stream in builders.keys.sorted() {
            if let batch = builders[stream]?.cut() { await enqueue(batch) }
        }
    }

    private mutating func enqueue(_ batch: Batch) async {
        let prepared: PreparedBatch
        do {
            prepared = PreparedBatch(batch: batch, gzipped: try sink.compress(batch), created: nowMilliseconds)
        } catch {
            drop(.rejected, count: batch.count, detail: ["cause": "gzip failed: \(ErrorWords.describe(error))"])
            return
        }
        metrics.exportBytes(
            sink: sink.name, uncompressed: batch.uncompressedBytes, compressed: prepared.gzipped.count)
        if let spool, !healthy || !spool.isEmpty {
            await store(prepared, in: spool)
            return
        }
        memory.append(prepared)
        if memory.count > maxMemoryBatches {
            let oldest = memory.removeFirst()
            if let spool {
                await store(oldest, in: spool)
            } else {
                drop(.queueFull, count: oldest.batch.count, detail: ["cause": "memory line full and no spool"])
            }
        }
    }

    private mutating func store(_ prepared: PreparedBatch, in spool: Spool) async {
        do {
            let evicted = try await Self.onFilePool { try spool.write(prepared) }
            for entry in evicted {
                drop(.spoolFull, count: entry.count, detail: ["bound_bytes": "\(spool.maxBytes)"])
            }
        } catch {
            memory.append(prepared)
            logger.error(
                "export spool write failed; the batch stays in memory",
                metadata: ["cause": "\(ErrorWords.describe(error))"])
        }
        reportSpool()
    }

    /// Spool files are read, written and removed on NIO's thread pool, off the cooperative pool every sink's task
    /// runs on.
    private static func onFilePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(body)
    }

    mutating func expireSpool() async {
        let now = nowMilliseconds
        guard let spool, spool.hasExpired(nowMilliseconds: now) else { return }
        let expired = (try? await Self.onFilePool { spool.expire(nowMilliseconds: now) }) ?? []
        for entry in expired {
            drop(.spoolExpired, count: entry.count, detail: ["age_bound_seconds": "\(spool.maxAgeSeconds)"])
        }
        if !expired.isEmpty { reportSpool() }
    }

    private func reportSpool() {
        guard let spool else { return }
        let depth = spool.depth
        metrics.exportSpool(
            sink: sink.name, batches: depth.batches, bytes: depth.bytes, limitBytes: spool.maxBytes)
    }

    /// Sends due batches, oldest first (spool before memory). Returns whether more could be sent right away.
    mutating func pump(until deadline: Double?) async -> Bool {
        for _ in 0..<16 {
            let now = clock.now
            guard now >= nextAttempt else { return false }
            if let deadline, now >= deadline { return false }
            let fromSpool: Spool.Entry?
            let prepared: PreparedBatch
            if let spool, let entry = spool.oldest {
                do {
                    prepared = try await Self.onFilePool { try spool.load(entry) }
                } catch {
                    try? await Self.onFilePool { spool.remove(entry) }
                    drop(
                        .rejected, count: entry.count,
                        detail: ["cause": "unreadable spool file: \(ErrorWords.describe(error))"])
                    continue
                }
                fromSpool = entry
            } else if let first = memory.first {
                prepared = first
                fromSpool = nil
            } else {
                return false
            }
            let outcome = await deliverWithin(sink.deliveryTimeoutSeconds, prepared)
            let finished: Bool
            switch outcome {
            case .delivered:
                metrics.exportAttempt(sink: sink.name, status: "ok")
                metrics.exportBatch(sink: sink.name, outcome: "delivered")
                metrics.exportRecordsDelivered(
                    sink: sink.name, stream: prepared.batch.stream, count: prepared.batch.count)
                finished = true
            case .retry(let status, let retryAfter):
                metrics.exportAttempt(sink: sink.name, status: status)
                metrics.exportRetry(sink: sink.name, retryAfterSeconds: retryAfter)
                let delay = schedule.failed(retryAfter: retryAfter, random: Double.random(in: 0..<1))
                nextAttempt = clock.now + delay
                if healthy {
                    logger.warning(
                        "export endpoint unavailable; batches wait and are retried",
                        metadata: [
                            "sink": "\(sink.name)", "status": "\(status)", "retry_in_s": "\(delay)",
                            "spool": "\(spool?.directory ?? "none")",
                        ])
                }
                healthy = false
                if fromSpool == nil, let spool {
                    memory.removeFirst()
                    await store(prepared, in: spool)
                }
                return false
            case .rejected(let status, let code):
                metrics.exportAttempt(sink: sink.name, status: status)
                metrics.exportBatch(sink: sink.name, outcome: "rejected")
                var detail: Logger.Metadata = [
                    "status": "\(status)", "error_code": "\(code)", "request_id": "\(prepared.requestID)",
                ]
                if status == "401" {
                    detail["cause"] =
                        "a freshly fetched token was refused too: check the token audience (the endpoint's cloud), the tenant and the identity"
                }
                drop(.rejected, count: prepared.batch.count, detail: detail)
                finished = true
            case .partial(let retry, let dropped, let retryAfter):
                metrics.exportAttempt(sink: sink.name, status: "206")
                metrics.exportBatch(sink: sink.name, outcome: "partial")
                let accepted = prepared.batch.count - retry.count - dropped
                metrics.exportRecordsDelivered(sink: sink.name, stream: prepared.batch.stream, count: accepted)
                drop(.partialRejected, count: dropped, detail: ["request_id": "\(prepared.requestID)"])
                if !retry.isEmpty {
                    // A batch read back from the spool kept only its bytes: its JSON items are found again there.
                    let items =
                        prepared.batch.items.isEmpty
                        ? Batch.items(of: (try? Gzip.decompress(prepared.gzipped)) ?? []) : prepared.batch.items
                    let again = Batch(
                        stream: prepared.batch.stream, items: retry.filter { $0 < items.count }.map { items[$0] })
                    if let gzipped = try? sink.compress(again) {
                        let resend = PreparedBatch(batch: again, gzipped: gzipped, created: prepared.created)
                        // Next in line: behind the finished batch, which is removed from memory below.
                        memory.insert(resend, at: fromSpool == nil ? 1 : 0)
                    }
                    metrics.exportRetry(sink: sink.name, retryAfterSeconds: retryAfter)
                    if let retryAfter { nextAttempt = clock.now + retryAfter }
                }
                finished = true
            }
            if finished {
                if let fromSpool, let spool {
                    try? await Self.onFilePool { spool.remove(fromSpool) }
                    reportSpool()
                } else {
                    memory.removeFirst()
                }
                if !healthy, outcome == .delivered {
                    logger.info("export endpoint recovered", metadata: ["sink": "\(sink.name)"])
                    healthy = true
                    schedule.succeeded()
                }
            }
        }
        return true
    }

    /// At the shutdown deadline: batches still in memory go to the spool, or are dropped and counted.
    mutating func abandon() async {
        await cutAll()
        let left = memory
        memory = []
        for prepared in left {
            if let spool {
                await store(prepared, in: spool)
            } else {
                drop(.shutdown, count: prepared.batch.count, detail: ["cause": "shutdown deadline, no spool"])
            }
        }
        if let spool, !spool.isEmpty {
            logger.info(
                "export spool kept for the next start",
                metadata: [
                    "sink": "\(sink.name)", "batches": "\(spool.depth.batches)", "directory": "\(spool.directory)",
                ])
        }
    }

    /// One delivery, given up after `seconds` or at the shutdown deadline (even one set while it runs), then
    /// retried like a network failure: an endpoint that accepts and never answers costs this sink that long, and
    /// no other sink anything.
    private func deliverWithin(_ seconds: Double, _ prepared: PreparedBatch) async -> DeliveryOutcome {
        let sink = self.sink
        let clock = self.clock
        let stopDeadline = self.stopDeadline
        let giveUp = clock.now + seconds
        return await withTaskGroup(of: DeliveryOutcome?.self) { group in
            group.addTask { await sink.deliver(prepared) }
            group.addTask {
                while !Task.isCancelled {
                    let limit = min(giveUp, stopDeadline.withLockedValue { $0 } ?? .infinity)
                    let now = clock.now
                    if now >= limit { return nil }
                    await clock.sleep(seconds: min(0.05, limit - now))
                }
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? .retry(status: "timeout", retryAfter: nil)
        }
    }

    private func drop(_ reason: DropReason, count: Int, detail: Logger.Metadata) {
        guard count > 0 else { return }
        metrics.exportDropped(sink: sink.name, reason: reason, count: count)
        var metadata = detail
        metadata["sink"] = "\(sink.name)"
        metadata["reason"] = "\(reason.rawValue)"
        metadata["records"] = "\(count)"
        logger.warning("export records dropped", metadata: metadata)
    }
}
