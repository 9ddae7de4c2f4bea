import Foundation

/// Starts a thread of the library's own named `name`, running `body`.
///
/// The new thread names itself (its system name, as `top -H`, `ps -L`, `gdb` and `/proc` show
/// it: `redlock-io`, `redlock-timer`, `redis-connect`) before `body` runs, by writing
/// `/proc/thread-self/comm` (Linux; at most 15 bytes are kept). Foundation's `Thread.name` names
/// only Foundation's object here: the system thread would keep its creator's name (a pool
/// thread's `…default-qos`), and set from the new thread it races with `start()`. Where `/proc`
/// cannot be written the thread runs unnamed.
package func startNamedThread(_ name: String, stackSize: Int, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread {
        try? name.write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
        body()
    }
    thread.name = name
    thread.stackSize = stackSize
    thread.start()
}
