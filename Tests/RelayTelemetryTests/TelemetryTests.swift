import Logging
import Synchronization
import Testing
import Tracing

@testable import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

@Suite struct TraceContextTests {
    @Test func parsesAndFormatsTraceparent() throws {
        let context = try #require(TraceContext(traceparent: "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"))
        #expect(context.traceID == "0af7651916cd43dd8448eb211c80319c")
        #expect(context.spanID == "b7ad6b7169203331" && context.sampled)
        #expect(context.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        let child = context.child()
        #expect(child.traceID == context.traceID && child.spanID != context.spanID && child.spanID.count == 16)
        #expect(
            TraceContext(traceparent: "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-extra")?.sampled == false
        )
    }

    @Test(arguments: [
        "", "00", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333z-01",
    ])
    func refusesMalformedTraceparent(header: String) {
        #expect(TraceContext(traceparent: header) == nil)
    }

    @Test func newTracesAreRandomAndValid() {
        let a = TraceContext.newTrace()
        let b = TraceContext.newTrace()
        #expect(a.traceID != b.traceID && a.traceID.count == 32)
        #expect(TraceContext(traceparent: a.traceparent) == a)
    }
}

@Suite struct HopTracerTests {
    final class Sink: Sendable {
        let spans = Mutex<[FinishedSpan]>([])
    }

    struct DictionaryInjector: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
    }

    struct DictionaryExtractor: Extractor {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }

    @Test func childSpansContinueTheTraceAndPropagate() throws {
        let sink = Sink()
        let tracer = HopTracer { span in sink.spans.withLock { $0.append(span) } }
        let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        var context = InstrumentationContext.topLevel
        tracer.extract(["traceparent": incoming], into: &context, using: DictionaryExtractor())
        let span = tracer.startSpan("relay.rendezvous", context: context, ofKind: .server)
        span.attributes["entity"] = "hc"
        span.attributes["status"] = 101
        var carrier: [String: String] = [:]
        tracer.inject(span.context, into: &carrier, using: DictionaryInjector())
        #expect(carrier["traceparent"] == span.traceContext.traceparent)
        span.setStatus(SpanStatus(code: .error, message: "boom"))
        span.end()
        span.end()
        let finished = sink.spans.withLock { $0 }
        #expect(finished.count == 1, "a span ends once")
        let only = try #require(finished.first)
        #expect(only.context.traceID == "0af7651916cd43dd8448eb211c80319c")
        #expect(only.parentSpanID == "b7ad6b7169203331")
        #expect(only.attributes == ["entity": "hc", "status": "101"])
        #expect(only.isError && only.statusMessage == "boom" && only.end >= only.start)

        let root = tracer.startSpan("client.accept", context: .topLevel, ofKind: .server)
        #expect(root.traceContext.traceID != only.context.traceID)
        #expect(tracer.context(traceparent: "garbage").traceContext == nil)
    }
}

@Suite struct JSONLogHandlerTests {
    @Test func rendersOneEscapedObjectPerLineAndRedactsSecrets() throws {
        let line = JSONLogHandler.render(
            time: Date(timeIntervalSince1970: 1_745_492_895.25), level: .warning, role: "relay", label: "hyrelay.relay",
            message: "refused \"x\"\nnext",
            metadata: ["token": "SharedAccessSignature sr=a&sig=b", "trace_id": "abc", "n": "1"])
        #expect(line.hasSuffix("}\n") && line.filter { $0 == "\n" }.count == 1)
        let object = try #require(try JSONSerializationLike.parse(line))
        #expect(object["time"] == "2025-04-24T11:08:15.250Z")
        #expect(object["level"] == "warning" && object["role"] == "relay")
        #expect(object["message"] == "refused \"x\"\nnext")
        #expect(object["token"] == "[redacted]" && object["trace_id"] == "abc")
        #expect(!line.contains("sig=b"))
    }
}

/// Decodes a flat JSON object of strings.
enum JSONSerializationLike {
    static func parse(_ line: String) throws -> [String: String]? {
        try JSONDecoder().decode([String: String].self, from: Data(line.utf8))
    }
}

@Suite struct OpenMetricsTests {
    @Test func countersLoseTotalInFamilyNamesAndBucketsGetExemplars() {
        let registry = MetricRegistry()
        registry.counter(name: "hyrelay_dials_total", help: "Edge dials.", labels: [("outcome", "connected")])
            .increment(by: Int64(3))
        let histogram = registry.histogram(
            name: "hyrelay_dial_duration_seconds", help: "Dials.", labels: [], bounds: [0.001])
        histogram.record(0.0004, exemplar: Exemplar(traceID: "abc", value: 0.0004, timestamp: 1_700_000_000.5))
        histogram.record(2)
        histogram.record(3)
        let rendered = PrometheusExposition.openMetrics(registry.snapshot())
        #expect(rendered.contains("# HELP hyrelay_dials Edge dials.\n# TYPE hyrelay_dials counter\n"))
        #expect(rendered.contains("hyrelay_dials_total{outcome=\"connected\"} 3\n"))
        #expect(rendered.contains("_bucket{le=\"0.001\"} 1 # {trace_id=\"abc\"} 0.0004 1700000000.5\n"))
        #expect(rendered.contains("_bucket{le=\"+Inf\"} 3\n"))
        #expect(rendered.contains("hyrelay_dial_duration_seconds_sum 5.0004\n"))
        #expect(rendered.hasSuffix("# EOF\n"))
        let text = PrometheusExposition.text(registry.snapshot())
        #expect(text.contains("# TYPE hyrelay_dials_total counter\n"))
        #expect(!text.contains("trace_id"), "the 0.0.4 format has no exemplars")
    }

    @Test func labelValuesAndHelpAreEscapedAndSpecialValuesSpelledAsPrometheusReadsThem() {
        let registry = MetricRegistry()
        registry.gauge(name: "g", help: "a \\ b\nc", labels: [("entity", "x\"y\\z\nw")]).set(to: .infinity)
        registry.gauge(name: "h", help: "", labels: []).set(to: -.infinity)
        registry.counter(name: "c_total", help: "", labels: []).increment(by: 1.5)
        registry.counter(name: "c_total", help: "", labels: []).increment(by: Int64(2))
        let text = PrometheusExposition.text(registry.snapshot())
        #expect(text.contains("# HELP g a \\\\ b\\nc\n"))
        #expect(text.contains("g{entity=\"x\\\"y\\\\z\\nw\"} +Inf\n"))
        #expect(text.contains("h -Inf\n"))
        #expect(text.contains("c_total 3.5\n"), "integer and fractional steps add up")
    }

    @Test func alertingSeriesExistAtZeroBeforeTheFirstEvent() {
        let metrics = RelayMetrics()
        metrics.registerRelaySeries(entities: ["hc1"], authFailureReasons: ["expired", "invalid_signature"])
        let text = metrics.exposition()
        #expect(text.contains(#"hyrelay_auth_failures_total{role="relay",reason="expired"} 0"#))
        #expect(text.contains(#"hyrelay_auth_failures_total{role="relay",reason="invalid_signature"} 0"#))
        #expect(text.contains(#"hyrelay_rendezvous_total{entity="hc1",outcome="no_listener",status="404"} 0"#))
        #expect(text.contains(#"hyrelay_listeners{role="relay",entity="hc1"} 0"#))
        // The first refusal is then an increase of one on the same series, not a new series born at 1.
        metrics.rendezvous(entity: "hc1", outcome: "no_listener", status: 404, seconds: 0.001)
        let after = metrics.exposition()
        #expect(after.contains(#"hyrelay_rendezvous_total{entity="hc1",outcome="no_listener",status="404"} 1"#))
    }

    @Test func exemplarsLandInTheBucketOfTheirValue() throws {
        let metrics = RelayMetrics()
        metrics.dial(outcome: .connected, seconds: 0.003, traceID: "feed")
        let rendered = metrics.openMetricsExposition()
        let line = try #require(rendered.split(separator: "\n").first { $0.contains("trace_id=\"feed\"") })
        #expect(line.hasPrefix("hyrelay_dial_duration_seconds_bucket{le=\"0.005\"} 1 # {trace_id=\"feed\"} 0.003 "))
    }
}

@Suite struct LogThrottleTests {
    @Test func oneLinePerIntervalWithTheCountOfTheRest() {
        var throttle = LogThrottle(interval: 1)
        #expect(throttle.shouldLog("a", now: 10) == 0)
        #expect(throttle.shouldLog("a", now: 10.2) == nil)
        #expect(throttle.shouldLog("a", now: 10.9) == nil)
        #expect(throttle.shouldLog("b", now: 10.9) == 0, "keys are independent")
        #expect(throttle.shouldLog("a", now: 11.0) == 2)
        #expect(throttle.shouldLog("a", now: 12.5) == 0)
    }
}

@Suite struct TextLogHandlerTests {
    @Test func aLineCannotBeSplitOrCarryASecret() {
        let line = TextLogHandler.render(
            time: Date(timeIntervalSince1970: 0), level: .warning, label: "hyrelay.relay",
            message: "refused: unknown key 'k\nFORGED line'",
            metadata: ["entity": "x\r\nFORGED", "token": "SharedAccessSignature sig=abc", "peer": "127.0.0.1"])
        #expect(line.split(separator: "\n").count == 1 && line.hasSuffix("\n"))
        #expect(
            line
                == "1970-01-01T00:00:00.000Z warning hyrelay.relay: entity=x\\r\\nFORGED peer=127.0.0.1 token=[redacted] refused: unknown key 'k\\nFORGED line'\n"
        )
    }
}

/// Peers choose close codes; the relay's tunnel metric must not take one series per code they choose.
@Suite struct RelayCloseCauseTests {
    @Test func namedCodesKeepTheirLabelAndApplicationCodesShareOne() {
        #expect(RelayCloseCause.label(closeCode: 1000) == "close_1000")
        #expect(RelayCloseCause.label(closeCode: 1005) == "close_1005")
        #expect(RelayCloseCause.label(closeCode: nil) == "connection_lost")
        let application = Set((3000...4999).map { RelayCloseCause.label(closeCode: $0) })
        #expect(application == ["close_application"])
    }
}
