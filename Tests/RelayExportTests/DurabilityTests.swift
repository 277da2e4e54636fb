import AzureIdentity
import Logging
import RelayTelemetry
import Testing

@testable import RelayExport

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

@Suite struct DurabilityTests {
    static func temporaryDirectory() -> String {
        let path = "/tmp/hyrelay-export-tests-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func gzipReadsConcatenatedMembersAndToleratesATruncatedTail() throws {
        let first = try Gzip.compress(Array("hello ".utf8))
        let noise = (0..<100_000).map { _ in UInt8.random(in: 0...255) }
        let joined = first + (try Gzip.compress(noise))
        #expect(try Gzip.decompress(joined) == Array("hello ".utf8) + noise)
        // A crash in the middle of the second member: the first survives whole.
        let cut = Array(joined.prefix(first.count + 50_000))
        let survived = try Gzip.decompress(cut, tolerateTruncation: true)
        #expect(survived.starts(with: Array("hello ".utf8)))
        #expect(survived.count < 6 + noise.count)
    }

    @Test func spoolKeepsBatchesAcrossRestartsAndEnforcesItsBounds() throws {
        let directory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let batch = Batch(stream: "Custom-HyRelaySpans", items: [Array("{\"a\":1}".utf8), Array("{\"b\":2}".utf8)])
        var spool: Spool? = try Spool(directory: directory, maxBytes: 1 << 20, maxAgeSeconds: 3600)
        let first = try PreparedBatch(batch: batch, created: now - 10)
        #expect(try spool!.write(first).isEmpty)
        #expect(try spool!.write(PreparedBatch(batch: batch, created: now)).isEmpty)
        // A second process cannot take the same spool.
        #expect(throws: ExportError.spoolInUse(directory)) {
            try Spool(directory: directory, maxBytes: 1 << 20, maxAgeSeconds: 3600)
        }
        spool = nil
        let reopened = try Spool(directory: directory, maxBytes: 1 << 20, maxAgeSeconds: 3600)
        #expect(reopened.depth.batches == 2)
        let oldest = try #require(reopened.oldest)
        let loaded = try reopened.load(oldest)
        #expect(loaded.gzipped == first.gzipped && loaded.requestID == first.requestID)
        #expect(loaded.batch.count == first.batch.count && loaded.batch.stream == first.batch.stream)
        reopened.remove(oldest)
        #expect(reopened.depth.batches == 1)
        #expect(reopened.expire(nowMilliseconds: now + 3_600_001).map(\.count) == [2])
        #expect(reopened.isEmpty)

        let small = try Spool(directory: directory + "/small", maxBytes: first.gzipped.count * 2, maxAgeSeconds: 3600)
        for offset in 0..<3 { _ = try small.write(PreparedBatch(batch: batch, created: now + Int64(offset))) }
        #expect(small.depth.batches == 2)
    }

    @Test func exporterWritesEveryRecordOnceToTheFileSink() async throws {
        let directory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let metrics = RelayMetrics()
        let logger = Logger(label: "test")
        let sink = try FileSink(
            directory: directory, role: "test", maxFileBytes: 1, maxTotalBytes: 1 << 30, logger: logger)
        var configuration = ExporterConfiguration()
        configuration.flushIntervalSeconds = 0.2
        configuration.metricsIntervalSeconds = 0
        let exporter = try TelemetryExporter(
            sinks: [sink], configuration: configuration, source: .init(role: "test", instance: "h"), metrics: metrics,
            logger: logger)
        let records = (0..<20_000).map { index in
            ExportRecord(table: .metrics, columns: ["Name": .string("n\(index)"), "Value": .double(Double(index))])
        }
        await exporter.submit(contentsOf: records.map { .row($0) })
        // Returns once the queue is written: the deadline only bounds a loaded machine.
        await exporter.shutdown(deadlineSeconds: 60)
        var names: [String] = []
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".ndjson.gz") }
        #expect(files.count > 1, "files rotate by size")
        for file in files {
            let text = try Gzip.decompress([UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(file)"))))
            for line in text.split(separator: UInt8(ascii: "\n")) {
                let decoded = try JSONDecoder().decode([String: JSONValue].self, from: Data(line))
                if let name = decoded["row"]?.objectValue?["Name"]?.stringValue { names.append(name) }
            }
        }
        #expect(names.count == 20_000)
        #expect(Set(names).count == 20_000)
    }
}
