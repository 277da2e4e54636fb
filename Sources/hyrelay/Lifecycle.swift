import Logging
import RelayExport
import RelayTelemetry
import ServiceLifecycle
import UnixSignals

/// A role (relay, client or edge) as a service: it runs until the group shuts down gracefully, then lets open
/// tunnels finish for `grace` seconds while refusing new ones.
struct RoleService<Role: DrainableAgent>: Service {
    let role: Role
    let grace: Double
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        logger.info("draining", metadata: ["open_tunnels": "\(role.tunnelCount)", "grace_seconds": "\(grace)"])
        await role.shutdown(grace: .milliseconds(Int(grace * 1000)))
    }
}

/// Reads the configuration again on every SIGHUP until shutdown; a failed reload keeps the running one.
struct ReloadService: Service {
    let reload: @Sendable () async throws -> Logger.Metadata
    let logger: Logger

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            do {
                let changes = try await reload()
                logger.info("configuration reloaded", metadata: changes)
            } catch {
                logger.error(
                    "reload failed, the running configuration stays",
                    metadata: ["cause": "\(ErrorWords.describe(error))"])
            }
        }
    }
}

/// The exporter (itself a `Service`) and the side port: stopped last, so the role's final spans and logs are
/// delivered and `/metrics` answers while the role drains.
struct TelemetryService: Service {
    let session: TelemetrySession
    let side: TelemetryServer?

    func run() async throws {
        if let exporter = session.exporter {
            try await exporter.run()
        } else {
            try? await gracefulShutdown()
        }
        await session.closeHTTP()
        await side?.stop()
    }
}

/// Runs a role as a `ServiceGroup` until SIGTERM or SIGINT (a graceful shutdown: the role drains for
/// `grace`, then telemetry is flushed), reloading on SIGHUP (`reload` answers what changed, for the log).
/// The group shuts its services down in reverse order: role, reload, telemetry.
func serveUntilTerminated(
    _ role: some DrainableAgent, grace: Double, session: TelemetrySession, side: TelemetryServer?, logger: Logger,
    reload: @escaping @Sendable () async throws -> Logger.Metadata
) async throws {
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(
            services: [
                TelemetryService(session: session, side: side), ReloadService(reload: reload, logger: logger),
                RoleService(role: role, grace: grace, logger: logger),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
}

/// Suspends until SIGTERM or SIGINT.
func waitForTerminationSignal() async {
    for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { return }
}
