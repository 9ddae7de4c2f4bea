/*
 * redlock-kill-probe: process trees that try to break redlock_kill_tree (CSupervise), the kill
 * that `redlock run` sends at a lease's deadline. Run by RunSupervisionTests; each scenario
 * prints one line per round and exits 0 when it could run (its verdict is for the test to draw),
 * 1 on a setup failure (named on stderr), 2 on bad usage. The scenarios marked "namespace" must
 * run as init of a pid namespace of their own (`unshare --pid --fork --kill-child --mount-proc`,
 * as root), whose end takes every process they made with it.
 *
 *   redlock-kill-probe late-children [ROUNDS [reaping|plain|own]]
 *       The kill instant is never reported early. This process (a child subreaper, the root;
 *       with `reaping`, reaping every child in a thread meanwhile, as a running watchdog does;
 *       with `plain`, C makes no children, so the walk misses nothing and its instant counts;
 *       with `own`, it kills as the watchdog does, redlock_kill_own_tree, reaping nothing)
 *       has a child X whose exit is slow (it holds 512 MiB) and that has 100 sleeping children
 *       and then C. C forks every 150 µs with CLONE_PARENT: its children are X's, made after the
 *       kill read X's list, each running 0.3-3.3 ms and then exiting on its own. Every process
 *       that runs writes CLOCK_BOOTTIME into a shared slot of its own, every 30 µs. Then
 *       redlock_kill_tree(this process) (or redlock_kill_own_tree: RC 0 when it reported the
 *       walk's instant, 1 the checks'), and 150 ms later one line per round:
 *           round=R rc=RC killed_at_ns=K call_ns=D instant_before_return_ns=B late=L latest_after_ns=A
 *       L counts the processes whose last stamp is later than the reported instant K (any is an
 *       early report, or a survivor); A is by how much the latest stamp is later (0 if none); B
 *       is how long before the call returned the instant lies (ms: the walk's; µs: the scan's).
 *
 *   redlock-kill-probe pid-reuse (namespace)
 *       No stranger is killed when a pid read from a children file changes hands. H, the root
 *       of the kill (a child subreaper that reaps in a thread, as a running watchdog does), has
 *       a child X with 400 sleeping children and then C, which exits as soon as X is gone. When
 *       H has reaped C, S (not below H) writes C's pid less one into ns_last_pid and forks V,
 *       which takes C's pid, while the kill still walks X's 400 children towards it. One line:
 *           rc=RC stranger_pid=V c_pid=C stranger_born_ns=B call_began_ns=T0 call_ended_ns=T1 stranger_killed=0|1
 *
 *   redlock-kill-probe reaped-pids [FILL] (namespace)
 *       No stranger is killed when a process the kill read in its scan of /proc is reaped and
 *       its pid changes hands before the scan's signal. FILL (3,000) other processes make the
 *       scan slow; H (as above) has a child X (256 MiB, 50 sleeping children, then C, which
 *       makes children of X every millisecond, each holding 8 MiB for 100 ms); S gives every
 *       pid H reaps to a sleeper of its own. One line:
 *           rc=RC call_ns=D strangers=M took_the_pid=T strangers_killed=K
 *
 *   redlock-kill-probe permission-denied [own]
 *       One process that may not be signalled does not keep the kill from the others, and
 *       makes it report failure. Must run as root. P has a child kept by root (made before P
 *       drops to uid and gid 65534), which has a child that dropped to 65534 too, and, after
 *       the drop, a child of its own with a child. P calls redlock_kill_tree(P) (with `own`,
 *       redlock_kill_own_tree: -1, no instant). One line:
 *           rc=RC call_ns=D own_left=N kept_alive=0|1
 *       N counts the descendants P may signal that still run (looked at for up to 2 s after
 *       the call; they should not); kept_alive says whether root's child still runs (it should).
 *
 *   redlock-kill-probe confined deny pidfd_open|pidfd_send_signal ERRNO
 *   redlock-kill-probe confined deny-others pidfd_open ERRNO
 *   redlock-kill-probe confined deny-signals ERRNO
 *   redlock-kill-probe confined descriptors FREE
 *       A policy that refuses part of what the kill uses does not let it report success while
 *       processes below the root run. P (a child subreaper, the root) has 20 children, each
 *       with a sleeping child; then it installs a seccomp filter that fails the named system
 *       call with errno ERRNO (a number: 38 ENOSYS, 1 EPERM, 22 EINVAL, 3 ESRCH), for every
 *       process (deny), for every pid but P's (deny-others), or for pidfd_send_signal of any
 *       signal but 0 (deny-signals): the last two pass the kill's own check of pidfds (a
 *       signal 0 to itself). Or it keeps only descriptors 0-3 (3: its report's pipe) and
 *       lowers its RLIMIT_NOFILE so that FREE more can be open at once. Then it calls
 *       redlock_kill_tree(P). One line:
 *           rc=RC call_ns=D left=N
 *       N counts the 40 descendants that still run (looked at for up to 2 s after the call);
 *       with RC 0 there must be none.
 *
 *   redlock-kill-probe paused-signal walk|scan (namespace)
 *       The kill's fallback by pid (after a SIGKILL through a pidfd failed) never reaches a
 *       stranger that took the pid of a process reaped meanwhile, in the same clock tick (its
 *       start time alike). K, the root (a child subreaper that reaps in a thread), has one
 *       child A, made just after a 10 ms boundary of CLOCK_BOOTTIME; K's filter hands its
 *       SIGKILLs through pidfds to this process (SECCOMP_RET_USER_NOTIF). At A's, this process
 *       kills A, waits until K has reaped it, gives A's pid to a child S of its own
 *       (ns_last_pid), and lets the call go on (SECCOMP_USER_NOTIF_FLAG_CONTINUE), which then
 *       fails with ESRCH. K calls redlock_kill_tree(K) (walk) or redlock_kill_tree_by_scan(K)
 *       (scan). One line:
 *           rc=RC stranger_pid=S a_pid=A same_tick=0|1 stranger_killed=0|1
 *
 *   redlock-kill-probe zombie-leader walk|scan [ERRNO]
 *       A process whose main thread has exited while another of its threads runs (state Z,
 *       two threads) is killed too. P (a child subreaper, the root) has a child L whose main
 *       thread calls pthread_exit while a second thread sleeps; with ERRNO, P refuses itself
 *       every signal through pidfds but 0 with that errno (as deny-signals above). Then P calls
 *       redlock_kill_tree(P) (walk) or redlock_kill_tree_by_scan(P) (scan). One line:
 *           rc=RC leader_state=S leader_threads=T left=0|1
 *       S and T are L's just before the call; left says whether a thread of L still runs
 *       (looked at for up to 2 s).
 *
 *   redlock-kill-probe census COUNT detached|grouped
 *       The watchdog's count (redlock_census_tree) against the kill it stands for: COUNT
 *       sleeping children, each in a session of its own or in this process's group; one line:
 *           walked=W detached=D census_ns=C kill_ns=K rc=R/R
 *
 *   redlock-kill-probe escaping-chain own|tree|descendants
 *       What escapes the walk is killed while the kill waits for the exits, not when its parent
 *       has exited. This process (a child subreaper, the root, reaping nothing) has a child X
 *       (1 GiB of its own: its exit takes tens of ms; 100 sleeping children), whose child P
 *       starts a chain of X's children: each link, made with CLONE_PARENT by the one before it
 *       2 ms after that one's start, stamps CLOCK_BOOTTIME every 100 µs and exits after 100 ms.
 *       20 ms after the chain began, redlock_kill_own_tree (own), redlock_kill_tree(this
 *       process) (tree) or redlock_kill_descendants(0) (descendants: the kill once the command
 *       has exited, which reaps as it goes; RC 0); meanwhile a thread notes when X is a zombie
 *       or gone. 300 ms later one line:
 *           rc=RC call_ns=D x_exited_after_ns=E last_stamp_after_ns=L stamps_after_x=N
 *       E and L are after the call's start (L < 0: none after it); N counts the links whose
 *       last stamp is later than X's exit (links that outlived their parent's exit: any is one
 *       the kill found only once X had handed it up).
 *
 *   redlock-kill-probe stampers COUNT FILE EVERY_MS
 *       A command for `redlock run`: COUNT children, each in a session of its own, each writing
 *       CLOCK_BOOTTIME into its 8-byte slot of FILE every EVERY_MS ms; prints "ready" once all
 *       run, then waits to be killed.
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
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/resource.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include "supervise.h"

/* Names the failed step on stderr and ends this process (1); stdout is flushed after every line. */
static _Noreturn void fail(const char *what) {
    fprintf(stderr, "redlock-kill-probe: %s: %s\n", what, strerror(errno));
    _exit(1);
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

/* Touches `mib` MiB of memory of this process's own, not inherited by its children: its exit
   takes a while (freeing it), theirs does not. */
static void hold_memory(size_t mib) {
    size_t size = mib << 20;
    char *memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED || madvise(memory, size, MADV_DONTFORK) != 0) {
        fail("mmap");
    }
    for (size_t i = 0; i < size; i += 4096) {
        memory[i] = 1;
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

/* The plain variant: C makes no children (nothing escapes the walk). */
static int plain_tree;

/* C: forks a child of its parent (X) every 150 µs until it is killed; says so once it has begun. */
static _Noreturn void forker(void) {
    unsigned seed = (unsigned)getpid();
    char ready = 1;
    write_all(ready_pipe[1], &ready, sizeof ready);
    for (;;) {
        stamp();
        if (plain_tree) {
            sleep_ns(150000);
            continue;
        }
        seed = seed * 1103515245u + 12345u;
        long pid = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) {
            short_lived(seed >> 8);
        }
        sleep_ns(150000);
    }
}

/* X: 512 MiB of its own (its exit takes a few ms), 100 sleeping children, then C. */
static _Noreturn void slow_parent(void) {
    hold_memory(512);
    for (int i = 0; i < 100; i++) {
        sleeper();
    }
    pid_t c = checked_fork();
    if (c == 0) {
        close(ready_pipe[0]);
        forker();
    }
    close(ready_pipe[1]);
    for (;;) {
        stamp();
        if (waitpid(-1, NULL, 0) < 0 && errno == ECHILD) {
            pause();
        }
    }
}

/* The root's reaper in the reaping variant: reaps every child as it ends, as a running
   watchdog does while redlock_kill_tree runs in redlock. */
static void *reap_everything(void *unused) {
    (void)unused;
    for (;;) {
        if (waitpid(-1, NULL, __WALL) < 0) {
            sleep_ns(200000);
        }
    }
    return NULL;
}

/* Maps the stamps (one slot per possible pid, shared with every child made after) and makes
   this process a child subreaper, the root of the tree to kill. */
static void become_stamped_root(void) {
    stamp_count = read_pid_max();
    stamps = mmap(NULL, (size_t)stamp_count * sizeof *stamps, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stamps == MAP_FAILED) {
        fail("mmap");
    }
    become_subreaper();
}

/* Forks X, which runs `body`, and waits until a process below it writes to ready_pipe, then
   20 ms more for the children it makes to come and go (end of file: X or that process failed,
   named `what` on stderr, exit 1). Returns X's pid. */
static pid_t start_parent(void (*body)(void), const char *what) {
    if (pipe2(ready_pipe, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    pid_t x = checked_fork();
    if (x == 0) {
        body();
        _exit(1);
    }
    close(ready_pipe[1]);
    char ready;
    if (read_all(ready_pipe[0], &ready, sizeof ready) != 0) {
        fprintf(stderr, "redlock-kill-probe: %s did not start\n", what);
        _exit(1);
    }
    close(ready_pipe[0]);
    sleep_ns(20000000);
    return x;
}

static int late_children(int rounds, int reaping, int own) {
    become_stamped_root();
    pthread_t thread;
    if (reaping && pthread_create(&thread, NULL, reap_everything, NULL) != 0) {
        fail("pthread_create");
    }
    for (int round = 1; round <= rounds; round++) {
        memset(stamps, 0, (size_t)stamp_count * sizeof *stamps);
        start_parent(slow_parent, "C");
        int64_t killed_at = 0;
        int64_t began = redlock_boottime_ns();
        int rc = own ? redlock_kill_own_tree(&killed_at, 0) : redlock_kill_tree(getpid(), &killed_at);
        int64_t ended = redlock_boottime_ns();
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
        /* instant_before_return_ns: how long before the call returned the instant reported lies
           (the walk's instant is milliseconds before it, the scan's microseconds). */
        printf("round=%d rc=%d killed_at_ns=%lld call_ns=%lld instant_before_return_ns=%lld late=%ld latest_after_ns=%lld\n", round, rc,
               (long long)killed_at, (long long)(ended - began), (long long)(ended - killed_at), late, (long long)latest);
        fflush(stdout);
        if (rc != 0 && redlock_kill_tree_by_scan(getpid()) != 0) {
            fprintf(stderr, "redlock-kill-probe: the tree could not be killed\n");
        }
        /* Everything below was killed: reap it all (or let the reaper). */
        while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {
        }
    }
    return 0;
}

/* ---- pid-reuse, reaped-pids ---- */

static void write_ns_last_pid(long value) {
    int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
    char text[32];
    int length = snprintf(text, sizeof text, "%ld", value);
    if (fd < 0 || write(fd, text, (size_t)length) != length) {
        fail("write /proc/sys/kernel/ns_last_pid");
    }
    close(fd);
}

/* H's reaper: reaps every child, as a running watchdog does, and tells S each pid it reaped
   (only C's, when `watched_c` is set). */
static volatile pid_t watched_c;
static int reaped_pipe[2];

static void *reap_and_tell(void *unused) {
    (void)unused;
    for (;;) {
        pid_t pid = waitpid(-1, NULL, __WALL);
        if (pid < 0) {
            sleep_ns(200000);
        } else if (watched_c == 0 || pid == watched_c) {
            write_all(reaped_pipe[1], &pid, sizeof pid);
        }
    }
    return NULL;
}

/* S, outside H: gives each pid H reaped to a sleeper of its own (ns_last_pid), until `ask`
   has a byte; then reports on `report`: how many it made, how many took the pid asked, how
   many were killed by SIGKILL, and the first one's pid and birth (CLOCK_BOOTTIME). */
static _Noreturn void stranger_maker(int ask, int report) {
    enum { most = 8192 };
    static pid_t made[most];
    static pid_t wanted[most];
    int count = 0;
    int64_t first_born = 0;
    int flags = fcntl(reaped_pipe[0], F_GETFL);
    if (flags < 0 || fcntl(reaped_pipe[0], F_SETFL, flags | O_NONBLOCK) != 0) {
        fail("fcntl");
    }
    struct pollfd inputs[2] = {{.fd = reaped_pipe[0], .events = POLLIN}, {.fd = ask, .events = POLLIN}};
    for (;;) {
        pid_t pid;
        if (read(reaped_pipe[0], &pid, sizeof pid) == (ssize_t)sizeof pid) {
            if (count < most) {
                write_ns_last_pid((long)pid - 1);
                wanted[count] = pid;
                made[count] = sleeper();
                if (count == 0) {
                    first_born = redlock_boottime_ns();
                }
                count++;
            }
            continue;
        }
        if (poll(inputs, 2, -1) < 0 && errno != EINTR) {
            fail("poll");
        }
        if (inputs[1].revents != 0) {
            break;
        }
    }
    int took = 0;
    int killed = 0;
    for (int i = 0; i < count; i++) {
        took += made[i] == wanted[i];
        int status = 0;
        if (waitpid(made[i], &status, WNOHANG) == made[i] && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
            killed++;
        }
    }
    pid_t first = count > 0 ? made[0] : 0;
    write_all(report, &count, sizeof count);
    write_all(report, &took, sizeof took);
    write_all(report, &killed, sizeof killed);
    write_all(report, &first, sizeof first);
    write_all(report, &first_born, sizeof first_born);
    _exit(0);
}

/* X in pid-reuse: 400 sleeping children, then C, which exits as soon as X is gone (the end of
   a pipe only X holds); tells H C's pid. */
static _Noreturn void reuse_parent(int tell) {
    for (int i = 0; i < 400; i++) {
        sleeper();
    }
    int gone[2];
    if (pipe2(gone, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    pid_t c = checked_fork();
    if (c == 0) {
        close(gone[1]);
        char byte;
        while (read(gone[0], &byte, 1) < 0 && errno == EINTR) {
        }
        _exit(0);
    }
    close(gone[0]);
    write_all(tell, &c, sizeof c);
    for (;;) {
        pause();
    }
}

/* X in reaped-pids: 256 MiB of its own, 50 sleeping children, then C, which makes children of
   X (CLONE_PARENT) every millisecond, each holding 8 MiB for 100 ms: killed, each takes a while
   to exit, while the scan that follows the walk (slow among the namespace's other processes)
   reads it; H reaps it, and S gives its pid to a stranger. Tells H once C forks. */
static _Noreturn void busy_parent(int tell) {
    hold_memory(256);
    for (int i = 0; i < 50; i++) {
        sleeper();
    }
    pid_t c = checked_fork();
    if (c == 0) {
        pid_t self = getpid();
        write_all(tell, &self, sizeof self);
        for (;;) {
            long child = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
            if (child == 0) {
                hold_memory(8);
                sleep_ns(100000000);
                _exit(0);
            }
            sleep_ns(1000000);
        }
    }
    for (;;) {
        if (waitpid(-1, NULL, 0) < 0 && errno == ECHILD) {
            pause();
        }
    }
}

/* pid-reuse (`fill` 0) and reaped-pids (`fill` other processes first, at pids from 20001). */
static int strangers(int fill) {
    if (getpid() != 1) {
        fprintf(stderr, "redlock-kill-probe: this scenario must run as init of a pid namespace of its own "
                        "(unshare --pid --fork --mount-proc)\n");
        return 2;
    }
    if (fill > 0) {
        write_ns_last_pid(20000);
        for (int i = 0; i < fill; i++) {
            sleeper();
        }
        write_ns_last_pid(1);
    }
    int from_h[2];
    int ask_s[2];
    int from_s[2];
    if (pipe2(reaped_pipe, O_CLOEXEC) != 0 || pipe2(from_h, O_CLOEXEC) != 0 || pipe2(ask_s, O_CLOEXEC) != 0 ||
        pipe2(from_s, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    pid_t s = checked_fork();
    if (s == 0) {
        close(reaped_pipe[1]);
        close(from_h[0]);
        close(from_h[1]);
        close(ask_s[1]);
        close(from_s[0]);
        stranger_maker(ask_s[0], from_s[1]);
    }
    close(reaped_pipe[0]);
    close(ask_s[0]);
    close(from_s[1]);
    pid_t h = checked_fork();
    if (h == 0) {
        /* H: the root of the kill. */
        close(from_h[0]);
        close(ask_s[1]);
        close(from_s[0]);
        become_subreaper();
        int tell[2];
        if (pipe2(tell, O_CLOEXEC) != 0) {
            fail("pipe2");
        }
        pid_t x = checked_fork();
        if (x == 0) {
            close(tell[0]);
            close(from_h[1]);
            close(reaped_pipe[1]);
            if (fill > 0) {
                busy_parent(tell[1]);
            }
            reuse_parent(tell[1]);
        }
        close(tell[1]);
        pid_t c;
        if (read_all(tell[0], &c, sizeof c) != 0) {
            fprintf(stderr, "redlock-kill-probe: C did not start\n");
            _exit(1);
        }
        if (fill > 0) {
            sleep_ns(200000000); /* C's children come and go */
        } else {
            watched_c = c;
        }
        pthread_t thread;
        if (pthread_create(&thread, NULL, reap_and_tell, NULL) != 0) {
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
    close(reaped_pipe[1]);
    close(from_h[1]);
    int rc;
    pid_t c;
    int64_t began;
    int64_t ended;
    if (read_all(from_h[0], &rc, sizeof rc) != 0 || read_all(from_h[0], &c, sizeof c) != 0 ||
        read_all(from_h[0], &began, sizeof began) != 0 || read_all(from_h[0], &ended, sizeof ended) != 0) {
        fprintf(stderr, "redlock-kill-probe: H ended without its report\n");
        return 1;
    }
    /* Strangers are killed, if at all, before the call returned; S looks 300 ms later. */
    sleep_ns(300000000);
    char byte = 1;
    write_all(ask_s[1], &byte, sizeof byte);
    int made;
    int took;
    int killed;
    pid_t first;
    int64_t born;
    if (read_all(from_s[0], &made, sizeof made) != 0 || read_all(from_s[0], &took, sizeof took) != 0 ||
        read_all(from_s[0], &killed, sizeof killed) != 0 || read_all(from_s[0], &first, sizeof first) != 0 ||
        read_all(from_s[0], &born, sizeof born) != 0) {
        fprintf(stderr, "redlock-kill-probe: S ended without its report\n");
        return 1;
    }
    if (fill > 0) {
        printf("rc=%d call_ns=%lld strangers=%d took_the_pid=%d strangers_killed=%d\n", rc, (long long)(ended - began), made, took, killed);
    } else {
        printf("rc=%d stranger_pid=%ld c_pid=%ld stranger_born_ns=%lld call_began_ns=%lld call_ended_ns=%lld stranger_killed=%d\n", rc,
               (long)first, (long)c, (long long)born, (long long)began, (long long)ended, killed);
    }
    fflush(stdout);
    /* Init of the namespace: clear it, and reap. */
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {
    }
    return 0;
}

/* ---- permission-denied ---- */

/* Process `pid`'s state, thread count and start time (clock ticks after boot) from
   /proc/PID/stat: 0, or -1 when it cannot be read (gone). */
static int proc_status(pid_t pid, char *state, long *threads, unsigned long long *started) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *file = fopen(path, "re");
    if (file == NULL) {
        return -1;
    }
    char line[512];
    int result = -1;
    if (fgets(line, sizeof line, file) != NULL) {
        char *close_paren = strrchr(line, ')');
        if (close_paren != NULL &&
            sscanf(close_paren + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %ld %*d %llu", state, threads,
                   started) == 3) {
            result = 0;
        }
    }
    fclose(file);
    return result;
}

/* ---- escaping-chain ---- */

/* A link of the chain: stamps every 100 µs; 2 ms after its start makes the next link, a child
   of its own parent (CLONE_PARENT); exits after 100 ms. */
static _Noreturn void chain_link(void) {
    int64_t born = redlock_boottime_ns();
    int spawned = 0;
    for (;;) {
        stamp();
        int64_t now = redlock_boottime_ns();
        if (!spawned && now - born >= 2000000) {
            spawned = 1;
            if (syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0) == 0) {
                chain_link();
            }
        }
        if (now - born > 100000000) {
            _exit(0);
        }
        sleep_ns(100000);
    }
}

/* X of the chain: 1 GiB, 100 sleepers, then P, which starts the chain among X's children and
   says so; X reaps the links that end, as a parent does. */
static _Noreturn void chain_parent(void) {
    hold_memory(1024);
    for (int i = 0; i < 100; i++) {
        sleeper();
    }
    pid_t p = checked_fork();
    if (p == 0) {
        close(ready_pipe[0]);
        if (syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0) == 0) {
            chain_link();
        }
        char ready = 1;
        write_all(ready_pipe[1], &ready, sizeof ready);
        for (;;) {
            pause();
        }
    }
    close(ready_pipe[1]);
    for (;;) {
        if (waitpid(-1, NULL, 0) < 0 && errno == ECHILD) {
            pause();
        }
    }
}

static pid_t watched_parent;
static int64_t watched_parent_exited_at;

/* Notes (watched_parent_exited_at) when watched_parent is a zombie or gone, looking every 100 µs. */
static void *watch_parent_exit(void *unused) {
    (void)unused;
    for (;;) {
        char state;
        long threads;
        unsigned long long started;
        if (proc_status(watched_parent, &state, &threads, &started) != 0 || ((state == 'Z' || state == 'X') && threads <= 1)) {
            __atomic_store_n(&watched_parent_exited_at, redlock_boottime_ns(), __ATOMIC_SEQ_CST);
            return NULL;
        }
        sleep_ns(100000);
    }
}

static int escaping_chain(char killer) {
    become_stamped_root();
    watched_parent = start_parent(chain_parent, "the chain");
    pthread_t watcher;
    if (pthread_create(&watcher, NULL, watch_parent_exit, NULL) != 0) {
        fail("pthread_create");
    }
    int64_t killed_at = 0;
    int64_t began = redlock_boottime_ns();
    int rc = 0;
    if (killer == 'o') {
        rc = redlock_kill_own_tree(&killed_at, 0);
    } else if (killer == 't') {
        rc = redlock_kill_tree(getpid(), &killed_at);
    } else {
        redlock_kill_descendants(0);
    }
    int64_t ended = redlock_boottime_ns();
    sleep_ns(300000000);
    pthread_join(watcher, NULL);
    int64_t x_exited = __atomic_load_n(&watched_parent_exited_at, __ATOMIC_SEQ_CST);
    int64_t latest = 0;
    long after_x = 0;
    for (long pid = 1; pid < stamp_count; pid++) {
        int64_t last = __atomic_load_n(&stamps[pid], __ATOMIC_RELAXED);
        if (last > latest) {
            latest = last;
        }
        if (last > x_exited) {
            after_x++;
        }
    }
    printf("rc=%d call_ns=%lld x_exited_after_ns=%lld last_stamp_after_ns=%lld stamps_after_x=%ld\n", rc, (long long)(ended - began),
           (long long)(x_exited - began), (long long)(latest - began), after_x);
    fflush(stdout);
    if (rc != 0 && redlock_kill_tree_by_scan(getpid()) != 0) {
        fprintf(stderr, "redlock-kill-probe: the tree could not be killed\n");
    }
    while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {
    }
    return 0;
}

/* Whether `pid` runs: exists, and is no zombie (a zombie leader with a thread still running
   counts as running). */
static int runs(pid_t pid) {
    char state;
    long threads;
    unsigned long long started;
    return proc_status(pid, &state, &threads, &started) == 0 && !((state == 'Z' || state == 'X') && threads <= 1);
}

/* Makes this process a child subreaper and forks P, the root of the kill in the scenarios
   below (a child subreaper too, as the watchdog is). In P: 0, with *report the pipe's end P
   writes its report to; here: P's pid, with *report the end this process reads it from. */
static pid_t fork_p(int *report) {
    become_subreaper();
    int from_p[2];
    if (pipe2(from_p, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    pid_t p = checked_fork();
    if (p == 0) {
        close(from_p[0]);
        become_subreaper();
        *report = from_p[1];
        return 0;
    }
    close(from_p[1]);
    *report = from_p[0];
    return p;
}

/* P's end in the scenarios below: its report (`size` bytes) to `fd` in one write, then it
   waits to be killed (it may be the root of the kill, which must outlive the call). */
static _Noreturn void report_and_wait(int fd, const void *report, size_t size) {
    write_all(fd, report, size);
    for (;;) {
        pause();
    }
}

/* P's report (`size` bytes) from `fd`: 0, or 1 (named on stderr) when P ended without it. */
static int read_report(int fd, void *report, size_t size) {
    if (read_all(fd, report, size) != 0) {
        fprintf(stderr, "redlock-kill-probe: P ended without its report\n");
        return 1;
    }
    return 0;
}

/* How many of the `count` processes in `pids` still run; with `patient`, looked at again every
   10 ms for up to 2 s (SIGKILL takes effect once each is scheduled: slow on a loaded machine)
   until none does. */
static int still_running(const pid_t *pids, int count, int patient) {
    int left = 0;
    for (int tries = 0; tries < 200; tries++) {
        left = 0;
        for (int i = 0; i < count; i++) {
            left += runs(pids[i]);
        }
        if (left == 0 || !patient) {
            break;
        }
        sleep_ns(10000000);
    }
    return left;
}

/* Kills what is left below this process (a child subreaper) and reaps it: 0, or 1 (named on
   stderr) when the kill failed. */
static int clear_below(void) {
    if (redlock_kill_tree_by_scan(getpid()) != 0) {
        fprintf(stderr, "redlock-kill-probe: what was left below the probe could not be killed\n");
        return 1;
    }
    while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {
    }
    return 0;
}

/* What P tells in permission-denied: the call's outcome and time, root's child, and the three
   processes P may signal. */
typedef struct {
    int rc;
    int64_t call;
    pid_t kept;
    pid_t signalled[3];
} denied_report;

static int permission_denied(int own) {
    if (geteuid() != 0) {
        fprintf(stderr, "redlock-kill-probe: permission-denied must run as root\n");
        return 2;
    }
    int from_p;
    if (fork_p(&from_p) == 0) {
        /* Kept by root; its child drops to 65534 and may be killed. */
        int k_pipe[2];
        if (pipe2(k_pipe, O_CLOEXEC) != 0) {
            fail("pipe2");
        }
        pid_t kept = checked_fork();
        if (kept == 0) {
            pid_t below = checked_fork();
            if (below == 0) {
                if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0) {
                    fail("drop to uid 65534");
                }
                for (;;) {
                    pause();
                }
            }
            write_all(k_pipe[1], &below, sizeof below);
            for (;;) {
                pause();
            }
        }
        close(k_pipe[1]);
        pid_t kept_child;
        if (read_all(k_pipe[0], &kept_child, sizeof kept_child) != 0) {
            fail("read the kept process's child");
        }
        /* Its uid dropped before the kill begins. */
        for (int tries = 0; tries < 1000 && kill(kept_child, 0) == 0; tries++) {
            char path[64];
            snprintf(path, sizeof path, "/proc/%ld", (long)kept_child);
            struct stat info;
            if (stat(path, &info) == 0 && info.st_uid == 65534) {
                break;
            }
            sleep_ns(1000000);
        }
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
        int64_t killed_at = 0;
        int rc = own ? redlock_kill_own_tree(&killed_at, 0) : redlock_kill_tree(getpid(), NULL);
        denied_report report = {.rc = rc, .call = redlock_boottime_ns() - began, .kept = kept, .signalled = {own, grandchild, kept_child}};
        report_and_wait(from_p, &report, sizeof report);
    }
    denied_report report;
    if (read_report(from_p, &report, sizeof report) != 0) {
        return 1;
    }
    int own_left = still_running(report.signalled, 3, 1);
    int kept_alive = runs(report.kept);
    printf("rc=%d call_ns=%lld own_left=%d kept_alive=%d\n", report.rc, (long long)report.call, own_left, kept_alive);
    fflush(stdout);
    return clear_below();
}

#if defined(__x86_64__)
#define PROBE_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define PROBE_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/* Makes every later `number` system call of this process (of this architecture) fail with
   `error` (a seccomp filter); with `argument` 0 or 1, only those whose argument of that index
   (its low 32 bits) is not `spared`. */
static void deny_system_call(long number, int error, int argument, unsigned spared) {
#ifdef PROBE_AUDIT_ARCH
    /* Both architectures are little-endian: an argument's low 32 bits come first. */
    unsigned argument_at = (unsigned)offsetof(struct seccomp_data, args) + (unsigned)(argument > 0 ? argument : 0) * 8u;
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROBE_AUDIT_ARCH, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)number, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, argument_at),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, spared, argument >= 0 ? 1 : 0, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)error & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
#else
    (void)number;
    (void)error;
    (void)argument;
    (void)spared;
    errno = ENOSYS;
    fail("a seccomp filter on this architecture");
    struct sock_filter filter[1];
#endif
    struct sock_fprog program = {.len = sizeof filter / sizeof filter[0], .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
        fail("install the seccomp filter");
    }
}

/* What the confined scenario's filter refuses. */
typedef enum {
    refuse_all,        /* deny: every call */
    refuse_other_pids, /* deny-others: pidfd_open of any pid but P's */
    refuse_signals,    /* deny-signals: pidfd_send_signal of any signal but 0 */
} refusal;

enum { confined_children = 20 };

/* What P tells in confined: the call's outcome and time, and the processes below it. */
typedef struct {
    int rc;
    int64_t call;
    pid_t below[2 * confined_children];
} confined_report;

/* `denied` a system call number, `error` its errno and `refused` which calls, or `denied` 0
   and `free_descriptors` how many descriptors P may open at once. */
static int confined(long denied, int error, refusal refused, long free_descriptors) {
    int from_p;
    if (fork_p(&from_p) == 0) {
        confined_report report = {0};
        pid_t *below = report.below;
        for (int i = 0; i < confined_children; i++) {
            int g_pipe[2];
            if (pipe2(g_pipe, O_CLOEXEC) != 0) {
                fail("pipe2");
            }
            below[2 * i] = checked_fork();
            if (below[2 * i] == 0) {
                pid_t grandchild = sleeper();
                write_all(g_pipe[1], &grandchild, sizeof grandchild);
                for (;;) {
                    pause();
                }
            }
            close(g_pipe[1]);
            if (read_all(g_pipe[0], &below[2 * i + 1], sizeof below[2 * i + 1]) != 0) {
                fail("read a grandchild's pid");
            }
            close(g_pipe[0]);
        }
        if (denied != 0) {
            switch (refused) {
            case refuse_all:
                deny_system_call(denied, error, -1, 0);
                break;
            case refuse_other_pids:
                deny_system_call(denied, error, 0, (unsigned)getpid());
                break;
            case refuse_signals:
                deny_system_call(denied, error, 1, 0);
                break;
            }
        } else {
            /* Descriptors 0-2 and the report's pipe as 3, nothing else: FREE above them. */
            if (from_p != 3) {
                if (dup2(from_p, 3) != 3) {
                    fail("dup2");
                }
                close(from_p);
                from_p = 3;
            }
            if (syscall(SYS_close_range, 4U, ~0U, 0) != 0) {
                fail("close_range");
            }
            rlim_t total = (rlim_t)(4 + free_descriptors);
            struct rlimit limit = {.rlim_cur = total, .rlim_max = total};
            if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
                fail("setrlimit(RLIMIT_NOFILE)");
            }
        }
        int64_t began = redlock_boottime_ns();
        report.rc = redlock_kill_tree(getpid(), NULL);
        report.call = redlock_boottime_ns() - began;
        report_and_wait(from_p, &report, sizeof report);
    }
    confined_report report;
    if (read_report(from_p, &report, sizeof report) != 0) {
        return 1;
    }
    int left = still_running(report.below, 2 * confined_children, report.rc == 0);
    printf("rc=%d call_ns=%lld left=%d\n", report.rc, (long long)report.call, left);
    fflush(stdout);
    return clear_below();
}

/* L's second thread in zombie-leader: sleeps until killed. */
static void *sleep_forever(void *unused) {
    (void)unused;
    for (;;) {
        pause();
    }
    return NULL;
}

/* What P tells in zombie-leader: the call's outcome, and L with its state and thread count
   just before the call. */
typedef struct {
    int rc;
    pid_t leader;
    char state;
    long threads;
} leader_report;

static int zombie_leader(int by_scan, int error) {
    int from_p;
    if (fork_p(&from_p) == 0) {
        pid_t leader = checked_fork();
        if (leader == 0) {
            pthread_t thread;
            if (pthread_create(&thread, NULL, sleep_forever, NULL) != 0) {
                fail("pthread_create");
            }
            pthread_exit(NULL);
        }
        /* Until the main thread has gone: state Z with two threads. */
        char state = '?';
        long threads = 0;
        unsigned long long started;
        for (int tries = 0; tries < 2000; tries++) {
            if (proc_status(leader, &state, &threads, &started) == 0 && state == 'Z' && threads == 2) {
                break;
            }
            sleep_ns(1000000);
        }
        if (error > 0) {
            deny_system_call(SYS_pidfd_send_signal, error, 1, 0);
        }
        leader_report report = {
            .rc = by_scan ? redlock_kill_tree_by_scan(getpid()) : redlock_kill_tree(getpid(), NULL),
            .leader = leader,
            .state = state,
            .threads = threads,
        };
        report_and_wait(from_p, &report, sizeof report);
    }
    leader_report report;
    if (read_report(from_p, &report, sizeof report) != 0) {
        return 1;
    }
    pid_t leader = report.leader;
    /* A thread of L still runs? Looked at for up to 2 s. */
    int left = still_running(&leader, 1, 1);
    printf("rc=%d leader_state=%c leader_threads=%ld left=%d\n", report.rc, report.state, report.threads, left);
    fflush(stdout);
    /* L (this process's, once P is gone) by pid: a kill that missed it would miss it again. */
    kill(leader, SIGKILL);
    return clear_below();
}

/* ---- paused-signal ---- */

/* Process `pid`'s start time (clock ticks after boot), or 0 when it cannot be read. */
static unsigned long long start_time(pid_t pid) {
    char state;
    long threads;
    unsigned long long started;
    return proc_status(pid, &state, &threads, &started) == 0 ? started : 0;
}

/* The pid a pidfd of process `owner` refers to (its fdinfo's "Pid:" line), or -1. */
static long pidfd_target(pid_t owner, long descriptor) {
    char path[96];
    snprintf(path, sizeof path, "/proc/%ld/fdinfo/%ld", (long)owner, descriptor);
    FILE *file = fopen(path, "re");
    if (file == NULL) {
        return -1;
    }
    char line[256];
    long target = -1;
    while (fgets(line, sizeof line, file) != NULL) {
        if (strncmp(line, "Pid:", 4) == 0) {
            target = strtol(line + 4, NULL, 10);
        }
    }
    fclose(file);
    return target;
}

static int paused_signal(int by_scan) {
#if defined(PROBE_AUDIT_ARCH) && defined(SECCOMP_FILTER_FLAG_NEW_LISTENER) && defined(SYS_pidfd_getfd)
    if (getpid() != 1) {
        fprintf(stderr, "redlock-kill-probe: this scenario must run as init of a pid namespace of its own "
                        "(unshare --pid --fork --mount-proc)\n");
        return 2;
    }
    int from_k[2];
    if (pipe2(from_k, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    pid_t k = checked_fork();
    if (k == 0) {
        close(from_k[0]);
        become_subreaper();
        pthread_t thread;
        if (pthread_create(&thread, NULL, reap_everything, NULL) != 0) {
            fail("pthread_create");
        }
        struct sock_filter filter[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROBE_AUDIT_ARCH, 0, 5),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pidfd_send_signal, 0, 3),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (unsigned)offsetof(struct seccomp_data, args) + 8u),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SIGKILL, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog program = {.len = sizeof filter / sizeof filter[0], .filter = filter};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
            fail("prctl(PR_SET_NO_NEW_PRIVS)");
        }
        int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &program);
        if (listener < 0) {
            fail("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)");
        }
        /* A, just after a boundary of the 10 ms ticks start times are counted in. */
        while (redlock_boottime_ns() % 10000000 > 300000) {
        }
        pid_t a = sleeper();
        write_all(from_k[1], &listener, sizeof listener);
        write_all(from_k[1], &a, sizeof a);
        int rc = by_scan ? redlock_kill_tree_by_scan(getpid()) : redlock_kill_tree(getpid(), NULL);
        write_all(from_k[1], &rc, sizeof rc);
        for (;;) {
            pause();
        }
    }
    close(from_k[1]);
    int remote;
    pid_t a;
    if (read_all(from_k[0], &remote, sizeof remote) != 0 || read_all(from_k[0], &a, sizeof a) != 0) {
        fprintf(stderr, "redlock-kill-probe: K ended without its listener\n");
        return 1;
    }
    unsigned long long a_started = start_time(a);
    int k_handle = (int)syscall(SYS_pidfd_open, k, 0);
    int listener = k_handle < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, k_handle, remote, 0);
    if (listener < 0) {
        fail("pidfd_getfd (K's seccomp listener)");
    }
    pid_t stranger = 0;
    int rc = 0;
    int reported = 0;
    while (!reported) {
        struct pollfd waits[2] = {{.fd = listener, .events = POLLIN}, {.fd = from_k[0], .events = POLLIN}};
        if (poll(waits, 2, 10000) <= 0) {
            fail("poll (K neither asked nor reported within 10 s)");
        }
        if (waits[0].revents & POLLIN) {
            struct seccomp_notif request;
            memset(&request, 0, sizeof request);
            if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &request) == 0) {
                if (stranger == 0 && pidfd_target(k, (long)(int)request.data.args[0]) == (long)a) {
                    /* A's SIGKILL waits: A goes another way, K reaps it, S takes its pid. */
                    kill(a, SIGKILL);
                    char path[64];
                    snprintf(path, sizeof path, "/proc/%ld", (long)a);
                    struct stat info;
                    while (stat(path, &info) == 0) {
                    }
                    write_ns_last_pid((long)a - 1);
                    stranger = sleeper();
                }
                struct seccomp_notif_resp response;
                memset(&response, 0, sizeof response);
                response.id = request.id;
                response.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
                if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &response) != 0 && errno != ENOENT) {
                    fail("SECCOMP_IOCTL_NOTIF_SEND");
                }
            }
        }
        if (waits[1].revents & (POLLIN | POLLHUP)) {
            if (read_all(from_k[0], &rc, sizeof rc) != 0) {
                fprintf(stderr, "redlock-kill-probe: K ended without its report\n");
                return 1;
            }
            reported = 1;
        }
    }
    int same_tick = stranger != 0 && start_time(stranger) == a_started;
    int killed = stranger != 0 && !runs(stranger);
    printf("rc=%d stranger_pid=%ld a_pid=%ld same_tick=%d stranger_killed=%d\n", rc, (long)stranger, (long)a, same_tick, killed);
    fflush(stdout);
    /* Init of its namespace: its end takes K and S with it. */
    return 0;
#else
    (void)by_scan;
    fprintf(stderr, "redlock-kill-probe: paused-signal needs seccomp user notification and pidfd_getfd\n");
    return 1;
#endif
}

/* Makes `count` children, each in a session of its own with `detach` (else in this process's
   group), each running `body(index)` (which does not return) once it has said it runs; returns
   once they all have: 0, or 1 on a failure (named on stderr). */
static int make_children(int count, int detach, void (*body)(int index)) {
    int ready[2];
    if (pipe(ready) != 0) {
        perror("pipe");
        return 1;
    }
    for (int i = 0; i < count; i++) {
        pid_t child = fork();
        if (child < 0) {
            perror("fork");
            return 1;
        }
        if (child == 0) {
            if (detach) {
                setsid();
            }
            char byte = 1;
            ssize_t wrote = write(ready[1], &byte, 1);
            (void)wrote;
            body(i);
            _exit(0);
        }
    }
    for (int i = 0; i < count; i++) {
        char byte;
        if (read(ready[0], &byte, 1) != 1) {
            perror("read");
            return 1;
        }
    }
    close(ready[0]);
    close(ready[1]);
    return 0;
}

static void pause_forever(int index) {
    (void)index;
    for (;;) {
        pause();
    }
}

/* The census against the kill it stands for: this process (a child subreaper) makes `count`
   children that sleep, each in a session of its own with `detached` (else in this process's
   group), counts them with redlock_census_tree, then kills them with redlock_kill_tree. One
   line: walked=W detached=D census_ns=C kill_ns=K (K: the call's time to the kill instant). */
static int census(int count, int detach) {
    if (redlock_become_subreaper() != 0) {
        perror("prctl");
        return 1;
    }
    if (make_children(count, detach, pause_forever) != 0) {
        return 1;
    }
    long walked = 0, outside = 0;
    int64_t took = 0;
    int counted = redlock_census_tree(getpid(), getpgrp(), &walked, &outside, &took);
    int64_t began = redlock_boottime_ns();
    int64_t killed_at = 0;
    int killed = redlock_kill_tree(getpid(), &killed_at);
    printf("walked=%ld detached=%ld census_ns=%lld kill_ns=%lld rc=%d/%d\n", walked, outside, (long long)took,
           (long long)(killed_at - began), counted, killed);
    while (wait(NULL) > 0) {
    }
    return 0;
}

/* The stampers' slots and period (set before they are made). */
static int64_t *stamper_slots;
static int stamper_every_ms;

static void stamp_forever(int index) {
    stamper_slots[index] = redlock_boottime_ns();
    struct timespec pause_for = {.tv_sec = stamper_every_ms / 1000, .tv_nsec = (long)(stamper_every_ms % 1000) * 1000000L};
    for (;;) {
        nanosleep(&pause_for, NULL);
        stamper_slots[index] = redlock_boottime_ns();
    }
}

/* The command of a test of `redlock run`'s kill: makes `count` children, each in a session of
   its own (so a kill of the command's group misses them), each writing CLOCK_BOOTTIME into its
   slot of FILE (count 8-byte slots, shared) every `every_ms` ms; prints "ready" once they all
   run, then waits to be killed. */
static int stampers(int count, const char *path, int every_ms) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)count * (off_t)sizeof(int64_t)) != 0) {
        perror("open");
        return 1;
    }
    stamper_slots = mmap(NULL, (size_t)count * sizeof(int64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (stamper_slots == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    stamper_every_ms = every_ms;
    if (make_children(count, 1, stamp_forever) != 0) {
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    pause_forever(0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "late-children") == 0 && argc <= 4) {
        int rounds = argc >= 3 ? atoi(argv[2]) : 5;
        plain_tree = argc == 4 && strcmp(argv[3], "plain") == 0;
        return late_children(rounds > 0 ? rounds : 5, argc == 4 && strcmp(argv[3], "reaping") == 0, argc == 4 && strcmp(argv[3], "own") == 0);
    }
    if (argc == 3 && strcmp(argv[1], "escaping-chain") == 0 && (strcmp(argv[2], "own") == 0 || strcmp(argv[2], "tree") == 0 || strcmp(argv[2], "descendants") == 0)) {
        return escaping_chain(argv[2][0]);
    }
    if (argc == 2 && strcmp(argv[1], "pid-reuse") == 0) {
        return strangers(0);
    }
    if (argc >= 2 && argc <= 3 && strcmp(argv[1], "reaped-pids") == 0) {
        int fill = argc == 3 ? atoi(argv[2]) : 3000;
        return strangers(fill > 0 ? fill : 3000);
    }
    if ((argc == 2 || (argc == 3 && strcmp(argv[2], "own") == 0)) && strcmp(argv[1], "permission-denied") == 0) {
        return permission_denied(argc == 3);
    }
    if (argc == 5 && strcmp(argv[1], "confined") == 0 && (strcmp(argv[2], "deny") == 0 || strcmp(argv[2], "deny-others") == 0)) {
        int others = strcmp(argv[2], "deny-others") == 0;
        long number = strcmp(argv[3], "pidfd_open") == 0 ? SYS_pidfd_open
                      : strcmp(argv[3], "pidfd_send_signal") == 0 && !others ? SYS_pidfd_send_signal
                                                                             : 0;
        int error = atoi(argv[4]);
        if (number != 0 && error > 0) {
            return confined(number, error, others ? refuse_other_pids : refuse_all, 0);
        }
    }
    if (argc == 3 && strcmp(argv[1], "paused-signal") == 0 && (strcmp(argv[2], "walk") == 0 || strcmp(argv[2], "scan") == 0)) {
        return paused_signal(strcmp(argv[2], "scan") == 0);
    }
    if (argc >= 3 && argc <= 4 && strcmp(argv[1], "zombie-leader") == 0 && (strcmp(argv[2], "walk") == 0 || strcmp(argv[2], "scan") == 0)) {
        return zombie_leader(strcmp(argv[2], "scan") == 0, argc == 4 ? atoi(argv[3]) : 0);
    }
    if (argc == 4 && strcmp(argv[1], "confined") == 0 && strcmp(argv[2], "deny-signals") == 0 && atoi(argv[3]) > 0) {
        return confined(SYS_pidfd_send_signal, atoi(argv[3]), refuse_signals, 0);
    }
    if (argc == 4 && strcmp(argv[1], "confined") == 0 && strcmp(argv[2], "descriptors") == 0 && atol(argv[3]) >= 0) {
        return confined(0, 0, 0, atol(argv[3]));
    }
    if (argc == 5 && strcmp(argv[1], "stampers") == 0 && atoi(argv[2]) > 0 && atoi(argv[4]) > 0) {
        return stampers(atoi(argv[2]), argv[3], atoi(argv[4]));
    }
    if (argc == 4 && strcmp(argv[1], "census") == 0 && atoi(argv[2]) > 0 && (strcmp(argv[3], "detached") == 0 || strcmp(argv[3], "grouped") == 0)) {
        return census(atoi(argv[2]), strcmp(argv[3], "detached") == 0);
    }
    fprintf(stderr, "redlock-kill-probe: usage: redlock-kill-probe late-children [ROUNDS [reaping|plain|own]] | escaping-chain own|tree|descendants | pid-reuse | reaped-pids [FILL] | permission-denied [own] | confined deny pidfd_open|pidfd_send_signal ERRNO | confined deny-others pidfd_open ERRNO | confined deny-signals ERRNO | confined descriptors FREE | paused-signal walk|scan | zombie-leader walk|scan [ERRNO] | census COUNT detached|grouped | stampers COUNT FILE EVERY_MS\n");
    return 2;
}
