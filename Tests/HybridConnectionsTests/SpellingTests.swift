import Testing

@testable import HybridConnections

@Suite struct SpellingTests {
    @Test func nearKeysAreSuggestedAndFarOnesAreNot() {
        let keys = ["listen", "publicURL", "tls", "namespaceRules", "hybridConnections", "limits"]
        #expect(Spelling.closest(to: "tsl", among: keys) == "tls")
        #expect(Spelling.closest(to: "hybridconnection", among: keys) == "hybridConnections")
        #expect(Spelling.closest(to: "publicUrl", among: keys) == "publicURL")
        #expect(Spelling.closest(to: "lmits", among: keys) == "limits")
        #expect(Spelling.closest(to: "database", among: keys) == nil)
        #expect(Spelling.hint(for: "tsl", among: keys) == " (did you mean 'tls'?)")
        #expect(Spelling.hint(for: "zzz", among: keys) == "")
        #expect(Spelling.closest(to: "", among: ["ab", "abc"]) == "ab")
        #expect(Spelling.closest(to: "x", among: [String]()) == nil)
    }

    @Test func editDistanceCountsATranspositionOnce() {
        func distance(_ a: String, _ b: String) -> Int {
            Spelling.editDistance(Array(a.unicodeScalars), Array(b.unicodeScalars))
        }
        #expect(distance("tsl", "tls") == 1)
        #expect(distance("kitten", "sitting") == 3)
        #expect(distance("", "abc") == 3 && distance("abc", "") == 3 && distance("same", "same") == 0)
    }
}
