import Testing

@testable import RelayServer

/// The relay's hold on a sender, every way it can end, and the late events that race each ending.
@Suite struct SenderHoldStateMachineTests {
    static let gone = Refusal(status: 503, text: "ServiceUnavailable: gone", reason: "listener_gone")

    @Test func anAcceptBridgesOnceAndLateEventsAreIgnored() {
        var hold = SenderHoldStateMachine()
        #expect(hold.state == .waitingForAccept)
        let accepted = hold.accepted()
        #expect(accepted == .join)
        #expect(hold.state == .bridged)
        let timedOut = hold.acceptTimedOut(stillParked: false)
        #expect(timedOut == .none)
        let vanished = hold.listenerVanished(Self.gone)
        #expect(vanished == .none, "a bridged sender no longer depends on the control channel")
        let left = hold.senderLeft()
        #expect(left == .none)
        let second = hold.accepted()
        #expect(second == .closeListenerLeg, "a rendezvous address works once")
        #expect(hold.state == .bridged)
    }

    @Test func aRejectionForwardsTheListenersStatus() {
        var hold = SenderHoldStateMachine()
        let rejected = hold.rejected(status: 401, description: "go away")
        #expect(rejected == .forwardRejection(status: 401, description: "go away"))
        #expect(hold.state == .rejected(status: 401))
        let late = hold.accepted()
        #expect(late == .closeListenerLeg)
    }

    @Test func theDeadlineAnswers504OnlyIfTheRendezvousWasStillParked() {
        var raced = SenderHoldStateMachine()
        // The listener's accept took the rendezvous from the table a moment before the deadline fired.
        let ignored = raced.acceptTimedOut(stillParked: false)
        #expect(ignored == .none)
        let joined = raced.accepted()
        #expect(joined == .join)

        var late = SenderHoldStateMachine()
        let timedOut = late.acceptTimedOut(stillParked: true)
        #expect(timedOut == .refuse(SenderHoldStateMachine.acceptTimeout, outcome: "timeout"))
        #expect(late.state == .timedOut)
        let accept = late.accepted()
        #expect(accept == .closeListenerLeg, "an accept after the 504 finds nobody")
    }

    @Test func aVanishedListenerIsTheSendersAnswerAtOnce() {
        var hold = SenderHoldStateMachine()
        let vanished = hold.listenerVanished(Self.gone)
        #expect(vanished == .refuse(Self.gone, outcome: "listener_gone"))
        #expect(hold.state == .listenerGone(status: 503))
        let timedOut = hold.acceptTimedOut(stillParked: true)
        #expect(timedOut == .none, "one answer per sender")
    }

    @Test func aSenderThatLeavesIsRecordedOnce() {
        var hold = SenderHoldStateMachine()
        let left = hold.senderLeft()
        #expect(left == .recordAbandoned)
        #expect(hold.state == .senderLeft)
        let rejected = hold.rejected(status: 403, description: nil)
        #expect(rejected == .none)
        let accept = hold.accepted()
        #expect(accept == .closeListenerLeg, "the listener's leg is closed, not bridged to nothing")
    }
}
