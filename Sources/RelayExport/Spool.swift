import AzureIdentity
import NIOConcurrencyHelpers
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A batch on its way out, with the request id every attempt of it carries.
public struct PreparedBatch: Sendable, Equatable {
    public var batch: Batch
    public var gzipped: [UInt8]
    public var requestID: String
    /// Unix milliseconds when it was cut; the spool's age bound counts from here.
    public var created: Int64

    /// The batch gzipped as a JSON array (what the Azure sinks send).
    public init(batch: Batch, requestID: String = UUID().uuidString.lowercased(), created: Int64) throws {
        self.init(batch: batch, gzipped: try Gzip.compress(batch.body), requestID: requestID, created: created)
    }

    /// `gzipped` as the sink compresses it; a new request id unless one is given (a spooled batch keeps its own).
    init(batch: Batch, gzipped: [UInt8], requestID: String = UUID().uuidString.lowercased(), created: Int64) {
        self.batch = batch
        self.gzipped = gzipped
        self.requestID = requestID
        self.created = created
    }
}

/// Batches kept on disk while an endpoint is down or throttling, delivered oldest first when it recovers and
/// after a restart. Each batch is one file, written under a temporary name and renamed, so a crash leaves
/// whole batches only. Bounded by total bytes and by age; what a bound removes is reported to the caller.
/// One process owns a spool directory at a time (`flock`), so two exporters never send the same batch.
public final class Spool: Sendable {
    public struct Entry: Sendable, Equatable {
        public var file: String
        public var created: Int64
        public var count: Int
        public var requestID: String
        public var stream: String
        public var bytes: Int
    }

    public let directory: String
    public let maxBytes: Int
    public let maxAgeSeconds: Double
    private let entries: NIOLockedValueBox<[Entry]>
    private let sequence = NIOLockedValueBox(0)
    private let lockDescriptor: Int32

    public init(directory: String, maxBytes: Int, maxAgeSeconds: Double) throws(ExportError) {
        self.directory = directory
        self.maxBytes = maxBytes
        self.maxAgeSeconds = maxAgeSeconds
        let files = FileManager.default
        do {
            try files.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw .configuration("cannot create spool directory '\(directory)': \(ErrorWords.describe(error))")
        }
        lockDescriptor = open(directory + "/.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard lockDescriptor >= 0, flock(lockDescriptor, LOCK_EX | LOCK_NB) == 0 else {
            if lockDescriptor >= 0 { close(lockDescriptor) }
            throw .spoolInUse(directory)
        }
        var found: [Entry] = []
        for name in (try? files.contentsOfDirectory(atPath: directory)) ?? [] {
            let path = directory + "/" + name
            if name.hasSuffix(".tmp") {
                try? files.removeItem(atPath: path)
            } else if let entry = Self.entry(name: name, path: path) {
                found.append(entry)
            }
        }
        entries = NIOLockedValueBox(found.sorted { ($0.created, $0.file) < ($1.created, $1.file) })
    }

    deinit { close(lockDescriptor) }

    /// `<created>-<seq>-<count>-<requestID>.<stream>.json.gz`
    static func entry(name: String, path: String) -> Entry? {
        guard name.hasSuffix(".json.gz") else { return nil }
        let stem = name.dropLast(".json.gz".count)
        guard let dot = stem.firstIndex(of: ".") else { return nil }
        let fields = stem[..<dot].split(separator: "-", maxSplits: 3)
        guard fields.count == 4, let created = Int64(fields[0]), let count = Int(fields[2]) else { return nil }
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        return Entry(
            file: path, created: created, count: count, requestID: String(fields[3]),
            stream: String(stem[stem.index(after: dot)...]), bytes: size)
    }

    public var isEmpty: Bool { entries.withLockedValue { $0.isEmpty } }
    public var depth: (batches: Int, bytes: Int) {
        entries.withLockedValue { ($0.count, $0.reduce(0) { $0 + $1.bytes }) }
    }

    /// Stores `prepared`; returns the entries the size bound pushed out (oldest first) to be counted.
    public func write(_ prepared: PreparedBatch) throws(ExportError) -> [Entry] {
        let number = sequence.withLockedValue { value -> Int in
            value += 1
            return value
        }
        let sequenceText = String(number)
        let name =
            "\(prepared.created)-\(String(repeating: "0", count: max(0, 8 - sequenceText.count)) + sequenceText)"
            + "-\(prepared.batch.count)-\(prepared.requestID).\(prepared.batch.stream).json.gz"
        let path = directory + "/" + name
        do {
            try Data(prepared.gzipped).write(to: URL(fileURLWithPath: path + ".tmp"))
            try FileManager.default.moveItem(atPath: path + ".tmp", toPath: path)
        } catch {
            throw .configuration("cannot write spool file '\(path)': \(ErrorWords.describe(error))")
        }
        let entry = Entry(
            file: path, created: prepared.created, count: prepared.batch.count, requestID: prepared.requestID,
            stream: prepared.batch.stream, bytes: prepared.gzipped.count)
        let evicted = entries.withLockedValue { entries -> [Entry] in
            entries.append(entry)
            var total = entries.reduce(0) { $0 + $1.bytes }
            var evicted: [Entry] = []
            while total > maxBytes, entries.count > 1 {
                let oldest = entries.removeFirst()
                total -= oldest.bytes
                evicted.append(oldest)
            }
            return evicted
        }
        for old in evicted { try? FileManager.default.removeItem(atPath: old.file) }
        return evicted
    }

    /// Removes and returns the entries older than the age bound.
    /// Whether `expire` would remove anything now (the oldest batch is past the age bound); no file touched.
    public func hasExpired(nowMilliseconds: Int64) -> Bool {
        guard let oldest else { return false }
        return oldest.created < ageLimit(nowMilliseconds)
    }

    private func ageLimit(_ nowMilliseconds: Int64) -> Int64 { nowMilliseconds - Int64(maxAgeSeconds * 1000) }

    public func expire(nowMilliseconds: Int64) -> [Entry] {
        let limit = ageLimit(nowMilliseconds)
        let expired = entries.withLockedValue { entries -> [Entry] in
            let old = entries.filter { $0.created < limit }
            entries.removeAll { $0.created < limit }
            return old
        }
        for old in expired { try? FileManager.default.removeItem(atPath: old.file) }
        return expired
    }

    public var oldest: Entry? { entries.withLockedValue { $0.first } }

    public func load(_ entry: Entry) throws -> PreparedBatch {
        let gzipped = [UInt8](try Data(contentsOf: URL(fileURLWithPath: entry.file)))
        return PreparedBatch(
            batch: Batch(stream: entry.stream, count: entry.count), gzipped: gzipped, requestID: entry.requestID,
            created: entry.created)
    }

    public func remove(_ entry: Entry) {
        entries.withLockedValue { $0.removeAll { $0.file == entry.file } }
        try? FileManager.default.removeItem(atPath: entry.file)
    }
}
