#ifndef CHIREDIS_SHIM_H
#define CHIREDIS_SHIM_H

#include <hiredis/hiredis.h>
#include <errno.h>
#include <stddef.h>
#include <sys/time.h>

/* The context's error text as a C string (Swift sees the array as a 128-byte tuple). */
static inline const char *chiredis_errstr(const redisContext *c) {
    return c->errstr;
}

/* errno of the calling thread, read right after a failed hiredis call. */
static inline int chiredis_errno(void) {
    return errno;
}

/* Element i of an array reply, or NULL when out of range. */
static inline const redisReply *chiredis_element(const redisReply *r, size_t i) {
    if (r == NULL || r->element == NULL || i >= r->elements) {
        return NULL;
    }
    return r->element[i];
}

/* Reads one reply; returns REDIS_OK with *out set (possibly NULL), or REDIS_ERR. */
static inline int chiredis_get_reply(redisContext *c, redisReply **out) {
    void *reply = NULL;
    int rc = redisGetReply(c, &reply);
    *out = (redisReply *)reply;
    return rc;
}

/* Takes one complete reply from the reader's buffer without touching the socket; *out is
   NULL when no complete reply is buffered. */
static inline int chiredis_get_reply_from_reader(redisContext *c, redisReply **out) {
    void *reply = NULL;
    int rc = redisGetReplyFromReader(c, &reply);
    *out = (redisReply *)reply;
    return rc;
}

#endif
