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
    /// Separate lock processes (`redlock-worker`): a holder that dies, exclusion across
    /// processes under a nemesis, and what failed acquires leave behind in a process.
    @Suite("Processes")
    struct Processes {
        @Test("a holder process killed while holding: another client acquires after its lease expires, not before")
        func holderDies() async throws {
            let worker = try workerExecutable()
            try await withCluster(3) { cluster in
                let expiry = Duration.milliseconds(1_500)
                let holder = try await HelperProcess.start(
                    executable: worker,
                    arguments: workerArguments("hold", cluster: cluster, lock: "orphaned", [
                        "--expiry-ms", "1500", "--timeout-factor", "0.1",
                    ]),
                    readyMarker: "holding"
                )
                guard let line = holder.output.split(separator: "\n").first(where: { $0.hasPrefix("acquired ") }),
                      case let fields = keyValuePairs(line),
                      let acquiredNs = fields["acquire_ns"].flatMap({ Int64($0) }),
                      let validUntilNs = fields["valid_until_ns"].flatMap({ Int64($0) }),
                      let heldValue = fields["value"]
                else {
                    await holder.kill()
                    Issue.record("the holder printed no lease: \(holder.output)")
                    return
                }
                #expect(await holder.kill() == .signalled(SIGKILL))
                // The holder returned at its quorum, so its key is on at least 2 of the 3 nodes.
                #expect(try await values(of: "orphaned", on: cluster.servers).filter { $0 == heldValue }.count >= 2)

                let client = try await cluster.makeClient()
                // Still within the dead holder's lease: its keys are there, nobody gets in.
                let probeStart = MachineClock.nanoseconds(.now)
                let early = await #expect(throws: RedlockError.self) {
                    try await client.makeLock("orphaned", options: LockOptions(tries: 1)).tryLock()
                }
                #expect(probeStart < validUntilNs, "the probe ran before the lease ran out (machine too slow?)")
                #expect(early?.code == .taken)

                // lock() retries until the keys expire on the nodes.
                let lock = try client.makeLock("orphaned", options: LockOptions(
                    expiry: .seconds(5), tries: 100_000, retryDelay: .constant(.milliseconds(5)), timeoutFactor: 0.1
                ))
                let lease = try await lock.lock()
                let acquiredAfterNs = MachineClock.nanoseconds(.now)
                let lateness = Duration.nanoseconds(acquiredAfterNs - validUntilNs)
                print("holder died: next holder acquired \(lateness.formatted) after the dead holder's validUntil")
                #expect(acquiredAfterNs >= validUntilNs, "acquired before the dead holder's lease ran out")
                // …and soon after its keys expired: expiry after its acquire, plus retry slack.
                #expect(acquiredAfterNs <= acquiredNs + Int64(expiry.seconds * 1e9) + 1_000_000_000)
                #expect(try await values(of: "orphaned", on: cluster.servers).filter { $0 == lease.value }.count >= 2)
                try await lock.unlock(lease)
            }
        }

        @Test(
            "4 worker processes keep mutual exclusion on one lock (and, with fencing, strictly increasing tokens) while a nemesis kills, stops, stalls and restarts 2 of 5 nodes, delays, black-holes and resets their connections, and breaks the path of the open ones (their bytes delivered late, new connections passing)",
            arguments: [false, true]
        )
        func exclusionUnderNemesis(fencing: Bool) async throws {
            try await contendUnderNemesis(fencing: fencing, fair: false)
        }

        @Test("the same with a fair lock: waiters queued on the nodes, each release handing the lock to the first in line")
        func fairExclusionUnderNemesis() async throws {
            try await contendUnderNemesis(fencing: false, fair: true)
        }

        /// 4 workers contend on one lock while the nemesis runs, then the logs are checked.
        private func contendUnderNemesis(fencing: Bool, fair: Bool) async throws {
            let worker = try workerExecutable()
            let workerCount = 4
            try await withCluster(5, persistence: .appendOnlyFsyncAlways) { cluster in
                // The workers reach each node through a proxy, for the network faults.
                let proxies = try cluster.servers.map { try FaultProxy.start(to: $0.endpoint) }
                defer { for proxy in proxies { proxy.stop() } }
                try await withTemporaryDirectory { directory in
                    let logs = (0..<workerCount).map { "\(directory)/worker-\($0).log" }
                    var workers: [HelperProcess] = []
                    let nodes = proxies.map { "127.0.0.1:\($0.port)" }.joined(separator: ",")
                    do {
                        for log in logs {
                            let options = [
                                "--log", log, "--expiry-ms", "600", "--timeout-factor", "0.2",
                                "--connect-timeout-ms", "100", "--command-timeout-ms", "300",
                                "--hold-max-ms", "5", "--retry-min-ms", "2", "--retry-max-ms", "25", "--extend-every", "4",
                            ] + (fencing ? ["--fencing"] : []) + (fair ? ["--fair"] : [])
                            workers.append(try await HelperProcess.start(
                                executable: worker,
                                arguments: workerArguments("contend", cluster: cluster, nodes: nodes, lock: "nemesis", options),
                                readyMarker: "ready pid="
                            ))
                        }
                        let nemesis = Nemesis(servers: cluster.servers, proxies: proxies, maximumFaulty: 2, faults: Self.drawnFaults)
                        // The fenced run is longer: it has to show thousands of tokens in order.
                        let faults = try await nemesis.run(for: fencing ? .seconds(24) : .seconds(12))
                        for worker in workers { worker.signal(SIGTERM) }
                        var terminations: [HelperProcess.Termination] = []
                        for worker in workers { terminations.append(await waitForExit(worker, within: .seconds(20))) }

                        try check(
                            logs: logs, faults: faults, workers: workers, terminations: terminations, servers: cluster.servers,
                            fencing: fencing
                        )
                    } catch {
                        for worker in workers { await worker.kill() }
                        throw error
                    }
                    for worker in workers { await worker.kill() }
                }
            }
        }

        /// What the nemesis draws from: process faults, and network faults through the proxies.
        private static let drawnFaults = NodeFault.processFaults + [.networkDelay, .networkStall, .networkReset, .networkPathBreak]

        /// The checks and report of ``contendUnderNemesis(fencing:fair:)``.
        private func check(
            logs: [String], faults: [FaultRecord], workers: [HelperProcess],
            terminations: [HelperProcess.Termination], servers: [RedisServer], fencing: Bool
        ) throws {
            for (worker, termination) in zip(workers, terminations) {
                #expect(termination == .exited(0), "\(worker) ended with \(termination): \(worker.output.suffix(500))")
                #expect(worker.output.contains("done acquisitions="), "\(worker) did not finish cleanly")
            }
            var acquisitions: [Acquisition] = []
            for log in logs {
                let mine = try Acquisition.parse(log: String(contentsOfFile: log, encoding: .utf8))
                #expect(!mine.isEmpty, "worker log \(log) has no acquisition")
                acquisitions += mine
            }

            // Never more than 2 of 5 nodes faulty at once, and every node healed.
            var maximumFaulty = 0
            for fault in faults {
                maximumFaulty = max(maximumFaulty, faults.filter { $0.start <= fault.start && $0.end > fault.start }.count)
            }
            #expect(maximumFaulty <= 2)
            #expect(servers.allSatisfy { $0.isRunning && !$0.isPaused })
            let kinds = Dictionary(grouping: faults, by: \.fault).mapValues(\.count)
            // About 50 faults or more, drawn in rounds of the 8 kinds: every kind comes up.
            for kind in Self.drawnFaults { #expect(kinds[kind, default: 0] > 0, "no \(kind) fault was injected") }

            let faultPeriods = faults.map { (MachineClock.nanoseconds($0.start), MachineClock.nanoseconds($0.end)) }
            let duringFaults = acquisitions.filter { acquisition in
                faultPeriods.contains { $0.0 <= acquisition.acquired && acquisition.acquired <= $0.1 }
            }.count
            let empty = acquisitions.filter(\.isEmpty).count
            let violations = ExclusionChecker.overlaps(in: acquisitions)
            let regressions = ExclusionChecker.fencingRegressions(in: acquisitions)
            let perWorker = Dictionary(grouping: acquisitions, by: \.process).mapValues(\.count).values.sorted()
            let kindText = Self.drawnFaults.map { "\($0) \(kinds[$0, default: 0])" }.joined(separator: ", ")
            print("""
                nemesis: acquisitions checked \(acquisitions.count) (per worker \(perWorker), \(duringFaults) during faults, \
                \(empty) expired before use); faults injected \(faults.count) (\(kindText)), at most \(maximumFaulty) nodes at once; \
                violations \(violations.count); fencing \(regressions.map { "regressions \($0.count)" } ?? "tokens not logged")
                """)
            for (first, second) in violations.prefix(5) {
                Issue.record("overlapping critical sections: \(first) and \(second)")
            }
            #expect(violations.isEmpty)
            #expect(regressions?.isEmpty ?? true, "fencing tokens went backwards: \(regressions?.prefix(5) ?? [])")
            if fencing {
                #expect(acquisitions.allSatisfy { $0.fencingToken != nil }, "every fenced acquisition logs its token")
            }
            #expect(acquisitions.count >= 100, "too little contention to prove anything")
            #expect(duringFaults > 0)
            #expect(faults.count >= 10)
        }

        @Test("the checker finds overlapping critical sections and ignores leases that ran out before use")
        func checkerFindsOverlaps() throws {
            let log = """
                # pid acquire_ns release_ns valid_until_ns fencing_token
                1 100 200 500 -
                2 150 300 400 -
                1 310 320 900 7
                3 330 400 335 8
                2 500 600 450 -
                """
            let acquisitions = try Acquisition.parse(log: log)
            #expect(acquisitions.count == 5)
            let overlaps = ExclusionChecker.overlaps(in: acquisitions)
            // [100, 200] of pid 1 and [150, 300] of pid 2; [310, 320] and [330, 335] touch nothing;
            // pid 2's last lease ran out (450) before it was acquired (500).
            #expect(overlaps.count == 1)
            #expect(overlaps.first.map { [$0.0.process, $0.1.process] } == [1, 2])
            #expect(acquisitions.filter(\.isEmpty).count == 1)
            #expect(ExclusionChecker.fencingRegressions(in: acquisitions)?.isEmpty == true)
            #expect(ExclusionChecker.fencingRegressions(in: try Acquisition.parse(log: "1 1 2 3 9\n2 4 5 6 8\n"))?.count == 1)
            #expect(throws: MalformedLog.self) { try Acquisition.parse(log: "1 2 3\n") }
        }

        @Test("with no descriptor left, making a client and locking fail with a typed error in bounded time; with descriptors back, that client and a new one lock")
        func descriptorsExhausted() async throws {
            let worker = try workerExecutable()
            try await withCluster(3) { cluster in
                guard let (line, report) = try await workerReport(
                    worker, "exhausted", cluster: cluster, ["--expiry-ms", "2000"], within: .seconds(30), rerunTrapsBefore: "exhausted fed"
                ) else { return }
                print("descriptors exhausted: \(line)")
                // The client's event loop could not get its epoll instance: every node's command
                // fails at once with that cause.
                #expect(report["first"] == "noQuorum", "\(line)")
                #expect(report["message"]?.hasPrefix("io:_event_loop:_epoll_create1:_Too_many_open_files") == true, "\(line)")
                // A task that prefers that client's executor ran (on the global executor).
                #expect(report["executor"] == "ok", "\(line)")
                // With descriptors back, the client made without them locks (its event loop
                // starts at its next command), and so does a new one.
                #expect(report["again"] == "ok", "\(line)")
                #expect(report["second"] == "ok", "\(line)")
            }
        }

        @Test("after 1,000 failed acquires against dead nodes, a process's descriptors and threads are back to their starting counts")
        func resourceHygiene() async throws {
            let worker = try workerExecutable()
            try await withCluster(5) { cluster in
                for index in [0, 2, 4] { await cluster.servers[index].kill() }

                // In a process of its own, where nothing else opens descriptors or threads.
                guard let (line, report) = try await workerReport(worker, "hygiene", cluster: cluster, [
                    "--acquires", "1000", "--expiry-ms", "1000", "--timeout-factor", "0.1",
                    "--connect-timeout-ms", "200", "--command-timeout-ms", "500",
                ], within: .seconds(60)) else { return }
                print("resource hygiene: \(line)")
                func number(_ key: String) -> Int? { report[key].flatMap { Int($0) } }
                #expect(report["succeeded"] == "0")
                #expect(report["failures"] == "noQuorum:1000")
                #expect(number("fds_after") != nil && number("fds_after") == number("fds_before"))
                // The runtime may retire an idle pool thread meanwhile, never add one for good.
                if let before = number("threads_before"), let after = number("threads_after") {
                    #expect(after <= before)
                } else {
                    Issue.record("no thread counts in the report")
                }
                #expect((number("threads_peak") ?? 0) > (number("threads_before") ?? 0), "the client's threads were counted")

                // The same in this process, for what can be told apart from other suites' work:
                // no socket to these nodes stays open.
                let ports = Set(cluster.servers.map(\.port))
                let client = try await cluster.makeClient(connect: false)
                let lock = try client.makeLock("hygiene", options: LockOptions(expiry: .seconds(1), tries: 1, timeoutFactor: 0.1))
                for _ in 0..<200 {
                    let error = await #expect(throws: RedlockError.self) { try await lock.tryLock() }
                    if error?.code != .noQuorum { Issue.record("expected noQuorum, got \(String(describing: error))") }
                }
                #expect(openSockets(toPorts: ports) > 0)
                await client.shutdown()
                #expect(openSockets(toPorts: ports) == 0, "sockets to the nodes outlived the client")
            }
        }
    }
}

/// How many of this process's descriptors are sockets connected to one of `ports` on loopback.
///
/// Asks each socket for its peer (`getpeername`) rather than reading `/proc/net/tcp`, which on a
/// busy test machine lists tens of thousands of other sockets.
func openSockets(toPorts ports: Set<Int>) -> Int {
    let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    var count = 0
    for name in descriptors {
        guard let descriptor = Int32(name),
              let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(name)"),
              target.hasPrefix("socket:")
        else { continue }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(descriptor, $0, &length) }
        }
        guard named == 0, address.sin_family == sa_family_t(AF_INET),
              address.sin_addr.s_addr == inet_addr("127.0.0.1")
        else { continue }
        if ports.contains(Int(UInt16(bigEndian: address.sin_port))) { count += 1 }
    }
    return count
}
