/* bench-util.h: the backend processes both benchmarks measure: spawned on a
 * socket in a temporary directory, connected to once they listen, stopped
 * and cleaned up. */
#pragma once

#include <gio/gio.h>

#include "vhu-display.h"
#include "vhu-frontend.h"

/* A backend process, its socket and what drives it. */
typedef struct {
  GSubprocess *proc;
  char *dir; /* temporary directory holding the socket */
  char *path;
  VhuFrontend *fe;
  VhuDisplayServer *ds;
} BenchBackend;

/* b->dir: a fresh directory from @tmpl ("name-XXXXXX"); b->path: @name in it. */
gboolean bench_backend_dir(BenchBackend *b, const char *tmpl, const char *name, GError **error);
/* Spawns @argv, pinned to @cpu when it is >= 0, without G_DEBUG in its
 * environment (QEMU's backend logs guest errors as criticals). */
GSubprocess *bench_spawn(GSubprocessFlags flags, int cpu, GError **error, const char *const *argv);
/* Connects to b->path once the backend listens: bounded (10 s), and over at
 * once if the process exits. */
gboolean bench_backend_connect(BenchBackend *b, GError **error);
/* Frees the frontend and display server, stops the process (SIGTERM, then
 * SIGKILL after 5 s), removes the socket and the directory. */
void bench_backend_clear(BenchBackend *b);
