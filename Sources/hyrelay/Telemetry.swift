import ArgumentParser
import HybridConnections
import Logging
import NIOCore
import NIOPosix
import RelayExport
import RelayIO
import RelayServer
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

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

    @Option(
        name: .customLong("metrics-max-connections"),
        help: "Connections the --metrics port holds at once; more are closed as they arrive.")
    var metricsMaxConnections: Int = TelemetryServer.Access.defaultMaxConnections

    @Option(
        name: .customLong("metrics-idle-timeout"),
        help: "Seconds a --metrics connection has, from its accept and from each answer, to send a whole request.")
    var metricsIdleTimeout: Double = TelemetryServer.Access.defaultIdleTimeoutSeconds

    @Option(
        name: .customLong("metrics-token-file"),
        help:
            "File holding a bearer token the --metrics port then requires on every path but /healthz and /readyz (or set HYRELAY_METRICS_TOKEN)."
    )
    var metricsTokenFile: String?

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
        if let metricsAddress, let problem = HostPort.problem(metricsAddress) {
            throw ValidationError("--metrics: \(problem)")
        }
        guard (1...100_000).contains(metricsMaxConnections) else {
            throw ValidationError("--metrics-max-connections must be 1 to 100000")
        }
        guard metricsIdleTimeout > 0, metricsIdleTimeout <= 3600 else {
            throw ValidationError("--metrics-idle-timeout must be above 0 and at most 3600 seconds")
        }
        _ = try metricsBearerToken()
    }

    /// The side port's bearer token: `--metrics-token-file` (one line), else `HYRELAY_METRICS_TOKEN`.
    func metricsBearerToken() throws -> String? {
        if let metricsTokenFile {
            let text: String
            do {
                text = try String(contentsOfFile: metricsTokenFile, encoding: .utf8)
            } catch {
                throw ValidationError("--metrics-token-file '\(metricsTokenFile)' cannot be read")
            }
            let token = text.trimmingWhitespace()
            guard !token.isEmpty, !token.contains(where: { $0.isWhitespace }) else {
                throw ValidationError("--metrics-token-file '\(metricsTokenFile)' must hold one token, no spaces")
            }
            return token
        }
        let variable = ProcessInfo.processInfo.environment["HYRELAY_METRICS_TOKEN"]?.trimmingWhitespace() ?? ""
        return variable.isEmpty ? nil : variable
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
        let access = TelemetryServer.Access(
            maxConnections: metricsMaxConnections,
            idleTimeout: .milliseconds(Int64(metricsIdleTimeout * 1000)), bearerToken: try metricsBearerToken())
        let server = try await TelemetryServer.start(
            host: address.host, port: address.port, metrics: metrics, readiness: readiness, listeners: listeners,
            access: access, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        logger.info("metrics served", metadata: ["address": "\(server.localAddress?.hostAndPort ?? metricsAddress)"])
        return server
    }
}
