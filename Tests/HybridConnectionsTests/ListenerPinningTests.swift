import Testing

@testable import HybridConnections

@Suite struct ListenerPinningTests {
    @Test func noHeadersAdmitEveryone() {
        let pinning = ListenerPinning(allowed: [], disallowed: [])
        #expect(!pinning.restricts)
        #expect(pinning.admits(trackingId: "anything"))
    }

    @Test func allowedIdsPickAndDisallowedOnesExclude() {
        let pinning = ListenerPinning(allowed: ["AAA, bbb", "ccc"], disallowed: ["bbb"])
        #expect(pinning.restricts)
        #expect(pinning.admits(trackingId: "aaa"), "case-insensitive")
        #expect(pinning.admits(trackingId: "CCC"), "repeated headers join")
        #expect(!pinning.admits(trackingId: "bbb"), "exclusion wins")
        #expect(!pinning.admits(trackingId: "ddd"), "not named")
    }

    @Test func emptyItemsAreIgnored() {
        let pinning = ListenerPinning(allowed: [" , ,"], disallowed: [" x ,"])
        #expect(pinning.allowed == nil, "a header naming nobody restricts nothing")
        #expect(pinning.admits(trackingId: "y"))
        #expect(pinning.disallowed == ["x"])
    }
}
