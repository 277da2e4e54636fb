/// The runtime information of a hybrid connection (`GetRuntimeInformationAsync` in the .NET SDK, reference
/// §1.1): `GET {path}?api-version=2016-07` with `X-PROCESS-AT: ServiceBus` and a token, answered with an Atom
/// entry holding a `HybridConnectionDescription`; a path that is no entity gets an Atom feed instead, which
/// the SDK reports as "endpoint not found".
public struct RuntimeInformation: Equatable, Sendable {
    public static let apiVersion = "2016-07"
    public static let entryContentType = "application/atom+xml;type=entry;charset=utf-8"
    public static let feedContentType = "application/atom+xml;type=feed;charset=utf-8"
    static let managementNamespace = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"

    public var path: String
    public var listenerCount: Int
    public var requiresClientAuthorization: Bool

    public init(path: String, listenerCount: Int, requiresClientAuthorization: Bool) {
        self.path = path
        self.listenerCount = listenerCount
        self.requiresClientAuthorization = requiresClientAuthorization
    }

    /// Whether a request is a runtime-information query rather than an HTTP-mode request for a listener.
    public static func isQuery(method: String, target: RequestTarget, processAtHeader: String?) -> Bool {
        method == "GET" && processAtHeader?.lowercased() == "servicebus"
            && target.query.contains { $0.rawName.lowercased() == "api-version" }
    }

    /// The Atom entry; element order follows the SDK's data contract, which its deserializer requires.
    public func entry(id: String, updated: String) -> String {
        let name = Self.escaped(path)
        return """
            <entry xmlns="http://www.w3.org/2005/Atom"><id>\(Self.escaped(id))</id><title type="text">\(name)</title>\
            <updated>\(updated)</updated><content type="application/xml"><HybridConnectionDescription \
            xmlns="\(Self.managementNamespace)" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\
            <RequiresClientAuthorization>\(requiresClientAuthorization)</RequiresClientAuthorization>\
            <ListenerCount>\(listenerCount)</ListenerCount></HybridConnectionDescription></content></entry>
            """
    }

    /// The empty feed Azure answers for a path that is no entity.
    public static func emptyFeed(id: String, updated: String) -> String {
        """
        <feed xmlns="http://www.w3.org/2005/Atom"><title type="text">Publicly Listed Services</title>\
        <id>\(escaped(id))</id><updated>\(updated)</updated></feed>
        """
    }

    /// Reads an entry back (what the agents' probe needs); nil when the body is not one.
    public init?(entry body: String, path: String) {
        guard body.contains("<HybridConnectionDescription"), let count = Self.element("ListenerCount", in: body)
        else { return nil }
        self.path = path
        listenerCount = Int(count) ?? 0
        requiresClientAuthorization = Self.element("RequiresClientAuthorization", in: body) != "false"
    }

    static func element(_ name: String, in body: String) -> String? {
        guard let open = body.firstRange(of: "<\(name)>"),
            let close = body[open.upperBound...].firstRange(of: "</\(name)>")
        else { return nil }
        return String(body[open.upperBound..<close.lowerBound])
    }

    static func escaped(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(character)
            }
        }
        return out
    }
}
