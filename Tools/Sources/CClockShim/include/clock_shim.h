#ifndef CCLOCKSHIM_H
#define CCLOCKSHIM_H

/* The clock shim defines clock_gettime, gettimeofday and time for a redis-server it is
   preloaded into (LD_PRELOAD); nothing here is meant to be called. The protocol: the
   environment variable REDLOCK_CLOCK_CONTROL names a file holding "RATE OFFSET_NS" (see
   clock_shim.c and RedisServer.setClock(rate:offset:)). */
#define REDLOCK_CLOCK_CONTROL_VARIABLE "REDLOCK_CLOCK_CONTROL"

#endif
