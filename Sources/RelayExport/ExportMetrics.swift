import RelayTelemetry

/// Why the exporter gave records up. Each is a bound or a final answer; nothing else loses data.
public enum DropReason: String, Sendable, CaseIterable {
    /// One record over the batch cap: it can never be sent.
    case oversize
    /// The in-memory queue was full (the sink is far behind and no spool takes the overflow).
    case queueFull = "queue_full"
    /// The endpoint refused the batch for good (400, 403, 404, 413, …).
    case rejected
    /// Application Insights refused some items of a batch for good, or quota (402/439).
    case partialRejected = "partial_rejected"
    /// The spool reached its size bound and its oldest batch was removed.
    case spoolFull = "spool_full"
    /// A spooled batch outlived the age bound.
    case spoolExpired = "spool_expired"
    /// Shutdown deadline passed and no spool could keep the batch.
    case shutdown
}

/// The exporter's own health on `/metrics`, all `hyrelay_export_*`.
extension RelayMetrics {
    func exportBatch(sink: String, outcome: String) {
        counter(
            "export_batches", "Batches finished by the exporter, by sink and outcome.",
            [
                ("sink", sink), ("outcome", outcome),
            ]
        ).increment()
    }

    func exportRecordsDelivered(sink: String, stream: String, count: Int) {
        counter("export_records", "Records the sink accepted, by stream.", [("sink", sink), ("stream", stream)])
            .increment(by: Int64(count))
    }

    func exportBytes(sink: String, uncompressed: Int, compressed: Int) {
        let help = "Bytes of batches cut by the exporter, before (json) and after (gzip) compression."
        counter("export_bytes", help, [("sink", sink), ("encoding", "json")]).increment(by: Int64(uncompressed))
        counter("export_bytes", help, [("sink", sink), ("encoding", "gzip")]).increment(by: Int64(compressed))
    }

    func exportAttempt(sink: String, status: String) {
        counter(
            "export_attempts", "Delivery attempts by answer: HTTP status, or network/credential.",
            [
                ("sink", sink), ("status", status),
            ]
        ).increment()
    }

    private func exportRetryCounters(sink: String) -> (retries: Counter, retryAfter: Counter) {
        (
            counter("export_retries", "Attempts that will be made again later.", [("sink", sink)]),
            counter(
                "export_retry_after_seconds", "Seconds the endpoints asked the exporter to wait (Retry-After).",
                [("sink", sink)])
        )
    }

    func exportRetry(sink: String, retryAfterSeconds: Double?) {
        let counters = exportRetryCounters(sink: sink)
        counters.retries.increment()
        if let retryAfterSeconds { counters.retryAfter.increment(by: retryAfterSeconds) }
    }

    private func exportDropCounter(sink: String, reason: DropReason) -> Counter {
        counter(
            "export_dropped_records", "Records given up, by reason; every one is also logged.",
            [("sink", sink), ("reason", reason.rawValue)])
    }

    func exportDropped(sink: String, reason: DropReason, count: Int) {
        guard count > 0 else { return }
        exportDropCounter(sink: sink, reason: reason).increment(by: Int64(count))
    }

    /// Zero series for a sink's drops and retries from the start, so `increase()` in alerts and dashboards
    /// sees the first one (and answers 0, not nothing, while all is well).
    func registerExportSeries(sink: String) {
        for reason in DropReason.allCases { _ = exportDropCounter(sink: sink, reason: reason) }
        _ = exportRetryCounters(sink: sink)
    }

    func exportSpool(sink: String, batches: Int, bytes: Int, limitBytes: Int) {
        gauge("export_spool_batches", "Batches waiting in the disk spool.", [("sink", sink)]).set(to: Double(batches))
        gauge("export_spool_bytes", "Bytes waiting in the disk spool.", [("sink", sink)]).set(to: Double(bytes))
        gauge(
            "export_spool_limit_bytes", "The spool's size bound; beyond it the oldest batches are dropped.",
            [("sink", sink)]
        ).set(to: Double(limitBytes))
    }

    func exportQueue(sink: String, items: Int) {
        gauge("export_queue_records", "Items waiting in memory to be batched, by sink.", [("sink", sink)])
            .set(to: Double(items))
    }
}
