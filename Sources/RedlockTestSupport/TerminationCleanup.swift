import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Cleanup when a tool that started servers is interrupted.
public enum TerminationCleanup {
    private static let sources = Mutex<[any DispatchSourceSignal]>([])

    /// On SIGINT, SIGTERM or SIGHUP: kill every server and helper this process started, remove
    /// the servers' directories, and exit with 128 + the signal. Call it once, early, in a tool
    /// such as the demo; normal exits are covered by an exit handler already.
    public static func install() {
        sources.withLock { sources in
            guard sources.isEmpty else { return }
            for number in [SIGINT, SIGTERM, SIGHUP] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler {
                    ServerProcess.killAll()
                    for directory in RedisServer.liveDirectories.withLock({ $0 }) {
                        try? FileManager.default.removeItem(atPath: directory)
                    }
                    _exit(128 + number)
                }
                source.resume()
                sources.append(source)
            }
        }
    }
}
