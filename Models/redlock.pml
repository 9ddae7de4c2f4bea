/*
 * redlock.pml -- a Promela model of swift-redlock's Redlock protocol.
 *
 * One lock name, N independent Redis masters, NC clients.  True time is
 * discrete: proctype Environment advances it one tick at a time, at any
 * moment, so every other step (message delivery, a client's next action)
 * may be delayed by any number of ticks -- that is how message delay and
 * client pauses are modelled.  Every duration is in ticks.  Names follow
 * the Swift code; Models/README.md gives the mapping and the limits.
 *
 * Configuration is chosen with -D at `spin -a` time (see verify.sh):
 *   N, NC, CALLS, TRIES, expiry     sizes (defaults 3, 2, 1, 2, 4)
 *   CHECK_MUTEX | CHECK_FENCE       which property is asserted
 *   RESTART_LOSES_DATA=0|1          a restart keeps its data (AOF with
 *                                   fsync always) or comes back empty
 *   RESTART_GUARD=0|1               a node up for less than the maximum
 *                                   lease expiry does not vote
 *   DATA_LOSS_FLUSH=0|1             a node may lose its data without a
 *                                   restart (FLUSHALL); counts as a crash
 *   EPOCH_GUARD=0|1                 the acquire script's data-epoch check:
 *                                   a node without its marker makes one,
 *                                   seeds its counter above every earlier
 *                                   token, and refuses until the marker is
 *                                   the maximum lease expiry old
 *   NODE_FAST_TICKS                 how early a node clock may expire a key
 *                                   (default driftTicks: within the bound)
 *   NODE_SLOW_TICKS                 how late (default 0, see README)
 *   VALIDITY_ALLOWANCE=0|1          1: validity subtracts the drift
 *                                   allowance, as the code does
 *   HANDOFF_QUEUE=0|1               a fair lock (LockOptions.fair): a release
 *                                   may hand the key to another client's
 *                                   value (the first in line, whichever the
 *                                   node's queue says), and an acquire on a
 *                                   key that holds the caller's value is
 *                                   granted (the claim)
 *   HANDOFF_CLAIM_RESETS=0|1        1: the claim resets the expiry (PEXPIRE),
 *                                   as the script does; 0: it counts the
 *                                   handed key as it stands
 *   HANDOFF_GRANT=0|1               (with HANDOFF_QUEUE) a handoff is also a
 *                                   grant: the node tells the waiter (a
 *                                   message that arrives any time later, or
 *                                   never); messages from a quorum of nodes
 *                                   where none of the call's clean-ups is
 *                                   on its way or deleted anything are a
 *                                   lease valid from the call's first attempt
 *   HANDOFF_GRANT_ANY_NODE=0|1      (a mutant) also counts nodes where a
 *                                   clean-up of the call deleted the key
 *   HANDOFF_GRANT_LATE_START=0|1    (a mutant) counts the validity from
 *                                   the quorum of messages, not from the
 *                                   call's first attempt
 *   CLOCK_GAIN                      ticks by which node clocks may run ahead
 *                                   of true time beyond the drift bound in a
 *                                   run, one tick at a time, at any moment
 *                                   (a fast clock or a step; default 0)
 *   CLOCK_GUARD=0|1                 the clock guard (LockOptions.clockGuard):
 *                                   an acquire reply carries the node's
 *                                   clock; a client that read the node before
 *                                   and sees it ran ahead since refuses the
 *                                   node's votes for clockHoldOffTicks
 *   CLOCK_HISTORY=0|1               1 (default): every client has read every
 *                                   node before the run; 0: client 1 has not
 */

/* ------------------------------------------------------------------ sizes */
#ifndef N
#define N 3               /* independent Redis masters                      */
#endif
#ifndef NC
#define NC 2              /* clients locking the same name                  */
#endif
#ifndef CALLS
#define CALLS 1           /* lock() calls of client 0 ...                   */
#endif
#ifndef CALLS_OTHERS
#define CALLS_OTHERS CALLS /* ... and of each other client                 */
#endif
#define callsOf(c) ((c) == 0 -> CALLS : CALLS_OTHERS)
/* values per client: distinct over every call of every client */
#define valuesPerClient (CALLS > CALLS_OTHERS -> CALLS : CALLS_OTHERS)
#ifndef TRIES
#define TRIES 2           /* options.tries: attempts per lock() call ...    */
#endif
#ifndef TRIES_OTHERS
#define TRIES_OTHERS 1    /* ... of client 0; of the other clients          */
#endif
#define triesOf(c) ((c) == 0 -> TRIES : TRIES_OTHERS)
#ifndef MAX_EXTENDS
#define MAX_EXTENDS 1     /* extend() calls per lease                       */
#endif
#ifndef MAX_CRASHES
#define MAX_CRASHES 1     /* node crash + restart events in a run           */
#endif

/* --------------------------------------------- options, named as the code */
#define quorum (N / 2 + 1)          /* integer division                    */
#ifndef expiry
#define expiry 4                    /* options.expiry (8 s) in ticks        */
#endif
#define driftFactorPermille 10      /* options.driftFactor = 0.01           */
#define timeoutFactorPermille 50    /* options.timeoutFactor = 0.05         */
/* expiry * driftFactor, rounded up to a whole tick                         */
#define driftTicks ((expiry * driftFactorPermille + 999) / 1000)
/* fixedDriftAllowance: the code's fixed 2 ms, as one tick                  */
#define fixedDriftAllowance 1
/* the per-attempt budget expiry * timeoutFactor, rounded up                */
#ifndef attemptBudget
#define attemptBudget ((expiry * timeoutFactorPermille + 500) / 1000)
#endif

#ifndef VALIDITY_ALLOWANCE
#define VALIDITY_ALLOWANCE 1
#endif
/* validity = expiry - (end - start) - expiry*driftFactor - 2 ms.
 * rem[c] counts it down from `leaseTicks` (its value at end == start), so
 * rem[c] == validity at every instant and rem[c] == 0 is validUntil.      */
#if VALIDITY_ALLOWANCE
#define leaseTicks (expiry - driftTicks - fixedDriftAllowance)
#else
#define leaseTicks (expiry)
#endif

/* -------------------------------------------------------- environment knobs */
#ifndef NODE_FAST_TICKS
#define NODE_FAST_TICKS driftTicks
#endif
#ifndef NODE_SLOW_TICKS
#define NODE_SLOW_TICKS 0
#endif
#ifndef RESTART_LOSES_DATA
#define RESTART_LOSES_DATA 0
#endif
#ifndef RESTART_GUARD
#define RESTART_GUARD 0
#endif
#define restartGuardTicks expiry    /* the maximum lease expiry             */
#ifndef DATA_LOSS_FLUSH
#define DATA_LOSS_FLUSH 0
#endif
#ifndef EPOCH_GUARD
#define EPOCH_GUARD 0
#endif
#ifndef epochGuardTicks
#define epochGuardTicks expiry      /* options.epochGuard: the max expiry    */
#endif
#ifndef REPLY_LOSS
#define REPLY_LOSS 1                /* a reply may miss the budget          */
#endif
#ifndef HANDOFF_QUEUE
#define HANDOFF_QUEUE 0
#endif
#ifndef HANDOFF_CLAIM_RESETS
#define HANDOFF_CLAIM_RESETS 1
#endif
#ifndef HANDOFF_GRANT
#define HANDOFF_GRANT 0
#endif
#ifndef HANDOFF_GRANT_ANY_NODE
#define HANDOFF_GRANT_ANY_NODE 0
#endif
#ifndef HANDOFF_GRANT_LATE_START
#define HANDOFF_GRANT_LATE_START 0
#endif
#ifndef CLOCK_GAIN
#define CLOCK_GAIN 0
#endif
#ifndef CLOCK_GUARD
#define CLOCK_GUARD 0
#endif
#ifndef clockHoldOffTicks
#define clockHoldOffTicks expiry    /* epochGuard, else expiry: the max expiry */
#endif
#ifndef CLOCK_HISTORY
#define CLOCK_HISTORY 1
#endif
/* may client c's acquire take node x's key?  A fair lock's also when a
 * release handed it to c (or c's own earlier attempt left it there) */
#if HANDOFF_QUEUE
#define claimable(x, c) (key[x] == 0 || key[x] == val[c])
#else
#define claimable(x, c) (key[x] == 0)
#endif

/* --------------------------------------------------------------- messages */
#define NONE   0
#define SET    1   /* acquire script: if absent SET v PX expiry; INCR fence  */
#define RAISE  2   /* raise script: if GET == v then fence = max(fence, tok) */
#define TOUCH  3   /* extend script: if GET == v then PEXPIRE expiry         */
#define DEL    4   /* release script: if GET == v then DEL                   */

#define IDLE   0   /* node not in the client's current round                */
#define PEND   1   /* request sent, no reply counted yet                     */
#define OK     2
#define FAIL   3
#define LOST   4   /* ran, but the reply missed the budget: counts as FAIL   */

#define slot(c, x) ((c) * N + (x))
/* no request of client c on its way (up to five nodes) */
#define netIdle(c) (net[slot(c, 0)] == NONE && (N < 2 || net[slot(c, 1)] == NONE) && \
  (N < 3 || net[slot(c, 2)] == NONE) && (N < 4 || net[slot(c, 3)] == NONE) && \
  (N < 5 || net[slot(c, 4)] == NONE))

/* Counters never steer the protocol (only the RAISE script's compare on
 * the key does), so a run that does not check fencing leaves them at 0. */
#if defined(CHECK_FENCE) && EPOCH_GUARD
/* the ghost maxFence records the highest counter any node ever reached */
#define fenceIncr(x) fence[x]++; if :: fence[x] > maxFence -> maxFence = fence[x] :: else -> skip fi
#elif defined(CHECK_FENCE)
#define fenceIncr(x) fence[x]++
#else
#define fenceIncr(x) skip
#endif

/* -------------------------------------------------------------- node state */
byte key[N];          /* value stored under the lock name; 0 = absent      */
byte ttl[N];          /* true ticks until the key expires                  */
byte fence[N];        /* the name's fencing counter; survives key expiry   */
byte px[N];           /* true ticks a node-clock `expiry` lasts (its rate) */
#if RESTART_GUARD
byte up[N];           /* ticks since the node (re)started, saturating      */
#endif
#if EPOCH_GUARD
byte epoch[N];        /* 0: no marker; else 1 + the marker's age in ticks,
                       * saturating at 1 + epochGuardTicks                  */
byte maxFence;        /* ghost: the highest counter any node ever reached;
                       * a new marker's seed (the node's time in us) is
                       * assumed to exceed it (Models/README.md)            */
#endif
byte crashes;
#if CLOCK_GAIN
byte gains;           /* ticks the node clocks have gained so far          */
#endif

/* ------------------------------------------------------------ client state */
byte net[NC * N];     /* request in flight, client c -> node x             */
byte rsp[NC * N];     /* node x's outcome in client c's current round      */
byte okc[NC];         /* OK replies in the current round                   */
byte pnd[NC];         /* nodes still PEND in the current round             */
byte rt[NC];          /* 0: no round; else 1 + ticks since round start     */
byte val[NC];         /* lock value of the current lock() call             */
byte tok[NC];         /* fencing token: max counter the ok nodes returned  */
byte rem[NC];         /* validity left = validUntil - now; 0 = gone        */
byte erem[NC];        /* the same for the extend in progress               */
bool holds[NC];       /* acquired and not yet released                     */
#ifdef CHECK_FENCE
byte maxToken;        /* highest token of any successful acquisition       */
#endif
#if HANDOFF_GRANT
bool hmsg[NC * N];    /* node x handed the key to client c's current value
                       * (the message: read whenever the client looks, or
                       * never)                                            */
bool dirty[NC * N];   /* a clean-up of client c's current call deleted the
                       * key on node x                                     */
byte hrem[NC];        /* validity left counted from the start of the
                       * call's first attempt, as rem[c] would be          */
#endif
#if CLOCK_GUARD
byte clk[NC * N];     /* client c's readings of node x's clock: 0 = none;
                       * 1 = read, no gain since; 2 = the node's clock has
                       * gained since c's last reading                      */
byte refused[NC * N]; /* ticks left during which c refuses x's votes        */
#endif

#define inBudget(c)  (rt[c] <= attemptBudget + 1)   /* elapsed <= budget   */
#define timedOut(c)  (rt[c] >  attemptBudget + 1)

/* does node x's acquire vote count?  (restartGuard: not while up < max expiry) */
#if RESTART_GUARD
#define votes(x) (up[x] >= restartGuardTicks)
#else
#define votes(x) true
#endif

/* slot i's reply counts as a success */
inline granted(c, i, counter) {
  rsp[i] = OK; okc[c]++; pnd[c]--;
  if    /* token = max of the counters the ok nodes returned */
  :: counter > tok[c] -> tok[c] = counter
  :: else -> skip
  fi
}

#if CLOCK_GUARD
/* Client c reads node x's clock in an acquire reply (slot i).  A gain
 * since c's previous reading shows (the assumption: a gain beyond the drift
 * bound exceeds the guard's allowance, README); the node is then refused
 * for clockHoldOffTicks from this reading on.  A first reading judges
 * nothing.                                                                */
inline readClock(i) {
  if
  :: clk[i] == 2 -> refused[i] = clockHoldOffTicks;
       printf("MSC: client %d: node %d's clock ran ahead: refused\n", i / N, i % N)
  :: else -> skip
  fi;
  clk[i] = 1
}
#define trusted(i) (refused[i] == 0)
#endif

/* the reply of node x to an acquire of client c: with the clock guard,
 * the reply's reading is judged first, and a node not trusted refuses */
inline acquireReply(c, x, i, success, counter) {
#if CLOCK_GUARD
  if
  :: rsp[i] == PEND ->
       if
       :: true ->
            readClock(i);
            if
            :: (success) && trusted(i) -> granted(c, i, counter)
            :: else -> rsp[i] = FAIL; pnd[c]--
            fi
#if REPLY_LOSS
       :: (success) -> rsp[i] = LOST; pnd[c]--    /* no reply, no reading */
#endif
       fi
  :: else -> skip
  fi
#else
  reply(c, x, i, success, counter)
#endif
}

/* the reply of node x to client c's current round */
inline reply(c, x, i, success, counter) {
  if
  :: rsp[i] == PEND ->
       if
       :: (success) -> granted(c, i, counter)
       :: else -> rsp[i] = FAIL; pnd[c]--
#if REPLY_LOSS
       /* executed, but the reply misses the budget or is lost: the
        * client counts a failure (it could only decide the same, later) */
       :: (success) -> rsp[i] = LOST; pnd[c]--
#endif
       fi
  :: else -> skip             /* (defensive: no round is listening)        */
  fi
}

/* The release script's delete: a fair lock's may hand the key to any other
 * client that has begun a lock() call -- the first in line, waiting, given
 * up or even holding with an entry left on this node: the queue's order and
 * entries are not modelled, so every choice is explored -- for as long as a
 * node-clock expiry lasts (the code: twice the attempt budget), or delete it. */
inline handOver(x, c) {
  key[x] = 0; ttl[x] = 0;
#if HANDOFF_QUEUE
  for (h : 0 .. NC - 1) {
    if
    :: h != c && val[h] != 0 && key[x] == 0 ->
         key[x] = val[h]; ttl[x] = px[x];
#if HANDOFF_GRANT
         hmsg[slot(h, x)] = true;
#endif
         printf("MSC: node %d: release hands the key to v%d\n", x, val[h])
    :: true -> skip
    fi
  }
  h = 0
#endif
}

/* One connection.  Delivers client c's request to node x, runs the Lua
 * script atomically there and hands back the reply.  A request is
 * delivered while its round's budget lasts, or not at all (endRound
 * drops it); a reply that misses the budget is the REPLY_LOSS case.      */
proctype Link(byte c; byte x) {
#if HANDOFF_QUEUE
  byte h;
#endif
end:
  do
  :: atomic {
       net[slot(c, x)] != NONE &&
       (rsp[slot(c, x)] != PEND || inBudget(c)) ->
       if
       :: net[slot(c, x)] == SET ->
            if
#if EPOCH_GUARD
            /* the data-epoch check comes first and, when young, touches
             * nothing but the marker (and, when it makes one, the counter) */
            :: epoch[x] == 0 ->
                 epoch[x] = 1;
#ifdef CHECK_FENCE
                 fence[x] = maxFence + 1; maxFence = fence[x];
#endif
                 printf("MSC: node %d: no epoch marker: made, vote refused\n", x);
                 acquireReply(c, x, slot(c, x), false, 0)
            :: epoch[x] > 0 && epoch[x] <= epochGuardTicks ->
                 printf("MSC: node %d: epoch marker too young, vote refused\n", x);
                 acquireReply(c, x, slot(c, x), false, 0)
            :: epoch[x] > epochGuardTicks && claimable(x, c) ->
#else
            :: claimable(x, c) ->
#endif
#if HANDOFF_QUEUE && !HANDOFF_CLAIM_RESETS
                 if
                 :: key[x] == val[c] -> skip     /* counted as it stands */
                 :: else -> key[x] = val[c]; ttl[x] = px[x]
                 fi;
                 fenceIncr(x);
#else
                 key[x] = val[c]; ttl[x] = px[x]; fenceIncr(x);
#endif

                 printf("MSC: node %d: SET v%d ok (fence %d, expires in %d)\n", x, val[c], fence[x], ttl[x]);
                 /* restart guard: the acquire vote of a node up for less
                  * than restartGuard is refused (only the acquire round) */
                 acquireReply(c, x, slot(c, x), votes(x), fence[x])
#if EPOCH_GUARD
            :: epoch[x] > epochGuardTicks && !claimable(x, c) ->
#else
            :: else ->
#endif
                       printf("MSC: node %d: SET v%d taken\n", x, val[c]);
                       acquireReply(c, x, slot(c, x), false, 0)
            fi
       :: net[slot(c, x)] == RAISE ->
            if
            :: key[x] == val[c] ->
                 if
                 :: fence[x] < tok[c] -> fence[x] = tok[c]
                 :: else -> skip
                 fi;
                 reply(c, x, slot(c, x), true, 0)
            :: else -> reply(c, x, slot(c, x), false, 0)
            fi
       :: net[slot(c, x)] == TOUCH ->
            if
            :: key[x] == val[c] -> ttl[x] = px[x];
                 printf("MSC: node %d: PEXPIRE v%d (expires in %d)\n", x, val[c], ttl[x]);
                 reply(c, x, slot(c, x), true, 0)
            :: else -> reply(c, x, slot(c, x), false, 0)
            fi
       :: net[slot(c, x)] == DEL ->
            if
            :: key[x] == val[c] -> handOver(x, c);
#if HANDOFF_GRANT
                 dirty[slot(c, x)] = true      /* the clean-up deleted */
#else
                 skip
#endif
            :: else -> skip
            fi
       fi;
       net[slot(c, x)] = NONE
     }
  od
}

/* -------------------------------------------------------------- properties */
inline becomeHolder(c) {
#ifdef CHECK_MUTEX
  /* (1) mutual exclusion: no other client believes it holds a valid lease
   * now.  Belief only starts here and only ends as true time passes, so
   * checking at every start covers every instant.                        */
  for (o : 0 .. NC - 1) {
    assert(o == c || !(holds[o] && rem[o] > 0))
  }
  o = 0;
#endif
  holds[c] = true
}

/* ------------------------------------------------------------------ rounds */
inline startRound(c, op) {          /* fan op out to every node */
  okc[c] = 0; pnd[c] = N; rt[c] = 1;
  for (x : 0 .. N - 1) { net[slot(c, x)] = op; rsp[slot(c, x)] = PEND }
  x = 0
}

inline endRound(c) {                /* stop listening; see README on late requests */
  okc[c] = 0; pnd[c] = 0; rt[c] = 0;
  for (x : 0 .. N - 1) {
    rsp[slot(c, x)] = IDLE;
    net[slot(c, x)] = NONE      /* a request not yet delivered is dropped */
  }
  x = 0
}

/* release: compare-and-delete on every node.  Modelled as landing at
 * once; a DEL that is late or lost only keeps a node busy longer, which a
 * competitor's request missing its budget already covers (README). */
inline releaseAll(c) {
  okc[c] = 0; pnd[c] = 0; rt[c] = 0;
  for (x : 0 .. N - 1) {
    net[slot(c, x)] = NONE; rsp[slot(c, x)] = IDLE;
    if
    :: key[x] == val[c] -> handOver(x, c)
    :: else -> skip
    fi
  }
  x = 0
}

proctype Client(byte c) {
  byte call, try, ext, x, o;
#if HANDOFF_QUEUE
  byte h;
#endif

nextCall:
  if
  :: call < callsOf(c) -> skip
  :: else -> goto done
  fi;
  /* lock(): a fresh value, reused by every retry of this call */
  atomic { call++; try = 0; ext = 0; val[c] = c * valuesPerClient + call }

attempt:
  /* 1. start = now.  2. the acquire script on every node, concurrently */
  atomic {
#if HANDOFF_GRANT
    netIdle(c) ->       /* the clean-up went first on each connection */
#endif
    try++; tok[c] = 0; rem[c] = leaseTicks; startRound(c, SET);
#if HANDOFF_GRANT
    if
    :: try == 1 ->      /* the call's first attempt */
         hrem[c] = leaseTicks;
         for (x : 0 .. N - 1) { hmsg[slot(c, x)] = false; dirty[slot(c, x)] = false }
         x = 0
    :: else -> skip
    fi;
#endif
    printf("MSC: client %d: attempt %d, start, SET NX v%d to all\n", c, try, val[c]) }

  /* 3. decided once ok >= quorum, or ok + pending < quorum, or once the
   *    budget has passed (pending nodes count as failed) */
  if
  :: atomic {
       okc[c] >= quorum ->
       /* 4. second round on the ok nodes: raise their fence to the token */
       okc[c] = 0; pnd[c] = 0; rt[c] = 1;
       for (x : 0 .. N - 1) {
         if
         :: rsp[slot(c, x)] == OK ->
              net[slot(c, x)] = RAISE; rsp[slot(c, x)] = PEND; pnd[c]++
         :: else ->
              rsp[slot(c, x)] = IDLE;
              net[slot(c, x)] = NONE
         fi
       }
       x = 0 }
  :: atomic { okc[c] + pnd[c] < quorum -> goto failed }
  :: atomic { okc[c] < quorum && timedOut(c) -> goto failed }
  fi;

  /* the raise must succeed on a quorum */
  if
  :: atomic {
       okc[c] >= quorum ->
       /* end = now; validity = expiry - (end - start) - drift - 2 ms */
       if
       :: rem[c] > 0 ->
            printf("MSC: client %d: ACQUIRED v%d token %d validity %d\n", c, val[c], tok[c], rem[c]);
            becomeHolder(c);
#ifdef CHECK_FENCE
            /* (2) each holder's token exceeds every earlier holder's */
            assert(tok[c] > maxToken);
            maxToken = tok[c];
#endif
            endRound(c)
       :: else -> goto failed
       fi }
  :: atomic { okc[c] + pnd[c] < quorum -> goto failed }
  :: atomic { okc[c] < quorum && timedOut(c) -> goto failed }
  fi;

holding:
  if
  :: atomic {
       rem[c] > 0 && ext < MAX_EXTENDS ->
       /* extend: PEXPIRE where the key still holds v; new validity from
        * the extend's own start */
       ext++; erem[c] = leaseTicks; startRound(c, TOUCH) };
     if
     :: atomic {
          okc[c] >= quorum ->
          if
          :: erem[c] > 0 -> rem[c] = erem[c];
               printf("MSC: client %d: EXTENDED v%d validity %d\n", c, val[c], rem[c]);
               becomeHolder(c)
          :: else -> skip
          fi;
          erem[c] = 0; endRound(c) }
     :: atomic { okc[c] + pnd[c] < quorum -> erem[c] = 0; endRound(c) }
     :: atomic { okc[c] < quorum && timedOut(c) -> erem[c] = 0; endRound(c) }
     fi;
     goto holding
  :: atomic {
       /* release (also what a caller does once the lease has run out) */
       printf("MSC: client %d: release v%d (validity left %d)\n", c, val[c], rem[c]);
       holds[c] = false; rem[c] = 0; tok[c] = 0;
       releaseAll(c); goto nextCall }
  fi;

failed:
  atomic {
    printf("MSC: client %d: attempt %d failed, release v%d\n", c, try, val[c]);
    rem[c] = 0; tok[c] = 0;
#if HANDOFF_GRANT
    /* the clean-up, a compare-and-delete on its way (it lands before the
     * next attempt: same connection), goes where the attempt may have set
     * the key: not to the nodes that refused it */
    okc[c] = 0; pnd[c] = 0; rt[c] = 0;
    for (x : 0 .. N - 1) {
      if
      :: rsp[slot(c, x)] == OK || rsp[slot(c, x)] == PEND || rsp[slot(c, x)] == LOST ->
           net[slot(c, x)] = DEL
      :: else -> net[slot(c, x)] = NONE
      fi;
      rsp[slot(c, x)] = IDLE
    }
    x = 0;
#else
    releaseAll(c);
#endif
    if
    :: try < triesOf(c) -> goto waiting     /* for a release, or the retry delay */
    :: else -> goto nextCall
    fi }

waiting:
#if HANDOFF_GRANT
  /* a quorum of handoff messages from nodes where no clean-up of this call
   * is on its way or deleted anything is a lease from the call's first
   * attempt; or try again */
  do
  :: atomic {
       (HANDOFF_GRANT_LATE_START || hrem[c] > 0) ->
       o = 0;
       for (x : 0 .. N - 1) {
         if
         :: (HANDOFF_GRANT_ANY_NODE || (!dirty[slot(c, x)] && net[slot(c, x)] != DEL)) && hmsg[slot(c, x)] -> o++
         :: else -> skip
         fi
       }
       x = 0;
       if
       :: o >= quorum ->
            o = 0; rem[c] = (HANDOFF_GRANT_LATE_START -> leaseTicks : hrem[c]);
            printf("MSC: client %d: ACQUIRED v%d by handoff messages, validity %d\n", c, val[c], rem[c]);
            becomeHolder(c);
            goto holding
       :: else -> o = 0
       fi }
  :: goto attempt
  od;
#endif
  goto attempt;

done:
  skip
}

/* --------------------------------------------------- time, clocks, crashes */
proctype Environment() {
  byte x, c;
end:
  do
  :: d_step {      /* one tick of true time passes */
       printf("MSC: ---- tick ----\n");
       for (x : 0 .. N - 1) {
         if
         :: ttl[x] > 1 -> ttl[x]--
         :: ttl[x] == 1 -> ttl[x] = 0; key[x] = 0;    /* PX expiry */
            printf("MSC: node %d: key expired\n", x)
         :: else -> skip
         fi;
#if RESTART_GUARD
         if
         :: up[x] < restartGuardTicks -> up[x]++
         :: else -> skip
         fi;
#endif
#if EPOCH_GUARD
         if
         :: epoch[x] > 0 && epoch[x] <= epochGuardTicks -> epoch[x]++
         :: else -> skip
         fi;
#endif
       }
       x = 0;
       for (c : 0 .. NC - 1) {
         if :: rem[c] > 0 -> rem[c]-- :: else -> skip fi;
#if HANDOFF_GRANT
         if :: hrem[c] > 0 -> hrem[c]-- :: else -> skip fi;
#endif
         if :: erem[c] > 0 -> erem[c]-- :: else -> skip fi;
         if :: rt[c] > 0 && rt[c] <= attemptBudget + 1 -> rt[c]++ :: else -> skip fi;
#if CLOCK_GUARD
         for (x : 0 .. N - 1) {
           if :: refused[slot(c, x)] > 0 -> refused[slot(c, x)]-- :: else -> skip fi
         }
         x = 0;
#endif
       }
       c = 0
     }
#if CLOCK_GAIN
  :: atomic {      /* a node's clock gains a tick on true time (runs fast or
                    * steps forward): its key expires a tick sooner        */
       gains < CLOCK_GAIN ->
       gains++;
       select(x : 0 .. N - 1);
       printf("MSC: node %d: clock gains a tick\n", x);
       if
       :: ttl[x] > 1 -> ttl[x]--
       :: ttl[x] == 1 -> ttl[x] = 0; key[x] = 0;
          printf("MSC: node %d: key expired\n", x)
       :: else -> skip
       fi;
#if EPOCH_GUARD
       if   /* the marker's age is the node's clock too */
       :: epoch[x] > 0 && epoch[x] <= epochGuardTicks -> epoch[x]++
       :: else -> skip
       fi;
#endif
#if CLOCK_GUARD
       for (c : 0 .. NC - 1) {
         if :: clk[slot(c, x)] == 1 -> clk[slot(c, x)] = 2 :: else -> skip fi
       }
       c = 0;
#endif
       x = 0 }
#endif
#if RESTART_LOSES_DATA || RESTART_GUARD
  :: atomic {      /* a node crashes and restarts */
       crashes < MAX_CRASHES ->
       crashes++;
       select(x : 0 .. N - 1);
       printf("MSC: node %d: crash + restart (data lost: %d)\n", x, RESTART_LOSES_DATA);
#if RESTART_LOSES_DATA
       key[x] = 0; ttl[x] = 0; fence[x] = 0;
#endif
#if RESTART_GUARD
       up[x] = 0;
#endif
#if EPOCH_GUARD && RESTART_LOSES_DATA
       epoch[x] = 0;
#endif
       x = 0 }
#endif
#if DATA_LOSS_FLUSH
  :: atomic {      /* a node loses its data and keeps running (FLUSHALL) */
       crashes < MAX_CRASHES ->
       crashes++;
       select(x : 0 .. N - 1);
       printf("MSC: node %d: FLUSHALL\n", x);
       key[x] = 0; ttl[x] = 0; fence[x] = 0;
#if EPOCH_GUARD
       epoch[x] = 0;
#endif
       x = 0 }
#endif
  od
}

init {
  byte c, x;
  atomic {
    /* each node's clock rate, within [-NODE_SLOW, +NODE_FAST] ticks per
     * expiry relative to the clients' clocks, fixed for the run */
    for (x : 0 .. N - 1) {
      /* nodes are interchangeable, so rates are chosen in non-decreasing
       * order (symmetry reduction: every other assignment is a renaming) */
      select(c : expiry - NODE_FAST_TICKS .. expiry + NODE_SLOW_TICKS);
      if
      :: x > 0 && c < px[x - 1] -> c = px[x - 1]
      :: else -> skip
      fi;
      px[x] = c;
#if RESTART_GUARD
      up[x] = restartGuardTicks;
#endif
#if EPOCH_GUARD
      epoch[x] = epochGuardTicks + 1;   /* every marker is old at the start */
#endif
#if CLOCK_GUARD
      /* the clients have read every node before (client 1 has not, when
       * CLOCK_HISTORY is 0) */
      for (c : 0 .. NC - 1) {
        clk[slot(c, x)] = ((CLOCK_HISTORY || c != 1) -> 1 : 0)
      }
      c = 0;
#endif
    }
    run Environment();
    for (c : 0 .. NC - 1) {
      run Client(c);
      for (x : 0 .. N - 1) { run Link(c, x) }
    }
    c = 0; x = 0
  }
}
