/*
 * A node clock fault for tests: preloaded into one redis-server (LD_PRELOAD), it makes the
 * server's wall clock run at another rate, or step, while every other clock is left alone.
 *
 * Control: the environment variable REDLOCK_CLOCK_CONTROL names a file holding one line
 * "RATE OFFSET_NS" (for example "1.5 0": 1.5 s of wall time per real second; "1 20000000000":
 * 20 s ahead). The file is re-read at most once per millisecond of real time; a change takes
 * effect from that moment without a jump, except for the offset, which steps. A missing or
 * unreadable file means rate 1, offset 0.
 *
 * What is faked: clock_gettime(CLOCK_REALTIME and CLOCK_REALTIME_COARSE), gettimeofday and
 * time, which is what redis-server reads for key expiry (mstime, ustime) and TIME. The
 * monotonic clocks are untouched.
 *
 * Inside these hooks nothing allocates and nothing resolves symbols: real time comes from the
 * clock_gettime system call, the control file is read with open/read/close into a stack buffer,
 * and the state is guarded by a spin lock. (A shim that calls dlsym or malloc from a time hook
 * can deadlock inside an allocator that reads the time.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct shim_state {
    int initialised;
    const char *control;        /* the control file's path, from the environment, or NULL */
    int64_t next_check_ns;      /* real monotonic time of the next control-file read */
    double rate;                /* wall seconds per real second */
    int64_t offset_ns;          /* the step added on top */
    int64_t anchor_real_ns;     /* real wall time when the rate last changed */
    double anchor_fake_ns;      /* faked wall time (without offset) at that moment */
};

static struct shim_state state;
static volatile int state_lock;

static void lock_state(void) {
    while (__atomic_exchange_n(&state_lock, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(&state_lock, __ATOMIC_RELAXED)) {
        }
    }
}

static void unlock_state(void) { __atomic_store_n(&state_lock, 0, __ATOMIC_RELEASE); }

static int64_t real_ns(clockid_t clock) {
    struct timespec now;
    if (syscall(SYS_clock_gettime, clock, &now) != 0) {
        return 0;
    }
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* Parses "RATE OFFSET_NS"; returns 0 on success. Only digits, '.', '-' and spaces. */
static int parse_control(const char *text, double *rate, int64_t *offset) {
    const char *p = text;
    double whole = 0, fraction = 0, scale = 1;
    int digits = 0;
    while (*p == ' ') p++;
    while (*p >= '0' && *p <= '9') { whole = whole * 10 + (*p - '0'); p++; digits++; }
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') { scale /= 10; fraction += (*p - '0') * scale; p++; digits++; }
    }
    if (digits == 0 || whole + fraction <= 0) return -1;
    while (*p == ' ') p++;
    int negative = 0;
    if (*p == '-') { negative = 1; p++; }
    int64_t value = 0;
    int offset_digits = 0;
    while (*p >= '0' && *p <= '9' && offset_digits < 18) { value = value * 10 + (*p - '0'); p++; offset_digits++; }
    if (offset_digits == 0) return -1;
    *rate = whole + fraction;
    *offset = negative ? -value : value;
    return 0;
}

/* Re-reads the control file when due. Called with the lock held. */
static void refresh(int64_t real_wall) {
    if (!state.initialised) {
        state.initialised = 1;
        state.control = getenv("REDLOCK_CLOCK_CONTROL");
        state.rate = 1;
        state.offset_ns = 0;
        state.anchor_real_ns = real_wall;
        state.anchor_fake_ns = (double)real_wall;
    }
    if (state.control == NULL) return;
    int64_t monotonic = real_ns(CLOCK_MONOTONIC);
    if (monotonic < state.next_check_ns) return;
    state.next_check_ns = monotonic + 1000000;
    char buffer[96];
    int descriptor = open(state.control, O_RDONLY | O_CLOEXEC);
    if (descriptor < 0) return;
    ssize_t count = read(descriptor, buffer, sizeof buffer - 1);
    close(descriptor);
    if (count <= 0) return;
    buffer[count] = '\0';
    double rate;
    int64_t offset;
    if (parse_control(buffer, &rate, &offset) != 0) return;
    if (rate != state.rate) {
        /* Keep the faked time continuous: re-anchor at this instant with the old rate. */
        state.anchor_fake_ns += (double)(real_wall - state.anchor_real_ns) * state.rate;
        state.anchor_real_ns = real_wall;
        state.rate = rate;
    }
    state.offset_ns = offset;
}

static int64_t fake_wall_ns(void) {
    int saved = errno;
    int64_t real_wall = real_ns(CLOCK_REALTIME);
    lock_state();
    refresh(real_wall);
    double fake = state.anchor_fake_ns + (double)(real_wall - state.anchor_real_ns) * state.rate;
    int64_t result = (int64_t)fake + state.offset_ns;
    unlock_state();
    errno = saved;
    return result;
}

int clock_gettime(clockid_t clock, struct timespec *now) {
    if (clock != CLOCK_REALTIME && clock != CLOCK_REALTIME_COARSE) {
        return (int)syscall(SYS_clock_gettime, clock, now);
    }
    /* `now` is declared nonnull by the C library, as for the real call. */
    int64_t fake = fake_wall_ns();
    now->tv_sec = (time_t)(fake / 1000000000);
    now->tv_nsec = (long)(fake % 1000000000);
    return 0;
}

int gettimeofday(struct timeval *restrict now, void *restrict zone) {
    (void)zone;
    /* `now` is declared nonnull by the C library, as for the real call. */
    int64_t fake = fake_wall_ns();
    now->tv_sec = (time_t)(fake / 1000000000);
    now->tv_usec = (suseconds_t)((fake % 1000000000) / 1000);
    return 0;
}

time_t time(time_t *out) {
    time_t seconds = (time_t)(fake_wall_ns() / 1000000000);
    if (out != NULL) *out = seconds;
    return seconds;
}
