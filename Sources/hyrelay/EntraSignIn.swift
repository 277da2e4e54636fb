import ArgumentParser
import AzureIdentity
import NIOConcurrencyHelpers
import RelayAgent

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The agents' Entra ID sign-in: one token for the whole process, made on first need and shared by every relay
/// entry that has no SAS credential, as azbridge's `DefaultAzureCredential` is. It lives as long as the process.
enum EntraSignIn {
    /// Variables that say Entra is meant even without `--entra`.
    static let environmentMarkers = [
        "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT",
    ]

    private static let shared = NIOLockedValueBox<(token: RefreshingToken, http: AzureHTTP)?>(nil)

    /// Gives `access` the process's Entra sign-in when it has no SAS credential, sends a token at all, and Entra is
    /// asked for (`flag`) or the environment names a credential.
    static func attach(to access: inout RelayAccess, flag: Bool, environment: [String: String]) throws {
        let wanted = flag || environmentMarkers.contains { !(environment[$0] ?? "").isEmpty }
        guard wanted, access.lacksSharedAccessCredential, !access.noAuthentication else { return }
        access.entra = try token(environment: environment)
    }

    /// The process's token, created (not yet fetched) on first use.
    static func token(environment: [String: String]) throws -> RefreshingToken {
        let source: CredentialSource
        do {
            source = try CredentialSource.fromEnvironment(environment)
        } catch {
            throw ValidationError("Entra ID sign-in: \(error.description)")
        }
        return shared.withLockedValue { shared in
            if let existing = shared { return existing.token }
            let http = AzureHTTP(requestTimeoutSeconds: 30)
            let token = RefreshingToken(
                credential: TokenCredential(source: source, scope: RefreshingToken.relayScope, http: http))
            shared = (token, http)
            return token
        }
    }

    /// Signs in before the agent starts, so a wrong secret or tenant is a start-up error, not a refused relay.
    static func start() async throws {
        guard let token = shared.withLockedValue({ $0?.token }), token.token == nil else { return }
        do {
            try await token.start()
        } catch {
            throw ValidationError("Entra ID sign-in (\(token.credential.source.summary)) failed: \(error.description)")
        }
    }
}
