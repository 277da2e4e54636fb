import Testing

@testable import RelayExport

@Suite struct BatchingTests {
    @Test func batchesStayWithinTheCapWithBracketsAndSeparatorsCounted() {
        var builder = BatchBuilder(stream: "Custom-X", maxBytes: 1000)
        var batches: [Batch] = []
        var sent = 0
        for index in 0..<500 {
            let row = Array("{\"n\":\(index),\"pad\":\"\(String(repeating: "x", count: index % 37))\"}".utf8)
            sent += 1
            if case .full(let batch) = builder.add(row) { batches.append(batch) }
        }
        if let last = builder.cut() { batches.append(last) }
        #expect(batches.reduce(0) { $0 + $1.count } == sent)
        for batch in batches {
            #expect(batch.body.count <= 1000)
            #expect(batch.body.first == UInt8(ascii: "[") && batch.body.last == UInt8(ascii: "]"))
            #expect(BatchBuilder.size(ofItems: batch.items.map(\.count)) == batch.body.count)
        }
        // Greedy: each batch but the last could not take the next row.
        #expect(batches.count < 500 && batches.count > 10)
    }

    @Test func aRowExactlyAtTheCapFitsAndOneByteMoreIsOversize() {
        var builder = BatchBuilder(stream: "s", maxBytes: 12)
        #expect(builder.add(Array("1234567890".utf8)) == .added)
        #expect(builder.cut()?.body.count == 12)
        #expect(builder.add(Array("12345678901".utf8)) == .oversize)
        #expect(builder.isEmpty)
    }

    @Test func itemCountCapCutsBatches() {
        var builder = BatchBuilder(stream: "s", maxBytes: 1_000_000, maxItems: 3)
        var full: [Batch] = []
        for _ in 0..<7 { if case .full(let batch) = builder.add(Array("{}".utf8)) { full.append(batch) } }
        #expect(full.map(\.count) == [3, 3])
        #expect(builder.cut()?.count == 1)
    }

    @Test func itemsRoundTripThroughTheBody() {
        let rows = ["{\"a\":\"x,\\ny\"}", "[1,2]", "\"\""].map { Array($0.utf8) }
        let batch = Batch(stream: "s", items: rows)
        #expect(batch.items == rows)
        #expect(Batch(stream: "s", body: batch.body) == batch)
        #expect(Batch(stream: "s", items: []).items.isEmpty)
    }
}

@Suite struct RetryTests {
    @Test func retryableStatusesFollowTheIngestionRules() {
        #expect(StatusClass.of(204, success: [204]) == .success)
        for status in [408, 429, 500, 502, 503, 504] { #expect(StatusClass.of(status, success: [204]) == .retryable) }
        for status in [200, 400, 401, 403, 404, 413] { #expect(StatusClass.of(status, success: [204]) == .final) }
    }

    @Test func backoffGrowsWithJitterAndIsCapped() {
        var schedule = RetrySchedule(baseSeconds: 1, maxSeconds: 8, retryAfterCapSeconds: 60)
        let delays = (0..<6).map { _ in schedule.failed(retryAfter: nil, random: 1) }
        #expect(delays == [1, 2, 4, 8, 8, 8])
        var low = RetrySchedule(baseSeconds: 1, maxSeconds: 8)
        #expect(low.failed(retryAfter: nil, random: 0) == 0.5)
        schedule.succeeded()
        #expect(schedule.failed(retryAfter: nil, random: 1) == 1)
    }

    @Test func retryAfterWinsButIsCapped() {
        var schedule = RetrySchedule(retryAfterCapSeconds: 120)
        #expect(schedule.failed(retryAfter: 3, random: 0.5) == 3)
        #expect(schedule.failed(retryAfter: 86_400, random: 0.5) == 120)
    }

    @Test func retryAfterHeaderForms() {
        #expect(RetryAfter.seconds(headers: [("Retry-After", "7")], now: 0) == 7)
        #expect(RetryAfter.seconds(headers: [("retry-after-ms", "1500")], now: 0) == 1.5)
        #expect(RetryAfter.seconds(headers: [("x-ms-retry-after-ms", "250"), ("Retry-After", "9")], now: 0) == 0.25)
        let date = RetryAfter.seconds(headers: [("Retry-After", "Sun, 06 Nov 1994 08:49:37 GMT")], now: 784_111_770)
        #expect(date == 7)
        #expect(RetryAfter.seconds(headers: [("Retry-After", "soon")], now: 0) == nil)
        #expect(RetryAfter.seconds(headers: [], now: 0) == nil)
    }
}
