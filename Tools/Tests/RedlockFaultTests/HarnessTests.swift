import Foundation
import Redlock
import RedlockTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension FaultTests {
    /// The fault harness itself: each fault does what its documentation says, and heals.
    @Suite("Fault harness")
    struct Harness {
        @Test("kill refuses connections; a restart keeps AOF data and loses the rest; a wiped restart loses both")
        func killAndRestart() async throws {
            try await withRedisServers(1, persistence: .appendOnlyFsyncAlways) { durable throws in
                try await withRedisServers(1) { volatile throws in
                    let servers = [durable[0], volatile[0]]
                    for server in servers { try await server.set("k", to: "v") }
                    let ports = servers.map(\.port)

                    for server in servers { await server.kill() }
                    for server in servers {
                        #expect(!server.isRunning)
                        #expect(server.processIdentifier == nil)
                        let error = await #expect(throws: RedisError.self) { try await server.value(of: "k") }
                        #expect(error?.code == .connectionRefused)
                    }

                    for server in servers { try await server.heal() }
                    #expect(servers.map(\.port) == ports)
                    #expect(try await durable[0].value(of: "k") == "v", "appendfsync always keeps an acknowledged write")
                    #expect(try await volatile[0].value(of: "k") == nil, "no persistence: a restart starts empty")

                    try await durable[0].restart(keepingData: false)
                    #expect(durable[0].port == ports[0])
                    #expect(try await durable[0].value(of: "k") == nil, "restart(keepingData: false) wipes the AOF")
                }
            }
        }

        @Test("pause freezes a node until resume; a paused node can be killed and healed")
        func pauseAndResume() async throws {
            try await withRedisServers(1) { servers throws in
                let server = servers[0]
                let connection = RedisConnection(configuration: server.configuration(
                    connectTimeout: .milliseconds(200), commandTimeout: .milliseconds(200)
                ))
                do {
                    try await connection.ping()
                    try await server.pause()
                    #expect(server.isPaused)
                    let error = await #expect(throws: RedisError.self) { try await connection.ping() }
                    #expect(error?.code == .timeout)
                    try server.resume()
                    #expect(!server.isPaused)
                    try await connection.ping()

                    try await server.pause()
                    await server.kill()
                    #expect(!server.isRunning && !server.isPaused)
                    try await server.heal()
                    #expect(server.isRunning)
                    // A fresh connection: the old one's socket died with the killed process.
                    let fresh = RedisConnection(configuration: server.configuration())
                    try await fresh.ping()
                    await fresh.shutdown()
                    await connection.shutdown()
                } catch {
                    try? server.resume()
                    await connection.shutdown()
                    throw error
                }
            }
        }

        @Test("stall (DEBUG SLEEP) holds every answer until it is over, then the node answers again")
        func stall() async throws {
            try await withRedisServers(1) { servers throws in
                let server = servers[0]
                let connection = RedisConnection(configuration: server.configuration(commandTimeout: .seconds(5)))
                do {
                    try await connection.ping()
                    let stall = try await server.stall(for: .milliseconds(400))
                    #expect(!stall.isOver)
                    try await connection.ping()
                    let answered = ContinuousClock.now
                    // The server read DEBUG SLEEP before `stall(for:)` returned, and answers
                    // nothing for 400 ms from then (5 ms for the clock reads around the send).
                    #expect(answered >= stall.startedAt.advanced(by: .milliseconds(395)))
                    await stall.waitUntilOver()
                    #expect(stall.isOver)
                    let (_, quick) = try await measure { try await connection.ping() }
                    #expect(quick < .milliseconds(300))
                    await connection.shutdown()
                } catch {
                    await connection.shutdown()
                    throw error
                }
            }
        }

        @Test("a server whose starter died without stopping it (as after SIGKILL) is killed and its directory removed; a live starter's server is left alone")
        func orphansReaped() async throws {
            // Directories of a starter that cannot be alive (a PID above any pid_max), one with a
            // server working in it: what a killed test run leaves behind. (The server is a child
            // of this process here, so that it is reaped; the reaper goes by the directory.)
            let base = FileManager.default.temporaryDirectory.path
            let directory = "\(base)/swift-redlock-\(Int32.max)-orphan"
            let empty = "\(base)/swift-redlock-\(Int32.max)-empty"
            for path in [directory, empty] { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
            let orphan = try await HelperProcess.start(
                executable: "/usr/bin/redis-server",
                arguments: ["--port", String(try freeLoopbackPort()), "--bind", "127.0.0.1", "--dir", directory, "--save", "", "--appendonly", "no"],
                readyMarker: "Ready to accept connections"
            )
            let reaped = OrphanServers.reap()
            #expect(reaped.killed.contains(orphan.processIdentifier))
            #expect(Set(reaped.removed).isSuperset(of: [directory, empty]))
            #expect(await orphan.waitUntilExited() == .signalled(SIGKILL))
            #expect(!FileManager.default.fileExists(atPath: directory) && !FileManager.default.fileExists(atPath: empty))

            // This process's own server is left alone.
            try await withRedisServers(1) { live throws in
                #expect(OrphanServers.reap().killed.isEmpty)
                #expect(live[0].isRunning && FileManager.default.fileExists(atPath: live[0].directory))
                try await live[0].ping()
            }
        }

        @Test("terminate removes the directory; the machine clock agrees with ContinuousClock")
        func terminateAndClock() async throws {
            let server = try await RedisServer.start()
            #expect(FileManager.default.fileExists(atPath: server.directory))
            await server.terminate()
            #expect(!FileManager.default.fileExists(atPath: server.directory))
            #expect(!server.isRunning)

            let before = MachineClock.nowNanoseconds()
            let instant = ContinuousClock.now
            let after = MachineClock.nowNanoseconds()
            let converted = MachineClock.nanoseconds(instant)
            // Both are CLOCK_BOOTTIME: the conversion lands between the two raw reads.
            #expect(converted >= before - 1_000_000 && converted <= after + 1_000_000)
        }
    }
}
