#ifndef CPROCESSSPAWN_SUPERVISE_H
#define CPROCESSSPAWN_SUPERVISE_H

#include <stdint.h>
#include <sys/types.h>

/* A command run under a lock is supervised by a watchdog process of its own:

       supervisor (redlock run) --control pipe--> watchdog --fork/exec--> command (own process group)
                                <--status pipe---

   The supervisor holds the lease and tells the watchdog, after every confirmed extension, the
   CLOCK_BOOTTIME instant by which the command must be gone. The watchdog SIGKILLs the command's
   whole process group when that instant passes without a newer one (a stopped or starved
   supervisor), or at once when the control pipe reports end of file (a killed supervisor). It
   forwards signals the supervisor asks for to the group, and reports the command's start and
   exit on the status pipe. The command gets an empty signal mask, default dispositions, no
   descriptor but 0, 1 and 2, and the parent-death signal SIGKILL (for a killed watchdog); when
   the supervisor runs in a terminal's foreground, the command gets the foreground. The watchdog
   runs in a process group of its own and is a child subreaper: when the command exits or is
   killed, everything it left running (in its group, or detached with setsid) is killed before
   the exit is reported. Deadlines are kept on CLOCK_BOOTTIME (a timerfd), so time spent
   suspended counts. */

/* A message on either pipe: 16 bytes, written atomically (less than PIPE_BUF). */
typedef struct {
    int32_t kind;
    int32_t argument;
    int64_t value;
} redlock_watch_message;

enum {
    /* supervisor -> watchdog */
    REDLOCK_WATCH_DEADLINE = 1, /* value: CLOCK_BOOTTIME nanoseconds by which the command must be gone */
    REDLOCK_WATCH_SIGNAL = 2,   /* argument: a signal number for the command's process group */
    REDLOCK_WATCH_KILL_AT = 10, /* value: CLOCK_BOOTTIME nanoseconds at which the supervisor, which is
                                   terminating the command, kills its group itself; the watchdog kills
                                   by then too (in case the supervisor is stopped), without blaming a
                                   missed renewal, and no later deadline applies */
    /* watchdog -> supervisor */
    REDLOCK_WATCH_STARTED = 3,      /* argument: the command's pid (and process group) */
    REDLOCK_WATCH_EXEC_FAILED = 4,  /* argument: errno of the failed exec */
    REDLOCK_WATCH_DEADLINE_KILL = 5, /* value: CLOCK_BOOTTIME nanoseconds from which the group and what
                                        left it had all been sent SIGKILL */
    REDLOCK_WATCH_ORPHAN_KILL = 6,   /* the supervisor went away; the group was killed */
    REDLOCK_WATCH_EXITED = 7,        /* argument: the command's wait status; value: CLOCK_BOOTTIME ns when
                                        it and everything it left were gone */
    REDLOCK_WATCH_TOO_LATE = 8,      /* the deadline had passed before the command could start; it did not */
    REDLOCK_WATCH_NOT_STARTED = 9,   /* argument: a terminating signal the supervisor forwarded before the
                                        command started; it did not */
    REDLOCK_WATCH_STOPPED_KILL = 11, /* argument: the job-control signal (SIGTSTP, SIGTTIN, SIGTTOU) that
                                        stopped the command; value: CLOCK_BOOTTIME ns when the group was
                                        killed: it stayed stopped past the deadline, and renewals that came
                                        meanwhile did not count (a stopped job renews nothing) */
};

/* Spawns the watchdog `path` with `argv` and `envp` (NULL-terminated): an empty signal mask,
   default dispositions, stdin/stdout/stderr inherited, the read end of a new control pipe as
   descriptor 3, the write end of a new status pipe as descriptor 4, no other descriptor.
   Stores the watchdog's pid and the supervisor's ends (both close-on-exec). Returns 0 or an errno
   value; on failure nothing is left open. */
int redlock_spawn_watchdog(const char *path, char *const argv[], char *const envp[], pid_t *pid, int *control_fd,
                           int *status_fd);

/* The watchdog's whole life, in the spawned process: runs `command` (argv[0] looked up in PATH)
   with this process's environment, enforces `deadline_ns` (CLOCK_BOOTTIME) and later deadlines from
   descriptor 3, reports on descriptor 4, and exits once the command has exited (status 0), or 1
   on a setup failure (reported on stderr). The command starts with default signal dispositions,
   but for the signals of `kept_ignored` (bit n - 1 for signal n; only SIGHUP, SIGINT and SIGQUIT
   are taken, the others are ignored): those start ignored, as redlock was started with them
   ignored (nohup, a shell's `&` without job control). Never returns. */
_Noreturn void redlock_watchdog_main(char *const command[], int64_t deadline_ns, uint64_t kept_ignored);

/* `redlock` as the init of a PID namespace (PID 1, as in a container without an init of its own):
   runs `path` with `argv` (redlock itself, which is then not PID 1) as its only child, passes it
   SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGCONT, reaps every process
   orphaned in the namespace, and exits with the child's status (128 + N when it was killed by signal
   N) once it ends. Exits 1 on a setup failure (reported on stderr). Never returns. */
_Noreturn void redlock_init_main(const char *path, char *const argv[]);

/* 1 when `signal_number` is ignored (SIG_IGN) in this process, else 0 (also when it cannot be
   told). */
int redlock_signal_is_ignored(int signal_number);

/* SIGKILLs process group `group` (if > 0) and every descendant of the calling process (first by
   the walk of redlock_kill_tree; then, for at most a second while the killed exit, by re-reads of
   the children of those still exiting, every 100 µs or so, killing what escaped the walk; then by
   scans of /proc for its children: descendants that were reparented to it as a child
   subreaper), reaping until none is left. Blocks until then: a process it may not signal holds
   it until that process exits. The re-reads take up to about half a core while they last. */
void redlock_kill_descendants(pid_t group);

/* SIGKILLs every descendant of process `root` (not `root` itself), a child subreaper: what a
   stopped watchdog (`root`) cannot kill, including processes that left the command's group with
   setsid. First a walk of the tree through /proc/PID/task/TID/children, each process killed on
   sight (its children read before and after), whose cost grows with the descendants, not with the
   processes on the host; then `root`'s children again, for what a dying process handed to it.
   Then, as a check, a scan of every process's /proc/PID/stat (about 10 µs per process on the host,
   per pass) that SIGKILLs each descendant of `root` it finds, in passes until one finds none it
   has not sent SIGKILL yet (at most 64; a process is told by its pid and start time). Returns 0
   then, and sets *killed_at_ns (if not NULL) to the CLOCK_BOOTTIME instant from which none of them
   ran: the end of the walk when nothing escaped it (every process it killed exited in full within
   a second, its pid freed or gone to another process meanwhile, told by the start time, after
   which a last look found `root` with no child, and the scan no descendant, the walk had not
   killed: the instant is taken after that look, so `root` may reap meanwhile), else the end of the
   scan. A pid read a while ago (from a children file, or in the scan's snapshot) is signalled only
   if its parent is then `root` or one the walk killed (the scan: its parent then is the one it
   read, `root`, or another below `root` in its snapshot) and, in the scan, its start time is the
   one it read; the parent is read and the signal sent through a descriptor of the process itself
   (pidfd_open(2), Linux 5.3; by pid where the kernel or a seccomp filter allows none), so a
   process that took the pid meanwhile gets none. SIGKILL cannot be blocked or caught, so none runs
   its own code again (each is gone once the kernel schedules it; zombies until reaped). -1 when
   /proc could not be read (EMFILE, ENFILE, ENOMEM; a process hidden from the caller, hidepid, is
   skipped), memory ran out, one could not be signalled (EPERM: the others are killed all the same)
   or new ones still appeared in the scan's last pass. Without children files (a kernel built
   without CONFIG_PROC_CHILDREN), the scan alone. Blocks. */
int redlock_kill_tree(pid_t root, int64_t *killed_at_ns);

/* The most processes redlock_census_tree looks at (100,000). */
#define REDLOCK_CENSUS_LIMIT 100000

/* Counts the processes below `root` by the walk redlock_kill_tree starts with (the children
   files, no signal sent): all of them (*walked) and those outside process group `group`
   (*detached: what a kill of the group misses, so that the kill walks to each), and how long
   the count took (*took_ns): about a third of what a kill's walk of the same tree takes, which
   reads each process's children twice and signals it through a descriptor of its own. 0, or
   -1 when /proc could not be read (the counts then cover what was read). */
int redlock_census_tree(pid_t root, pid_t group, long *walked, long *detached, int64_t *took_ns);

/* The scan of redlock_kill_tree alone (0 or -1 as there): for tests. */
int redlock_kill_tree_by_scan(pid_t root);

/* The watchdog's kill of every descendant of the calling process, a child subreaper that reaps
   nothing while this runs. First the walk of redlock_kill_tree. Then a wait until every process
   killed has exited in full (at most 1 s), in passes about every 100 µs that read again the
   children of those that have not and the caller's, and kill what is new (a pass that killed
   one is followed at once by the next, another by a pause as long as its CPU time, at least
   100 µs): a child made with CLONE_PARENT while the
   walk ran, or an orphan handed to a subreaper below, would otherwise run until its parent had
   exited (hundreds of ms for one with gigabytes to give back). Then a scan
   of /proc for the caller's own children (about 10 µs per process on the host). Sets
   *killed_at_ns to the CLOCK_BOOTTIME instant from which none of them ran and returns: 0 with
   the walk's end, when neither the passes nor the scan found one it had missed, running or a
   zombie (the caller reaps nothing, so one that escaped the walk is still there to be seen);
   1 with the end of the scan, when they found and killed one; -1 with INT64_MAX (no instant)
   when the wait did not end within 1 s (one in uninterruptible sleep, or a tree that forks
   faster than a pass finds its processes), a list could not be read, one found could not be
   signalled (EPERM: it runs on), or the kernel has no children files (the scan alone then
   kills, and vouches for nothing below a process still exiting). One way past the checks
   remains: a process that escaped the walk and ended on its own before they looked, reaped by
   the kernel at once because its parent ignores SIGCHLD or set SA_NOCLDWAIT; redlock_kill_tree,
   which runs beside a root that may reap, takes its instant after its last look instead.
   `scan_pause_ns` (0 but in the suite) is slept before the scan. Blocks. */
int redlock_kill_own_tree(int64_t *killed_at_ns, int64_t scan_pause_ns);

/* Makes the calling process a child subreaper (orphaned descendants are reparented to it).
   Returns 0 or an errno value. */
int redlock_become_subreaper(void);

/* Writes one message to `fd`; returns 0 or an errno value (EPIPE when the reader is gone). */
int redlock_watch_send(int fd, int32_t kind, int32_t argument, int64_t value);

/* Reads one whole message from `fd`, blocking; returns 0, -1 at end of file, or an errno value. */
int redlock_watch_receive(int fd, redlock_watch_message *message);

/* CLOCK_BOOTTIME in nanoseconds. */
int64_t redlock_boottime_ns(void);

/* For the test suite: the milliseconds an environment variable `variable` holds, at most 60,000
   (more counts as 60,000); 0 when it is unset, empty or not all digits. */
uint32_t redlock_test_delay_ms(const char *variable);

/* Sleeps until CLOCK_BOOTTIME reads `deadline_ns` (at once if it has passed), through
   interrupting signals: 0, or the errno of clock_nanosleep. */
int redlock_sleep_until_boottime(int64_t deadline_ns);

#endif
