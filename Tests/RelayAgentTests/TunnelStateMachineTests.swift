import HybridConnections
import NIOCore
import NIOWebSocket
import RelayTelemetry
import Testing

@testable import RelayAgent

/// Every transition of an agent tunnel as a value, including the orderings that broke the handlers before:
/// a Close during the upgrade, a FIN before the tunnel opens, a Close from each side while the other direction
/// still flows.
@Suite struct TunnelStateMachineTests {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func bytes(_ values: [UInt8]) -> ByteBufferView { ByteBuffer(bytes: values).readableBytesView }

    /// A sender whose preamble the listener accepted.
    static func pumpingSender() -> TunnelStateMachine {
        var machine = TunnelStateMachine(role: .sender(portName: "db"), started: start)
        _ = machine.upgradeCompleted()
        _ = machine.payloadReceived(bytes([1, 0, 0]), now: start)
        _ = machine.localReadingStarted()
        return machine
    }

    @Test func aSenderSendsItsPreambleAndOpensOnTheAnswer() {
        var machine = TunnelStateMachine(role: .sender(portName: "db"), started: Self.start)
        #expect(machine.state == .upgrading)
        #expect(!machine.isUpgraded)
        let upgraded = machine.upgradeCompleted()
        #expect(upgraded == .sendPreamble(portName: "db", mode: .stream))
        #expect(machine.state == .awaitingPreambleReply)
        let half = machine.payloadReceived(Self.bytes([1, 0]), now: Self.start)
        #expect(half == .none)
        let rest = machine.payloadReceived(Self.bytes([0, 9, 9]), now: Self.start)
        #expect(rest == .opened(leftover: [9, 9]))
        #expect(machine.state == .pumping)
        let payload = machine.payloadReceived(Self.bytes([1, 2, 3]), now: Self.start + .milliseconds(25))
        #expect(payload == .deliver)
        #expect(machine.summary.bytesFromRelay == 5)
        #expect(machine.summary.bytesDown == 5)
        #expect(machine.summary.timeToFirstByte == 0.025)
    }

    @Test func aListenerDialsTheNamedPortAndWithholdsReadsMeanwhile() {
        var machine = TunnelStateMachine(role: .listener, started: Self.start)
        let upgraded = machine.upgradeCompleted()
        #expect(upgraded == .armPreambleTimer)
        #expect(machine.state == .awaitingPreamble)
        let (header, name) = Preamble.request(portName: "db")
        let first = machine.payloadReceived(Self.bytes(header), now: Self.start)
        #expect(first == .none)
        let second = machine.payloadReceived(Self.bytes(name + [7]), now: Self.start)
        #expect(second == .dial(portName: "db", mode: .stream))
        #expect(machine.state == .dialing)
        let read = machine.readRequested(localWritable: true)
        #expect(!read, "nothing is read from the relay while the target is dialed")
        #expect(machine.preambleTimedOut(after: 10) == nil, "the deadline no longer applies")
        let dialed = machine.dialSucceeded()
        #expect(dialed == .open(reply: [1, 0, 0], leftover: [7]))
        #expect(machine.state == .pumping)
        // The target's FIN, reported before the edge reads it, waits for what the target sent before it.
        let early = machine.localInputEnded()
        #expect(early == .none)
        let started = machine.localReadingStarted()
        #expect(started == .write(code: .normalClosure, reason: "Shutdown", closeChannelAfter: false))
        let resumed = machine.resumeReading()
        #expect(resumed)
        let again = machine.resumeReading()
        #expect(!again, "one withheld read is made once")
        #expect(machine.summary.atEdge && machine.summary.bytesUp == 1)
    }

    /// The relay bridges at once, so the sender's preamble can arrive in the same read as the edge's 101,
    /// before the upgrade event: it is read, not dropped.
    @Test func aPreambleThatComesWithThe101IsRead() {
        var machine = TunnelStateMachine(role: .listener, started: Self.start)
        let (header, name) = Preamble.request(portName: "db")
        let early = machine.payloadReceived(Self.bytes(header + name), now: Self.start)
        #expect(early == .dial(portName: "db", mode: .stream))
        #expect(machine.state == .upgrading, "no frame may be written yet")
        let upgraded = machine.upgradeCompleted()
        #expect(upgraded == .armPreambleTimer)
        #expect(machine.state == .dialing)
        #expect(machine.preambleTimedOut(after: 10) == nil)
    }

    @Test func aCloseDuringTheUpgradeWaitsForItAndReplacesThePreamble() {
        var machine = TunnelStateMachine(role: .sender(portName: "db"), started: Self.start)
        let asked = machine.closeRequested(code: .normalClosure, reason: "Shutdown")
        #expect(asked == .none, "the HTTP codec is still in the pipeline")
        #expect(machine.state == .upgrading)
        let upgraded = machine.upgradeCompleted()
        #expect(upgraded == .close(.write(code: .normalClosure, reason: "Shutdown", closeChannelAfter: false)))
        let twice = machine.closeRequested(code: .unexpectedServerError, reason: "again")
        #expect(twice == .none, "one Close per connection")
        let answer = machine.payloadReceived(Self.bytes([1, 0, 0]), now: Self.start)
        #expect(answer == .none, "a tunnel ended before it opened stays closed")
    }

    @Test func aFinBeforeTheTunnelOpensIsSentAfterTheEarlyBytes() {
        var machine = TunnelStateMachine(role: .sender(portName: "db"), started: Self.start)
        _ = machine.upgradeCompleted()
        let fin = machine.localInputEnded()
        #expect(fin == .none, "the tunnel is not open: the Close would end it before the early bytes")
        let opened = machine.payloadReceived(Self.bytes([1, 0, 0]), now: Self.start)
        #expect(opened == .opened(leftover: []))
        machine.localBytesSent(4)
        let close = machine.localReadingStarted()
        #expect(close == .write(code: .normalClosure, reason: "Shutdown", closeChannelAfter: false))
        #expect(machine.state == .draining(upstreamOpen: false, downstreamOpen: true))
        let reply = machine.payloadReceived(Self.bytes([5]), now: Self.start)
        #expect(reply == .deliver, "the other direction keeps flowing")
        #expect(machine.summary.bytesUp == 4)
    }

    @Test func theLocalSideEndsFirstThenThePeer() {
        var machine = Self.pumpingSender()
        let fin = machine.localInputEnded()
        #expect(fin == .write(code: .normalClosure, reason: "Shutdown", closeChannelAfter: false))
        let closed = machine.closeReceived(code: 1000, reason: "")
        #expect(closed == .shutDownLocalOutput(closeChannel: true))
        #expect(machine.state == .closed)
        let summary = machine.channelInactive()
        #expect(summary?.causeLabel == "remote_close")
        #expect(summary?.failed == false)
    }

    @Test func thePeerEndsFirstThenTheLocalSide() {
        var machine = Self.pumpingSender()
        let closed = machine.closeReceived(code: 1000, reason: "")
        #expect(closed == .shutDownLocalOutput(closeChannel: false))
        #expect(machine.state == .draining(upstreamOpen: true, downstreamOpen: false))
        let late = machine.payloadReceived(Self.bytes([1]), now: Self.start)
        #expect(late == .none, "nothing after the peer's Close")
        let repeated = machine.closeReceived(code: 1000, reason: "")
        #expect(repeated == .none)
        let fin = machine.localInputEnded()
        #expect(fin == .write(code: .normalClosure, reason: "Shutdown", closeChannelAfter: true))
    }

    @Test func aCloseWithoutCodeIsACleanClose() {
        var machine = Self.pumpingSender()
        _ = machine.closeReceived(code: nil, reason: "")
        let summary = machine.channelInactive()
        #expect(summary?.causeLabel == "remote_close")
        #expect(summary?.closeCause == "remote close -")
    }

    @Test func aCloseBeforeTheTunnelOpensIsARefusal() {
        var machine = TunnelStateMachine(role: .sender(portName: "db"), started: Self.start)
        _ = machine.upgradeCompleted()
        let closed = machine.closeReceived(code: 1008, reason: "unknown port name 'db'")
        #expect(closed == .closeLocal(closeChannel: false))
        #expect(machine.state == .closed)
        let summary = machine.channelInactive()
        #expect(summary?.causeLabel == "refused_by_peer")
        #expect(summary?.closeCause == "closed by peer before the tunnel opened (1008: unknown port name 'db')")
        #expect(summary?.failed == true)
    }

    @Test func preambleAnswersAndRequestsThatEndTheTunnel() {
        var sender = TunnelStateMachine(role: .sender(portName: "dns"), started: Self.start)
        _ = sender.upgradeCompleted()
        let refused = sender.payloadReceived(Self.bytes([0, 0, 1]), now: Self.start)
        guard case .fail(nil, let failure) = refused else {
            Issue.record("expected a failure, got \(refused)")
            return
        }
        #expect(failure.label == .preambleRefused && failure.code == .protocolError)

        var listener = TunnelStateMachine(role: .listener, started: Self.start)
        _ = listener.upgradeCompleted()
        let datagram = listener.payloadReceived(Self.bytes([1, 0, 1, 1, 0x41]), now: Self.start)
        #expect(datagram == .dial(portName: "A", mode: .datagram), "the edge checks the mode against its port")
        let answered = listener.dialSucceeded()
        #expect(answered == .open(reply: [1, 0, 1], leftover: []), "a datagram tunnel is accepted as one")

        var future = TunnelStateMachine(role: .listener, started: Self.start)
        _ = future.upgradeCompleted()
        let version = future.payloadReceived(Self.bytes([2, 0, 0, 0]), now: Self.start)
        #expect(version.reply == Preamble.unsupportedVersion)

        var eager = TunnelStateMachine(role: .listener, started: Self.start)
        _ = eager.upgradeCompleted()
        _ = eager.payloadReceived(Self.bytes([1, 0, 0, 1, 0x41]), now: Self.start)
        let early = eager.payloadReceived(Self.bytes([9]), now: Self.start)
        #expect(early.failureLabel == .protocolError, "payload before the preamble answer")
    }

    @Test func thePreambleDeadlineAppliesOnlyWhileWaitingForIt() {
        var machine = TunnelStateMachine(role: .listener, started: Self.start)
        #expect(machine.preambleTimedOut(after: 10) == nil, "not before the upgrade")
        _ = machine.upgradeCompleted()
        let failure = machine.preambleTimedOut(after: 10)
        #expect(
            failure
                == TunnelFailure(
                    code: .policyViolation, label: .preambleTimeout, cause: "the sender sent no preamble within 10 s")
        )
    }

    @Test func theFirstCauseIsKeptAndADialAfterTheEndIsClosed() {
        var machine = TunnelStateMachine(role: .listener, started: Self.start)
        _ = machine.upgradeCompleted()
        _ = machine.payloadReceived(Self.bytes([1, 0, 0, 1, 0x41]), now: Self.start)
        let failed = machine.fail(
            TunnelFailure(code: .unexpectedServerError, label: .dialFailed, cause: "connection refused"))
        #expect(failed == .write(code: .unexpectedServerError, reason: "connection refused", closeChannelAfter: false))
        // The dial that was already under way completes after the tunnel ended.
        let dialed = machine.dialSucceeded()
        #expect(dialed == .closeLocal)
        _ = machine.closeReceived(code: 1011, reason: "")
        let summary = machine.channelInactive()
        #expect(summary?.cause == .dialFailed)
    }

    @Test func theRelayLostEndsItOnceWithThatCause() {
        var machine = Self.pumpingSender()
        let first = machine.channelInactive()
        #expect(first?.causeLabel == "relay_lost")
        #expect(machine.channelInactive() == nil, "the summary is reported once")
        #expect(machine.state == .closed)
    }

    @Test func readsWaitWhileTheLocalSideIsFull() {
        var machine = Self.pumpingSender()
        let full = machine.readRequested(localWritable: false)
        #expect(!full)
        let resumed = machine.resumeReading()
        #expect(resumed)
        let free = machine.readRequested(localWritable: true)
        #expect(free)
        let nothingWithheld = machine.resumeReading()
        #expect(!nothingWithheld)
    }

    @Test func noPongAfterThisSidesClose() {
        var machine = Self.pumpingSender()
        #expect(machine.answersPings)
        _ = machine.localInputEnded()
        #expect(!machine.answersPings)
    }
}

extension TunnelStateMachine.PayloadAction {
    var reply: [UInt8]? {
        guard case .fail(let reply, _) = self else { return nil }
        return reply
    }

    var failureLabel: TunnelCloseCause? {
        guard case .fail(_, let failure) = self else { return nil }
        return failure.label
    }
}
