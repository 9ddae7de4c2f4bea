#ifndef CPROCESSSPAWN_H
#define CPROCESSSPAWN_H

#include <sys/types.h>

/* Spawns `path` with `argv` (NULL-terminated) and the current environment. stdin is /dev/null;
   stdout and stderr go to the write end of a new close-on-exec pipe whose read end is stored in
   *read_fd; no other descriptor of the caller reaches the child. Returns 0, or an errno value. */
int redlock_spawn_with_pipe(const char *path, char *const argv[], pid_t *pid, int *read_fd);

#endif
