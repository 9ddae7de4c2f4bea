/*
 * redlock.pml — a Promela model of swift-redlock's Redlock protocol.
 *
 * One lock name, N independent Redis masters, NC clients. Discrete true time
 * advances one tick at a time (proctype Environment); every duration below is
 * in ticks. Names follow the Swift code (see Models/README.md for the mapping).
 *
 * Configuration is chosen with -D macros at `spin -a` time (see verify.sh):
 *   N, NC, CALLS, TRIES, expiry            sizes
 *   CHECK_MUTEX / CHECK_FENCE              which property is asserted
 *   RESTART_LOSES_DATA=0|1                 a restart keeps (AOF, fsync always)
 *                                          or loses (no persistence) the node's data
 *   RESTART_GUARD=0|1                      a node up for less than the maximum
 *                                          lease expiry does not vote
 *   NODE_FAST_TICKS                        how many ticks early a node clock may
 *                                          expire a key (default: within the
 *                                          drift bound, driftTicks)
 *   VALIDITY_ALLOWANCE=0|1                 1 (default): validity subtracts the
 *                                          drift allowance as the code does
 */

/* ---------------------------------------------------------------- sizes */
#ifndef N
#define N 3                      /* independent Redis nodes                */
#endif
#ifndef NC
#define NC 2                     /* clients contending for the same name   */
#endif
#ifndef CALLS
#define CALLS 2                  /* lock() calls per client (bounds tokens)*/
#endif
#ifndef TRIES
#define TRIES 2                  /* options.tries: attempts per lock() call*/
#endif

/* ------------------------------------------------- options, as the code */
#define quorum (N / 2 + 1)       /* integer division, as in the code      */
#ifndef expiry
#define expiry 6                 /* options.expiry (8 s in code) in ticks  */
#endif
#define driftFactorPermille 10   /* options.driftFactor = 0.01             */
/* expiry * driftFactor, rounded up to whole ticks (never 0)              */
#define driftTicks ((expiry * driftFactorPermille + 999) / 1000)
#define fixedDriftAllowance 1    /* the fixed 2 ms, as one tick            */
#define timeoutFactorPermille 50 /* options.timeoutFactor = 0.05           */
/* per-attempt budget = expiry * timeoutFactor, rounded up (never 0)      */
#define attemptBudget ((expiry * timeoutFactorPermille + 999) / 1000)

#ifndef VALIDITY_ALLOWANCE
#define VALIDITY_ALLOWANCE 1
#endif
/* validity at elapsed = 0: expiry - expiry*driftFactor - 2 ms.
 * The model's countdown rem[c] equals `validity` = this - (now - start),
 * so validUntil = start + leaseTicks.                                     */
#if VALIDITY_ALLOWANCE
#define leaseTicks (expiry - driftTicks - fixedDriftAllowance)
#else
#define leaseTicks (expiry)
#endif

/* ----------------------------------------------------- environment knobs */
#ifndef NODE_FAST_TICKS
#define NODE_FAST_TICKS driftTicks   /* key may expire this many ticks early */
#endif
#ifndef NODE_SLOW_TICKS
#define NODE_SLOW_TICKS driftTicks   /* ... or this many ticks late          */
#endif
#ifndef MAX_CRASHES
#define MAX_CRASHES 1
#endif
#ifndef RESTART_LOSES_DATA
#define RESTART_LOSES_DATA 0
#endif
#ifndef RESTART_GUARD
#define RESTART_GUARD 0
#endif
#define restartGuardTicks expiry     /* maximum lease expiry                 */
#ifndef REPLY_LOSS
#define REPLY_LOSS 1                 /* a reply may arrive after the budget  */
#endif

/* ------------------------------------------------------------- messages */
#define NONE   0
#define SET    1   /* acquire script: SET NX PX expiry + INCR fence        */
#define RAISE  2   /* raise script: if GET == v then fence = max(fence, t) */
#define TOUCH  3   /* extend script: if GET == v then PEXPIRE expiry       */
#define DEL    4   /* release script: if GET == v then DEL                 */

#define IDLE   0   /* this node is not part of the current round           */
#define PEND   1   /* request sent, no reply yet                           */
#define OK     2
#define FAIL   3

#define slot(c, x) ((c) * N + (x))

/* ------------------------------------------------------------ node state */
byte key[N];          /* the lock value stored under the name, 0 = absent */
byte ttl[N];          /* ticks until the key expires (node clock)         */
byte fence[N];        /* per-name fencing counter, survives key expiry    */
#if RESTART_GUARD
byte up[N];           /* ticks since restart, saturating                  */
#endif
byte crashes;

/* ---------------------------------------------------------- client state */
byte net[NC * N];     /* request in flight client c -> node x (NONE..DEL)  */
byte rsp[NC * N];     /* per-node outcome of client c's current round      */
byte okc[NC];         /* ok replies in the current round                   */
byte pnd[NC];         /* nodes still pending in the current round          */
byte val[NC];         /* lock value of the current lock() call             */
byte tok[NC];         /* fencing token: max counter of the ok nodes        */
byte rem[NC];         /* validity remaining = validUntil - now (0 = gone)  */
byte erem[NC];        /* same, for an extend in progress                   */
bool holds[NC];       /* client has a lease it has not released            */
#ifdef CHECK_FENCE
byte maxToken;        /* highest token of any successful acquisition       */
#endif

/* a node's reply counts only if the node may vote */
#if RESTART_GUARD
#define votes(x) (up[x] >= restartGuardTicks)
#else
#define votes(x) true
#endif

/* PX / PEXPIRE expiry, measured by a node clock that may run fast or slow */
inline setTtl(x) {
  ttl[x] = expiry - NODE_FAST_TICKS;
  do
  :: ttl[x] < expiry + NODE_SLOW_TICKS -> ttl[x]++
  :: break
  od
}

/* the reply of node x to client c, for the current round */
inline reply(c, x, i, success, counter) {
  if
  :: rsp[i] == PEND ->
       if
       :: (success) && votes(x) ->
            rsp[i] = OK; okc[c]++; pnd[c]--;
            if   /* token = max of the counters the ok nodes returned */
            :: counter > tok[c] -> tok[c] = counter
            :: else -> skip
            fi
       :: else                  -> rsp[i] = FAIL; pnd[c]--
       fi
#if REPLY_LOSS
  :: rsp[i] == PEND -> skip   /* reply late past the budget, or lost */
#endif
  :: else -> skip             /* a late request of a finished round    */
  fi
}

/* one connection: delivers client c's request to node x, runs the script
 * atomically on the node, and returns the reply */
proctype Link(byte c; byte x) {
  byte i = slot(c, x);
end:
  do
  :: atomic {
       net[i] != NONE ->
       if
       :: net[i] == SET ->
            if
            :: key[x] == 0 ->
                 key[x] = val[c]; setTtl(x); fence[x]++;
                 reply(c, x, i, true, fence[x])
            :: else -> reply(c, x, i, false, 0)
            fi
       :: net[i] == RAISE ->
            if
            :: key[x] == val[c] ->
                 if
                 :: fence[x] < tok[c] -> fence[x] = tok[c]
                 :: else -> skip
                 fi;
                 reply(c, x, i, true, 0)
            :: else -> reply(c, x, i, false, 0)
            fi
       :: net[i] == TOUCH ->
            if
            :: key[x] == val[c] -> setTtl(x); reply(c, x, i, true, 0)
            :: else -> reply(c, x, i, false, 0)
            fi
       :: net[i] == DEL ->
            if
            :: key[x] == val[c] -> key[x] = 0; ttl[x] = 0
            :: else -> skip
            fi
       fi;
       net[i] = NONE
     }
  od
}

/* ------------------------------------------------------------- properties */
inline becomeHolder(c) {
#ifdef CHECK_MUTEX
  /* (1) no two clients believe they hold a valid lease at once */
  for (o : 0 .. NC - 1) {
    assert(o == c || !(holds[o] && rem[o] > 0))
  }
  o = 0;
#endif
  holds[c] = true
}

/* --------------------------------------------------------------- rounds */
inline startRound(c, op) {          /* send op to every node */
  okc[c] = 0; pnd[c] = N;
  for (x : 0 .. N - 1) { net[slot(c, x)] = op; rsp[slot(c, x)] = PEND }
  x = 0
}

inline endRound(c) {                /* forget the round; late requests stay */
  okc[c] = 0; pnd[c] = 0;
  for (x : 0 .. N - 1) { rsp[slot(c, x)] = IDLE }
  x = 0
}

inline releaseAll(c) {              /* compare-and-delete on every node */
  okc[c] = 0; pnd[c] = 0;
  for (x : 0 .. N - 1) { net[slot(c, x)] = DEL; rsp[slot(c, x)] = IDLE }
  x = 0
}

#define elapsed(c)   (leaseTicks - rem[c])
#define timedOut(c)  (elapsed(c) >= attemptBudget || rem[c] == 0)
#define eTimedOut(c) (leaseTicks - erem[c] >= attemptBudget || erem[c] == 0)

proctype Client(byte c) {
  byte call, try, x, o;

nextCall:
  if
  :: call < CALLS -> skip
  :: else -> goto done
  fi;
  atomic { call++; try = 0; val[c] = c * CALLS + call }

attempt:
  /* 1. start = now; 2. the acquire script on every node, concurrently */
  atomic { try++; tok[c] = 0; rem[c] = leaseTicks; startRound(c, SET) }

  /* 3. decided once ok >= quorum, or ok + pending < quorum, or the budget
   *    passes (pending nodes count as failed) */
  if
  :: atomic { okc[c] >= quorum ->
       /* 4. raise round on the ok nodes, with token = max counter */
       pnd[c] = 0;
       for (x : 0 .. N - 1) {
         if
         :: rsp[slot(c, x)] == OK ->
              net[slot(c, x)] = RAISE; rsp[slot(c, x)] = PEND; pnd[c]++
         :: else -> rsp[slot(c, x)] = IDLE
         fi
       }
       x = 0; okc[c] = 0 }
  :: atomic { okc[c] + pnd[c] < quorum -> goto failed }
  :: atomic { okc[c] < quorum && timedOut(c) -> goto failed }
  fi;

  /* the raise must succeed on a quorum */
  if
  :: atomic { okc[c] >= quorum ->
       /* end = now; validity = expiry - (end - start) - drift - 2 ms = rem */
       if
       :: rem[c] > 0 ->
            becomeHolder(c);
#ifdef CHECK_FENCE
            /* (2) tokens strictly increase across successful acquisitions */
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
  :: atomic { rem[c] > 0 -> erem[c] = leaseTicks; startRound(c, TOUCH) };
     /* extend: success iff the key still holds v on a quorum */
     if
     :: atomic { okc[c] >= quorum ->
          if
          :: erem[c] > 0 -> rem[c] = erem[c]; becomeHolder(c)
          :: else -> skip
          fi;
          erem[c] = 0; endRound(c) }
     :: atomic { okc[c] + pnd[c] < quorum -> erem[c] = 0; endRound(c) }
     :: atomic { okc[c] < quorum && eTimedOut(c) -> erem[c] = 0; endRound(c) }
     fi;
     goto holding
  :: atomic {
       holds[c] = false; rem[c] = 0; erem[c] = 0; tok[c] = 0;
       releaseAll(c); goto nextCall }
  fi;

failed:
  atomic {
    rem[c] = 0; tok[c] = 0; releaseAll(c);
    if
    :: try < TRIES -> goto attempt   /* after the retry delay (any length) */
    :: else -> goto nextCall
    fi }

done:
  skip
}

/* ------------------------------------------------ time, clocks, crashes */
proctype Environment() {
  byte x, c;
end:
  do
  :: d_step {    /* one tick of true time */
       for (x : 0 .. N - 1) {
         if
         :: ttl[x] > 1 -> ttl[x]--
         :: ttl[x] == 1 -> ttl[x] = 0; key[x] = 0    /* PX expiry */
         :: else -> skip
         fi;
#if RESTART_GUARD
         if
         :: up[x] < restartGuardTicks -> up[x]++
         :: else -> skip
         fi
#endif
       }
       x = 0;
       for (c : 0 .. NC - 1) {
         if :: rem[c] > 0  -> rem[c]--  :: else -> skip fi;
         if :: erem[c] > 0 -> erem[c]-- :: else -> skip fi
       }
       c = 0
     }
  :: atomic {    /* a node crashes and restarts */
       crashes < MAX_CRASHES ->
       crashes++;
       select(x : 0 .. N - 1);
#if RESTART_LOSES_DATA
       key[x] = 0; ttl[x] = 0; fence[x] = 0;
#endif
#if RESTART_GUARD
       up[x] = 0;
#endif
       x = 0 }
  od
}

init {
  byte c, x;
  atomic {
#if RESTART_GUARD
    for (x : 0 .. N - 1) { up[x] = restartGuardTicks }
#endif
    run Environment();
    for (c : 0 .. NC - 1) {
      run Client(c);
      for (x : 0 .. N - 1) { run Link(c, x) }
    }
    c = 0; x = 0
  }
}
