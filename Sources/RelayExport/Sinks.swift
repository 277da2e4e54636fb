import AzureIdentity
import HybridConnections
import Logging
import NIOConcurrencyHelpers
import NIOHTTP1
import NIOPosix
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

/// One item as a sink writes it, and the stream (Logs Ingestion stream, OTLP signal, file table) it goes to.
public struct EncodedRow: Sendable, Equatable {
    public var stream: String
    public var bytes: [UInt8]

    public init(stream: String, bytes: [UInt8]) {
        self.stream = stream
        self.bytes = bytes
    }
}

/// Where batches go. A sink encodes each telemetry item its own way (none, one or several rows, each for a
/// stream) and delivers one prepared batch per call; the exporter owns batching, retries and the spool.
public protocol ExportSink: Sendable {
    /// The `sink` label of the exporter's metrics.
    var name: String { get }
    var maxBatchBytes: Int { get }
    func encode(_ item: TelemetryItem, source: ExportSource) -> [EncodedRow]
    /// The bytes a batch is delivered (and spooled) as; gzip of the JSON array unless the sink says otherwise.
    func compress(_ batch: Batch) throws -> [UInt8]
    /// Whether batches wait in the disk spool while this sink cannot take them.
    var usesSpool: Bool { get }
    /// How long one delivery may take before the exporter gives up on it and retries later.
    var deliveryTimeoutSeconds: Double { get }
    func deliver(_ batch: PreparedBatch) async -> DeliveryOutcome
}

extension ExportSink {
    public func compress(_ batch: Batch) throws -> [UInt8] { try Gzip.compress(batch.body) }
    public var usesSpool: Bool { true }
    public var deliveryTimeoutSeconds: Double { 45 }
}

/// A sink that writes the rows of the three Azure tables (Logs Ingestion, Application Insights, files).
public protocol AzureRowSink: ExportSink {
    func stream(for table: ExportTable) -> String?
    func encode(_ record: ExportRecord) -> [UInt8]
}

extension AzureRowSink {
    public func encode(_ item: TelemetryItem, source: ExportSource) -> [EncodedRow] {
        ExportRecord.records(for: item, source: source).compactMap { record in
            stream(for: record.table).map { EncodedRow(stream: $0, bytes: encode(record)) }
        }
    }
}

/// Turns an HTTP answer into an outcome. A first 401 drops the cached token and retries with a fresh one;
/// a 401 to that fresh token is final (see `TokenCredential.refused`).
func classify(_ response: AzureResponse, success: Set<Int>, credential: TokenCredential?) -> DeliveryOutcome {
    let retryAfter = RetryAfter.seconds(headers: response.headers, now: Date().timeIntervalSince1970)
    if response.status == 401, let credential, credential.refused() {
        return .retry(status: "401", retryAfter: nil)
    }
    if response.status != 401 { credential?.accepted() }
    switch StatusClass.of(response.status, success: success) {
    case .success:
        return .delivered
    case .retryable:
        return .retry(status: String(response.status), retryAfter: retryAfter)
    case .final:
        return .rejected(status: String(response.status), code: errorCode(response))
    }
}

/// `x-ms-error-code`, else `error.code` from the body, else the status.
func errorCode(_ response: AzureResponse) -> String {
    if let code = response.header("x-ms-error-code"), !code.isEmpty { return code }
    if let body = try? JSONDecoder().decode([String: JSONValue].self, from: Data(response.body)),
        let code = body["error"]?.objectValue?["code"]?.stringValue
    {
        return code
    }
    return "HTTP \(response.status)"
}

/// Azure Monitor Logs Ingestion API: one stream per table, gzip, bearer token, 204 is success.
public struct LogsIngestionSink: AzureRowSink {
    public let name = "logs_ingestion"
    public let maxBatchBytes = 1_000_000
    public let endpoint: String
    public let ruleID: String
    public let streams: [ExportTable: String]
    let credential: TokenCredential
    let http: AzureHTTP

    public init(
        endpoint: String, ruleID: String, streams: [ExportTable: String] = [:], credential: TokenCredential,
        http: AzureHTTP
    ) throws(ExportError) {
        try AzureHTTP.checkExportURL(endpoint)
        var endpoint = endpoint
        while endpoint.hasSuffix("/") { endpoint.removeLast() }
        guard ruleID.hasPrefix("dcr-"), ruleID.count == 36, ruleID.dropFirst(4).allSatisfy(\.isHexDigit) else {
            throw .configuration("--dcr-immutable-id '\(ruleID)' is not dcr- followed by 32 hex digits")
        }
        var resolved: [ExportTable: String] = [:]
        for table in ExportTable.allCases {
            let stream = streams[table] ?? table.defaultStream
            guard stream.hasPrefix("Custom-") else {
                throw .configuration("stream '\(stream)' must start with Custom- (a stream, not a table name)")
            }
            resolved[table] = stream
        }
        self.endpoint = endpoint
        self.ruleID = ruleID
        self.streams = resolved
        self.credential = credential
        self.http = http
    }

    public func stream(for table: ExportTable) -> String? { streams[table] }

    public func encode(_ record: ExportRecord) -> [UInt8] { Array(record.row.utf8) }

    public func deliver(_ batch: PreparedBatch) async -> DeliveryOutcome {
        let token: String
        do {
            token = try await credential.token()
        } catch {
            return .retry(status: "credential", retryAfter: nil)
        }
        let url =
            "\(endpoint)/dataCollectionRules/\(ruleID)/streams/\(batch.batch.stream)?api-version=2023-01-01"
        do {
            let response = try await http.send(
                method: .POST, url: url,
                headers: [
                    ("Authorization", "Bearer \(token)"), ("Content-Type", "application/json"),
                    ("Content-Encoding", "gzip"), ("x-ms-client-request-id", batch.requestID),
                    ("Accept", "application/json"), ("User-Agent", "hyrelay-exporter/1"),
                ], body: batch.gzipped)
            return classify(response, success: [204], credential: credential)
        } catch {
            return .retry(status: "network", retryAfter: nil)
        }
    }
}

/// Application Insights `v2.1/track`: envelopes, gzip; 200 and 206 are read item by item.
public struct ApplicationInsightsSink: AzureRowSink {
    public let name = "application_insights"
    public let maxBatchBytes = 1_000_000
    public let connection: ApplicationInsightsConnectionString
    let credential: TokenCredential?
    let http: AzureHTTP

    public init(
        connection: ApplicationInsightsConnectionString, credential: TokenCredential?, http: AzureHTTP
    ) throws(ExportError) {
        try AzureHTTP.checkExportURL(connection.ingestionEndpoint)
        self.connection = connection
        self.credential = credential
        self.http = http
    }

    public func stream(for table: ExportTable) -> String? { "track" }

    public func encode(_ record: ExportRecord) -> [UInt8] {
        Array(TelemetryEnvelope.envelope(record, instrumentationKey: connection.instrumentationKey).text.utf8)
    }

    public func deliver(_ batch: PreparedBatch) async -> DeliveryOutcome {
        var headers = [
            ("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
            ("x-ms-client-request-id", batch.requestID), ("Accept", "application/json"),
        ]
        if let credential {
            do {
                headers.append(("Authorization", "Bearer \(try await credential.token())"))
            } catch {
                return .retry(status: "credential", retryAfter: nil)
            }
        }
        let response: AzureResponse
        do {
            response = try await http.send(
                method: .POST, url: "\(connection.ingestionEndpoint)/v2.1/track", headers: headers,
                body: batch.gzipped)
        } catch {
            return .retry(status: "network", retryAfter: nil)
        }
        // Quota answers: the data will not be taken later either.
        if response.status == 402 || response.status == 439 {
            return .rejected(status: String(response.status), code: "quota")
        }
        guard response.status == 206 || response.status == 200 else {
            return classify(response, success: [], credential: credential)
        }
        return Self.partial(response, count: batch.batch.count)
    }

    /// Reads `errors[]` of a track answer: retryable item statuses are sent again, the rest dropped.
    static func partial(_ response: AzureResponse, count: Int) -> DeliveryOutcome {
        guard let body = try? JSONDecoder().decode([String: JSONValue].self, from: Data(response.body)),
            case .array(let errors)? = body["errors"], !errors.isEmpty
        else { return response.status == 200 ? .delivered : .retry(status: "206", retryAfter: nil) }
        let retryable: Set<Int> = [401, 403, 408, 429, 500, 502, 503, 504]
        var retry: [Int] = []
        var dropped = 0
        for error in errors {
            guard let fields = error.objectValue, let index = fields["index"]?.integer,
                index >= 0, index < count
            else { continue }
            let status = fields["statusCode"]?.integer ?? 500
            if retryable.contains(status) { retry.append(index) } else { dropped += 1 }
        }
        return .partial(
            retry: retry.sorted(), dropped: dropped,
            retryAfter: RetryAfter.seconds(headers: response.headers, now: Date().timeIntervalSince1970))
    }
}

/// The default sink: gzip NDJSON files under a directory, one gzip member per batch, rotated by size,
/// bounded in total. Each line is `{"table":…,"row":{…}}`; `hyrelay export replay` ships them later.
public final class FileSink: AzureRowSink {
    public let name = "file"
    public let maxBatchBytes = 4_000_000
    public let directory: String
    let prefix: String
    let maxFileBytes: Int
    let maxTotalBytes: Int
    private let current = NIOLockedValueBox<(path: String, size: Int, sequence: Int)?>(nil)
    private let logger: Logger

    public init(
        directory: String, role: String, maxFileBytes: Int, maxTotalBytes: Int, logger: Logger
    ) throws(ExportError) {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw .configuration("cannot create export directory '\(directory)': \(ErrorWords.describe(error))")
        }
        self.directory = directory
        prefix = "hyrelay-\(role)-"
        self.maxFileBytes = maxFileBytes
        self.maxTotalBytes = maxTotalBytes
        self.logger = logger
    }

    public func stream(for table: ExportTable) -> String? { table.rawValue }

    public func encode(_ record: ExportRecord) -> [UInt8] {
        Array("{\"row\":\(record.row),\"table\":\"\(record.table.rawValue)\"}".utf8)
    }

    /// The file being written now, if any.
    public var currentFile: String? { current.withLockedValue { $0?.path } }

    /// A local disk is the destination itself: nothing to spool.
    public var usesSpool: Bool { false }

    /// One gzip member of NDJSON lines per batch, appended to the current file as it is.
    public func compress(_ batch: Batch) throws -> [UInt8] {
        var lines: [UInt8] = []
        for item in batch.items { lines += item + [UInt8(ascii: "\n")] }
        return try Gzip.compress(lines)
    }

    /// Blocking file calls run on NIO's thread pool, never on the cooperative pool the other sinks share.
    public func deliver(_ batch: PreparedBatch) async -> DeliveryOutcome {
        let member = batch.gzipped
        do {
            return try await NIOThreadPool.singleton.runIfActive { self.append(member) }
        } catch {
            return .retry(status: "file", retryAfter: nil)
        }
    }

    private func append(_ member: [UInt8]) -> DeliveryOutcome {
        current.withLockedValue { current -> DeliveryOutcome in
            if current == nil || current!.size >= maxFileBytes {
                let stamp = JSONText.timestamp(Date()).filter { $0.isNumber }
                let sequence = (current?.sequence ?? 0) + 1
                current = ("\(directory)/\(prefix)\(stamp)-\(getpid())-\(sequence).ndjson.gz", 0, sequence)
                enforceTotal(keeping: current!.path)
            }
            let descriptor = open(current!.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else { return .retry(status: "file", retryAfter: nil) }
            defer { close(descriptor) }
            let written = member.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            guard written == member.count else { return .retry(status: "file", retryAfter: nil) }
            current!.size += member.count
            return .delivered
        }
    }

    /// Removes this role's oldest files while the directory holds more than the bound.
    private func enforceTotal(keeping path: String) {
        let files = FileManager.default
        let names = ((try? files.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasPrefix(prefix) && $0.hasSuffix(".ndjson.gz") }.sorted()
        let sizes = names.map { ((try? files.attributesOfItem(atPath: "\(directory)/\($0)")[.size] as? Int) ?? 0) }
        var total = sizes.reduce(0, +)
        var index = 0
        while total > maxTotalBytes, index < names.count, "\(directory)/\(names[index])" != path {
            try? files.removeItem(atPath: "\(directory)/\(names[index])")
            logger.warning(
                "export file removed: the directory is over its size bound",
                metadata: ["file": "\(names[index])", "bound_bytes": "\(maxTotalBytes)"])
            total -= sizes[index]
            index += 1
        }
    }
}
