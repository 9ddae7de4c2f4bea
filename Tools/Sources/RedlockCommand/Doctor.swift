import ArgumentParser
import RedlockOutput
import Foundation
import Redlock

/// `redlock doctor`: is this deployment safe for Redlock? One verdict per check and node.
struct Doctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check each node for what Redlock relies on; exit 1 when a check fails.",
        discussion: """
        Checks, per node, in this order: reachable; persistence (appendonly yes, appendfsync \
        always); eviction (noeviction, or no memory limit); role (an independent master: a replica \
        answers READONLY, a master with replicas can lose a key on failover); cluster mode (off); \
        version; clock (the node's offset from this machine), clock rate and epoch (the guards' \
        marker; with --epoch-guard, whether it is old enough for the node to vote now); restart \
        (with --restart-guard: whether the node has been up long enough to vote now); distinct \
        (the same server listed twice under two addresses would vote twice); the permissions the \
        lock's options need (scripts, the lock key, the fencing counter, the release channel, \
        PING, INFO, CLIENT INFO and KILL, TIME and the epoch marker, WAIT: a refusal the lock \
        works without, less well, is a warning); state (those commands refused \
        for another reason than a permission: OOM, READONLY, NOREPLICAS, MISCONF, LOADING, BUSY; \
        the node cannot vote until that passes). Then, for the node set as a whole: its quorum, \
        how many nodes may fail, and whether a quorum can form from the nodes that can vote now \
        (fleet: fail when it cannot, saying when the guards let young nodes vote; warn for 1, 2 \
        or an even count).

        Verdicts: pass, warn (works, with a caveat), fail (unsafe or broken), unknown (could not \
        check, e.g. CONFIG refused). Exit 0 when nothing failed, 1 when a check failed (the \
        fleet's too: no quorum can vote now), 64 on bad arguments. Writes nothing that outlives \
        it, but for the fencing counter (unless --no-fencing), incremented once: it only ever \
        grows.
        """
    )

    @Option(help: "Comma-separated nodes: host:port, redis://[user:pass@]host:port[/db], rediss://… (TLS; files from $REDLOCK_TLS_CA_CERT, $REDLOCK_TLS_CERT, $REDLOCK_TLS_KEY, the name to verify from $REDLOCK_TLS_SERVER_NAME) or unix:///path. Default: $REDLOCK_NODES.")
    var nodes: String?

    @Option(help: "The lock name whose permissions to check.")
    var name = "redlock-doctor"

    @Flag(inversion: .prefixedNo, help: "Check for fencing tokens (INCR on redlock:fence), which `redlock run` always uses; --no-fencing for a library lock without them.")
    var fencing = true

    @Option(parsing: .unconditional, help: "Check for the restart guard, as `redlock run --restart-guard` uses it (INFO's uptime): whether each node has been up this long, and, when it is at least --ttl, a node without persistence is a caveat, not a failure.", transform: parseDuration)
    var restartGuard: Duration?

    @Option(parsing: .unconditional, help: "The lease time the lock is used with, as run's --ttl: --epoch-guard must be at least it, and --restart-guard covers a restart without persistence when it is. Default: 10s.", transform: parseDuration)
    var ttl: Duration = .seconds(10)

    @Option(parsing: .unconditional, help: "Check for the epoch guard, as `redlock run --epoch-guard` uses it (TIME and the key redlock:epoch); the duration, as run's (at least --ttl).", transform: parseDuration)
    var epochGuard: Duration?

    @Flag(help: "Check for the clock guard, as `redlock run --clock-guard` uses it (TIME and the key redlock:epoch).")
    var clockGuard = false

    @Flag(help: "Check without fast handoff (no release channel).")
    var noFastHandoff = false

    @Option(help: "Check for grants that wait for this many replica acknowledgements (WAIT): the permission, the replicas connected, and a master's replicas are then covered.")
    var replicaAcknowledgements = 0

    @Flag(help: "Print JSON: {\"nodes\": [one object per node: node, endpoint, run_id, clock_offset_seconds, checks], \"fleet\": the verdict on the node set}.")
    var json = false

    func validate() throws {
        try validateLogLevelSetting()
        try RawArguments.requireText()
        guard ttl >= .milliseconds(200) else { throw ValidationError("--ttl must be at least 200ms, as run's") }
        if let restartGuard, restartGuard <= .zero { throw ValidationError("--restart-guard must be positive, got \(restartGuard)") }
    }

    func run() async throws {
        var options = LockOptions(
            expiry: ttl, fencing: fencing, restartGuard: restartGuard, epochGuard: epochGuard, clockGuard: clockGuard
        )
        options.fastHandoff = !noFastHandoff
        options.replicaAcknowledgements = replicaAcknowledgements
        let made: (RedlockClient, DistributedLock)
        do {
            made = try makeLock(nodes: nodes, name: name, options: options)
        } catch {
            // Pointing at this command's help, not the top-level usage.
            printError("Error: \(error)\nSee 'redlock doctor --help' for more information.")
            throw ExitCode(64)
        }
        let (client, lock) = made
        let audits = await client.audit(for: lock).map(Self.inFlagNames)
        await client.shutdown()
        let failed = audits.filter(\.failed).count
        // One server listed under two names votes once: the names past the first of those that
        // can vote cannot (the client refuses them; by run_id where INFO told it).
        var servers = Set<String>()
        let voting = audits.filter { !Self.cannotVote($0) && servers.insert($0.runID ?? "node \($0.node)").inserted }
        let fleet = Self.fleet(
            nodeCount: audits.count, quorum: client.quorum, failed: failed, unusable: audits.count - voting.count,
            young: voting.compactMap(\.votesRefusedFor)
        )
        if json {
            struct Report: Encodable {
                let nodes: [Node]
                let fleet: Fleet
            }
            struct Node: Encodable {
                let node: Int
                let endpoint: String
                /// The server's run_id, when INFO told it.
                let runID: String?
                /// The node's clock minus this machine's, in seconds, when TIME answered.
                let clockOffsetSeconds: Double?
                let checks: [Check]

                enum CodingKeys: String, CodingKey {
                    case node, endpoint, checks
                    case runID = "run_id"
                    case clockOffsetSeconds = "clock_offset_seconds"
                }

                /// Every key, `null` where nothing was told (a node not reachable).
                func encode(to encoder: any Encoder) throws {
                    var container = encoder.container(keyedBy: CodingKeys.self)
                    try container.encode(node, forKey: .node)
                    try container.encode(endpoint, forKey: .endpoint)
                    try container.encode(runID, forKey: .runID)
                    try container.encode(clockOffsetSeconds, forKey: .clockOffsetSeconds)
                    try container.encode(checks, forKey: .checks)
                }
            }
            struct Check: Encodable {
                let name: String
                let verdict: String
                let detail: String
            }
            let nodes = audits.map { audit in
                Node(node: audit.node, endpoint: "\(audit.endpoint)", runID: audit.runID, clockOffsetSeconds: audit.clockOffset.map(\.seconds), checks: audit.checks.map {
                    Check(name: $0.name, verdict: $0.verdict.rawValue, detail: $0.detail)
                })
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(Report(nodes: nodes, fleet: fleet)), as: UTF8.self))
        } else {
            for audit in audits {
                print("node \(audit.node) (\(audit.endpoint))")
                for check in audit.checks {
                    print("  \(check.verdict.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)) \(check.name): \(check.detail)")
                }
            }
            print(failed == 0 ? "no node failed a check" : "\(failed) of \(audits.count) nodes failed a check")
            print("\(fleet.verdict.padding(toLength: 7, withPad: " ", startingAt: 0)) fleet: \(fleet.detail)")
        }
        if audits.contains(where: \.failed) || fleet.verdict == "fail" { throw ExitCode(1) }
    }

    /// The verdict on the node set as a whole (`fleet` in the text and JSON output).
    struct Fleet: Encodable, Equatable {
        /// `pass`, `warn` or `fail`.
        let verdict: String
        /// Nodes listed.
        let nodes: Int
        /// Grants a lock needs: N/2 + 1.
        let quorum: Int
        /// Nodes that may fail (down, or refusing) with a lock still granted: N − quorum.
        let tolerated: Int
        /// Nodes that cannot vote now: not reachable (no answer, the connection refused:
        /// credentials, database, a server that is not Redis), refusing the lock's commands for
        /// their state (`state`: READONLY, OOM, MISCONF, LOADING, …), or for the user's
        /// permissions (`permissions` fails: a command, key or script the lock needs refused),
        /// or young for the guards (`restart`, `epoch`: their votes are refused for a while).
        let unusable: Int
        /// The verdict in words.
        let detail: String
    }

    /// `audit` with the library's option names in its checks' details given as this command's
    /// flags (`restartGuard` as `--restart-guard`, …).
    static func inFlagNames(_ audit: RedlockClient.NodeAudit) -> RedlockClient.NodeAudit {
        var audit = audit
        let flags = [
            ("restartGuard", "--restart-guard"), ("epochGuard", "--epoch-guard"), ("clockGuard", "--clock-guard"),
            ("replicaAcknowledgements", "--replica-acknowledgements"),
        ]
        for index in audit.checks.indices {
            for (option, flag) in flags {
                audit.checks[index].detail = audit.checks[index].detail.replacingOccurrences(of: option, with: flag)
            }
        }
        return audit
    }

    /// Whether a node cannot vote now, whatever the guards: its first check (reachable), its
    /// state check or its permissions check failed.
    static func cannotVote(_ audit: RedlockClient.NodeAudit) -> Bool {
        audit.checks.first?.verdict == .fail || audit.checks.contains { ["state", "permissions"].contains($0.name) && $0.verdict == .fail }
    }

    /// The verdict on the node set as a whole: how many nodes a quorum needs (`quorum`, the
    /// client's N/2 + 1), how many
    /// may fail, and whether a quorum can form from the nodes that can vote now: `unusable` of
    /// them cannot, and of the others `young` (the time each one's votes are refused for by the
    /// guards) cannot yet.
    static func fleet(nodeCount: Int, quorum: Int, failed: Int, unusable: Int, young: [Duration] = []) -> Fleet {
        let tolerated = nodeCount - quorum
        let verdict: String
        var detail = "\(nodeCount) node\(nodeCount == 1 ? "" : "s"), a quorum of \(quorum): \(tolerated) may fail"
        if nodeCount - unusable < quorum {
            verdict = "fail"
            detail += "; \(unusable) cannot vote now (see reachable, state and permissions), so no quorum can form"
        } else if nodeCount - unusable - young.count < quorum {
            // The guards let a quorum vote once enough young nodes have aged: the shortest wait
            // that leaves a quorum.
            let needed = quorum - (nodeCount - unusable - young.count)
            let wait = young.sorted()[needed - 1]
            verdict = "fail"
            detail += "; \(unusable + young.count) cannot vote now (\(young.count) young for the guards: see restart and epoch), so no quorum can form"
                + " for \((wait.seconds * 1_000).rounded() / 1_000) s more"
        } else if tolerated == 0 {
            verdict = "warn"
            detail += nodeCount == 1
                ? " (one node: the lock is as available as it is, and a restart without persistence forgets it; Redlock's own case is 3 or 5 independent nodes)"
                : " (\(nodeCount) nodes tolerate no more failures than one: use 3 or 5)"
        } else if nodeCount % 2 == 0 {
            verdict = "warn"
            detail += " (as many as \(nodeCount - 1) nodes would tolerate: an odd count is as safe with one node fewer)"
        } else {
            verdict = failed > tolerated || unusable > 0 ? "warn" : "pass"
            if failed > tolerated { detail += "; more nodes failed a check (\(failed)) than may fail" }
        }
        if verdict != "fail", unusable > 0 {
            // Those already count against the failures the node set tolerates.
            detail += "; \(unusable) cannot vote now (see reachable, distinct, state and permissions), so \(nodeCount - unusable - quorum) more may fail"
        }
        return Fleet(verdict: verdict, nodes: nodeCount, quorum: quorum, tolerated: tolerated, unusable: unusable + young.count, detail: detail)
    }
}
