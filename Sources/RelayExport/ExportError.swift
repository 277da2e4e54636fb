import AzureIdentity

public enum ExportError: Error, Equatable, CustomStringConvertible {
    /// A URL, credential or token failure, as the identity module reports it.
    case identity(IdentityError)
    case configuration(String)
    /// Another process holds the spool directory.
    case spoolInUse(String)

    public var description: String {
        switch self {
        case .identity(let error): return error.description
        case .configuration(let cause): return cause
        case .spoolInUse(let directory): return "spool directory '\(directory)' is in use by another process"
        }
    }
}

extension AzureHTTP {
    /// `checkURL` for the exporter's own configuration errors.
    static func checkExportURL(_ url: String) throws(ExportError) {
        do {
            try checkURL(url)
        } catch {
            throw .identity(error)
        }
    }
}
