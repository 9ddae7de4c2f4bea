import Logging
import RedlockTransport
import Synchronization

/// Which of a client's two connections per node a fan-out goes on: the shared one, or the one
/// of the locks whose grants wait for replicas (``LockOptions/replicaAcknowledgements``), whose
/// `WAIT`s hold up only each other. All of one lock's commands go on one lane, so a command
/// queued behind another on a node runs after it.
enum ConnectionLane: Sendable {
    case shared
    case acknowledged
}

/// The `WAIT` that follows each node's command when a grant counts only once replicas
/// acknowledged it (``LockOptions/replicaAcknowledgements``).
struct ReplicaWait: Sendable, Equatable {
    /// How many replicas must acknowledge.
    let count: Int
    /// How long the node waits for them: half of `budget` or of the command timeout, whichever
    /// is less, at least 1 ms. Redis notices a blocked client's timeout up to a server tick
    /// (100 ms at the default `hz`) late; the connections these go on allow for that
    /// (``lateAnswerAllowance``), and an attempt budget of about 250 ms or more leaves room for
    /// it too (below that, a node whose replicas do not acknowledge may count as silent).
    let timeoutMilliseconds: Int64

    /// The wait for `count` replicas within an attempt of `budget`, on nodes whose shortest
    /// command timeout is `commandTimeout` (half of either leaves the other half for the
    /// server's late answer and the round trip); nil when `count` is 0.
    init?(count: Int, budget: Duration, commandTimeout: Duration) {
        guard count > 0 else { return nil }
        self.count = count
        timeoutMilliseconds = max(1, (min(budget, commandTimeout) / 2).millisecondsRoundedUp)
    }

    var command: RedisCommand { RedisCommand("WAIT", String(count), String(timeoutMilliseconds)) }

    /// How much longer than the node's command timeout a command on the connections of locks
    /// that wait for replicas may take before the node counts as silent: Redis answers a timed-out
    /// `WAIT` at its next server tick (up to 100 ms late at the default `hz` of 10), and 50 ms
    /// for the reply to come through on a loaded machine.
    static let lateAnswerAllowance: Duration = .milliseconds(150)

    /// The vote of a node whose command granted `granted`, once its `WAIT` answered `result`.
    func vote(after granted: Vote, _ result: Result<RedisValue, RedisError>, endpoint: RedisEndpoint) -> Vote {
        switch result {
        case let .success(.integer(acknowledged)) where acknowledged >= count: granted
        case let .success(.integer(acknowledged)): .refused(.notReplicated(acknowledged: Int(acknowledged), required: count))
        case let .success(reply):
            .refused(.error(RedisError(code: .unexpectedReply, endpoint: endpoint, message: "WAIT returned \(reply)")))
        case let .failure(error): .refused(failure: error, endpoint: endpoint)
        }
    }
}

/// A fan-out made ready but not sent yet: its round and the command for each node it asks,
/// whose replies become votes in the round. Send it once with ``RedlockClient/send(_:then:)``,
/// then collect with ``RedlockClient/votes(of:cancellable:)``.
///
/// A class, so that the tasks that hold one across suspensions keep a small frame.
final class PreparedFanOut: Sendable {
    let round: FanOutRound
    /// The command every node gets, and the script whose `EVALSHA` it is.
    let command: RedisCommand
    let script: RedisScript?
    /// When the script's `EVAL` may run after commands queued behind it (``RedisScriptCall/runsLateUnlessBehind``).
    let runsLateUnlessBehind: String?
    /// For a command that is not a script: what goes in its place on a connection until that
    /// succeeded there (``RedisConnection/send(_:script:runsLateUnlessBehind:untilScriptsRun:replayWindow:setting:handler:)``).
    let untilScriptsRun: RedisScriptForm?
    /// While open, sent again by a connection that lost it (``RedisScriptCall/replayWindow``).
    let replayWindow: ReplayWindow?
    /// For an acquire: the window of its value's releases, told where the command was staged
    /// (``RedisConnection/send(_:script:runsLateUnlessBehind:untilScriptsRun:replayWindow:setting:handler:)``).
    let setting: ReplayWindow?
    /// The nodes asked, in the order to send to.
    let order: [Int]
    let budget: Duration
    /// When ``FanOutSender`` sent it, a ``BootClock`` reading (0 before): a reply later than
    /// ``budget`` after it came after the attempt was over
    /// (``NodeHealth/answeredLate(_:after:nodeTime:budget:)``). (An attempt prepared for a waiter goes out
    /// only when a release hands it the lock.) Raw nanoseconds: read for every reply.
    private let sentAt = Atomic<Int64>(0)
    private let budgetNanoseconds: Int64

    /// Notes that its commands go out now.
    func markSent() {
        sentAt.store(BootClock.now(), ordering: .relaxed)
    }

    private let classify: @Sendable (RedisValue, RedisEndpoint) -> Vote
    private let confirm: (@Sendable (_ index: Int, _ granted: Vote) async -> Vote)?
    private let health: NodeHealth
    /// The clock guard's check of each reply, when the command returns the node's `TIME`.
    let clockCheck: ClockCheck?
    /// The `WAIT` behind each node's command, when grants count only once replicated.
    let replicaWait: ReplicaWait?
    /// The connections it goes on.
    let lane: ConnectionLane
    /// Per node, whichever of the command's vote and its `WAIT`'s outcome came first, until the
    /// other comes (the two replies' handlers may run in either order).
    private let awaitingReplicas = Mutex<[Int: ReplicaPair]>([:])

    private enum ReplicaPair {
        case vote(Vote)
        case wait(Result<RedisValue, RedisError>)
    }

    init(
        round: FanOutRound, command: RedisCommand, script: RedisScript?, runsLateUnlessBehind: String? = nil,
        untilScriptsRun: RedisScriptForm? = nil, replayWindow: ReplayWindow? = nil, setting: ReplayWindow? = nil, order: [Int], budget: Duration,
        classify: @escaping @Sendable (RedisValue, RedisEndpoint) -> Vote,
        confirm: (@Sendable (_ index: Int, _ granted: Vote) async -> Vote)?,
        health: NodeHealth,
        clockCheck: ClockCheck? = nil,
        replicaWait: ReplicaWait? = nil,
        lane: ConnectionLane = .shared
    ) {
        self.round = round
        budgetNanoseconds = budget.wholeNanoseconds
        self.command = command
        self.script = script
        self.runsLateUnlessBehind = runsLateUnlessBehind
        self.untilScriptsRun = untilScriptsRun
        self.replayWindow = replayWindow
        self.setting = setting
        self.order = order
        self.budget = budget
        self.classify = classify
        self.confirm = confirm
        self.health = health
        self.clockCheck = clockCheck
        self.replicaWait = replicaWait
        self.lane = lane
    }

    /// What takes node `index`'s reply: its vote, recorded in the round (a grant, when it waits
    /// for replicas, once its `WAIT` answered).
    func handler(for index: Int) -> RedisReplyHandler {
        { [self] result in
            if case .failure = result {
                take(Self.namingKeys(Self.trimmingArguments(result), of: command), from: index)
            } else {
                take(result, from: index)
            }
        }
    }

    /// Node `index`'s reply: its vote, recorded in the round (see ``handler(for:)``).
    private func take(_ result: Result<RedisValue, RedisError>, from index: Int) {
        var vote = Vote.of(result, endpoint: health.endpoints[index], classify: classify)
        switch result {
        case let .success(reply):
            if let clockCheck { vote = clockCheck.vote(vote, reply: reply, from: index) }
            // Not for a node down until now: a reply queued behind its reconnect is late
            // for that, which its own lines tell.
            let sent = sentAt.load(ordering: .relaxed)
            if sent > 0, !health.isDown(index) {
                let elapsed = BootClock.now() - sent
                if elapsed > budgetNanoseconds {
                    // Late: the node's own time, from the send to its reply's arrival (when the
                    // kernel told it), says whether the node was, or this process read late.
                    switch LateReply(sent: sent, budget: budgetNanoseconds, times: ReplyArrival.current()) {
                    case let .handledLate(nodeTime):
                        health.readLate(index, after: .nanoseconds(elapsed), nodeTime: .nanoseconds(nodeTime), budget: budget)
                    case let .answeredLate(nodeTime):
                        health.answeredLate(index, after: .nanoseconds(elapsed), nodeTime: nodeTime.map { .nanoseconds($0) }, budget: budget)
                    }
                } else {
                    health.answeredInTime(index)
                }
            }
            health.answered(index, granted: vote.isGranted)
        case let .failure(error):
            health.failed(index, error)
            if error.neverWritten { round.neverWritten(by: index) }
        }
        guard let replicaWait else { return count(vote, from: index) }
        // A refusal counts at once; a grant once its WAIT answered, whichever comes first.
        let waited: Result<RedisValue, RedisError>? = awaitingReplicas.withLock { pairs in
            if case let .wait(result)? = pairs.removeValue(forKey: index) { return result }
            pairs[index] = .vote(vote)
            return nil
        }
        if !vote.isGranted {
            count(vote, from: index)
        } else if let waited {
            count(replicaWait.vote(after: vote, waited, endpoint: health.endpoints[index]), from: index)
        }
    }

    /// `result`, with Redis's answer to a command it does not have cut before the arguments
    /// (``RedisError/trimmingQuotedArguments()``).
    private static func trimmingArguments(_ result: Result<RedisValue, RedisError>) -> Result<RedisValue, RedisError> {
        guard case let .failure(error) = result else { return result }
        return .failure(error.trimmingQuotedArguments())
    }

    /// `result`, with an `EVALSHA` refused on its declared keys (`NOPERM … one of the keys used
    /// as arguments`: Redis names neither) naming them: a fenced lock's counter, the guards'
    /// marker and a fair lock's queue are keys of the library's own that a user's rules often
    /// leave out.
    private static func namingKeys(_ result: Result<RedisValue, RedisError>, of command: RedisCommand) -> Result<RedisValue, RedisError> {
        // Redis 7.0: "… one of the keys used as arguments"; 7.2 on: "No permissions to access a key".
        guard case var .failure(error) = result, error.code == .serverError, error.message.hasPrefix("NOPERM"),
              error.message.contains("keys used as arguments") || error.message.contains("access a key")
        else { return result }
        let arguments = command.arguments
        guard arguments.count >= 3, String(decoding: arguments[0], as: UTF8.self).uppercased().hasPrefix("EVAL"),
              let count = Int(String(decoding: arguments[2], as: UTF8.self)), count >= 0, arguments.count >= 3 + count
        else { return result }
        let keys = arguments[3..<(3 + count)].map { String(decoding: $0, as: UTF8.self) }
        error.message += " (the call's keys: \(keys.joined(separator: ", ")))"
        return .failure(error)
    }

    /// What takes node `index`'s `WAIT` reply: with the command's grant in, the grant counts or
    /// becomes a refusal; before it, the outcome waits for it; after a refusal, nothing.
    private func replicationHandler(for index: Int, _ wait: ReplicaWait) -> RedisReplyHandler {
        { [self] result in
            if case let .failure(error) = result { health.failed(index, error) }
            let first: Vote? = awaitingReplicas.withLock { pairs in
                if case let .vote(vote)? = pairs.removeValue(forKey: index) { return vote }
                pairs[index] = .wait(result)
                return nil
            }
            guard let first else { return }
            if first.isGranted {
                count(wait.vote(after: first, result, endpoint: health.endpoints[index]), from: index)
            }
        }
    }

    /// Records node `index`'s final vote in the round (a grant through `confirm` first).
    private func count(_ vote: Vote, from index: Int) {
        if case let .refused(cause) = vote, let error = cause.error {
            health.logger.debug("redlock node failed", metadata: ["node": "\(index)", "error": "\(error)"])
        }
        if let confirm, vote.isGranted {
            Task { round.record(await confirm(index, vote), from: index) }
        } else {
            round.record(vote, from: index)
        }
    }

    /// The commands for node `index`, as queued commands: the command, and its `WAIT` when
    /// grants wait for replicas.
    func requests(for index: Int) -> [QueuedCommand] {
        clockCheck?.markSent()
        let first = QueuedCommand(
            command, script: script, runsLateUnlessBehind: runsLateUnlessBehind, untilScriptsRun: untilScriptsRun, replayWindow: replayWindow,
            setting: setting, handler: handler(for: index)
        )
        guard let replicaWait else { return [first] }
        return [first, QueuedCommand(replicaWait.command, handler: replicationHandler(for: index, replicaWait))]
    }

    /// Queues the command (and its `WAIT`) for node `index` on `node`.
    func send(to node: RedisConnection, index: Int) {
        guard replicaWait == nil else { return node.send(requests(for: index)) }
        clockCheck?.markSent()
        node.send(
            command, script: script, runsLateUnlessBehind: runsLateUnlessBehind, untilScriptsRun: untilScriptsRun, replayWindow: replayWindow,
            setting: setting, handler: handler(for: index)
        )
    }
}

extension RedlockClient {
    /// Makes a fan-out ready to send: the one fan-out path that acquire, extend and release
    /// share (prepare, ``send(_:then:)``, ``votes(of:cancellable:)``).
    ///
    /// Sending it sends `command` (with `script`, an `EVALSHA` that falls back to `EVAL`) to each
    /// node in `order` at once; each reply becomes a vote by `classify`. Its votes are complete
    /// when every node answered, the outcome is decided (with `returnWhenDecided`), `budget` ran
    /// out or the collecting task was cancelled (when it collects as cancellable). Nodes still
    /// silent then get `.unsettled` when the outcome was decided without them,
    /// `.refused(.noAnswer)` otherwise; nodes not in `order` get `nil`. The command reaches every
    /// node either way: once sent, a lock command is never withdrawn.
    ///
    /// With `confirm`, a granted vote is passed through it before it counts (the restart guard);
    /// that check runs in a task of its own, bounded by its connection's command timeout.
    /// `lateVotes` is given each vote that comes after the votes were complete. `setting`: for
    /// an acquire, the window of its value's releases (see ``PreparedFanOut/setting``).
    /// `endsAtShutdown`: the client's shutdown completes the votes at once (an acquire's
    /// rounds: its clean-up must go out before the connections close).
    func prepareFanOut(
        _ command: RedisCommand,
        script: RedisScript? = nil,
        runsLateUnlessBehind: String? = nil,
        untilScriptsRun: RedisScriptForm? = nil,
        replayWindow: ReplayWindow? = nil,
        setting: ReplayWindow? = nil,
        classify: @escaping @Sendable (RedisValue, RedisEndpoint) -> Vote,
        order: [Int],
        budget: Duration,
        returnWhenDecided: Bool,
        confirm: (@Sendable (_ index: Int, _ granted: Vote) async -> Vote)? = nil,
        clockCheck: ClockCheck? = nil,
        replicaWait: ReplicaWait? = nil,
        lateVotes: (any LateVotes)? = nil,
        lane: ConnectionLane = .shared,
        endsAtShutdown: Bool = false
    ) -> PreparedFanOut {
        PreparedFanOut(
            round: FanOutRound(
                nodeCount: nodes.count, order: order, returnWhenDecided: returnWhenDecided, lateVotes: lateVotes, sending: true,
                endsAtShutdown: endsAtShutdown
            ),
            command: command, script: script, runsLateUnlessBehind: runsLateUnlessBehind, untilScriptsRun: untilScriptsRun,
            replayWindow: replayWindow, setting: setting, order: order, budget: budget, classify: classify, confirm: confirm, health: health,
            clockCheck: clockCheck, replicaWait: replicaWait, lane: lane
        )
    }

    /// Sends `first` and, when given, `second` right behind it (see ``FanOutSender/send(_:then:)``).
    func send(_ first: PreparedFanOut, then second: PreparedFanOut? = nil) {
        sender.send(first, then: second)
    }

    /// The votes of a sent fan-out, once it finished (or, when `cancellable`, once the calling
    /// task is cancelled: nodes still silent then count as not answering).
    @inline(__always)
    nonisolated(nonsending) func votes(of fanOut: PreparedFanOut, cancellable: Bool) async -> [Vote?] {
        let round = fanOut.round
        guard cancellable else { return await withUnsafeContinuation { round.install($0) } }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { round.install($0) }
        } onCancel: {
            round.expire()
        }
    }

    /// Runs a compare-and-act script (1 granted, 0 taken, -1 missing) on every node in `order`
    /// (see ``prepareFanOut(_:script:classify:order:budget:returnWhenDecided:confirm:)``) and
    /// returns its votes.
    nonisolated(nonsending) func fanOut(
        _ call: RedisScriptCall,
        order: [Int],
        budget: Duration,
        returnWhenDecided: Bool,
        cancellable: Bool = true,
        replicaWait: ReplicaWait? = nil,
        lane: ConnectionLane = .shared,
        endsAtShutdown: Bool = false
    ) async -> [Vote?] {
        let prepared = prepareFanOut(
            call.command, script: call.script, runsLateUnlessBehind: call.runsLateUnlessBehind, replayWindow: call.replayWindow,
            classify: Vote.ofScript, order: order, budget: budget, returnWhenDecided: returnWhenDecided, replicaWait: replicaWait, lane: lane,
            endsAtShutdown: endsAtShutdown
        )
        send(prepared)
        return await votes(of: prepared, cancellable: cancellable)
    }

    /// A compare-and-act script call (1 granted, 0 taken, -1 missing) made ready to send.
    func prepareFanOut(
        _ call: RedisScriptCall, order: [Int], budget: Duration, returnWhenDecided: Bool, lane: ConnectionLane = .shared
    ) -> PreparedFanOut {
        prepareFanOut(
            call.command, script: call.script, runsLateUnlessBehind: call.runsLateUnlessBehind, replayWindow: call.replayWindow,
            classify: Vote.ofScript, order: order, budget: budget, returnWhenDecided: returnWhenDecided, lane: lane
        )
    }

    /// The node order for one fan-out: all nodes, shuffled when asked.
    func nodeOrder(shuffled: Bool) -> [Int] {
        shuffled ? nodeIndices.shuffled() : nodeIndices
    }

    /// The node failures among `votes`, for an error (unsettled nodes are left out: the
    /// error's message names them, ``Vote/unsettledNote(_:endpoints:)``).
    func failures(in votes: [Vote?]) -> [NodeFailure] {
        votes.enumerated().compactMap { index, vote in
            guard case let .refused(cause)? = vote else { return nil }
            var failure = NodeFailure(node: index, endpoint: endpoints[index], cause: cause)
            // A node silent within the budget: what its connection last failed with says why.
            if cause == .noAnswer { failure.connectionFailure = health.failure(of: index) }
            return failure
        }
    }
}

/// Sends prepared fan-outs on a client's connections and starts their budgets: the client's
/// own sends, and the attempts its ``LocalCoordination`` sends for waiters when it hears a
/// release (without a reference back to the client).
struct FanOutSender: Sendable {
    let nodes: [RedisConnection]
    /// The connections of the ``ConnectionLane/acknowledged`` lane, one per node.
    let acknowledgedNodes: [RedisConnection]
    let deadlines: DeadlineTimer

    func connections(_ lane: ConnectionLane) -> [RedisConnection] {
        switch lane {
        case .shared: nodes
        case .acknowledged: acknowledgedNodes
        }
    }

    /// Sends `first` and, when given, `second` right behind it: on each node's connection the
    /// two commands are queued together, so the node runs `first`'s before `second`'s (when the
    /// two go on one lane; across lanes there is no order). Starts each round's budget. Send a
    /// prepared fan-out once.
    func send(_ first: PreparedFanOut, then second: PreparedFanOut? = nil) {
        // A round decides only once all its commands are queued (FanOutRound.State.sending).
        defer {
            first.round.sent()
            second?.round.sent()
        }
        let firstNodes = connections(first.lane)
        let together = second.map { $0.lane == first.lane } ?? false
        for index in first.order {
            if let second, together, second.order.contains(index) {
                firstNodes[index].send(first.requests(for: index) + second.requests(for: index))
            } else {
                first.send(to: firstNodes[index], index: index)
            }
        }
        if let second {
            let secondNodes = connections(second.lane)
            for index in second.order where !together || !first.order.contains(index) {
                second.send(to: secondNodes[index], index: index)
            }
        }
        // Sent once written or queued everywhere, when the budgets start: a pause of this
        // process while it wrote is no node's time (LateReply).
        first.markSent()
        second?.markSent()
        if !first.round.isFinished { deadlines.schedule(first.round, after: first.budget) }
        if let second, !second.round.isFinished { deadlines.schedule(second.round, after: second.budget) }
    }
}

/// Whose a reply after its attempt's budget is: the node's (or its network's), or this
/// process's, which read it late. Told by the node's own time, from the fan-out's send (after
/// its commands were written or queued on every connection, as its budget counts) to the
/// arrival of the reply (``ReplyArrival``): the arrival is the reply's own, or a bound it
/// arrived at or before when other bytes followed it in the same read (the reader was behind).
/// A command queued behind a connect waits on its node: that wait is the node's; so is one
/// behind an earlier command's reply until that reply arrived, but not the time this process
/// then took to read it and write the command (when it was written before that reply was
/// read, the split is not known).
enum LateReply: Equatable {
    /// The node answered within the budget (`nodeTime` nanoseconds, at most): this process was late.
    case handledLate(nodeTime: Int64)
    /// The node's reply arrived after the budget (`nodeTime`), or when that cannot be told
    /// (nil: no arrival time, as over a Unix socket; only a bound past the budget; an arrival
    /// placed a budget or more before the send, as a wall-clock step can).
    case answeredLate(nodeTime: Int64?)

    /// For a reply handled after the budget: `sent` when its fan-out went out, `budget` its
    /// length (``BootClock`` nanoseconds), `times` its reply's arrival. A reply may arrive
    /// before the send (a node that answers while the others are still written to): its node
    /// time is zero.
    init(sent: Int64, budget: Int64, times: (arrived: Int64, held: Int64, exact: Bool)?) {
        guard let times, times.arrived > sent - budget else {
            self = .answeredLate(nodeTime: nil)
            return
        }
        guard times.held >= 0 else {
            // Written behind a reply not read yet: no node time can be told, only the process
            // cleared when the whole wait was within the budget.
            let total = max(0, times.arrived - sent)
            self = total <= budget ? .handledLate(nodeTime: total) : .answeredLate(nodeTime: nil)
            return
        }
        let nodeTime = max(0, times.arrived - sent - times.held)
        if nodeTime <= budget {
            self = .handledLate(nodeTime: nodeTime)
        } else {
            self = .answeredLate(nodeTime: times.exact ? nodeTime : nil)
        }
    }
}

extension RedisError {
    /// Redis's answer to a command it does not have (`ERR unknown command 'EVAL', with args
    /// beginning with: 'local acl = …'`: scripting renamed away) cut before the arguments, which
    /// quote the script, and asking whether it was renamed; any other error as it is.
    func trimmingQuotedArguments() -> RedisError {
        guard isUnknownCommand, let arguments = message.firstRange(of: ", with args beginning with:") else { return self }
        var trimmed = self
        trimmed.message = String(message[..<arguments.lowerBound]) + " on this node (renamed away?)"
        return trimmed
    }
}
