/// A batch body ready to send: a JSON array whose items sit one per line (`[a,\nb,\nc]`), so any item can be
/// found again — for a 206 partial success, or for a file sink writing NDJSON — without a JSON parser.
public struct Batch: Sendable, Equatable {
    public var stream: String
    public var body: [UInt8]
    public var count: Int

    public init(stream: String, items: [[UInt8]]) {
        count = items.count
        var body: [UInt8] = [UInt8(ascii: "[")]
        body.reserveCapacity(BatchBuilder.size(ofItems: items.map(\.count)))
        for (index, item) in items.enumerated() {
            if index > 0 { body += [UInt8(ascii: ","), UInt8(ascii: "\n")] }
            body += item
        }
        body.append(UInt8(ascii: "]"))
        self.stream = stream
        self.body = body
    }

    /// Rebuilds a batch from a body written by `init(stream:items:)`.
    public init(stream: String, body: [UInt8]) {
        self.init(stream: stream, items: Batch.items(of: body))
    }

    /// The items of a body written by `init(stream:items:)`.
    public static func items(of body: [UInt8]) -> [[UInt8]] {
        guard body.count > 2 else { return [] }
        return body[1..<(body.count - 1)].split(separator: UInt8(ascii: "\n")).map { line in
            Array(line.last == UInt8(ascii: ",") ? line.dropLast() : line)
        }
    }

    public var items: [[UInt8]] { Batch.items(of: body) }
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
