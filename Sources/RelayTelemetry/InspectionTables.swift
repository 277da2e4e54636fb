import HybridConnections

/// `hyrelay status` as text: the open tunnels and, from a relay, its listeners, as aligned columns. Pure: the
/// clock is passed in.
public enum InspectionTables {
    public static func render(tunnels: [LiveTunnelInfo], listeners: [LiveListenerInfo]?, now: Double) -> String {
        var out = "TUNNELS (\(tunnels.count) open)\n"
        if !tunnels.isEmpty {
            out += table(
                header: ["ID", "TRACE", "ENTITY", "PORT", "PEER", "STATE", "AGE", "UP", "DOWN", "IDLE"],
                rows: tunnels.map { tunnel in
                    [
                        tunnel.id, tunnel.traceId, tunnel.entity, tunnel.portName.isEmpty ? "-" : tunnel.portName,
                        tunnel.peer.isEmpty ? "-" : tunnel.peer, tunnel.state, age(since: tunnel.openedAt, now: now),
                        bytes(tunnel.bytesUp), bytes(tunnel.bytesDown), age(since: tunnel.lastActivity, now: now),
                    ]
                })
        }
        if let listeners {
            out += "\nLISTENERS (\(listeners.count) registered)\n"
            if !listeners.isEmpty {
                out += table(
                    header: ["ENTITY", "AGENT", "HOST", "VERSION", "CONNECTED", "TUNNELS", "ID"],
                    rows: listeners.map { listener in
                        [
                            listener.entity, listener.agent.isEmpty ? "-" : listener.agent,
                            listener.host.isEmpty ? "-" : listener.host,
                            listener.version.isEmpty ? "-" : listener.version,
                            age(since: listener.connectedAt, now: now), String(listener.tunnels), listener.id,
                        ]
                    })
            }
        }
        return out
    }

    static func table(header: [String], rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            var text = ""
            for (index, cell) in cells.enumerated() {
                text += cell
                if index < cells.count - 1 { text += String(repeating: " ", count: widths[index] - cell.count + 2) }
            }
            return text + "\n"
        }
        return line(header) + rows.map(line).joined()
    }

    /// `4s`, `3m12s`, `2h05m`, `3d04h`: how long ago `timestamp` was.
    static func age(since timestamp: String, now: Double) -> String {
        guard let then = CivilTime.epochSeconds(timestamp) else { return "?" }
        let seconds = max(0, Int(now - then))
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        if seconds < 60 { return "\(seconds)s" }
        if seconds < 3600 { return "\(seconds / 60)m\(two(seconds % 60))s" }
        if seconds < 86_400 { return "\(seconds / 3600)h\(two(seconds / 60 % 60))m" }
        return "\(seconds / 86_400)d\(two(seconds / 3600 % 24))h"
    }

    /// `812 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
    static func bytes(_ count: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(count) B" }
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(units[unit])"
    }
}
