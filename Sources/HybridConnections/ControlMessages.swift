#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The sender's address as the relay saw it; `address` is an IP literal.
public struct RemoteEndpoint: Codable, Equatable, Sendable {
    public var address: String
    public var port: Int

    public init(address: String, port: Int) {
        self.address = address
        self.port = port
    }
}

/// Relay → listener: a sender waits at `address` (reference §1.4).
public struct AcceptCommand: Codable, Equatable, Sendable {
    public var address: String
    public var id: String
    public var connectHeaders: [String: String]
    public var remoteEndpoint: RemoteEndpoint?

    public init(address: String, id: String, connectHeaders: [String: String], remoteEndpoint: RemoteEndpoint?) {
        self.address = address
        self.id = id
        self.connectHeaders = connectHeaders
        self.remoteEndpoint = remoteEndpoint
    }
}

extension AcceptCommand {
    /// The bytes of this command as an `accept` message, from above, without encoding it (as
    /// `RequestCommand.encodedSizeBound`).
    public var encodedSizeBound: Int {
        var size = 96 + JSONText.encodedLength(address) + JSONText.encodedLength(id)
        if let remoteEndpoint { size += 48 + JSONText.encodedLength(remoteEndpoint.address) }
        for (name, value) in connectHeaders {
            size += JSONText.encodedLength(name) + JSONText.encodedLength(value) + 2
        }
        return size
    }

    /// `{"accept":{…}}` as `ControlMessage.encoded()` writes it, keys sorted.
    var encodedMessage: String {
        var out = #"{"accept":{"address":"#
        out.reserveCapacity(256 + address.utf8.count)
        JSONText.appendString(address, to: &out)
        out += #","connectHeaders":{"#
        for (index, key) in connectHeaders.keys.sorted().enumerated() {
            if index > 0 { out += "," }
            JSONText.appendString(key, to: &out)
            out += ":"
            JSONText.appendString(connectHeaders[key]!, to: &out)
        }
        out += #"},"id":"#
        JSONText.appendString(id, to: &out)
        if let remoteEndpoint {
            out += #","remoteEndpoint":{"address":"#
            JSONText.appendString(remoteEndpoint.address, to: &out)
            out += #","port":\#(remoteEndpoint.port)}"#
        }
        out += "}}"
        return out
    }
}

/// Relay → listener: an HTTP request (reference §1.7). With `method` and `body` absent it is the
/// rendezvous-only form, and the listener fetches the request at `address`.
public struct RequestCommand: Codable, Equatable, Sendable {
    public var address: String
    public var id: String
    public var requestTarget: String?
    public var method: String?
    public var remoteEndpoint: RemoteEndpoint?
    public var requestHeaders: [String: String]?
    public var body: Bool?

    public init(
        address: String,
        id: String,
        requestTarget: String? = nil,
        method: String? = nil,
        remoteEndpoint: RemoteEndpoint? = nil,
        requestHeaders: [String: String]? = nil,
        body: Bool? = nil
    ) {
        self.address = address
        self.id = id
        self.requestTarget = requestTarget
        self.method = method
        self.remoteEndpoint = remoteEndpoint
        self.requestHeaders = requestHeaders
        self.body = body
    }

    /// The form that tells the listener to open the rendezvous and read the request there.
    public var rendezvousOnly: RequestCommand { RequestCommand(address: address, id: id) }

    /// The bytes of this command as a `request` message, from above: its strings as JSON escapes them, plus
    /// the envelope, names and punctuation. Without encoding it.
    public var encodedSizeBound: Int {
        var size = 160 + JSONText.encodedLength(address) + JSONText.encodedLength(id)
        size += requestTarget.map(JSONText.encodedLength) ?? 0
        size += method.map(JSONText.encodedLength) ?? 0
        if let remoteEndpoint { size += 48 + JSONText.encodedLength(remoteEndpoint.address) }
        for (name, value) in requestHeaders ?? [:] {
            size += JSONText.encodedLength(name) + JSONText.encodedLength(value) + 2
        }
        return size
    }
}

/// Listener → relay: the answer to a `request`. `statusCode` arrives as a number from the SDKs and as
/// a string from some clients (and the docs), so both decode.
public struct ResponseCommand: Codable, Equatable, Sendable {
    public var requestId: String
    public var statusCode: Int
    public var statusDescription: String?
    public var responseHeaders: [String: String]?
    public var body: Bool?

    public init(
        requestId: String,
        statusCode: Int,
        statusDescription: String? = nil,
        responseHeaders: [String: String]? = nil,
        body: Bool? = nil
    ) {
        self.requestId = requestId
        self.statusCode = statusCode
        self.statusDescription = statusDescription
        self.responseHeaders = responseHeaders
        self.body = body
    }

    private enum CodingKeys: String, CodingKey {
        case requestId, statusCode, statusDescription, responseHeaders, body
    }

    /// The bytes of this command as a `response` message, from above (as `RequestCommand.encodedSizeBound`).
    public var encodedSizeBound: Int {
        var size = 128 + JSONText.encodedLength(requestId) + (statusDescription.map(JSONText.encodedLength) ?? 0)
        for (name, value) in responseHeaders ?? [:] {
            size += JSONText.encodedLength(name) + JSONText.encodedLength(value) + 2
        }
        return size
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        requestId = try container.decode(String.self, forKey: .requestId)
        if let number = try? container.decode(Int.self, forKey: .statusCode) {
            statusCode = number
        } else {
            let text = try container.decode(String.self, forKey: .statusCode)
            guard let number = Int(text.trimmingWhitespace()) else {
                throw DecodingError.dataCorruptedError(
                    forKey: .statusCode, in: container, debugDescription: "statusCode '\(text)' is not a number")
            }
            statusCode = number
        }
        guard (100...599).contains(statusCode) else {
            throw DecodingError.dataCorruptedError(
                forKey: .statusCode, in: container, debugDescription: "statusCode \(statusCode) is out of range")
        }
        statusDescription = try container.decodeIfPresent(String.self, forKey: .statusDescription)
        responseHeaders = try container.decodeIfPresent([String: String].self, forKey: .responseHeaders)
        body = try container.decodeIfPresent(Bool.self, forKey: .body)
    }
}

/// Listener → relay: a fresh token for the control channel (reference §1.8).
public struct RenewTokenCommand: Codable, Equatable, Sendable {
    public var token: String

    public init(token: String) { self.token = token }
}

/// Why a control-channel text message was refused.
public enum ControlMessageError: Error, Equatable, Sendable, CustomStringConvertible {
    case notJSON(String)
    case unknownCommand([String])
    case invalid(command: String, reason: String)

    public var description: String {
        switch self {
        case .notJSON(let reason): return "The control message is not a JSON object: \(reason)"
        case .unknownCommand(let keys):
            return "The control message has no known command (keys: \(keys.joined(separator: ", ")))"
        case .invalid(let command, let reason): return "The '\(command)' message is invalid: \(reason)"
        }
    }
}

/// One JSON message of the listener control channel: an object with a single key naming the command.
public enum ControlMessage: Equatable, Sendable {
    case accept(AcceptCommand)
    case request(RequestCommand)
    case response(ResponseCommand)
    case renewToken(RenewTokenCommand)

    private enum Key: String, CodingKey, CaseIterable {
        case accept, request, response, renewToken
    }

    private struct Envelope: Codable {
        var accept: AcceptCommand?
        var request: RequestCommand?
        var response: ResponseCommand?
        var renewToken: RenewTokenCommand?
    }

    public func encoded() -> String {
        // The relay sends an accept for every tunnel: written directly, it costs a tenth of the allocations
        // JSONEncoder makes (same JSON: sorted keys, slashes unescaped).
        if case .accept(let command) = self { return command.encodedMessage }
        var envelope = Envelope()
        switch self {
        case .accept(let command): envelope.accept = command
        case .request(let command): envelope.request = command
        case .response(let command): envelope.response = command
        case .renewToken(let command): envelope.renewToken = command
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        // Encoding these plain structs cannot fail.
        let data = try! encoder.encode(envelope)
        return String(decoding: data, as: UTF8.self)
    }

    public init(decoding text: some Collection<UInt8>) throws(ControlMessageError) {
        let data = Data(text)
        // One pass for a well-formed message with one command (every accept an edge gets); the slower passes
        // below only say what is wrong with one that is not.
        if let envelope = try? JSONDecoder().decode(Envelope.self, from: data) {
            let commands: [ControlMessage] = [
                envelope.accept.map(ControlMessage.accept), envelope.request.map(ControlMessage.request),
                envelope.response.map(ControlMessage.response), envelope.renewToken.map(ControlMessage.renewToken),
            ].compactMap { $0 }
            if commands.count == 1 {
                self = commands[0]
                return
            }
        }
        let object: [String: AnyDecodable]
        do {
            object = try JSONDecoder().decode([String: AnyDecodable].self, from: data)
        } catch {
            throw .notJSON(Self.reason(error))
        }
        guard let key = Key.allCases.first(where: { object[$0.rawValue] != nil }) else {
            throw .unknownCommand(object.keys.sorted())
        }
        let envelope: Envelope
        do {
            envelope = try JSONDecoder().decode(Envelope.self, from: data)
        } catch {
            throw .invalid(command: key.rawValue, reason: Self.reason(error))
        }
        switch key {
        case .accept: if let command = envelope.accept { self = .accept(command); return }
        case .request: if let command = envelope.request { self = .request(command); return }
        case .response: if let command = envelope.response { self = .response(command); return }
        case .renewToken: if let command = envelope.renewToken { self = .renewToken(command); return }
        }
        throw .invalid(command: key.rawValue, reason: "the value is null")
    }

    private static func reason(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "wrong type at '\(context.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted(let context): return context.debugDescription
        default: return "\(error)"
        }
    }
}

/// Accepts any JSON value; used only to learn which top-level keys a message has.
private struct AnyDecodable: Decodable {
    init(from decoder: any Decoder) throws {}
}
