import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A pub/sub subscription connection to one Redis node.
///
/// Channels can be added and removed at any time; the subscriber's own I/O thread waits in
/// `poll` on the socket and a wake-up pipe, delivers each message to `onMessage` (on that
/// thread: keep the handler short), and after a lost connection reconnects with back-off and
/// subscribes again. Messages published while disconnected are lost, as with any Redis
/// subscriber: use it for hints that have a fallback.
///
/// Call ``shutdown()`` when done: the thread keeps the subscriber alive until then.
package final class RedisSubscriber: Sendable {
    private struct Shared {
        var channels: [String: Int] = [:]
        var shuttingDown = false
    }

    /// The configuration the subscriber connects with.
    package let configuration: RedisConnectionConfiguration
    private let shared = Mutex(Shared())
    private let exited = OneTimeEvent<Void>()
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let onMessage: @Sendable (_ channel: String, _ payload: [UInt8]) -> Void

    /// Creates a subscriber and starts its thread; it connects once it has a channel.
    package init(
        configuration: RedisConnectionConfiguration,
        onMessage: @escaping @Sendable (_ channel: String, _ payload: [UInt8]) -> Void
    ) {
        self.configuration = configuration
        self.onMessage = onMessage
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) == 0 {
            for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
            _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        let thread = Thread { [self] in run() }
        thread.name = "redis-sub"
        thread.stackSize = 256 * 1024
        thread.start()
    }

    deinit {
        if wakeRead >= 0 { close(wakeRead) }
        if wakeWrite >= 0 { close(wakeWrite) }
    }

    /// Subscribes to `channel` (counted: each call needs one ``unsubscribe(_:)``).
    package func subscribe(_ channel: String) {
        let changed = shared.withLock { shared in
            shared.channels[channel, default: 0] += 1
            return shared.channels[channel] == 1
        }
        if changed { wake() }
    }

    /// Drops one ``subscribe(_:)`` of `channel`; the last one unsubscribes.
    package func unsubscribe(_ channel: String) {
        let changed = shared.withLock { shared in
            guard let count = shared.channels[channel] else { return false }
            if count <= 1 {
                shared.channels[channel] = nil
                return true
            }
            shared.channels[channel] = count - 1
            return false
        }
        if changed { wake() }
    }

    /// Closes the connection and stops the thread; returns once it has exited.
    package func shutdown() async {
        beginShutdown()
        await exited.wait()
    }

    /// Asks the thread to close the connection and exit, without waiting for it.
    package func beginShutdown() {
        shared.withLock { $0.shuttingDown = true }
        wake()
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    private func drainWakeups() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while buffer.withUnsafeMutableBytes({ read(wakeRead, $0.baseAddress, $0.count) }) > 0 {}
    }

    /// The thread: keep the server's subscriptions equal to the wanted channels, deliver messages.
    private func run() {
        var context: HiredisContext?
        var subscribed = Set<String>()
        var backoff = Duration.milliseconds(50)
        while true {
            let (wanted, stop) = shared.withLock { (Set($0.channels.keys), $0.shuttingDown) }
            if stop { break }

            var failure: RedisError?
            if context == nil, !wanted.isEmpty {
                switch HiredisContext.connect(configuration) {
                case let .success(opened):
                    context = opened
                    subscribed = []
                    backoff = .milliseconds(50)
                case let .failure(error):
                    failure = error
                }
            }
            if let open = context, failure == nil {
                failure = synchronize(open, wanted: wanted, subscribed: &subscribed)
            }
            if failure != nil {
                context?.close()
                context = nil
                subscribed = []
                // Wait out the back-off, waking early for shutdown or new channels.
                waitForEvents(socket: -1, timeout: backoff)
                backoff = min(backoff * 2, .seconds(1))
                continue
            }

            let socketReadable = waitForEvents(socket: context?.fileDescriptor ?? -1, timeout: nil)
            if socketReadable, let open = context {
                switch open.readAvailable() {
                case let .success(replies):
                    for reply in replies { deliver(reply) }
                case .failure:
                    open.close()
                    context = nil
                    subscribed = []
                }
            }
        }
        context?.close()
        exited.fire()
    }

    /// Sends SUBSCRIBE/UNSUBSCRIBE for the difference between wanted and subscribed channels.
    private func synchronize(_ context: HiredisContext, wanted: Set<String>, subscribed: inout Set<String>) -> RedisError? {
        let added = wanted.subtracting(subscribed)
        let removed = subscribed.subtracting(wanted)
        guard !added.isEmpty || !removed.isEmpty else { return nil }
        if !added.isEmpty, !context.append(RedisCommand(["SUBSCRIBE"] + added.sorted())) {
            return RedisError(code: .io, endpoint: configuration.endpoint, message: "could not format SUBSCRIBE")
        }
        if !removed.isEmpty, !context.append(RedisCommand(["UNSUBSCRIBE"] + removed.sorted())) {
            return RedisError(code: .io, endpoint: configuration.endpoint, message: "could not format UNSUBSCRIBE")
        }
        if case let .failure(error) = context.flush() { return error }
        subscribed = wanted
        return nil
    }

    private func deliver(_ reply: RedisValue) {
        guard case let .array(parts) = reply, parts.count == 3, parts[0].string == "message",
              let channel = parts[1].string, case let .bulkString(payload) = parts[2]
        else { return }
        onMessage(channel, payload)
    }

    /// Polls the wake-up pipe and `socket` (when ≥ 0). Returns whether the socket is readable.
    @discardableResult
    private func waitForEvents(socket: Int32, timeout: Duration?) -> Bool {
        var descriptors = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        if socket >= 0 { descriptors.append(pollfd(fd: socket, events: Int16(POLLIN), revents: 0)) }
        let milliseconds = timeout.map { Int32(clamping: $0.components.seconds * 1_000 + $0.components.attoseconds / 1_000_000_000_000_000) } ?? -1
        let count = descriptors.withUnsafeMutableBufferPointer { buffer in
            poll(buffer.baseAddress, nfds_t(buffer.count), milliseconds)
        }
        guard count > 0 else { return false }
        if descriptors[0].revents != 0 { drainWakeups() }
        return descriptors.count > 1 && descriptors[1].revents != 0
    }
}
