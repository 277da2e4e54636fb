import Testing

@testable import RelayTelemetry

/// A drain waits for work to end without polling: woken when the count reaches zero, or when its time is up.
@Suite struct InFlightWorkTests {
    @Test func aWaiterIsWokenWhenTheLastWorkEnds() async {
        let work = InFlightWork()
        work.add(2)
        async let idle = work.waitUntilIdle(timeout: .seconds(30))
        work.add(-1)
        #expect(work.count == 1)
        work.add(-1)
        let started = ContinuousClock.now
        #expect(await idle)
        #expect(ContinuousClock.now - started < .seconds(10), "woken, not timed out")
    }

    @Test func aWaiterGivesUpAfterItsTimeout() async {
        let work = InFlightWork()
        work.add(1)
        let idle = await work.waitUntilIdle(timeout: .milliseconds(50))
        #expect(!idle)
        #expect(work.count == 1)
    }

    @Test func nothingInFlightReturnsAtOnce() async {
        let idle = await InFlightWork().waitUntilIdle(timeout: .seconds(30))
        #expect(idle)
    }

    @Test func aCancelledWaiterReturns() async {
        let work = InFlightWork()
        work.add(1)
        let waiter = Task { await work.waitUntilIdle(timeout: .seconds(30)) }
        waiter.cancel()
        let idle = await waiter.value
        #expect(!idle)
    }
}
