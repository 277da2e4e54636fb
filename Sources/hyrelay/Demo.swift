import ArgumentParser
import Crypto
import HybridConnections
import Logging
import NIOCore
import NIOPosix
import RelayAgent
import RelayIO
import RelayServer
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Run a relay, an edge, a client and a sample echo service in one process, on loopback, and move traffic.",
        discussion: """
            Nothing to configure: the relay listens on 127.0.0.1:9350 with the hybrid connection 'demo' and a \
            random key, the edge forwards 'demo' to an echo service, and the client binds 127.0.0.1:9400. After \
            the sample traffic, connect to the client port yourself (nc 127.0.0.1 9400). Ctrl-C stops.
            """
    )

    @Option(name: .customLong("relay-port"), help: "Relay port on 127.0.0.1 (0: any free port).")
    var relayPort = 9350

    @Option(name: .customLong("client-port"), help: "Client agent port on 127.0.0.1 (0: any free port).")
    var clientPort = 9400

    @Option(name: .long, help: "Concurrent sample connections.")
    var connections = 8

    @Option(name: .customLong("bytes"), help: "Bytes each sample connection sends (and gets back).")
    var bytesPerConnection = 4 << 20

    @Flag(name: .long, help: "Exit after the sample traffic instead of waiting for Ctrl-C.")
    var once = false

    @OptionGroup var telemetry: TelemetryOptions

    func run() async throws {
        let session = try TelemetrySession(telemetry: telemetry, role: "demo", tracerLabel: "hyrelay.demo")
        let metrics = session.metrics
        let group = MultiThreadedEventLoopGroup.singleton
        let key = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        let relayConfiguration = RelayConfiguration(
            listen: "127.0.0.1:\(relayPort)",
            namespaceRules: [AuthorizationRule(keyName: "demo", primaryKey: key, rights: [.listen, .send])],
            hybridConnections: [HybridConnectionConfiguration(name: "demo")])
        let relay = try await RelayServer.start(
            configuration: relayConfiguration, group: group, logger: Logger(label: "hyrelay.relay"), metrics: metrics,
            tracer: session.tracer)
        let relayAddress = "ws://127.0.0.1:\(relay.localAddress?.port ?? relayPort)"
        let service = try await EchoService.start(group: group)
        let access = RelayAccess(base: WebSocketURL(relayAddress)!, keyName: "demo", key: key)
        let edge = EdgeAgent.start(
            forwards: [
                (
                    RemoteForward(relayName: "demo", bindings: [RemoteBinding(host: "127.0.0.1", port: service.port)]),
                    access
                )
            ],
            keepAliveInterval: 30, tlsContext: nil, group: group, logger: Logger(label: "hyrelay.edge"),
            metrics: metrics, tracer: session.tracer)
        guard await edge.waitUntilOnline(timeout: .seconds(10)) else {
            throw ValidationError("the edge did not come online; see the log above")
        }
        let client = try await ClientAgent.start(
            forwards: [
                (
                    LocalForward(
                        relayName: "demo", bindings: [LocalBinding(bindAddress: "127.0.0.1", port: clientPort)]), access
                )
            ],
            tlsContext: nil, group: group, logger: Logger(label: "hyrelay.client"), metrics: metrics,
            tracer: session.tracer)
        let clientPort = client.localAddresses.first?.port ?? self.clientPort
        let side = try await telemetry.startServer(metrics: metrics, logger: Logger(label: "hyrelay.demo")) {
            edge.allOnline ? (true, "relay, edge and client up") : (false, "the edge listener is offline")
        }

        print(
            """

            HybridRelay demo
              relay   \(relayAddress)  (hybrid connection 'demo', key name 'demo')
              edge    listening on 'demo', forwarding to the echo service at 127.0.0.1:\(service.port)
              client  127.0.0.1:\(clientPort) -> relay -> edge -> echo service

            Sending \(connections) connections x \(bytesPerConnection) bytes through the tunnel...
            """)
        let started = ContinuousClock.now
        let results = try await withThrowingTaskGroup(of: EchoCheck.Result.self) { tasks in
            for _ in 0..<connections {
                tasks.addTask { try await EchoCheck.run(port: clientPort, bytes: bytesPerConnection, group: group) }
            }
            return try await tasks.reduce(into: []) { $0.append($1) }
        }
        let elapsed = ContinuousClock.now - started
        let seconds = elapsed.seconds
        let total = results.reduce(0) { $0 + $1.bytes } * 2
        let intact = results.filter(\.intact).count
        let mebibytes = Double(total) / 1_048_576
        print(
            "  \(intact)/\(results.count) connections echoed byte-exact (SHA-256), \(fixed(mebibytes)) MiB moved in "
                + "\(fixed(seconds)) s (\(fixed(mebibytes / max(seconds, 0.001))) MiB/s)")
        print(
            """

            Telemetry (every role in this process; labels role, direction, cause):
            \(Self.summary(metrics))
            Each tunnel logged its bytes, duration and close cause above ("tunnel closed").\(
                side.map { "\nPrometheus metrics: http://\($0.localAddress.map { "127.0.0.1:\($0.port ?? 0)" } ?? "?")/metrics" } ?? "")
            Try it yourself:  printf 'hello\\n' | nc -q1 127.0.0.1 \(clientPort)
            Token for SDK clients:  hyrelay token --resource http://127.0.0.1/demo --key-name demo --key '\(key)'
            """)
        if !once {
            print("Running; Ctrl-C stops.")
            await waitForTerminationSignal()
        }
        await client.shutdown(grace: .seconds(2))
        await edge.shutdown(grace: .seconds(2))
        await relay.stop()
        await session.finish()
        if let destination = session.destination {
            print("Spans, logs and metric snapshots exported to \(destination)")
        }
        await side?.stop()
        try? await service.channel.close()
        if intact != results.count { throw ExitCode(1) }
    }
}

extension Demo {
    /// The headline series of the exposition, one per line.
    static func summary(_ metrics: RelayMetrics) -> String {
        let text = metrics.exposition()
        let wanted = [
            "hyrelay_transferred_bytes_total", "hyrelay_connections_accepted_total", "hyrelay_rendezvous_total",
            "hyrelay_dials_total", "hyrelay_tunnels_closed_total", "hyrelay_listeners{",
            "hyrelay_rendezvous_duration_seconds_count",
        ]
        return text.split(separator: "\n")
            .filter { line in !line.hasPrefix("#") && wanted.contains { line.hasPrefix($0) } }
            .sorted()
            .map { "  " + $0 }
            .joined(separator: "\n")
    }
}

/// `value` with one decimal, without Foundation's formatter.
func fixed(_ value: Double) -> String {
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(abs(tenths % 10))"
}

/// The demo's sample service: echoes bytes, and closes its side after the peer's FIN.
struct EchoService {
    let channel: any Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    static func start(group: any EventLoopGroup) async throws -> EchoService {
        let channel = try await ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoHandler()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return EchoService(channel: channel)
    }

    final class EchoHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.write(data, promise: nil)
        }

        func channelReadComplete(context: ChannelHandlerContext) { context.flush() }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event {
                context.writeAndFlush(wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in
                    context.close(mode: .output, promise: nil)
                }
            }
        }
    }
}

/// One sample connection: send random bytes, half-close, read the echo to EOF, compare hashes.
enum EchoCheck {
    struct Result: Sendable {
        var bytes: Int
        var intact: Bool
    }

    static func run(port: Int, bytes: Int, group: any EventLoopGroup) async throws -> Result {
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: Result.self)
        _ = try await ClientBootstrap(group: eventLoop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(bytes: bytes, promise: promise))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return try await promise.futureResult.get()
    }

    final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let bytes: Int
        let promise: EventLoopPromise<Result>
        var sent = SHA256()
        var received = SHA256()
        var receivedCount = 0

        init(bytes: Int, promise: EventLoopPromise<Result>) {
            self.bytes = bytes
            self.promise = promise
        }

        func channelActive(context: ChannelHandlerContext) {
            var remaining = bytes
            var generator = SystemRandomNumberGenerator()
            while remaining > 0 {
                let count = min(remaining, 64 * 1024)
                var chunk = context.channel.allocator.buffer(capacity: count)
                for _ in 0..<(count / 8) { chunk.writeInteger(generator.next() as UInt64) }
                while chunk.readableBytes < count { chunk.writeInteger(UInt8.random(in: 0...255)) }
                sent.update(data: Array(chunk.readableBytesView))
                context.write(wrapOutboundOut(chunk), promise: nil)
                remaining -= count
            }
            context.flush()
            context.close(mode: .output, promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let chunk = unwrapInboundIn(data)
            receivedCount += chunk.readableBytes
            received.update(data: Array(chunk.readableBytesView))
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            promise.succeed(
                Result(bytes: receivedCount, intact: receivedCount == bytes && sent.finalize() == received.finalize()))
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
