/// One sample line of the Prometheus text format: `name{label="value",…} value`.
public struct MetricSample: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
    public var value: Double

    public init(name: String, labels: [String: String] = [:], value: Double) {
        self.name = name
        self.labels = labels
        self.value = value
    }
}

/// Reads the samples of a Prometheus text exposition (format 0.0.4), so metric snapshots can be exported
/// without a second metrics API. Comments and lines it cannot read are skipped.
public enum PrometheusText {
    public static func samples(_ text: String) -> [MetricSample] {
        text.split(separator: "\n").compactMap { sample(Substring($0)) }
    }

    static func sample(_ line: Substring) -> MetricSample? {
        guard let first = line.first, first != "#" else { return nil }
        var rest = line[...]
        let nameEnd = rest.firstIndex { $0 == "{" || $0 == " " } ?? rest.endIndex
        let name = String(rest[..<nameEnd])
        rest = rest[nameEnd...]
        var labels: [String: String] = [:]
        if rest.first == "{" {
            rest = rest.dropFirst()
            while let current = rest.first, current != "}" {
                if current == "," || current == " " {
                    rest = rest.dropFirst()
                    continue
                }
                guard let equals = rest.firstIndex(of: "=") else { return nil }
                let key = String(rest[..<equals])
                rest = rest[rest.index(after: equals)...]
                guard rest.first == "\"" else { return nil }
                rest = rest.dropFirst()
                var value = ""
                var escaped = false
                while let character = rest.first {
                    rest = rest.dropFirst()
                    if escaped {
                        value.append(character == "n" ? "\n" : character)
                        escaped = false
                    } else if character == "\\" {
                        escaped = true
                    } else if character == "\"" {
                        break
                    } else {
                        value.append(character)
                    }
                }
                labels[key] = value
            }
            guard rest.first == "}" else { return nil }
            rest = rest.dropFirst()
        }
        let fields = rest.split(separator: " ")
        guard !name.isEmpty, let text = fields.first, let value = Double(text) else { return nil }
        return MetricSample(name: name, labels: labels, value: value)
    }
}
