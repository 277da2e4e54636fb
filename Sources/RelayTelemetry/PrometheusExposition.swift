/// Renders a metric snapshot as Prometheus text (format 0.0.4, what `/metrics` serves by default) or as
/// OpenMetrics 1.0 with trace-id exemplars on histogram buckets (when a scraper asks for it).
public enum PrometheusExposition {
    public static let textContentType = "text/plain; version=0.0.4; charset=utf-8"
    public static let openMetricsContentType = "application/openmetrics-text; version=1.0.0; charset=utf-8"

    public static func text(_ families: [MetricFamily]) -> String {
        render(families, openMetrics: false)
    }

    public static func openMetrics(_ families: [MetricFamily]) -> String {
        render(families, openMetrics: true) + "# EOF\n"
    }

    private static func render(_ families: [MetricFamily], openMetrics: Bool) -> String {
        var out = ""
        out.reserveCapacity(16 * 1024)
        for family in families {
            // OpenMetrics names a counter family without `_total`; its samples keep the suffix.
            var familyName = family.name
            if openMetrics, family.kind == .counter, familyName.hasSuffix("_total") {
                familyName.removeLast("_total".count)
            }
            out += "# HELP \(familyName) \(escapeHelp(family.help))\n# TYPE \(familyName) \(family.kind.rawValue)\n"
            for sample in family.samples {
                let labels = labelText(sample.labels)
                out += labels.isEmpty ? "\(sample.name) \(sample.text)" : "\(sample.name){\(labels)} \(sample.text)"
                if openMetrics, let exemplar = sample.exemplar {
                    out += " # {trace_id=\"\(exemplar.traceID)\"} \(number(exemplar.value)) \(exemplar.timestamp)"
                }
                out += "\n"
            }
        }
        return out
    }

    /// `a="x",b="y"`, values escaped as the format asks (backslash, quote, newline).
    static func labelText(_ labels: [(String, String)]) -> String {
        labels.map { key, value in "\(key)=\"\(escapeLabel(value))\"" }.joined(separator: ",")
    }

    private static func escapeLabel(_ value: String) -> String { escape(value, quotes: true) }

    private static func escapeHelp(_ help: String) -> String { escape(help, quotes: false) }

    /// Backslash and newline always; double quotes only inside label values.
    private static func escape(_ value: String, quotes: Bool) -> String {
        guard value.contains(where: { $0 == "\\" || $0 == "\n" || (quotes && $0 == "\"") }) else { return value }
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"" where quotes: escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }

    /// Go's spelling of special values, which Prometheus parses; finite values as Swift prints them.
    static func number(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        return "\(value)"
    }
}
