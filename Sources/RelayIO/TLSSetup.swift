import NIOCore
import NIOSSL

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
            throw TLSSetupError(description: "cannot read certificate file '\(certificatePath)': \(error)")
        }
        guard !chain.isEmpty else { throw TLSSetupError(description: "no certificate in '\(certificatePath)'") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw TLSSetupError(description: "cannot read private key file '\(keyPath)': \(error)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["http/1.1"]
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSSetupError(description: "certificate and key do not form a TLS identity: \(error)")
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
                throw TLSSetupError(description: "cannot read CA file '\(caFile)': \(error)")
            }
        }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSSetupError(description: "cannot create TLS client context: \(error)")
        }
    }
}
