/// The azbridge connection preamble (reference §3.4): the sender names a logical port in the first
/// bytes of the stream, `[1, 0, mode, len] + name`, and the listener answers `[1, 0, mode]`, or
/// `[0, 0, code]` for a refusal, before any payload flows.
public enum Preamble {
    public enum Mode: UInt8, Sendable {
        case stream = 0
        case datagram = 1
    }

    public static let majorVersion: UInt8 = 1
    public static let minorVersion: UInt8 = 0

    /// The 4-byte header and the name; azbridge sends them as two WebSocket messages.
    public static func request(portName: String, mode: Mode = .stream) -> (header: [UInt8], name: [UInt8]) {
        let name = Array(portName.utf8.prefix(255))
        return ([majorVersion, minorVersion, mode.rawValue, UInt8(name.count)], name)
    }

    public static func accepted(mode: Mode = .stream) -> [UInt8] { [majorVersion, minorVersion, mode.rawValue] }

    public static let unsupportedVersion: [UInt8] = [0, 0, 0]
}

/// Reads the preamble request from the first bytes of a stream, however they were split into messages.
public struct PreambleRequestParser: Sendable {
    public enum Result: Equatable, Sendable {
        case needMore
        /// The port name, and whatever payload followed the preamble in the same bytes.
        case complete(portName: String, mode: Preamble.Mode, leftover: [UInt8])
        case unsupportedVersion(major: UInt8)
        case invalid(String)
    }

    private var buffered: [UInt8] = []

    public init() {}

    public mutating func feed(_ bytes: some Sequence<UInt8>) -> Result {
        buffered.append(contentsOf: bytes)
        guard buffered.count >= 4 else { return .needMore }
        guard buffered[0] == Preamble.majorVersion else { return .unsupportedVersion(major: buffered[0]) }
        guard let mode = Preamble.Mode(rawValue: buffered[2]) else { return .invalid("unknown mode \(buffered[2])") }
        let length = Int(buffered[3])
        guard buffered.count >= 4 + length else { return .needMore }
        guard let name = String(validating: buffered[4..<(4 + length)], as: UTF8.self) else {
            return .invalid("the port name is not UTF-8")
        }
        return .complete(portName: name, mode: mode, leftover: Array(buffered[(4 + length)...]))
    }
}

/// Reads the listener's 3-byte preamble answer.
public struct PreambleResponseParser: Sendable {
    public enum Result: Equatable, Sendable {
        case needMore
        case accepted(leftover: [UInt8])
        case refused(code: UInt8, reason: String)
    }

    private var buffered: [UInt8] = []
    /// The mode the request asked for: the only one an acceptance may name.
    private let mode: Preamble.Mode

    public init(expecting mode: Preamble.Mode = .stream) {
        self.mode = mode
    }

    public mutating func feed(_ bytes: some Sequence<UInt8>) -> Result {
        buffered.append(contentsOf: bytes)
        guard buffered.count >= 3 else { return .needMore }
        let leftover = Array(buffered[3...])
        switch (buffered[0], buffered[1], buffered[2]) {
        case (Preamble.majorVersion, _, mode.rawValue):
            return .accepted(leftover: leftover)
        case (0, 0, 0):
            return .refused(code: 0, reason: "the listener does not support preamble version \(Preamble.majorVersion)")
        case (0, 0, 1):
            return .refused(code: 1, reason: "the listener's port is a datagram (UDP) port")
        case (0, 0, 255):
            return .refused(code: 255, reason: "the listener's port is a stream port but datagram mode was asked")
        case (let a, let b, let c):
            return .refused(code: c, reason: "unexpected preamble answer [\(a), \(b), \(c)]")
        }
    }
}
