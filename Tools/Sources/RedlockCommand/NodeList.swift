import ArgumentParser
import Foundation
import Redlock

/// Parses a comma-separated node list: `host:port`, `redis://[user:pass@]host:port[/db]`,
/// `rediss://…` (TLS) or `unix:///path`.
///
/// TLS nodes take their files from the environment, as cron jobs and init containers pass
/// secrets: `REDLOCK_TLS_CA_CERT` (PEM CA bundle; default the system's trust store),
/// `REDLOCK_TLS_CERT` and `REDLOCK_TLS_KEY` (client certificate and key for mutual TLS) and
/// `REDLOCK_TLS_SERVER_NAME` (the name to send and verify instead of the host).
func parseNodeList(_ text: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> [RedisConnectionConfiguration] {
    // A comma may be part of a URL's credentials (RFC 3986 allows it there): a piece with an `@`
    // and no scheme (no address alone: a host has no `@`) continues a URL with a scheme and no
    // `@` yet.
    func hasScheme(_ text: String) -> Bool {
        guard let colon = text.firstIndex(of: ":") else { return false }
        let scheme = text[..<colon]
        return !scheme.isEmpty && scheme.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+-.".contains($0)) }
            && text[text.index(after: colon)...].hasPrefix("/")
    }
    var pieces: [String] = []
    for piece in text.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
        if let last = pieces.last, last.contains("://"), !last.contains("@"), piece.contains("@"), !hasScheme(piece) {
            pieces[pieces.count - 1] = last + "," + piece
        } else {
            pieces.append(piece)
        }
    }
    let items = pieces.filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
    guard !items.isEmpty else { throw ValidationError("the node list is empty") }
    // An empty place (a template's missing value, say) is not skipped: the lock would run on
    // fewer nodes than meant, with a smaller quorum.
    guard items.count == pieces.count else {
        // Each address as errors quote them: a URL may hold a password.
        let shown = pieces.map { RedisConnectionConfiguration.quotable($0) }.joined(separator: ",")
        throw ValidationError("the node list has an empty place (two commas in a row, or one at an end): \"\(shown)\"")
    }
    // White space around a value is not part of it (a line end read from a file: `$(cat
    // name)`, a mounted secret); a variable that is empty or only white space is not set.
    func setting(_ name: String) -> String? {
        environment[name].flatMap { value in
            let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines)
            return trimmed.isEmpty ? nil : trimmed
        }
    }
    let fileVariables = ["REDLOCK_TLS_CA_CERT", "REDLOCK_TLS_CERT", "REDLOCK_TLS_KEY"]
    let known = fileVariables + ["REDLOCK_TLS_SERVER_NAME"]
    // A misspelt TLS variable would leave its setting out without a word (a CA file not
    // trusted, no client certificate; or nodes in clear that the rule below would stop).
    if let unknown = environment.keys.sorted().first(where: { $0.hasPrefix("REDLOCK_TLS_") && !known.contains($0) && setting($0) != nil }) {
        throw ValidationError("\(unknown) is not a variable redlock reads: TLS settings come from \(known.joined(separator: ", "))")
    }
    let fileSettings = fileVariables.filter { setting($0) != nil }
    let tlsSettings = known.filter { setting($0) != nil }
    var configurations = try items.map { item in
        do {
            return try RedisConnectionConfiguration(parsing: item)
        } catch {
            throw ValidationError("\(error)")
        }
    }
    // The TLS settings are the same for every rediss:// node: checked once, before any node is
    // asked. What cannot serve is this machine's configuration, not the node's: a usage error
    // (64), rather than every node failing to connect (69).
    if let first = configurations.first(where: { $0.tls != nil })?.endpoint {
        for name in fileVariables {
            guard let path = setting(name) else { continue }
            if let problem = unreadable(path) { throw ValidationError("\(name)=\(path): \(problem)") }
        }
        // Each error names the variables at fault: the server name's alone, or the files'.
        let serverName = setting("REDLOCK_TLS_SERVER_NAME")
        if let serverName {
            do throws(RedisError) {
                try RedisTLSConfiguration(serverName: serverName, verifiesCertificate: false).loadFiles(for: first)
            } catch {
                throw ValidationError("REDLOCK_TLS_SERVER_NAME: \(error.message)")
            }
        }
        let tls = RedisTLSConfiguration(
            trustedCertificatesFile: setting("REDLOCK_TLS_CA_CERT"), certificateFile: setting("REDLOCK_TLS_CERT"),
            privateKeyFile: setting("REDLOCK_TLS_KEY"), serverName: serverName
        )
        // Files that can be read but do not load: no PEM in them, a key that does not match
        // the certificate, a key without one, an encrypted key.
        do throws(RedisError) {
            try tls.loadFiles(for: first)
        } catch {
            throw ValidationError("\(fileSettings.isEmpty ? "TLS" : fileSettings.joined(separator: ", ")): \(error.message)")
        }
        for index in configurations.indices where configurations[index].tls != nil {
            configurations[index].tls = tls
        }
    }
    // A node in clear among TLS ones, or TLS settings no node uses, is a `redis://` written for
    // `rediss://` (or a plain `host:port`): its password and the lock's values would cross the
    // network unencrypted, and nothing else would tell. A Unix socket does not leave the machine.
    let plain = configurations.indices.filter { configurations[$0].tls == nil && configurations[$0].endpoint.socketPath == nil }
    if let first = plain.first {
        let why: String? =
            if let tls = configurations.firstIndex(where: { $0.tls != nil }) {
                "node \(tls) (\(configurations[tls].endpoint)) uses TLS"
            } else if !tlsSettings.isEmpty {
                "\(tlsSettings.joined(separator: ", ")) \(tlsSettings.count == 1 ? "is" : "are") set"
            } else {
                nil
            }
        if let why {
            let others = plain.count > 1 ? " (and \(plain.count == 2 ? "node" : "nodes") \(plain.dropFirst().map(String.init).joined(separator: ", ")))" : ""
            let unset = configurations.allSatisfy { $0.tls == nil } ? ", or unset \(tlsSettings.joined(separator: ", ")) if no node is to use TLS" : ""
            throw ValidationError(
                "node \(first) (\(configurations[first].endpoint)) is plain TCP, but \(why): write it rediss://… for TLS\(others)\(unset)"
            )
        }
    }
    return configurations
}

/// Why the file at `path` cannot be read (`open`'s error, or that it is a directory, or not a
/// regular file: each connection reads it anew, and a pipe gives its bytes once); nil when it
/// can. Never waits: only a regular file is opened.
func unreadable(_ path: String) -> String? {
    // The kind first (opening a Unix socket fails with ENXIO, which would not say so).
    var status = stat()
    guard stat(path, &status) == 0 else { return String(cString: strerror(errno)) }
    switch status.st_mode & S_IFMT {
    case S_IFREG: break
    case S_IFDIR: return "a directory, not a file"
    default: return "not a regular file (a pipe, a socket or a device): each connection reads it anew, so it must be a file that reads the same every time"
    }
    let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    guard descriptor >= 0 else { return String(cString: strerror(errno)) }
    close(descriptor)
    return nil
}

/// A client over the nodes of `--nodes` (or `$REDLOCK_NODES`) and a lock on `name` with
/// `options`; bad input is a usage error (exit 64).
func makeLock(nodes: String?, name: String, options: LockOptions) throws -> (RedlockClient, DistributedLock) {
    let list = nodes ?? ProcessInfo.processInfo.environment["REDLOCK_NODES"] ?? ""
    guard !list.isEmpty else { throw ValidationError("give the nodes with --nodes or REDLOCK_NODES") }
    let configurations = try parseNodeList(list)
    do {
        let client = try RedlockClient(nodes: configurations)
        return (client, try client.makeLock(name, options: options))
    } catch {
        throw ValidationError("\(error)")
    }
}
