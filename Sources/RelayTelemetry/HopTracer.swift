import Logging
import NIOConcurrencyHelpers
import Tracing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A span that has ended: what the log line and, later, the exporter carry.
public struct FinishedSpan: Sendable, Equatable {
    public var name: String
    public var kind: String
    public var context: TraceContext
    public var parentSpanID: String?
    /// Nanoseconds since the Unix epoch.
    public var start: UInt64
    public var end: UInt64
    public var attributes: [String: String]
    public var isError: Bool
    public var statusMessage: String?

    public var durationSeconds: Double { Double(end &- start) / 1e9 }

    public init(
        name: String, kind: String, context: TraceContext, parentSpanID: String?, start: UInt64, end: UInt64,
        attributes: [String: String], isError: Bool, statusMessage: String?
    ) {
        self.name = name
        self.kind = kind
        self.context = context
        self.parentSpanID = parentSpanID
        self.start = start
        self.end = end
        self.attributes = attributes
        self.isError = isError
        self.statusMessage = statusMessage
    }
}

private enum TraceContextKey: InstrumentationContextKey {
    typealias Value = TraceContext
    static let nameOverride: String? = "hyrelay.trace-context"
}

extension InstrumentationContext {
    /// The W3C context of the current span, if any.
    public var traceContext: TraceContext? {
        get { self[TraceContextKey.self] }
        set { self[TraceContextKey.self] = newValue }
    }
}

/// HybridRelay's own `Tracer`: W3C trace context in and out, every finished span handed to `sink`
/// (by default one log line each, with trace and span ids and the hop's attributes).
public final class HopTracer: Tracer, Sendable {
    public typealias Span = HopSpan

    private let sink: @Sendable (FinishedSpan) -> Void

    public init(sink: @escaping @Sendable (FinishedSpan) -> Void) {
        self.sink = sink
    }

    /// Logs each finished span through `logger` at info level, message `span`, and hands it to `also`
    /// (the exporter) when given. The logger's level is read once: `--log-level` is fixed for a process.
    public convenience init(logger: Logger, also: (@Sendable (FinishedSpan) -> Void)? = nil) {
        // Below info the span line is never written: its metadata is not even built.
        let logs = logger.logLevel <= .info
        self.init { span in
            also?(span)
            guard logs else { return }
            var metadata: Logger.Metadata = [
                "span_name": "\(span.name)", "trace_id": "\(span.context.traceID)", "span_id": "\(span.context.spanID)",
                "duration_ms": "\((span.durationSeconds * 1000 * 1000).rounded() / 1000)", "span_kind": "\(span.kind)",
                "status": "\(span.isError ? "error" : "ok")",
            ]
            if let parent = span.parentSpanID { metadata["parent_span_id"] = "\(parent)" }
            if let message = span.statusMessage { metadata["status_message"] = "\(message)" }
            for (key, value) in span.attributes { metadata[key] = "\(value)" }
            logger.info("span", metadata: metadata)
        }
    }

    public func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> InstrumentationContext, ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
    ) -> HopSpan {
        let parent = context().traceContext
        let own = parent?.child() ?? .newTrace()
        return HopSpan(
            name: operationName, kind: kind, context: own, parentSpanID: parent?.spanID,
            start: instant().nanosecondsSinceEpoch, sink: sink)
    }

    public func forceFlush() {}

    public func inject<Carrier, Inject>(
        _ context: InstrumentationContext, into carrier: inout Carrier, using injector: Inject
    ) where Inject: Injector, Carrier == Inject.Carrier {
        guard let trace = context.traceContext else { return }
        injector.inject(trace.traceparent, forKey: "traceparent", into: &carrier)
    }

    public func extract<Carrier, Extract>(
        _ carrier: Carrier, into context: inout InstrumentationContext, using extractor: Extract
    ) where Extract: Extractor, Carrier == Extract.Carrier {
        guard let header = extractor.extract(key: "traceparent", from: carrier),
            let trace = TraceContext(traceparent: header)
        else { return }
        context.traceContext = trace
    }

    /// A context whose current span is `traceparent`, or the top level when it is missing or malformed.
    public func context(traceparent: String?) -> InstrumentationContext {
        var context = InstrumentationContext.topLevel
        if let traceparent, let trace = TraceContext(traceparent: traceparent) { context.traceContext = trace }
        return context
    }
}

/// One hop's span. Mutable state sits behind a mutex: spans may be touched from any thread.
public final class HopSpan: Tracing.Span, Sendable {
    private struct State {
        var name: String
        var attributes: SpanAttributes = [:]
        var isError = false
        var statusMessage: String?
        var ended = false
    }

    private let state: NIOLockedValueBox<State>
    private let trace: TraceContext
    private let parentSpanID: String?
    private let kind: SpanKind
    private let start: UInt64
    private let sink: @Sendable (FinishedSpan) -> Void
    public let context: InstrumentationContext

    init(
        name: String, kind: SpanKind, context trace: TraceContext, parentSpanID: String?, start: UInt64,
        sink: @escaping @Sendable (FinishedSpan) -> Void
    ) {
        state = NIOLockedValueBox(State(name: name))
        self.trace = trace
        self.parentSpanID = parentSpanID
        self.kind = kind
        self.start = start
        self.sink = sink
        var context = InstrumentationContext.topLevel
        context.traceContext = trace
        self.context = context
    }

    /// This span's W3C context, to send on as `traceparent`.
    public var traceContext: TraceContext { trace }

    public var operationName: String {
        get { state.withLockedValue { $0.name } }
        set { state.withLockedValue { $0.name = newValue } }
    }

    public var attributes: SpanAttributes {
        get { state.withLockedValue { $0.attributes } }
        set { state.withLockedValue { $0.attributes = newValue } }
    }

    public var isRecording: Bool { state.withLockedValue { !$0.ended } }

    public func setStatus(_ status: SpanStatus) {
        state.withLockedValue { state in
            state.isError = status.code == .error
            state.statusMessage = status.message
        }
    }

    public func addEvent(_ event: SpanEvent) {}

    public func recordError<Instant: TracerInstant>(
        _ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant
    ) {
        setStatus(SpanStatus(code: .error, message: ErrorWords.describe(error)))
    }

    public func addLink(_ link: SpanLink) {}

    /// An attribute as plain text (`SpanAttribute`'s own description wraps it in its case name).
    static func text(_ value: SpanAttribute) -> String {
        switch value {
        case .string(let text): return text
        case .int64(let number): return String(number)
        case .int32(let number): return String(number)
        case .double(let number): return String(number)
        case .bool(let flag): return String(flag)
        case .stringConvertible(let value): return value.description
        case .stringArray(let values): return values.joined(separator: ",")
        case .int64Array(let values): return values.map(String.init).joined(separator: ",")
        case .int32Array(let values): return values.map(String.init).joined(separator: ",")
        case .doubleArray(let values): return values.map { String($0) }.joined(separator: ",")
        case .boolArray(let values): return values.map(String.init).joined(separator: ",")
        case .stringConvertibleArray(let values): return values.map(\.description).joined(separator: ",")
        default: return "\(value)"
        }
    }

    public func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        let finished: FinishedSpan? = state.withLockedValue { state in
            guard !state.ended else { return nil }
            state.ended = true
            var attributes: [String: String] = [:]
            state.attributes.forEach { key, value in attributes[key] = Self.text(value) }
            return FinishedSpan(
                name: state.name, kind: "\(kind)", context: trace, parentSpanID: parentSpanID, start: start,
                end: instant().nanosecondsSinceEpoch, attributes: attributes, isError: state.isError,
                statusMessage: state.statusMessage)
        }
        if let finished { sink(finished) }
    }
}
