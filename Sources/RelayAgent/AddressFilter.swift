#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Source-address allow-list for client ports: `10.0.0.0/8`, `192.168.1.7`, `::1`, `fd00::/8`.
public struct AddressFilter: Sendable, Equatable {
    struct Network: Sendable, Equatable {
        var bytes: [UInt8]
        var prefixLength: Int

        func contains(_ address: [UInt8]) -> Bool {
            guard address.count == bytes.count else { return false }
            var remaining = prefixLength
            for index in bytes.indices where remaining > 0 {
                let bits = min(8, remaining)
                let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
                if address[index] & mask != bytes[index] & mask { return false }
                remaining -= bits
            }
            return true
        }
    }

    private var networks: [Network]

    public init(_ specs: [String]) throws(ForwardSpecError) {
        networks = []
        for spec in specs {
            let parts = spec.split(separator: "/", maxSplits: 1)
            guard let first = parts.first, let bytes = Self.parse(String(first)) else {
                throw ForwardSpecError("'\(spec)' is not an IP address or CIDR network")
            }
            var prefix = bytes.count * 8
            if parts.count == 2 {
                guard let length = Int(parts[1]), (0...bytes.count * 8).contains(length) else {
                    throw ForwardSpecError("'\(spec)': the prefix length must be 0-\(bytes.count * 8)")
                }
                prefix = length
            }
            networks.append(Network(bytes: bytes, prefixLength: prefix))
        }
    }

    /// True when `address` (an IP literal) is in one of the networks. An IPv4-mapped IPv6 address is
    /// checked as IPv4.
    public func allows(_ address: String) -> Bool {
        guard var bytes = Self.parse(address) else { return false }
        if bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
            bytes = Array(bytes[12...])
        }
        return networks.contains { $0.contains(bytes) }
    }

    /// The address's bytes (4 or 16), or nil.
    static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }
}
