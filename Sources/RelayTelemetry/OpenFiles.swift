#if canImport(Glibc)
    import Glibc
#endif

/// This process's open-file limit (`RLIMIT_NOFILE`).
public enum OpenFiles {
    public static var softLimit: Int { Int(clamping: min(current().soft, UInt64(Int32.max))) }

    /// The relay holds a descriptor per connection; the usual soft limit of 1024 would make it refuse long
    /// before the machine is busy, so it takes the hard limit the administrator allows (as nginx and Go do).
    @discardableResult
    public static func raiseToHardLimit() -> (soft: UInt64, hard: UInt64) {
        let (soft, hard) = current()
        var raised = rlimit(rlim_cur: rlim_t(hard), rlim_max: rlim_t(hard))
        guard soft < hard, setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 else { return (soft, hard) }
        return (hard, hard)
    }

    static func current() -> (soft: UInt64, hard: UInt64) {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return (1024, 1024) }
        return (UInt64(limits.rlim_cur), UInt64(limits.rlim_max))
    }
}
