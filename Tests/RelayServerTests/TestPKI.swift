import Foundation

/// A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command line.
struct TestPKI {
    let directory: String
    var caCertificate: String { directory + "/ca.pem" }
    var serverCertificate: String { directory + "/server.pem" }
    var serverKey: String { directory + "/server.key" }

    struct CommandFailed: Error, CustomStringConvertible { var description: String }

    static func make() throws -> TestPKI {
        let directory = NSTemporaryDirectory() + "hyrelay-pki-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let pki = TestPKI(directory: directory)
        let extensions = directory + "/server.ext"
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n".write(
            toFile: extensions, atomically: true, encoding: .utf8)
        try run([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=HybridRelay Test CA", "-keyout", directory + "/ca.key", "-out", pki.caCertificate,
        ])
        try run([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", pki.serverKey, "-out", directory + "/server.csr",
        ])
        try run([
            "x509", "-req", "-in", directory + "/server.csr", "-CA", pki.caCertificate, "-CAkey", directory + "/ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", extensions, "-out", pki.serverCertificate,
        ])
        return pki
    }

    private static func run(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw CommandFailed(description: "openssl \(arguments.first ?? ""): \(text)")
        }
    }
}
