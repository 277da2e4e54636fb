import NIOCore
import NIOPosix
import RelayTelemetry

#if canImport(Glibc)
    import Glibc
#endif

/// The file of a Unix socket the client binds: a stale one (left by a process that died) is replaced, a live
/// one or anything that is not a socket never is; the mode is set after binding; the file goes at close.
enum UnixSocketFile {
    struct Problem: Error, CustomStringConvertible {
        var description: String
    }

    /// Makes `path` free to bind: removes a socket file nothing listens on.
    static func prepare(_ path: String, group: any EventLoopGroup) async throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if info.st_mode & S_IFMT == S_IFDIR {
            throw Problem(
                description:
                    "cannot listen on unix:\(path): it is a directory (a socket binding is /socket/path/port_name)")
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw Problem(description: "cannot listen on unix:\(path): the file exists and is not a socket")
        }
        do {
            let probe = try await ClientBootstrap(group: group).connect(unixDomainSocketPath: path).get()
            try? await probe.close()
        } catch let error as IOError where error.errnoCode == ECONNREFUSED {
            // Nobody accepts on it: a leftover.
            unlink(path)
            return
        } catch {
            throw Problem(description: "cannot listen on unix:\(path): \(ErrorWords.describe(error))")
        }
        throw Problem(description: "cannot listen on unix:\(path): another process listens on it")
    }

    /// Sets the socket file's permission bits (who may connect).
    static func setMode(_ path: String, mode: mode_t) throws {
        guard chmod(path, mode) == 0 else {
            throw Problem(description: "cannot set mode \(String(mode, radix: 8)) on unix:\(path): errno \(errno)")
        }
    }

    /// Removes the socket file, if it is still a socket (a path reused for something else is left alone).
    static func remove(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else { return }
        unlink(path)
    }
}
