import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Cleanup when a tool that started servers is interrupted.
public enum TerminationCleanup {
    private static let handlers = Mutex<SignalHandlers?>(nil)

    /// On SIGINT, SIGTERM or SIGHUP: kill every server and helper this process started, remove
    /// the servers' directories, and exit with 128 + the signal. Call it once, early, in a tool
    /// such as the demo; normal exits are covered by an exit handler already.
    public static func install() {
        handlers.withLock { handlers in
            guard handlers == nil else { return }
            handlers = SignalHandlers([SIGINT, SIGTERM, SIGHUP]) { number in
                ServerProcess.killAll()
                for directory in RedisServer.liveDirectories.withLock({ $0 }) {
                    try? FileManager.default.removeItem(atPath: directory)
                }
                _exit(128 + number)
            }
        }
    }
}
