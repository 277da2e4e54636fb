import RelayIO

enum WebSocketURLProbe {
    static func url(_ text: String) -> WebSocketURL {
        let parsed = WebSocketURL(text)!
        return WebSocketURL(secure: parsed.secure, host: parsed.host, port: parsed.port, target: "")
    }
}
