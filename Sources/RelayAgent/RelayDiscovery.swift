import NIOCore
import NIOPosix
import RelayIO

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Relay discovery for edges: a relay host name that resolves to several addresses (the relay pods behind a
/// Kubernetes headless service) becomes one listener per address, so whichever relay a sender reaches finds a
/// listener there. Re-resolved on an interval; listeners follow the addresses as they come and go.
public enum RelayDiscovery {
    /// Resolves a host name to its addresses (IPv4 and IPv6 literals), nil when it does not resolve.
    public typealias Resolver = @Sendable (_ host: String) async -> [String]?

    /// The listeners for `forwards`: an entry whose relay host is a name with several addresses becomes one entry
    /// per address (dialled by address, the name kept for TLS and `Host`; IPv4 addresses only when it has some).
    /// IP literals, names with one address, names that do not resolve right now (the listener then retries by
    /// name) and relays reached through a proxy stay as they are.
    public static func expand(
        _ forwards: [(RemoteForward, RelayAccess)], resolve: Resolver
    ) async -> [(RemoteForward, RelayAccess)] {
        var resolved: [String: [String]] = [:]
        var result: [(RemoteForward, RelayAccess)] = []
        for (forward, access) in forwards {
            let host = access.base.host
            guard access.proxy == nil, access.address == nil, !isAddressLiteral(host) else {
                result.append((forward, access))
                continue
            }
            if resolved[host] == nil { resolved[host] = preferred((await resolve(host)) ?? []) }
            let addresses = resolved[host] ?? []
            guard addresses.count > 1 else {
                result.append((forward, access))
                continue
            }
            for address in addresses {
                var pinned = access
                pinned.address = address
                result.append((forward, pinned))
            }
        }
        return result
    }

    /// The addresses to listen on, sorted so the set compares stably: IPv4 ones when there are any, as a name
    /// such as `localhost` often has `::1` beside `127.0.0.1` while a relay listens on one of them.
    static func preferred(_ addresses: [String]) -> [String] {
        let unique = Array(Set(addresses)).sorted()
        let v4 = unique.filter { !$0.contains(":") }
        return v4.isEmpty ? unique : v4
    }

    static func isAddressLiteral(_ host: String) -> Bool {
        host.contains(":") || (!host.isEmpty && host.allSatisfy { $0.isNumber || $0 == "." })
    }

    /// The system resolver (`getaddrinfo`, so `/etc/hosts` and DNS as the machine has them), run on NIO's thread
    /// pool: it blocks.
    public static let systemResolver: Resolver = { host in
        try? await NIOThreadPool.singleton.runIfActive { addresses(of: host) }
    }

    private static func addresses(of host: String) -> [String]? {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return nil }
        defer { freeaddrinfo(first) }
        var found: [String] = []
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            if let address = current.pointee.ai_addr,
                let socketAddress = try? SocketAddress(address),
                let ip = socketAddress.ipAddress
            {
                found.append(ip)
            }
            entry = current.pointee.ai_next
        }
        return found
    }
}

extension SocketAddress {
    /// A `sockaddr` from `getaddrinfo`, copied.
    fileprivate init(_ address: UnsafeMutablePointer<sockaddr>) throws {
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            self = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                SocketAddress($0.pointee, host: "")
            }
        case AF_INET6:
            self = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                SocketAddress($0.pointee, host: "")
            }
        default:
            throw SocketAddressError.unsupported
        }
    }
}
