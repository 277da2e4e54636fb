import NIOCore
import NIOSSL
import RelayTelemetry

/// Why TLS material could not be loaded.
public struct TLSSetupError: Error, CustomStringConvertible {
    public var description: String
}

/// TLS contexts for the relay (server) and the agents and tests (clients). TLS 1.2 is the floor.
public enum TLSSetup {
    /// A server context from a PEM certificate chain and a PEM private key.
    public static func serverContext(certificatePath: String, keyPath: String) throws -> NIOSSLContext {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
        } catch {
            throw TLSSetupError(description: "cannot read certificate file '\(certificatePath)': \(words(error))")
        }
        guard !chain.isEmpty else { throw TLSSetupError(description: "no certificate in '\(certificatePath)'") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw TLSSetupError(description: "cannot read private key file '\(keyPath)': \(words(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["http/1.1"]
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSSetupError(description: "certificate and key do not form a TLS identity: \(words(error))")
        }
    }

    /// A client context that trusts the system roots, or only `caFile` when one is given.
    public static func clientContext(caFile: String?) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["http/1.1"]
        if let caFile {
            do {
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
            } catch {
                throw TLSSetupError(description: "cannot read CA file '\(caFile)': \(words(error))")
            }
        }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSSetupError(description: "cannot create TLS client context: \(words(error))")
        }
    }

    /// BoringSSL's and NIOSSL's failures in words: a missing or unreadable file, or one that holds no PEM of
    /// the kind asked for.
    static func words(_ error: any Error) -> String {
        switch error {
        case let error as IOError: return ErrorWords.errnoWords(error.errnoCode)
        case NIOSSLError.failedToLoadCertificate: return "it is not a PEM certificate (-----BEGIN CERTIFICATE-----)"
        case NIOSSLError.failedToLoadPrivateKey: return "it is not a PEM private key (-----BEGIN PRIVATE KEY-----)"
        case let error as BoringSSLError:
            if case .sslError(let reasons) = error, reasons.contains(where: { "\($0)".contains("No such file") }) {
                return "no such file"
            }
            return "the file does not hold what was expected (PEM)"
        default: return ErrorWords.describe(error)
        }
    }
}
