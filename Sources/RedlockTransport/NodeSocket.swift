import CRedisIO
import Foundation
import Synchronization

/// The transport's only file that calls C: sockets, TLS sessions and the RESP reader (through
/// the `CRedisIO` module), and the event loop's epoll and eventfd primitives.
///
/// Every C object has one Swift owner that frees it exactly once (in `close()` or `deinit`), and
/// every C return is checked; errors come back as ``RedisError`` naming the node.

/// A client TLS configuration loaded into OpenSSL (an `SSL_CTX`): trust anchors, the client's
/// certificate for mutual TLS, the verification mode.
///
/// `@unchecked Sendable`: the context pointer is set once in `init`, never changed, and freed
/// only in `deinit`, when no connection can use it any more; OpenSSL documents a configured
/// `SSL_CTX` as safe to share between threads that each create their own `SSL` from it, which is
/// all the connector threads do.
final class TLSContext: @unchecked Sendable {
    private let pointer: OpaquePointer

    /// Loads the files named by `configuration`.
    /// - Throws: ``RedisError/Code-swift.struct/tlsFailed`` naming the file and OpenSSL's reason.
    init(_ configuration: RedisTLSConfiguration, endpoint: RedisEndpoint) throws(RedisError) {
        // Each connection loads the files anew: a pipe (`<(…)`, a FIFO) would give its bytes to
        // the first alone, and one without a writer would block the connector thread in open.
        let files = [
            ("CA certificates", configuration.verifiesCertificate ? configuration.trustedCertificatesFile : nil),
            ("client certificate", configuration.certificateFile), ("client key", configuration.privateKeyFile),
        ]
        for case let (role, path?) in files {
            var status = stat()
            // A file that is not there: OpenSSL's reason names it.
            guard stat(path, &status) == 0, status.st_mode & S_IFMT != S_IFREG else { continue }
            let kind = status.st_mode & S_IFMT == S_IFDIR ? "a directory" : "not a regular file (a pipe, a socket or a device)"
            throw RedisError(
                code: .tlsFailed, endpoint: endpoint,
                message: "the \(role) file \(path) is \(kind): each connection reads it anew, so it must be a file that reads the same every time"
            )
        }
        if let problem = Self.unusableServerName(configuration.serverName) {
            throw RedisError(code: .tlsFailed, endpoint: endpoint, message: problem)
        }
        var error = rio_error()
        let created = rio_tls_create(
            configuration.trustedCertificatesFile, configuration.certificateFile, configuration.privateKeyFile,
            configuration.verifiesCertificate ? 1 : 0, &error
        )
        guard let created else { throw RedisError(error, endpoint: endpoint) }
        pointer = created
    }

    deinit {
        rio_tls_free(pointer)
    }

    /// Why `name`, a configured ``RedisTLSConfiguration/serverName``, cannot be sent and
    /// required; nil when it can (or is nil: the endpoint's host serves). A name is an IP
    /// address (as `rio_ip_identity` reads one: an IPv6 zone, `%eth0`, is left out of the
    /// check) or a DNS name as
    /// certificates hold it (RFC 1035 section 2.3.1 and RFC 6125): ASCII letters, digits, `-`
    /// and `_` in labels of 1 to 63 bytes, at most 253 bytes. Anything else fails each
    /// handshake, or worse: an empty name would send none and require none (no hostname check
    /// at all), one with a NUL byte would be cut at it on the way to C, and one that starts
    /// with a dot is read by OpenSSL as any name under that domain. A fully qualified name's
    /// root dot (`cache.example.`) is allowed, and left out of what is sent and required.
    static func unusableServerName(_ name: String?) -> String? {
        guard let name else { return nil }
        if name.isEmpty {
            return "the server name is empty: it would turn off the hostname check (leave it unset to use the host)"
        }
        // A URL pasted here may hold a password: quoted as address errors quote one.
        let quotable = RedisConnectionConfiguration.quotable(name)
        let shown = String(reflecting: quotable.utf8.count > 64 ? String(quotable.prefix(40)) + "…" : quotable)
        func unusable(_ why: String) -> String { "the server name \(shown) \(why)" }
        if name.utf8.contains(0) { return unusable("contains a NUL byte") }
        // An address, in any form the handshake verifies as one (`rio_ip_identity`).
        var address = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        if rio_ip_identity(name, &address, address.count) == 1 { return nil }
        if name.contains(where: \.isWhitespace) {
            return unusable("contains white space (a line end read from a file?): no host name does")
        }
        if name.hasPrefix(".") {
            return unusable("starts with a dot: OpenSSL would accept a certificate for any name under that domain (a template's empty part?)")
        }
        // A fully qualified name's root dot is dropped for the handshake (`rio_tls_name`).
        let relative = RedisEndpoint.relativeName(name)
        if relative.utf8.count > 253 { return unusable("is \(relative.utf8.count) bytes long: a DNS name holds at most 253") }
        if rio_ip_identity(relative, &address, address.count) == 1 {
            return unusable("is an address with a dot after it: give it without the dot")
        }
        if name.contains("*") { return unusable("has a wildcard: give the node's own name (a certificate's wildcard matches it)") }
        if name.utf8.contains(where: { $0 >= 0x80 }) {
            return unusable("is not ASCII: give an internationalized name in its xn-- form (IDNA)")
        }
        for label in relative.split(separator: ".", omittingEmptySubsequences: false) {
            if label.isEmpty { return unusable("has an empty label (two dots in a row)") }
            if label.utf8.count > 63 { return unusable("has a label of \(label.utf8.count) bytes: a label holds at most 63") }
            let odd = label.unicodeScalars.first { scalar in
                !(scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || scalar == "-" || scalar == "_")
            }
            if let odd {
                return unusable("holds \(String(reflecting: String(odd))), which no host name does (letters, digits, - and _)")
            }
        }
        return nil
    }

    fileprivate func withPointer<T>(_ body: (OpaquePointer) -> T) -> T {
        body(pointer)
    }
}

/// The TLS context of one connection or subscriber, loaded on first connect (file I/O: on the
/// connector thread) and kept for later connects.
final class TLSContextCache: Sendable {
    private let loaded = Mutex<TLSContext?>(nil)

    init() {}

    /// The context for `configuration` (nil without TLS), loading it if needed.
    func context(for configuration: RedisConnectionConfiguration) -> Result<TLSContext?, RedisError> {
        guard let settings = configuration.tls else { return .success(nil) }
        if let context = loaded.withLock({ $0 }) { return .success(context) }
        do {
            let context = try TLSContext(settings, endpoint: configuration.endpoint)
            loaded.withLock { $0 = context }
            return .success(context)
        } catch {
            return .failure(error)
        }
    }
}

/// One open connection to a node: a non-blocking socket, its TLS session if any, and the reader
/// that turns its bytes into replies.
///
/// `@unchecked Sendable`: the C connection (and the reply buffer, and the close hook set by
/// ``whenClosed(_:)``) is not thread-safe, and is used by one thread at a time. The connector
/// thread that creates it (``connect(_:tls:)``) uses it until it hands it to its owner, which
/// stores it in its mutex-guarded state (`ConnectionCore.state`, `RedisSubscriber.state`).
/// From then on a subscriber makes every call with that lock held. A connection's calls are made with its lock held too, except for
/// ``read()`` and ``write(_:from:)`` by the thread that owns its I/O: it takes the ownership
/// (`ioOwned`) under the lock, while no other thread has it, and gives it up under the lock;
/// nothing else touches the socket meanwhile (`close()` waits for the owner: `dropRequested`).
final class NodeSocket: @unchecked Sendable {
    private var pointer: OpaquePointer?
    private let endpoint: RedisEndpoint
    /// The replies of the last ``read()``, kept for their storage: the next read reuses it once
    /// its caller let go of the last outcome. Kept only when they are few and small (see
    /// ``isSmall(_:)``), so an idle connection never holds a large value alive.
    private var replies: [RedisValue] = []

    /// What the socket reached, as far as the client can tell (`rio_conn_peer`): the numeric
    /// address (`192.0.2.7:6379`, `[::1]:6379`), with the server name the TLS handshake sent
    /// (` sni=NAME`: a gateway on one address may route each name to another server; none is
    /// sent for an IP address), or a Unix socket's file (`unix:DEVICE:INODE`); nil when the
    /// system would not tell. Two names of one server (`localhost` and `127.0.0.1`, a symbolic
    /// link to a socket) reach the same.
    let peer: String?

    private init(pointer: OpaquePointer, endpoint: RedisEndpoint) {
        self.pointer = pointer
        self.endpoint = endpoint
        peer = Self.peerAddress(of: pointer)
    }

    private static func peerAddress(of pointer: OpaquePointer) -> String? {
        // Room for a numeric IPv6 address, its port and a server name of 255 bytes.
        var buffer = [CChar](repeating: 0, count: 320)
        var error = rio_error()
        let status = buffer.withUnsafeMutableBufferPointer { storage -> Int32 in
            guard let base = storage.baseAddress else { return Int32(RIO_E_INVALID) }
            return rio_conn_peer(pointer, base, storage.count, &error)
        }
        guard status == Int32(RIO_OK) else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit {
        close()
    }

    /// Frees the connection (closing its socket). Safe to call more than once.
    func close() {
        if let pointer {
            rio_conn_free(pointer)
            self.pointer = nil
            let hook = onClose
            onClose = nil
            hook?()
        }
    }

    /// Called once when the socket closes (``close()``, or the socket's end): what a vet that
    /// let it through (``ConnectVet``) counts on.
    private var onClose: (@Sendable () -> Void)?

    /// Sets what ``close()`` calls; on a closed socket, calls it at once. Called by the thread
    /// that made the socket, before it hands it over.
    func whenClosed(_ hook: @escaping @Sendable () -> Void) {
        guard pointer != nil else { return hook() }
        onClose = hook
    }

    /// `outcome`, a connect's, once `vet` looked at what its socket reached: the address
    /// (``peer``, when the system told it) and the server's `run_id` when the handshake learned
    /// it (``server``). A socket let through closes with the vet's hook; a refused one is
    /// closed, and the refusal is the outcome (`refused` true). Without a vet, as is.
    static func vetted(
        _ outcome: Result<NodeSocket, RedisError>, by vet: ConnectVet?
    ) -> (outcome: Result<NodeSocket, RedisError>, refused: Bool) {
        guard case let .success(socket) = outcome, let vet else { return (outcome, false) }
        switch vet(socket.peer, socket.server?.runID) {
        case let .success(released):
            socket.whenClosed(released)
            return (outcome, false)
        case let .failure(refusal):
            socket.close()
            return (.failure(refusal), true)
        }
    }

    /// The socket descriptor, or -1 once closed.
    var descriptor: Int32 {
        pointer.map { rio_conn_fd($0) } ?? -1
    }

    /// Whether any byte of a reply came from the server (false once closed).
    private var receivedAnything: Bool {
        pointer.map { rio_conn_received($0) != 0 } ?? false
    }

    /// Whether a connect asks the server who it is (`INFO server`, for its `run_id`: see
    /// ``server``), and what a connection closed on that question may do. A socket without a
    /// `run_id` is told from another node's by its address alone, so one server listed under
    /// two addresses could vote twice: a close on `INFO` drops the question only when the
    /// owner saw it before, in separate connects over a while (a proxy that does not pass
    /// `INFO`; ``ServerInfoHistory``), not for a close that a passing fault (a proxy's hang-up
    /// lifted between two connects, a restart) explains as well.
    enum ServerIdentification: Sendable, Equatable {
        /// Not asked (a socket nobody vets).
        case none
        /// Asked; a close on it after the answer to the command before it fails the connect
        /// (transient), and the connect's ``ConnectResult/closedOnServerInfo`` says so.
        case asked
        /// Asked; on such a close, one more connect without it (with a `PING`, so that it is
        /// still handed over only once the node answered).
        case askedElseWithout
        /// Asked, as `.asked`, of a server that told its `run_id` to an earlier connect: its
        /// close's message says so.
        case required
    }

    /// What the connects of one connection (or subscriber) showed of the server's answers to
    /// `INFO server`, and so how its next connect asks (``ServerIdentification``): without
    /// `INFO` only after two connects closed on it (each after answering the command before
    /// it) and a second since the first of them; never once one got a `run_id`.
    struct ServerInfoHistory: Sendable {
        /// Whether a connect got the server's `run_id`.
        private var learned = false
        /// Connects closed on `INFO` since, and when the first of them ended.
        private var closes = 0
        private var firstClose: ContinuousClock.Instant?

        /// How the next connect asks, at `now`: not at all for a socket nobody vets.
        func identification(vetted: Bool, at now: ContinuousClock.Instant = .now) -> ServerIdentification {
            guard vetted else { return .none }
            if learned { return .required }
            guard closes >= 2, let firstClose, firstClose.duration(to: now) >= .seconds(1) else { return .asked }
            return .askedElseWithout
        }

        /// Notes what `result`, a connect's, showed.
        mutating func record(_ result: ConnectResult) {
            if case let .success(socket) = result.outcome, socket.server != nil {
                learned = true
            } else if result.closedOnServerInfo, !learned {
                closes += 1
                if firstClose == nil { firstClose = .now }
            }
        }
    }

    /// A connect's outcome, and whether the server closed a connection of it on `INFO server`
    /// right after answering the command before it (``ServerIdentification``).
    struct ConnectResult {
        var outcome: Result<NodeSocket, RedisError>
        var closedOnServerInfo = false
    }

    /// Connects (resolution, TCP or Unix connect, TLS handshake) within the configuration's
    /// connect timeout, then, within the later of that and the command timeout, authenticates
    /// and selects the database (one round trip), then makes the order barrier (another). With
    /// `probe`, a `PING` goes with `AUTH`/`SELECT`. Blocks the calling thread:
    /// call it from a connector thread, never from the event loop or the cooperative pool.
    /// With `barrier` (a connection's, not a subscriber's), the socket then learns how the server
    /// names it (``ServerClient``) and, first, ends the connection `barrier.kill` names; see
    /// ``OrderBarrier``. With `identification` other than `.none` (a vetted socket's), `INFO
    /// server` goes last, with the barrier's commands or in a round trip of its own, for the
    /// server's `run_id` (``server``). When nothing goes before them (no `AUTH`, `SELECT` or
    /// probe), a `PING` leads the barrier's commands, so that a close is placed: one before
    /// any reply (a proxy without its backend, a hang-up) is the connection's, and fails the
    /// connect (transient); one after an answer is on the command that followed it. A server
    /// that closes the connection on `CLIENT INFO` (no kill owed) is connected to once more
    /// without the barrier, still asking `INFO`; one that closes on `INFO` fails the connect,
    /// or gets one more without it, as `identification` says. `fallbacks`: how many connects
    /// more this one may make (2 for a caller's; 0 for the look for TLS): a connect takes at
    /// most three. A plain connect that the server closes before any reply may look for TLS on
    /// the port with a few connections more, within its connect timeout, unless `sniffsTLS` is
    /// false (``tlsPortFailure(_:since:until:)``).
    static func connect(
        _ configuration: RedisConnectionConfiguration, tls: TLSContext?, barrier: OrderBarrier.Request? = nil,
        identification: ServerIdentification = .none, probe: Bool = false, fallbacks: Int = 2, sniffsTLS: Bool = true
    ) -> ConnectResult {
        let endpoint = configuration.endpoint
        let started = ContinuousClock.now
        let budget = configuration.connectTimeout
        func milliseconds(_ duration: Duration) -> Int32 {
            Int32(clamping: max(1, duration.wholeNanoseconds / 1_000_000))
        }
        var error = rio_error()
        var opened: OpaquePointer?
        let status: Int32
        switch endpoint.address {
        case let .tcp(host, port):
            guard let cPort = Int32(exactly: port) else {
                return ConnectResult(outcome: .failure(RedisError(code: .invalidAddress, endpoint: endpoint, message: "port \(port) out of range")))
            }
            // C would cut the host at the byte and connect to (and verify) what comes before.
            guard !host.utf8.contains(0) else {
                return ConnectResult(outcome: .failure(RedisError(code: .invalidAddress, endpoint: endpoint, message: "the host contains a NUL byte")))
            }
            let tlsSettings = configuration.tls
            let serverName = tlsSettings?.serverName ?? host
            let verifyHost: Int32 = (tlsSettings?.verifiesHostname ?? false) && (tlsSettings?.verifiesCertificate ?? false) ? 1 : 0
            if let tls {
                status = tls.withPointer { context in
                    rio_connect_tcp(host, cPort, milliseconds(budget), context, serverName, verifyHost, &opened, &error)
                }
            } else {
                status = rio_connect_tcp(host, cPort, milliseconds(budget), nil, nil, 0, &opened, &error)
            }
        case let .unixDomainSocket(path):
            if configuration.tls != nil {
                return ConnectResult(outcome: .failure(RedisError(
                    code: .invalidAddress, endpoint: endpoint, message: "TLS over a Unix domain socket is not supported"
                )))
            }
            guard !path.utf8.contains(0) else {
                return ConnectResult(outcome: .failure(RedisError(code: .invalidAddress, endpoint: endpoint, message: "the path contains a NUL byte")))
            }
            status = rio_connect_unix(path, milliseconds(budget), &opened, &error)
        }
        guard status == Int32(RIO_OK), let opened else {
            return ConnectResult(outcome: .failure(RedisError(error, endpoint: endpoint)))
        }
        let socket = NodeSocket(pointer: opened, endpoint: endpoint)

        // The handshake: `AUTH` and `SELECT` (when configured) in one round trip, then the order
        // barrier's kill (when owed) and `CLIENT INFO` in another: nothing of the barrier runs
        // before the node accepted the credentials and the database, and a close on `CLIENT
        // INFO` is told from one before. With `probe` a `PING` goes with the first. These are
        // commands, not the connect: the node has the command timeout to answer them all, as it
        // would have for the first command written, or what is left of the connect timeout when
        // that is longer.
        var credentials: [RedisCommand] = []
        if let password = configuration.password {
            if let username = configuration.username {
                credentials.append(RedisCommand("AUTH", username, password))
            } else {
                credentials.append(RedisCommand("AUTH", password))
            }
        }
        if let database = configuration.database, database != 0 {
            credentials.append(RedisCommand("SELECT", String(database)))
        }
        if probe { credentials.append(RedisCommand("PING")) }
        let identifies = identification != .none
        // A PING leads when nothing goes before the barrier's commands or INFO: a close after
        // its answer is a close on what follows it, not one of the connection.
        let lead = credentials.isEmpty && (barrier != nil || identifies) ? [RedisCommand("PING")] : []
        let barrierCommands = lead + (barrier.map { ($0.kill.map { [$0.killCommand] } ?? []) + [ServerClient.infoCommand] } ?? [])
            + (identifies ? [serverInfoCommand] : [])
        let deadline = max(started + budget, .now + configuration.commandTimeout)
        let separately = !credentials.isEmpty && !barrierCommands.isEmpty
        let handshake = credentials + barrierCommands
        // A command's name for errors: `AUTH`, `SELECT`, `PING`, `CLIENT KILL`, `CLIENT INFO`, `INFO`.
        func name(_ command: RedisCommand) -> String {
            let words = command.arguments.prefix(2).map { String(decoding: $0, as: UTF8.self).uppercased() }
            return (words.first == "CLIENT" ? words : Array(words.prefix(1))).joined(separator: " ")
        }
        // The first error answer that fails the connect, whichever handshake command got it
        // (a refused PING does not: any answer shows the node reads the connection).
        func refusal(_ replies: [RedisValue]) -> RedisError? {
            for (command, reply) in zip(handshake, replies) {
                if case let .error(text) = reply, let failure = handshakeFailure(name(command), text, endpoint: endpoint) { return failure }
            }
            return nil
        }
        var exchange = socket.roundTrips(separately ? credentials : credentials + barrierCommands, until: deadline)
        if separately, exchange.failure == nil, refusal(exchange.replies) == nil {
            let second = socket.roundTrips(barrierCommands, until: deadline)
            exchange.replies += second.replies
            exchange.failure = second.failure
        }
        if let failure = refusal(exchange.replies) {
            socket.close()
            return ConnectResult(outcome: .failure(failure))
        }
        if let failure = exchange.failure {
            let silent = failure.code == .connectionClosed && !socket.receivedAnything
            socket.close()
            let answered = exchange.replies.count
            // The first command unanswered (the round trips stop there).
            let named = name(handshake[min(answered, handshake.count - 1)])
            // Closed (or garbled) on that command after the node answered all that went before
            // the barrier's commands and INFO: a proxy that passes everything else, or a passing
            // fault. One before any reply proves nothing.
            let closedOn = answered >= credentials.count + lead.count && (failure.code == .connectionClosed || failure.code == .protocolError)
                ? named : nil
            let because = "\(named): \(failure.code): \(failure.message)"
            if closedOn == "INFO", identifies {
                guard fallbacks > 0, identification == .askedElseWithout else {
                    let why = identification == .required
                        ? "this node's server told its run_id before; the next connect asks again"
                        : "the next connect asks again; a server that closes on it in three connects over a second is connected to without it"
                    let message = "INFO after connecting: \(failure.message) (\(why))"
                    return ConnectResult(outcome: .failure(RedisError(code: failure.code, endpoint: endpoint, message: message)), closedOnServerInfo: true)
                }
                // The barrier kept; a kill owed goes again (it answers 0 the second time). A
                // PING goes too: the socket is handed over once the node answered.
                var without = connect(configuration, tls: tls, barrier: barrier, probe: true, fallbacks: 0, sniffsTLS: false)
                without.outcome = without.outcome.mapError {
                    RedisError(code: $0.code, endpoint: endpoint, message: "\($0.message) (without INFO: \(because))")
                }
                without.closedOnServerInfo = true
                return without
            }
            if fallbacks > 0, closedOn == "CLIENT INFO", let barrier, barrier.kill == nil {
                // Closed or garbled on CLIENT INFO (a proxy that does not pass it on, or a
                // server that is not Redis): once more without the barrier, which it cannot
                // give, still asking INFO. Never with a kill owed: that node answered CLIENT
                // INFO before, and the kill must come first.
                return connectWithoutBarrier(configuration, tls: tls, identification: identification, fallbacks: fallbacks - 1, because: because)
            }
            if silent, tls == nil, sniffsTLS, let tlsPort = tlsPortFailure(configuration, since: started, until: started + budget) {
                return ConnectResult(outcome: .failure(tlsPort))
            }
            if failure.code == .protocolError, answered == 0, !failure.pastReaderBound {
                // Its first bytes are not RESP (not a reply past the reader's bounds: that is
                // RESP, if hostile): no Redis server answers so.
                let message = "\(named) after connecting: \(failure.message): the server at this address does not speak RESP (another service on the port?)"
                return ConnectResult(outcome: .failure(RedisError(code: .notRedis, endpoint: endpoint, message: message)))
            }
            return ConnectResult(outcome: .failure(RedisError(code: failure.code, endpoint: endpoint, message: "\(named) after connecting: \(failure.message)")))
        }
        if identifies, let info = exchange.replies.last?.string {
            socket.server = ServerIdentity(info: info, readAt: .now)
        }
        guard let barrier else { return ConnectResult(outcome: .success(socket)) }
        let outcome = OrderBarrier.Outcome(requested: barrier, replies: Array(exchange.replies.dropFirst(credentials.count + lead.count)))
        socket.barrier = outcome
        return ConnectResult(outcome: .success(socket))
    }

    /// For a plain connect whose handshake the server closed before sending a byte, as a TLS
    /// port does with bytes that are not a TLS hello (and as a proxy without a backend, or a
    /// server that dies, do too): looks for a TLS-only RESP server on the port, each step
    /// within what is left until `deadline` but at most eight times what the connect took so
    /// far, at least a second (a TLS handshake and a `PING` take two round trips and the
    /// server's signing, on a busy server too; the connect so far took at least one round
    /// trip). First, on a second connection, a TLS handshake (certificates not checked) and a
    /// `PING` over it that gets a RESP answer (`NOAUTH` too), or a TLS alert from the server
    /// (one that wants a client certificate, as Redis does by default): a RESP server speaks
    /// TLS there (a TLS-sniffing proxy without its backend completes the handshake itself, then
    /// closes).
    /// Then a plain `PING` on a third connection that the server closes too: it does not also
    /// speak plain RESP (a proxy that takes both, or a managed Redis in a "preferred"
    /// transit-encryption mode, does, and the first close was then a mishap). Then the
    /// connect's failure is ``RedisError/Code-swift.struct/tlsFailed`` (permanent), saying so.
    /// Otherwise nil: the close stays what it was (transient).
    private static func tlsPortFailure(
        _ configuration: RedisConnectionConfiguration, since started: ContinuousClock.Instant, until deadline: ContinuousClock.Instant
    ) -> RedisError? {
        guard case .tcp = configuration.endpoint.address else { return nil }
        let bound = max(.seconds(1), started.duration(to: .now) * 8)
        func budget() -> Duration? {
            let left = min(ContinuousClock.now.duration(to: deadline), bound)
            return left >= .milliseconds(1) ? left : nil
        }
        let settings = RedisTLSConfiguration(verifiesCertificate: false, verifiesHostname: false)
        guard let left = budget(), let context = try? TLSContext(settings, endpoint: configuration.endpoint) else { return nil }
        // A command timeout of a millisecond: the PING has what is left of `left`, not `left`
        // again (a connect's commands have until the later of its deadline and that).
        let sniff = RedisConnectionConfiguration(
            endpoint: configuration.endpoint, connectTimeout: left, commandTimeout: .milliseconds(1), tls: settings
        )
        switch connect(sniff, tls: context, probe: true, fallbacks: 0).outcome {
        case let .success(socket):
            socket.close()
        case let .failure(failure):
            // An answer to the PING over TLS that fails the connect (NOAUTH, BUSY, LOADING), or
            // a TLS alert: in the handshake (TLS 1.2), or on the first read after it (TLS 1.3,
            // whose client finishes the handshake before the server checks its certificate:
            // Redis's default, `tls-auth-clients yes`).
            let answered = failure.code == .authenticationFailed || failure.code == .serverError
            let alert = (failure.code == .tlsFailed || failure.code == .connectionClosed) && failure.message.contains(" alert ")
            guard answered || alert else { return nil }
        }
        // Any answer to a plain PING (an error too: NOAUTH) shows the port reads plain RESP.
        guard let remaining = budget() else { return nil }
        let plain = RedisConnectionConfiguration(endpoint: configuration.endpoint, connectTimeout: remaining, commandTimeout: .milliseconds(1))
        switch connect(plain, tls: nil, probe: true, fallbacks: 0, sniffsTLS: false).outcome {
        case let .success(socket):
            socket.close()
            return nil
        case let .failure(failure) where failure.code != .connectionClosed:
            return nil
        case .failure:
            return RedisError(
                code: .tlsFailed, endpoint: configuration.endpoint,
                message: "the server closed the connection before any reply, and a TLS connection to it answered a PING: "
                    + "this port speaks TLS; use rediss:// (RedisConnectionConfiguration.tls)"
            )
        }
    }

    /// `INFO server`: its `run_id` tells one server from another whatever address reaches it.
    private static let serverInfoCommand = RedisCommand("INFO", "server")

    /// The server's `run_id` (40 hex digits, new at each start) and uptime, when the handshake
    /// asked for them (`identification` of ``connect(_:tls:barrier:identification:probe:fallbacks:sniffsTLS:)``)
    /// and the server told them (an ACL without `+info` refuses, and the connect goes on
    /// without). Set by the connector thread before it hands the socket over.
    private(set) var server: ServerIdentity?

    /// The failure of a connect whose handshake `command` got the error answer `text`, or nil
    /// when the connect goes on: a node that wants credentials (`NOAUTH`) fails it as a command
    /// would; a busy or full node (`BUSY`, `LOADING`, `ERR max number of clients`, …: see
    /// ``OrderBarrier/Outcome/refusesForGood(_:)``) fails it for now, whatever the command, and
    /// the next connect asks again (with the same kill owed); otherwise a refused `AUTH` or
    /// `SELECT` fails it for good, and a refused `CLIENT KILL`/`CLIENT INFO` (the barrier's
    /// refusal) or `PING` (any answer shows the node reads the connection) does not.
    private static func handshakeFailure(_ command: String, _ text: String, endpoint: RedisEndpoint) -> RedisError? {
        if text.hasPrefix("NOAUTH") { return RedisError(code: .authenticationFailed, endpoint: endpoint, message: text) }
        let code: RedisError.Code
        if !OrderBarrier.Outcome.refusesForGood(text) {
            code = .serverError
        } else if command == "AUTH" {
            code = .authenticationFailed
        } else if command == "SELECT" {
            code = .databaseSelectionFailed
        } else {
            return nil
        }
        return RedisError(code: code, endpoint: endpoint, message: "\(command): \(text)")
    }

    /// What the connect learned for the order barrier (set by the connector thread before it
    /// hands the socket over); nil without a barrier request.
    private(set) var barrier: OrderBarrier.Outcome?

    /// A connect for a server that closed the connection (or garbled its answer) on
    /// `CLIENT INFO`: made without the barrier, but still handed over only once the server
    /// answered something on it (a `PING`; any reply, an error included, within the later of
    /// the connect deadline and the command timeout), so that nothing is written blind to a
    /// node that reads nothing. Its outcome says why it has no barrier (`reason`).
    private static func connectWithoutBarrier(
        _ configuration: RedisConnectionConfiguration, tls: TLSContext?, identification: ServerIdentification, fallbacks: Int,
        because reason: String
    ) -> ConnectResult {
        var result = connect(configuration, tls: tls, barrier: nil, identification: identification, probe: true, fallbacks: fallbacks, sniffsTLS: false)
        result.outcome = result.outcome.map { socket in
            socket.barrier = OrderBarrier.Outcome(unsupported: reason)
            return socket
        }.mapError { failure in
            RedisError(code: failure.code, endpoint: configuration.endpoint, message: "\(failure.message) (without the order barrier: \(reason))")
        }
        return result
    }

    /// Connects on a short-lived thread of its own (resolution, connect, TLS handshake and
    /// `AUTH`/`SELECT` block, and must block neither an event loop nor the cooperative pool),
    /// then calls `completion` on that thread. The thread ends with the connect, within the
    /// connect's time limit (`connectTimeout + commandTimeout`, up to three times that when the
    /// server closes on `CLIENT INFO` or `INFO`: see ``RedisConnectionConfiguration/connectTimeout``).
    static func connectInBackground(
        _ configuration: RedisConnectionConfiguration,
        tls: TLSContextCache,
        barrier: OrderBarrier.Request? = nil,
        identification: ServerIdentification = .none,
        completion: @escaping @Sendable (ConnectResult) -> Void
    ) {
        startNamedThread("redis-connect", stackSize: 256 * 1024) {
            switch tls.context(for: configuration) {
            case let .success(context): completion(connect(configuration, tls: context, barrier: barrier, identification: identification))
            case let .failure(failure): completion(ConnectResult(outcome: .failure(failure)))
            }
        }
    }

    /// Writes `bytes` (none: only reads) and waits for the next reply (an error reply comes back
    /// as `.error`).
    private func roundTrip(bytes: [UInt8], timeout milliseconds: Int32) -> Result<RedisValue, RedisError> {
        guard let pointer else { return .failure(closedError) }
        var error = rio_error()
        var reply: OpaquePointer?
        let status = bytes.withUnsafeBytes { raw in
            rio_conn_roundtrip(pointer, raw.baseAddress, raw.count, milliseconds, &reply, &error)
        }
        guard status == Int32(RIO_OK), let reply else {
            return .failure(RedisError(error, endpoint: endpoint))
        }
        defer { rio_reply_free(reply) }
        return Self.value(reply, endpoint: endpoint)
    }

    /// What ``roundTrips(_:until:)`` got: the replies in order (error replies are `.error`), and
    /// why the rest did not come (nil when every command was answered).
    private struct Exchange {
        var replies: [RedisValue] = []
        var failure: RedisError?
    }

    /// Writes `commands` at once, then reads one reply for each, all before `deadline`. An
    /// error reply is a reply (`.error`); a reply that does not come in time is a failure, and
    /// so is a broken stream; the replies read before either are kept.
    private func roundTrips(_ commands: [RedisCommand], until deadline: ContinuousClock.Instant) -> Exchange {
        var bytes: [UInt8] = []
        for command in commands { command.appendWire(to: &bytes) }
        var exchange = Exchange()
        for index in commands.indices {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else {
                exchange.failure = RedisError(code: .timeout, endpoint: endpoint, message: "timed out waiting for the server's reply")
                return exchange
            }
            // The bytes go with the first; the others only read the next reply.
            switch roundTrip(bytes: index == 0 ? bytes : [], timeout: Int32(clamping: max(1, left.wholeNanoseconds / 1_000_000))) {
            case let .success(reply): exchange.replies.append(reply)
            case let .failure(failure):
                exchange.failure = failure
                return exchange
            }
        }
        return exchange
    }

    private var closedError: RedisError {
        RedisError(code: .connectionClosed, endpoint: endpoint, message: "connection already closed")
    }

    /// Writes as much of `bytes[offset...]` as the socket accepts now, in as many calls as it
    /// takes. Returns how many bytes went out (fewer than asked: the socket is full; the rest
    /// waits for writability), or why the connection broke.
    func write(_ bytes: [UInt8], from offset: Int = 0) -> Result<Int, RedisError> {
        guard let pointer else { return .failure(closedError) }
        var error = rio_error()
        // TLS may need to read before it can write again; the loop watches reads anyway.
        var wantsRead: Int32 = 0
        return bytes.withUnsafeBytes { raw -> Result<Int, RedisError> in
            guard let base = raw.baseAddress else { return .success(0) }
            var position = offset
            while position < raw.count {
                let written = rio_conn_write(pointer, base + position, raw.count - position, &wantsRead, &error)
                if written < 0 { return .failure(RedisError(error, endpoint: endpoint)) }
                if written == 0 { break }
                position += written
            }
            return .success(position - offset)
        }
    }

    /// What a non-blocking read produced.
    struct ReadOutcome {
        /// Every complete reply read, in order; error replies are `.error`.
        var replies: [RedisValue] = []
        /// Set when the stream broke (EOF, socket error, not RESP): the connection is unusable.
        var failure: RedisError?
        /// TLS must write before it can read on.
        var wantsWritable = false
        /// When the kernel received the last bytes read (``ReplyArrival``): CLOCK_REALTIME
        /// nanoseconds, 0 when not known.
        var arrivalRealtime: Int64 = 0
        /// Whether that is the last reply's own arrival: its last bytes were the last read (the
        /// others arrived at or before it).
        var lastArrivalExact = false
    }

    /// Reads what the socket has and returns the complete replies. Their array is the socket's
    /// buffer: a caller that lets go of it before the next read lets that read reuse it.
    ///
    /// A read of the socket that returns less than asked for drained it, and reading stops there
    /// (one `recv` per event rather than two: the one that would return `EAGAIN` is saved; over
    /// TLS once OpenSSL holds no bytes of a record not yet returned), unless `toEndOfStream`:
    /// then it reads on to `EAGAIN` or the end
    /// of the stream. Pass true for an event that reported a hang-up (a FIN that came with the
    /// last bytes raises no event of its own) or urgent data (a read stops short at its mark),
    /// and whenever the event's flags are not known.
    func read(toEndOfStream: Bool = true) -> ReadOutcome {
        var outcome = ReadOutcome()
        guard let pointer else {
            outcome.failure = closedError
            return outcome
        }
        replies.removeAll(keepingCapacity: replies.capacity <= 64)
        var error = rio_error()
        var failed: Int32 = 0
        var wantsWrite: Int32 = 0
        var exact = false
        repeat {
            _ = rio_conn_read(pointer, toEndOfStream ? 1 : 0, &failed, &wantsWrite, &error)
            exact = false
            // Replies that arrived before a failure are still answers.
            while true {
                var reply: OpaquePointer?
                var parseError = rio_error()
                let got = rio_conn_next_reply(pointer, &reply, &parseError)
                if got < 0 {
                    outcome.failure = RedisError(parseError, endpoint: endpoint)
                    outcome.replies = replies
                    return outcome
                }
                guard got > 0, let reply else { break }
                let value = Self.value(reply, endpoint: endpoint)
                rio_reply_free(reply)
                switch value {
                case let .success(value):
                    replies.append(value)
                    exact = true
                case let .failure(failure):
                    outcome.failure = failure
                    outcome.replies = replies
                    return outcome
                }
            }
        } while failed == 0 && rio_conn_pending(pointer) != 0
        if failed != 0 { outcome.failure = RedisError(error, endpoint: endpoint) }
        outcome.wantsWritable = wantsWrite != 0
        outcome.arrivalRealtime = rio_conn_arrival_realtime_ns(pointer)
        outcome.lastArrivalExact = exact && rio_conn_reader_empty(pointer) != 0
        outcome.replies = replies
        if replies.count > 64 || !replies.allSatisfy(Self.isSmall) { replies = [] }
        return outcome
    }

    /// Whether keeping `value` referenced until the next read costs next to nothing: a lock's
    /// replies (a status, an integer, a short string, a short array of such).
    private static func isSmall(_ value: RedisValue) -> Bool {
        switch value {
        case .integer, .null: true
        case let .simpleString(text), let .error(text): text.utf8.count <= 256
        case let .bulkString(bytes): bytes.count <= 256
        case let .array(elements): elements.count <= 8 && elements.allSatisfy { element in
            if case .array = element { return false }
            return isSmall(element)
        }
        }
    }

    /// Whether the peer has closed this idle connection (checked without blocking before a
    /// command goes out on a connection that was idle, so a restarted server costs a reconnect
    /// rather than a failed command).
    var peerHasClosed: Bool {
        guard let pointer else { return true }
        return rio_conn_peer_closed(pointer) != 0
    }

    private static func value(_ reply: OpaquePointer, endpoint: RedisEndpoint) -> Result<RedisValue, RedisError> {
        switch Int(rio_reply_type(reply)) {
        case Int(RIO_REPLY_STATUS):
            return .success(.simpleString(text(reply)))
        case Int(RIO_REPLY_STRING):
            return .success(.bulkString(bytes(reply)))
        case Int(RIO_REPLY_INTEGER):
            return .success(.integer(Int64(rio_reply_integer(reply))))
        case Int(RIO_REPLY_NIL):
            return .success(.null)
        case Int(RIO_REPLY_ERROR):
            return .success(.error(text(reply)))
        case Int(RIO_REPLY_ARRAY):
            let count = rio_reply_count(reply)
            var elements: [RedisValue] = []
            elements.reserveCapacity(count)
            for index in 0..<count {
                guard let element = rio_reply_element(reply, index) else {
                    return .failure(RedisError(code: .protocolError, endpoint: endpoint, message: "array element \(index) missing"))
                }
                switch value(element, endpoint: endpoint) {
                case let .success(value): elements.append(value)
                case let .failure(error): return .failure(error)
                }
            }
            return .success(.array(elements))
        default:
            return .failure(RedisError(code: .protocolError, endpoint: endpoint, message: "unknown reply type \(rio_reply_type(reply))"))
        }
    }

    /// The reply's string bytes in place, in hiredis's buffer (empty when it has none): valid
    /// until the reply is freed.
    private static func buffer(_ reply: OpaquePointer) -> UnsafeRawBufferPointer {
        var length = 0
        guard let start = rio_reply_bytes(reply, &length), length > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: start, count: length)
    }

    private static func bytes(_ reply: OpaquePointer) -> [UInt8] {
        Array(buffer(reply))
    }

    /// Decoded in place: a short status such as `OK` needs no allocation at all.
    private static func text(_ reply: OpaquePointer) -> String {
        String(decoding: buffer(reply), as: UTF8.self)
    }
}

/// An epoll instance and an eventfd to wake it: the event loop's system side.
///
/// Closed by the loop's thread as it exits (``close()``); every call after that is refused, so a
/// descriptor number reused since is never touched.
final class Poller: Sendable {
    private let poller: Int32
    private let waker: Int32
    private let closed = Mutex(false)
    /// The token the waker's events carry.
    static let wakerToken: UInt64 = 0

    init() throws(RedisError) {
        var error = rio_error()
        let poller = rio_poller_create(&error)
        guard poller >= 0 else { throw RedisError(error, endpoint: nil) }
        let waker = rio_waker_create(&error)
        guard waker >= 0 else {
            rio_close_descriptor(poller)
            throw RedisError(error, endpoint: nil)
        }
        if rio_poller_control(poller, 0, waker, 0, 0, Self.wakerToken, &error) != 0 {
            rio_close_descriptor(waker)
            rio_close_descriptor(poller)
            throw RedisError(error, endpoint: nil)
        }
        self.poller = poller
        self.waker = waker
    }

    deinit {
        close()
    }

    /// Closes both descriptors (once).
    func close() {
        closed.withLock { closed in
            guard !closed else { return }
            closed = true
            rio_close_descriptor(waker)
            rio_close_descriptor(poller)
        }
    }

    /// What epoll reported for one descriptor.
    struct Event {
        var token: UInt64
        var readable: Bool
        var writable: Bool
        /// A hang-up or error, or urgent data: a short read does not show the socket drained
        /// (see ``NodeSocket/read(toEndOfStream:)``).
        var readToEnd: Bool
    }

    enum Change: Int32 { case add = 0, modify = 1, remove = 2 }

    /// Adds, changes or removes a socket, edge-triggered (reads, urgent data and hang-ups always
    /// watched; writes with `writable`): whoever handles an event reads until the socket is
    /// drained (a short read shows it, unless the event says ``Event/readToEnd``).
    /// Safe from any thread.
    func control(_ change: Change, descriptor: Int32, writable: Bool, token: UInt64) -> RedisError? {
        closed.withLock { closed in
            guard !closed else { return RedisError(code: .shutdown, endpoint: nil, message: "the event loop was shut down") }
            var error = rio_error()
            if rio_poller_control(poller, change.rawValue, descriptor, writable ? 1 : 0, 1, token, &error) != 0 {
                return RedisError(error, endpoint: nil)
            }
            return nil
        }
    }

    /// Waits for events up to `timeout` (nil: no limit) into `events`.
    func wait(into events: inout [Event], timeout: Duration?) -> RedisError? {
        let milliseconds: Int32 = timeout.map { Int32(clamping: max(0, ($0.wholeNanoseconds + 999_999) / 1_000_000)) } ?? -1
        var error = rio_error()
        events.removeAll(keepingCapacity: true)
        // 32 events of 24 bytes stay on the stack (a temporary allocation over 1 KiB is a
        // malloc on every turn); more ready sockets are reported on the next turn.
        return withUnsafeTemporaryAllocation(of: rio_event.self, capacity: 32) { buffer -> RedisError? in
            let count = rio_poller_wait(poller, buffer.baseAddress, Int32(buffer.count), milliseconds, &error)
            guard count >= 0 else { return RedisError(error, endpoint: nil) }
            for event in buffer.prefix(Int(count)) {
                events.append(Event(token: event.token, readable: event.readable != 0, writable: event.writable != 0, readToEnd: event.hangup != 0 || event.urgent != 0))
            }
            return nil
        }
    }

    /// Wakes a thread waiting in ``wait(into:timeout:)``. Safe from any thread.
    func wake() {
        closed.withLock { closed in
            if !closed { rio_waker_signal(waker) }
        }
    }

    /// Consumes the pending wake-ups (on the loop thread, after the waker's event).
    func drainWakeups() {
        rio_waker_drain(waker)
    }
}

extension RedisError {
    /// A typed error from the C layer's error record; its text names the step that failed
    /// (`connect: Connection refused`, `TLS handshake failed: …`, `resolving h timed out`).
    init(_ error: rio_error, endpoint: RedisEndpoint?) {
        var record = error
        let text = withUnsafeBytes(of: &record.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        let code: Code
        switch Int(error.code) {
        case Int(RIO_E_REFUSED): code = .connectionRefused
        case Int(RIO_E_TIMEOUT): code = .timeout
        case Int(RIO_E_RESOLVE): code = .nameResolutionFailed
        case Int(RIO_E_CLOSED): code = .connectionClosed
        case Int(RIO_E_PROTOCOL), Int(RIO_E_BOUND): code = .protocolError
        case Int(RIO_E_TLS): code = .tlsFailed
        case Int(RIO_E_CERTIFICATE): code = .certificateRejected
        case Int(RIO_E_INVALID): code = .invalidAddress
        default: code = .io
        }
        self.init(code: code, endpoint: endpoint, message: text)
        pastReaderBound = Int(error.code) == Int(RIO_E_BOUND)
    }
}

/// What a connection or subscriber shows each new socket's peer to (``NodeSocket/peer``, nil
/// when the system would not tell), with the server's `run_id` when the handshake learned it
/// (``NodeSocket/server``), before the socket is used: a success lets the socket through and
/// carries what to call once it closes (exactly once, on whichever thread closes it); a
/// failure refuses it with that error.
package typealias ConnectVet = @Sendable (_ peer: String?, _ serverRunID: String?) -> Result<@Sendable () -> Void, RedisError>

/// `count` bytes from the system's secure generator: one `getrandom(2)` call for them all
/// (`SystemRandomNumberGenerator` makes one per eight bytes); what that call leaves unfilled
/// comes from `SystemRandomNumberGenerator`. For lock values: 16 bytes per `lock()`.
package func secureRandomBytes(_ count: Int) -> [UInt8] {
    guard count > 0 else { return [] }
    var bytes = [UInt8](repeating: 0, count: count)
    var filled = bytes.withUnsafeMutableBytes { buffer -> Int in
        guard let start = buffer.baseAddress else { return 0 }
        return min(rio_random_bytes(start, buffer.count), buffer.count)
    }
    if filled < count {
        var generator = SystemRandomNumberGenerator()
        while filled < count {
            let word = generator.next()
            for shift in stride(from: 0, to: 64, by: 8) where filled < count {
                bytes[filled] = UInt8(truncatingIfNeeded: word >> UInt64(shift))
                filled += 1
            }
        }
    }
    return bytes
}

/// For tests: leaves an error on the calling thread's OpenSSL error queue, as other code on an
/// event loop's thread (a task on ``RedisEventLoop`` as its executor) may; the transport empties
/// the queue before each TLS read and write, so that such an error is not taken for the
/// connection's. Returns whether the queue holds an error afterwards.
package func leaveStaleOpenSSLError() -> Bool {
    rio_openssl_leave_error() == 1
}

/// When the reply a handler is given arrived: the kernel's receive time of its bytes
/// (`SO_TIMESTAMPNS`, asked for on every TCP socket), noted for the thread that delivers it
/// while it calls its handler. Against the fan-out's send it is the node's own time (and the
/// network's): it tells a node that answered late from a reply this process read late (short
/// of CPU: a throttled container, a busy executor, a pause), which the time from send to
/// handler cannot.
package enum ReplyArrival {
    /// For a command that waited behind an earlier command's reply and was written by the
    /// thread that read it: when that reply arrived (CLOCK_REALTIME nanoseconds) and when the
    /// command was written (a ``BootClock`` reading). The time between is this process's.
    struct Release {
        var arrivalRealtime: Int64 = 0
        var writtenAt: Int64 = 0

        /// Written behind a reply not read yet (the wait for it outlasted the coalescing
        /// window, or the connection shut down): how much of the wait was the node's is not
        /// known.
        static let unknown = Release(arrivalRealtime: -1, writtenAt: 0)
    }

    /// Notes a reply's arrival as the calling thread's, for the handler it calls next:
    /// `realtime` CLOCK_REALTIME nanoseconds, `exactly` whether it is the reply's own arrival
    /// (its last bytes were the read's last), `release` its command's wait behind an earlier
    /// reply, if it had one. Each reply delivered from a read gets its own note before its
    /// handler; ``clear()`` after the last.
    static func note(arrivedAt realtime: Int64, exactly: Bool, release: Release) {
        rio_set_delivery(rio_delivery(
            arrival_realtime_ns: realtime, released_realtime_ns: release.arrivalRealtime, written_boottime_ns: release.writtenAt,
            exact: exactly ? 1 : 0
        ))
    }

    /// Forgets the calling thread's note (replies delivered otherwise have no arrival).
    static func clear() {
        rio_set_delivery(rio_delivery(arrival_realtime_ns: 0, released_realtime_ns: 0, written_boottime_ns: 0, exact: 0))
    }

    /// For a reply handler: when its reply arrived, as a ``BootClock`` reading (nanoseconds),
    /// whether that is the reply's own arrival (`exact`) or a bound it arrived at or before
    /// (other bytes came after it in the same read, or over TLS in the records read with it),
    /// and, for a command that waited behind an earlier reply, how long this process took from
    /// that reply's arrival to the command's write (`held`, else 0; -1 when not known: written
    /// before that reply was read); nil when not known (a Unix socket, a reply not delivered
    /// from a read, the wall clock stepped back since, a TCP reply that came while the kernel
    /// was still switching receive timestamps on for the host: it does so by deferred work once
    /// the first socket asks, hundreds of milliseconds later on a loaded machine).
    package static func current() -> (arrived: Int64, held: Int64, exact: Bool)? {
        var arrived: Int64 = 0
        var held: Int64 = 0
        var exact: Int32 = 0
        guard rio_delivery_times(&arrived, &held, &exact) == 1 else { return nil }
        return (arrived, held, exact != 0)
    }
}
