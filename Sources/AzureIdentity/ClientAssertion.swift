import Crypto
import CryptoExtras
import RelayTelemetry

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The signed JWT an application proves itself with instead of a secret (Entra's certificate credential):
/// RS256 with the certificate's private key, the certificate named by its SHA-1 thumbprint (`x5t`).
public enum ClientAssertion {
    /// Reads the PEM file (certificate and private key, as `AZURE_CLIENT_CERTIFICATE_PATH` holds them) and signs.
    public static func make(
        pemFile: String, clientID: String, audience: String, now: Double, id: String
    ) throws(IdentityError) -> String {
        let text: String
        do {
            text = try String(contentsOfFile: pemFile, encoding: .utf8)
        } catch {
            throw .credential("cannot read AZURE_CLIENT_CERTIFICATE_PATH '\(pemFile)': \(ErrorWords.describe(error))")
        }
        guard let certificate = pemBlock("CERTIFICATE", in: text).flatMap({ Data(base64Encoded: $0) }) else {
            throw .credential("'\(pemFile)' holds no PEM certificate")
        }
        let key: _RSA.Signing.PrivateKey
        do {
            guard let block = pemBlock("PRIVATE KEY", in: text) ?? pemBlock("RSA PRIVATE KEY", in: text) else {
                throw IdentityError.credential("'\(pemFile)' holds no PEM private key")
            }
            let label = text.contains("BEGIN RSA PRIVATE KEY") ? "RSA PRIVATE KEY" : "PRIVATE KEY"
            key = try _RSA.Signing.PrivateKey(
                pemRepresentation: "-----BEGIN \(label)-----\n\(block)\n-----END \(label)-----\n")
        } catch let error as IdentityError {
            throw error
        } catch {
            throw .credential("the private key in '\(pemFile)' is not an RSA key: \(ErrorWords.describe(error))")
        }
        return sign(
            key: key, certificateDER: Array(certificate), clientID: clientID, audience: audience, now: now, id: id)
    }

    public static func sign(
        key: _RSA.Signing.PrivateKey, certificateDER: [UInt8], clientID: String, audience: String, now: Double,
        id: String
    ) -> String {
        let thumbprint = Base64URL.encode(Insecure.SHA1.hash(data: certificateDER))
        let header = JSONValue.object([
            "alg": .string("RS256"), "typ": .string("JWT"), "x5t": .string(thumbprint),
        ])
        let issued = Int64(now)
        let claims = JSONValue.object([
            "aud": .string(audience), "iss": .string(clientID), "sub": .string(clientID), "jti": .string(id),
            "nbf": .int(issued), "iat": .int(issued), "exp": .int(issued + 600),
        ])
        let input = Base64URL.encode(Array(header.text.utf8)) + "." + Base64URL.encode(Array(claims.text.utf8))
        // Signing with a valid RSA key and SHA-256 does not fail in BoringSSL.
        let signature = try! key.signature(for: SHA256.hash(data: Array(input.utf8)), padding: .insecurePKCS1v1_5)
        return input + "." + Base64URL.encode(signature.rawRepresentation)
    }

    /// The base64 body of the first `-----BEGIN label-----` block, without line breaks.
    static func pemBlock(_ label: String, in text: String) -> String? {
        guard let begin = text.firstRange(of: "-----BEGIN \(label)-----"),
            let end = text[begin.upperBound...].firstRange(of: "-----END \(label)-----")
        else { return nil }
        return text[begin.upperBound..<end.lowerBound].filter { !$0.isWhitespace }
    }
}
