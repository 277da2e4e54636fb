import AzureIdentity
import HybridConnections

/// `entra:` in the relay's configuration: the tenant whose access tokens the relay accepts besides SAS, and
/// which principals get which rights, as Azure's roles grant them (Azure Relay Owner: Manage; Listener: Listen;
/// Sender: Send).
public struct EntraConfiguration: Codable, Equatable, Sendable {
    /// e.g. `https://login.microsoftonline.com/` (plain `http` only on loopback).
    public var authority: String
    public var tenant: String
    public var principals: [EntraPrincipalRule]
    /// How often the signing keys are fetched again (besides on an unknown key id).
    public var keysRefreshSeconds: Double?

    public init(
        authority: String = "https://login.microsoftonline.com/", tenant: String,
        principals: [EntraPrincipalRule] = [], keysRefreshSeconds: Double? = nil
    ) {
        self.authority = authority
        self.tenant = tenant
        self.principals = principals
        self.keysRefreshSeconds = keysRefreshSeconds
    }

    private enum CodingKeys: String, CodingKey {
        case authority, tenant, principals, keysRefreshSeconds
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        authority =
            try container.decodeIfPresent(String.self, forKey: .authority) ?? "https://login.microsoftonline.com/"
        tenant = try container.decode(String.self, forKey: .tenant)
        principals = try container.decodeIfPresent([EntraPrincipalRule].self, forKey: .principals) ?? []
        keysRefreshSeconds = try container.decodeIfPresent(Double.self, forKey: .keysRefreshSeconds)
    }

    /// The rights `principal` holds on `entity`: the union of every rule naming one of its ids (object id,
    /// application id, a group or an app role) for that entity or for all.
    public func rights(of principal: EntraPrincipal, entity: String) -> Set<AccessRight> {
        let identities = Set(principal.identities.map { $0.lowercased() })
        var rights = Set<AccessRight>()
        for rule in principals where identities.contains(rule.id.lowercased()) {
            if let ruleEntity = rule.entity, ruleEntity.lowercased() != entity.lowercased() { continue }
            rights.formUnion(rule.rights)
        }
        return rights
    }

    func problems() -> [String] {
        var problems: [String] = []
        if tenant.isEmpty || !tenant.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-.".contains($0)) }) {
            problems.append("entra.tenant '\(tenant)' is not a tenant id or domain")
        }
        do {
            try AzureHTTP.checkURL(authority)
        } catch {
            problems.append("entra.authority: \(error.description)")
        }
        for rule in principals where rule.id.isEmpty || rule.rights.isEmpty {
            problems.append("entra principal '\(rule.id)' needs an id and at least one right")
        }
        if let keysRefreshSeconds, keysRefreshSeconds < 1 {
            problems.append("entra.keysRefreshSeconds must be at least 1")
        }
        return problems
    }
}

/// One principal's rights: `id` is an object id (`oid`), an application id (`appid`/`azp`), a group id or an
/// app role; `entity` limits the rule to one hybrid connection.
public struct EntraPrincipalRule: Codable, Equatable, Sendable {
    public var id: String
    public var rights: Set<AccessRight>
    public var entity: String?

    public init(id: String, rights: Set<AccessRight>, entity: String? = nil) {
        self.id = id
        self.rights = rights
        self.entity = entity
    }

    /// `OBJECT_ID=RIGHTS[@ENTITY]` with RIGHTS like `Listen,Send` (the `--entra-principal` flag).
    public init(parsing text: String) throws(ConfigurationError) {
        guard let equals = text.firstIndex(of: "=") else {
            throw ConfigurationError(description: "--entra-principal '\(text)': expected OBJECT_ID=RIGHTS[@ENTITY]")
        }
        id = String(text[..<equals])
        var rest = text[text.index(after: equals)...]
        entity = nil
        if let at = rest.firstIndex(of: "@") {
            entity = String(rest[rest.index(after: at)...])
            rest = rest[..<at]
        }
        var rights = Set<AccessRight>()
        for name in rest.split(separator: ",") {
            guard let right = AccessRight.allCases.first(where: { $0.rawValue.lowercased() == name.lowercased() })
            else {
                throw ConfigurationError(
                    description: "--entra-principal '\(text)': '\(name)' is not Listen, Send or Manage")
            }
            rights.insert(right)
        }
        guard !id.isEmpty, !rights.isEmpty, entity?.isEmpty != true else {
            throw ConfigurationError(description: "--entra-principal '\(text)': expected OBJECT_ID=RIGHTS[@ENTITY]")
        }
        self.rights = rights
    }
}
