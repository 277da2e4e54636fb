import ArgumentParser
import AzureIdentity
import Logging
import NIOCore
import RelayExport
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Where telemetry is shipped: Azure Monitor (Logs Ingestion, Application Insights) or, by default, local files.
struct ExportOptions: ParsableArguments {
    @Option(
        name: .customLong("logs-ingestion-endpoint"),
        help:
            "Logs Ingestion endpoint (DCR or DCE URL); needs --dcr-immutable-id and Entra credentials in the environment."
    )
    var logsIngestionEndpoint: String?

    @Option(
        name: .customLong("logs-ingestion-audience"),
        help: ArgumentHelp(
            "Token audience for the Logs Ingestion endpoint, e.g. https://monitor.azure.us.",
            discussion:
                "Default: the endpoint's cloud (*.monitor.azure.us, *.monitor.azure.cn), else the cloud of AZURE_AUTHORITY_HOST, else https://monitor.azure.com. Needed only for private-link or proxy host names in a sovereign cloud."
        ))
    var logsIngestionAudience: String?

    @Option(name: .customLong("dcr-immutable-id"), help: "The data collection rule's immutableId (dcr-...).")
    var ruleID: String?

    @Option(name: .customLong("spans-stream"), help: "Stream for spans.")
    var spansStream = ExportTable.spans.defaultStream

    @Option(name: .customLong("logs-stream"), help: "Stream for log events.")
    var logsStream = ExportTable.logs.defaultStream

    @Option(name: .customLong("metrics-stream"), help: "Stream for metric snapshots.")
    var metricsStream = ExportTable.metrics.defaultStream

    @Option(
        name: .customLong("appinsights-connection-string"),
        help: "Application Insights connection string (default: $APPLICATIONINSIGHTS_CONNECTION_STRING).")
    var appInsightsConnectionString: String?

    @Option(
        name: .customLong("otlp-endpoint"),
        help: ArgumentHelp(
            "OTLP/HTTP base URL, e.g. http://collector:4318 (default: $OTEL_EXPORTER_OTLP_ENDPOINT).",
            discussion:
                "Spans, logs and metrics go to /v1/traces, /v1/logs and /v1/metrics as protobuf. The OTEL_EXPORTER_OTLP_* variables (per-signal endpoints, headers, compression, timeout), OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_SCHEDULE_DELAY and OTEL_METRIC_EXPORT_INTERVAL apply; see docs/telemetry.md."
        ))
    var otlpEndpoint: String?

    @Option(name: .customLong("otlp-header"), help: "A header for OTLP requests, KEY=VALUE (repeatable).")
    var otlpHeaders: [String] = []

    @Option(
        name: .customLong("export-dir"),
        help:
            "Directory of the gzip NDJSON file sink: used when no other sink is set, and beside them when given (default STATE/telemetry)."
    )
    var exportDirectory: String?

    @Flag(name: .customLong("no-export"), help: "Export nothing (not even to files).")
    var noExport = false

    @Option(name: .customLong("export-interval"), help: "Seconds before a partial batch is sent.")
    var flushInterval: Double = 5

    @Option(
        name: .customLong("export-metrics-interval"), help: "Seconds between metric snapshots; 0 for none."
    )
    var metricsInterval: Double = 60

    @Option(name: .customLong("export-log-level"), help: "Lowest log level exported (default info).")
    var exportLogLevel: LogLevelOption = .info

    @Option(
        name: .customLong("spool-dir"),
        help: "Disk spool for batches an endpoint cannot take now (default STATE/spool/ROLE).")
    var spoolDirectory: String?

    @Option(name: .customLong("spool-max-mb"), help: "Spool size bound in MiB.")
    var spoolMaxMebibytes = 256

    @Option(name: .customLong("spool-max-age-hours"), help: "Spooled batches older than this are dropped.")
    var spoolMaxAgeHours: Double = 48

    @Option(name: .customLong("export-shutdown-seconds"), help: "Time to flush on shutdown.")
    var shutdownSeconds: Double = 10

    @Option(name: .long, help: "Instance name in exported telemetry (default: the host name).")
    var instance: String?

    func validate() throws {
        if (logsIngestionEndpoint == nil) != (ruleID == nil) {
            throw ValidationError("--logs-ingestion-endpoint and --dcr-immutable-id go together")
        }
        if let audience = logsIngestionAudience, !audience.lowercased().hasPrefix("https://") {
            throw ValidationError("--logs-ingestion-audience '\(audience)' is not an https:// URL")
        }
        guard flushInterval > 0, metricsInterval >= 0, spoolMaxMebibytes > 0, spoolMaxAgeHours > 0,
            shutdownSeconds >= 0
        else { throw ValidationError("export intervals and bounds must be positive") }
    }

    /// `$HYRELAY_STATE_DIR`, else `$XDG_STATE_HOME/hyrelay`, else `~/.local/state/hyrelay`.
    static var stateDirectory: String {
        let environment = ProcessInfo.processInfo.environment
        if let directory = environment["HYRELAY_STATE_DIR"], !directory.isEmpty { return directory }
        if let state = environment["XDG_STATE_HOME"], !state.isEmpty { return state + "/hyrelay" }
        return (environment["HOME"] ?? "/tmp") + "/.local/state/hyrelay"
    }

    var connectionString: String? {
        appInsightsConnectionString
            ?? ProcessInfo.processInfo.environment["APPLICATIONINSIGHTS_CONNECTION_STRING"].flatMap {
                $0.isEmpty ? nil : $0
            }
    }

    var hasAzureSink: Bool { logsIngestionEndpoint != nil || connectionString != nil }

    /// OTLP settings from the flags and `OTEL_*`; nil when no OTLP endpoint is set.
    func otlpConfiguration() throws -> OTLPConfiguration? {
        do {
            return try OTLPConfiguration.from(
                environment: ProcessInfo.processInfo.environment, endpoint: otlpEndpoint, headers: otlpHeaders)
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// The Azure sinks configured by flags and environment.
    func azureSinks(http: AzureHTTP) throws -> [any ExportSink] {
        var sinks: [any ExportSink] = []
        let environment = ProcessInfo.processInfo.environment
        do {
            if let endpoint = logsIngestionEndpoint, let ruleID {
                let scope =
                    try logsIngestionAudience.map(MonitorCloud.scope(audience:))
                    ?? MonitorCloud.logsIngestionScope(
                        endpoint: endpoint, authorityHost: environment["AZURE_AUTHORITY_HOST"])
                let credential = TokenCredential(
                    source: try CredentialSource.fromEnvironment(environment), scope: scope, http: http)
                sinks.append(
                    try LogsIngestionSink(
                        endpoint: endpoint, ruleID: ruleID,
                        streams: [.spans: spansStream, .logs: logsStream, .metrics: metricsStream],
                        credential: credential, http: http))
            }
            if let text = connectionString {
                let connection = try ApplicationInsightsConnectionString(text)
                let credential = try connection.aadAudience.map { audience throws(IdentityError) in
                    TokenCredential(
                        source: try CredentialSource.fromEnvironment(environment),
                        scope: MonitorCloud.scope(audience: audience), http: http)
                }
                sinks.append(try ApplicationInsightsSink(connection: connection, credential: credential, http: http))
            }
        } catch let error as ApplicationInsightsConnectionString.ParseError {
            throw ValidationError("Application Insights connection string: \(error.description)")
        } catch let error as ExportError {
            throw ValidationError(error.description)
        } catch let error as IdentityError {
            throw ValidationError(error.description)
        }
        return sinks
    }

    func configuration(role: String) -> ExporterConfiguration {
        var configuration = ExporterConfiguration()
        configuration.flushIntervalSeconds = flushInterval
        configuration.metricsIntervalSeconds = metricsInterval
        configuration.spoolDirectory = spoolDirectory ?? "\(Self.stateDirectory)/spool/\(role)"
        configuration.spoolMaxBytes = spoolMaxMebibytes << 20
        configuration.spoolMaxAgeSeconds = spoolMaxAgeHours * 3600
        configuration.shutdownDeadlineSeconds = shutdownSeconds
        return configuration
    }

    func source(role: String) throws -> ExportSource {
        let host = ProcessInfo.processInfo.hostName
        let resource: (serviceName: String?, attributes: [(String, String)])
        do {
            resource = try OTLPConfiguration.resource(environment: ProcessInfo.processInfo.environment)
        } catch {
            throw ValidationError(error.description)
        }
        return ExportSource(
            role: role, instance: instance ?? host, serviceName: resource.serviceName,
            version: HybridRelayVersion.current, hostName: host, attributes: resource.attributes)
    }
}

/// Logging, metrics, tracer and exporter of one role, set up in the right order: the exporter's intake
/// exists before logging is bootstrapped, the exporter (which logs) starts after.
struct TelemetrySession {
    let metrics: RelayMetrics
    let tracer: HopTracer
    let exporter: TelemetryExporter?
    let shutdownSeconds: Double
    /// Where telemetry goes, for people: the file directory or the Azure sinks.
    let destination: String?
    private let http: AzureHTTP?

    init(telemetry: TelemetryOptions, role: String, tracerLabel: String) throws {
        // Before anything uses NIO's shared event-loop group (the exporter's HTTP client is first).
        if let threads = telemetry.threads { NIOSingletons.groupLoopCountSuggestion = threads }
        let export = telemetry.export
        metrics = RelayMetrics()
        shutdownSeconds = export.shutdownSeconds
        guard !export.noExport else {
            telemetry.bootstrapLogging(role: role, export: nil)
            tracer = HopTracer(logger: Logger(label: tracerLabel))
            exporter = nil
            http = nil
            destination = nil
            return
        }
        let http = AzureHTTP()
        do {
            (exporter, tracer, destination) = try Self.startExport(
                export: export, telemetry: telemetry, role: role, tracerLabel: tracerLabel, http: http,
                metrics: metrics)
        } catch {
            http.shutdownBeforeUse()
            throw error
        }
        self.http = http
    }

    private static func startExport(
        export: ExportOptions, telemetry: TelemetryOptions, role: String, tracerLabel: String, http: AzureHTTP,
        metrics: RelayMetrics
    ) throws -> (TelemetryExporter, HopTracer, String) {
        var sinks = try export.azureSinks(http: http)
        var configuration = export.configuration(role: role)
        let source = try export.source(role: role)
        var destinations = sinks.map(\.name)
        if let otlp = try export.otlpConfiguration() {
            let sink = OTLPSink(configuration: otlp, source: source, http: http)
            sinks.append(sink)
            configuration.intervals[sink.name] = (otlp.flushIntervalSeconds, otlp.metricsIntervalSeconds)
            destinations.append(
                "OTLP (\(otlp.signals.keys.map(\.rawValue).sorted().joined(separator: ", ")) to \(otlp.signals.values.map(\.endpoint).sorted().first ?? ""))"
            )
        }
        let intake = ExportIntake(capacity: configuration.queueCapacity)
        telemetry.bootstrapLogging(role: role, export: (intake, export.exportLogLevel.level))
        let logger = Logger(label: "hyrelay.export")
        if sinks.isEmpty || export.exportDirectory != nil {
            let directory = export.exportDirectory ?? "\(ExportOptions.stateDirectory)/telemetry"
            destinations.append("gzip NDJSON files in \(directory)")
            do {
                sinks.append(
                    try FileSink(
                        directory: directory, role: role, maxFileBytes: 64 << 20, maxTotalBytes: 1 << 30, logger: logger
                    ))
            } catch {
                throw ValidationError("\(error)")
            }
        }
        let exporter: TelemetryExporter
        do {
            exporter = try Self.startExporter(
                sinks: sinks, configuration: configuration, source: source, metrics: metrics, logger: logger,
                intake: intake)
        } catch {
            throw ValidationError("\(error)")
        }
        let destination = destinations.joined(separator: " and ")
        let tracer = HopTracer(logger: Logger(label: tracerLabel)) { [intake] span in intake.submit(.span(span)) }
        logger.info(
            "exporting telemetry",
            metadata: [
                "sinks": "\(sinks.map(\.name).joined(separator: ","))", "instance": "\(source.instance)",
                "destination": "\(destination)",
            ])
        return (exporter, tracer, destination)
    }

    /// The default spool directory may be held by another process of the same role on this machine; then this
    /// one spools beside it, in a directory of its own.
    private static func startExporter(
        sinks: [any ExportSink], configuration: ExporterConfiguration, source: ExportSource, metrics: RelayMetrics,
        logger: Logger, intake: ExportIntake
    ) throws -> TelemetryExporter {
        let snapshot: @Sendable () -> [MetricFamily] = { metrics.registry.snapshot() }
        do {
            return try TelemetryExporter(
                sinks: sinks, configuration: configuration, source: source, metrics: metrics, logger: logger,
                intake: intake, snapshot: snapshot)
        } catch {
            guard case .spoolInUse = error, let directory = configuration.spoolDirectory else { throw error }
            var own = configuration
            own.spoolDirectory = "\(directory)-\(getpid())"
            logger.warning(
                "spool directory in use; using a separate one", metadata: ["directory": "\(own.spoolDirectory!)"])
            return try TelemetryExporter(
                sinks: sinks, configuration: own, source: source, metrics: metrics, logger: logger, intake: intake,
                snapshot: snapshot)
        }
    }

    /// Flushes the exporter (what the deadline leaves stays in the spool).
    func finish() async {
        await exporter?.shutdown(deadlineSeconds: shutdownSeconds)
        await closeHTTP()
    }

    /// Closes the exporter's HTTP client, once the exporter is done with it.
    func closeHTTP() async { await http?.shutdown() }

    /// A role's start-up (binding ports, loading TLS material): when it fails, the exporter is flushed and
    /// shut down before the error is reported, so the reason reaches the exported logs too.
    func starting<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            await finish()
            throw error
        }
    }
}

struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with exported telemetry files.", subcommands: [Replay.self])
}

struct Replay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ship gzip NDJSON files written by the file sink to a configured Azure sink (air-gapped sites).",
        discussion: """
            Example: hyrelay export replay --logs-ingestion-endpoint https://... --dcr-immutable-id dcr-... \
            ~/.local/state/hyrelay/telemetry/*.ndjson.gz
            Each file is renamed FILE.replaying while it is shipped (a role still writing starts a new file), \
            then FILE.delivered once every record was delivered or handed to replay's spool, so running replay \
            again sends nothing twice: what waits in the spool (the sink was away) goes with the next run, which \
            may name no files at all. When the sink refused records (dropped), the files get their names back, \
            to be sent again once the configuration is fixed. Replay exits 1 while anything waits in the spool or \
            was dropped. The files are rows for Azure Monitor's tables: OTLP is not a replay target.
            """)

    @Argument(help: "Files written by the file sink (.ndjson.gz); none to send only what waits in replay's spool.")
    var files: [String] = []

    @OptionGroup var telemetry: TelemetryOptions

    func run() async throws {
        guard telemetry.export.hasAzureSink else {
            throw ValidationError("replay needs an Azure sink: --logs-ingestion-endpoint or a connection string")
        }
        guard telemetry.export.otlpEndpoint == nil, telemetry.export.otlpHeaders.isEmpty else {
            throw ValidationError(
                "replay ships the files' rows to Azure Monitor (Logs Ingestion, Application Insights); OTLP is not a replay target: drop --otlp-endpoint and --otlp-header"
            )
        }
        let claimed = try claim(files)
        // A role that opened a file just before the rename finishes its one write first.
        try await Task.sleep(for: .milliseconds(200))
        var records: [ExportRecord] = []
        var unreadable = 0
        for (_, file) in claimed {
            let bytes: [UInt8]
            do {
                bytes = try Gzip.decompress(
                    [UInt8](try Data(contentsOf: URL(fileURLWithPath: file))), maxSize: 4 << 30,
                    tolerateTruncation: true)
            } catch {
                throw ValidationError("cannot read '\(file)': \(ErrorWords.describe(error))")
            }
            for line in bytes.split(separator: UInt8(ascii: "\n")) {
                guard let record = try? JSONDecoder().decode(FileLine.self, from: Data(line)) else {
                    unreadable += 1
                    continue
                }
                records.append(ExportRecord(table: record.table, columns: record.row))
            }
        }
        var options = telemetry
        // Replay ships the files only: none of its own metrics or logs.
        options.export.metricsInterval = 0
        options.export.exportLogLevel = .critical
        let session = try TelemetrySession(telemetry: options, role: "replay", tracerLabel: "hyrelay.replay")
        await session.exporter?.submit(contentsOf: records.map { .row($0) })
        await session.finish()
        let families = session.metrics.registry.snapshot()
        func total(_ name: String) -> Int {
            let points = families.first { $0.name == name }?.points ?? []
            return Int(points.reduce(0) { $0 + $1.value.number })
        }
        let delivered = total("hyrelay_export_records_total")
        let dropped = total("hyrelay_export_dropped_records_total")
        let spooled = total("hyrelay_export_spool_batches")
        print(
            "read \(records.count) records (\(unreadable) unreadable lines), delivered \(delivered), dropped \(dropped), "
                + "\(spooled) batch(es) left in the spool")
        // With nothing dropped, every record is delivered or waits in replay's spool, which the next run sends
        // first: the files are done, and reading them again would send the spooled ones twice. A drop (a sink
        // that refused the records: a wrong audience or DCR, a record too large) gives the files their names back,
        // so a run with the configuration fixed sends them again.
        release(claimed, delivered: dropped == 0)
        if spooled > 0 {
            print(
                "\(spooled) batch(es) wait in replay's spool: run `hyrelay export replay` again with the same sink options (no files needed) to send them"
            )
        }
        if dropped > 0 || spooled > 0 || unreadable > 0 { throw ExitCode(1) }
    }

    static let replaying = ".replaying"
    static let delivered = ".delivered"

    /// Renames each file to `FILE.replaying` (kept as it is when it already is one: a replay that was cut
    /// short); files already delivered are skipped. Returns (original name, name being read).
    private func claim(_ files: [String]) throws -> [(original: String, claimed: String)] {
        var claimed: [(String, String)] = []
        for file in files {
            if file.hasSuffix(Self.delivered) {
                print("\(file): already delivered, skipped")
                continue
            }
            if file.hasSuffix(Self.replaying) {
                claimed.append((String(file.dropLast(Self.replaying.count)), file))
                continue
            }
            guard rename(file, file + Self.replaying) == 0 else {
                // A glob that matched nothing, or a file another replay took: nothing to send twice.
                if errno == ENOENT {
                    print("\(file): no such file (delivered already?), skipped")
                    continue
                }
                throw ValidationError("cannot rename '\(file)' for replay: \(String(cString: strerror(errno)))")
            }
            claimed.append((file, file + Self.replaying))
        }
        return claimed
    }

    /// Delivered files become `FILE.delivered`; otherwise each gets its name back, unless a role has written
    /// a new file under that name meanwhile (then it stays `FILE.replaying`, which replay also takes).
    private func release(_ claimed: [(original: String, claimed: String)], delivered: Bool) {
        for (original, file) in claimed {
            if delivered {
                _ = rename(file, original + Self.delivered)
            } else if access(original, F_OK) != 0 {
                _ = rename(file, original)
            } else {
                print("\(file): kept under this name (a new '\(original)' exists); replay it again later")
            }
        }
        if delivered { print("marked \(claimed.count) file(s) delivered (\(Self.delivered))") }
    }
}

/// One line of the file sink.
struct FileLine: Decodable {
    var table: ExportTable
    var row: [String: JSONValue]
}
