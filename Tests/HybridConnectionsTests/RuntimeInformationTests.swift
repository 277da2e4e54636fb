import Testing

@testable import HybridConnections

@Suite struct RuntimeInformationTests {
    @Test func anEntryReadsBackAndEscapesItsName() throws {
        let information = RuntimeInformation(path: "a&b", listenerCount: 3, requiresClientAuthorization: false)
        let xml = information.entry(id: "https://relay/a&b", updated: "2026-01-01T00:00:00Z")
        #expect(xml.contains("<title type=\"text\">a&amp;b</title>") && !xml.contains("a&b<"))
        let read = try #require(RuntimeInformation(entry: xml, path: "a&b"))
        #expect(read == information)
        #expect(RuntimeInformation(entry: RuntimeInformation.emptyFeed(id: "x", updated: "y"), path: "x") == nil)
        #expect(RuntimeInformation(entry: "<html>not it</html>", path: "x") == nil)
    }

    @Test func onlyManagementQueriesAreTakenForOne() throws {
        let query = try RequestTarget(parsing: "/hc?api-version=2016-07")
        #expect(RuntimeInformation.isQuery(method: "GET", target: query, processAtHeader: "ServiceBus"))
        #expect(!RuntimeInformation.isQuery(method: "GET", target: query, processAtHeader: nil), "an app's own GET")
        #expect(!RuntimeInformation.isQuery(method: "POST", target: query, processAtHeader: "ServiceBus"))
        let plain = try RequestTarget(parsing: "/hc?x=1")
        #expect(!RuntimeInformation.isQuery(method: "GET", target: plain, processAtHeader: "ServiceBus"))
    }
}
