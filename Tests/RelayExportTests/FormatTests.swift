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
            LogEntry(
                time: Date(timeIntervalSince1970: 0), level: .warning, label: "hyrelay.relay", message: "refused",
                metadata: ["trace_id": "abc", "token": "SharedAccessSignature sig=x", "entity": "hc1"]),
            source: .init(role: "relay", instance: "h"))
        try Self.checkTypes(record)
        #expect(record["TraceId"] == .string("abc"))
        #expect(record["Attributes"] == .object(["token": .string("[redacted]"), "entity": .string("hc1")]))
        #expect(!record.row.contains("sig=x"))
    }

    @Test func metricRecordsAreTheSamplesOfTheExposition() throws {
        let metrics = RelayMetrics()
        metrics.dial(outcome: .failed, seconds: nil)
        metrics.dial(outcome: .connected, seconds: 0.002)
        metrics.listeners(role: .edge, entity: "a \"b\"").set(to: 1)
        let snapshot = MetricSnapshot(time: 1_700_000_000_000_000_000, families: metrics.registry.snapshot())
        let records = ExportRecord.metrics(snapshot, source: .init(role: "edge", instance: "h"))
        func value(_ name: String, _ labels: [String: JSONValue]) -> JSONValue? {
            records.first { $0["Name"] == .string(name) && $0["Labels"] == .object(labels) }?["Value"]
        }
        #expect(value("hyrelay_dials_total", ["outcome": .string("failed")]) == .double(1))
        #expect(value("hyrelay_dial_duration_seconds_bucket", ["le": .string("0.001")]) == .double(0))
        #expect(value("hyrelay_dial_duration_seconds_bucket", ["le": .string("0.0025")]) == .double(1))
        #expect(value("hyrelay_dial_duration_seconds_bucket", ["le": .string("+Inf")]) == .double(1))
        #expect(value("hyrelay_dial_duration_seconds_count", [:]) == .double(1))
        #expect(value("hyrelay_listeners", ["role": .string("edge"), "entity": .string("a \"b\"")]) == .double(1))
        // Every sample of the text exposition is a row, and nothing else is.
        let samples = metrics.exposition().split(separator: "\n").filter { !$0.hasPrefix("#") }
        #expect(records.count == samples.count)
        #expect(records.allSatisfy { $0["TimeGenerated"] == .string("2023-11-14T22:13:20.000Z") })
        for record in records { try Self.checkTypes(record) }
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

    static func envelope(
        kind: String, parent: String?, error: Bool = false, attributes: [String: String] = [:]
    ) -> JSONValue {
        var span = Self.span(parent: parent, error: error)
        span.kind = kind
        for (key, value) in attributes { span.attributes[key] = value }
        return TelemetryEnvelope.envelope(
            .span(span, source: ExportSource(role: "relay", instance: "h1")),
            instrumentationKey: "00000000-0000-0000-0000-000000000001")
    }

    static func baseData(_ envelope: JSONValue) -> [String: JSONValue] {
        envelope.objectValue?["data"]?.objectValue?["baseData"]?.objectValue ?? [:]
    }

    /// Server and consumer spans are requests whether or not they have a parent (the relay's rendezvous has
    /// the client's connect as parent); client, producer and internal spans are dependencies.
    @Test func applicationInsightsMapsSpanKindsAsAzureDoes() throws {
        let root = Self.envelope(kind: "server", parent: nil)
        #expect(root.objectValue?["name"] == .string("Microsoft.ApplicationInsights.Request"))
        #expect(Self.baseData(root)["duration"] == .string("0.00:00:00.012"))
        #expect(Self.baseData(root)["responseCode"] == .string("connected"))
        let rendezvous = Self.envelope(kind: "server", parent: "00f067aa0ba902b7")
        #expect(rendezvous.objectValue?["name"] == .string("Microsoft.ApplicationInsights.Request"))
        #expect(rendezvous.objectValue?["tags"]?.objectValue?["ai.operation.parentId"] == .string("00f067aa0ba902b7"))
        #expect(
            Self.envelope(kind: "consumer", parent: "00f067aa0ba902b7").objectValue?["name"]
                == .string("Microsoft.ApplicationInsights.Request"))
        let dial = Self.envelope(kind: "client", parent: "00f067aa0ba902b7", error: true)
        #expect(dial.objectValue?["name"] == .string("Microsoft.ApplicationInsights.RemoteDependency"))
        #expect(Self.baseData(dial)["type"] == .string("HybridRelay"))
        #expect(Self.baseData(dial)["success"] == .bool(false))
        let bridge = Self.envelope(kind: "internal", parent: nil)
        #expect(bridge.objectValue?["name"] == .string("Microsoft.ApplicationInsights.RemoteDependency"))
        #expect(Self.baseData(bridge)["type"] == .string("InProc"))
        #expect(TelemetryEnvelope.duration(milliseconds: 90_061_001) == "1.01:01:01.001")
    }

    @Test func applicationInsightsItemsStayInsideTheServiceLimits() throws {
        // One value over the property limit is cut to it.
        let long = Self.envelope(
            kind: "client", parent: nil, attributes: ["cause": String(repeating: "c", count: 20_000)])
        let cut = try #require(Self.baseData(long)["properties"]?.objectValue?["cause"]?.stringValue)
        #expect(cut.count == 8_192)
        #expect(Self.baseData(long)["properties"]?.objectValue?["hyrelay.truncated"] == nil)
        // Many values at the limit make an item over 64 KB: the largest go, and the item says which.
        var many: [String: String] = [:]
        for index in 0..<12 { many["a\(index)"] = String(repeating: "x", count: 8_000 + index) }
        let big = Self.envelope(kind: "client", parent: nil, attributes: many)
        #expect(big.text.utf8.count <= 64 * 1024)
        let kept = try #require(Self.baseData(big)["properties"]?.objectValue)
        let removed = try #require(kept["hyrelay.truncated"]?.stringValue).split(separator: ",").map(String.init)
        #expect(removed.first == "a11" && !removed.isEmpty)
        #expect(Set(removed).isDisjoint(with: kept.keys) && kept["a0"] != nil)
        // A message of multi-byte characters within 32,768 characters is still over 64 KB: cut on a
        // character boundary.
        let message = ExportRecord.log(
            LogEntry(
                time: Date(timeIntervalSince1970: 0), level: .error, label: "hyrelay.edge",
                message: String(repeating: "é€", count: 16_000), metadata: [:]),
            source: .init(role: "edge", instance: "h"))
        let item = TelemetryEnvelope.envelope(message, instrumentationKey: "00000000-0000-0000-0000-000000000001")
        #expect(item.text.utf8.count <= 64 * 1024)
        let text = try #require(Self.baseData(item)["message"]?.stringValue)
        #expect(text.count > 10_000 && text.hasPrefix("é€é€"))
        #expect(Self.baseData(item)["properties"]?.objectValue?["hyrelay.truncated"] == .string("message"))
    }

    /// The token audience follows the endpoint's cloud; a sign-in in another cloud is a configuration error.
    @Test func logsIngestionScopeFollowsTheCloud() throws {
        func scope(_ endpoint: String, _ authority: String? = nil) throws -> String {
            try MonitorCloud.logsIngestionScope(endpoint: endpoint, authorityHost: authority)
        }
        #expect(
            try scope("https://hyrelay-telemetry-a1b2-westeurope.logs.z1.ingest.monitor.azure.com")
                == "https://monitor.azure.com/.default")
        #expect(
            try scope("https://dce-x.usgovvirginia-1.ingest.monitor.azure.us", "https://login.microsoftonline.us/")
                == "https://monitor.azure.us/.default")
        #expect(try scope("https://dce-x.chinaeast2-1.ingest.monitor.azure.cn") == "https://monitor.azure.cn/.default")
        // A private-link or loopback host says nothing; the authority host decides.
        #expect(
            try scope("https://ingest.internal.example", "https://login.chinacloudapi.cn")
                == "https://monitor.azure.cn/.default")
        #expect(try scope("http://127.0.0.1:8080", "http://127.0.0.1:9/") == "https://monitor.azure.com/.default")
        #expect(throws: IdentityError.self) {
            try scope("https://dce-x.usgovvirginia-1.ingest.monitor.azure.us", "https://login.microsoftonline.com/")
        }
        #expect(MonitorCloud.scope(audience: "https://monitor.azure.com/") == "https://monitor.azure.com/.default")
    }

    /// A 401 is retried once with a fresh token; a 401 to the fresh token is final, not retried forever.
    @Test func aPersistent401IsFinal() async throws {
        let http = AzureHTTP()
        let credential = TokenCredential(
            source: .managedIdentity(endpoint: "http://169.254.169.254", clientID: nil),
            scope: "https://monitor.azure.com/.default", http: http)
        let refused = AzureResponse(
            status: 401, headers: [("x-ms-error-code", "InvalidToken")], body: [])
        let accepted = AzureResponse(status: 204, headers: [], body: [])
        #expect(classify(refused, success: [204], credential: credential) == .retry(status: "401", retryAfter: nil))
        #expect(
            classify(refused, success: [204], credential: credential) == .rejected(status: "401", code: "InvalidToken"))
        #expect(
            classify(refused, success: [204], credential: credential) == .rejected(status: "401", code: "InvalidToken"))
        // Once a token works again, the next 401 is worth one retry again.
        #expect(classify(accepted, success: [204], credential: credential) == .delivered)
        #expect(classify(refused, success: [204], credential: credential) == .retry(status: "401", retryAfter: nil))
        await http.shutdown()
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
        try AzureHTTP.checkURL("https://dce.eastus-1.ingest.monitor.azure.com")
        try AzureHTTP.checkURL("http://127.0.0.1:8080")
        try AzureHTTP.checkURL("http://[::1]:8080/x")
        try AzureHTTP.checkURL("http://169.254.169.254", linkLocalHTTP: true)
        #expect(throws: IdentityError.self) { try AzureHTTP.checkURL("http://dce.example.com") }
        #expect(throws: IdentityError.self) { try AzureHTTP.checkURL("http://169.254.169.254") }
        #expect(throws: IdentityError.self) { try AzureHTTP.checkURL("ftp://x") }
        #expect(throws: IdentityError.self) { try AzureHTTP.checkURL("https://") }
        // The host a URL really names: after the credentials, and an IPv4 address, not a name starting 127.
        #expect(throws: IdentityError.self) { try AzureHTTP.checkURL("http://127.0.0.1:1@192.0.2.2:8080/") }
        #expect(throws: IdentityError.self) { try AzureHTTP.checkURL("http://127.evil.example/") }
        #expect(throws: IdentityError.self) { try AzureHTTP.checkURL("https://user:pw@login.example/") }
        #expect(throws: IdentityError.self) { try AzureHTTP.checkURL("http://[::1]evil/") }
        #expect(throws: IdentityError.self) { try AzureHTTP.checkURL("https://host:80x/") }
        try AzureHTTP.checkURL("https://login.example:8443/tenant/v2.0")
        do {
            try AzureHTTP.checkURL("http://127.0.0.1:secret@192.0.2.2:8080/")
        } catch {
            #expect(error.description.contains("192.0.2.2") && !error.description.contains("secret"))
        }
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
        #expect(throws: IdentityError.self) { try CredentialSource.fromEnvironment(["AZURE_CLIENT_SECRET": "s"]) }
        #expect(throws: IdentityError.self) {
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
        #expect(throws: IdentityError.self) { try TokenCredential.parseToken(Array("{}".utf8), now: 0) }
    }
}
