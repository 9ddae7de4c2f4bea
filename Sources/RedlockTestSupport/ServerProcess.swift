import CProcessSpawn
import Foundation
import RedlockTransport
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One running child process (a `redis-server`, or a helper such as the lock worker): spawned
/// with its output on a pipe, watched by a thread that reports readiness (a marker line in its
/// output), drains the log and reaps the process when it exits.
final class ServerProcess: Sendable {
    enum Readiness: Sendable {
        case ready
        case failed(log: String)
    }

    private struct State {
        /// The output's first 32 KiB (what explains a failed start), and its last 32 KiB after
        /// that (how it ended), with the count of bytes left out between them.
        var head = ""
        var tail: [UInt8] = []
        var omitted = 0
        /// The raw `waitpid` status once reaped; signals are only sent before.
        var exitStatus: Int32?

        static let part = 32 * 1024

        mutating func append(_ bytes: ArraySlice<UInt8>) {
            if head.utf8.count < Self.part {
                head += String(decoding: bytes, as: UTF8.self)
                return
            }
            tail += bytes
            if tail.count > Self.part {
                let excess = tail.count - Self.part
                tail.removeFirst(excess)
                omitted += excess
            }
        }

        var log: String {
            let end = String(decoding: tail, as: UTF8.self)
            return omitted == 0 ? head + end : head + "\n[… \(omitted) bytes left out …]\n" + end
        }
    }

    let pid: pid_t
    /// The output that marks the process as ready.
    private let readyMarker: String
    private let state = Mutex(State())
    private let readiness = OneTimeEvent<Readiness>()
    private let exited = OneTimeEvent<Void>()

    private init(pid: pid_t, readyMarker: String) {
        self.pid = pid
        self.readyMarker = readyMarker
    }

    /// Spawns `executable` with `arguments`; its stdout and stderr go to a pipe this object reads.
    /// Every other descriptor of this process is closed in the child. The process counts as
    /// ready once its output contains `readyMarker` (by default redis-server's).
    static func spawn(
        executable: String,
        arguments: [String],
        readyMarker: String = "Ready to accept connections"
    ) throws -> ServerProcess {
        let argv = [executable] + arguments
        var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArguments.append(nil)
        defer { for pointer in cArguments { free(pointer) } }
        guard !cArguments.dropLast().contains(where: { $0 == nil }) else {
            throw RedisServerError.spawnFailed("out of memory copying arguments")
        }
        var pid: pid_t = 0
        var readEnd: Int32 = -1
        let status = redlock_spawn_with_pipe(executable, &cArguments, &pid, &readEnd)
        guard status == 0 else {
            throw RedisServerError.spawnFailed("\(executable): \(String(cString: strerror(status)))")
        }
        let process = ServerProcess(pid: pid, readyMarker: readyMarker)
        children.withLock { $0[pid] = process }
        let descriptor = readEnd
        let thread = Thread { process.watch(descriptor) }
        // Linux keeps 15 bytes of a thread name; a longer one is not applied at all.
        thread.name = "watch \(pid)"
        thread.stackSize = 256 * 1024
        thread.start()
        return process
    }

    /// Reads the log until EOF, noting readiness, then reaps the process.
    private func watch(_ descriptor: Int32) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { bytes in
                read(descriptor, bytes.baseAddress, bytes.count)
            }
            if count < 0, errno == EINTR { continue }
            if count <= 0 { break }
            let ready: Bool = state.withLock { state in
                state.append(buffer[0..<count])
                return state.head.contains(readyMarker)
            }
            if ready { readiness.fire(.ready) }
        }
        close(descriptor)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        Self.children.withLock { _ = $0.removeValue(forKey: pid) }
        let log = state.withLock { state in
            state.exitStatus = status
            return state.log
        }
        // No effect if it became ready before exiting.
        readiness.fire(.failed(log: log))
        exited.fire()
    }

    /// Waits until the server logs that it accepts connections, or exits.
    func waitUntilReady() async -> Readiness {
        await readiness.wait()
    }

    /// Waits until the process has exited and been reaped.
    func waitUntilExited() async {
        await exited.wait()
    }

    var hasExited: Bool { state.withLock { $0.exitStatus != nil } }

    /// The raw `waitpid` status once the process has been reaped, else nil.
    var exitStatus: Int32? { state.withLock { $0.exitStatus } }

    /// The log collected so far: its first 32 KiB and its last 32 KiB.
    var log: String { state.withLock { $0.log } }

    /// Sends a signal unless the process has already been reaped (so a reused pid is never hit).
    func signal(_ number: Int32) {
        state.withLock { state in
            if state.exitStatus == nil { _ = kill(pid, number) }
        }
    }

    // MARK: - Every child of this process

    /// Children not yet reaped. An exit handler kills them if a test or tool forgets them;
    /// ``killAll()`` does it on demand (e.g. from a signal handler).
    private static let children: Mutex<[pid_t: ServerProcess]> = {
        atexit { ServerProcess.killAll() }
        return Mutex([:])
    }()

    /// Sends SIGKILL to every child not yet reaped.
    static func killAll() {
        for child in children.withLock({ Array($0.values) }) { child.signal(SIGKILL) }
    }
}
