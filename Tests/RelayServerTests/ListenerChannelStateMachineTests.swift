import NIOWebSocket
import Testing

@testable import RelayServer

/// A listener control channel's liveness, token lifetime and endings, driven as a value with times as numbers.
@Suite struct ListenerChannelStateMachineTests {
    static func channel(expiry: Int64? = 1_000, missedPongLimit: Int = 2) -> ListenerChannelStateMachine {
        ListenerChannelStateMachine(tokenExpiry: expiry, missedPongLimit: missedPongLimit, tokenGraceSeconds: 300)
    }

    @Test func aListenerThatAnswersPingsStays() {
        var machine = Self.channel()
        for _ in 0..<10 {
            let tick = machine.tick(writable: true)
            #expect(tick == .ping)
            machine.heardFromListener()
        }
        #expect(machine.isOpen)
    }

    @Test func aRecycledChannelClosesWith1011Once() {
        var machine = Self.channel()
        let close = machine.recycleTimerFired()
        #expect(close?.code == .unexpectedServerError && close?.cause == "recycled")
        #expect(machine.recycleTimerFired() == nil, "a channel already closing is not closed twice")
        #expect(machine.channelInactive() == "recycled")
        var evicted = Self.channel(missedPongLimit: 1)
        _ = evicted.tick(writable: true)
        _ = evicted.tick(writable: true)
        #expect(evicted.recycleTimerFired() == nil, "an evicted channel gets no Close")
    }

    @Test func unansweredPingsEvictAfterTheLimit() {
        var machine = Self.channel(missedPongLimit: 2)
        let first = machine.tick(writable: true)
        let second = machine.tick(writable: true)
        #expect(first == .ping && second == .ping)
        let third = machine.tick(writable: true)
        #expect(third == .evict(cause: "ping_timeout", message: "listener evicted: no pong (2 pings unanswered)"))
        #expect(machine.state == .evicted(cause: "ping_timeout"))
        let after = machine.tick(writable: true)
        #expect(after == .none)
        #expect(machine.channelInactive() == "ping_timeout")
    }

    @Test func aListenerThatPongsButNeverReadsIsEvicted() {
        var machine = Self.channel(missedPongLimit: 2)
        let first = machine.tick(writable: false)
        #expect(first == .ping)
        machine.heardFromListener()
        let second = machine.tick(writable: false)
        #expect(
            second == .evict(cause: "not_reading", message: "listener evicted: it does not read its control channel"))
    }

    @Test func aSocketThatDrainsResetsTheStall() {
        var machine = Self.channel(missedPongLimit: 2)
        for writable in [false, true, false, true, false] {
            let tick = machine.tick(writable: writable)
            #expect(tick == .ping)
            machine.heardFromListener()
        }
    }

    @Test func theTokenEndsTheChannelAtItsExpiryPlusGrace() {
        var machine = Self.channel(expiry: 1_000)
        #expect(machine.expiryDeadline == 1_300)
        #expect(machine.expiryTimerFired(now: 1_299.9) == nil, "a timer that fires early changes nothing")
        #expect(machine.isOpen)
        let close = machine.expiryTimerFired(now: 1_300)
        #expect(close == .init(code: .policyViolation, reason: "The security token expired", cause: "token_expired"))
        #expect(machine.channelInactive() == "token_expired")
    }

    @Test func aRenewalMovesTheDeadline() {
        var machine = Self.channel(expiry: 1_000)
        machine.tokenRenewed(expiry: 5_000)
        #expect(machine.expiryDeadline == 5_300)
        // The timer set for the old token fires: the new one holds.
        #expect(machine.expiryTimerFired(now: 1_300) == nil)
        machine.tokenRenewed(expiry: nil)
        #expect(machine.expiryDeadline == nil, "a token without expiry never ends the channel")
        #expect(machine.expiryTimerFired(now: 1e12) == nil)
    }

    @Test func aRefusedRenewalCloses1008() {
        var machine = Self.channel()
        let close = machine.renewalRefused(reason: "token_expired")
        #expect(
            close
                == .init(code: .policyViolation, reason: "Token renewal failed: token_expired", cause: "renew_refused"))
        #expect(machine.state == .closing(cause: "renew_refused"))
    }

    @Test func theFirstEndingIsTheOneCounted() {
        var machine = Self.channel()
        let first = machine.messageTooLarge(reason: "Message too big")
        #expect(first?.code == .messageTooLarge)
        #expect(machine.closeReceived() == nil, "one Close per channel")
        #expect(machine.goAway(reason: "draining") == nil)
        #expect(machine.violation(code: .protocolError, reason: "bad") == nil)
        let tick = machine.tick(writable: true)
        #expect(tick == .none)
        #expect(machine.channelInactive() == "message_too_big")
    }

    @Test func eachEndingHasItsCodeAndCause() {
        var listenerClosed = Self.channel()
        #expect(
            listenerClosed.closeReceived()
                == .init(code: .normalClosure, reason: "Normal Closure", cause: "listener_closed"))
        var goingAway = Self.channel()
        #expect(
            goingAway.goAway(reason: "draining") == .init(code: .goingAway, reason: "draining", cause: "going_away"))
        var broken = Self.channel()
        #expect(
            broken.violation(code: .protocolError, reason: "reserved opcode")
                == .init(code: .protocolError, reason: "reserved opcode", cause: "protocol_error"))
        var lost = Self.channel()
        #expect(lost.channelInactive() == "closed", "a channel that just went is counted as closed")
    }
}
