import NIOCore
import Testing

@testable import RelayTelemetry

/// Errors as an operator reads them: the context kept, NIO's signatures, errnos and case names gone.
@Suite struct ErrorWordsTests {
    @Test(arguments: [
        ("connect(descriptor:addr:size:): Connection refused (errno: 111)", "connection refused"),
        (
            "cannot listen: accept4(descriptor:addr:len:flags:): Too many open files) (errno: 24)",
            "cannot listen: too many open files"
        ),
        ("peer [IPv4]127.0.0.1/127.0.0.1:40127 left", "peer 127.0.0.1:40127 left"),
        ("HTTPClientError.remoteConnectionClosed", "remote connection closed"),
        ("plain words stay", "plain words stay"),
    ])
    func textIsRewrittenInPlace(text: String, words: String) {
        #expect(ErrorWords.rewritten(text) == words)
    }

    @Test func knownErrorsAreSaidPlainly() {
        #expect(ErrorWords.describe(IOError(errnoCode: 11, reason: "connect")) == "resource temporarily unavailable")
        #expect(ErrorWords.describe(ChannelError.connectTimeout(.seconds(1))) == "no answer in time")
        #expect(ErrorWords.describe(ChannelError.ioOnClosedChannel) == "the connection is closed")
    }
}
