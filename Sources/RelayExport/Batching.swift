/// Rows cut together for one stream. JSON sinks send `body`, a JSON array whose items sit one per line
/// (`[a,\nb,\nc]`), so any item can be found again — for a 206 partial success, or for a file sink writing
/// NDJSON — without a JSON parser; other sinks (OTLP) assemble `items` their own way.
public struct Batch: Sendable, Equatable {
    public var stream: String
    /// Empty for a batch read back from the spool, which keeps only the bytes a sink sends.
    public var items: [[UInt8]]
    public var count: Int

    public init(stream: String, items: [[UInt8]]) {
        self.stream = stream
        self.items = items
        count = items.count
    }

    /// A spooled batch: its stream and size, not its items.
    init(stream: String, count: Int) {
        self.stream = stream
        items = []
        self.count = count
    }

    /// Rebuilds a batch from a body written by `body`.
    public init(stream: String, body: [UInt8]) {
        self.init(stream: stream, items: Batch.items(of: body))
    }

    /// The items of a body written by `body`.
    public static func items(of body: [UInt8]) -> [[UInt8]] {
        guard body.count > 2 else { return [] }
        return body[1..<(body.count - 1)].split(separator: UInt8(ascii: "\n")).map { line in
            Array(line.last == UInt8(ascii: ",") ? line.dropLast() : line)
        }
    }

    /// The items as one JSON array, one per line.
    public var body: [UInt8] {
        var body: [UInt8] = [UInt8(ascii: "[")]
        body.reserveCapacity(BatchBuilder.size(ofItems: items.map(\.count)))
        for (index, item) in items.enumerated() {
            if index > 0 { body += [UInt8(ascii: ","), UInt8(ascii: "\n")] }
            body += item
        }
        body.append(UInt8(ascii: "]"))
        return body
    }

    /// Bytes before compression, as the exporter's metrics count them.
    public var uncompressedBytes: Int { BatchBuilder.size(ofItems: items.map(\.count)) }
}

/// Cuts serialized rows into batches whose JSON array — brackets and separators counted — stays within
/// `maxBytes` and `maxItems`. Pure: the exporter feeds it rows and ships what it returns.
public struct BatchBuilder: Sendable {
    public enum AddResult: Sendable, Equatable {
        case added
        /// The row did not fit: the batch so far is complete and the row starts the next one.
        case full(Batch)
        /// The row alone is over the cap; it can never be sent and is dropped.
        case oversize
    }

    public let stream: String
    public let maxBytes: Int
    public let maxItems: Int
    private var items: [[UInt8]] = []
    private var bytes = 2

    public init(stream: String, maxBytes: Int = 1_000_000, maxItems: Int = 10_000) {
        self.stream = stream
        self.maxBytes = maxBytes
        self.maxItems = maxItems
    }

    /// Size of `[` + items joined by `,\n` + `]`.
    public static func size(ofItems sizes: [Int]) -> Int {
        2 + sizes.reduce(0, +) + max(0, sizes.count - 1) * 2
    }

    public var isEmpty: Bool { items.isEmpty }
    public var pendingBytes: Int { bytes }

    public mutating func add(_ row: [UInt8]) -> AddResult {
        guard row.count + 2 <= maxBytes else { return .oversize }
        let separator = items.isEmpty ? 0 : 2
        if bytes + separator + row.count <= maxBytes && items.count < maxItems {
            items.append(row)
            bytes += separator + row.count
            return .added
        }
        let complete = Batch(stream: stream, items: items)
        items = [row]
        bytes = 2 + row.count
        return .full(complete)
    }

    /// The batch so far, if any; the builder starts empty again.
    public mutating func cut() -> Batch? {
        guard !items.isEmpty else { return nil }
        defer {
            items = []
            bytes = 2
        }
        return Batch(stream: stream, items: items)
    }
}
