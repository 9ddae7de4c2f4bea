import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Servers that a process using this module started and left running when it died without its
/// exit handler (SIGKILL, a crash): each server works in its directory `TMP/swift-redlock-PID-…`,
/// PID its starter's. ``RedisServer/start(persistence:tls:arguments:clockShim:)`` reaps them once
/// per process, before its first server, so a killed test run leaks its servers only until the
/// next run begins.
public enum OrphanServers {
    /// What ``reap(in:)`` did.
    public struct Reaped: Sendable, Equatable {
        /// The processes sent SIGKILL: `redis-server` processes working in a directory of a
        /// starter no longer alive.
        public var killed: [pid_t] = []
        /// The directories removed (the killed servers', and those left without a server).
        public var removed: [String] = []
    }

    /// Kills (SIGKILL) every `redis-server` process whose working directory is
    /// `base/swift-redlock-PID-…` of a PID that is not alive, and removes such directories.
    /// Never touches what belongs to a live process (this one included) or anything it cannot
    /// read; a PID reused by another process keeps its directories until that one exits too.
    /// (A server's working directory is its `--dir`; its command line cannot tell, as
    /// `redis-server` overwrites it with its title.)
    ///
    /// - Parameter base: Where the servers' directories are; the default is the temporary
    ///   directory the servers are made in.
    @discardableResult
    public static func reap(in base: String = FileManager.default.temporaryDirectory.path) -> Reaped {
        var reaped = Reaped()
        let prefix = base + "/" + RedisServer.directoryPrefix
        var orphaned = Set<String>()
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = pid_t(entry), pid != getpid(),
                  let directory = workingDirectory(of: pid), directory.hasPrefix(prefix),
                  let owner = owner(of: directory, prefix: prefix), !isAlive(owner),
                  (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) == "redis-server\n"
            else { continue }
            if kill(pid, SIGKILL) == 0 { reaped.killed.append(pid) }
            orphaned.insert(directory)
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
        for name in names where name.hasPrefix(RedisServer.directoryPrefix) {
            let directory = base + "/" + name
            if let owner = owner(of: directory, prefix: prefix), !isAlive(owner) { orphaned.insert(directory) }
        }
        for directory in orphaned.sorted() where FileManager.default.fileExists(atPath: directory) {
            if (try? FileManager.default.removeItem(atPath: directory)) != nil { reaped.removed.append(directory) }
        }
        return reaped
    }

    /// The process's working directory, if it can be read (without the ` (deleted)` that marks
    /// one removed meanwhile).
    private static func workingDirectory(of pid: pid_t) -> String? {
        guard let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd") else { return nil }
        let deleted = " (deleted)"
        return path.hasSuffix(deleted) ? String(path.dropLast(deleted.count)) : path
    }

    /// The starter's PID in `directory` (`prefix` + PID + `-…`).
    private static func owner(of directory: String, prefix: String) -> pid_t? {
        let rest = directory.dropFirst(prefix.count)
        guard let dash = rest.firstIndex(of: "-") else { return nil }
        return pid_t(rest[..<dash])
    }

    /// Whether a process with `pid` exists (one of another user's counts as alive).
    private static func isAlive(_ pid: pid_t) -> Bool {
        pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)
    }
}
