import ArgumentParser
import Logging
import NIOCore
import NIOPosix
import RelayExport
import RelayServer
import RelayTelemetry

enum LogLevelOption: String, ExpressibleByArgument, CaseIterable {
    case trace, debug, info, notice, warning, error, critical

    var level: Logger.Level { Logger.Level(rawValue: rawValue) ?? .info }
}

enum LogFormatOption: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// Logging and metrics options every role takes.
struct TelemetryOptions: ParsableArguments {
    @Option(
        name: .customLong("metrics"),
        help: "Serve /metrics, /healthz, /readyz and the inspection API (/v1/tunnels, /v1/listeners) on HOST:PORT.")
    var metricsAddress: String?

    @Option(name: .customLong("log-format"), help: "text or json (one JSON object per line, default text).")
    var logFormat: LogFormatOption = .text

    @Option(
        name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (default info).")
    var logLevel: LogLevelOption = .info

    @OptionGroup var export: ExportOptions

    @Option(
        name: .long,
        help: "Event-loop threads (default: one per core); 1 suits several roles sharing a small host.")
    var threads: Int?

    func validate() throws {
        if let threads, !(1...1024).contains(threads) { throw ValidationError("--threads must be 1 to 1024") }
        if let metricsAddress, HostPort(metricsAddress) == nil {
            throw ValidationError("--metrics '\(metricsAddress)' is not HOST:PORT")
        }
    }

    /// Sets up logging for `role`, and with `export` also into the exporter; call once, before anything logs.
    func bootstrapLogging(role: String, export: (ExportIntake, Logger.Level)?) {
        let level = logLevel.level
        let format = logFormat
        LoggingSystem.bootstrap { label in
            let local: any LogHandler
            switch format {
            case .json:
                var handler = JSONLogHandler(label: label, role: role)
                handler.logLevel = level
                local = handler
            case .text:
                var handler = TextLogHandler(label: label)
                handler.logLevel = level
                local = handler
            }
            guard let (intake, exportLevel) = export else { return local }
            return MultiplexLogHandler([local, ExportLogHandler(label: label, intake: intake, level: exportLevel)])
        }
    }

    /// Starts the side port when `--metrics` was given.
    func startServer(
        metrics: RelayMetrics, logger: Logger, listeners: (@Sendable () -> [LiveListenerInfo])? = nil,
        readiness: @escaping TelemetryServer.Readiness
    ) async throws -> TelemetryServer? {
        guard let metricsAddress, let address = HostPort(metricsAddress) else { return nil }
        let server = try await TelemetryServer.start(
            host: address.host, port: address.port, metrics: metrics, readiness: readiness, listeners: listeners,
            group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        logger.info("metrics served", metadata: ["address": "\(server.localAddress.map { "\($0)" } ?? metricsAddress)"])
        return server
    }
}
