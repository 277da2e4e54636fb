import Logging
import RelayTelemetry
import Testing

@testable import RelayExport

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

@Suite struct FormatTests {
    static func span(parent: String?, error: Bool = false) -> FinishedSpan {
        FinishedSpan(
            name: "edge.dial", kind: "client",
            context: TraceContext(traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")!,
            parentSpanID: parent, start: 1_764_424_800_000_000_000, end: 1_764_424_800_012_345_678,
            attributes: ["target": "127.0.0.1:5432", "outcome": error ? "failed" : "connected", "bytes_up": "42"],
            isError: error, statusMessage: error ? "connection refused" : nil)
    }

    @Test func spanRecordsFillEveryDeclaredColumnWithItsType() throws {
        let record = ExportRecord.span(
            Self.span(parent: "00f067aa0ba902b7"), source: .init(role: "edge", instance: "h1"))
        try Self.checkTypes(record)
        #expect(record["TimeGenerated"] == .string("2025-11-29T14:00:00.000Z"))
        #expect(record["DurationMs"] == .double(12.346))
        #expect(record["Target"] == .string("127.0.0.1:5432"))
        #expect(record["BytesUp"] == .int(42))
        #expect(record["BytesDown"] == .int(0))
        #expect(record["Success"] == .bool(true))
    }

    @Test func logRecordsRedactSecretsAndLiftTraceIds() throws {
        let record = ExportRecord.log(
            time: Date(timeIntervalSince1970: 0), level: .warning, label: "hyrelay.relay", message: "refused",
            metadata: ["trace_id": "abc", "token": "SharedAccessSignature sig=x", "entity": "hc1"],
            source: .init(role: "relay", instance: "h"))
        try Self.checkTypes(record)
        #expect(record["TraceId"] == .string("abc"))
        #expect(record["Attributes"] == .object(["token": .string("[redacted]"), "entity": .string("hc1")]))
        #expect(!record.row.contains("sig=x"))
    }

    @Test func metricRecordsComeFromTheExposition() throws {
        let text = """
            # HELP hyrelay_dials_total Edge dials.
            # TYPE hyrelay_dials_total counter
            hyrelay_dials_total{outcome="failed"} 3
            hyrelay_dial_duration_seconds_bucket{le="+Inf"} 5
            hyrelay_listeners{role="edge",entity="a \\"b\\""} 1.0
            garbage line
            """
        let samples = PrometheusText.samples(text)
        #expect(
            samples == [
                MetricSample(name: "hyrelay_dials_total", labels: ["outcome": "failed"], value: 3),
                MetricSample(name: "hyrelay_dial_duration_seconds_bucket", labels: ["le": "+Inf"], value: 5),
                MetricSample(name: "hyrelay_listeners", labels: ["role": "edge", "entity": "a \"b\""], value: 1),
            ])
        try Self.checkTypes(.metric(samples[0], time: Date(), source: .init(role: "edge", instance: "h")))
    }

    /// The row carries exactly the declared columns, each with a JSON shape its type accepts.
    static func checkTypes(_ record: ExportRecord) throws {
        let declared = record.table.columns
        #expect(Set(record.columns.keys) == Set(declared.map(\.name)))
        for (name, type) in declared {
            let value = try #require(record[name])
            switch (type, value) {
            case ("string", .string), ("datetime", .string), ("real", .double), ("real", .int), ("long", .int),
                ("boolean", .bool), ("dynamic", .object):
                break
            default: Issue.record("column \(name) declared \(type) holds \(value)")
            }
        }
    }

    @Test func tablesMatchTheDeployTemplate() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let data = try Data(contentsOf: root.appendingPathComponent("deploy/azure-monitor.json"))
        let template = try JSONDecoder().decode([String: JSONValue].self, from: data)
        guard case .array(let resources)? = template["resources"] else { throw TemplateError.shape }
        let rule = try #require(
            resources.first { $0.objectValue?["type"] == .string("Microsoft.Insights/dataCollectionRules") })
        let streams = try #require(rule.objectValue?["properties"]?.objectValue?["streamDeclarations"]?.objectValue)
        for table in ExportTable.allCases {
            guard case .array(let columns)? = streams[table.defaultStream]?.objectValue?["columns"] else {
                throw TemplateError.shape
            }
            let pairs = columns.compactMap { column -> String? in
                guard let fields = column.objectValue else { return nil }
                return "\(fields["name"]?.stringValue ?? ""):\(fields["type"]?.stringValue ?? "")"
            }
            #expect(pairs == table.columns.map { "\($0.name):\($0.type)" })
            let tables = resources.compactMap { $0.objectValue?["properties"]?.objectValue?["schema"]?.objectValue }
            let schema = try #require(tables.first { $0["name"] == .string(table.tableName) })
            #expect(schema["columns"] == .array(columns))
        }
    }

    enum TemplateError: Error { case shape }

    @Test func applicationInsightsEnvelopes() throws {
        let source = ExportSource(role: "edge", instance: "h1")
        let key = "00000000-0000-0000-0000-000000000001"
        let root = TelemetryEnvelope.envelope(.span(Self.span(parent: nil), source: source), instrumentationKey: key)
        #expect(root.objectValue?["name"] == .string("Microsoft.ApplicationInsights.Request"))
        let data = try #require(root.objectValue?["data"]?.objectValue?["baseData"]?.objectValue)
        #expect(data["duration"] == .string("0.00:00:00.012"))
        #expect(data["responseCode"] == .string("connected"))
        let child = TelemetryEnvelope.envelope(
            .span(Self.span(parent: "00f067aa0ba902b7", error: true), source: source), instrumentationKey: key)
        #expect(child.objectValue?["name"] == .string("Microsoft.ApplicationInsights.RemoteDependency"))
        #expect(child.objectValue?["tags"]?.objectValue?["ai.operation.parentId"] == .string("00f067aa0ba902b7"))
        #expect(child.objectValue?["data"]?.objectValue?["baseData"]?.objectValue?["success"] == .bool(false))
        #expect(TelemetryEnvelope.duration(milliseconds: 90_061_001) == "1.01:01:01.001")
    }

    @Test func connectionStrings() throws {
        let parsed = try ApplicationInsightsConnectionString(
            "InstrumentationKey=00000000-0000-0000-0000-00000000000A;;IngestionEndpoint=https://x.in.applicationinsights.azure.com/;"
        )
        #expect(parsed.instrumentationKey == "00000000-0000-0000-0000-00000000000a")
        #expect(parsed.ingestionEndpoint == "https://x.in.applicationinsights.azure.com")
        let suffix = try ApplicationInsightsConnectionString(
            "InstrumentationKey=00000000-0000-0000-0000-000000000001;EndpointSuffix=applicationinsights.us;Location=gov"
        )
        #expect(suffix.ingestionEndpoint == "https://gov.dc.applicationinsights.us")
        #expect(throws: ApplicationInsightsConnectionString.ParseError.missingInstrumentationKey) {
            try ApplicationInsightsConnectionString("IngestionEndpoint=https://x")
        }
        #expect(throws: ApplicationInsightsConnectionString.ParseError.unsupportedAuthorization("AAD")) {
            try ApplicationInsightsConnectionString(
                "InstrumentationKey=00000000-0000-0000-0000-000000000001;Authorization=AAD")
        }
        #expect(throws: ApplicationInsightsConnectionString.ParseError.invalidInstrumentationKey("nope")) {
            try ApplicationInsightsConnectionString("InstrumentationKey=nope")
        }
    }

    @Test func urlsCarryTokensOnlyOverTLSOrLoopback() throws {
        try ExportHTTP.checkURL("https://dce.eastus-1.ingest.monitor.azure.com")
        try ExportHTTP.checkURL("http://127.0.0.1:8080")
        try ExportHTTP.checkURL("http://[::1]:8080/x")
        try ExportHTTP.checkURL("http://169.254.169.254", linkLocalHTTP: true)
        #expect(throws: ExportError.self) { try ExportHTTP.checkURL("http://dce.example.com") }
        #expect(throws: ExportError.self) { try ExportHTTP.checkURL("http://169.254.169.254") }
        #expect(throws: ExportError.self) { try ExportHTTP.checkURL("ftp://x") }
        #expect(throws: ExportError.self) { try ExportHTTP.checkURL("https://") }
    }

    @Test func credentialsFromTheEnvironment() throws {
        #expect(
            try CredentialSource.fromEnvironment([
                "AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s",
                "AZURE_AUTHORITY_HOST": "http://127.0.0.1:9/",
            ]) == .clientSecret(tenant: "t", clientID: "c", secret: "s", authority: "http://127.0.0.1:9/"))
        #expect(
            try CredentialSource.fromEnvironment([
                "AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_FEDERATED_TOKEN_FILE": "/f",
                "AZURE_CLIENT_SECRET": "s",
            ])
                == .workloadIdentity(
                    tenant: "t", clientID: "c", tokenFile: "/f", authority: "https://login.microsoftonline.com/"))
        #expect(
            try CredentialSource.fromEnvironment(["AZURE_CLIENT_ID": "u"])
                == .managedIdentity(endpoint: "http://169.254.169.254", clientID: "u"))
        #expect(throws: ExportError.self) { try CredentialSource.fromEnvironment(["AZURE_CLIENT_SECRET": "s"]) }
        #expect(throws: ExportError.self) {
            try CredentialSource.fromEnvironment(["AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://imds.example.com"])
        }
    }

    @Test func tokensAreRefreshedBeforeExpiry() throws {
        let token = try TokenCredential.parseToken(Array(#"{"access_token":"a","expires_in":3599}"#.utf8), now: 1000)
        #expect(token.expiresOn == 4599)
        #expect(!token.needsRefresh(now: 4000))
        #expect(token.needsRefresh(now: 4300))
        let imds = try TokenCredential.parseToken(Array(#"{"access_token":"b","expires_on":"2000"}"#.utf8), now: 1990)
        #expect(imds.expiresOn == 2000 && imds.needsRefresh(now: 1995))
        #expect(throws: ExportError.self) { try TokenCredential.parseToken(Array("{}".utf8), now: 0) }
    }
}
