import NIOCore
import Testing

@testable import RelayServer

/// An HTTP-mode exchange as a value: both routes, both framings, back-pressure each way, and each deadline.
@Suite struct HTTPExchangeStateMachineTests {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func exchange(
        _ route: HTTPExchangeStateMachine.Route, hasBody: Bool = true, keepAlive: Bool = true, http11: Bool = true
    ) -> HTTPExchangeStateMachine {
        HTTPExchangeStateMachine(
            route: route, hasBody: hasBody, clientKeepAlive: keepAlive, clientSpeaksHTTP11: http11,
            holdLimit: 64 * 1024, bodyTimeout: .seconds(60), responseTimeout: .seconds(60), now: start)
    }

    @Test func aSmallRequestIsCollectedThenSentOnTheControlChannel() {
        var machine = Self.exchange(.controlChannel)
        #expect(machine.state == .executing(.collecting, .awaitingHead))
        let part = machine.requestBodyPart(bytes: 1000, now: Self.start)
        #expect(part == .collect)
        #expect(machine.readAllowed())
        let end = machine.requestEnded(now: Self.start)
        #expect(end == .dispatchOnControlChannel)
        let head = machine.responseHead(wholeBody: true, now: Self.start)
        #expect(head == .contentLength)
        let finish = machine.responseEnded()
        #expect(finish == .finish(keepAlive: true))
        #expect(machine.isFinished)
    }

    @Test func aLargeRequestWaitsForItsRendezvousThenStreams() {
        var machine = Self.exchange(.rendezvous)
        let first = machine.requestBodyPart(bytes: 40_000, now: Self.start)
        #expect(first == .hold)
        #expect(machine.readAllowed())
        let second = machine.requestBodyPart(bytes: 40_000, now: Self.start)
        #expect(second == .hold)
        #expect(!machine.readAllowed(), "64 KiB held: the client waits for the rendezvous")
        let opened = machine.rendezvousOpened(now: Self.start)
        #expect(opened == .flushHeld(end: false))
        #expect(machine.readAllowed())
        let third = machine.requestBodyPart(bytes: 1 << 20, now: Self.start)
        #expect(third == .forward)
        let full = machine.rendezvousWritabilityChanged(false)
        #expect(!full && !machine.readAllowed(), "the rendezvous paces the client")
        let drained = machine.rendezvousWritabilityChanged(true)
        #expect(drained && machine.readAllowed())
        let end = machine.requestEnded(now: Self.start)
        #expect(end == .forwardEnd)
        #expect(machine.state == .executing(.sent, .awaitingHead))
    }

    @Test func aBodyThatEndsBeforeTheRendezvousOpensGoesWithTheEnd() {
        var machine = Self.exchange(.rendezvous)
        _ = machine.requestBodyPart(bytes: 10, now: Self.start)
        let end = machine.requestEnded(now: Self.start)
        #expect(end == .hold)
        let opened = machine.rendezvousOpened(now: Self.start)
        #expect(opened == .flushHeld(end: true))
        #expect(machine.state == .executing(.sent, .awaitingHead))

        var bodiless = Self.exchange(.rendezvous, hasBody: false)
        let openedBodiless = bodiless.rendezvousOpened(now: Self.start)
        #expect(openedBodiless == .flushHeld(end: true))
    }

    @Test func aRendezvousForTheResponseOnlyIsKeptForPacing() {
        var machine = Self.exchange(.controlChannel)
        _ = machine.requestEnded(now: Self.start)
        let opened = machine.rendezvousOpened(now: Self.start)
        #expect(opened == .attach)
    }

    @Test func responsesAreFramedForTheClient() {
        var chunked = Self.exchange(.controlChannel)
        _ = chunked.requestEnded(now: Self.start)
        let result1 = chunked.responseHead(wholeBody: false, now: Self.start)
        #expect(result1 == .chunked)
        let result2 = chunked.responseBodyPart(bytes: 1, now: Self.start)
        #expect(result2 == .write)
        let result3 = chunked.responseEnded()
        #expect(result3 == .finish(keepAlive: true))

        var old = Self.exchange(.controlChannel, http11: false)
        _ = old.requestEnded(now: Self.start)
        let result4 = old.responseHead(wholeBody: false, now: Self.start)
        #expect(result4 == .closeDelimited)
        let result5 = old.responseEnded()
        #expect(result5 == .finish(keepAlive: false), "an HTTP/1.0 body ends with the connection")

        var closing = Self.exchange(.controlChannel, keepAlive: false)
        _ = closing.requestEnded(now: Self.start)
        _ = closing.responseHead(wholeBody: true, now: Self.start)
        let result6 = closing.responseEnded()
        #expect(result6 == .finish(keepAlive: false))
    }

    @Test func anEarlyAnswerEndsTheConnectionAfterIt() {
        var machine = Self.exchange(.rendezvous)
        _ = machine.rendezvousOpened(now: Self.start)
        _ = machine.requestBodyPart(bytes: 100, now: Self.start)
        // The listener answers (say 413) while the upload still runs.
        let result7 = machine.responseHead(wholeBody: true, now: Self.start)
        #expect(result7 == .contentLength)
        let stillForwarded = machine.requestBodyPart(bytes: 100, now: Self.start)
        #expect(stillForwarded == .forward)
        let result8 = machine.responseEnded()
        #expect(result8 == .finish(keepAlive: false), "the rest of the body is not a next request")
        let after = machine.requestBodyPart(bytes: 100, now: Self.start)
        #expect(after == .discard)
    }

    @Test func aSecondResponseHeadIsIgnored() {
        var machine = Self.exchange(.controlChannel)
        _ = machine.requestEnded(now: Self.start)
        _ = machine.responseHead(wholeBody: false, now: Self.start)
        let result9 = machine.responseHead(wholeBody: true, now: Self.start)
        #expect(result9 == nil)
    }

    @Test func failuresRefuseBeforeTheHeadAndAbortAfter() {
        let gone = Refusal(status: 502, text: "BadGateway: gone", reason: "listener_gone")
        var before = Self.exchange(.controlChannel)
        let result10 = before.failed(gone)
        #expect(result10 == .refuse(gone))
        let result11 = before.failed(gone)
        #expect(result11 == .none, "once")

        var after = Self.exchange(.controlChannel)
        _ = after.requestEnded(now: Self.start)
        _ = after.responseHead(wholeBody: false, now: Self.start)
        let result12 = after.failed(gone)
        #expect(result12 == .abort("BadGateway: gone"))
        let result13 = after.responseBodyPart(bytes: 1, now: Self.start)
        #expect(result13 == .discard)
    }

    @Test func theListenersLengthIsKeptAndHeld() {
        var declared = Self.exchange(.controlChannel)
        _ = declared.requestEnded(now: Self.start)
        #expect(
            declared.responseHead(wholeBody: false, declaredLength: 10, now: Self.start)
                == .declaredLength(remaining: 10))
        #expect(declared.responseBodyPart(bytes: 6, now: Self.start) == .write)
        #expect(declared.responseBodyPart(bytes: 4, now: Self.start) == .write)
        #expect(declared.responseEnded() == .finish(keepAlive: true))

        var short = Self.exchange(.controlChannel)
        _ = short.requestEnded(now: Self.start)
        _ = short.responseHead(wholeBody: false, declaredLength: 10, now: Self.start)
        #expect(short.responseBodyPart(bytes: 4, now: Self.start) == .write)
        #expect(short.responseEnded() == .finish(keepAlive: false), "the client waits for 6 more bytes: close")

        var long = Self.exchange(.controlChannel)
        _ = long.requestEnded(now: Self.start)
        _ = long.responseHead(wholeBody: false, declaredLength: 3, now: Self.start)
        if case .abort = long.responseBodyPart(bytes: 4, now: Self.start) {
        } else {
            Issue.record("a body past its Content-Length is cut")
        }

        var head = Self.exchange(.controlChannel)
        _ = head.requestEnded(now: Self.start)
        #expect(head.responseHead(wholeBody: true, declaredLength: 5000, bodiless: true, now: Self.start) == .bodiless)
        #expect(head.responseBodyPart(bytes: 10, now: Self.start) == .discard)
        #expect(head.responseEnded() == .finish(keepAlive: true))
    }

    @Test func deadlinesFollowProgress() {
        var machine = Self.exchange(.rendezvous)
        #expect(machine.nextCheck == Self.start + .seconds(60))
        // Progress at 30 s moves the body deadline to 90 s.
        _ = machine.requestBodyPart(bytes: 1, now: Self.start + .seconds(30))
        let early = machine.deadlineCheck(now: Self.start + .seconds(60))
        #expect(early == .checkAgain(at: Self.start + .seconds(90)))
        let stalled = machine.deadlineCheck(now: Self.start + .seconds(90))
        #expect(stalled == .fail(.refuse(HTTPExchangeStateMachine.bodyTimeoutRefusal)))

        var waiting = Self.exchange(.controlChannel)
        _ = waiting.requestEnded(now: Self.start + .seconds(5))
        let noAnswer = waiting.deadlineCheck(now: Self.start + .seconds(65))
        #expect(noAnswer == .fail(.refuse(HTTPExchangeStateMachine.responseTimeoutRefusal)))

        var streaming = Self.exchange(.controlChannel)
        _ = streaming.requestEnded(now: Self.start)
        _ = streaming.responseHead(wholeBody: false, now: Self.start)
        _ = streaming.responseBodyPart(bytes: 1, now: Self.start + .seconds(50))
        let result14 = streaming.deadlineCheck(now: Self.start + .seconds(60))
        #expect(result14 == .checkAgain(at: Self.start + .seconds(110)))
        let cut = streaming.deadlineCheck(now: Self.start + .seconds(110))
        #expect(cut == .fail(.abort("the response body stalled")))
    }

    @Test func theClientLeavingEndsItOnce() {
        var rendezvous = Self.exchange(.rendezvous)
        let result15 = rendezvous.clientGone()
        #expect(result15)
        #expect(rendezvous.isFinished)
        let result16 = rendezvous.clientGone()
        #expect(!result16)
        let opened = rendezvous.rendezvousOpened(now: Self.start)
        #expect(opened == .close, "a rendezvous opened after the client left is closed")

        var control = Self.exchange(.controlChannel)
        let result17 = control.clientGone()
        #expect(result17, "a request on the control channel is ended too")
        var answered = Self.exchange(.controlChannel)
        _ = answered.requestEnded(now: Self.start)
        _ = answered.responseHead(wholeBody: true, now: Self.start)
        _ = answered.responseEnded()
        let afterAnswer = answered.clientGone()
        #expect(!afterAnswer, "nothing left to end")
    }
}
