import NIOCore
import RelayIO
import Testing

/// The tunnel leg's machine as a value, transition by transition, including the orderings that bit before:
/// a read asked for before the join, a ping while a frame is half written, the partner gone mid-frame.
@Suite struct BridgeLegStateMachineTests {
    let ping = ByteBuffer(bytes: [1])

    @Test func readsWaitForTheJoinAndForThePartnersRoom() {
        var leg = BridgeLegStateMachine()
        let beforeJoin = leg.readRequested()
        let atJoin = leg.joinedPartner()
        let joinedAgain = leg.joinedPartner()
        let joinedRead = leg.readRequested()
        #expect(!beforeJoin, "not joined: withheld")
        #expect(atJoin, "the withheld read is made at the join")
        #expect(!joinedAgain, "only once")
        #expect(joinedRead)
        let filled = leg.partnerWritabilityChanged(false)
        let whileFull = leg.readRequested()
        let drained = leg.partnerWritabilityChanged(true)
        let drainedAgain = leg.partnerWritabilityChanged(true)
        #expect(!filled && !whileFull, "partner full: withheld")
        #expect(drained, "resumed when the partner drains")
        #expect(!drainedAgain, "nothing was withheld since")
    }

    @Test func aCloseEachWayClosesTheLeg() {
        var leg = BridgeLegStateMachine()
        let first = leg.closeReceived(code: 1000)
        #expect(first && leg.closeState == .closeReceived)
        let second = leg.closeReceived(code: 1011)
        #expect(!second, "a second Close is not passed on")
        #expect(leg.closeCode == 1000, "the first Close's code is the leg's")
        #expect(!leg.takesData, "nothing after the peer's Close")
        #expect(!leg.closesAfterReadBurst, "half-closed: the other direction still flows")
        let written = leg.partnerCloseArrived()
        #expect(written && leg.closeState == .closed)
        let writtenAgain = leg.partnerCloseArrived()
        #expect(!writtenAgain, "one Close is written")
        let delivered = leg.deliveryWritten(writable: true)
        #expect(leg.closesAfterReadBurst && delivered.close)
    }

    @Test func pingsAreAnsweredBetweenFramesOnly() {
        var leg = BridgeLegStateMachine()
        let between = leg.pingReceived(ping, writable: true)
        #expect(between == ping)
        leg.partnerBytesWritten(endsInsideFrame: true)
        let inside = leg.pingReceived(ping, writable: true)
        let drainedInside = leg.writabilityChanged(true)
        #expect(inside == nil, "no pong inside a frame being written")
        #expect(drainedInside == nil, "still inside it")
        leg.partnerBytesWritten(endsInsideFrame: false)
        let afterFrame = leg.deliveryWritten(writable: true).pong
        let again = leg.deliveryWritten(writable: true).pong
        #expect(afterFrame == ping, "the waiting pong goes after the frame")
        #expect(again == nil, "once")
        let full = leg.pingReceived(ping, writable: false)
        let drained = leg.writabilityChanged(true)
        #expect(full == nil && drained == ping, "a full socket delays the pong until it drains")
        _ = leg.partnerCloseArrived()
        let afterClose = leg.pingReceived(ping, writable: true)
        #expect(afterClose == nil, "no pong after this leg's Close")
    }

    @Test func aPartnerGoneMidFrameClosesWithoutAClose() {
        var leg = BridgeLegStateMachine()
        leg.partnerBytesWritten(endsInsideFrame: true)
        let action = leg.partnerGone(active: true)
        #expect(action == .closeNow)
    }

    @Test func aPartnerGoneSaysGoingAwayAndWaitsForTheReplyOrNot() {
        var waiting = BridgeLegStateMachine()
        let waitingAction = waiting.partnerGone(active: true)
        #expect(waitingAction == .goingAwayThenAwaitReply)
        var answered = BridgeLegStateMachine()
        _ = answered.closeReceived(code: nil)
        #expect(answered.closeCode == 1005, "a Close without a code: no status received, a clean close")
        let answeredAction = answered.partnerGone(active: true)
        #expect(answeredAction == .goingAwayThenClose)
        var closing = BridgeLegStateMachine()
        _ = closing.partnerCloseArrived()
        let closingAction = closing.partnerGone(active: true)
        #expect(closingAction == .awaitReply, "its Close is out already")
        _ = closing.closeReceived(code: 4000)
        let closedAction = closing.partnerGone(active: true)
        #expect(closedAction == .closeAfterCloseWritten)
        var gone = BridgeLegStateMachine()
        let goneAction = gone.partnerGone(active: false)
        #expect(goneAction == .none)
    }

    @Test func aViolationClosesWithItsReasonWhenAFrameMayBeWritten() {
        var leg = BridgeLegStateMachine()
        #expect(leg.closeCode == nil)
        let open = leg.violation(code: 1002)
        #expect(leg.closeCode == 1002, "the code this leg answered a broken rule with")
        #expect(open == .closeWithReasonThenClose && !leg.takesData)
        var midFrame = BridgeLegStateMachine()
        midFrame.partnerBytesWritten(endsInsideFrame: true)
        let inside = midFrame.violation(code: 1002)
        #expect(inside == .close)
        var closed = BridgeLegStateMachine()
        _ = closed.partnerCloseArrived()
        let afterClose = closed.violation(code: 1002)
        #expect(afterClose == .close, "a Close is out already")
    }

    @Test func theLegReportsOnce() {
        var leg = BridgeLegStateMachine()
        #expect(!leg.isFinished)
        let first = leg.channelInactive()
        let second = leg.channelInactive()
        #expect(first && !second && leg.isFinished)
    }
}
