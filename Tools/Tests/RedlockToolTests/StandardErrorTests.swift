import Dispatch
import Foundation
import RedlockOutput
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A pipe for a ``StandardError`` to write to, read by the test.
private final class TestPipe: Sendable {
    let readEnd: Int32
    let writeEnd: Int32

    init() throws {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw CommandTestError("pipe: \(errno)") }
        (readEnd, writeEnd) = (ends[0], ends[1])
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    /// Fills the pipe until it takes no more; leaves the write end non-blocking when asked,
    /// else blocking again.
    func fill(leavingNonBlocking: Bool = false) throws {
        let flags = fcntl(writeEnd, F_GETFL)
        guard flags >= 0, fcntl(writeEnd, F_SETFL, flags | O_NONBLOCK) == 0 else { throw CommandTestError("fcntl: \(errno)") }
        let chunk = [UInt8](repeating: UInt8(ascii: "."), count: 4_096)
        while chunk.withUnsafeBytes({ write(writeEnd, $0.baseAddress, $0.count) }) > 0 {}
        if !leavingNonBlocking { _ = fcntl(writeEnd, F_SETFL, flags) }
    }

    /// What can be read now, without waiting.
    func readAvailable() -> String {
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            var ready = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 0) > 0 else { return text }
            let count = buffer.withUnsafeMutableBytes { Glibc.read(readEnd, $0.baseAddress, $0.count) }
            guard count > 0 else { return text }
            text += String(decoding: buffer.prefix(count), as: UTF8.self)
        }
    }

    /// Reads until what was read contains `marker`, or `limit` passed; what was read.
    func read(until marker: String, within limit: Duration = .seconds(10)) -> String {
        var text = ""
        let deadline = ContinuousClock.now + limit
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while !text.contains(marker), ContinuousClock.now < deadline {
            var ready = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 100) > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { Glibc.read(readEnd, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            text += String(decoding: buffer.prefix(count), as: UTF8.self)
        }
        return text
    }
}

/// Runs `body` on a thread of its own; false when it has not returned within `limit` (it blocked).
private func returns(within limit: Duration, _ body: @escaping @Sendable () -> Void) -> Bool {
    let done = DispatchSemaphore(value: 0)
    Thread {
        body()
        done.signal()
    }.start()
    return done.wait(timeout: .now() + Double(limit.components.seconds)) == .success
}

@Suite("stderr that never holds redlock up")
struct StandardErrorTests {
    @Test("lines queued without a wait never wait for a reader: with the pipe full, 10,000 of them return at once; a line with a wait, queued while the writer is held, drops the lines before it (counted in their place) and goes next; each line comes whole")
    func fullPipe() throws {
        let pipe = try TestPipe()
        try pipe.fill()
        let output = StandardError(descriptor: pipe.writeEnd)
        let padding = String(repeating: "x", count: 100)
        #expect(returns(within: .seconds(10)) {
            for index in 0..<10_000 { output.write("line \(index) \(padding)") }
        }, "a line without a wait waited for the reader")
        // The writer has been held in its first line's write for over 100 ms by now.
        Thread.sleep(forTimeInterval: 0.2)
        // Queued, then its wait (a millisecond) ends with the pipe still full: it stays queued.
        output.write("final", waitingUpTo: .milliseconds(1))
        let text = pipe.read(until: "final\n").replacingOccurrences(of: ".", with: "")
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(lines.last == "final", "\(text.suffix(500))")
        let written = lines.filter { $0.hasPrefix("line ") }
        let notice = lines.first { $0.hasPrefix("redlock: ") }
        let dropped = notice.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
        #expect(notice?.hasSuffix("lines for stderr dropped: it was not read fast enough") == true, "\(lines.suffix(3))")
        #expect(written.count + dropped == 10_000, "\(written.count) written, \(dropped) dropped")
        // Only the line in the write that held the writer went before the final one.
        #expect(written.count == 1, "\(written.count) lines went before the line that waited")
        // Whole, in order, from the first: only lines after the written ones were dropped.
        #expect(written.enumerated().allSatisfy { $0.element == "line \($0.offset) \(padding)" }, "\(written.prefix(3))")
    }

    @Test("at exit, what is queued without a wait has its time to be written (flush)")
    func flushWritesTheQueue() throws {
        let pipe = try TestPipe()
        let output = StandardError(descriptor: pipe.writeEnd)
        for index in 0..<100 { output.write("queued \(index)") }
        output.flush(waitingUpTo: .seconds(5))
        // All of it is there once the flush returned.
        let text = pipe.readAvailable()
        #expect(text.split(separator: "\n").map(String.init) == (0..<100).map { "queued \($0)" })
    }

    @Test("a descriptor left non-blocking by someone else: a line that finds no room waits for it on the writer's thread rather than being lost")
    func nonBlockingDescriptor() throws {
        let pipe = try TestPipe()
        try pipe.fill(leavingNonBlocking: true)
        let output = StandardError(descriptor: pipe.writeEnd)
        output.write("after the filler")
        // The writer meets the full pipe (EAGAIN) before anything is read.
        output.flush(waitingUpTo: .milliseconds(300))
        let text = pipe.read(until: "after the filler\n")
        #expect(text.hasSuffix("after the filler\n"), "\(text.suffix(100))")
    }
}
