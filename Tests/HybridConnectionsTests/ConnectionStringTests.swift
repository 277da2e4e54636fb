import Testing

@testable import HybridConnections

@Suite struct ConnectionStringTests {
    @Test func fullString() throws {
        let parsed = try RelayConnectionString(
            parsing:
                "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=abc=;EntityPath=hyco;OperationTimeout=00:01:00"
        )
        #expect(parsed.endpoint == "sb://contoso.servicebus.windows.net/")
        #expect(parsed.sharedAccessKeyName == "Root")
        #expect(parsed.sharedAccessKey == "abc=")
        #expect(parsed.entityPath == "hyco")
        #expect(parsed.other == ["OperationTimeout": "00:01:00"])
    }

    @Test func caseInsensitiveKeysAndSpaces() throws {
        let parsed = try RelayConnectionString(
            parsing: " endpoint = ws://127.0.0.1:9000 ; sharedaccesssignature=SharedAccessSignature sr=a ;")
        #expect(parsed.endpoint == "ws://127.0.0.1:9000")
        #expect(parsed.sharedAccessSignature == "SharedAccessSignature sr=a")
    }

    @Test func malformed() {
        #expect(throws: ConnectionStringError.missingEndpoint) {
            try RelayConnectionString(parsing: "SharedAccessKeyName=a;SharedAccessKey=b")
        }
        #expect(throws: ConnectionStringError.malformedPair("garbage")) {
            try RelayConnectionString(parsing: "Endpoint=sb://x/;garbage")
        }
        #expect(throws: ConnectionStringError.badEndpoint("ftp://x")) {
            try RelayConnectionString(parsing: "Endpoint=ftp://x")
        }
        #expect(throws: ConnectionStringError.incompleteKey) {
            try RelayConnectionString(parsing: "Endpoint=sb://x/;SharedAccessKeyName=a")
        }
        #expect(throws: ConnectionStringError.conflictingAuthentication) {
            try RelayConnectionString(
                parsing: "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b;Authentication=Managed Identity")
        }
    }

    @Test func azureShapedErrorText() {
        let text = RelayErrorText.phrase(
            RelayErrorText.noListeners, trackingId: "abc_G0", systemTracker: "sb://ns/hyco", epochSeconds: 1_745_492_895
        )
        #expect(
            text
                == "There are no listeners connected for the endpoint. TrackingId:abc_G0, SystemTracker:sb://ns/hyco, Timestamp:2025-04-24T11:08:15"
        )
        #expect(CivilTime.utc(0) == "1970-01-01T00:00:00")
        #expect(CivilTime.utc(951_782_400) == "2000-02-29T00:00:00")
    }
}
