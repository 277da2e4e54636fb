import HybridConnections
import Testing

@testable import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

@Suite struct InspectionTests {
    @Test func liveTunnelsCountBothWaysAndLeaveWhenClosed() throws {
        let tunnels = LiveTunnels()
        let first = LiveTunnel(id: "a", entity: "hc1", traceID: "t1", peer: "127.0.0.1:5", state: "connecting")
        let second = LiveTunnel(id: "b", entity: "hc2", traceID: "t2", peer: "", portName: "22", state: "open")
        tunnels.add(first)
        tunnels.add(second)
        first.count(up: 10)
        first.count(up: 5, down: 7)
        first.update(state: "open", portName: "5432")
        let infos = tunnels.snapshot()
        #expect(infos.map(\.id) == ["a", "b"], "oldest first")
        #expect(infos[0].bytesUp == 15 && infos[0].bytesDown == 7 && infos[0].state == "open")
        #expect(infos[0].portName == "5432" && infos[1].portName == "22")
        tunnels.remove(first)
        tunnels.remove(first)
        #expect(tunnels.snapshot().map(\.id) == ["b"])
        let json = Inspection(tunnels: tunnels).tunnelsJSON()
        let decoded = try JSONDecoder().decode([String: [LiveTunnelInfo]].self, from: Data(json.utf8))
        #expect(decoded["tunnels"]?.first?.traceId == "t2")
        #expect(Inspection(tunnels: tunnels).listenersJSON() == nil, "agents have no listeners")
    }

    @Test func tablesAlignAndShowAgesAndSizes() {
        let now = 1_700_000_100.0
        let tunnel = LiveTunnelInfo(
            id: "a", traceId: "0af7651916cd43dd8448eb211c80319c", entity: "hc1", portName: "", peer: "1.2.3.4:5",
            state: "open", openedAt: "2023-11-14T22:13:20.000Z", bytesUp: 1536, bytesDown: 5 << 20,
            lastActivity: "2023-11-14T22:14:58.500Z")
        let text = InspectionTables.render(
            tunnels: [tunnel],
            listeners: [
                LiveListenerInfo(
                    entity: "hc1", id: "l1", agent: "", host: "h", version: "0.4.0",
                    connectedAt: "2023-11-13T22:00:00.000Z", tunnels: 1)
            ], now: now)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[0] == "TUNNELS (1 open)")
        #expect(
            lines[1].split(separator: " ") == [
                "ID", "TRACE", "ENTITY", "PORT", "PEER", "STATE", "AGE", "UP", "DOWN", "IDLE",
            ])
        #expect(
            lines[2].split(separator: " ").map(String.init) == [
                "a", "0af7651916cd43dd8448eb211c80319c", "hc1", "-", "1.2.3.4:5", "open", "1m40s", "1.5", "KiB", "5.0",
                "MiB",
                "1s",
            ])
        #expect(lines[1].firstRange(of: "TRACE")?.lowerBound == lines[2].firstRange(of: "0af7")?.lowerBound)
        #expect(lines[3] == "LISTENERS (1 registered)")
        #expect(lines[5].contains("1d00h") && lines[5].contains(" - "))
        #expect(InspectionTables.render(tunnels: [], listeners: nil, now: now) == "TUNNELS (0 open)\n")
    }

    @Test func timestampsReadBackToTheSecondsTheyWereWrittenFrom() {
        for milliseconds: Int64 in [0, 951_782_400_123, 1_700_000_000_500, 4_102_444_799_999] {
            let text = JSONText.timestamp(millisecondsSinceEpoch: milliseconds)
            #expect(CivilTime.epochSeconds(text) == Double(milliseconds) / 1000, "\(text)")
        }
        #expect(CivilTime.epochSeconds("2023-11-14T22:13:20Z") == 1_700_000_000)
        for bad in [
            "", "2023-11-14 22:13:20Z", "2023-13-14T22:13:20Z", "2023-11-14T22:13:20.5", "yyyy-11-14T22:13:20Z",
        ] {
            #expect(CivilTime.epochSeconds(bad) == nil, "\(bad)")
        }
    }

    @Test func peerChosenLabelValuesAreCapped() {
        let labels = BoundedLabels(limit: 2)
        #expect(labels.label(for: "a") == "a")
        #expect(labels.label(for: "b") == "b")
        #expect(labels.label(for: "c") == BoundedLabels.other)
        #expect(labels.label(for: "a") == "a", "a name seen before keeps its series")
        #expect(labels.label(for: nil) == BoundedLabels.unknown && labels.label(for: "") == BoundedLabels.unknown)
    }
}
