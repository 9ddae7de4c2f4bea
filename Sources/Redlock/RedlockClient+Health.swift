import RedlockTransport

extension RedlockClient {
    /// One node's answer to ``RedlockClient/checkNodes()``.
    public struct NodeStatus: Sendable {
        /// The node's index in ``RedlockClient/nodes``.
        public var node: Int
        /// The node's address.
        public var endpoint: RedisEndpoint
        /// The `PING` round-trip time, or why the node failed.
        public var result: Result<Duration, RedisError>
    }

    /// Connects to every node concurrently and sends `PING`, e.g. at startup or for a health check.
    /// Each node answers within its connect and command timeouts.
    public func checkNodes() async -> [NodeStatus] {
        await withTaskGroup(of: NodeStatus.self) { group in
            for (index, node) in nodes.enumerated() {
                group.addTask {
                    let endpoint = node.configuration.endpoint
                    let start = ContinuousClock.now
                    let result: Result<Duration, RedisError>
                    do {
                        let reply = try await node.send(RedisCommand("PING"))
                        result = reply == .simpleString("PONG")
                            ? .success(start.duration(to: .now))
                            : .failure(RedisError(code: .unexpectedReply, endpoint: endpoint, message: "PING returned \(reply)"))
                    } catch let error as RedisError {
                        result = .failure(error)
                    } catch {
                        result = .failure(RedisError(code: .io, endpoint: endpoint, message: "\(error)"))
                    }
                    return NodeStatus(node: index, endpoint: endpoint, result: result)
                }
            }
            var statuses: [NodeStatus] = []
            for await status in group { statuses.append(status) }
            return statuses.sorted { $0.node < $1.node }
        }
    }
}

extension RedlockClient {
    /// One node's answer to ``RedlockClient/checkNodes(for:)``: whether it answers, and which
    /// of the commands, keys and channels the lock's options need it refused.
    public struct NodePermissions: Sendable {
        /// The node's index in ``RedlockClient/nodes``.
        public var node: Int
        /// The node's address.
        public var endpoint: RedisEndpoint
        /// What was checked (`EVAL`, `SET NAME`, `PUBLISH redlock:released:NAME`, …) and, for each
        /// refusal, the node's own error text; or why the node could not be asked at all.
        public var result: Result<[Check], RedisError>

        /// One checked permission.
        public struct Check: Sendable, Hashable, CustomStringConvertible {
            /// The command and its key or channel, e.g. `SET report`.
            public var permission: String
            /// The node's refusal (`NOPERM …`), or nil when allowed or not checked.
            public var refusal: String?
            /// Why the check could not be made, or nil when it was: `PEXPIRE` and `DEL` of the
            /// lock key are checked only while nobody holds the lock (`the lock is held`), `SET`
            /// of the epoch marker only once it exists.
            public var reasonNotChecked: String?
            /// False when the check could not be made (``reasonNotChecked`` says why).
            public var checked: Bool { reasonNotChecked == nil }
            /// True when the lock works without it, less well: `PING` (the handshake's first
            /// command when there is no password or database), `INFO` and its `run_id` without
            /// ``LockOptions/restartGuard`` (one server listed under two addresses is then told
            /// only by the address), `CLIENT INFO` and `CLIENT KILL` (order across a reconnect).
            /// ``RedlockClient/audit(for:)`` counts such a refusal as a caveat (`warn`), any
            /// other as a failure.
            public var isOptional: Bool = false
            /// `PERMISSION: allowed`, `PERMISSION: REFUSAL` or `PERMISSION: not checked (REASON)`,
            /// with ` (optional)` after a refusal the lock works without.
            public var description: String {
                if let reasonNotChecked { return "\(permission): not checked (\(reasonNotChecked))" }
                guard let refusal else { return "\(permission): allowed" }
                return "\(permission): \(refusal)\(isOptional ? " (optional)" : "")"
            }
        }

        /// The refused permissions, those the lock works without (``Check/isOptional``) too;
        /// empty when every check passed. A node that could not be asked counts as refusing
        /// everything (see ``result``).
        public var refused: [Check] {
            switch result {
            case let .success(checks): checks.filter { $0.refusal != nil }
            case let .failure(error): [Check(permission: "connect", refusal: error.description)]
            }
        }
    }

    /// Checks, on every node concurrently, every permission `lock`'s options need: the scripts
    /// (`EVAL`, `EVALSHA`), the lock key (`GET`, `SET`, `PEXPIRE`, `DEL`), with
    /// ``LockOptions/fencing`` the counter (`INCR redlock:fence`), with
    /// ``LockOptions/fastHandoff`` the release channel (`PUBLISH` and `SUBSCRIBE`), `PING`
    /// (the handshake's first command when there is no password or database) and `INFO server`
    /// with a `run_id` in its reply (how one server listed under two addresses votes once; with
    /// ``LockOptions/restartGuard`` also how restarts are seen), with ``LockOptions/epochGuard`` or
    /// ``LockOptions/clockGuard`` `TIME` and the epoch marker (`GET`, and `SET` when the marker
    /// exists; the acquire script declares the marker either way), with
    /// ``LockOptions/replicaAcknowledgements`` the lock's `WAIT` — reported as refused too when
    /// fewer replicas than it asks for acknowledge the probe's writes in time, or the node is a
    /// replica — and always `CLIENT INFO` and `CLIENT KILL`, which keep order across a reconnect
    /// (a refusal there leaves the lock working, without that order; see README, "Order across a
    /// reconnect"). Run it at start-up to
    /// find a least-privilege user's missing rule before the first lock does.
    ///
    /// It writes nothing that outlives it: inside one script it sets the lock key with a
    /// random value only if the key is free (for 10 ms) and deletes it at once (when the lock is
    /// held, the `PEXPIRE` and `DEL` checks are reported as not made; when `DEL` is refused, the
    /// key lives out its 10 ms); the fencing counter is
    /// incremented once (it only ever grows); the release channel gets one empty announcement
    /// (a waiter wakes and tries once).
    public func checkNodes(for lock: DistributedLock) async -> [NodePermissions] {
        let channel = lock.options.fastHandoff ? Scripts.releaseChannel(lock.name) : ""
        // Redis checks every declared key against the user's patterns: the counter only with
        // fencing, the epoch marker only with the epoch guard, the queue's keys only when fair.
        let fencing = lock.options.fencing
        let epoch = lock.options.epochGuard != nil || lock.options.clockGuard
        let fair = lock.options.fair
        let keys = [lock.name] + (fencing ? [Scripts.fenceCounterKey] : []) + (epoch ? [Scripts.epochKey] : [])
            + (fair ? [Scripts.queueKey(lock.name), Scripts.queueDeadlinesKey(lock.name)] : [])
        let call = RedisScriptCall(
            Scripts.permissionProbe,
            keys: keys,
            arguments: [
                randomToken(byteCount: 16), fencing ? "1" : "0", channel, epoch ? "1" : "0",
                // The channel a handoff to this lock's waiters goes to (Scripts.handoffChannel(_:value:)):
                // the client's own for random values, the name's shared one for a value of the
                // caller's own (one that starts with a tag goes to that tag's, unknown here).
                fair ? (lock.options.value.mayAlreadyBeHeld ? Scripts.handoffChannel(lock.name)
                    : Scripts.handoffChannel(lock.name, value: coordination.taggedValue(""))) : "",
            ]
        )
        let declaredOnly = RedisScriptCall(Scripts.permissionProbe, keys: keys, arguments: ["", "0", "", "0", "", "declared only"])
        return await withTaskGroup(of: NodePermissions.self) { group in
            // On the lock's own connections: its WAIT counts their writes, and blocks them.
            for (index, node) in sender.connections(lock.lane).enumerated() {
                let vet = health.vet(for: index)
                group.addTask {
                    let endpoint = node.configuration.endpoint
                    do {
                        var checks: [NodePermissions.Check] = []
                        // EVAL loads the probe and runs it; the EVALSHA that follows, with the
                        // same keys, checks only that permission (its run does nothing).
                        for (label, command) in [("EVAL", call.evalForm), ("EVALSHA", declaredOnly.command)] {
                            do {
                                let reply = try await node.send(command)
                                checks.append(.init(permission: label, refusal: nil))
                                if label == "EVAL" { checks += Self.probeChecks(reply) }
                            } catch let error as RedisError where error.code == .serverError {
                                if label == "EVALSHA", error.message.hasPrefix("NOSCRIPT"), checks.last?.refusal != nil {
                                    // Nothing loaded the probe: EVAL was refused.
                                    checks.append(.init(permission: label, refusal: nil, reasonNotChecked: "EVAL was refused, so no script is loaded to run by hash"))
                                } else {
                                    checks.append(.init(permission: label, refusal: error.trimmingQuotedArguments().message))
                                }
                            }
                        }
                        // The handshake's leading PING, and the run_id that tells one server
                        // listed twice (with restartGuard, also the uptime).
                        checks.append(await Self.check("PING", RedisCommand("PING"), on: node, isOptional: true) {
                            $0 == .simpleString("PONG") ? nil : "unexpected reply \($0)"
                        })
                        checks.append(await Self.check(
                            "INFO", RedisCommand("INFO", "server"), on: node, isOptional: lock.options.restartGuard == nil, judge: Self.judgeServerInfo
                        ))
                        // The order barrier's commands. The kill names a client nobody is (no
                        // connection comes from 0.0.0.0:0): it ends nothing, and answers 0.
                        checks.append(await Self.check("CLIENT INFO", RedisCommand("CLIENT", "INFO"), on: node, isOptional: true))
                        checks.append(await Self.check(
                            "CLIENT KILL", RedisCommand("CLIENT", "KILL", "ID", "1", "ADDR", "0.0.0.0:0"), on: node, isOptional: true
                        ) { $0.integer == 0 ? nil : "unexpected reply \($0)" })
                        if let wait = lock.replicaWait {
                            checks.append(await Self.checkReplicas(wait, on: node))
                        }
                        if !channel.isEmpty {
                            // A connection of its own: once subscribed it can do nothing else.
                            // On the client's loop and vetted like its others: no thread or
                            // loop outlives the client, and an alias of another node is refused.
                            let subscriber = RedisConnection(configuration: node.configuration, eventLoop: node.eventLoop, vet: vet)
                            let subscribe = await Self.check("SUBSCRIBE \(channel)", RedisCommand("SUBSCRIBE", channel), on: subscriber)
                            checks.append(subscribe)
                            if subscribe.refusal == nil {
                                checks.append(await Self.check("UNSUBSCRIBE \(channel)", RedisCommand("UNSUBSCRIBE", channel), on: subscriber))
                            }
                            await subscriber.shutdown()
                        }
                        return NodePermissions(node: index, endpoint: endpoint, result: .success(checks))
                    } catch let error as RedisError {
                        return NodePermissions(node: index, endpoint: endpoint, result: .failure(error))
                    } catch {
                        return NodePermissions(node: index, endpoint: endpoint, result: .failure(RedisError(code: .io, endpoint: endpoint, message: "\(error)")))
                    }
                }
            }
            var statuses: [NodePermissions] = []
            for await status in group { statuses.append(status) }
            return statuses.sorted { $0.node < $1.node }
        }
    }

    /// The probe script's reply, `{permission, refusal or ''}` pairs, as checks.
    private static func probeChecks(_ reply: RedisValue) -> [NodePermissions.Check] {
        guard case let .array(items) = reply else { return [] }
        var checks: [NodePermissions.Check] = []
        var index = 0
        while index + 1 < items.count {
            if let permission = items[index].string {
                let refusal = items[index + 1].string ?? ""
                if refusal.hasPrefix("?") {
                    checks.append(.init(permission: permission, refusal: nil, reasonNotChecked: String(refusal.dropFirst())))
                } else {
                    checks.append(.init(permission: permission, refusal: refusal.isEmpty ? nil : refusal))
                }
            }
            index += 2
        }
        return checks
    }

    /// `INFO server`'s reply judged: one without a `run_id` (a proxy's, a Redis-compatible
    /// server's) cannot tell one server listed twice, nor its restarts.
    static func judgeServerInfo(_ reply: RedisValue) -> String? {
        guard let text = reply.string else { return "unexpected reply \(reply)" }
        return ServerIdentity(info: text, readAt: .now) == nil
            ? "answered without a run_id: one server listed under two addresses is told only by the address, and restartGuard cannot see restarts"
            : nil
    }

    /// The lock's own `WAIT` after the probe's writes: fewer replicas acknowledging them in time
    /// than it asks for is a refusal, as is `WAIT`'s error.
    private static func checkReplicas(_ wait: ReplicaWait, on node: RedisConnection) async -> NodePermissions.Check {
        await check("WAIT", wait.command, on: node) { reply in
            let acknowledged = reply.integer ?? 0
            guard acknowledged < wait.count else { return nil }
            return "\(acknowledged) replicas acknowledged within \(wait.timeoutMilliseconds) ms, \(wait.count) required (replicaAcknowledgements)"
        }
    }

    /// Sends `command`; a server error reply is the refusal (and any other error); with
    /// `judge`, so is what it says of the reply.
    private static func check(
        _ permission: String, _ command: RedisCommand, on node: RedisConnection, isOptional: Bool = false,
        judge: (RedisValue) -> String? = { _ in nil }
    ) async -> NodePermissions.Check {
        let refusal: String?
        do {
            refusal = judge(try await node.send(command))
        } catch let error as RedisError where error.code == .serverError {
            refusal = error.message
        } catch {
            refusal = "\(error)"
        }
        return .init(permission: permission, refusal: refusal, isOptional: isOptional)
    }
}
