/* bench-util.h: the backend processes both benchmarks measure: spawned on a
 * socket in a temporary directory, connected to once they listen, stopped
 * and cleaned up. */
#pragma once

#include <gio/gio.h>

#include "vhu-display.h"
#include "vhu-frontend.h"

#define BENCH_MAX_BATCH 64u

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

/* What one slot of a batch sends: a readable and a writable buffer. */
typedef struct {
  const void *req;
  gsize req_size;
  gsize resp_size;
  guint32 expect_type; /* GPU: the answer's hdr.type; 0: the answer echoes the request */
} BenchRequest;

/* BENCH_MAX_BATCH copies of a request and room for their answers, in guest
 * memory allocated from the frontend. */
typedef struct {
  guint64 req_gpa[BENCH_MAX_BATCH];
  guint64 resp_gpa[BENCH_MAX_BATCH];
  guint8 *resp[BENCH_MAX_BATCH];
} BenchSlots;

gboolean bench_prepare_slots(VhuFrontend *fe, const BenchRequest *r, BenchSlots *s, GError **error);
/* One round: @batch (<= BENCH_MAX_BATCH) chains, one kick, then a wait for
 * every answer (each checked against @r; 5 s at most). */
gboolean bench_round_trip(VhuDriverQueue *q, const BenchRequest *r, const BenchSlots *s,
                          guint batch, gboolean indirect, GError **error);
