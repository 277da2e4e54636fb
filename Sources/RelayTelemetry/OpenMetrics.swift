/// The latest trace that landed in one histogram bucket.
public struct Exemplar: Sendable, Equatable {
    public var traceID: String
    public var value: Double
    /// Unix seconds.
    public var timestamp: Double
}

/// Identifies a histogram bucket independently of how the exposition spells its labels.
struct BucketKey: Hashable {
    var name: String
    var labels: [String: String]
    var upperBound: Double
}

/// Turns the text format 0.0.4 into OpenMetrics 1.0 and attaches exemplars to histogram buckets, as
/// pure text processing (swift-prometheus renders only 0.0.4).
enum OpenMetricsRenderer {
    static let contentType = "application/openmetrics-text; version=1.0.0; charset=utf-8"

    static func render(text: String, exemplars: [BucketKey: Exemplar]) -> String {
        var counters = Set<String>()
        for line in text.split(separator: "\n") where line.hasPrefix("# TYPE ") {
            let parts = line.split(separator: " ")
            if parts.count == 4, parts[3] == "counter" { counters.insert(String(parts[2])) }
        }
        var out = ""
        out.reserveCapacity(text.utf8.count + 256)
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("# TYPE ") || line.hasPrefix("# HELP ") {
                let parts = line.split(separator: " ", maxSplits: 3)
                // OpenMetrics names a counter family without `_total`; its samples keep the suffix.
                if parts.count >= 3, counters.contains(String(parts[2])), parts[2].hasSuffix("_total") {
                    out += "\(parts[0]) \(parts[1]) \(parts[2].dropLast("_total".count))"
                    if parts.count == 4 { out += " \(parts[3])" }
                    out += "\n"
                    continue
                }
                out += line + "\n"
                continue
            }
            out += line
            if let key = bucketKey(line), let exemplar = exemplars[key] {
                out += " # {trace_id=\"\(exemplar.traceID)\"} \(exemplar.value) \(exemplar.timestamp)"
            }
            out += "\n"
        }
        return out + "# EOF\n"
    }

    /// Parses `name_bucket{a="x",le="0.5"} 3`; nil for anything else.
    static func bucketKey(_ line: Substring) -> BucketKey? {
        guard let brace = line.firstIndex(of: "{"), line[..<brace].hasSuffix("_bucket"),
            let close = line.lastIndex(of: "}")
        else { return nil }
        let name = String(line[..<brace].dropLast("_bucket".count))
        var labels: [String: String] = [:]
        var upperBound: Double?
        for pair in line[line.index(after: brace)..<close].split(separator: ",") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { return nil }
            let value = String(parts[1].dropFirst().dropLast())
            if parts[0] == "le" {
                upperBound = value == "+Inf" ? .infinity : Double(value)
            } else {
                labels[String(parts[0])] = value
            }
        }
        guard let upperBound else { return nil }
        return BucketKey(name: name, labels: labels, upperBound: upperBound)
    }
}
