import AzureIdentity
import Logging
import NIOConcurrencyHelpers
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// How the exporter batches, retries and buffers.
public struct ExporterConfiguration: Sendable {
    /// A batch is cut at the latest this long after its first record.
    public var flushIntervalSeconds: Double = 5
    /// Metric snapshots of `/metrics` every so many seconds; 0 turns them off.
    public var metricsIntervalSeconds: Double = 60
    /// Records waiting to be batched; beyond this they are dropped and counted (`queue_full`).
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

    public init() {}
}

/// Takes records from any thread without blocking: a locked array with a bound.
public final class ExportIntake: Sendable {
    private struct State {
        var records: [ExportRecord] = []
        var dropped = 0
    }

    private let state = NIOLockedValueBox(State())
    public let capacity: Int

    public init(capacity: Int) {
        self.capacity = capacity
    }

    public func submit(_ record: ExportRecord) {
        state.withLockedValue { state in
            if state.records.count < capacity {
                state.records.append(record)
            } else {
                state.dropped += 1
            }
        }
    }

    public var count: Int { state.withLockedValue { $0.records.count } }

    func drain() -> (records: [ExportRecord], dropped: Int) {
        state.withLockedValue { state in
            defer { state = State() }
            return (state.records, state.dropped)
        }
    }
}

/// Ships records to one or more sinks: batches by stream, bytes, count and time; gzip; retries with backoff
/// and `Retry-After`; a disk spool while an endpoint is unavailable; a flush on shutdown. Runs as one task.
public final class TelemetryExporter: Sendable {
    public let intake: ExportIntake
    private let stopDeadline = NIOLockedValueBox<Double?>(nil)
    private let task = NIOLockedValueBox<Task<Void, Never>?>(nil)

    /// Starts the exporter. `exposition`, when given, is read every `metricsIntervalSeconds` for snapshots.
    /// `intake` may exist (and fill) before the exporter starts, so logging can be set up first.
    public init(
        sinks: [any ExportSink], configuration: ExporterConfiguration, source: ExportSource, metrics: RelayMetrics,
        logger: Logger, intake: ExportIntake? = nil, exposition: (@Sendable () -> String)? = nil
    ) throws(ExportError) {
        self.intake = intake ?? ExportIntake(capacity: configuration.queueCapacity)
        var workers: [SinkWorker] = []
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
            workers.append(
                SinkWorker(
                    sink: sink, spool: spool, schedule: configuration.retry,
                    maxMemoryBatches: configuration.maxMemoryBatches, metrics: metrics, logger: logger))
        }
        let intake = self.intake
        let stopDeadline = stopDeadline
        let loop = ExportLoop(
            intake: intake, workers: workers, configuration: configuration, source: source, metrics: metrics,
            logger: logger, exposition: exposition, stopDeadline: stopDeadline)
        task.withLockedValue { $0 = Task { await loop.run() } }
    }

    public func submit(_ record: ExportRecord) { intake.submit(record) }

    /// Hands many records over, waiting while the queue is more than half full (replay uses this).
    public func submit(contentsOf records: some Sequence<ExportRecord>) async {
        for record in records {
            while intake.count >= intake.capacity / 2 { try? await Task.sleep(for: .milliseconds(5)) }
            intake.submit(record)
        }
    }

    /// Delivers what is queued, spooling what the deadline leaves; returns when the loop has ended.
    public func shutdown(deadlineSeconds: Double) async {
        stopDeadline.withLockedValue { $0 = Date().timeIntervalSince1970 + deadlineSeconds }
        await task.withLockedValue { $0 }?.value
    }
}

/// The exporter's task: everything mutable lives here, touched by this task alone.
private struct ExportLoop: Sendable {
    let intake: ExportIntake
    let workers: [SinkWorker]
    let configuration: ExporterConfiguration
    let source: ExportSource
    let metrics: RelayMetrics
    let logger: Logger
    let exposition: (@Sendable () -> String)?
    let stopDeadline: NIOLockedValueBox<Double?>

    func run() async {
        var workers = self.workers
        var now = Date().timeIntervalSince1970
        var nextCut = now + configuration.flushIntervalSeconds
        var nextSnapshot =
            configuration.metricsIntervalSeconds > 0 ? now + configuration.metricsIntervalSeconds : .infinity
        while true {
            now = Date().timeIntervalSince1970
            let deadline = stopDeadline.withLockedValue { $0 }
            // A last snapshot on shutdown, so even a short-lived process leaves its counters behind.
            if now >= nextSnapshot || (deadline != nil && nextSnapshot.isFinite), let exposition {
                let time = Date()
                for sample in PrometheusText.samples(exposition()) {
                    intake.submit(.metric(sample, time: time, source: source))
                }
                nextSnapshot = deadline == nil ? now + configuration.metricsIntervalSeconds : .infinity
            }
            let (records, dropped) = intake.drain()
            metrics.exportQueue(records: records.count)
            if dropped > 0 {
                for worker in workers {
                    metrics.exportDropped(sink: worker.sink.name, reason: .queueFull, count: dropped)
                }
                logger.warning(
                    "export records dropped: the queue is full",
                    metadata: ["records": "\(dropped)", "reason": "queue_full"])
            }
            let cutting = now >= nextCut || deadline != nil
            for index in workers.indices {
                workers[index].add(records)
                if cutting { workers[index].cutAll() }
                workers[index].expireSpool()
            }
            if cutting { nextCut = now + configuration.flushIntervalSeconds }
            var busy = false
            for index in workers.indices {
                busy = await workers[index].pump(until: deadline) || busy
            }
            if let deadline {
                let stuck = workers.allSatisfy { $0.isIdle || $0.waits(past: deadline) }
                if (stuck && intake.count == 0) || Date().timeIntervalSince1970 >= deadline {
                    for index in workers.indices { workers[index].abandon() }
                    return
                }
            }
            if !busy && intake.count < configuration.queueCapacity / 4 {
                try? await Task.sleep(for: .milliseconds(deadline == nil ? 100 : 10))
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
    private var builders: [String: BatchBuilder] = [:]
    private var memory: [PreparedBatch] = []
    /// Unix seconds before which no attempt is made (backoff or `Retry-After`).
    private var nextAttempt: Double = 0
    private var healthy = true

    init(
        sink: any ExportSink, spool: Spool?, schedule: RetrySchedule, maxMemoryBatches: Int, metrics: RelayMetrics,
        logger: Logger
    ) {
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

    private static var nowMilliseconds: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    mutating func add(_ records: [ExportRecord]) {
        for record in records {
            guard let stream = sink.stream(for: record.table) else { continue }
            let row = sink.encode(record)
            var builder = builders[stream] ?? BatchBuilder(stream: stream, maxBytes: sink.maxBatchBytes)
            switch builder.add(row) {
            case .added: break
            case .full(let batch): enqueue(batch)
            case .oversize:
                drop(.oversize, count: 1, detail: ["bytes": "\(row.count)", "limit": "\(sink.maxBatchBytes)"])
            }
            builders[stream] = builder
        }
    }

    mutating func cutAll() {
        for stream in builders.keys.sorted() {
            if let batch = builders[stream]?.cut() { enqueue(batch) }
        }
    }

    private mutating func enqueue(_ batch: Batch) {
        let prepared: PreparedBatch
        do {
            prepared = PreparedBatch(batch: batch, gzipped: try sink.compress(batch), created: Self.nowMilliseconds)
        } catch {
            drop(.rejected, count: batch.count, detail: ["cause": "gzip failed: \(error)"])
            return
        }
        metrics.exportBytes(sink: sink.name, uncompressed: batch.body.count, compressed: prepared.gzipped.count)
        if let spool, !healthy || !spool.isEmpty {
            store(prepared, in: spool)
            return
        }
        memory.append(prepared)
        if memory.count > maxMemoryBatches {
            let oldest = memory.removeFirst()
            if let spool {
                store(oldest, in: spool)
            } else {
                drop(.queueFull, count: oldest.batch.count, detail: ["cause": "memory line full and no spool"])
            }
        }
    }

    private mutating func store(_ prepared: PreparedBatch, in spool: Spool) {
        do {
            for evicted in try spool.write(prepared) {
                drop(.spoolFull, count: evicted.count, detail: ["bound_bytes": "\(spool.maxBytes)"])
            }
        } catch {
            memory.append(prepared)
            logger.error("export spool write failed; the batch stays in memory", metadata: ["cause": "\(error)"])
        }
        reportSpool()
    }

    mutating func expireSpool() {
        guard let spool else { return }
        let expired = spool.expire(nowMilliseconds: Self.nowMilliseconds)
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
            let now = Date().timeIntervalSince1970
            guard now >= nextAttempt else { return false }
            if let deadline, now >= deadline { return false }
            let fromSpool: Spool.Entry?
            let prepared: PreparedBatch
            if let spool, let entry = spool.oldest {
                do {
                    prepared = try spool.load(entry)
                } catch {
                    spool.remove(entry)
                    drop(.rejected, count: entry.count, detail: ["cause": "unreadable spool file: \(error)"])
                    continue
                }
                fromSpool = entry
            } else if let first = memory.first {
                prepared = first
                fromSpool = nil
            } else {
                return false
            }
            let outcome = await sink.deliver(prepared)
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
                nextAttempt = Date().timeIntervalSince1970 + delay
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
                    store(prepared, in: spool)
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
                    let items = prepared.batch.items
                    let again = Batch(stream: prepared.batch.stream, items: retry.map { items[$0] })
                    if let gzipped = try? sink.compress(again) {
                        let resend = PreparedBatch(batch: again, gzipped: gzipped, created: prepared.created)
                        // Next in line: behind the finished batch, which is removed from memory below.
                        memory.insert(resend, at: fromSpool == nil ? 1 : 0)
                    }
                    metrics.exportRetry(sink: sink.name, retryAfterSeconds: retryAfter)
                    if let retryAfter { nextAttempt = Date().timeIntervalSince1970 + retryAfter }
                }
                finished = true
            }
            if finished {
                if let fromSpool {
                    spool?.remove(fromSpool)
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
    mutating func abandon() {
        cutAll()
        let left = memory
        memory = []
        for prepared in left {
            if let spool {
                store(prepared, in: spool)
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
