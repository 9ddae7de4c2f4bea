import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A throwaway public-key infrastructure for TLS tests, generated at run time with the `openssl`
/// command-line tool into a fresh temporary directory: a test CA, an unrelated second CA, a
/// server certificate for `localhost`, `127.0.0.1` and `::1`, an expired one, one for the wrong
/// host name, two that name hosts in ways a client must not accept, and a client certificate
/// for mutual TLS.
///
/// Every key is EC P-256 and unencrypted; every file is PEM, at an absolute path (redis-server
/// changes to its `--dir` before it reads them). Generation runs ten `openssl` processes and
/// takes a fraction of a second. ``remove()`` deletes the directory; so does the signal cleanup
/// of ``TerminationCleanup``.
///
/// ```swift
/// let certificates = try await TLSCertificates.generate()
/// defer { certificates.remove() }
/// let server = try await RedisServer.start(tls: .init(certificates: certificates))
/// ```
public final class TLSCertificates: Sendable, CustomStringConvertible {
    /// A certificate and its private key, both PEM files.
    public struct Files: Sendable, Hashable {
        /// The certificate (PEM).
        public let certificate: String
        /// The unencrypted private key (PEM, PKCS #8).
        public let key: String
    }

    /// The directory holding every file.
    public let directory: String
    /// The test CA (self-signed, `CN=Redlock Test CA`) that signed every certificate below.
    /// Its ``Files/certificate`` is the trust anchor for clients and for `--tls-ca-cert-file`.
    public let ca: Files
    /// A second self-signed CA that signed nothing here: trusting it instead of ``ca`` makes
    /// every certificate below fail verification ("wrong CA" tests).
    public let otherCA: Files
    /// The server certificate: signed by ``ca``, valid for 10 years from now, subjectAltName
    /// `DNS:localhost, IP:127.0.0.1, IP:::1`, extended key usage serverAuth.
    public let server: Files
    /// Like ``server`` (same names, same CA), but valid only from 2020-01-01 to 2020-01-02 UTC:
    /// expired.
    public let expiredServer: Files
    /// Signed by ``ca`` and valid, but for `DNS:wrong.example` only (`CN=wrong.example`): fails
    /// host name verification for `localhost` and `127.0.0.1`.
    public let wrongHostServer: Files
    /// Signed by ``ca`` and valid, `CN=localhost` and no subjectAltName: names its host only in
    /// the common name, which clients must not read (RFC 6125 section 6.4.4).
    public let commonNameOnlyServer: Files
    /// Signed by ``ca`` and valid, `CN=lookalike` and subjectAltName `DNS:w*.example.com` (a
    /// partial wildcard, which OpenSSL matches by default: `wrong.example.com`), `DNS:127.1` and `DNS:2130706433` (IPv4 addresses in forms the resolver reads,
    /// written as DNS names), and `IP:177.0.0.1` (what `0177.0.0.1` is in decimal, where the
    /// resolver reads octal: 127.0.0.1): names no client of 127.0.0.1 should match.
    public let lookalikeServer: Files
    /// A client certificate (`CN=redlock-test-client`, extended key usage clientAuth) signed by
    /// ``ca``, for servers started with client authentication.
    public let client: Files
    /// ``client``'s key encrypted with the passphrase `redlock-test` (PEM, PKCS #8, AES-256):
    /// a key a client cannot load without asking for a passphrase.
    public let encryptedClientKey: String

    /// `TLS certificates in DIRECTORY`.
    public var description: String { "TLS certificates in \(directory)" }

    private init(directory: String) {
        self.directory = directory
        func files(_ name: String) -> Files { Files(certificate: "\(directory)/\(name).pem", key: "\(directory)/\(name).key") }
        ca = files("ca")
        otherCA = files("other-ca")
        server = files("server")
        expiredServer = files("expired-server")
        wrongHostServer = files("wrong-host-server")
        commonNameOnlyServer = files("common-name-only-server")
        lookalikeServer = files("lookalike-server")
        client = files("client")
        encryptedClientKey = "\(directory)/client-encrypted.key"
    }

    /// Generates a fresh set of certificates in a new temporary directory.
    ///
    /// - Parameter timeout: The limit for the whole generation; an `openssl` process still
    ///   running then is killed. The default is 20 s (it normally takes well under one).
    /// - Throws: ``TLSCertificatesError``: `openssl` is missing, failed, or took too long. The
    ///   directory is removed then.
    public static func generate(timeout: Duration = .seconds(20)) async throws -> TLSCertificates {
        let openssl = try findOpenSSL()
        let base = FileManager.default.temporaryDirectory.path
        let directory = "\(base)/swift-redlock-tls-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        RedisServer.liveDirectories.withLock { _ = $0.insert(directory) }
        let certificates = TLSCertificates(directory: directory)
        do {
            try await certificates.populate(openssl: openssl, deadline: .now.advanced(by: timeout))
        } catch {
            certificates.remove()
            throw error
        }
        return certificates
    }

    /// Deletes the directory and every file in it. Safe to call more than once.
    public func remove() {
        try? FileManager.default.removeItem(atPath: directory)
        RedisServer.liveDirectories.withLock { _ = $0.remove(directory) }
    }

    // MARK: - Generation

    private var configurationPath: String { directory + "/openssl.cnf" }
    /// `openssl ca` bookkeeping (its database, serial and a copy of what it issued).
    private var caStateDirectory: String { directory + "/ca-state" }

    /// The extension sections for `req -x509 -extensions NAME` and `ca -extensions NAME`, and a
    /// minimal `openssl ca` setup. `-config` is passed everywhere, so the system's openssl.cnf
    /// (whose `v3_ca` defaults would make every certificate a CA) and `$OPENSSL_CONF` play no part.
    private var configuration: String {
        let leaf = """
            basicConstraints = critical,CA:FALSE
            keyUsage = critical,digitalSignature
            subjectKeyIdentifier = hash
            authorityKeyIdentifier = keyid
            """
        return """
            [ req ]
            distinguished_name = req_dn
            prompt = no
            [ req_dn ]
            CN = unused

            [ ca_ext ]
            basicConstraints = critical,CA:TRUE
            keyUsage = critical,keyCertSign,cRLSign
            subjectKeyIdentifier = hash

            [ server_ext ]
            \(leaf)
            extendedKeyUsage = serverAuth
            subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1

            [ wrong_host_ext ]
            \(leaf)
            extendedKeyUsage = serverAuth
            subjectAltName = DNS:wrong.example

            [ common_name_only_ext ]
            \(leaf)
            extendedKeyUsage = serverAuth

            [ lookalike_ext ]
            \(leaf)
            extendedKeyUsage = serverAuth
            subjectAltName = DNS:w*.example.com,DNS:127.1,DNS:2130706433,IP:177.0.0.1

            [ client_ext ]
            \(leaf)
            extendedKeyUsage = clientAuth

            [ ca ]
            default_ca = test_ca
            [ test_ca ]
            database = \(caStateDirectory)/index.txt
            new_certs_dir = \(caStateDirectory)
            serial = \(caStateDirectory)/serial
            default_md = sha256
            policy = policy_any
            copy_extensions = none
            unique_subject = no
            [ policy_any ]
            commonName = supplied

            """
    }

    private func populate(openssl: String, deadline: ContinuousClock.Instant) async throws {
        try configuration.write(toFile: configurationPath, atomically: false, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: caStateDirectory, withIntermediateDirectories: false)
        try "".write(toFile: "\(caStateDirectory)/index.txt", atomically: false, encoding: .utf8)
        try "1000\n".write(toFile: "\(caStateDirectory)/serial", atomically: false, encoding: .utf8)

        let run = { (arguments: [String]) in
            try await Self.runOpenSSL(openssl, arguments, deadline: deadline)
        }
        // A new unencrypted P-256 key written to `keyout`, with the request or certificate.
        func newKey(_ keyout: String) -> [String] {
            ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc", "-keyout", keyout]
        }
        let config = ["-config", configurationPath]
        let tenYears = ["-days", "3650", "-sha256"]

        // The two CAs: self-signed.
        for (files, name) in [(ca, "Redlock Test CA"), (otherCA, "Redlock Unrelated Test CA")] {
            try await run(
                ["req", "-x509"] + config + ["-extensions", "ca_ext"] + newKey(files.key)
                    + ["-subj", "/CN=\(name)"] + tenYears + ["-out", files.certificate]
            )
        }
        // Leaves signed by the CA in one step (`req -CA`, new in OpenSSL 3.0).
        let leaves: [(Files, String, String)] = [
            (server, "localhost", "server_ext"),
            (wrongHostServer, "wrong.example", "wrong_host_ext"),
            (commonNameOnlyServer, "localhost", "common_name_only_ext"),
            (lookalikeServer, "lookalike", "lookalike_ext"),
            (client, "redlock-test-client", "client_ext"),
        ]
        for (files, commonName, extensions) in leaves {
            try await run(
                ["req"] + config + ["-extensions", extensions] + newKey(files.key)
                    + ["-subj", "/CN=\(commonName)", "-CA", ca.certificate, "-CAkey", ca.key]
                    + tenYears + ["-out", files.certificate]
            )
        }
        try await run(
            ["pkey", "-in", client.key, "-aes256", "-passout", "pass:redlock-test", "-out", encryptedClientKey]
        )
        // The expired one: neither `req -x509` nor `x509 -req` can set a start date in 3.0
        // (`x509 -not_before` is 3.4+), `openssl ca -startdate/-enddate` can.
        let request = "\(caStateDirectory)/expired-server.csr"
        try await run(
            ["req", "-new"] + config + newKey(expiredServer.key) + ["-subj", "/CN=localhost", "-out", request]
        )
        try await run(
            ["ca", "-batch", "-notext"] + config
                + ["-cert", ca.certificate, "-keyfile", ca.key, "-in", request, "-out", expiredServer.certificate]
                + ["-extensions", "server_ext", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z"]
        )
    }

    /// Runs `openssl arguments` to completion (killing it at `deadline`); throws unless it
    /// exits with status 0.
    private static func runOpenSSL(_ openssl: String, _ arguments: [String], deadline: ContinuousClock.Instant) async throws {
        let command = ([openssl] + arguments).joined(separator: " ")
        // Spawned like the servers (stdin /dev/null, output on a pipe, no inherited
        // descriptors); the marker never appears, only the exit matters.
        let process: ServerProcess
        do {
            process = try ServerProcess.spawn(executable: openssl, arguments: arguments, readyMarker: "\u{1}never\u{1}")
        } catch {
            throw TLSCertificatesError.commandFailed(command: command, status: "not started", output: "\(error)")
        }
        // The timer kills the process itself: waiting for an exit cannot be cancelled, so the
        // group returns only once the process is gone.
        let timedOut: Bool = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await process.waitUntilExited()
                return false
            }
            group.addTask {
                do {
                    try await Task.sleep(until: deadline, clock: .continuous)
                } catch {
                    return false  // cancelled: the process exited in time
                }
                process.signal(SIGKILL)
                return true
            }
            var timedOut = false
            for await killed in group {
                timedOut = timedOut || killed
                group.cancelAll()
            }
            return timedOut
        }
        guard !timedOut else {
            throw TLSCertificatesError.timedOut(command: command, output: process.log)
        }
        let status = process.exitStatus ?? 0
        let signal = status & 0x7f
        let code = (status >> 8) & 0xff
        guard signal == 0, code == 0 else {
            throw TLSCertificatesError.commandFailed(
                command: command, status: signal == 0 ? "exit \(code)" : "signal \(signal)", output: process.log
            )
        }
    }

    /// `$OPENSSL` if set, else `openssl` on `PATH` or in the usual places.
    private static func findOpenSSL() throws -> String {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["OPENSSL"], !explicit.isEmpty {
            guard FileManager.default.isExecutableFile(atPath: explicit) else {
                throw TLSCertificatesError.opensslNotFound(searched: [explicit])
            }
            return explicit
        }
        var candidates = (environment["PATH"] ?? "").split(separator: ":").map { "\($0)/openssl" }
        candidates += ["/usr/bin/openssl", "/usr/local/bin/openssl", "/opt/homebrew/bin/openssl"]
        for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        throw TLSCertificatesError.opensslNotFound(searched: candidates)
    }
}

/// Why ``TLSCertificates/generate(timeout:)`` failed.
public enum TLSCertificatesError: Error, Sendable, CustomStringConvertible {
    /// No `openssl` executable was found on `PATH` (or at `$OPENSSL`).
    case opensslNotFound(searched: [String])
    /// An `openssl` command could not be started or did not exit with status 0.
    case commandFailed(command: String, status: String, output: String)
    /// An `openssl` command was still running at the deadline and was killed.
    case timedOut(command: String, output: String)

    /// The cause, the command and the tail of its output.
    public var description: String {
        switch self {
        case let .opensslNotFound(searched):
            return "openssl not found (looked in \(searched.joined(separator: ", "))); install it, e.g. apt-get install -y openssl, or set OPENSSL"
        case let .commandFailed(command, status, output):
            return "\(command) failed (\(status)):\n\(output.suffix(2_000))"
        case let .timedOut(command, output):
            return "\(command) did not finish in time and was killed:\n\(output.suffix(2_000))"
        }
    }
}
