import Dispatch
import Redlock
import RedlockTestSupport
import RedlockTransport
import Synchronization

/// Sets `name` to another holder's value on the given servers.
func occupy(_ name: String, on servers: [RedisServer], milliseconds: Int = 60_000) async throws {
    for server in servers { try await server.set(name, to: "someone-else", expiry: .milliseconds(milliseconds)) }
}

/// A counter that is deliberately not atomic across suspension points: read, yield, write.
actor UnsafeCounter {
    private(set) var value = 0
    private(set) var inside = 0
    private(set) var maximumInside = 0

    func enter() { inside += 1; maximumInside = max(maximumInside, inside) }
    func leave() { inside -= 1 }
    func read() -> Int { value }
    func write(_ newValue: Int) { value = newValue }

    /// Runs `tasks` concurrent tasks that each lock `lock`, read the counter, yield, write it
    /// back plus one, and unlock: without exclusion, increments are lost and `maximumInside`
    /// exceeds 1.
    static func incremented(under lock: DistributedLock, tasks: Int) async throws -> UnsafeCounter {
        let counter = UnsafeCounter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    let lease = try await lock.lock()
                    await counter.enter()
                    let seen = await counter.read()
                    await Task.yield()
                    await counter.write(seen + 1)
                    await counter.leave()
                    try await lock.unlock(lease)
                }
            }
            try await group.waitForAll()
        }
        return counter
    }
}

/// Runs 16 tasks of lock-and-unlock cycles on names never used before (`prefix-task-index`,
/// options from `options(task, index)`) until `cycles` of them completed in all; an attempt
/// that fails is not counted. Returns the number completed (at least `cycles`).
@discardableResult
func cycleFreshLocks(
    on client: RedlockClient, prefix: String, until cycles: Int, options: @escaping @Sendable (_ task: Int, _ index: Int) -> LockOptions
) async -> Int {
    let completed = Locked(0)
    await withTaskGroup { group in
        for task in 0..<16 {
            group.addTask {
                var index = 0
                while completed.value < cycles {
                    index += 1
                    guard let lock = try? client.makeLock("\(prefix)-\(task)-\(index)", options: options(task, index)),
                          let lease = try? await lock.lock() else { continue }
                    try? await lock.unlock(lease)
                    completed.update { $0 += 1 }
                }
            }
        }
    }
    return completed.value
}

/// Sends `PING` on `connection` until one is answered, `tries` times at most (a connect begun
/// while the node could not be reached may fail first); returns whether one was. Its answer
/// comes after everything queued or kept for replay on that connection.
func answersAgain(_ connection: RedisConnection, tries: Int = 50) async -> Bool {
    for _ in 0..<tries where (try? await connection.send(RedisCommand("PING"))) != nil { return true }
    return false
}

/// A value shared between tasks of a test.
final class Locked<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    init(_ value: Value) { storage = Mutex(value) }
    var value: Value { storage.withLock { $0 } }
    func update<R>(_ body: (inout Value) -> R) -> R { storage.withLock { body(&$0) } }
}

/// An executor of the tests' own on a serial dispatch queue that code can recognise
/// (``current``): an actor's serial executor, or a task executor preference.
final class QueueExecutor: SerialExecutor, TaskExecutor {
    private static let key = DispatchSpecificKey<String>()
    private let queue: DispatchQueue

    init(label: String) {
        queue = DispatchQueue(label: label)
        queue.setSpecific(key: Self.key, value: label)
    }

    /// The label of the queue executor the calling code runs on, if any.
    static var current: String? { DispatchQueue.getSpecific(key: key) }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(isolatedTo: self.asUnownedSerialExecutor(), taskExecutor: self.asUnownedTaskExecutor()) }
    }
}

