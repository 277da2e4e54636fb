import ArgumentParser
import AzureIdentity
import NIOHTTP1
import RelayServer
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a role's open tunnels (and a relay's listeners) from its --metrics port.",
        discussion: """
            Reads GET /v1/tunnels and, from a relay, GET /v1/listeners. Example: hyrelay status --endpoint \
            127.0.0.1:9100 --watch. Exit status 1 when the endpoint does not answer.
            """)

    @Option(name: .long, help: "The role's --metrics address, HOST:PORT.")
    var endpoint: String

    @Flag(name: .long, help: "Refresh until interrupted.")
    var watch = false

    @Option(name: .long, help: "Seconds between refreshes with --watch.")
    var interval: Double = 2

    @Flag(name: .long, help: "Print the API's JSON ({\"tunnels\": ..., \"listeners\": ...}) instead of tables.")
    var json = false

    func validate() throws {
        if let problem = HostPort.problem(endpoint) { throw ValidationError("--endpoint: \(problem)") }
        guard interval >= 0.1 else { throw ValidationError("--interval must be at least 0.1") }
    }

    private struct Combined: Encodable {
        var tunnels: [LiveTunnelInfo]
        var listeners: [LiveListenerInfo]?
    }

    func run() async throws {
        let http = AzureHTTP(requestTimeoutSeconds: 5)
        do {
            repeat {
                let text = try await fetch(http)
                if watch { print("\u{1B}[H\u{1B}[2J", terminator: "") }
                print(text, terminator: "")
                if watch { try await Task.sleep(for: .milliseconds(Int64(interval * 1000))) }
            } while watch
        } catch let error as ValidationError {
            await http.shutdown()
            print("hyrelay status: \(error.message)")
            throw ExitCode(1)
        } catch {
            await http.shutdown()
            throw error
        }
        await http.shutdown()
    }

    private func fetch(_ http: AzureHTTP) async throws -> String {
        let base = "http://\(endpoint)"
        let tunnels = try await get(http, "\(base)/v1/tunnels", as: Inspection.TunnelsBody.self)
        let listeners = try await get(
            http, "\(base)/v1/listeners", as: Inspection.ListenersBody.self, allowMissing: true)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
            let data = try encoder.encode(Combined(tunnels: tunnels?.tunnels ?? [], listeners: listeners?.listeners))
            return String(decoding: data, as: UTF8.self) + "\n"
        }
        return InspectionTables.render(
            tunnels: tunnels?.tunnels ?? [], listeners: listeners?.listeners, now: Date().timeIntervalSince1970)
    }

    /// The decoded body; nil for a 404 when `allowMissing` (an agent has no listeners).
    private func get<Body: Decodable>(
        _ http: AzureHTTP, _ url: String, as type: Body.Type, allowMissing: Bool = false
    )
        async throws -> Body?
    {
        let response: AzureResponse
        do {
            response = try await http.send(method: .GET, url: url, headers: [("Accept", "application/json")], body: nil)
        } catch {
            throw ValidationError("\(url) did not answer: \(error.description)")
        }
        if response.status == 404 && allowMissing { return nil }
        guard response.status == 200 else { throw ValidationError("\(url) answered \(response.status)") }
        do {
            return try JSONDecoder().decode(Body.self, from: Data(response.body))
        } catch {
            throw ValidationError(
                "\(url) answered something that is not the inspection API: \(ErrorWords.describe(error))")
        }
    }
}
