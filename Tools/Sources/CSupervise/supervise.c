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
#include <sys/signalfd.h>
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

int redlock_sleep_until_boottime(int64_t deadline_ns) {
    if (deadline_ns <= 0) {
        return 0;
    }
    struct timespec until = {.tv_sec = (time_t)(deadline_ns / 1000000000), .tv_nsec = (long)(deadline_ns % 1000000000)};
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

static void say(const char *text) {
    ssize_t ignored = write(STDERR_FILENO, text, strlen(text));
    (void)ignored;
}

_Noreturn static void fail(const char *what) {
    char line[256];
    snprintf(line, sizeof line, "redlock watchdog: %s: %s\n", what, strerror(errno));
    say(line);
    _exit(1);
}

/* The parent, state and start time (clock ticks after boot: with the pid, a process's identity)
   of process `pid` from /proc/PID/stat; 0, or -1 when it cannot be read. `started` may be NULL. */
static int read_parent(long pid, long *parent, char *state, unsigned long long *started) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *stat = fopen(path, "re");
    if (stat == NULL) {
        return -1;
    }
    char line[512];
    int result = -1;
    if (fgets(line, sizeof line, stat) != NULL) {
        /* "pid (comm) state ppid ...": comm may contain spaces and parentheses. */
        char *close = strrchr(line, ')');
        unsigned long long start = 0;
        /* Fields 3 (state), 4 (ppid) and 22 (starttime); see proc(5). */
        if (close != NULL
            && sscanf(close + 1, " %c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", state, parent,
                      &start) == 3) {
            if (started != NULL) {
                *started = start;
            }
            result = 0;
        }
    }
    fclose(stat);
    return result;
}

typedef struct {
    long pid;
    long parent;
    unsigned long long started;
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
        if (read_parent(pid, &list[count].parent, &list[count].state, &list[count].started) == 0) {
            list[count].pid = pid;
            list[count].below = -1;
            count++;
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

/* Whether a process in `state` (of /proc/PID/stat) runs none of its code: stopped (or traced),
   or a zombie. */
static int is_still_state(char state) {
    return state == 'T' || state == 't' || state == 'Z' || state == 'X' || state == 'x';
}

/* Nanoseconds on the monotonic clock. */
static int64_t monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* How long a kill of a tree waits for the processes it stopped to stop. */
enum { STOP_WAIT_NS = 1000000000 };

int redlock_kill_tree_by_scan(pid_t root) {
    /* The processes sent SIGSTOP so far (by pid and start time), sorted by pid. */
    process_entry *stopped = NULL;
    size_t stopped_count = 0;
    int complete = 0;
    int failed = 0;
    int refused = 0;
    /* Whether the last pass found none new and saw every one found stopped or gone. */
    int quiet = 0;
    int64_t started = monotonic_ns();
    while (!complete && !failed) {
        process_entry *list = NULL;
        long count = list_processes(&list);
        if (count < 0) {
            failed = 1;
            break;
        }
        process_entry *grown = realloc(stopped, (stopped_count + (size_t)count + 1) * sizeof *stopped);
        if (grown == NULL) {
            free(list);
            failed = 1;
            break;
        }
        stopped = grown;
        size_t before = stopped_count;
        int still = 1;
        for (size_t i = 0; i < (size_t)count; i++) {
            if (!descends_from(list, (size_t)count, i, (long)root)) {
                continue;
            }
            if (holds(stopped, before, list[i].pid, list[i].started)) {
                still = still && is_still_state(list[i].state);
                continue;
            }
            if (list[i].state == 'Z' || list[i].state == 'X') {
                continue;
            }
            if (kill((pid_t)list[i].pid, SIGSTOP) == 0) {
                stopped[stopped_count++] = list[i];
            } else if (errno != ESRCH) {
                refused = 1; /* EPERM: one it may not signal runs on */
            }
        }
        free(list);
        if (stopped_count > before) {
            qsort(stopped, stopped_count, sizeof *stopped, compare_pids);
            quiet = 0;
            continue;
        }
        /* Two quiet passes in a row: during the second the tree held still (see
           kill_tree_by_children), so its snapshot holds every process in it. */
        if (quiet) {
            complete = 1;
        } else if (monotonic_ns() - started > STOP_WAIT_NS) {
            failed = 1;
        } else {
            quiet = still;
            if (!still) {
                struct timespec pause = {.tv_sec = 0, .tv_nsec = 50000};
                nanosleep(&pause, NULL);
            }
        }
    }
    for (size_t i = 0; i < stopped_count; i++) {
        if (kill((pid_t)stopped[i].pid, SIGKILL) != 0 && errno != ESRCH) {
            failed = 1;
        }
    }
    free(stopped);
    return complete && !failed && !refused ? 0 : -1;
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

/* A set of pids: open addressing with linear probing, 0 marking a free slot, at most half full. */
typedef struct {
    long *slots;
    size_t capacity; /* 0 or a power of two */
    size_t count;
} pid_set;

static size_t pid_slot(long pid, size_t capacity) {
    return ((size_t)pid * 0x9E3779B97F4A7C15ull) & (capacity - 1);
}

static int pid_set_contains(const pid_set *set, long pid) {
    if (set->capacity == 0) {
        return 0;
    }
    for (size_t at = pid_slot(pid, set->capacity);; at = (at + 1) & (set->capacity - 1)) {
        if (set->slots[at] == 0) {
            return 0;
        }
        if (set->slots[at] == pid) {
            return 1;
        }
    }
}

/* Adds `pid` (> 0, not in the set yet); 0, or -1 when memory ran out. */
static int pid_set_add(pid_set *set, long pid) {
    if (2 * (set->count + 1) > set->capacity) {
        size_t capacity = set->capacity == 0 ? 128 : 2 * set->capacity;
        long *slots = calloc(capacity, sizeof *slots);
        if (slots == NULL) {
            return -1;
        }
        for (size_t i = 0; i < set->capacity; i++) {
            if (set->slots[i] != 0) {
                size_t at = pid_slot(set->slots[i], capacity);
                while (slots[at] != 0) {
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
    while (set->slots[at] != 0) {
        at = (at + 1) & (set->capacity - 1);
    }
    set->slots[at] = pid;
    set->count++;
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

/* Whether process `pid` runs none of its code: stopped (or traced), a zombie, or gone. */
static int is_still(long pid) {
    long parent;
    char state;
    errno = 0;
    if (read_parent(pid, &parent, &state, NULL) != 0) {
        return errno == ENOENT || errno == ESRCH;
    }
    return is_still_state(state);
}

/* The descendants of `root` from the children files, stopped as they are found, then killed. A
   pass reads the children of `root` and of every process found so far (those found in it too),
   and sends SIGSTOP to each new one. Once a pass that began with every one found stopped (or
   dead) finds none new, the tree is complete: a stopped process neither forks nor exits nor
   reaps, so its list of children holds still, and a process not found would be in the list of
   its parent, found or `root`. (Stopping rather than killing at once: a dying process hands its
   children to the nearest subreaper above it, or to init, where no walk from `root` finds them.)
   Then each gets SIGKILL. 0 when the tree was complete and each was signalled; -1 otherwise:
   /proc or memory failed, one could not be signalled (EPERM), or some still ran (in
   uninterruptible sleep, say) a second after the walk began; those found get SIGKILL all the
   same. `root` must not reap children meanwhile (the list of a process with
   over a page of children is read in several calls, and one reaped between them can hide the
   next). */
static int kill_tree_by_children(long root) {
    pid_set found = {0};
    pid_array order = {0};
    pid_array children = {0};
    int complete = 0;
    int failed = 0;
    int refused = 0;
    /* Whether each one found was seen stopped or dead (it stays so: only SIGCONT from someone
       else would make it run again). */
    unsigned char *settled = NULL;
    int64_t started = monotonic_ns();
    while (!failed && !complete) {
        int still = 1;
        for (size_t i = 0; i < order.count; i++) {
            if (!settled[i]) {
                settled[i] = (unsigned char)is_still(order.items[i]);
                still = still && settled[i];
            }
        }
        size_t before = order.count;
        /* Index 0 is `root`, i the i-th process found (order grows while the pass reads). */
        for (size_t i = 0; i <= order.count && !failed; i++) {
            children.count = 0;
            if (read_children(i == 0 ? root : order.items[i - 1], &children) != 0) {
                failed = 1;
                break;
            }
            for (size_t j = 0; j < children.count; j++) {
                long child = children.items[j];
                if (child <= 0 || pid_set_contains(&found, child)) {
                    continue;
                }
                if (kill((pid_t)child, SIGSTOP) != 0) {
                    /* ESRCH: gone meanwhile (its children, if any, are looked for again). EPERM:
                       one it may not signal runs on; not tried again, nor its children. */
                    if (errno != ESRCH) {
                        refused = 1;
                        failed = pid_set_add(&found, child) != 0;
                    }
                    continue;
                }
                unsigned char *grown = realloc(settled, order.count + 1);
                if (grown == NULL) {
                    failed = 1;
                    break;
                }
                settled = grown;
                settled[order.count] = 0;
                if (pid_set_add(&found, child) != 0 || pid_array_append(&order, child) != 0) {
                    failed = 1;
                    break;
                }
            }
        }
        if (failed || order.count > before) {
            continue;
        }
        if (still) {
            complete = 1;
        } else if (monotonic_ns() - started > STOP_WAIT_NS) {
            failed = 1; /* some did not stop within a second */
        } else {
            /* Give the stops time to land (the processes must be scheduled to stop). */
            struct timespec pause = {.tv_sec = 0, .tv_nsec = 50000};
            nanosleep(&pause, NULL);
        }
    }
    for (size_t i = 0; i < order.count; i++) {
        if (kill((pid_t)order.items[i], SIGKILL) != 0 && errno != ESRCH) {
            failed = 1;
        }
    }
    free(settled);
    free(found.slots);
    free(order.items);
    free(children.items);
    return complete && !failed && !refused ? 0 : -1;
}

int redlock_kill_tree(pid_t root) {
    return children_files_exist() ? kill_tree_by_children(root) : redlock_kill_tree_by_scan(root);
}

int redlock_become_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1) == 0 ? 0 : errno;
}

void redlock_kill_descendants(pid_t group) {
    if (group > 0) {
        kill(-group, SIGKILL);
    }
    /* Once a walk sent SIGKILL to every descendant, none forks again: what is left is reaping. */
    int killed_all = 0;
    for (;;) {
        if (!killed_all) {
            killed_all = redlock_kill_tree(getpid()) == 0;
        }
        int status;
        pid_t reaped = waitpid(-1, &status, 0);
        if (reaped < 0 && errno == EINTR) {
            continue;
        }
        if (reaped < 0) {
            return; /* ECHILD: nothing is left */
        }
        if (group > 0) {
            kill(-group, SIGKILL);
        }
    }
}

/* SIGKILLs the command's group and whatever it detached, says why on stderr and on the status
   pipe (`kind`), and marks the command killed: later deadlines no longer apply. */
static void kill_command(pid_t group, int *killed, const char *why, int32_t kind) {
    *killed = 1;
    kill(-group, SIGKILL);
    redlock_kill_tree(getpid());
    say(why);
    redlock_watch_send(STATUS_FD, kind, 0, redlock_boottime_ns());
}

/* Arms `timer` (CLOCK_BOOTTIME) for the absolute instant `deadline_ns`, or disarms it for 0. */
static int arm(int timer, int64_t deadline_ns) {
    struct itimerspec when;
    memset(&when, 0, sizeof when);
    if (deadline_ns > 0) {
        when.it_value.tv_sec = (time_t)(deadline_ns / 1000000000);
        when.it_value.tv_nsec = (long)(deadline_ns % 1000000000);
    }
    return timerfd_settime(timer, TFD_TIMER_ABSTIME, &when, NULL);
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

_Noreturn void redlock_watchdog_main(char *const command[], int64_t deadline_ns) {
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
    if (timer < 0) {
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
    pid_t foreground = isatty(STDIN_FILENO) ? tcgetpgrp(STDIN_FILENO) : -1;
    int take_terminal = foreground > 0 && foreground == getpgid(getppid());

    /* What the supervisor sent while this process started: a later deadline, or a terminating
       signal it got before the command started, which keeps the command from starting. */
    int64_t deadline = deadline_ns;
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
        if (message.kind == REDLOCK_WATCH_DEADLINE) {
            deadline = message.value;
        } else if (message.kind == REDLOCK_WATCH_SIGNAL && is_terminating(message.argument)) {
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
            tcsetpgrp(STDIN_FILENO, getpid()); /* SIGTTOU is still ignored here, as in the watchdog */
        }
        struct sigaction default_action;
        memset(&default_action, 0, sizeof default_action);
        default_action.sa_handler = SIG_DFL;
        for (int number = 1; number < NSIG; number++) {
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
        if (take_terminal) {
            tcsetpgrp(STDIN_FILENO, foreground);
        }
        redlock_watch_send(STATUS_FD, REDLOCK_WATCH_EXEC_FAILED, exec_error, 0);
        _exit(0);
    }
    redlock_watch_send(STATUS_FD, REDLOCK_WATCH_STARTED, child, 0);

    int control = CONTROL_FD;
    int killed = 0;
    if (arm(timer, deadline) != 0) {
        kill(-child, SIGKILL);
        fail("timerfd_settime");
    }
    for (;;) {
        struct pollfd watched[3] = {
            {.fd = child_events, .events = POLLIN},
            {.fd = timer, .events = POLLIN},
            {.fd = control, .events = POLLIN},
        };
        int ready = poll(watched, control >= 0 ? 3 : 2, -1);
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
            int status;
            pid_t reaped = waitpid(child, &status, WNOHANG | WUNTRACED);
            if (reaped == child && WIFSTOPPED(status)) {
                /* A job-control stop from the terminal (Ctrl-Z, or reading it while in the
                   background) stops the whole job: give the terminal back to redlock's group and
                   stop it too, so the shell sees a stopped job it can resume. While redlock is
                   stopped it renews nothing, so the command is killed at the deadline as usual. */
                int stop = WSTOPSIG(status);
                if (take_terminal && (stop == SIGTSTP || stop == SIGTTIN || stop == SIGTTOU)) {
                    if (tcgetpgrp(STDIN_FILENO) == child) {
                        tcsetpgrp(STDIN_FILENO, foreground);
                    }
                    kill(-foreground, SIGTSTP);
                }
                continue;
            }
            if (reaped == child) {
                /* What the command left running, in its group or detached from it, is not
                   protected any more. */
                redlock_kill_descendants(child);
                if (take_terminal && tcgetpgrp(STDIN_FILENO) == child) {
                    tcsetpgrp(STDIN_FILENO, foreground);
                }
                redlock_watch_send(STATUS_FD, REDLOCK_WATCH_EXITED, status, redlock_boottime_ns());
                _exit(0);
            }
        }
        /* Everything the supervisor sent is taken before the timer is judged: after a stop of
           this process, the renewals queued meanwhile count. */
        if (control >= 0 && (watched[2].revents != 0 || watched[1].revents != 0)) {
            int got;
            while ((got = read_message(control, &message, &have)) == 1) {
                if (message.kind == REDLOCK_WATCH_DEADLINE && !killed) {
                    deadline = message.value;
                    if (arm(timer, deadline) != 0) {
                        kill_command(child, &killed, "redlock watchdog: could not arm the deadline timer; killed the command\n",
                                     REDLOCK_WATCH_DEADLINE_KILL);
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
                    kill_command(child, &killed, "redlock watchdog: redlock went away while the command ran; killed the command\n",
                                 REDLOCK_WATCH_ORPHAN_KILL);
                }
            }
        }
        if (watched[1].revents != 0) {
            uint64_t expirations;
            ssize_t ignored_read = read(timer, &expirations, sizeof expirations);
            (void)ignored_read;
            if (!killed && deadline > 0 && redlock_boottime_ns() >= deadline) {
                kill_command(child, &killed,
                             "redlock watchdog: the lease's deadline passed without a renewal from redlock; killed the command\n",
                             REDLOCK_WATCH_DEADLINE_KILL);
            }
        }
    }
}
