import RedlockTransport

/// The Lua scripts of the algorithm. Each compares the key's value with the holder's before
/// touching it, so nobody but the holder can release or extend a lease.
enum Scripts {
    /// Acquire with a fencing token. `KEYS[1]` lock name, `KEYS[2]` the node's token counter
    /// (``fenceCounterKey``, shared by every name), `ARGV[1]` value, `ARGV[2]` expiry in ms. Sets
    /// the key only if absent and, in the same atomic step, increments the counter: returns the
    /// new counter value (≥ 1), 0 when the key is taken, or -2 (touching nothing) when the counter
    /// is at its maximum; any other failure of the increment (a refused permission) is the
    /// script's error reply.
    /// A node that already holds the value (a re-attach) counts as granted: its expiry is reset
    /// and the counter incremented like for a new acquisition.
    static let acquireFenced = RedisScript(
        """
        \(leaseNeeds)
        local function reply(code)
            return code
        end
        local counter = KEYS[2]
        \(readCurrent)
        if current ~= ARGV[1] and current ~= false then
            return 0
        end
        \(grant)
        """
    )

    /// The grant both acquire scripts end with, once the key is free or holds `ARGV[1]`: with a
    /// `counter` key, `INCR` it (-2 when at its maximum; a counter that holds no integer, or a
    /// negative one, is a `WRONGTYPE` error naming it, which is permanent, and a negative one is
    /// left as it was; another refused increment is the script's error reply), then set the key (`PEXPIRE` when it already holds the value, else `SET … PX`) and
    /// `reply` the token (1 without a counter). Expects `current`, `counter` and `reply` in scope.
    private static let grant = """
        local token = 1
        if counter then
            token = redis.pcall('INCR', counter)
            if type(token) == 'table' then
                if string.find(token.err, 'overflow', 1, true) then
                    return reply(-2)
                end
                if string.find(token.err, 'not an integer', 1, true) or string.sub(token.err, 1, 9) == 'WRONGTYPE' then
                    return redis.error_reply('WRONGTYPE the fencing counter ' .. counter .. ' holds no integer (' .. token.err .. ')')
                end
                if string.find(token.err, 'Unknown Redis command', 1, true) then
                    return redis.error_reply('ERR unknown command INCR on this node (renamed away?), which a fenced acquire needs on the fencing counter ' .. counter .. '; nothing was set')
                end
                if string.find(token.err, "can't run", 1, true) or string.sub(token.err, 1, 6) == 'NOPERM' then
                    return redis.error_reply('NOPERM this user may not run INCR on the fencing counter ' .. counter .. ', which a fenced acquire needs; nothing was set (' .. token.err .. ')')
                end
                return token
            end
            if token < 1 then
                redis.call('DECR', counter)
                return redis.error_reply('WRONGTYPE the fencing counter ' .. counter .. ' holds a negative number')
            end
            -- INCR's reply reaches Lua as a double, exact only below 2^53: above, the counter's
            -- own text is the token.
            if token >= 9007199254740992 then
                token = redis.call('GET', counter)
            end
        end
        if current == ARGV[1] then
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
        else
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        end
        return reply(token)
        """

    /// Acquire with the guards (``LockOptions/epochGuard``, ``LockOptions/clockGuard``).
    /// `KEYS[1]` lock name, `KEYS[2]` the node's marker (``epochKey``), `KEYS[3]` the token
    /// counter (only when fenced), `ARGV[1]` value, `ARGV[2]` expiry in ms, `ARGV[3]` the epoch
    /// guard in ms or empty (no epoch check), `ARGV[4]` "1" when a key that already holds the
    /// value counts as granted (a re-attach), `ARGV[5]` "1" to reply `{code, seconds,
    /// microseconds}` with the node's `TIME` instead of the code alone.
    ///
    /// The marker is `EPOCH HIGHEST`, both the node's `TIME` in ms: when the marker was made, and
    /// the latest time any acquire saw; every acquire writes `HIGHEST` when its time is later (one
    /// more write per acquire); a marker of another type is a `WRONGTYPE` error naming it
    /// (permanent). Without a well-formed marker the script makes one; with
    /// an epoch guard that makes the node young: it returns -3 and, with a counter, raises the
    /// counter to the node's time in µs (a counter `INCR` would refuse is left as it is and
    /// refused as the grant refuses it, with a `WRONGTYPE` error naming it). When `TIME` is
    /// below `HIGHEST` the node's clock went back: it returns -4 with how far behind, in ms
    /// (`{-4, ms}`, or the time reply with the ms as a fourth element) and sets nothing, until the clock is past `HIGHEST` again (a key set
    /// while the clock is behind would expire early once it is put right). While the marker is
    /// younger than the epoch guard it returns -3, touching nothing but `HIGHEST`. Otherwise it
    /// is the acquire: 0 when taken; granted is the new token when fenced (-2 when the counter
    /// is at its maximum, an error reply when the increment is refused), else 1.
    /// Needs Redis ≥ 5 (scripts replicate their effects, so `TIME` may precede writes).
    static let acquireGuarded = RedisScript(
        """
        \(leaseNeeds)
        local time = redis.call('TIME')
        local function reply(code, behind)
            if ARGV[5] == '1' then
                return {code, tonumber(time[1]), tonumber(time[2]), behind}
            end
            if behind then
                return {code, behind}
            end
            return code
        end
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        local marker = redis.pcall('GET', KEYS[2])
        if type(marker) == 'table' and marker.err then
            if string.sub(marker.err, 1, 9) == 'WRONGTYPE' then
                return redis.error_reply('WRONGTYPE the epoch marker ' .. KEYS[2] .. ' holds another type (' .. marker.err .. ')')
            end
            return marker
        end
        local epoch, highest
        if marker then
            local madeAt, seen = string.match(marker, '^(%d+) (%d+)$')
            epoch, highest = tonumber(madeAt), tonumber(seen)
        end
        if epoch == nil or highest == nil or epoch > highest then
            redis.call('SET', KEYS[2], string.format('%.0f %.0f', now, now))
            if ARGV[3] ~= '' then
                if KEYS[3] then
                    local seed = string.format('%.0f', tonumber(time[1]) * 1000000 + tonumber(time[2]))
                    \(raiseStatements(counter: "KEYS[3]", to: "seed", purpose: "to seed"))
                end
                return reply(-3)
            end
            epoch, highest = now, now
        end
        if now < highest then
            return reply(-4, highest - now)
        end
        if now > highest then
            redis.call('SET', KEYS[2], string.format('%.0f %.0f', epoch, now))
        end
        if ARGV[3] ~= '' and not (now - epoch >= tonumber(ARGV[3])) then
            return reply(-3)
        end
        \(readCurrent)
        if current ~= false and (current ~= ARGV[1] or ARGV[4] ~= '1') then
            return reply(0)
        end
        local counter = KEYS[3]
        \(grant)
        """
    )

    /// Acquire in a fair lock (``LockOptions/fair``): first come, first served across processes.
    /// `KEYS[1]` lock name, `KEYS[2]` the name's queue (``queueKey(_:)``), `KEYS[3]` its entries'
    /// deadlines (``queueDeadlinesKey(_:)``), `KEYS[4]` the token counter (only when fenced),
    /// `ARGV[1]` value, `ARGV[2]` expiry in ms, `ARGV[3]` the caller's ticket (its place in line:
    /// its wall clock in µs when its `lock()` began), `ARGV[4]` how long its entry lives in ms, 0
    /// for a single attempt (`tryLock()`), which never enters the line.
    ///
    /// The queue is a sorted set of waiting values by ticket; the deadlines, a sorted set of the
    /// same values by the node's `TIME` in ms past which an entry is dropped (a waiter that died);
    /// an entry without a deadline counts as dropped.
    /// Grants when the key holds the value (handed over by ``releaseFair``: `PEXPIRE`), or when
    /// it is free and the caller is first in line, by the sorted set's order (ticket, then the
    /// value's bytes) among live entries (`SET … PX`); either way the caller leaves the queue.
    /// A free key with nobody in line is granted at once, the queue untouched (what entering it
    /// and leaving again would come to, in three commands rather than ten).
    /// Otherwise it enters the queue (keeping its place when already there), sets its entry's
    /// deadline, and returns 0 — or `{0, PTTL}` when another value holds the key and the caller
    /// is first in line (the key's life in ms: nothing is published when it expires, so the
    /// caller looks again then). Granted is the new token when fenced
    /// (-2 when the counter is at its maximum), else 1. Both queue keys expire once their last
    /// entry would have: nothing is left behind. Needs Redis ≥ 5 (`TIME` before writes).
    static let acquireFair = RedisScript(
        """
        \(leaseNeeds)
        local function reply(code)
            return code
        end
        local queue, deadlines, counter = KEYS[2], KEYS[3], KEYS[4]
        \(readCurrent)
        if current ~= false or redis.call('ZRANGE', queue, 0, 0)[1] then
            if current ~= ARGV[1] then
                \(firstInLine)
                -- In line for this check (the sorted set decides the order, ties by value bytes);
                -- a single attempt (no entry life) leaves again unless it was already in line.
                local ttl = tonumber(ARGV[4])
                local wasInLine = redis.call('ZSCORE', queue, ARGV[1])
                redis.call('ZADD', queue, 'NX', ARGV[3], ARGV[1])
                if ttl > 0 or not wasInLine then
                    redis.call('ZADD', deadlines, now + math.max(ttl, 1), ARGV[1])
                end
                local head = current == false and firstInLine()
                if not (head and head[1] == ARGV[1]) then
                    if ttl > 0 then
                        for _, key in ipairs({queue, deadlines}) do
                            if redis.call('PTTL', key) < ttl then
                                redis.call('PEXPIRE', key, ttl)
                            end
                        end
                        -- Behind a holder: the first in line is told when its key expires.
                        local first = current ~= false and firstInLine()
                        if first and first[1] == ARGV[1] then
                            return {0, redis.call('PTTL', KEYS[1])}
                        end
                    elseif not wasInLine then
                        redis.call('ZREM', queue, ARGV[1])
                        redis.call('ZREM', deadlines, ARGV[1])
                    end
                    return 0
                end
            end
            redis.call('ZREM', queue, ARGV[1])
            redis.call('ZREM', deadlines, ARGV[1])
        end
        \(grant)
        """
    )

    /// Release in a fair lock. `KEYS[1]` lock name, `KEYS[2]` queue, `KEYS[3]` deadlines,
    /// `ARGV[1]` value, `ARGV[2]` the release channel or empty, `ARGV[3]` the name's handoff
    /// channel (``handoffChannel(_:)``), or empty to publish no handoff, `ARGV[4]` how long a
    /// handed-over key lives unclaimed, in ms,
    /// `ARGV[5]` "1" to leave the line and hand over, "0" to stay in line and only delete (the
    /// clean-up of a failed attempt, whose caller tries again from its place), `ARGV[6]` (may be
    /// missing) the releaser's expiry in ms: how long a handed-over key lives when someone hears
    /// the handoff.
    ///
    /// With "0", a compare-and-delete that publishes nothing. With "1", takes the caller out of
    /// the queue (a `lock()` that gives up leaves this way; with nobody in line the queue is not
    /// touched) and, when the key
    /// holds the value, deletes it and hands the lock to the first live entry: sets the key to
    /// that waiter's value, takes it out of the queue and publishes `LIFE VALUE` (the key's
    /// life in ms, a space, the waiter's value) on `ARGV[3]` — or, when the value starts with a
    /// tag, `LIFE LENGTH NAME VALUE` (``AddressedHandoff``) on the tag's client channel,
    /// `redlock:handoff:~TAG` (``handoffChannel(_:value:)``). The key lives `ARGV[6]`
    /// ms when a subscriber received the message — the waiter may count it as this node's grant
    /// (``LocalCoordination``) — else `ARGV[4]` ms, until the waiter's next acquire (a claim)
    /// resets the full expiry. With nobody queued, publishes the release on the release channel
    /// as ``release`` does. Returns 1 when deleted, 2 when deleted but the message was refused,
    /// 0 when another value is there, -1 when the key is missing.
    static let releaseFair = RedisScript(
        """
        local queue, deadlines = KEYS[2], KEYS[3]
        local queued = ARGV[5] == '1' and redis.call('ZRANGE', queue, 0, 0)[1]
        if queued then
            redis.call('ZREM', queue, ARGV[1])
            redis.call('ZREM', deadlines, ARGV[1])
        end
        \(readCurrent)
        if current ~= ARGV[1] then
            if current == false then
                return -1
            end
            return 0
        end
        redis.call('DEL', KEYS[1])
        if ARGV[5] ~= '1' then
            return 1
        end
        local head = nil
        if queued then
            \(firstInLine)
            head = firstInLine()
        end
        if head then
            local life = ARGV[6] or ARGV[4]
            redis.call('SET', KEYS[1], head[1], 'PX', life)
            redis.call('ZREM', queue, head[1])
            redis.call('ZREM', deadlines, head[1])
            local heard, refused = 0, false
            if ARGV[3] ~= '' then
                local channel, message = ARGV[3], life .. ' ' .. head[1]
                local tag = string.match(head[1], '\(handoffTagPattern)')
                if tag then
                    channel = '\(handoffChannelPrefix + handoffTagSeparator)' .. tag
                    message = life .. ' ' .. #KEYS[1] .. ' ' .. KEYS[1] .. ' ' .. head[1]
                end
                local announced = redis.pcall('PUBLISH', channel, message)
                if type(announced) == 'table' and announced.err then
                    refused = true
                else
                    heard = announced
                end
            end
            if heard == 0 and life ~= ARGV[4] then
                redis.call('PEXPIRE', KEYS[1], ARGV[4])
            end
            if refused then
                return 2
            end
            return 1
        end
        if ARGV[2] ~= '' then
            local announced = redis.pcall('PUBLISH', ARGV[2], ARGV[1])
            if type(announced) == 'table' and announced.err then
                return 2
            end
        end
        return 1
        """
    )

    /// A fair lock's caller that got the lock leaves the line on a node that refused its attempt
    /// as taken (``LineLeave``). `KEYS[1]` lock name, `KEYS[2]` queue, `KEYS[3]` deadlines, `ARGV[1]` value, `ARGV[2]` its
    /// expiry in ms. Removes the caller's entry; when a release handed the key over meanwhile
    /// (it holds the value), shortens the key's life to the caller's expiry if it is longer (a
    /// releaser with a longer expiry set it). Otherwise a release reaching this node after the
    /// attempt would hand the caller a key that outlives its lease by the releaser's expiry.
    /// Returns 1 when the key holds the value, else 0.
    static let leaveLineHolding = RedisScript(
        """
        redis.call('ZREM', KEYS[2], ARGV[1])
        redis.call('ZREM', KEYS[3], ARGV[1])
        \(readCurrent)
        if current ~= ARGV[1] then
            return 0
        end
        if redis.call('PTTL', KEYS[1]) > tonumber(ARGV[2]) then
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
        end
        return 1
        """
    )

    /// Reads the node's `TIME` into `now` (ms) and defines `firstInLine()`: the queue's first
    /// entry whose deadline has not passed, as `{value, ticket}`, or nil; entries ahead of it
    /// whose deadline passed or is missing (waiters that died or gave up without leaving) are
    /// dropped on the way. Expects `queue` and `deadlines` in scope.
    private static let firstInLine = """
        local time = redis.call('TIME')
            local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
            local function firstInLine()
                while true do
                    local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
                    if not head[1] then
                        return nil
                    end
                    local deadline = redis.call('ZSCORE', deadlines, head[1])
                    if deadline and tonumber(deadline) >= now then
                        return head
                    end
                    redis.call('ZREM', queue, head[1])
                    redis.call('ZREM', deadlines, head[1])
                end
            end
        """

    /// Lua that sets `current` to what `KEYS[1]` holds: its string value, `false` when it is
    /// missing, or `true` when it holds another type (a hash, a list: another program's key under
    /// the lock's name, such as another lock library's): held by someone else, as `SET NX` sees
    /// it. So every acquire form says `taken` for it, as the plain one does (a `WRONGTYPE` error
    /// from `GET` failed the scripted forms for good while the plain form waited), and a release
    /// or extension finds another holder there (0) instead of an error. Any other refusal of the
    /// `GET` is raised as before.
    private static let readCurrent = """
        local current = redis.pcall('GET', KEYS[1])
        if type(current) == 'table' then
            if string.sub(current.err or '', 1, 9) == 'WRONGTYPE' then
                current = true
            else
                current = redis.call('GET', KEYS[1])
            end
        end
        """

    /// The second round of a fenced acquire. `KEYS[1]` lock name, `KEYS[2]` token counter,
    /// `ARGV[1]` value, `ARGV[2]` token. Only while the key still holds the value, raises the
    /// counter to at least the token. Returns 1 when held (raised or already higher), 0 when
    /// another holder's value is there, -1 when the key is missing.
    static let raiseFence = compareAndAct(held: raise(counter: "KEYS[2]", to: "ARGV[2]"))

    /// The fencing round's floor, for the nodes that did not grant. `KEYS[1]` the token counter,
    /// `ARGV[1]` the token. Raises the counter to at least the token, whoever holds the lock
    /// key: a counter only grows, so a higher one never breaks fencing. Returns 1.
    static let raiseFloor = RedisScript(raise(counter: "KEYS[1]", to: "ARGV[1]"))

    /// Lua that raises the counter at key `counter` to at least the token in `token` (both Lua
    /// expressions; the token in decimal digits), then returns 1: the fencing round's raise and
    /// its floor. A counter that `INCR` would refuse (anything but decimal digits without a sign
    /// or a leading zero, up to 2^63 − 1) is a `WRONGTYPE` error naming it (permanent), as in the
    /// acquire's grant. The two are compared as digits, not as Lua numbers (doubles, exact only
    /// below 2^53); the token comes in canonical digits.
    private static func raise(counter: String, to token: String) -> String {
        """
        \(raiseStatements(counter: counter, to: token, purpose: "of the fencing round"))
        return 1
        """
    }

    /// The statements of ``raise(counter:to:)`` without its reply; a counter `INCR` would refuse
    /// is an error reply saying it holds no integer `purpose` (a missing one counts as 0).
    private static func raiseStatements(counter: String, to token: String, purpose: String) -> String {
        """
        local held = redis.call('GET', \(counter)) or '0'
        -- What INCR reads as a counter: digits without a sign or a leading zero, at most 2^63-1.
        if not string.match(held, '^%d+$') or (#held > 1 and string.sub(held, 1, 1) == '0') or #held > 19
            or (#held == 19 and held > '9223372036854775807') then
            return redis.error_reply('WRONGTYPE the fencing counter ' .. \(counter) .. ' holds no integer \(purpose)')
        end
        local want = \(token)
        if #held < #want or (#held == #want and held < want) then
            redis.call('SET', \(counter), want)
        end
        """
    }

    /// `KEYS[1]` lock name, `ARGV[1]` value, `ARGV[2]` a channel to publish the release on (with
    /// the value as the message, so that listeners tell one release's messages from the nodes
    /// apart from another release's), or empty. Returns 1
    /// when deleted, 2 when deleted but the announcement was refused (a user without channel
    /// permissions: Redis 7's `acl-pubsub-default` is `resetchannels`), 0 when another holder's
    /// value is there, -1 when the key is missing. The announcement is a hint: `pcall` keeps a
    /// refused `PUBLISH` from failing the whole call after the delete took effect.
    static let release = compareAndAct(
        held: """
        redis.call('DEL', KEYS[1])
        if ARGV[2] ~= '' then
            local announced = redis.pcall('PUBLISH', ARGV[2], ARGV[1])
            if type(announced) == 'table' and announced.err then
                return 2
            end
        end
        return 1
        """
    )

    /// `SET KEYS[1] ARGV[1] NX PX ARGV[2]` in a script, with the same reply (`OK`, or null when
    /// the key exists), once the user is found to be allowed what the lease will need
    /// (``leaseNeeds``; else a `NOPERM` error reply naming what is refused, and nothing is set).
    /// The acquire on a connection until this form succeeded there (see
    /// ``RedisConnection/send(_:script:runsLateUnlessBehind:untilScriptsRun:replayWindow:setting:handler:)``): a user
    /// who may set the key but not release it is refused before anything is set.
    static let acquirePlain = RedisScript(
        """
        \(leaseNeeds)
        return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
        """
    )

    /// The check every acquire script begins with, before it writes anything: that the user may
    /// run what the lease needs on `KEYS[1]` (value `ARGV[1]`, expiry `ARGV[2]` ms): `SET` (refused
    /// inside a script, Redis's own error names neither command nor key), `EVALSHA` on the key
    /// (the release and the extension go by hash), and `GET`, `DEL` and `PEXPIRE` (inside them).
    /// Else a `NOPERM` error reply naming the command and the key (or, for a command renamed
    /// away, `ERR unknown command` naming it), and nothing is written: no lock key, counter
    /// increment, epoch marker or queue entry. Uses `redis.acl_check_cmd` (Redis ≥ 7; older
    /// servers check nothing but each command as the script runs it).
    private static let leaseNeeds = """
        local acl = redis.acl_check_cmd
        if acl then
            local key, refused, unknown = KEYS[1], nil, false
            local function need(...)
                if refused then return end
                local checked, allowed = pcall(acl, ...)
                if not (checked and allowed) then
                    refused, unknown = ..., not checked
                end
            end
            need('SET', key, ARGV[1], 'NX', 'PX', ARGV[2])
            need('EVALSHA', '\(String(repeating: "0", count: 40))', '1', key)
            need('GET', key)
            need('DEL', key)
            need('PEXPIRE', key, '1')
            if unknown then
                return redis.error_reply('ERR unknown command ' .. refused .. ' on this node (renamed away?), which acquiring, releasing or extending the lock ' .. key .. ' needs; nothing was set')
            elseif refused then
                return redis.error_reply('NOPERM this user may not run ' .. refused .. ' on ' .. key .. ', which acquiring, releasing or extending the lock needs; nothing was set')
            end
        end
        """

    /// Acquire with a value the nodes may already hold (``LockValue/mayAlreadyBeHeld``: a
    /// re-attach). `KEYS[1]` lock name, `ARGV[1]` value, `ARGV[2]` expiry in ms. After
    /// ``leaseNeeds``: `PEXPIRE` when the key holds the value, `SET … PX` when it is missing;
    /// returns 1 when granted either way, 0 when another value is there.
    static let acquireReattach = RedisScript(
        """
        \(leaseNeeds)
        \(readCurrent)
        if current == ARGV[1] then
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
            return 1
        elseif current == false then
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
            return 1
        end
        return 0
        """
    )

    /// `KEYS[1]` lock name, `ARGV[1]` value, `ARGV[2]` expiry in ms, `ARGV[3]` "1" to re-create a
    /// missing key. Returns 1 when extended (or re-created), 0 when another holder's value is
    /// there, -1 when the key is missing (with "1": ``LockOptions/setNXOnExtend``).
    static let extend = compareAndAct(
        held: """
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        return 1
        """,
        missing: """
        if ARGV[3] == '1' then
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
            return 1
        end
        return -1
        """
    )

    /// ``RedlockClient/checkNodes(for:)``'s probe. `KEYS[1]` lock name, `KEYS[2]` fencing
    /// counter (when checked), the last key the epoch marker (when checked) or the last two a
    /// fair lock's queue and deadlines (when checked), `ARGV[1]` a random value, `ARGV[2]` "1" to
    /// check the counter, `ARGV[3]` the release channel or empty, `ARGV[4]` "1" to check the
    /// epoch marker (`TIME`, `GET`, and `SET … XX` of its own value, which changes nothing; not
    /// checked when there is no marker yet), `ARGV[5]` a fair lock's handoff channel to check the
    /// queue's commands (`TIME`, `ZRANGE`, `ZSCORE`, `ZADD`/`ZREM` of the random value, `PTTL`,
    /// `PUBLISH`), or empty. An entry the probe could not remove has no deadline: the first
    /// script that finds it first in line drops it. Runs each command the
    /// lock needs under `pcall` (so a refusal is reported, not raised), leaving nothing behind:
    /// the key is set only if free and deleted at once.
    /// With `ARGV[6]` "declared only", it runs nothing: an `EVALSHA` of it checks only that
    /// command and its declared keys (no second counter increment, announcement or queue entry).
    /// Returns `{permission, refusal or '' (allowed) or '?' and why (not checked)}` pairs.
    static let permissionProbe = RedisScript(
        """
        local checks = {}
        if ARGV[6] == 'declared only' then
            return checks
        end
        local function probe(permission, ...)
            local reply = redis.pcall(...)
            if type(reply) == 'table' and reply.err then
                table.insert(checks, permission)
                table.insert(checks, reply.err)
                return nil
            end
            table.insert(checks, permission)
            table.insert(checks, '')
            return reply
        end
        probe('GET ' .. KEYS[1], 'GET', KEYS[1])
        local set = probe('SET ' .. KEYS[1], 'SET', KEYS[1], ARGV[1], 'NX', 'PX', 10)
        if set then
            probe('PEXPIRE ' .. KEYS[1], 'PEXPIRE', KEYS[1], 10)
            probe('DEL ' .. KEYS[1], 'DEL', KEYS[1])
        elseif set == false then
            table.insert(checks, 'PEXPIRE, DEL ' .. KEYS[1])
            table.insert(checks, '?the lock is held')
        end
        if ARGV[2] == '1' then
            probe('INCR ' .. KEYS[2], 'INCR', KEYS[2])
        end
        if ARGV[3] ~= '' then
            probe('PUBLISH ' .. ARGV[3], 'PUBLISH', ARGV[3], '')
        end
        if ARGV[5] and ARGV[5] ~= '' then
            local queue, deadlines = KEYS[#KEYS - 1], KEYS[#KEYS]
            probe('TIME', 'TIME')
            probe('ZRANGE ' .. queue, 'ZRANGE', queue, 0, 0, 'WITHSCORES')
            probe('ZSCORE ' .. deadlines, 'ZSCORE', deadlines, ARGV[1])
            if probe('ZADD ' .. queue, 'ZADD', queue, 'NX', 0, ARGV[1]) then
                probe('ZREM ' .. queue, 'ZREM', queue, ARGV[1])
            end
            if probe('ZADD ' .. deadlines, 'ZADD', deadlines, 'NX', 0, ARGV[1]) then
                probe('ZREM ' .. deadlines, 'ZREM', deadlines, ARGV[1])
            end
            probe('PTTL ' .. queue, 'PTTL', queue)
            probe('PUBLISH ' .. ARGV[5], 'PUBLISH', ARGV[5], '')
        end
        if ARGV[4] == '1' then
            local marker = KEYS[#KEYS]
            probe('TIME', 'TIME')
            local epoch = probe('GET ' .. marker, 'GET', marker)
            if epoch then
                probe('SET ' .. marker, 'SET', marker, epoch, 'XX')
            elseif epoch == false then
                table.insert(checks, 'SET ' .. marker)
                table.insert(checks, '?no epoch marker yet: the first acquire sets it')
            end
        end
        return checks
        """
    )

    /// The compare step every script but the acquire shares: when `KEYS[1]` holds the caller's
    /// value `ARGV[1]`, runs `held`; when the key is missing, runs `missing`; when another
    /// holder's value is there, returns 0 and touches nothing.
    private static func compareAndAct(held: String, missing: String = "return -1") -> RedisScript {
        func indented(_ lines: String) -> String {
            lines.split(separator: "\n", omittingEmptySubsequences: false).map { "    " + $0 }.joined(separator: "\n")
        }
        return RedisScript(
            """
            \(readCurrent)
            if current == ARGV[1] then
            \(indented(held))
            elseif current == false then
            \(indented(missing))
            end
            return 0
            """
        )
    }

    /// What the library's own keys and channels start with. Lock names may not: no lock key can
    /// collide with them.
    static let reservedPrefix = "redlock:"

    /// The node's one fencing-token counter, shared by every lock name. It never expires and
    /// only grows: one key per node, however many names are fenced.
    static let fenceCounterKey = reservedPrefix + "fence"

    /// The node's marker (``acquireGuarded``): `EPOCH HIGHEST`, the node's `TIME` in ms when it
    /// was made and the latest an acquire saw. It never expires; it disappears only with the
    /// node's data (or when an operator deletes it, e.g. after setting a clock that ran far
    /// ahead back).
    static let epochKey = reservedPrefix + "epoch"

    /// The queue of a fair lock's waiters (``acquireFair``): `redlock:queue:NAME`.
    static func queueKey(_ name: String) -> String { reservedPrefix + "queue:" + name }

    /// The deadlines of a fair lock's queue entries: `redlock:queue-deadlines:NAME`.
    static func queueDeadlinesKey(_ name: String) -> String { reservedPrefix + "queue-deadlines:" + name }

    /// What every release channel's name starts with.
    private static let releaseChannelPrefix = reservedPrefix + "released:"
    /// What every handoff channel's name starts with.
    static let handoffChannelPrefix = reservedPrefix + "handoff:"

    /// The channel a release of `name` is published on.
    static func releaseChannel(_ name: String) -> String { releaseChannelPrefix + name }

    /// The channel a fair lock's release publishes the value of the waiter it handed the lock to,
    /// when that value carries no tag: `redlock:handoff:NAME`.
    static func handoffChannel(_ name: String) -> String { handoffChannelPrefix + name }

    /// The rest of a handoff channel's name after `redlock:handoff:` (`NAME`, or `~TAG` for a
    /// client's channel), or nil for another channel.
    static func lockName(ofHandoffChannel channel: String) -> String? {
        rest(of: channel, after: handoffChannelPrefix)
    }

    /// `channel` after `prefix`, compared and cut as bytes (a name that begins with a combining
    /// mark would otherwise join the prefix's last character), or nil without the prefix.
    private static func rest(of channel: String, after prefix: String) -> String? {
        guard channel.utf8.starts(with: prefix.utf8) else { return nil }
        return String(decoding: channel.utf8.dropFirst(prefix.utf8.count), as: UTF8.self)
    }

    /// What separates a value's tag from the rest: `TAG~REST`.
    static let handoffTagSeparator = "~"

    /// The Lua pattern of a tagged value: lowercase hex digits, then the separator. The class is
    /// spelled out, not `%x`, so that no server locale can change it.
    static let handoffTagPattern = "^([0-9a-f]+)" + handoffTagSeparator

    /// The channel a fair release of `name` publishes the handoff to `value` on (mirrors
    /// ``releaseFair``): the client channel `redlock:handoff:~TAG` when the value starts with a
    /// tag (one or more lowercase hex digits, then `~`; ``LocalCoordination/handoffTag``), else
    /// `redlock:handoff:NAME`. Each client tags its fair locks' random values with its own tag,
    /// so a handoff reaches only the waiter's process, not every process that waits for the name;
    /// and one channel serves every name, so a client listens on it before its first attempt on
    /// a name it never waited for.
    static func handoffChannel(_ name: String, value: String) -> String {
        guard let tag = handoffTag(of: value) else { return handoffChannel(name) }
        return clientHandoffChannel(tag: tag)
    }

    /// The channel of the client whose tag is `tag`: `redlock:handoff:~TAG`.
    static func clientHandoffChannel(tag: some StringProtocol) -> String {
        handoffChannelPrefix + handoffTagSeparator + tag
    }

    /// The tag `value` starts with (``handoffChannel(_:value:)``), or nil.
    static func handoffTag(of value: String) -> Substring? {
        let utf8 = value.utf8
        guard let end = utf8.firstIndex(of: UInt8(ascii: "~")), end > utf8.startIndex else { return nil }
        let isTag = utf8[..<end].allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains($0) }
        return isTag ? value[..<end] : nil
    }

    /// The lock name of a release channel, or nil for another channel.
    static func lockName(ofReleaseChannel channel: String) -> String? {
        rest(of: channel, after: releaseChannelPrefix)
    }

}
