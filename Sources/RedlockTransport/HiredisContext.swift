import CHiredis

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Owns one blocking hiredis `redisContext`. Used only by its connection's I/O thread.
///
/// The context is freed exactly once: by ``close()`` or, failing that, by `deinit`.
/// Every reply is copied into a ``RedisValue`` and freed before the call returns.
final class HiredisContext {
    private var handle: UnsafeMutablePointer<redisContext>?
    private let endpoint: RedisEndpoint

    private init(handle: UnsafeMutablePointer<redisContext>, endpoint: RedisEndpoint) {
        self.handle = handle
        self.endpoint = endpoint
    }

    deinit {
        close()
    }

    /// Frees the context (closing its socket). Safe to call more than once.
    func close() {
        if let handle {
            redisFree(handle)
            self.handle = nil
        }
    }

    /// Connects, applies the command timeout, then authenticates and selects the database.
    static func connect(_ configuration: RedisConnectionConfiguration) -> Result<HiredisContext, RedisError> {
        let endpoint = configuration.endpoint
        let connectTimeout = timeval(configuration.connectTimeout)
        let opened: UnsafeMutablePointer<redisContext>?
        switch endpoint.address {
        case let .tcp(host, port):
            guard let cPort = Int32(exactly: port) else {
                return .failure(RedisError(code: .invalidAddress, endpoint: endpoint, message: "port \(port) out of range"))
            }
            opened = redisConnectWithTimeout(host, cPort, connectTimeout)
        case let .unixDomainSocket(path):
            opened = redisConnectUnixWithTimeout(path, connectTimeout)
        }
        let savedErrno = chiredis_errno()
        guard let opened else {
            return .failure(RedisError(code: .io, endpoint: endpoint, message: "hiredis could not allocate a context"))
        }
        if opened.pointee.err != 0 {
            let error = classify(opened, errno: savedErrno, endpoint: endpoint, connecting: true)
            redisFree(opened)
            return .failure(error)
        }
        let context = HiredisContext(handle: opened, endpoint: endpoint)
        if redisSetTimeout(opened, timeval(configuration.commandTimeout)) != REDIS_OK {
            let error = classify(opened, errno: chiredis_errno(), endpoint: endpoint, connecting: true)
            context.close()
            return .failure(error)
        }
        if case .tcp = endpoint.address, redisEnableKeepAlive(opened) != REDIS_OK {
            let error = classify(opened, errno: chiredis_errno(), endpoint: endpoint, connecting: true)
            context.close()
            return .failure(error)
        }

        var handshake: [RedisCommand] = []
        if let password = configuration.password {
            if let username = configuration.username {
                handshake.append(RedisCommand("AUTH", username, password))
            } else {
                handshake.append(RedisCommand("AUTH", password))
            }
        }
        if let database = configuration.database, database != 0 {
            handshake.append(RedisCommand("SELECT", String(database)))
        }
        for command in handshake {
            guard context.append(command) else {
                let error = context.currentError()
                context.close()
                return .failure(error)
            }
            switch context.readReply() {
            case .success:
                continue
            case let .failure(error):
                context.close()
                if error.code == .serverError {
                    let name = command.arguments.first.map { String(decoding: $0, as: UTF8.self) } ?? "handshake"
                    let code: RedisError.Code = name.uppercased() == "SELECT" ? .databaseSelectionFailed : .authenticationFailed
                    return .failure(RedisError(code: code, endpoint: endpoint, message: "\(name): \(error.message)"))
                }
                return .failure(error)
            }
        }
        return .success(context)
    }

    /// Formats a command into the output buffer (nothing is written to the socket yet).
    func append(_ command: RedisCommand) -> Bool {
        guard let handle else { return false }
        let status = command.withWireBytes { wire -> Int32 in
            guard let base = wire.baseAddress else { return REDIS_ERR }
            return redisAppendFormattedCommand(handle, base, wire.count)
        }
        return status == REDIS_OK
    }

    /// Flushes pending output, then reads one reply. Error replies come back as `.serverError`;
    /// any other failure leaves the context unusable and the caller must ``close()`` it.
    func readReply() -> Result<RedisValue, RedisError> {
        guard let handle else {
            return .failure(RedisError(code: .connectionClosed, endpoint: endpoint, message: "context already closed"))
        }
        var reply: UnsafeMutablePointer<redisReply>?
        let status = chiredis_get_reply(handle, &reply)
        let savedErrno = chiredis_errno()
        guard status == REDIS_OK, let reply else {
            if let reply { freeReplyObject(reply) }
            if handle.pointee.err == 0 {
                return .failure(RedisError(code: .protocolError, endpoint: endpoint, message: "no reply and no error"))
            }
            return .failure(Self.classify(handle, errno: savedErrno, endpoint: endpoint, connecting: false))
        }
        defer { freeReplyObject(reply) }
        if reply.pointee.type == REDIS_REPLY_ERROR {
            return .failure(RedisError(code: .serverError, endpoint: endpoint, message: Self.text(reply)))
        }
        return Self.value(reply, endpoint: endpoint)
    }

    /// The socket, for `poll`; -1 once closed.
    var fileDescriptor: Int32 {
        handle?.pointee.fd ?? -1
    }

    /// Whether the server has closed the connection (EOF or reset waiting on an idle socket),
    /// checked without blocking before a batch is written, so that a server that restarted since
    /// the last command costs a reconnect rather than a failed command.
    var peerHasClosed: Bool {
        let descriptor = fileDescriptor
        guard descriptor >= 0 else { return true }
        var event = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&event, 1, 0) > 0 else { return false }
        if event.revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0 { return true }
        var byte: UInt8 = 0
        let peeked = recv(descriptor, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        return peeked == 0 || (peeked < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
    }

    /// Writes the whole output buffer (blocking, bounded by the command timeout).
    func flush() -> Result<Void, RedisError> {
        guard let handle else {
            return .failure(RedisError(code: .connectionClosed, endpoint: endpoint, message: "context already closed"))
        }
        var done: Int32 = 0
        while done == 0 {
            if redisBufferWrite(handle, &done) != REDIS_OK {
                return .failure(Self.classify(handle, errno: chiredis_errno(), endpoint: endpoint, connecting: false))
            }
        }
        return .success(())
    }

    /// Reads what the socket has (call only when `poll` says it is readable) and returns every
    /// complete reply. EOF and socket errors are failures; the caller must then ``close()``.
    func readAvailable() -> Result<[RedisValue], RedisError> {
        guard let handle else {
            return .failure(RedisError(code: .connectionClosed, endpoint: endpoint, message: "context already closed"))
        }
        if redisBufferRead(handle) != REDIS_OK {
            return .failure(Self.classify(handle, errno: chiredis_errno(), endpoint: endpoint, connecting: false))
        }
        var replies: [RedisValue] = []
        while true {
            var reply: UnsafeMutablePointer<redisReply>?
            if chiredis_get_reply_from_reader(handle, &reply) != REDIS_OK {
                if let reply { freeReplyObject(reply) }
                return .failure(Self.classify(handle, errno: chiredis_errno(), endpoint: endpoint, connecting: false))
            }
            guard let reply else { return .success(replies) }
            let value = Self.value(reply, endpoint: endpoint)
            freeReplyObject(reply)
            switch value {
            case let .success(value): replies.append(value)
            case let .failure(error): return .failure(error)
            }
        }
    }

    private func currentError() -> RedisError {
        guard let handle else {
            return RedisError(code: .connectionClosed, endpoint: endpoint, message: "context already closed")
        }
        return Self.classify(handle, errno: chiredis_errno(), endpoint: endpoint, connecting: false)
    }

    private static func value(_ reply: UnsafePointer<redisReply>, endpoint: RedisEndpoint) -> Result<RedisValue, RedisError> {
        switch reply.pointee.type {
        case REDIS_REPLY_STATUS:
            return .success(.simpleString(text(reply)))
        case REDIS_REPLY_STRING:
            return .success(.bulkString(bytes(reply)))
        case REDIS_REPLY_INTEGER:
            return .success(.integer(Int64(reply.pointee.integer)))
        case REDIS_REPLY_NIL:
            return .success(.null)
        case REDIS_REPLY_ERROR:
            return .success(.error(text(reply)))
        case REDIS_REPLY_ARRAY:
            var elements: [RedisValue] = []
            elements.reserveCapacity(reply.pointee.elements)
            for index in 0..<reply.pointee.elements {
                guard let element = chiredis_element(reply, index) else {
                    return .failure(RedisError(code: .protocolError, endpoint: endpoint, message: "array element \(index) missing"))
                }
                switch value(element, endpoint: endpoint) {
                case let .success(value): elements.append(value)
                case let .failure(error): return .failure(error)
                }
            }
            return .success(.array(elements))
        default:
            return .failure(RedisError(code: .protocolError, endpoint: endpoint, message: "unknown reply type \(reply.pointee.type)"))
        }
    }

    private static func bytes(_ reply: UnsafePointer<redisReply>) -> [UInt8] {
        guard let start = reply.pointee.str, reply.pointee.len > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: start, count: reply.pointee.len))
    }

    private static func text(_ reply: UnsafePointer<redisReply>) -> String {
        guard let start = reply.pointee.str, reply.pointee.len > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: start, count: reply.pointee.len), as: UTF8.self)
    }

    /// What gai_strerror says (glibc, musl) when a name cannot be resolved.
    private static let resolverMessages = [
        "name or service not known", "temporary failure in name resolution", "no address associated with hostname",
        "non-recoverable failure in name resolution", "servname not supported", "name does not resolve",
        "address family for hostname not supported",
    ]

    /// Turns the context's error flags (and the errno saved right after the failing call)
    /// into a typed error.
    private static func classify(
        _ context: UnsafePointer<redisContext>,
        errno savedErrno: Int32,
        endpoint: RedisEndpoint,
        connecting: Bool
    ) -> RedisError {
        let text = String(cString: chiredis_errstr(context))
        let lowered = text.lowercased()
        let code: RedisError.Code
        switch context.pointee.err {
        case REDIS_ERR_EOF:
            code = .connectionClosed
        case REDIS_ERR_PROTOCOL:
            code = .protocolError
        case REDIS_ERR_IO:
            if lowered.contains("refused") || savedErrno == ECONNREFUSED
                || (connecting && (savedErrno == ENOENT || lowered.contains("no such file")))
            {
                code = .connectionRefused
            } else if lowered.contains("timed out") || lowered.contains("temporarily unavailable")
                || savedErrno == EAGAIN || savedErrno == EWOULDBLOCK || savedErrno == ETIMEDOUT
                || savedErrno == EINPROGRESS
            {
                code = .timeout
            } else if lowered.contains("reset") || lowered.contains("broken pipe")
                || savedErrno == ECONNRESET || savedErrno == EPIPE
            {
                code = .connectionClosed
            } else {
                code = .io
            }
        case REDIS_ERR_OTHER where connecting && resolverMessages.contains(where: { lowered.contains($0) }):
            // hiredis reports a failed getaddrinfo with gai_strerror's text.
            guard case let .tcp(host, _) = endpoint.address else { fallthrough }
            return RedisError(code: .nameResolutionFailed, endpoint: endpoint, message: "could not resolve \(host): \(text)")
        default:
            code = .io
        }
        let phase = connecting ? "connect: " : ""
        return RedisError(code: code, endpoint: endpoint, message: phase + text)
    }
}

extension timeval {
    /// A `timeval` for a duration, at least one microsecond: hiredis reads zero as "no timeout".
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let microseconds = Int(attoseconds / 1_000_000_000_000)
        if seconds < 0 || (seconds == 0 && microseconds < 1) {
            self.init(tv_sec: 0, tv_usec: 1)
        } else {
            self.init(tv_sec: Int(seconds), tv_usec: microseconds)
        }
    }
}
