import RedlockTransport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension RedlockClient {
    /// How one check of ``RedlockClient/audit(for:)`` came out.
    public struct AuditCheck: Sendable, Hashable, CustomStringConvertible {
        /// The verdict of a check.
        public enum Verdict: String, Sendable, Hashable, Codable {
            /// Safe for Redlock.
            case pass
            /// Works, with a caveat worth knowing.
            case warn
            /// Unsafe or broken for Redlock.
            case fail
            /// Could not be checked (a refused command, say).
            case unknown
        }

        /// What was checked, in this order: `reachable`, `persistence`, `eviction`, `role`,
        /// `cluster`, `version`, `clock` (the offset from this machine), `clock rate`, `epoch`
        /// (the guards' marker), `restart` (the uptime, with ``LockOptions/restartGuard`` only),
        /// `distinct`, `permissions`, `state`. A node that is not reachable has that check only;
        /// one the client refused as a second name of another node's server, `distinct` only.
        public var name: String
        /// The verdict.
        public var verdict: Verdict
        /// What was found, in a sentence.
        public var detail: String

        /// `NAME: VERDICT: DETAIL`.
        public var description: String { "\(name): \(verdict.rawValue): \(detail)" }
    }

    /// The checks of one node.
    public struct NodeAudit: Sendable {
        /// The node's index in ``RedlockClient/nodes``.
        public var node: Int
        /// The node's address.
        public var endpoint: RedisEndpoint
        /// Each check, in the order above.
        public var checks: [AuditCheck]
        /// The server's `run_id`, when `INFO` answered.
        public var runID: String?
        /// The node's clock minus this machine's wall clock, when `TIME` answered (allowing for
        /// half the round trip).
        public var clockOffset: Duration?

        /// With the lock's ``LockOptions/restartGuard`` or ``LockOptions/epochGuard``: how much
        /// longer the node's votes are refused for now, its uptime or data younger than the guard
        /// (the `restart` and `epoch` checks warn; a node without an epoch marker yet counts the
        /// whole guard, which its first guarded acquire starts). Nil when they count now, or
        /// when that could not be told.
        public var votesRefusedFor: Duration?

        /// Whether any check failed.
        public var failed: Bool { checks.contains { $0.verdict == .fail } }
    }

    /// Checks whether each node is fit for Redlock as `lock`'s options use it: reachable;
    /// persistence (`appendonly yes` with `appendfsync always`, else a restart can forget a key;
    /// only a caveat when `lock`'s ``LockOptions/restartGuard`` is at least its expiry, or it has
    /// an ``LockOptions/epochGuard``); with those guards, whether they let the node vote now
    /// (`restart`: up for at least the restart guard; `epoch`: its marker at least as old as the
    /// epoch guard; a warning with the time left otherwise, ``NodeAudit/votesRefusedFor``);
    /// eviction (any policy but `noeviction` with a memory limit can evict lock keys, which carry
    /// a TTL); role (a replica answers writes with READONLY; a master with replicas can lose a key
    /// on failover, unless ``LockOptions/replicaAcknowledgements`` covers every replica); cluster mode (Redlock wants independent masters); distinct servers (one
    /// server listed twice, under two addresses, has the same `run_id` and would vote twice);
    /// version; the permissions `lock` needs (``checkNodes(for:)``); the node's state (`state`:
    /// whether it refused any of those commands for another reason than a permission, such as
    /// `OOM`, `READONLY`, `NOREPLICAS`, `MISCONF`, `LOADING` or `BUSY`: it cannot vote until that
    /// passes); and the node's clock offset from this machine (`TIME`). A node that answers
    /// `INFO` with such an error is not `reachable` (`fail`); one refused `INFO` by its ACL rules
    /// is (`pass`, naming the refusal).
    ///
    /// Reads `INFO` and `CONFIG GET` (a check is `unknown` when the user may not run them) and
    /// writes nothing that outlives it. Nodes are asked concurrently, each within its timeouts.
    public func audit(for lock: DistributedLock) async -> [NodeAudit] {
        let permissions = await checkNodes(for: lock)
        var audits = await withTaskGroup(of: NodeAudit.self) { group in
            for (index, node) in nodes.enumerated() {
                let options = lock.options
                group.addTask { await Self.audit(node, index: index, options: options) }
            }
            var audits: [NodeAudit] = []
            for await audit in group { audits.append(audit) }
            return audits.sorted { $0.node < $1.node }
        }
        // One server under two addresses: the same run id, or refused by this client's vet.
        let sameServer = health.sameServerPairs
        for index in audits.indices {
            // A node this client refused as another name of a node it had reached: that is its
            // one check (its connect succeeded; nothing else was asked).
            let holders = sameServer.compactMap { pair in pair.last == audits[index].node ? pair.first : nil }.sorted()
            if audits[index].checks.first?.verdict == .fail, !holders.isEmpty {
                let named = holders.map { "node \($0) (\(endpoints[$0]))" }.joined(separator: ", ")
                audits[index].checks = [AuditCheck(
                    name: "distinct", verdict: .fail,
                    detail: "the same server as \(named): this client refuses this second name of it (a server votes once); list each server once"
                )]
                continue
            }
            guard audits[index].checks.first?.verdict == .pass else { continue }
            // A node this client refused as another name of this one (NodeHealth.vet) could not
            // be asked for its run id.
            let node = audits[index].node
            let refusedAliases = sameServer.compactMap { pair in pair.first == node ? pair.last : nil }
            let others = audits.filter { other in
                other.node != node && ((audits[index].runID != nil && other.runID == audits[index].runID) || refusedAliases.contains(other.node))
            }.map { "node \($0.node) (\($0.endpoint))" }
            if !others.isEmpty {
                audits[index].checks.append(AuditCheck(
                    name: "distinct", verdict: .fail, detail: "the same server as \(others.joined(separator: ", ")): its vote would count twice"
                ))
            } else if let runID = audits[index].runID {
                audits[index].checks.append(AuditCheck(name: "distinct", verdict: .pass, detail: "run_id \(runID.prefix(12))… is listed once"))
            } else {
                audits[index].checks.append(AuditCheck(name: "distinct", verdict: .unknown, detail: "INFO did not give a run_id"))
            }
            // Refusals the lock works without (less well) are a caveat; any other fails. A
            // refusal for another reason than a permission (a full or read-only node, one still
            // loading) is the node's state, and leaves its permissions untold.
            let all = permissions[index].refused
            let otherwise = all.filter { $0.refusal.map(Self.tellsNodeState) ?? false }
            let refused = all.filter { !($0.refusal.map(Self.tellsNodeState) ?? false) }
            audits[index].checks.append(
                !refused.isEmpty
                    ? AuditCheck(
                        name: "permissions", verdict: refused.allSatisfy(\.isOptional) ? .warn : .fail,
                        detail: refused.map(\.description).joined(separator: "; ")
                    )
                    : !otherwise.isEmpty
                    ? AuditCheck(name: "permissions", verdict: .unknown, detail: "not told: the node refused for other reasons (state)")
                    : AuditCheck(name: "permissions", verdict: .pass, detail: "every command, key and channel the lock's options need is allowed")
            )
            audits[index].checks.append(otherwise.isEmpty
                ? AuditCheck(name: "state", verdict: .pass, detail: "the node runs the lock's commands")
                : AuditCheck(
                    name: "state", verdict: .fail,
                    detail: "the node refuses the lock's commands for another reason than a permission, and cannot vote until that passes: "
                        + otherwise.map(\.description).joined(separator: "; ")
                ))
        }
        return audits
    }

    private static func audit(_ node: RedisConnection, index: Int, options: LockOptions) async -> NodeAudit {
        // The restart guard covers a restart without data only when it lasts at least the
        // expiry; the epoch guard (at least the expiry) covers any loss of data.
        let restartGuard = options.restartGuard.map { $0 >= options.expiry } ?? false
        let guarded = restartGuard || options.epochGuard != nil
        let guardName = restartGuard ? "the restart guard" : "the epoch guard"
        let acknowledgements = options.replicaAcknowledgements
        let endpoint = node.configuration.endpoint
        var audit = NodeAudit(node: index, endpoint: endpoint, checks: [])
        let info: [String: String]
        do {
            info = infoFields(try await node.send(RedisCommand("INFO")).string ?? "")
            audit.checks.append(AuditCheck(name: "reachable", verdict: .pass, detail: "answers"))
        } catch let error as RedisError where error.code == .serverError && tellsNodeState(error.message) {
            audit.checks.append(AuditCheck(
                name: "reachable", verdict: .fail, detail: "answers with an error, and cannot vote until that passes: \(error.message)"
            ))
            return audit
        } catch let error as RedisError where error.code == .serverError {
            info = [:]
            audit.checks.append(AuditCheck(name: "reachable", verdict: .pass, detail: "answers (INFO refused: \(error.message))"))
        } catch {
            audit.checks.append(AuditCheck(name: "reachable", verdict: .fail, detail: "\(error)"))
            return audit
        }
        audit.runID = info["run_id"]

        // Persistence.
        let appendOnly = await config("appendonly", on: node) ?? info["aof_enabled"].map { $0 == "1" ? "yes" : "no" }
        let fsync = await config("appendfsync", on: node)
        switch (appendOnly, fsync) {
        case ("yes"?, "always"?):
            audit.checks.append(AuditCheck(name: "persistence", verdict: .pass, detail: "appendonly yes, appendfsync always"))
        case ("yes"?, let policy?):
            audit.checks.append(AuditCheck(
                name: "persistence", verdict: .warn,
                detail: "appendonly yes, appendfsync \(policy): a crash can lose the last second of keys"
                    + (guarded ? "; \(guardName) keeps such a node out of votes" : " (use always, or restartGuard or epochGuard)")
            ))
        case ("yes"?, nil):
            audit.checks.append(AuditCheck(name: "persistence", verdict: .unknown, detail: "appendonly yes; appendfsync unknown (CONFIG refused)"))
        case ("no"?, _) where guarded:
            audit.checks.append(AuditCheck(
                name: "persistence", verdict: .warn,
                detail: "appendonly no: a restart forgets every lock key; \(guardName) keeps such a node out of votes until its keys could have expired"
            ))
        case ("no"?, _):
            audit.checks.append(AuditCheck(
                name: "persistence", verdict: .fail,
                detail: "appendonly no: a restart forgets every lock key (use appendonly yes, appendfsync always, or restartGuard or epochGuard)"
            ))
        default:
            audit.checks.append(AuditCheck(name: "persistence", verdict: .unknown, detail: "neither CONFIG nor INFO told"))
        }

        // Eviction.
        let policy = await config("maxmemory-policy", on: node) ?? info["maxmemory_policy"]
        let limit = (await config("maxmemory", on: node)).flatMap { Int($0) } ?? info["maxmemory"].flatMap { Int($0) }
        switch (policy, limit) {
        case ("noeviction"?, _):
            audit.checks.append(AuditCheck(name: "eviction", verdict: .pass, detail: "maxmemory-policy noeviction"))
        case (let policy?, 0?):
            audit.checks.append(AuditCheck(name: "eviction", verdict: .pass, detail: "maxmemory-policy \(policy) with no memory limit: nothing is evicted"))
        case (let policy?, _):
            audit.checks.append(AuditCheck(
                name: "eviction", verdict: .fail,
                detail: "maxmemory-policy \(policy) with a memory limit can evict lock keys (use noeviction)"
            ))
        default:
            audit.checks.append(AuditCheck(name: "eviction", verdict: .unknown, detail: "neither CONFIG nor INFO told"))
        }

        // Role.
        let replicaCount = info["connected_slaves"].flatMap { Int($0) }
        let replicasText = replicaCount.map { "\($0) replica\($0 == 1 ? "" : "s")" } ?? ""
        switch (info["role"], replicaCount) {
        case ("master"?, let replicas?) where acknowledgements > replicas:
            audit.checks.append(AuditCheck(
                name: "role", verdict: .fail,
                detail: "master with \(replicasText) connected: it refuses every grant, replicaAcknowledgements asks for \(acknowledgements)"
            ))
        case ("master"?, let replicas?) where replicas > 0 && acknowledgements == replicas:
            audit.checks.append(AuditCheck(
                name: "role", verdict: .pass,
                detail: "master with \(replicasText); a grant counts once all of them acknowledged it (replicaAcknowledgements)"
            ))
        case ("master"?, let replicas?) where replicas > 0:
            audit.checks.append(AuditCheck(
                name: "role", verdict: .warn,
                detail: "master with \(replicasText): a failover can promote one that lacks a lock key"
                    + " (replicaAcknowledgements is \(acknowledgements); set it to the replicas a failover may promote)"
            ))
        case ("master"?, _):
            audit.checks.append(AuditCheck(name: "role", verdict: .pass, detail: "independent master"))
        case ("slave"?, _):
            audit.checks.append(AuditCheck(name: "role", verdict: .fail, detail: "a replica: it answers writes with READONLY"))
        default:
            audit.checks.append(AuditCheck(name: "role", verdict: .unknown, detail: "INFO did not give the role"))
        }

        // Cluster mode.
        switch info["cluster_enabled"] {
        case "1"?:
            audit.checks.append(AuditCheck(
                name: "cluster", verdict: .fail,
                detail: "cluster mode: Redlock wants independent masters, not one cluster's shards"
            ))
        case "0"?:
            audit.checks.append(AuditCheck(name: "cluster", verdict: .pass, detail: "not in cluster mode"))
        default:
            audit.checks.append(AuditCheck(name: "cluster", verdict: .unknown, detail: "INFO did not tell"))
        }

        // Version.
        if let version = info["redis_version"] {
            let major = version.split(separator: ".").first.flatMap { Int($0) } ?? 0
            audit.checks.append(major >= 6
                ? AuditCheck(name: "version", verdict: .pass, detail: "redis \(version)")
                : AuditCheck(name: "version", verdict: .warn, detail: "redis \(version): before 6.0, no ACL users"))
        } else {
            audit.checks.append(AuditCheck(name: "version", verdict: .unknown, detail: "INFO did not tell"))
        }

        // Clock offset.
        let sent = ContinuousClock.now
        let wallBefore = wallClockMicroseconds()
        let time = await timeReply(of: node)
        if case let .success(reply) = time, case let .array(parts) = reply, parts.count == 2,
           let seconds = parts[0].string.flatMap({ Int64($0) }), let micros = parts[1].string.flatMap({ Int64($0) }) {
            let roundTrip = sent.duration(to: .now)
            let localMidpoint = wallBefore + roundTrip.wholeNanoseconds / 2_000
            let offset = Duration.microseconds(seconds * 1_000_000 + micros - localMidpoint)
            audit.clockOffset = offset
            let magnitude = offset < .zero ? .zero - offset : offset
            let text = "offset \(Double(offset.wholeNanoseconds / 1_000) / 1_000) ms from this machine"
            audit.checks.append(magnitude <= .milliseconds(500)
                ? AuditCheck(name: "clock", verdict: .pass, detail: text)
                : AuditCheck(name: "clock", verdict: .warn, detail: text + ": check NTP (in slewing mode) on both"))
        } else {
            audit.checks.append(AuditCheck(name: "clock", verdict: .unknown, detail: Self.timeFailure(time)))
        }
        audit.checks.append(await clockRate(of: node))
        let (epochCheck, epochWait) = await epoch(of: node, guard: options.epochGuard)
        audit.checks.append(epochCheck)
        audit.votesRefusedFor = epochWait
        if let guardTime = options.restartGuard {
            let (check, wait) = restart(info: info, guard: guardTime)
            audit.checks.append(check)
            if let wait { audit.votesRefusedFor = max(wait, audit.votesRefusedFor ?? .zero) }
        }
        return audit
    }

    /// Whether the restart guard lets the node vote now: up for at least `guard` (by the lower
    /// bound of the uptime `INFO` reports, as the lock reads it), else a warning with the time
    /// left (also returned).
    private static func restart(info: [String: String], guard guardTime: Duration) -> (AuditCheck, Duration?) {
        guard let reported = info["uptime_in_seconds"].flatMap({ Int64($0) }) else {
            return (AuditCheck(name: "restart", verdict: .unknown, detail: "INFO did not give uptime_in_seconds"), nil)
        }
        let uptime = ServerIdentity.uptimeLowerBound(reportedSeconds: reported)
        guard uptime < guardTime else {
            return (AuditCheck(name: "restart", verdict: .pass, detail: "up for \(reported) s: past the restart guard (\(guardTime))"), nil)
        }
        let left = guardTime - uptime
        return (AuditCheck(
            name: "restart", verdict: .warn,
            detail: "up for \(reported) s, less than the restart guard (\(guardTime)): its votes are refused for \(seconds(left)) s more"
        ), left)
    }

    /// `duration` in seconds, to the millisecond.
    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.wholeNanoseconds / 1_000_000) / 1_000
    }

    /// `TIME`'s reply, or why there is none: the node's refusal (`NOPERM`, a renamed command) or
    /// the failure.
    private static func timeReply(of node: RedisConnection) async -> Result<RedisValue, RedisError> {
        do {
            return .success(try await node.send(RedisCommand("TIME")))
        } catch let error as RedisError {
            return .failure(error)
        } catch {
            return .failure(RedisError(code: .io, endpoint: node.configuration.endpoint, message: "\(error)"))
        }
    }

    /// What a check says of a `TIME` that gave no reading: refused (with the node's text),
    /// failed, or answered with something else.
    private static func timeFailure(_ time: Result<RedisValue, RedisError>) -> String {
        switch time {
        case let .failure(error) where error.code == .serverError: "TIME was refused: \(error.message)"
        case let .failure(error): "TIME failed: \(error.code): \(error.message)"
        case let .success(reply): "TIME answered \(reply)"
        }
    }

    /// Two `TIME` readings 250 ms apart against this machine's monotonic clock (the clock
    /// guard's comparison, ``LockOptions/clockGuard``, with a drift factor of 0.01): a node whose
    /// clock runs fast or steps fails.
    private static func clockRate(of node: RedisConnection) async -> AuditCheck {
        var failure = ""
        func reading() async -> ClockObservation? {
            let sentAt = ContinuousClock.now
            let time = await timeReply(of: node)
            guard case let .success(reply) = time, case let .array(parts) = reply, parts.count == 2,
                  let seconds = parts[0].string.flatMap({ Int64($0) }), let micros = parts[1].string.flatMap({ Int64($0) }),
                  let total = ClockCheck.nodeMicroseconds(in: .array([.integer(0), .integer(seconds), .integer(micros)]))
            else {
                failure = timeFailure(time)
                return nil
            }
            return ClockObservation(nodeMicroseconds: total, sentAt: sentAt, receivedAt: .now)
        }
        guard let first = await reading() else {
            return AuditCheck(name: "clock rate", verdict: .unknown, detail: failure)
        }
        try? await Task.sleep(for: .milliseconds(250))
        guard let second = await reading() else {
            return AuditCheck(name: "clock rate", verdict: .unknown, detail: failure)
        }
        let node = Duration.microseconds(second.nodeMicroseconds - first.nodeMicroseconds)
        let local = first.receivedAt.duration(to: second.receivedAt)
        let text = "\(Double(node.wholeNanoseconds / 1_000) / 1_000) ms of node time in \(Double(local.wholeNanoseconds / 1_000) / 1_000) ms here"
        switch ClockVerdict.of(earlier: first, later: second, driftFactor: 0.01) {
        case .consistent:
            return AuditCheck(name: "clock rate", verdict: .pass, detail: text)
        case let .ranAhead(excess):
            return AuditCheck(
                name: "clock rate", verdict: .fail,
                detail: text + ": ran \(excess) ahead, so keys expire early (clockGuard refuses such a node)"
            )
        case .wentBack:
            return AuditCheck(name: "clock rate", verdict: .warn, detail: text + ": ran slow or was set back")
        }
    }

    /// The node's marker (`redlock:epoch`, ``LockOptions/epochGuard``): its age, and whether the
    /// node's clock is behind the latest time it showed (the guarded acquire then refuses).
    /// With an epoch guard (`guard`), a node whose marker is missing, not the library's or
    /// younger than the guard is a warning: its votes are refused for the time returned (the
    /// whole guard for a marker the next acquire makes).
    private static func epoch(of node: RedisConnection, guard guardTime: Duration?) async -> (AuditCheck, Duration?) {
        guard let reply = try? await node.send(RedisCommand("GET", Scripts.epochKey)),
              let time = try? await node.send(RedisCommand("TIME")), case let .array(parts) = time, parts.count == 2,
              let seconds = parts[0].string.flatMap({ Int64($0) }), let micros = parts[1].string.flatMap({ Int64($0) })
        else {
            return (AuditCheck(name: "epoch", verdict: .unknown, detail: "GET redlock:epoch or TIME was refused"), nil)
        }
        let (milliseconds, overflow) = seconds.multipliedReportingOverflow(by: 1_000)
        guard !overflow else { return (AuditCheck(name: "epoch", verdict: .unknown, detail: "TIME answered \(seconds) s"), nil) }
        let now = milliseconds + micros / 1_000
        guard let marker = reply.string else {
            guard let guardTime else {
                return (AuditCheck(
                    name: "epoch", verdict: .pass,
                    detail: "no marker yet: with epochGuard the node's first acquire makes one and waits the guard out"
                ), nil)
            }
            return (AuditCheck(
                name: "epoch", verdict: .warn,
                detail: "no marker yet: the node's first guarded acquire makes one, and its votes are refused until the marker is as old as the epoch guard (\(guardTime))"
            ), guardTime)
        }
        let words = marker.split(separator: " ", omittingEmptySubsequences: false)
        let fields = words.compactMap { word in word.allSatisfy(\.isASCII) && word.allSatisfy(\.isNumber) ? Int64(word) : nil }
        guard words.count == 2, fields.count == 2, fields[0] <= fields[1] else {
            return (AuditCheck(
                name: "epoch", verdict: .warn, detail: "marker \"\(marker)\" is not the library's: the next guarded acquire replaces it (the node is young)"
            ), guardTime)
        }
        if fields[1] > now {
            return (AuditCheck(
                name: "epoch", verdict: .fail,
                detail: "the node's clock is \(Double(fields[1] - now) / 1_000) s behind the latest time it showed: guarded acquires are refused until it has passed it (delete redlock:epoch if that time was wrong)"
            ), nil)
        }
        let age = Duration.milliseconds(now - fields[0])
        if let guardTime, age < guardTime {
            return (AuditCheck(
                name: "epoch", verdict: .warn,
                detail: "marker made \(Self.seconds(age)) s ago by the node's clock, less than the epoch guard (\(guardTime)): its votes are refused for \(Self.seconds(guardTime - age)) s more"
            ), guardTime - age)
        }
        return (AuditCheck(name: "epoch", verdict: .pass, detail: "marker made \(Self.seconds(age)) s ago by the node's clock"), nil)
    }

    /// Whether a node's error `text` (a reply, or a check's refusal with the command in front,
    /// `PING: LOADING …`) tells the node's state rather than a permission: full (`OOM`),
    /// read-only (`READONLY`), short of replicas (`NOREPLICAS`), unable to persist (`MISCONF`),
    /// loading its data (`LOADING`), running a script (`BUSY`), without its master
    /// (`MASTERDOWN`), out of connections (`ERR max number of clients`).
    static func tellsNodeState(_ text: String) -> Bool {
        let upper = text.uppercased()
        return ["OOM ", "READONLY ", "NOREPLICAS ", "MISCONF ", "LOADING ", "BUSY ", "MASTERDOWN ", "ERR MAX NUMBER OF CLIENTS"].contains { prefix in
            upper.hasPrefix(prefix) || upper.contains(": " + prefix)
        }
    }

    /// `CONFIG GET name`'s value, or nil when refused or missing.
    private static func config(_ name: String, on node: RedisConnection) async -> String? {
        guard let reply = try? await node.send(RedisCommand("CONFIG", "GET", name)), case let .array(parts) = reply,
              parts.count >= 2 else { return nil }
        return parts[1].string
    }

}

/// This machine's wall clock (`CLOCK_REALTIME`) in microseconds since the epoch.
private func wallClockMicroseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1_000
}
