/*
 * redlock-kill-probe: process trees that try to break redlock_kill_tree (CSupervise), the kill
 * that `redlock run` sends at a lease's deadline. Run by RunSupervisionTests; each scenario
 * prints one line per round and exits 0 when it could run (its verdict is for the test to draw),
 * 1 on a setup failure (named on stderr), 2 on bad usage.
 *
 *   redlock-kill-probe late-children [ROUNDS]
 *       The kill instant is never reported early. This process (a child subreaper, the root)
 *       has a child X whose exit is slow (it holds 256 MiB) and that has 300 sleeping children
 *       and then C. C forks every 150 µs with CLONE_PARENT: its children are X's, made after the
 *       kill read X's list, each running 0.3-3.3 ms and then exiting on its own. Every process
 *       that runs writes CLOCK_BOOTTIME into a shared slot of its own, every 30 µs. Then
 *       redlock_kill_tree(this process), and 150 ms later one line per round:
 *           round=R rc=RC killed_at_ns=K call_ns=D late=L latest_after_ns=A
 *       L counts the processes whose last stamp is later than the reported instant K (any is an
 *       early report, or a survivor); A is by how much the latest stamp is later (0 if none).
 *
 *   redlock-kill-probe pid-reuse
 *       No stranger is killed when a pid read from a children file changes hands. Must run as
 *       init of a pid namespace of its own (`unshare --pid --fork --mount-proc`). H, the root of
 *       the kill (a child subreaper that reaps in a thread, as a running watchdog does), has a
 *       child X with 400 sleeping children and then C, which exits on its own once X is gone.
 *       When H has reaped C, S (not below H) writes C's pid less one into ns_last_pid and forks
 *       V, which takes C's pid, while the kill still walks X's 400 children towards it. One line:
 *           rc=RC stranger_pid=V c_pid=C stranger_born_ns=B call_began_ns=T0 call_ended_ns=T1 stranger_killed=0|1
 *
 *   redlock-kill-probe permission-denied
 *       One process that may not be signalled does not keep the kill from the others, and
 *       makes it report failure. Must run as root. P has a child kept by root (made before P
 *       drops to uid and gid 65534) and, after the drop, a child of its own with a child. P
 *       calls redlock_kill_tree(P). One line:
 *           rc=RC call_ns=D own_left=N kept_alive=0|1
 *       N counts P's own descendants that still run 100 ms after the call (they should not);
 *       kept_alive says whether root's child still runs (it should: it may not be killed).
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <time.h>
#include <unistd.h>

#include "supervise.h"

static void fail(const char *what) {
    fprintf(stderr, "redlock-kill-probe: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void sleep_ns(int64_t ns) {
    struct timespec pause = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
    }
}

/* fork(), or exits the process (1). */
static pid_t checked_fork(void) {
    pid_t pid = fork();
    if (pid < 0) {
        fail("fork");
    }
    return pid;
}

/* Makes this process a child subreaper, or exits it (1). */
static void become_subreaper(void) {
    if (redlock_become_subreaper() != 0) {
        fail("prctl(PR_SET_CHILD_SUBREAPER)");
    }
}

/* A child that sleeps until it is killed. */
static pid_t sleeper(void) {
    pid_t pid = checked_fork();
    if (pid == 0) {
        for (;;) {
            pause();
        }
    }
    return pid;
}

/* Writes all of `size` bytes, or exits the process (1). */
static void write_all(int fd, const void *bytes, size_t size) {
    const char *at = bytes;
    while (size > 0) {
        ssize_t put = write(fd, at, size);
        if (put < 0 && errno == EINTR) {
            continue;
        }
        if (put <= 0) {
            fail("write to a pipe");
        }
        at += put;
        size -= (size_t)put;
    }
}

/* Reads all of `size` bytes: 0, or -1 at end of file or on an error. */
static int read_all(int fd, void *bytes, size_t size) {
    char *at = bytes;
    while (size > 0) {
        ssize_t got = read(fd, at, size);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            return -1;
        }
        at += got;
        size -= (size_t)got;
    }
    return 0;
}

/* ---- late-children ---- */

/* One CLOCK_BOOTTIME stamp per pid, in memory shared by the whole tree. */
static int64_t *stamps;
static long stamp_count;

static void stamp(void) {
    long pid = (long)getpid();
    if (pid < stamp_count) {
        __atomic_store_n(&stamps[pid], redlock_boottime_ns(), __ATOMIC_RELAXED);
    }
}

static long read_pid_max(void) {
    FILE *file = fopen("/proc/sys/kernel/pid_max", "re");
    long value = 0;
    if (file == NULL || fscanf(file, "%ld", &value) != 1 || value <= 0) {
        fail("read /proc/sys/kernel/pid_max");
    }
    fclose(file);
    return value + 1;
}

/* C's child, made X's with CLONE_PARENT: runs (stamping) for 0.3-3.3 ms, then exits. */
static _Noreturn void short_lived(unsigned seed) {
    int64_t end = redlock_boottime_ns() + 300000 + (int64_t)(seed % 3000) * 1000;
    for (;;) {
        stamp();
        if (redlock_boottime_ns() > end) {
            _exit(0);
        }
        sleep_ns(30000);
    }
}

/* Written to by C once it forks, read by the root. */
static int ready_pipe[2];

/* C: forks a child of its parent (X) every 150 µs until it is killed; says so once it has begun. */
static _Noreturn void forker(void) {
    unsigned seed = (unsigned)getpid();
    char ready = 1;
    write_all(ready_pipe[1], &ready, sizeof ready);
    for (;;) {
        stamp();
        seed = seed * 1103515245u + 12345u;
        long pid = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) {
            short_lived(seed >> 8);
        }
        sleep_ns(150000);
    }
}

/* X: 512 MiB of its own (its exit takes a few ms), 50 sleeping children, then C. */
static _Noreturn void slow_parent(void) {
    /* Not inherited by its children: only its own exit frees it. */
    size_t size = (size_t)512 << 20;
    char *memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED || madvise(memory, size, MADV_DONTFORK) != 0) {
        fail("mmap");
    }
    for (size_t i = 0; i < size; i += 4096) {
        memory[i] = 1;
    }
    for (int i = 0; i < 50; i++) {
        sleeper();
    }
    for (int i = 0; i < 50; i++) {
        sleeper();
    }
    pid_t c = checked_fork();
    if (c == 0) {
        forker();
    }
    for (;;) {
        stamp();
        if (waitpid(-1, NULL, 0) < 0 && errno == ECHILD) {
            pause();
        }
    }
}

static int late_children(int rounds) {
    stamp_count = read_pid_max();
    stamps = mmap(NULL, (size_t)stamp_count * sizeof *stamps, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stamps == MAP_FAILED) {
        fail("mmap");
    }
    become_subreaper();
    if (pipe2(ready_pipe, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    for (int round = 1; round <= rounds; round++) {
        memset(stamps, 0, (size_t)stamp_count * sizeof *stamps);
        pid_t x = checked_fork();
        if (x == 0) {
            slow_parent();
        }
        /* Once C forks, 20 ms for its children to come and go. */
        char ready;
        if (read_all(ready_pipe[0], &ready, sizeof ready) != 0) {
            fail("read from C");
        }
        sleep_ns(20000000);
        int64_t killed_at = 0;
        int64_t began = redlock_boottime_ns();
        int rc = redlock_kill_tree(getpid(), &killed_at);
        int64_t call = redlock_boottime_ns() - began;
        sleep_ns(150000000);
        long late = 0;
        int64_t latest = 0;
        for (long pid = 1; pid < stamp_count; pid++) {
            int64_t last = __atomic_load_n(&stamps[pid], __ATOMIC_RELAXED);
            if (last > killed_at) {
                late++;
                if (last - killed_at > latest) {
                    latest = last - killed_at;
                }
            }
        }
        printf("round=%d rc=%d killed_at_ns=%lld call_ns=%lld late=%ld latest_after_ns=%lld\n", round, rc,
               (long long)killed_at, (long long)call, late, (long long)latest);
        fflush(stdout);
        if (rc != 0) {
            /* Whatever runs on is not left behind. */
            if (redlock_kill_tree_by_scan(getpid()) != 0) {
                fprintf(stderr, "redlock-kill-probe: the tree could not be killed\n");
            }
        }
        /* Everything below was killed: reap it all. */
        while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {
        }
    }
    return 0;
}

/* ---- pid-reuse ---- */

static volatile pid_t watched_c;
static int reaped_pipe[2];

/* H's reaper: reaps every child, as a running watchdog does; tells S when C is reaped. */
static void *reaper(void *unused) {
    (void)unused;
    for (;;) {
        pid_t pid = waitpid(-1, NULL, __WALL);
        if (pid < 0) {
            if (errno == ECHILD) {
                sleep_ns(1000000);
            }
            continue;
        }
        if (pid == watched_c) {
            write_all(reaped_pipe[1], &pid, sizeof pid);
        }
    }
    return NULL;
}

static int pid_reuse(void) {
    if (getpid() != 1) {
        fprintf(stderr, "redlock-kill-probe: pid-reuse must run as init of a pid namespace of its own "
                        "(unshare --pid --fork --mount-proc)\n");
        return 2;
    }
    int from_h[2];
    int from_s[2];
    int c_pipe[2];
    if (pipe2(reaped_pipe, O_CLOEXEC) != 0 || pipe2(from_h, O_CLOEXEC) != 0 || pipe2(from_s, O_CLOEXEC) != 0 ||
        pipe2(c_pipe, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    pid_t s = checked_fork();
    if (s == 0) {
        /* S: not below H. */
        pid_t c;
        if (read_all(reaped_pipe[0], &c, sizeof c) != 0) {
            _exit(1);
        }
        int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
        char text[32];
        int length = snprintf(text, sizeof text, "%ld", (long)c - 1);
        if (fd < 0 || write(fd, text, (size_t)length) != length) {
            fail("write /proc/sys/kernel/ns_last_pid");
        }
        close(fd);
        pid_t v = sleeper();
        int64_t born = redlock_boottime_ns();
        write_all(from_s[1], &v, sizeof v);
        write_all(from_s[1], &born, sizeof born);
        int status = 0;
        while (waitpid(v, &status, 0) < 0 && errno == EINTR) {
        }
        int killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        write_all(from_s[1], &killed, sizeof killed);
        _exit(0);
    }
    pid_t h = checked_fork();
    if (h == 0) {
        /* H: the root of the kill. */
        become_subreaper();
        pid_t x = checked_fork();
        if (x == 0) {
            for (int i = 0; i < 400; i++) {
                sleeper();
            }
            pid_t c = checked_fork();
            if (c == 0) {
                while (getppid() == x) {
                    sleep_ns(20000);
                }
                _exit(0);
            }
            write_all(c_pipe[1], &c, sizeof c);
            for (;;) {
                pause();
            }
        }
        pid_t c;
        if (read_all(c_pipe[0], &c, sizeof c) != 0) {
            fail("read C's pid");
        }
        watched_c = c;
        pthread_t thread;
        if (pthread_create(&thread, NULL, reaper, NULL) != 0) {
            fail("pthread_create");
        }
        int64_t killed_at = 0;
        int64_t began = redlock_boottime_ns();
        int rc = redlock_kill_tree(getpid(), &killed_at);
        int64_t ended = redlock_boottime_ns();
        write_all(from_h[1], &rc, sizeof rc);
        write_all(from_h[1], &c, sizeof c);
        write_all(from_h[1], &began, sizeof began);
        write_all(from_h[1], &ended, sizeof ended);
        /* Stays until init clears the namespace. */
        for (;;) {
            pause();
        }
    }
    close(from_h[1]);
    close(from_s[1]);
    int rc;
    pid_t c;
    int64_t began;
    int64_t ended;
    if (read_all(from_h[0], &rc, sizeof rc) != 0 || read_all(from_h[0], &c, sizeof c) != 0 ||
        read_all(from_h[0], &began, sizeof began) != 0 || read_all(from_h[0], &ended, sizeof ended) != 0) {
        fprintf(stderr, "redlock-kill-probe: H ended without its report\n");
        return 1;
    }
    pid_t v;
    int64_t born;
    if (read_all(from_s[0], &v, sizeof v) != 0 || read_all(from_s[0], &born, sizeof born) != 0) {
        fprintf(stderr, "redlock-kill-probe: S ended without its report\n");
        return 1;
    }
    /* S reports V's end once V has ended: SIGKILLed by the walk, if at all, before the call
       returned (a moment more for S to reap it). Later V goes with the rest of the namespace. */
    sleep_ns(100000000);
    int flags = fcntl(from_s[0], F_GETFL);
    if (flags < 0 || fcntl(from_s[0], F_SETFL, flags | O_NONBLOCK) != 0) {
        fail("fcntl");
    }
    int killed = 0;
    if (read(from_s[0], &killed, sizeof killed) != (ssize_t)sizeof killed) {
        killed = 0; /* V still runs */
    }
    printf("rc=%d stranger_pid=%ld c_pid=%ld stranger_born_ns=%lld call_began_ns=%lld call_ended_ns=%lld stranger_killed=%d\n", rc,
           (long)v, (long)c, (long long)born, (long long)began, (long long)ended, killed);
    fflush(stdout);
    /* Init of the namespace: clear it, and reap. */
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {
    }
    return 0;
}

/* ---- permission-denied ---- */

/* Whether `pid` runs: exists and is no zombie. */
static int runs(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *file = fopen(path, "re");
    if (file == NULL) {
        return 0;
    }
    char line[512];
    int running = 0;
    if (fgets(line, sizeof line, file) != NULL) {
        char *close_paren = strrchr(line, ')');
        running = close_paren != NULL && close_paren[1] == ' ' && close_paren[2] != 'Z' && close_paren[2] != 'X';
    }
    fclose(file);
    return running;
}

static int permission_denied(void) {
    if (geteuid() != 0) {
        fprintf(stderr, "redlock-kill-probe: permission-denied must run as root\n");
        return 2;
    }
    become_subreaper();
    int from_p[2];
    if (pipe2(from_p, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    pid_t p = checked_fork();
    if (p == 0) {
        /* The root of the kill is a child subreaper, as the watchdog is. */
        become_subreaper();
        pid_t kept = sleeper();
        if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0) {
            fail("drop to uid 65534");
        }
        int g_pipe[2];
        if (pipe2(g_pipe, O_CLOEXEC) != 0) {
            fail("pipe2");
        }
        pid_t own = checked_fork();
        if (own == 0) {
            pid_t grandchild = sleeper();
            write_all(g_pipe[1], &grandchild, sizeof grandchild);
            for (;;) {
                pause();
            }
        }
        pid_t grandchild;
        if (read_all(g_pipe[0], &grandchild, sizeof grandchild) != 0) {
            fail("read the grandchild's pid");
        }
        int64_t began = redlock_boottime_ns();
        int rc = redlock_kill_tree(getpid(), NULL);
        int64_t call = redlock_boottime_ns() - began;
        write_all(from_p[1], &rc, sizeof rc);
        write_all(from_p[1], &call, sizeof call);
        write_all(from_p[1], &kept, sizeof kept);
        write_all(from_p[1], &own, sizeof own);
        write_all(from_p[1], &grandchild, sizeof grandchild);
        for (;;) {
            pause();
        }
    }
    close(from_p[1]);
    int rc;
    int64_t call;
    pid_t kept;
    pid_t own;
    pid_t grandchild;
    if (read_all(from_p[0], &rc, sizeof rc) != 0 || read_all(from_p[0], &call, sizeof call) != 0 ||
        read_all(from_p[0], &kept, sizeof kept) != 0 || read_all(from_p[0], &own, sizeof own) != 0 ||
        read_all(from_p[0], &grandchild, sizeof grandchild) != 0) {
        fprintf(stderr, "redlock-kill-probe: P ended without its report\n");
        return 1;
    }
    sleep_ns(100000000);
    int own_left = runs(own) + runs(grandchild);
    int kept_alive = runs(kept);
    printf("rc=%d call_ns=%lld own_left=%d kept_alive=%d\n", rc, (long long)call, own_left, kept_alive);
    fflush(stdout);
    /* This process (root, a child subreaper) clears what is left below it, and reaps. */
    if (redlock_kill_tree_by_scan(getpid()) != 0) {
        fprintf(stderr, "redlock-kill-probe: what P left could not be killed\n");
        return 1;
    }
    while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "late-children") == 0 && argc <= 3) {
        int rounds = argc == 3 ? atoi(argv[2]) : 5;
        return late_children(rounds > 0 ? rounds : 5);
    }
    if (argc == 2 && strcmp(argv[1], "pid-reuse") == 0) {
        return pid_reuse();
    }
    if (argc == 2 && strcmp(argv[1], "permission-denied") == 0) {
        return permission_denied();
    }
    fprintf(stderr, "redlock-kill-probe: usage: redlock-kill-probe late-children [ROUNDS] | pid-reuse | permission-denied\n");
    return 2;
}
