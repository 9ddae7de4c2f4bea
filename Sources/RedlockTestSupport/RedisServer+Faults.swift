import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Faults beyond kill, pause and restart: a slow node, the state of a paused node, and undoing
/// whatever fault a node is in.
extension RedisServer {
    /// Whether the server is frozen by ``pause()`` (the kernel reports it stopped).
    public var isPaused: Bool {
        guard let pid = processIdentifier else { return false }
        return processState(of: pid) == "T"
    }

    /// Slow-node mode: the server answers nothing for `duration` (`DEBUG SLEEP` sent on a
    /// connection of its own), then answers everything that queued up meanwhile, late.
    ///
    /// Unlike ``pause()`` the process runs; it is busy, like a node stuck in a slow command or
    /// a long fork. Returns once the server's main thread is seen asleep (in `/proc`; where
    /// `/proc` does not tell, once the command is sent), so a command sent afterwards is
    /// answered only after the stall. Await ``RedisServerStall/waitUntilOver()``
    /// to know it has ended; killing the server ends it too.
    ///
    /// - Throws: ``RedisServerError/notRunning(port:)`` when the server is not running, is
    ///   paused, or the command could not be sent.
    public func stall(for duration: Duration) async throws -> RedisServerStall {
        guard let pid = processIdentifier, !isPaused else { throw RedisServerError.notRunning(port: port) }
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        let argument = String(format: "%.6f", Swift.max(0, seconds))
        let request = "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$\(argument.utf8.count)\r\n\(argument)\r\n"
        guard let socket = connectLoopback(port: port, receiveTimeout: duration + .seconds(10)) else {
            throw RedisServerError.notRunning(port: port)
        }
        let written = request.utf8CString.withUnsafeBytes { bytes in
            // The terminating NUL is not part of the request.
            send(socket, bytes.baseAddress, bytes.count - 1, Int32(MSG_NOSIGNAL))
        }
        guard written == request.utf8.count else {
            close(socket)
            throw RedisServerError.notRunning(port: port)
        }
        let stall = RedisServerStall(duration: duration, startedAt: .now)
        let thread = Thread { stall.awaitReply(on: socket) }
        // Linux keeps 15 bytes of a thread name.
        thread.name = "stall \(port)"
        thread.stackSize = 128 * 1024
        thread.start()
        // There is no event for "the server is asleep now": watch its main thread's system call.
        // If the stall is already over (a very short one), there is nothing left to wait for.
        let deadline = ContinuousClock.now.advanced(by: .seconds(2))
        while !stall.isOver, mainThreadIsSleeping(pid: pid) == false, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .microseconds(200))
        }
        return stall
    }

    /// Undoes the fault the server is in: restarts it (keeping its data) when it is not
    /// running, resumes it when it is paused. A stall (``stall(for:)``) runs out by itself.
    ///
    /// Do not call it after ``terminate()``: the directory is gone.
    ///
    /// ## The restart hazard
    ///
    /// A node that restarts **without its data** forgets the lock keys it held. If it was in the
    /// majority a holder acquired on, another client can win a majority that overlaps the
    /// holder's only in the restarted node: two holders at once, both leases valid. Redlock
    /// does not survive this. Exclude it by starting nodes with
    /// ``RedisServer/Persistence/appendOnlyFsyncAlways`` and restarting them keeping their data
    /// (every acknowledged `SET` is on disk before the client hears `OK`), which is what
    /// `heal()` does; or keep a restarted node out of votes for at least the longest expiry.
    public func heal() async throws {
        if !isRunning {
            try await restart(keepingData: true)
        } else if isPaused {
            try resume()
        }
    }
}

// MARK: - Process and socket helpers

/// The state letter of a process in `/proc/PID/stat` (`R`, `S`, `T` for stopped, …), or nil.
func processState(of pid: pid_t) -> Character? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")")
    else { return nil }
    // "PID (COMM) STATE …": COMM may contain spaces and parentheses, so look after the last ')'.
    return stat[stat.index(after: close)...].first { $0 != " " }
}

/// Waits (polling `/proc` every 100 µs, without blocking a thread) until `predicate` holds for
/// the process's state, at most `timeout`. There is no event to wait for: a signal's effect is
/// only visible in `/proc`.
func waitForProcessState(of pid: pid_t, timeout: Duration, _ predicate: (Character?) -> Bool) async {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while !predicate(processState(of: pid)), ContinuousClock.now < deadline {
        try? await Task.sleep(for: .microseconds(100))
    }
}

/// Whether the main thread of `pid` is inside a sleep system call (`nanosleep`,
/// `clock_nanosleep`), or nil when `/proc` does not tell.
func mainThreadIsSleeping(pid: pid_t) -> Bool? {
    if let syscall = try? String(contentsOfFile: "/proc/\(pid)/syscall", encoding: .utf8),
       let first = syscall.split(whereSeparator: { $0 == " " || $0 == "\n" }).first
    {
        // "running" while on a CPU; else the number of the system call it waits in.
        if first == "running" { return false }
        if let number = Int(first) {
            #if arch(x86_64)
            return number == 35 || number == 230
            #elseif arch(arm64)
            return number == 101 || number == 115
            #endif
        }
    }
    // The wait channel names the kernel function, where kernel symbols are visible ("0" if not).
    if let wchan = try? String(contentsOfFile: "/proc/\(pid)/wchan", encoding: .utf8), wchan.contains("_") {
        return wchan.contains("nanosleep")
    }
    return nil
}

/// A blocking TCP socket connected to `127.0.0.1:port` with a receive timeout, or nil.
func connectLoopback(port: Int, receiveTimeout: Duration) -> Int32? {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { return nil }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(truncatingIfNeeded: port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else {
        close(descriptor)
        return nil
    }
    var timeout = timeval(tv_sec: Int(receiveTimeout.components.seconds), tv_usec: 0)
    _ = setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return descriptor
}
