/// Why a test `redis-server` could not be started or driven.
public enum RedisServerError: Error, Sendable, CustomStringConvertible {
    /// No `redis-server` executable was found on `PATH` (or at `$REDIS_SERVER`).
    case executableNotFound(searched: [String])
    /// The process could not be spawned.
    case spawnFailed(String)
    /// The server exited before it accepted connections; its log says why.
    case exitedDuringStartup(port: Int, log: String)
    /// No free loopback port could be bound.
    case noFreePort(String)
    /// The operation needs a running server, and it is not running.
    case notRunning(port: Int)
    /// ``RedisServer/setClock(rate:offset:)`` on a server started without a clock shim.
    case clockShimMissing
    /// ``RedisServer/setClock(rate:offset:)`` with a rate that is not positive.
    case invalidClockRate(Double)
    /// A replica (``RedisServer/startReplica(through:)``) did not acknowledge a write of its
    /// master's within the time given.
    case replicaNotSynchronised(masterPort: Int)

    /// A message naming the cause and, for a failed start, the tail of the server's log.
    public var description: String {
        switch self {
        case let .executableNotFound(searched):
            return "redis-server not found (looked in \(searched.joined(separator: ", "))); install it, e.g. apt-get install -y redis-server"
        case let .spawnFailed(reason):
            return "could not start redis-server: \(reason)"
        case let .exitedDuringStartup(port, log):
            let tail = log.split(separator: "\n").suffix(5).joined(separator: "\n")
            return "redis-server on port \(port) exited during startup:\n\(tail)"
        case let .noFreePort(reason):
            return "no free loopback port: \(reason)"
        case let .notRunning(port):
            return "redis-server on port \(port) is not running"
        case .clockShimMissing:
            return "the server was started without a clock shim (RedisServer.start(clockShim:)); its clock cannot be set"
        case let .invalidClockRate(rate):
            return "a clock rate must be positive, got \(rate)"
        case let .replicaNotSynchronised(masterPort):
            return "a replica of redis-server on port \(masterPort) did not acknowledge a write within 10 s"
        }
    }
}
