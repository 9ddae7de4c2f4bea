import Foundation

/// Starts a thread of the library's own named `name`, running `body`.
///
/// The name is set from the new thread itself: Foundation on Linux names the system thread only
/// then (set before `start()`, it stays Foundation's alone, and the thread keeps its creator's
/// name, a pool thread's `…default-qos`). With it, `top -H`, `ps -L`, `gdb` and `/proc` show
/// `redlock-io`, `redlock-timer`, `redis-connect`.
package func startNamedThread(_ name: String, stackSize: Int, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread {
        Thread.current.name = name
        body()
    }
    thread.name = name
    thread.stackSize = stackSize
    thread.start()
}
