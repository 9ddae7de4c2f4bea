/*
 * raw-floor: the physical floor of one Redlock lock+unlock cycle, in C.
 *
 * What it measures: with ONE thread and blocking hiredis contexts (TCP_NODELAY
 * is hiredis's default), one cycle on N nodes is
 *
 *   phase 1  `SET <name> <value> NX PX <expiry-ms>` appended to all N nodes,
 *            all N output buffers flushed, then all N replies read; each must
 *            be the status `OK`;
 *   phase 2  `EVALSHA <sha> 1 <name> <value>` of the compare-and-delete script
 *            below (loaded once at start with SCRIPT LOAD on every node),
 *            appended to all N, flushed, then all N replies read; each must be
 *            the integer 1.
 *
 * The commands are formatted once, before any cycle. The script is the one in
 * Sources/RedlockTestSupport/RawFloor.swift (RawFloor.releaseScript), so this
 * is the same floor without Swift or any task machinery around it: what
 * the machine, the kernel's loopback/unix sockets and redis-server cost.
 *
 * Usage:
 *   raw-floor --nodes 127.0.0.1:P1,127.0.0.1:P2,unix:/path/redis.sock,...
 *             [--name KEY] [--expiry-ms 8000] [--duration-ms 1000]
 *             [--warmup 100] [--timeout-ms 1000] [--summary]
 *
 *   --nodes        comma-separated `host:port` (IPv6 as `[addr]:port`) or
 *                  `unix:/path` entries; required.
 *   --name         the key; default `raw-floor:<pid>`. It must not be held on
 *                  any node (SET NX would answer nil, which is a failure).
 *   --expiry-ms    PX of the SET; default 8000.
 *   --duration-ms  how long to run measured cycles; default 1000. At least one
 *                  cycle always runs.
 *   --warmup       cycles run, checked and not recorded, before measuring;
 *                  default 100.
 *   --timeout-ms   connect, read and write timeout of every node; default 1000.
 *   --summary      instead of the latencies, print one line
 *                  `cycles=<n> p50_us=<x> p99_us=<y>` (nearest-rank
 *                  percentiles, microseconds with two decimals).
 *
 * Output: every measured cycle's latency (CLOCK_MONOTONIC, taken just before
 * phase 1's appends and just after phase 2's last reply) in nanoseconds, one
 * decimal integer per line, on stdout; exit status 0.
 *
 * Failure: any failure (connect, timeout, I/O, unexpected reply) prints one
 * line `raw-floor: <node>: <cause>` on stderr and exits 1; <node> is the
 * entry as given in --nodes (or `stdout`/`clock`/`memory` for local causes).
 * Bad command-line usage prints `raw-floor: usage: ...` and exits 2. A failure
 * mid-cycle may leave the key held until it expires (--expiry-ms).
 *
 * Build: `swift build -c release --package-path Tools` (next to `redlock`,
 * where `redlock bench` finds it), or by hand (Debian libhiredis-dev 0.14.1):
 *   gcc -O2 -std=c11 -Wall -Wextra -Werror -o /tmp/raw-floor \
 *       Tools/Sources/RedlockRawFloor/raw_floor.c -lhiredis
 *
 * Example:
 *   /tmp/raw-floor --nodes 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
 *       --duration-ms 2000 --summary
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

/* RawFloor.releaseScript, byte for byte (Swift strips the literal's indentation
 * and its closing newline). */
static const char release_script[] =
    "local held = redis.call('GET', KEYS[1])\n"
    "if held == ARGV[1] then\n"
    "    return redis.call('DEL', KEYS[1])\n"
    "end\n"
    "if held == false then\n"
    "    return -1\n"
    "end\n"
    "return 0";

#define SHA_LENGTH 40

struct node {
    const char *label; /* the entry as given, for messages; points into the copy of --nodes */
    char *host;        /* host or unix path, owned */
    int port;          /* 0 for unix sockets */
    int is_unix;
    redisContext *context;
    char *release_command; /* this node's EVALSHA, formatted; owned (redisFreeCommand) */
    int release_length;
};

struct options {
    char *nodes_copy; /* owned, split in place into the entries */
    const char *name;
    char *default_name; /* owned when --name is absent */
    char value[64];     /* the lock's value: raw-floor:<pid>:<monotonic ns at start> */
    unsigned long long expiry_ms;
    unsigned long long duration_ms;
    unsigned long long warmup;
    unsigned long long timeout_ms;
    int summary;
};

struct run {
    struct options options;
    struct node *nodes;
    size_t node_count;
    char *set_command; /* formatted once, the same for every node; redisFreeCommand */
    int set_length;
    uint64_t *latencies;
    size_t latency_count;
    size_t latency_capacity;
};

static void free_run(struct run *run)
{
    for (size_t i = 0; i < run->node_count; i++) {
        if (run->nodes[i].context != NULL) redisFree(run->nodes[i].context);
        if (run->nodes[i].release_command != NULL) redisFreeCommand(run->nodes[i].release_command);
        free(run->nodes[i].host);
    }
    free(run->nodes);
    if (run->set_command != NULL) redisFreeCommand(run->set_command);
    free(run->latencies);
    free(run->options.nodes_copy);
    free(run->options.default_name);
    memset(run, 0, sizeof *run);
}

/* Prints `raw-floor: <where>: <cause>`, frees everything, exits 1. */
static void fail(struct run *run, const char *where, const char *format, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

static void fail(struct run *run, const char *where, const char *format, ...)
{
    char cause[512];
    va_list arguments;
    va_start(arguments, format);
    int written = vsnprintf(cause, sizeof cause, format, arguments);
    va_end(arguments);
    if (written < 0) snprintf(cause, sizeof cause, "(could not format the cause)");
    /* One line: no newline inside the cause, whatever the server said. */
    for (char *c = cause; *c != '\0'; c++) {
        if (*c == '\n' || *c == '\r') *c = ' ';
    }
    fprintf(stderr, "raw-floor: %s: %s\n", where, cause);
    free_run(run);
    exit(1);
}

static const char usage_text[] =
    "usage: raw-floor --nodes HOST:PORT|unix:/PATH[,...] [--name KEY] [--expiry-ms 8000]\n"
    "                 [--duration-ms 1000] [--warmup 100] [--timeout-ms 1000] [--summary]\n";

static void usage(struct run *run, const char *format, ...)
    __attribute__((noreturn, format(printf, 2, 3)));

static void usage(struct run *run, const char *format, ...)
{
    char cause[512];
    va_list arguments;
    va_start(arguments, format);
    int written = vsnprintf(cause, sizeof cause, format, arguments);
    va_end(arguments);
    if (written < 0) snprintf(cause, sizeof cause, "(could not format the cause)");
    fprintf(stderr, "raw-floor: usage: %s\n%s", cause, usage_text);
    free_run(run);
    exit(2);
}

/* A context's error as a cause: hiredis reports a read/write timeout as
 * EAGAIN's message. */
static const char *context_cause(const redisContext *context, char *buffer, size_t size)
{
    const char *kind;
    switch (context->err) {
    case REDIS_ERR_IO: kind = "I/O error"; break;
    case REDIS_ERR_EOF: kind = "connection closed"; break;
    case REDIS_ERR_PROTOCOL: kind = "protocol error"; break;
    case REDIS_ERR_OOM: kind = "out of memory"; break;
    default: kind = "error"; break;
    }
    if (context->err == REDIS_ERR_IO
        && (strcmp(context->errstr, strerror(EAGAIN)) == 0 || strcmp(context->errstr, strerror(EWOULDBLOCK)) == 0
            || strstr(context->errstr, "timed out") != NULL)) {
        snprintf(buffer, size, "timed out (%s)", context->errstr);
    } else if (context->errstr[0] != '\0') {
        snprintf(buffer, size, "%s: %s", kind, context->errstr);
    } else {
        snprintf(buffer, size, "%s", kind);
    }
    return buffer;
}

/* An unexpected reply, described for a message. */
static const char *describe_reply(const redisReply *reply, char *buffer, size_t size)
{
    switch (reply->type) {
    case REDIS_REPLY_STATUS: snprintf(buffer, size, "status \"%.200s\"", reply->str); break;
    case REDIS_REPLY_ERROR: snprintf(buffer, size, "error \"%.200s\"", reply->str); break;
    case REDIS_REPLY_STRING: snprintf(buffer, size, "bulk string \"%.200s\"", reply->str); break;
    case REDIS_REPLY_INTEGER: snprintf(buffer, size, "integer %lld", reply->integer); break;
    case REDIS_REPLY_NIL: snprintf(buffer, size, "nil"); break;
    case REDIS_REPLY_ARRAY: snprintf(buffer, size, "array of %zu elements", reply->elements); break;
    default: snprintf(buffer, size, "reply of type %d", reply->type); break;
    }
    return buffer;
}

static unsigned long long parse_number(struct run *run, const char *flag, const char *text,
                                       unsigned long long minimum, unsigned long long maximum)
{
    if (text[0] < '0' || text[0] > '9') usage(run, "%s wants a decimal number, not \"%s\"", flag, text);
    errno = 0;
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < minimum || value > maximum) {
        usage(run, "%s wants a decimal number from %llu to %llu, not \"%s\"", flag, minimum, maximum, text);
    }
    return value;
}

static void parse_arguments(struct run *run, int argc, char **argv)
{
    struct options *options = &run->options;
    options->expiry_ms = 8000;
    options->duration_ms = 1000;
    options->warmup = 100;
    options->timeout_ms = 1000;
    const char *nodes = NULL;

    for (int i = 1; i < argc; i++) {
        const char *argument = argv[i];
        if (strcmp(argument, "--summary") == 0) {
            options->summary = 1;
            continue;
        }
        if (strcmp(argument, "--help") == 0 || strcmp(argument, "-h") == 0) {
            printf("%s", usage_text);
            free_run(run);
            exit(0);
        }
        static const char *const valued[] = {"--nodes", "--name", "--expiry-ms", "--duration-ms", "--warmup", "--timeout-ms"};
        const char *flag = NULL;
        const char *value = NULL;
        for (size_t f = 0; f < sizeof valued / sizeof valued[0]; f++) {
            size_t length = strlen(valued[f]);
            if (strncmp(argument, valued[f], length) != 0) continue;
            if (argument[length] == '\0') {
                if (i + 1 >= argc) usage(run, "%s wants a value", valued[f]);
                flag = valued[f];
                value = argv[++i];
            } else if (argument[length] == '=') {
                flag = valued[f];
                value = argument + length + 1;
            } else {
                continue;
            }
            break;
        }
        if (flag == NULL) usage(run, "unknown argument \"%s\"", argument);

        if (strcmp(flag, "--nodes") == 0) {
            nodes = value;
        } else if (strcmp(flag, "--name") == 0) {
            if (value[0] == '\0') usage(run, "--name wants a non-empty key");
            options->name = value;
        } else if (strcmp(flag, "--expiry-ms") == 0) {
            options->expiry_ms = parse_number(run, flag, value, 1, (unsigned long long)LLONG_MAX);
        } else if (strcmp(flag, "--duration-ms") == 0) {
            options->duration_ms = parse_number(run, flag, value, 1, UINT64_MAX / 1000000u);
        } else if (strcmp(flag, "--warmup") == 0) {
            options->warmup = parse_number(run, flag, value, 0, ULLONG_MAX);
        } else {
            options->timeout_ms = parse_number(run, flag, value, 1, (unsigned long long)INT_MAX);
        }
    }
    if (nodes == NULL) usage(run, "--nodes is required");

    if (options->name == NULL) {
        char buffer[64];
        snprintf(buffer, sizeof buffer, "raw-floor:%ld", (long)getpid());
        options->default_name = strdup(buffer);
        if (options->default_name == NULL) fail(run, "memory", "%s", strerror(errno));
        options->name = options->default_name;
    }

    options->nodes_copy = strdup(nodes);
    if (options->nodes_copy == NULL) fail(run, "memory", "%s", strerror(errno));
    size_t count = 1;
    for (const char *c = nodes; *c != '\0'; c++) {
        if (*c == ',') count++;
    }
    run->nodes = calloc(count, sizeof *run->nodes);
    if (run->nodes == NULL) fail(run, "memory", "%s", strerror(errno));

    char *entry = options->nodes_copy;
    for (size_t n = 0; n < count; n++) {
        char *comma = strchr(entry, ',');
        if (comma != NULL) *comma = '\0';
        struct node *node = &run->nodes[n];
        run->node_count = n + 1; /* so free_run sees what is filled in */
        node->label = entry;
        if (entry[0] == '\0') usage(run, "--nodes has an empty entry");

        const char *host;
        size_t host_length;
        if (strncmp(entry, "unix:", 5) == 0) {
            node->is_unix = 1;
            host = entry + 5;
            host_length = strlen(host);
            if (host_length == 0) usage(run, "\"%s\" has no socket path", entry);
        } else {
            char *colon;
            if (entry[0] == '[') {
                char *bracket = strchr(entry, ']');
                if (bracket == NULL || bracket[1] != ':') usage(run, "\"%s\" is not [address]:port", entry);
                host = entry + 1;
                host_length = (size_t)(bracket - host);
                colon = bracket + 1;
            } else {
                colon = strrchr(entry, ':');
                if (colon == NULL) usage(run, "\"%s\" is not host:port or unix:/path", entry);
                host = entry;
                host_length = (size_t)(colon - entry);
            }
            if (host_length == 0) usage(run, "\"%s\" has no host", entry);
            node->port = (int)parse_number(run, "the port", colon + 1, 1, 65535);
        }
        node->host = malloc(host_length + 1);
        if (node->host == NULL) fail(run, "memory", "%s", strerror(errno));
        memcpy(node->host, host, host_length);
        node->host[host_length] = '\0';

        if (comma != NULL) entry = comma + 1;
    }
}

static struct timeval milliseconds_to_timeval(unsigned long long milliseconds)
{
    struct timeval tv;
    tv.tv_sec = (time_t)(milliseconds / 1000);
    tv.tv_usec = (suseconds_t)((milliseconds % 1000) * 1000);
    return tv;
}

static void connect_nodes(struct run *run)
{
    struct timeval timeout = milliseconds_to_timeval(run->options.timeout_ms);
    char cause[600];
    for (size_t i = 0; i < run->node_count; i++) {
        struct node *node = &run->nodes[i];
        node->context = node->is_unix ? redisConnectUnixWithTimeout(node->host, timeout)
                                      : redisConnectWithTimeout(node->host, node->port, timeout);
        if (node->context == NULL) fail(run, node->label, "connect: could not allocate a context");
        if (node->context->err) fail(run, node->label, "connect: %s", context_cause(node->context, cause, sizeof cause));
        if (redisSetTimeout(node->context, timeout) != REDIS_OK) {
            fail(run, node->label, "setting the read/write timeout: %s", context_cause(node->context, cause, sizeof cause));
        }
    }
}

/* Reads one reply from `node`; fails on a context error. The caller frees it. */
static redisReply *read_reply(struct run *run, struct node *node, const char *what)
{
    void *reply = NULL;
    char cause[600];
    if (redisGetReply(node->context, &reply) != REDIS_OK || reply == NULL) {
        fail(run, node->label, "%s: %s", what, context_cause(node->context, cause, sizeof cause));
    }
    return reply;
}

/* SCRIPT LOAD on every node, then formats each node's EVALSHA with the SHA it answered. */
static void load_script(struct run *run)
{
    const char *load_argv[] = {"SCRIPT", "LOAD", release_script};
    const size_t load_lengths[] = {6, 4, sizeof release_script - 1};
    char description[300];
    char cause[600];
    for (size_t i = 0; i < run->node_count; i++) {
        struct node *node = &run->nodes[i];
        if (redisAppendCommandArgv(node->context, 3, load_argv, load_lengths) != REDIS_OK) {
            fail(run, node->label, "SCRIPT LOAD: %s", context_cause(node->context, cause, sizeof cause));
        }
        redisReply *reply = read_reply(run, node, "SCRIPT LOAD");
        if (reply->type != REDIS_REPLY_STRING || reply->len != SHA_LENGTH) {
            describe_reply(reply, description, sizeof description);
            freeReplyObject(reply);
            fail(run, node->label, "SCRIPT LOAD answered %s, not a 40-character SHA", description);
        }
        char sha[SHA_LENGTH + 1];
        memcpy(sha, reply->str, SHA_LENGTH);
        sha[SHA_LENGTH] = '\0';
        freeReplyObject(reply);

        const char *release_argv[] = {"EVALSHA", sha, "1", run->options.name, run->options.value};
        char *command = NULL;
        int length = redisFormatCommandArgv(&command, 5, release_argv, NULL);
        if (length <= 0 || command == NULL) fail(run, "memory", "formatting EVALSHA failed");
        node->release_command = command;
        node->release_length = length;
    }
}

static void format_set(struct run *run)
{
    char expiry[32];
    snprintf(expiry, sizeof expiry, "%llu", run->options.expiry_ms);
    const char *set_argv[] = {"SET", run->options.name, run->options.value, "NX", "PX", expiry};
    char *command = NULL;
    int length = redisFormatCommandArgv(&command, 6, set_argv, NULL);
    if (length <= 0 || command == NULL) fail(run, "memory", "formatting SET failed");
    run->set_command = command;
    run->set_length = length;
}

static uint64_t now_ns(struct run *run)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) fail(run, "clock", "clock_gettime: %s", strerror(errno));
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

enum phase { PHASE_SET, PHASE_RELEASE };

/* One phase: the command appended to every node, every node's output flushed,
 * then every node's reply read and checked. */
static void fan_out(struct run *run, enum phase phase)
{
    const char *what = phase == PHASE_SET ? "SET NX" : "release EVALSHA";
    char cause[600];
    char description[300];
    for (size_t i = 0; i < run->node_count; i++) {
        struct node *node = &run->nodes[i];
        const char *command = phase == PHASE_SET ? run->set_command : node->release_command;
        size_t length = (size_t)(phase == PHASE_SET ? run->set_length : node->release_length);
        if (redisAppendFormattedCommand(node->context, command, length) != REDIS_OK) {
            fail(run, node->label, "%s: %s", what, context_cause(node->context, cause, sizeof cause));
        }
    }
    for (size_t i = 0; i < run->node_count; i++) {
        struct node *node = &run->nodes[i];
        int done = 0;
        do {
            if (redisBufferWrite(node->context, &done) != REDIS_OK) {
                fail(run, node->label, "%s: sending: %s", what, context_cause(node->context, cause, sizeof cause));
            }
        } while (!done);
    }
    for (size_t i = 0; i < run->node_count; i++) {
        struct node *node = &run->nodes[i];
        redisReply *reply = read_reply(run, node, what);
        int expected = phase == PHASE_SET
            ? reply->type == REDIS_REPLY_STATUS && reply->len == 2 && memcmp(reply->str, "OK", 2) == 0
            : reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
        if (!expected) {
            describe_reply(reply, description, sizeof description);
            freeReplyObject(reply);
            if (phase == PHASE_SET) {
                fail(run, node->label, "%s answered %s, not OK%s", what, description,
                     strcmp(description, "nil") == 0 ? " (is the key held by someone else?)" : "");
            }
            fail(run, node->label, "%s answered %s, not 1", what, description);
        }
        freeReplyObject(reply);
    }
}

static void cycle(struct run *run)
{
    fan_out(run, PHASE_SET);
    fan_out(run, PHASE_RELEASE);
}

static void record(struct run *run, uint64_t latency)
{
    if (run->latency_count == run->latency_capacity) {
        size_t capacity = run->latency_capacity == 0 ? 65536 : run->latency_capacity * 2;
        if (capacity > SIZE_MAX / sizeof *run->latencies) fail(run, "memory", "too many cycles to record");
        uint64_t *grown = realloc(run->latencies, capacity * sizeof *grown);
        if (grown == NULL) fail(run, "memory", "recording latencies: %s", strerror(errno));
        run->latencies = grown;
        run->latency_capacity = capacity;
    }
    run->latencies[run->latency_count++] = latency;
}

static int compare_latencies(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest latency with at least `percent`% of cycles at or below it. */
static uint64_t percentile(const uint64_t *sorted, size_t count, unsigned percent)
{
    size_t rank = (count / 100) * percent + ((count % 100) * percent + 99) / 100;
    if (rank == 0) rank = 1;
    if (rank > count) rank = count;
    return sorted[rank - 1];
}

static void write_output(struct run *run)
{
    int failed = 0;
    if (run->options.summary) {
        qsort(run->latencies, run->latency_count, sizeof *run->latencies, compare_latencies);
        uint64_t p50 = percentile(run->latencies, run->latency_count, 50);
        uint64_t p99 = percentile(run->latencies, run->latency_count, 99);
        failed = printf("cycles=%zu p50_us=%.2f p99_us=%.2f\n", run->latency_count, (double)p50 / 1000.0,
                        (double)p99 / 1000.0) < 0;
    } else {
        for (size_t i = 0; i < run->latency_count && !failed; i++) {
            failed = printf("%" PRIu64 "\n", run->latencies[i]) < 0;
        }
    }
    if (failed || fflush(stdout) != 0 || ferror(stdout)) fail(run, "stdout", "writing: %s", strerror(errno));
}

/* A closed standard descriptor would be reused by a node's socket, and then the
 * latencies or a message would go to a server: stdout must be open, stdin and
 * stderr are pointed at /dev/null when closed. */
static void check_standard_descriptors(struct run *run)
{
    if (fcntl(STDOUT_FILENO, F_GETFD) == -1) fail(run, "stdout", "closed: %s", strerror(errno));
    const int others[] = {STDIN_FILENO, STDERR_FILENO};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        if (fcntl(others[i], F_GETFD) != -1) continue;
        int fd = open("/dev/null", O_RDWR);
        if (fd == -1) fail(run, "/dev/null", "open: %s", strerror(errno));
        if (fd != others[i]) {
            if (dup2(fd, others[i]) == -1) fail(run, "/dev/null", "dup2: %s", strerror(errno));
            if (close(fd) != 0) fail(run, "/dev/null", "close: %s", strerror(errno));
        }
    }
}

int main(int argc, char **argv)
{
    struct run run;
    memset(&run, 0, sizeof run);
    check_standard_descriptors(&run);
    parse_arguments(&run, argc, argv);
    snprintf(run.options.value, sizeof run.options.value, "raw-floor:%ld:%" PRIu64, (long)getpid(), now_ns(&run));

    connect_nodes(&run);
    load_script(&run);
    format_set(&run);

    for (unsigned long long i = 0; i < run.options.warmup; i++) cycle(&run);

    uint64_t deadline = now_ns(&run) + run.options.duration_ms * 1000000u;
    uint64_t end;
    do {
        uint64_t start = now_ns(&run);
        cycle(&run);
        end = now_ns(&run);
        record(&run, end - start);
    } while (end < deadline);

    write_output(&run);
    free_run(&run);
    return 0;
}
