#define _GNU_SOURCE
#include "supervise.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <dirent.h>
#include <termios.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum { CONTROL_FD = 3, STATUS_FD = 4 };

int64_t redlock_boottime_ns(void) {
    struct timespec now;
    if (clock_gettime(CLOCK_BOOTTIME, &now) != 0) {
        return 0;
    }
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* `ns` (>= 0) nanoseconds as a timespec. */
static struct timespec timespec_of_ns(int64_t ns) {
    struct timespec value = {.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};
    return value;
}

/* Sleeps `ns` nanoseconds (none when ns <= 0), resuming the rest after a signal. Async-signal-safe
   (nanosleep only), so a forked child may use it before exec. */
static void sleep_for_ns(int64_t ns) {
    if (ns <= 0) {
        return;
    }
    struct timespec pause = timespec_of_ns(ns);
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
    }
}

int redlock_sleep_until_boottime(int64_t deadline_ns) {
    if (deadline_ns <= 0) {
        return 0;
    }
    struct timespec until = timespec_of_ns(deadline_ns);
    int result;
    do {
        result = clock_nanosleep(CLOCK_BOOTTIME, TIMER_ABSTIME, &until, NULL);
    } while (result == EINTR);
    return result;
}

int redlock_watch_send(int fd, int32_t kind, int32_t argument, int64_t value) {
    redlock_watch_message message = {.kind = kind, .argument = argument, .value = value};
    ssize_t written;
    do {
        written = write(fd, &message, sizeof message);
    } while (written < 0 && errno == EINTR);
    if (written < 0) {
        return errno;
    }
    return written == (ssize_t)sizeof message ? 0 : EIO;
}

int redlock_watch_receive(int fd, redlock_watch_message *message) {
    char *bytes = (char *)message;
    size_t have = 0;
    while (have < sizeof *message) {
        ssize_t got = read(fd, bytes + have, sizeof *message - have);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        if (got == 0) {
            return have == 0 ? -1 : EIO;
        }
        have += (size_t)got;
    }
    return 0;
}

/* Moves `*fd` to a descriptor number of at least 5 (close-on-exec), so that the spawn's dup2 to
   3 and 4 cannot overwrite one pipe end with another. */
static int raise_descriptor(int *fd) {
    if (*fd >= 5) {
        return 0;
    }
    int moved = fcntl(*fd, F_DUPFD_CLOEXEC, 5);
    if (moved < 0) {
        return errno;
    }
    close(*fd);
    *fd = moved;
    return 0;
}

static void close_pair(int pair[2]) {
    close(pair[0]);
    close(pair[1]);
}

int redlock_spawn_watchdog(const char *path, char *const argv[], char *const envp[], pid_t *pid, int *control_fd,
                           int *status_fd) {
    int control[2];
    int status[2];
    if (pipe2(control, O_CLOEXEC) != 0) {
        return errno;
    }
    if (pipe2(status, O_CLOEXEC) != 0) {
        int error = errno;
        close_pair(control);
        return error;
    }
    int result = 0;
    for (int i = 0; i < 2 && result == 0; i++) {
        if ((result = raise_descriptor(&control[i])) == 0) {
            result = raise_descriptor(&status[i]);
        }
    }
    if (result != 0) {
        close_pair(control);
        close_pair(status);
        return result;
    }

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    if ((result = posix_spawn_file_actions_init(&actions)) != 0) {
        close_pair(control);
        close_pair(status);
        return result;
    }
    if ((result = posix_spawnattr_init(&attributes)) != 0) {
        posix_spawn_file_actions_destroy(&actions);
        close_pair(control);
        close_pair(status);
        return result;
    }
    sigset_t none;
    sigset_t all;
    sigemptyset(&none);
    sigfillset(&all);
    /* A process group of its own: a job-control stop of redlock's group (Ctrl-Z, kill -STOP -PGID)
       must not stop the watchdog too. */
    if ((result = posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                                             POSIX_SPAWN_SETPGROUP)) == 0 &&
        (result = posix_spawnattr_setpgroup(&attributes, 0)) == 0 &&
        (result = posix_spawnattr_setsigmask(&attributes, &none)) == 0 &&
        (result = posix_spawnattr_setsigdefault(&attributes, &all)) == 0 &&
        (result = posix_spawn_file_actions_adddup2(&actions, control[0], CONTROL_FD)) == 0 &&
        (result = posix_spawn_file_actions_adddup2(&actions, status[1], STATUS_FD)) == 0 &&
        (result = posix_spawn_file_actions_addclosefrom_np(&actions, STATUS_FD + 1)) == 0) {
        result = posix_spawn(pid, path, &actions, &attributes, argv, envp);
    }
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    close(control[0]);
    close(status[1]);
    if (result != 0) {
        close(control[1]);
        close(status[0]);
        return result;
    }
    *control_fd = control[1];
    *status_fd = status[0];
    return 0;
}

/* Finds `name` as execvp would (a name with a slash is used as it is), into `path`. Returns 0 or
   an errno value (ENOENT, EACCES, ENAMETOOLONG). */
static int find_program(const char *name, char *path, size_t size) {
    if (name[0] == '\0') {
        return ENOENT;
    }
    if (strchr(name, '/') != NULL) {
        if (strlen(name) >= size) {
            return ENAMETOOLONG;
        }
        strcpy(path, name);
        return 0;
    }
    const char *search = getenv("PATH");
    if (search == NULL || search[0] == '\0') {
        search = "/usr/local/bin:/usr/bin:/bin";
    }
    int result = ENOENT;
    const char *start = search;
    for (;;) {
        const char *end = strchr(start, ':');
        size_t length = end != NULL ? (size_t)(end - start) : strlen(start);
        const char *directory = length == 0 ? "." : start;
        int directory_length = length == 0 ? 1 : (int)length;
        int written = snprintf(path, size, "%.*s/%s", directory_length, directory, name);
        if (written > 0 && (size_t)written < size) {
            struct stat info;
            if (stat(path, &info) == 0 && S_ISREG(info.st_mode)) {
                if (access(path, X_OK) == 0) {
                    return 0;
                }
                result = EACCES;
            }
        }
        if (end == NULL) {
            break;
        }
        start = end + 1;
    }
    return result;
}

/* Writes `text` to stderr without waiting for room: a pipe nobody reads must not keep the
   watchdog from reporting to its supervisor and ending. A pipe or terminal is opened again
   (/proc/self/fd/2) as a non-blocking description of the watchdog's own (the command's stderr,
   the same pipe, stays as it was), or else written when poll finds room; a socket is written
   with MSG_DONTWAIT; a regular file never waits. What finds no room is dropped, uncounted:
   redlock reports the same outcome itself. */
static void say(const char *text) {
    size_t length = strlen(text);
    struct stat status;
    ssize_t ignored = 0;
    if (fstat(STDERR_FILENO, &status) != 0) {
        return;
    }
    if (S_ISSOCK(status.st_mode)) {
        ignored = send(STDERR_FILENO, text, length, MSG_DONTWAIT | MSG_NOSIGNAL);
    } else if (S_ISFIFO(status.st_mode) || S_ISCHR(status.st_mode)) {
        int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0) {
            ignored = write(fd, text, length);
            close(fd);
        } else {
            /* Not to be opened again (a pipe of another user: EACCES): written only when poll
               finds room now, a line of at most PIPE_BUF bytes going whole. */
            struct pollfd room = {.fd = STDERR_FILENO, .events = POLLOUT, .revents = 0};
            if (length <= PIPE_BUF && poll(&room, 1, 0) == 1 && (room.revents & POLLOUT) != 0) {
                ignored = write(STDERR_FILENO, text, length);
            }
        }
    } else {
        ignored = write(STDERR_FILENO, text, length);
    }
    (void)ignored;
}

_Noreturn static void fail_as(const char *who, const char *what) {
    char line[256];
    snprintf(line, sizeof line, "%s: %s: %s\n", who, what, strerror(errno));
    say(line);
    _exit(1);
}

_Noreturn static void fail(const char *what) {
    fail_as("redlock watchdog", what);
}

/* The parent, state, process group, thread count and start time (clock ticks after boot: with
   the pid, a process's identity) of process `pid` from /proc/PID/stat; 0, or -1 when it cannot
   be read (errno ENOENT or ESRCH when the process is gone). `group`, `threads` and `started` may
   be NULL. */
static int read_parent(long pid, long *parent, char *state, long *group, long *threads, unsigned long long *started) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    /* Fields 1 to 22 fit: comm is at most 16 bytes, each number at most 20 digits. */
    char line[512];
    ssize_t got;
    do {
        got = read(fd, line, sizeof line - 1);
    } while (got < 0 && errno == EINTR);
    int error = got < 0 ? errno : 0;
    close(fd);
    errno = error;
    if (got <= 0) {
        return -1; /* errno 0: nothing to read, the process exited meanwhile */
    }
    line[got] = '\0';
    /* "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses. */
    char *close_paren = strrchr(line, ')');
    long count = 0;
    long process_group = 0;
    unsigned long long start = 0;
    /* Fields 3 (state), 4 (ppid), 5 (pgrp), 20 (num_threads) and 22 (starttime); see proc(5). */
    if (close_paren == NULL
        || sscanf(close_paren + 1, " %c %ld %ld %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %ld %*d %llu", state, parent,
                  &process_group, &count, &start) != 5) {
        errno = 0;
        return -1;
    }
    if (group != NULL) {
        *group = process_group;
    }
    if (threads != NULL) {
        *threads = count;
    }
    if (started != NULL) {
        *started = start;
    }
    return 0;
}

/* Whether a failed read_parent means the process is gone (ENOENT, ESRCH, or a stat line cut
   short by its exit) or hidden from this caller (EPERM, EACCES: /proc mounted hidepid, another
   user's process, which it could not signal either), rather than that /proc could not be read
   for want of resources (EMFILE, ENFILE, ENOMEM). */
static int vanished(int error) {
    return error == ENOENT || error == ESRCH || error == 0 || error == EPERM || error == EACCES;
}

/* Whether a process in `state` with `threads` threads (from read_parent) runs nothing any more:
   a zombie (or dead) with at most one thread. A zombie leader whose other threads run (it called
   pthread_exit) shows state Z too. */
static int exited(char state, long threads) {
    return (state == 'Z' || state == 'X') && threads <= 1;
}

typedef struct {
    long pid;
    long parent;
    unsigned long long started;
    long threads;
    char state;
    signed char below; /* 1 below root, 0 not, -1 not known yet */
} process_entry;

static int compare_pids(const void *left, const void *right) {
    long a = ((const process_entry *)left)->pid;
    long b = ((const process_entry *)right)->pid;
    return (a > b) - (a < b);
}

/* Every process in /proc with its parent and state, sorted by pid, into *entries (malloc'd; the
   caller frees it). Returns the count, or -1 when /proc cannot be read or memory runs out. */
static long list_processes(process_entry **entries) {
    DIR *processes = opendir("/proc");
    if (processes == NULL) {
        return -1;
    }
    size_t capacity = 1024;
    size_t count = 0;
    process_entry *list = malloc(capacity * sizeof *list);
    struct dirent *entry;
    while (list != NULL && (entry = readdir(processes)) != NULL) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (*end != '\0' || pid <= 0) {
            continue;
        }
        if (count == capacity) {
            process_entry *grown = realloc(list, 2 * capacity * sizeof *list);
            if (grown == NULL) {
                free(list);
                list = NULL;
                break;
            }
            list = grown;
            capacity *= 2;
        }
        if (read_parent(pid, &list[count].parent, &list[count].state, NULL, &list[count].threads, &list[count].started) == 0) {
            list[count].pid = pid;
            list[count].below = -1;
            count++;
        } else if (!vanished(errno)) {
            free(list); /* a snapshot with holes would miss processes */
            list = NULL;
            break;
        }
    }
    closedir(processes);
    if (list == NULL) {
        return -1;
    }
    qsort(list, count, sizeof *list, compare_pids);
    *entries = list;
    return (long)count;
}

/* Whether entry `index` descends from `root`, walking up its parents (memoized in `below`). */
static int descends_from(process_entry *list, size_t count, size_t index, long root) {
    size_t chain[64];
    size_t length = 0;
    size_t at = index;
    int answer = 0;
    for (size_t steps = 0;; steps++) {
        if (steps > count) {
            /* A loop in the snapshot (pids reused while /proc was read): not below. */
            answer = 0;
            break;
        }
        if (list[at].below >= 0) {
            answer = list[at].below;
            break;
        }
        if (list[at].parent == root) {
            answer = 1;
            list[at].below = 1;
            break;
        }
        process_entry key = {.pid = list[at].parent};
        process_entry *parent = list[at].parent > 1 ? bsearch(&key, list, count, sizeof *list, compare_pids) : NULL;
        if (parent == NULL) {
            list[at].below = 0;
            answer = 0;
            break;
        }
        /* Deeper chains are walked all the same; only the first 64 steps are remembered. */
        if (length < sizeof chain / sizeof chain[0]) {
            chain[length++] = at;
        }
        at = (size_t)(parent - list);
    }
    for (size_t i = 0; i < length; i++) {
        list[chain[i]].below = (signed char)answer;
    }
    return answer;
}

/* Whether `list` (sorted by pid, `count` long) holds the process `pid` started at `started`. */
static int holds(const process_entry *list, size_t count, long pid, unsigned long long started) {
    process_entry key = {.pid = pid};
    const process_entry *found = count > 0 ? bsearch(&key, list, count, sizeof *list, compare_pids) : NULL;
    return found != NULL && found->started == started;
}

/* A growable array of pids. */
typedef struct {
    long *items;
    size_t count;
    size_t capacity;
} pid_array;

static int pid_array_append(pid_array *array, long pid) {
    if (array->count == array->capacity) {
        size_t capacity = array->capacity == 0 ? 64 : 2 * array->capacity;
        long *grown = realloc(array->items, capacity * sizeof *grown);
        if (grown == NULL) {
            return -1;
        }
        array->items = grown;
        array->capacity = capacity;
    }
    array->items[array->count++] = pid;
    return 0;
}

/* A process's identity: its pid and start time (clock ticks after boot); `signalled`: the
   kill sent it SIGKILL (not set for one that may not be signalled). */
typedef struct {
    long pid;
    unsigned long long started;
    int signalled;
    int exited; /* seen exited in full since it was signalled (settle) */
} process_identity;

/* A set of processes by pid, each with its start time: open addressing with linear probing,
   pid 0 marking a free slot, at most half full. */
typedef struct {
    process_identity *slots;
    size_t capacity; /* 0 or a power of two */
    size_t count;
    size_t changes; /* pids added, or start times changed (a pid taken by another process) */
} pid_set;

static size_t pid_slot(long pid, size_t capacity) {
    return ((size_t)pid * 0x9E3779B97F4A7C15ull) & (capacity - 1);
}

/* The slot of `pid`, or NULL when the set has none. */
static process_identity *pid_set_find(const pid_set *set, long pid) {
    if (set->capacity == 0) {
        return NULL;
    }
    for (size_t at = pid_slot(pid, set->capacity);; at = (at + 1) & (set->capacity - 1)) {
        if (set->slots[at].pid == 0) {
            return NULL;
        }
        if (set->slots[at].pid == pid) {
            return &set->slots[at];
        }
    }
}

static int pid_set_contains(const pid_set *set, long pid) {
    return pid_set_find(set, pid) != NULL;
}

/* Whether the set holds the process `pid` that started at `started`. */
static int pid_set_holds(const pid_set *set, long pid, unsigned long long started) {
    const process_identity *slot = pid_set_find(set, pid);
    return slot != NULL && slot->started == started;
}

/* Records process `pid` (> 0) started at `started`, in place of another with that pid; 0, or
   -1 when memory ran out. */
static int pid_set_put(pid_set *set, long pid, unsigned long long started) {
    process_identity *known = pid_set_find(set, pid);
    if (known != NULL) {
        if (known->started != started) {
            *known = (process_identity){.pid = pid, .started = started};
            set->changes++;
        }
        return 0;
    }
    if (2 * (set->count + 1) > set->capacity) {
        size_t capacity = set->capacity == 0 ? 128 : 2 * set->capacity;
        process_identity *slots = calloc(capacity, sizeof *slots);
        if (slots == NULL) {
            return -1;
        }
        for (size_t i = 0; i < set->capacity; i++) {
            if (set->slots[i].pid != 0) {
                size_t at = pid_slot(set->slots[i].pid, capacity);
                while (slots[at].pid != 0) {
                    at = (at + 1) & (capacity - 1);
                }
                slots[at] = set->slots[i];
            }
        }
        free(set->slots);
        set->slots = slots;
        set->capacity = capacity;
    }
    size_t at = pid_slot(pid, set->capacity);
    while (set->slots[at].pid != 0) {
        at = (at + 1) & (set->capacity - 1);
    }
    set->slots[at] = (process_identity){.pid = pid, .started = started};
    set->count++;
    set->changes++;
    return 0;
}

/* Whether this kernel lists each task's children in /proc/PID/task/TID/children
   (CONFIG_PROC_CHILDREN). */
static int children_files_exist(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", (long)getpid(), (long)getpid());
    return access(path, R_OK) == 0;
}

/* Appends the pids in /proc/PID/task/TID/children (space-separated decimals) to `children`;
   0, also when the thread is gone; -1 when the file cannot be read or memory ran out. */
static int read_children_file(long pid, long tid, pid_array *children) {
    char path[96];
    snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", pid, tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno == ENOENT || errno == ESRCH ? 0 : -1;
    }
    char buffer[4096];
    long value = 0;
    int digits = 0;
    int result = 0;
    for (;;) {
        ssize_t got = read(fd, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0) {
            result = errno == ESRCH ? 0 : -1;
            break;
        }
        if (got == 0) {
            break;
        }
        for (ssize_t i = 0; i < got && result == 0; i++) {
            if (buffer[i] >= '0' && buffer[i] <= '9') {
                value = value * 10 + (buffer[i] - '0');
                digits = 1;
            } else if (digits) {
                result = pid_array_append(children, value);
                value = 0;
                digits = 0;
            }
        }
        if (result != 0) {
            break;
        }
    }
    if (result == 0 && digits) {
        result = pid_array_append(children, value);
    }
    close(fd);
    return result;
}

/* Appends the children of process `pid` (those of each of its threads) to `children`. 0, also
   when the process is gone (its children went to a subreaper above it, or to init); -1 when
   /proc could not be read or memory ran out. */
static int read_children(long pid, pid_array *children) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/task", pid);
    DIR *tasks = opendir(path);
    if (tasks == NULL) {
        return errno == ENOENT || errno == ESRCH ? 0 : -1;
    }
    int result = 0;
    struct dirent *entry;
    while (result == 0 && (entry = readdir(tasks)) != NULL) {
        char *end;
        long tid = strtol(entry->d_name, &end, 10);
        if (*end == '\0' && tid > 0) {
            result = read_children_file(pid, tid, children);
        }
    }
    closedir(tasks);
    return result;
}

/* A descriptor of process `pid` itself (pidfd_open(2), Linux 5.3): a signal sent through it
   reaches that process or none, never one that took its pid later. -1 with errno ESRCH when
   there is no such process; -1 with another errno (ENOSYS on an older kernel, EPERM under a
   seccomp filter) when there is no descriptor to be had: the caller then signals by pid. */
static _Thread_local int pidfds_usable;

static int open_process(long pid) {
#ifdef SYS_pidfd_open
    if (pidfds_usable) {
        return (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    }
#endif
    (void)pid;
    errno = ENOSYS;
    return -1;
}

/* Sends `signal` to the process of `descriptor` (from open_process), or by `pid` when that is
   -1: 0, or -1 with errno (ESRCH: it has been reaped; EPERM: it may not be signalled). */
static int signal_process(int descriptor, long pid, int signal) {
#ifdef SYS_pidfd_send_signal
    if (descriptor >= 0) {
        return (int)syscall(SYS_pidfd_send_signal, descriptor, signal, NULL, 0);
    }
#endif
    return kill((pid_t)pid, signal);
}

/* Whether signals can go through pidfds here: one of this process, opened and sent signal 0.
   A kernel without them, or a seccomp filter that refuses pidfd_open or pidfd_send_signal,
   leaves signalling by pid. Set for the calling thread's next kill (pidfds_usable). */
static void check_pidfds(void) {
    pidfds_usable = 1;
    int self = open_process((long)getpid());
    pidfds_usable = self >= 0 && signal_process(self, (long)getpid(), 0) == 0;
    if (self >= 0) {
        close(self);
    }
}

/* Descriptors (pidfds) of the command's processes outside its process group, from a count (a
   census: the latest complete one, and the one under way): a kill signals each through its
   descriptor at once, before its walk looks for the rest. A descriptor names its process for
   good (never one that took its pid later), so one that ended meanwhile gets nothing. */
typedef struct held_processes {
    int *fds;     /* fds[first..<count] are held, in the order the count found them */
    size_t first; /* those before it were given up (held_give_up_first) */
    size_t count;
    size_t capacity;
    size_t limit; /* the most it holds (room left under the descriptor limit) */
} held_processes;

/* How many descriptors `held` holds. */
static size_t held_live(const held_processes *held) {
    return held->count - held->first;
}

static void held_release(held_processes *held) {
    for (size_t i = held->first; i < held->count; i++) {
        close(held->fds[i]);
    }
    held->first = 0;
    held->count = 0;
}

/* Closes the first descriptor `held` holds: of the processes a count found first, which the
   count after it, walking the tree in the same order, holds again before the others. */
static void held_give_up_first(held_processes *held) {
    if (held->first < held->count) {
        close(held->fds[held->first++]);
    }
}

static int held_append(held_processes *held, int fd) {
    if (held->count == held->limit) {
        return -1;
    }
    if (held->count == held->capacity) {
        size_t capacity = held->capacity == 0 ? 64 : 2 * held->capacity;
        int *grown = realloc(held->fds, capacity * sizeof *grown);
        if (grown == NULL) {
            return -1;
        }
        held->fds = grown;
        held->capacity = capacity;
    }
    held->fds[held->count++] = fd;
    return 0;
}

/* Signals SIGKILL through a process's descriptor, and never by pid: a held process that is gone
   gets nothing. */
static void kill_held(int descriptor) {
#ifdef SYS_pidfd_send_signal
    (void)syscall(SYS_pidfd_send_signal, descriptor, SIGKILL, NULL, 0);
#else
    (void)descriptor;
#endif
}

/* Whether the process of `descriptor` (from open_process) has not been reaped: a signal 0
   through it reaches it. */
static int still_there(int descriptor) {
#ifdef SYS_pidfd_send_signal
    return syscall(SYS_pidfd_send_signal, descriptor, 0, NULL, 0) == 0;
#else
    (void)descriptor;
    return 0;
#endif
}

/* A count of the processes below a root by the children files (as a kill's walk finds them),
   taken in steps (census_step) so that the watchdog, which counts while it waits for renewals
   and for its kill's instant, never waits for a count: under load a count of a thousand
   processes took up to 5.5 s in one go, during which the kill's instant passed unheeded.
   A process counts, and its children are read, only while its parent is still the one whose
   children file listed it; with descriptors (pidfds), one opened before that check must still
   reach the process after its children were read (else its pid may have gone to another
   process, whose children were read: they are dropped). A process that has exited (a zombie
   not yet reaped) is not counted. Each process outside the group is kept by that descriptor in
   `held`, up to its limit, which it shares with `older` (the set of the count before, while this
   one is under way: it gives up one of its descriptors for each this one needs beyond the room
   left, the first it holds, of a process this one most likely holds already; so every count
   holds as many as the room allows, and the two together about as many distinct processes). */
typedef struct census {
    int running;
    pid_array work;    /* the processes found, in the order found: children after their parents */
    pid_array parents; /* the parent whose children file listed each of them */
    size_t next;       /* the next of `work` to look at */
    long walked;       /* processes counted */
    long detached;     /* of them, those outside the group */
    int64_t took_ns;   /* the time its steps took */
    int failed;        /* /proc could not be read, or memory ran out: the counts cover what was read */
    held_processes held;
    held_processes *older; /* or NULL */
    int64_t pause_ns;      /* for the suite: a sleep after each process looked at (0: none) */
} census;

/* Frees what a count holds but its descriptors (`held`, taken by finish_count or released by
   the next census_begin), and marks it over. */
static void census_end(census *count) {
    free(count->work.items);
    free(count->parents.items);
    count->work = (pid_array){0};
    count->parents = (pid_array){0};
    count->running = 0;
}

/* Starts a count of the processes below `root`, its descriptors held up to `hold_limit`, less
   what `older` (or NULL) still holds. */
static void census_begin(census *count, long root, size_t hold_limit, held_processes *older) {
    int64_t began = redlock_boottime_ns();
    census_end(count);
    held_release(&count->held);
    count->held.limit = hold_limit;
    count->older = older;
    count->running = 1;
    count->next = 0;
    count->walked = 0;
    count->detached = 0;
    count->failed = read_children(root, &count->work) != 0;
    for (size_t i = 0; !count->failed && i < count->work.count; i++) {
        count->failed = pid_array_append(&count->parents, root) != 0;
    }
    count->took_ns = redlock_boottime_ns() - began;
}

/* Goes on with `count` (processes outside group `group` held) for about `budget_ns`: at least
   one process, then until that time has passed. 1 when the count is complete (or failed), 0
   when there is more to do. */
static int census_step(census *count, pid_t group, int64_t budget_ns) {
    int64_t began = redlock_boottime_ns();
    int looked = 0;
    while (!count->failed && count->next < count->work.count && count->next < REDLOCK_CENSUS_LIMIT) {
        if (looked && redlock_boottime_ns() - began >= budget_ns) {
            count->took_ns += redlock_boottime_ns() - began;
            return 0;
        }
        looked = 1;
        size_t i = count->next++;
        long pid = count->work.items[i];
        int fd = open_process(pid);
        long parent;
        long process_group;
        long threads;
        char state;
        if (read_parent(pid, &parent, &state, &process_group, &threads, NULL) != 0 || parent != count->parents.items[i] ||
            exited(state, threads)) {
            if (fd >= 0) {
                close(fd);
            }
            continue;
        }
        size_t before = count->work.count;
        count->failed = read_children(pid, &count->work) != 0;
        for (size_t added = before; !count->failed && added < count->work.count; added++) {
            count->failed = pid_array_append(&count->parents, pid) != 0;
        }
        if (fd >= 0 && !still_there(fd)) {
            count->work.count = before;
            count->parents.count = before < count->parents.count ? before : count->parents.count;
            close(fd);
            continue;
        }
        count->walked++;
        if (process_group != group) {
            count->detached++;
            held_processes *older = count->older;
            if (fd >= 0 && older != NULL && held_live(older) > 0 && count->held.count + held_live(older) >= count->held.limit) {
                held_give_up_first(older);
            }
            if (fd >= 0 && held_append(&count->held, fd) == 0) {
                fd = -1;
            }
        }
        if (fd >= 0) {
            close(fd);
        }
        sleep_for_ns(count->pause_ns);
    }
    count->took_ns += redlock_boottime_ns() - began;
    return 1;
}

int redlock_census_tree(pid_t root, pid_t group, long *walked, long *detached, int64_t *took_ns) {
    check_pidfds();
    census count = {0};
    census_begin(&count, root, 0, NULL);
    (void)census_step(&count, group, INT64_MAX);
    *walked = count.walked;
    *detached = count.detached;
    *took_ns = count.took_ns;
    int failed = count.failed;
    census_end(&count);
    free(count.held.fds);
    return failed ? -1 : 0;
}

/* SIGKILLs process `pid`, read with start time `started`, through `descriptor` (from
   open_process), or by pid when that is -1. A signal through the descriptor that fails while
   /proc still shows that process running goes by pid: a seccomp filter may refuse SIGKILL
   through pidfds alone (check_pidfds sends signal 0). "That process": the start time read,
   not exited, and a signal 0 through the descriptor after the read that finds it unreaped
   (else the pid may have gone to another process in the same clock tick). 0, or -1 with
   errno: ESRCH when it has exited, EPERM when it may not be signalled, another when /proc
   could not be read (EMFILE, …). */
static int kill_process(int descriptor, long pid, unsigned long long started) {
    if (signal_process(descriptor, pid, SIGKILL) == 0) {
        return 0;
    }
    if (descriptor < 0) {
        return -1;
    }
    long parent;
    long threads;
    char state;
    unsigned long long now_started;
    if (read_parent(pid, &parent, &state, NULL, &threads, &now_started) != 0) {
        if (vanished(errno)) {
            errno = ESRCH;
        }
        return -1;
    }
    if (now_started != started || exited(state, threads)) {
        errno = ESRCH;
        return -1;
    }
    if (signal_process(descriptor, pid, 0) != 0) {
        return -1; /* ESRCH: it has exited; another: it cannot be told apart, so refused */
    }
    return kill((pid_t)pid, SIGKILL);
}

/* Opens process `pid` (open_process) and reads its parent, state and start time (read_parent),
   both of the same process: the read comes after the open and before a signal 0 through the
   descriptor finds the process not yet reaped, so its pid did not change hands in between.
   0, with *descriptor (to close; -1 without pidfds, when the read is only as good as the pid);
   -1 when the process is gone; -2 when /proc could not be read (errno: EMFILE, …). */
static int open_and_read(long pid, int *descriptor, long *parent, char *state, unsigned long long *started) {
    int opened = open_process(pid);
    if (opened < 0 && (errno == ESRCH || errno == EINVAL)) {
        /* Gone, or refused for this pid alone (a seccomp filter that passed check_pidfds). When
           /proc still shows a process there, one more open (a process that took the pid since
           is told apart by the callers: parent, start time); failing again, the read below is
           by pid, as without pidfds. */
        if (read_parent(pid, parent, state, NULL, NULL, started) != 0) {
            return vanished(errno) ? -1 : -2;
        }
        opened = open_process(pid);
    }
    int result = 0;
    if (read_parent(pid, parent, state, NULL, NULL, started) != 0) {
        result = vanished(errno) ? -1 : -2;
    } else if (opened >= 0 && signal_process(opened, pid, 0) != 0 && errno == ESRCH) {
        result = -1;
    }
    if (result != 0) {
        if (opened >= 0) {
            int error = errno;
            close(opened);
            errno = error;
        }
        return result;
    }
    *descriptor = opened;
    return 0;
}

/* Whether process `pid` is in `list` (sorted by pid, `count` long) and below `root` there. */
static int below_in(process_entry *list, size_t count, long pid, long root) {
    process_entry key = {.pid = pid};
    process_entry *found = count > 0 ? bsearch(&key, list, count, sizeof *list, compare_pids) : NULL;
    return found != NULL && descends_from(list, count, (size_t)(found - list), root);
}

/* The scan: SIGKILLs each descendant of `root` in a snapshot of /proc (every process's
   /proc/PID/stat, about 10 µs each), in passes until one finds none it has not sent SIGKILL yet
   (at most 64; a process is told by its pid and start time). Sets *unknown when it signalled a
   process that is not in `known` (by pid and start time; `known` may be NULL). 0 then; -1 when
   /proc could not be read, memory ran out, one could not be signalled (EPERM) or new ones still
   appeared in the last pass. */
static int kill_tree_scan(pid_t root, const pid_set *known, int *unknown) {
    /* The processes sent SIGKILL so far (by pid and start time), sorted by pid. */
    process_entry *killed = NULL;
    size_t killed_count = 0;
    int outcome = -1;
    for (int pass = 0; pass < 64; pass++) {
        process_entry *list = NULL;
        long count = list_processes(&list);
        if (count < 0) {
            break;
        }
        process_entry *grown = realloc(killed, (killed_count + (size_t)count + 1) * sizeof *killed);
        if (grown == NULL) {
            free(list);
            break;
        }
        killed = grown;
        size_t before = killed_count;
        int refused = 0;
        for (size_t i = 0; i < (size_t)count; i++) {
            if (exited(list[i].state, list[i].threads) || !descends_from(list, (size_t)count, i, (long)root)) {
                continue;
            }
            /* One sent SIGKILL in an earlier pass runs none of its own code again (the signal
               cannot be blocked or caught) and forks no more: dying, not running. */
            if (holds(killed, before, list[i].pid, list[i].started)) {
                continue;
            }
            /* Read a while ago (the snapshot of thousands of processes takes milliseconds): it
               is signalled through a descriptor of its own, and only if that is the process
               read (its start time) and still below `root` (its parent unchanged, or `root`,
               to which a dying parent hands it). */
            int descriptor;
            long parent;
            char state;
            unsigned long long started;
            int opened = open_and_read(list[i].pid, &descriptor, &parent, &state, &started);
            if (opened == -2) {
                refused = 1; /* /proc could not be read: the kill cannot vouch for it */
            }
            if (opened != 0) {
                continue;
            }
            if (started != list[i].started || (parent != list[i].parent && parent != (long)root && !below_in(list, (size_t)count, parent, (long)root))) {
                if (descriptor >= 0) {
                    close(descriptor);
                }
                continue;
            }
            if (kill_process(descriptor, list[i].pid, started) == 0) {
                killed[killed_count++] = list[i];
                if (known == NULL || !pid_set_holds(known, list[i].pid, list[i].started)) {
                    *unknown = 1;
                }
            } else if (errno != ESRCH) {
                refused = 1; /* EPERM: one it may not kill runs on */
            }
            if (descriptor >= 0) {
                close(descriptor);
            }
        }
        free(list);
        if (killed_count == before) {
            outcome = refused ? -1 : 0;
            break;
        }
        qsort(killed, killed_count, sizeof *killed, compare_pids);
    }
    free(killed);
    return outcome;
}

/* Sends SIGKILL to process `pid` unless `found` holds it already (by pid; with `strict`, by
   pid and start time: a pid taken by another process since), or its parent is neither `root`
   nor in `found` (checked just before: a pid read from a list a while ago may have gone to
   another process); `found` then holds it. Its children are appended to `work`, read before
   and after the kill (a process killed first could hand them to init before they are read,
   one read only before could fork another); once killed, `found` marks it signalled. The
   parent is read and the signal sent through a descriptor of the process (open_and_read), so
   the signal cannot reach another that took its pid meanwhile. 0, or -1 when memory ran out;
   one it may not signal (EPERM) or read (EMFILE, …) sets *refused. */
static int kill_found(long root, long pid, pid_set *found, pid_array *work, int *refused, int strict) {
    if (pid <= 0) {
        return 0;
    }
    const process_identity *known = pid_set_find(found, pid);
    if (known != NULL) {
        if (!strict) {
            return 0;
        }
        /* The same process (its start time), killed already: one read, no descriptor. */
        long was_parent;
        char was_state;
        unsigned long long was_started;
        if (read_parent(pid, &was_parent, &was_state, NULL, NULL, &was_started) != 0) {
            if (!vanished(errno)) {
                *refused = 1; /* could not be read: the kill cannot vouch for it */
            }
            return 0;
        }
        if (was_started == known->started) {
            return 0;
        }
    }
    /* Read from a list a while ago: still below `root` (its parent `root` or one killed here)?
       Else it is gone, escaped to init, or its pid went to another process meanwhile. */
    int descriptor;
    long parent;
    char state;
    unsigned long long started;
    int opened = open_and_read(pid, &descriptor, &parent, &state, &started);
    if (opened != 0) {
        if (opened == -2) {
            *refused = 1; /* could not be read: the walk goes on, the kill fails */
        }
        return 0;
    }
    int result = 0;
    if (pid_set_holds(found, pid, started) || (parent != root && !pid_set_contains(found, parent))) {
        goto done;
    }
    if (pid_set_put(found, pid, started) != 0) {
        result = -1;
        goto done;
    }
    size_t before = work->count;
    if (read_children(pid, work) != 0) {
        work->count = before; /* read again below, after the kill */
    }
    if (kill_process(descriptor, pid, started) != 0) {
        if (errno != ESRCH) {
            *refused = 1;
        }
        goto done;
    }
    pid_set_find(found, pid)->signalled = 1;
    /* Killed: no fork of it completes any more (a fatal signal aborts one in progress). A read
       that fails leaves its children to the scan that follows. */
    size_t killed_at = work->count;
    if (read_children(pid, work) != 0) {
        work->count = killed_at;
    }
done:
    if (descriptor >= 0) {
        close(descriptor);
    }
    return result;
}

static int compare_longs(const void *left, const void *right) {
    long a = *(const long *)left;
    long b = *(const long *)right;
    return (a > b) - (a < b);
}

/* read_children, until two reads in a row give the same pids (at most 8 reads): a children
   file is read in pieces, and one whose owner reaps meanwhile shifts its later entries under
   the next piece's offset, which can skip one. -1 when it never held still, or as there. */
static int read_children_stable(long pid, pid_array *children) {
    pid_array previous = {0};
    int result = -1;
    for (int reads = 0; reads < 8; reads++) {
        children->count = 0;
        if (read_children(pid, children) != 0) {
            break;
        }
        if (children->count > 1) {
            qsort(children->items, children->count, sizeof *children->items, compare_longs);
        }
        if (reads > 0 && previous.count == children->count &&
            (children->count == 0 || memcmp(previous.items, children->items, children->count * sizeof *children->items) == 0)) {
            result = 0;
            break;
        }
        /* This read becomes the one to compare with; the next goes into the other buffer. */
        pid_array swap = previous;
        previous = *children;
        *children = swap;
    }
    free(previous.items);
    return result;
}

/* The fast part of redlock_kill_tree: SIGKILLs the descendants of `root` found by walking
   /proc/PID/task/TID/children from it, each killed on sight, so the cost grows with them, not
   with the processes on the host. Then reads `root`'s children again, in passes until one finds
   none new (at most 64): what a dying process handed to `root` (a child subreaper) comes there.
   Every process it signalled is left in `found` (marked when killed); `strict` as for
   kill_found. Best effort: -1 when memory ran out. */
static int kill_tree_walk(long root, pid_set *found, int *refused, int strict) {
    pid_array work = {0};
    int result = 0;
    for (int pass = 0; pass < 64 && result == 0; pass++) {
        size_t before = found->changes;
        work.count = 0;
        if ((strict ? read_children_stable(root, &work) : read_children(root, &work)) != 0) {
            result = -1;
            break;
        }
        /* `work` grows at its end while it is read: children of the killed come after them. */
        for (size_t i = 0; i < work.count && result == 0; i++) {
            result = kill_found(root, work.items[i], found, &work, refused, strict);
        }
        if (found->changes == before) {
            break;
        }
    }
    free(work.items);
    return result;
}

/* Whether `process` has exited in full: gone (its pid free, or another process's now), or a
   zombie none of whose threads runs (a zombie leader may wait for its other threads, which may
   still hold children). */
static int fully_exited(process_identity process) {
    long parent;
    long threads;
    char state;
    unsigned long long started;
    if (read_parent(process.pid, &parent, &state, NULL, &threads, &started) != 0) {
        return vanished(errno);
    }
    return started != process.started || exited(state, threads);
}

/* CPU time of the calling thread in nanoseconds (0 if it cannot be read). */
static int64_t thread_cpu_ns(void) {
    struct timespec now;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now) != 0) {
        return 0;
    }
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* Waits until every process `found` marks signalled has exited in full (each SIGKILLed: a few
   ms, unless it is in uninterruptible sleep or has much memory to give back), at most
   `limit_ns`, killing on the way what they and `root` gain meanwhile. In passes about every
   100 µs, the children of each one that has not exited yet are read again (a child one of them
   made its own with CLONE_PARENT after the walk read its list; an orphan handed to one that is
   a subreaper: each runs until its parent has exited, which takes up to hundreds of ms for one
   with gigabytes, unless found here), and `root`'s (what one that exited handed up: with
   `root_reaps`, a walk that tells a pid taken by another process since by its start time, one
   read of /proc/PID/stat per child of `root` a pass; without, `root` reaps nothing meanwhile
   and a known pid is its known process); each new one is killed as the walk does (kill_found).
   A pass that killed one is followed at once by the next; another, by a pause as long as the
   pass's CPU time, at least 100 µs (what the passes take is at most about half a core while
   nothing new turns up: thousands of zombies below `root` make a pass tens of ms). 1 when they
   all exited and a last pass found nothing new; 0 when the limit passed first, a list could not
   be read, or memory ran out. */
static int settle(long root, int root_reaps, pid_set *found, int *refused, int64_t limit_ns) {
    int64_t give_up = redlock_boottime_ns() + limit_ns;
    pid_array pending = {0};
    pid_array work = {0};
    int result = 0;
    for (;;) {
        int64_t pass_cpu = thread_cpu_ns();
        size_t before = found->changes;
        pending.count = 0;
        int failed = 0;
        for (size_t i = 0; i < found->capacity && !failed; i++) {
            process_identity *slot = &found->slots[i];
            if (slot->pid != 0 && slot->signalled && !slot->exited) {
                if (fully_exited(*slot)) {
                    slot->exited = 1;
                } else {
                    failed = pid_array_append(&pending, slot->pid) != 0;
                }
            }
        }
        work.count = 0;
        for (size_t i = 0; i < pending.count && !failed; i++) {
            size_t read_from = work.count;
            if (read_children(pending.items[i], &work) != 0) {
                work.count = read_from;
                failed = 1; /* could not be read: the kill cannot vouch for its children */
            }
        }
        /* `work` grows at its end while it is read: children of the killed come after them. A
           pid known already is skipped without a look at its start time (not strict): a child
           of a process that has not exited keeps its pid until that process, killed, could
           reap it, which it cannot. That keeps a pass short (well under a millisecond for a
           few hundred processes), shorter than a chain of CLONE_PARENT forks takes to grow. */
        for (size_t i = 0; i < work.count && !failed; i++) {
            failed = kill_found(root, work.items[i], found, &work, refused, 0) != 0;
        }
        if (failed || kill_tree_walk(root, found, refused, root_reaps) != 0) {
            break;
        }
        if (pending.count == 0 && found->changes == before) {
            result = 1;
            break;
        }
        int64_t now = redlock_boottime_ns();
        if (now > give_up) {
            break;
        }
        /* A pass that killed one goes again at once: where one escaped, its siblings may be
           forking. Else a pause of the pass's CPU time, not its wall time (a pass the scheduler
           held back is no reason to leave what escaped running longer), at least 100 µs. */
        if (found->changes != before) {
            continue;
        }
        int64_t spent = thread_cpu_ns() - pass_cpu;
        int64_t pause_ns = spent > 100000 ? spent : 100000;
        sleep_for_ns(pause_ns);
    }
    free(pending.items);
    free(work.items);
    return result;
}

int redlock_kill_tree(pid_t root, int64_t *killed_at_ns) {
    check_pidfds();
    pid_set found = {0};
    int refused = 0;
    int walked = children_files_exist() && kill_tree_walk(root, &found, &refused, 0) == 0;
    int64_t walked_at = 0;
    /* The walk's end is the kill instant only if nothing escaped it: once every process it killed
       has exited in full (and handed its children, any a sibling made its own with CLONE_PARENT
       after the walk read its list included, to `root`), `root` has no child the walk has not
       killed (told by pid and start time: `root` may be reaping, and a pid change hands), and
       the scan below finds none either. The instant is taken after that last look: one that
       escaped and ended before it, reaped by then, ran before it. */
    if (walked) {
        size_t before = found.changes;
        walked = settle(root, 1, &found, &refused, 1000000000) && found.changes == before;
        walked_at = redlock_boottime_ns();
    }
    /* The scan of /proc follows: it finds what the walk may have missed (a process handed from
       one list to another while the lists were read) and says whether it did. */
    int unknown = 0;
    int outcome = kill_tree_scan(root, walked ? &found : NULL, &unknown);
    free(found.slots);
    if (outcome != 0 || refused) {
        return -1;
    }
    if (killed_at_ns != NULL) {
        *killed_at_ns = walked && !unknown ? walked_at : redlock_boottime_ns();
    }
    return 0;
}

int redlock_kill_tree_by_scan(pid_t root) {
    check_pidfds();
    int unknown = 0;
    return kill_tree_scan(root, NULL, &unknown);
}

int redlock_become_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1) == 0 ? 0 : errno;
}

/* SIGKILLs every child of this process (read from /proc: every process's /proc/PID/stat, about
   10 µs each on the host), to catch descendants of the command that left its process group
   (setsid) and were reparented here (a child subreaper). Returns 1 when it found one, running
   or ended, that `known` (NULL: none) does not hold as signalled, by pid and start time: one
   the kill before it had not reached. */
static int kill_children(const pid_set *known) {
    pid_t self = getpid();
    DIR *processes = opendir("/proc");
    if (processes == NULL) {
        return 1;
    }
    int unknown = 0;
    struct dirent *entry;
    while ((entry = readdir(processes)) != NULL) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        long parent;
        char state;
        unsigned long long started;
        if (*end == '\0' && pid > 0 && read_parent(pid, &parent, &state, NULL, NULL, &started) == 0 && parent == self) {
            kill((pid_t)pid, SIGKILL);
            /* One that ended since the walk (a zombie here: nothing is reaped meanwhile) may
               have run after it just as well as one that still runs. */
            const process_identity *slot = known != NULL ? pid_set_find(known, pid) : NULL;
            if (slot == NULL || slot->started != started || !slot->signalled) {
                unknown = 1;
            }
        }
    }
    closedir(processes);
    return unknown;
}

/* SIGKILLs every descendant of this process by the walk (kill_tree_walk), then waits for what it
   killed to exit, killing what escaped the walk meanwhile (settle; not strict: the caller reaps
   nothing until this returns, so a pid settle knows stays its known process): the first steps
   of a kill whose scan (kill_children) follows. What it signalled is left in `found` (the caller
   frees its slots); `*walked_at_ns` is the walk's end, `*escaped` 1 when settle killed one the
   walk had missed. 1 when the walk went through (children files exist, memory sufficed, every
   process it found could be read and signalled: one it may not signal, EPERM, runs on) and
   every process killed exited within the second, else 0. */
static int kill_own_tree_settled(pid_set *found, int64_t *walked_at_ns, int *escaped) {
    *walked_at_ns = redlock_boottime_ns();
    *escaped = 0;
    if (!children_files_exist()) {
        return 0;
    }
    check_pidfds();
    int refused = 0;
    int through = kill_tree_walk(getpid(), found, &refused, 0) == 0;
    *walked_at_ns = redlock_boottime_ns();
    size_t before = found->changes;
    int settled = settle(getpid(), 0, found, &refused, 1000000000);
    *escaped = found->changes != before;
    return through && settled && !refused;
}

void redlock_kill_descendants(pid_t group) {
    if (group > 0) {
        kill(-group, SIGKILL);
    }
    /* What escapes the walk (a CLONE_PARENT child of a killed process that is slow to exit) is
       killed while the killed exit (settle), not once its parent has handed it up, which the
       blocking waits below would wait for. Nothing reaps this process's children before the
       loop below (the watchdog has one thread; in redlock, no other thread waits for any
       child), so settle need not be strict, and a pass costs no read of each child's start
       time (thousands of zombies left by the command made strict passes 150 ms longer). Best
       effort: when settle stops early (its second, a list it could not read, memory), the
       scans and waits below still kill and reap everything. */
    pid_set found = {0};
    int64_t walked_at;
    int escaped;
    (void)kill_own_tree_settled(&found, &walked_at, &escaped);
    free(found.slots);
    for (;;) {
        /* A scan of /proc per batch of reaped children, not per child: killed together, they
           end together (hundreds of them made a scan each cost seconds). */
        kill_children(NULL);
        int status;
        pid_t reaped;
        while ((reaped = waitpid(-1, &status, WNOHANG)) > 0 || (reaped < 0 && errno == EINTR)) {
        }
        if (reaped < 0) {
            return; /* ECHILD: nothing is left */
        }
        if (group > 0) {
            kill(-group, SIGKILL);
        }
        /* Children are left, none ended yet: wait for one, then scan again. */
        while ((reaped = waitpid(-1, &status, 0)) < 0 && errno == EINTR) {
        }
        if (reaped < 0) {
            return;
        }
    }
}


/* Arms `timer` (CLOCK_BOOTTIME) for the absolute instant `deadline_ns`, or disarms it for 0. */
static int arm(int timer, int64_t deadline_ns) {
    struct itimerspec when;
    memset(&when, 0, sizeof when);
    if (deadline_ns > 0) {
        when.it_value = timespec_of_ns(deadline_ns);
    }
    return timerfd_settime(timer, TFD_TIMER_ABSTIME, &when, NULL);
}

int redlock_kill_own_tree(int64_t *killed_at_ns, int64_t scan_pause_ns) {
    /* A process that escaped the walk (a sibling made with CLONE_PARENT, after the walk had
       read their parent's children, by one it killed later; an orphan handed to a subreaper
       below) stays below, running or a zombie, since nothing is reaped meanwhile: settle kills
       it while it waits for the exits, before the scan, whose cost grows with the host's
       processes (30-150 ms among 8,000). No instant without a walk that went through: one it
       could not read or signal may run on. */
    pid_set found = {0};
    int64_t walked_at;
    int escaped;
    int vouched = kill_own_tree_settled(&found, &walked_at, &escaped);
    sleep_for_ns(scan_pause_ns);
    if (kill_children(vouched ? &found : NULL)) {
        escaped = 1;
    }
    free(found.slots);
    if (!vouched) {
        *killed_at_ns = INT64_MAX;
        return -1;
    }
    *killed_at_ns = escaped ? redlock_boottime_ns() : walked_at;
    return escaped ? 1 : 0;
}

/* How long before a deadline the watchdog's kill starts. A kill of the command's process group
   takes one call, but what left the group (setsid, setpgid) is found by a walk of the tree and
   signalled one process at a time, which with hundreds of them takes longer than the safety
   margin between the deadline and the lease's end. So the watchdog counts the tree (a census)
   when a deadline comes and on a timer of its own, at most every `every_ns` (200 ms, or ten
   times what the last count took: a tenth of a core at most), in steps of about 2 ms between
   which it reads renewals and heeds its timers, holds a descriptor of each process outside the
   group, and signals those first when it kills, a call each (those of the count under way too).
   With any there, the kill starts earlier by four times the count's time per process, for each
   of them, plus 2 ms (each signal wakes a process whose exit takes the CPU from the kill: 185 µs
   a signal for 600 Python processes, three times what counting one costs; 110 µs for small ones
   whose count cost 200) — but by at most a fifth of the time from the latest deadline's arrival
   to that deadline (`window_ns`): a renewal comes when a third of the lease or more is left, so
   a run that renews on time is never killed for it. What left the group since the last count is
   found by the kill's walk. */
typedef struct kill_lead {
    int64_t wanted_ns;  /* the lead the latest complete count asks for */
    int64_t lead_ns;    /* the lead used: wanted_ns, at most window_ns / 5 */
    int64_t window_ns;
    int64_t counted_at; /* when the latest count was complete (0: none yet) */
    int64_t every_ns;
    int said;           /* bit 1: the lead was told; bit 2: its cap was */
    size_t hold_limit;  /* the most descriptors held, by both sets below together */
    held_processes held; /* from the latest complete count */
    census count;        /* the count under way, if `count.running` */
    int64_t scan_pause_ns; /* for the suite: a sleep before a kill's scan of /proc (0: none) */
} kill_lead;

/* SIGKILLs the command's group and whatever it detached, says why on stderr and on the status
   pipe (`kind`), and marks the command killed: later deadlines no longer apply. */
static void kill_command(pid_t group, kill_lead *lead, int *killed, const char *why, int32_t kind, int32_t argument) {
    *killed = 1;
    kill(-group, SIGKILL);
    /* What left the group at the latest count, and in the count under way: a call each, before
       the walk finds the rest. */
    for (size_t i = lead->held.first; i < lead->held.count; i++) {
        kill_held(lead->held.fds[i]);
    }
    for (size_t i = 0; i < lead->count.held.count; i++) {
        kill_held(lead->count.held.fds[i]);
    }
    held_release(&lead->held);
    held_release(&lead->count.held);
    census_end(&lead->count);
    /* The rest, by a walk of the tree, checked; its instant is the walk's end when nothing
       escaped it. */
    int64_t killed_at = 0;
    redlock_kill_own_tree(&killed_at, lead->scan_pause_ns);
    redlock_watch_send(STATUS_FD, kind, argument, killed_at);
    if (why != NULL) {
        say(why);
    }
}

/* Starts a count of the command's tree (`lead->count`) unless one is under way. */
static void begin_count(kill_lead *lead) {
    if (lead->count.running) {
        return;
    }
    check_pidfds();
    census_begin(&lead->count, getpid(), lead->hold_limit, &lead->held);
}

/* Takes a complete count: its descriptors replace the held ones, and the lead is what it asks
   for (told once on stderr when it is large, and once when the cap cuts it). */
static void finish_count(kill_lead *lead) {
    census *count = &lead->count;
    held_release(&lead->held);
    held_processes taken = lead->held;
    lead->held = count->held;
    count->held = taken;
    long walked = count->walked;
    long detached = count->detached;
    int64_t took = count->took_ns;
    census_end(count);
    lead->counted_at = redlock_boottime_ns();
    lead->every_ns = 10 * took > 200000000 ? 10 * took : 200000000;
    int64_t per_process = walked > 0 ? took / walked : 0;
    lead->wanted_ns = detached > 0 ? 4 * per_process * detached + 2000000 : 0;
    int64_t cap = lead->window_ns / 5;
    lead->lead_ns = lead->wanted_ns < cap ? lead->wanted_ns : cap;
    if (lead->wanted_ns >= 10000000 && (lead->said & 1) == 0) {
        lead->said |= 1;
        char line[256];
        snprintf(line, sizeof line,
                 "redlock watchdog: the command runs %ld process%s outside its process group; the watchdog kills %s one at a "
                 "time, so it starts up to %lld ms before the lease's deadline\n",
                 detached, detached == 1 ? "" : "es", detached == 1 ? "it" : "them", (long long)(lead->lead_ns / 1000000));
        say(line);
    }
    if (lead->wanted_ns > cap && cap > 0 && (lead->said & 2) == 0) {
        lead->said |= 2;
        char line[320];
        snprintf(line, sizeof line,
                 "redlock watchdog: killing the command's %ld process%s outside its process group takes about %lld ms, more than "
                 "the %lld ms (a fifth of the time from a renewal to its deadline) it may start early: if redlock stops, some may "
                 "outlive the lease; raise --ttl\n",
                 detached, detached == 1 ? "" : "es", (long long)(lead->wanted_ns / 1000000), (long long)(cap / 1000000));
        say(line);
    }
}

/* Arms `timer` for the kill due at `deadline_ns` (0: none), the lead's time before it; a kill
   whose start has passed fires at once. With `arrived` (a deadline that just came), its window
   is taken and a count started when due. */
static int arm_kill(int timer, int64_t deadline_ns, kill_lead *lead, int arrived) {
    if (deadline_ns <= 0) {
        return arm(timer, 0);
    }
    int64_t now = redlock_boottime_ns();
    if (arrived) {
        lead->window_ns = deadline_ns > now ? deadline_ns - now : 0;
        int64_t cap = lead->window_ns / 5;
        lead->lead_ns = lead->wanted_ns < cap ? lead->wanted_ns : cap;
        if (lead->counted_at == 0 || now - lead->counted_at >= lead->every_ns) {
            begin_count(lead);
        }
    }
    int64_t start = deadline_ns - lead->lead_ns;
    return arm(timer, start > 0 ? start : 1);
}

/* Reaps the orphans reparented here (the watchdog is a child subreaper) that have exited: a
   long command whose helpers fork and leave (a double fork, `(job &)` in a shell) left a zombie
   here for each of them, every one holding a pid until the command ended. The command itself
   is only looked at (WNOWAIT), left to the caller's waitpid. At most 64 at a time, so that a
   command making orphans faster than they are reaped cannot keep the watchdog from its timers:
   1 when it stopped there (more may be waiting: the caller comes back without waiting for a
   SIGCHLD, which came for them already), else 0. */
static int reap_orphans(pid_t command) {
    for (int reaped_here = 0; reaped_here < 64; reaped_here++) {
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0 || info.si_pid == command) {
            return 0;
        }
        int status;
        pid_t reaped;
        while ((reaped = waitpid(info.si_pid, &status, WNOHANG)) < 0 && errno == EINTR) {
        }
        if (reaped <= 0) {
            return 0;
        }
    }
    return 1;
}

/* Reads from the supervisor's pipe (non-blocking) until `*message` is whole: 1 when it is, 0
   when nothing more has come yet (what came stays in `*message`, `*have` bytes), -1 when the
   supervisor is gone (end of file, or an error). */
static int read_message(int fd, redlock_watch_message *message, size_t *have) {
    for (;;) {
        ssize_t got = read(fd, (char *)message + *have, sizeof *message - *have);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }
        if (got <= 0) {
            return -1;
        }
        *have += (size_t)got;
        if (*have == sizeof *message) {
            *have = 0;
            return 1;
        }
    }
}

static int is_terminating(int signal_number) {
    return signal_number == SIGINT || signal_number == SIGTERM || signal_number == SIGHUP || signal_number == SIGQUIT;
}

int redlock_signal_is_ignored(int signal_number) {
    struct sigaction current;
    if (sigaction(signal_number, NULL, &current) != 0) {
        return 0;
    }
    return (current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_IGN;
}

/* Takes a deadline from `message` into `*deadline`: a renewal (REDLOCK_WATCH_DEADLINE) until
   redlock set the instant of its own kill (REDLOCK_WATCH_KILL_AT, `*ordered` from then on), after
   which only another such applies. 1 when the deadline was taken. */
static int take_deadline(const redlock_watch_message *message, int64_t *deadline, int *ordered) {
    if (message->kind == REDLOCK_WATCH_KILL_AT) {
        *ordered = 1;
    } else if (message->kind != REDLOCK_WATCH_DEADLINE || *ordered) {
        return 0;
    }
    *deadline = message->value;
    return 1;
}

/* Whether the command is to start with `signal_number` ignored (see redlock_watchdog_main). */
static int keeps_ignored(uint64_t kept_ignored, int signal_number) {
    return (signal_number == SIGHUP || signal_number == SIGINT || signal_number == SIGQUIT)
           && ((kept_ignored >> (signal_number - 1)) & 1) != 0;
}

uint32_t redlock_test_delay_ms(const char *variable) {
    const char *text = getenv(variable);
    if (text == NULL || *text == '\0') {
        return 0;
    }
    uint32_t milliseconds = 0;
    for (const char *digit = text; *digit != '\0'; digit++) {
        if (*digit < '0' || *digit > '9') {
            return 0;
        }
        milliseconds = milliseconds * 10 + (uint32_t)(*digit - '0');
        if (milliseconds > 60000) {
            milliseconds = 60000;
        }
    }
    return milliseconds;
}

/* Gives the terminal back to `foreground` (redlock's group) if the command's group `child` has
   it; where the command never took it (a Ctrl-Z before it could: the shell has it), taking it
   for redlock's stopped group would leave the shell reading an end of file. */
static void give_terminal_back(int take_terminal, pid_t child, pid_t foreground) {
    if (take_terminal && tcgetpgrp(STDIN_FILENO) == child) {
        tcsetpgrp(STDIN_FILENO, foreground);
    }
}

_Noreturn void redlock_watchdog_main(char *const command[], int64_t deadline_ns, uint64_t kept_ignored) {
    if (fcntl(CONTROL_FD, F_SETFD, FD_CLOEXEC) != 0 || fcntl(STATUS_FD, F_SETFD, FD_CLOEXEC) != 0) {
        fail("descriptors 3 and 4 are not the supervisor's pipes");
    }
    /* The supervisor's messages are read as they come and all at once: a deadline that passed
       while the watchdog was stopped is judged after the renewals queued meanwhile. */
    int control_flags = fcntl(CONTROL_FD, F_GETFL);
    if (control_flags < 0 || fcntl(CONTROL_FD, F_SETFL, control_flags | O_NONBLOCK) != 0) {
        fail("fcntl(O_NONBLOCK)");
    }
    /* Signals aimed at the supervisor's process group (a terminal's Ctrl-C, a kill of the group)
       must not take the watchdog away: the supervisor forwards what the command should get. */
    const int ignored[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU};
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) {
        if (signal(ignored[i], SIG_IGN) == SIG_ERR) {
            fail("signal");
        }
    }
    sigset_t children;
    sigemptyset(&children);
    sigaddset(&children, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &children, NULL) != 0) {
        fail("sigprocmask");
    }
    int child_events = signalfd(-1, &children, SFD_CLOEXEC | SFD_NONBLOCK);
    if (child_events < 0) {
        fail("signalfd");
    }

    /* Descendants that leave the command's group and are orphaned come here, to be killed. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
        fail("prctl(PR_SET_CHILD_SUBREAPER)");
    }
    int timer = timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC | TFD_NONBLOCK);
    /* When to count the command's processes again (kill_lead), between renewals too. */
    int count_timer = timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC | TFD_NONBLOCK);
    if (timer < 0 || count_timer < 0) {
        fail("timerfd_create");
    }

    char path[PATH_MAX];
    int found = find_program(command[0], path, sizeof path);
    if (found != 0) {
        redlock_watch_send(STATUS_FD, REDLOCK_WATCH_EXEC_FAILED, found, 0);
        _exit(0);
    }
    /* A script without a #! line runs under /bin/sh, as execvp does: its argv is built here,
       before fork, since the child may only make async-signal-safe calls. */
    size_t count = 0;
    while (command[count] != NULL) {
        count++;
    }
    char **shell_command = calloc(count + 2, sizeof(char *));
    if (shell_command == NULL) {
        fail("calloc");
    }
    shell_command[0] = "/bin/sh";
    shell_command[1] = path;
    for (size_t i = 1; i < count; i++) {
        shell_command[i + 1] = command[i];
    }
    /* When redlock runs in the terminal's foreground, the command takes the foreground (so it can
       read the terminal, and a Ctrl-C reaches it straight from the terminal), and gets it back
       to redlock's group when it is gone. */
    pid_t supervisor_group = getpgid(getppid()); /* 0 or less where it cannot be told (a PID namespace's init) */
    pid_t foreground = isatty(STDIN_FILENO) ? tcgetpgrp(STDIN_FILENO) : -1;
    int take_terminal = foreground > 0 && foreground == supervisor_group;
    /* For the suite: how long the command's process waits before it takes the terminal, as a
       process a loaded machine has not run yet would. */
    uint32_t terminal_delay_ms = redlock_test_delay_ms("REDLOCK_RUN_TEST_TERMINAL_DELAY_MS");

    /* What the supervisor sent while this process started: a later deadline, or a terminating
       signal it got before the command started, which keeps the command from starting. */
    int64_t deadline = deadline_ns;
    /* Whether the deadline is the instant redlock set for its own kill (REDLOCK_WATCH_KILL_AT). */
    int ordered = 0;
    redlock_watch_message message;
    size_t have = 0;
    for (;;) {
        int got = read_message(CONTROL_FD, &message, &have);
        if (got < 0) {
            _exit(0); /* the supervisor is gone: nobody holds the lease for the command */
        }
        if (got == 0) {
            break;
        }
        if (take_deadline(&message, &deadline, &ordered)) {
            continue;
        }
        if (message.kind == REDLOCK_WATCH_SIGNAL && is_terminating(message.argument)) {
            redlock_watch_send(STATUS_FD, REDLOCK_WATCH_NOT_STARTED, message.argument, 0);
            _exit(0);
        }
    }
    if (deadline > 0 && redlock_boottime_ns() >= deadline) {
        redlock_watch_send(STATUS_FD, REDLOCK_WATCH_TOO_LATE, 0, redlock_boottime_ns());
        _exit(0);
    }
    int exec_report[2];
    if (pipe2(exec_report, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    pid_t watchdog = getpid();
    pid_t child = fork();
    if (child < 0) {
        fail("fork");
    }
    if (child == 0) {
        /* Only async-signal-safe calls from here to exec. */
        setpgid(0, 0);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != watchdog) {
            _exit(127);
        }
        if (take_terminal) {
            sleep_for_ns((int64_t)terminal_delay_ms * 1000000);
            /* Only while redlock's group still has it: a Ctrl-Z since the watchdog looked stopped
               redlock's job and the shell took the terminal back, and taking it now (which
               succeeds: SIGTTOU is still ignored here, as in the watchdog) would run the command
               in the foreground behind the shell's prompt, the command reading what is typed at
               the shell. Left in the background, a command that reads the terminal is stopped,
               and `fg` gives it the terminal through redlock. */
            if (tcgetpgrp(STDIN_FILENO) == supervisor_group) {
                tcsetpgrp(STDIN_FILENO, getpid());
            }
        }
        struct sigaction default_action;
        memset(&default_action, 0, sizeof default_action);
        default_action.sa_handler = SIG_DFL;
        for (int number = 1; number < NSIG; number++) {
            if (keeps_ignored(kept_ignored, number)) {
                continue; /* ignored here as in the watchdog, as nohup or the shell passed it on */
            }
            if (sigaction(number, &default_action, NULL) != 0) {
                /* The C library keeps a few real-time signals to itself; reset them in the kernel. */
                struct {
                    void *handler;
                    unsigned long flags;
                    void *restorer;
                    uint64_t mask;
                } kernel_default = {0};
                syscall(SYS_rt_sigaction, number, &kernel_default, NULL, sizeof kernel_default.mask);
            }
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(path, command, environ);
        if (errno == ENOEXEC) {
            execve("/bin/sh", shell_command, environ);
        }
        int error = errno;
        ssize_t ignored_write = write(exec_report[1], &error, sizeof error);
        (void)ignored_write;
        _exit(127);
    }
    free(shell_command);
    close(exec_report[1]);
    setpgid(child, child); /* also done by the child; whichever runs first wins, the other may fail */
    int exec_error = 0;
    ssize_t got;
    do {
        got = read(exec_report[0], &exec_error, sizeof exec_error);
    } while (got < 0 && errno == EINTR);
    close(exec_report[0]);
    if (got > 0) {
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
        }
        give_terminal_back(take_terminal, child, foreground);
        redlock_watch_send(STATUS_FD, REDLOCK_WATCH_EXEC_FAILED, exec_error, 0);
        _exit(0);
    }
    redlock_watch_send(STATUS_FD, REDLOCK_WATCH_STARTED, child, 0);

    int control = CONTROL_FD;
    int killed = 0;
    /* The job-control signal that stopped the command, while it is stopped, and the latest
       renewal that came meanwhile. */
    int stopped_by = 0;
    int64_t held_deadline = 0;
    /* reap_orphans stopped at its cap: more may be waiting. */
    int orphans_left = 0;
    kill_lead lead = {0};
    /* For the suite: each process the watchdog's count looks at takes this much longer, as on a
       machine so loaded that a count of a thousand processes takes seconds. */
    lead.count.pause_ns = (int64_t)redlock_test_delay_ms("REDLOCK_RUN_TEST_CENSUS_DELAY_MS") * 1000000;
    lead.scan_pause_ns = (int64_t)redlock_test_delay_ms("REDLOCK_RUN_TEST_SCAN_DELAY_MS") * 1000000;
    /* Room for the descriptors the kill holds (kill_lead): the soft limit raised toward the
       hard one (at most 2^20) here, after the command started with the limits it was given; 64
       kept for the rest. */
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0) {
        rlim_t wanted = files.rlim_max == RLIM_INFINITY || files.rlim_max > ((rlim_t)1 << 20) ? ((rlim_t)1 << 20) : files.rlim_max;
        if (files.rlim_cur < wanted) {
            struct rlimit raised = {.rlim_cur = wanted, .rlim_max = files.rlim_max};
            if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
                files = raised;
            }
        }
        lead.hold_limit = files.rlim_cur > 128 ? (size_t)files.rlim_cur - 64 : 0;
    }
    if (arm_kill(timer, deadline, &lead, 1) != 0) {
        kill(-child, SIGKILL);
        fail("timerfd_settime");
    }
    for (;;) {
        /* Best effort: without it, the counts come with the renewals alone. */
        (void)arm(count_timer, killed || lead.counted_at == 0 || lead.count.running ? 0 : lead.counted_at + lead.every_ns);
        struct pollfd watched[4] = {
            {.fd = child_events, .events = POLLIN},
            {.fd = timer, .events = POLLIN},
            {.fd = count_timer, .events = POLLIN},
            {.fd = control, .events = POLLIN},
        };
        /* With a count under way, or orphans left to reap, a look at what came in between. */
        int ready = poll(watched, control >= 0 ? 4 : 3, (lead.count.running && !killed) || orphans_left ? 0 : -1);
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            redlock_kill_descendants(child);
            fail("poll");
        }
        if (watched[0].revents != 0) {
            struct signalfd_siginfo info;
            while (read(child_events, &info, sizeof info) > 0) {
            }
        }
        if (watched[0].revents != 0 || orphans_left) {
            orphans_left = reap_orphans(child);
        }
        if (watched[0].revents != 0) {
            int status;
            pid_t reaped = waitpid(child, &status, WNOHANG | WUNTRACED | WCONTINUED);
            if (reaped == child && WIFSTOPPED(status)) {
                /* A job-control stop (Ctrl-Z; reading or setting the terminal while not in its
                   foreground) stops the whole job: the terminal goes back to redlock's group,
                   which is stopped by the same signal, so the shell sees a stopped job it can
                   resume (fg, bg). A stopped job renews nothing: until the command continues,
                   renewals are held back, so that it is killed at the deadline also where
                   redlock cannot be stopped (an orphaned process group, the init of a PID
                   namespace) and would go on extending the lease for a command that never
                   runs again. A SIGSTOP (`kill -STOP`) is no job-control stop,
                   and stops nothing else, but holds back renewals all the same: a command
                   that runs no more must not hold the lock for good. */
                int stop = WSTOPSIG(status);
                if (stop == SIGTSTP || stop == SIGTTIN || stop == SIGTTOU) {
                    give_terminal_back(take_terminal, child, foreground);
                    /* Only with a terminal (stdin is the controlling one: a job a shell can
                       resume, in the foreground or not): without one (cron, a service manager,
                       stdin redirected) nobody would continue the caller, stopped for good while
                       the command is killed at the deadline anyway. Not group 1 (nor an unknown
                       one): kill(-1) signals every process there is, and a container init's
                       group has no shell to resume it anyway. */
                    if (foreground > 0 && supervisor_group > 1) {
                        kill(-supervisor_group, stop);
                    }
                }
                stopped_by = stop;
                continue;
            }
            if (reaped == child && WIFCONTINUED(status)) {
                stopped_by = 0;
                if (held_deadline > deadline && !ordered && !killed) {
                    deadline = held_deadline;
                    if (arm_kill(timer, deadline, &lead, 1) != 0) {
                        kill_command(child, &lead, &killed, "redlock watchdog: could not arm the deadline timer; killed the command\n",
                                     REDLOCK_WATCH_DEADLINE_KILL, 0);
                    }
                }
                held_deadline = 0;
                continue;
            }
            if (reaped == child) {
                /* What the command left running, in its group or detached from it, is not
                   protected any more. */
                redlock_kill_descendants(child);
                give_terminal_back(take_terminal, child, foreground);
                redlock_watch_send(STATUS_FD, REDLOCK_WATCH_EXITED, status, redlock_boottime_ns());
                _exit(0);
            }
        }
        /* Everything the supervisor sent is taken before the timer is judged: after a stop of
           this process, the renewals queued meanwhile count. */
        if (watched[2].revents != 0) {
            uint64_t expirations;
            ssize_t ignored_read = read(count_timer, &expirations, sizeof expirations);
            (void)ignored_read;
            if (!killed && deadline > 0) {
                /* Processes that left the group since the last count: held, and the lead for them. */
                begin_count(&lead);
            }
        }
        if (control >= 0 && (watched[3].revents != 0 || watched[1].revents != 0)) {
            int got;
            while ((got = read_message(control, &message, &have)) == 1) {
                if (stopped_by != 0 && message.kind == REDLOCK_WATCH_DEADLINE) {
                    if (message.value > held_deadline) {
                        held_deadline = message.value;
                    }
                    continue;
                }
                if (take_deadline(&message, &deadline, &ordered)) {
                    if (!killed && arm_kill(timer, deadline, &lead, 1) != 0) {
                        kill_command(child, &lead, &killed, "redlock watchdog: could not arm the deadline timer; killed the command\n",
                                     REDLOCK_WATCH_DEADLINE_KILL, 0);
                    }
                } else if (message.kind == REDLOCK_WATCH_SIGNAL && message.argument > 0 && message.argument < NSIG) {
                    kill(-child, message.argument);
                }
            }
            if (got < 0) {
                /* The supervisor is gone (killed, or crashed): nobody renews the lease. */
                close(control);
                control = -1;
                if (!killed) {
                    kill_command(child, &lead, &killed, "redlock watchdog: redlock went away while the command ran; killed the command\n",
                                 REDLOCK_WATCH_ORPHAN_KILL, 0);
                }
            }
        }
        if (watched[1].revents != 0) {
            uint64_t expirations;
            ssize_t ignored_read = read(timer, &expirations, sizeof expirations);
            (void)ignored_read;
            if (!killed && deadline > 0 && redlock_boottime_ns() >= deadline - lead.lead_ns) {
                /* At the instant redlock set for its own kill, or with the command stopped by job
                   control: redlock reports why. */
                if (stopped_by != 0 && !ordered) {
                    kill_command(child, &lead, &killed, NULL, REDLOCK_WATCH_STOPPED_KILL, stopped_by);
                } else if (!ordered && lead.lead_ns > 0) {
                    char line[256];
                    snprintf(line, sizeof line,
                             "redlock watchdog: no renewal from redlock with the lease's deadline %lld ms away, about what killing the "
                             "command's processes outside its process group takes; killed the command\n",
                             (long long)((deadline - redlock_boottime_ns()) / 1000000));
                    kill_command(child, &lead, &killed, line, REDLOCK_WATCH_DEADLINE_KILL, 0);
                } else {
                    kill_command(child, &lead, &killed,
                                 ordered ? NULL : "redlock watchdog: the lease's deadline passed without a renewal from redlock; killed the command\n",
                                 REDLOCK_WATCH_DEADLINE_KILL, 0);
                }
            }
        }
        /* A step of the count under way, about 2 ms (it ends with the first process looked at
           once 2 ms have passed; one process's children files, one per thread, are read in one
           step: about 100 ms for one of 15,000 threads): the timers and the renewals are looked
           at between two steps. Complete, it sets the lead, and the kill's timer moves with it. */
        if (lead.count.running && !killed && census_step(&lead.count, child, 2000000)) {
            finish_count(&lead);
            if (deadline > 0 && arm_kill(timer, deadline, &lead, 0) != 0) {
                kill_command(child, &lead, &killed, "redlock watchdog: could not arm the deadline timer; killed the command\n",
                             REDLOCK_WATCH_DEADLINE_KILL, 0);
            }
        }
    }
}

/* The write end of redlock_init_main's self-pipe: its signal handler's only way out. */
static int init_wakeup = -1;

static void init_signalled(int signal_number) {
    int saved = errno;
    unsigned char number = (unsigned char)signal_number;
    ssize_t ignored_write = write(init_wakeup, &number, 1); /* full: a wake-up is pending anyway */
    (void)ignored_write;
    errno = saved;
}

_Noreturn void redlock_init_main(const char *path, char *const argv[]) {
    static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT};
    int wakeup[2];
    if (pipe2(wakeup, O_CLOEXEC) != 0) {
        fail_as("redlock (as init)", "pipe2");
    }
    int flags = fcntl(wakeup[1], F_GETFL);
    if (flags < 0 || fcntl(wakeup[1], F_SETFL, flags | O_NONBLOCK) != 0) {
        fail_as("redlock (as init)", "fcntl(O_NONBLOCK)");
    }
    init_wakeup = wakeup[1];
    /* A signal is forwarded from its arrival on: one that comes before the child exists waits in
       the pipe. The init of a PID namespace gets only the signals it has a handler for; one ignored
       when it started stays ignored, here and in the child (nohup). */
    struct sigaction handler;
    memset(&handler, 0, sizeof handler);
    handler.sa_handler = init_signalled;
    handler.sa_flags = SA_RESTART;
    sigemptyset(&handler.sa_mask);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
        if (redlock_signal_is_ignored(forwarded[i])) {
            continue;
        }
        sigaddset(&defaults, forwarded[i]);
        if (sigaction(forwarded[i], &handler, NULL) != 0) {
            fail_as("redlock (as init)", "sigaction");
        }
    }
    sigaddset(&defaults, SIGCHLD);
    if (sigaction(SIGCHLD, &handler, NULL) != 0) {
        fail_as("redlock (as init)", "sigaction");
    }
    /* Blocked where redlock was started (a parent's mask is inherited), they would stay pending. */
    if (sigprocmask(SIG_UNBLOCK, &defaults, NULL) != 0) {
        fail_as("redlock (as init)", "sigprocmask");
    }

    posix_spawnattr_t attributes;
    if (posix_spawnattr_init(&attributes) != 0) {
        fail_as("redlock (as init)", "posix_spawnattr_init");
    }
    sigset_t none;
    sigemptyset(&none);
    if (posix_spawnattr_setsigdefault(&attributes, &defaults) != 0 || posix_spawnattr_setsigmask(&attributes, &none) != 0
        || posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK) != 0) {
        fail_as("redlock (as init)", "posix_spawnattr");
    }
    pid_t child = 0;
    int spawned = posix_spawn(&child, path, NULL, &attributes, argv, environ);
    posix_spawnattr_destroy(&attributes);
    if (spawned != 0) {
        errno = spawned;
        fail_as("redlock (as init)", "posix_spawn");
    }
    for (;;) {
        unsigned char number = 0;
        ssize_t got = read(wakeup[0], &number, 1);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got != 1) {
            kill(child, SIGKILL);
            fail_as("redlock (as init)", "read");
        }
        if (number != SIGCHLD) {
            kill(child, number);
        }
        /* Every child that ended is reaped (at every wake-up: a SIGCHLD finding the pipe full
           left no byte): redlock, and processes orphaned in the namespace (a `docker exec`'s
           leftovers) that would stay zombies otherwise. */
        int status = 0;
        pid_t reaped;
        while ((reaped = waitpid(-1, &status, WNOHANG)) > 0 || (reaped < 0 && errno == EINTR)) {
            if (reaped == child) {
                _exit(WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
            }
        }
    }
}
