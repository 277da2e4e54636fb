import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// A listening socket that could not be bound, named by its address.
public struct BindFailure: Error, CustomStringConvertible {
    public var description: String

    public init(_ error: any Error, host: String, port: Int, what: String) {
        let reason: String
        switch (error as? IOError)?.errnoCode {
        case EADDRINUSE: reason = "the address is in use by another process (ss -ltnp shows which)"
        case EACCES: reason = "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
        case EADDRNOTAVAIL: reason = "no interface of this machine has that address"
        default: reason = ErrorWords.describe(error)
        }
        let address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        description = "cannot listen on \(address) for \(what): \(reason)"
    }

    public init(_ error: any Error, path: String, what: String) {
        let reason: String
        switch (error as? IOError)?.errnoCode {
        case EADDRINUSE: reason = "the path is in use"
        case EACCES: reason = "permission denied (the directory must be writable by this user)"
        case ENOENT: reason = "the directory does not exist"
        default: reason = ErrorWords.describe(error)
        }
        description = "cannot listen on unix:\(path) for \(what): \(reason)"
    }
}
