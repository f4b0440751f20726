/* bench-util.c: backend processes for the benchmarks (see bench-util.h). */
#include "bench-util.h"

#include <glib/gstdio.h>
#include <linux/virtio_gpu.h>
#include <string.h>
#include <sched.h>
#include <signal.h>

gboolean
bench_backend_dir(BenchBackend *b, const char *tmpl, const char *name, GError **error)
{
  b->dir = g_dir_make_tmp(tmpl, error);
  if (b->dir == NULL)
    return FALSE;
  b->path = g_build_filename(b->dir, name, NULL);
  return TRUE;
}

/* In the child between fork and exec: only a syscall. */
static void
pin_child(gpointer data)
{
  cpu_set_t set;

  CPU_ZERO(&set);
  CPU_SET(GPOINTER_TO_INT(data), &set);
  sched_setaffinity(0, sizeof set, &set);
}

GSubprocess *
bench_spawn(GSubprocessFlags flags, int cpu, GError **error, const char *const *argv)
{
  g_autoptr(GSubprocessLauncher) l = g_subprocess_launcher_new(flags);

  g_subprocess_launcher_unsetenv(l, "G_DEBUG");
  if (cpu >= 0)
    g_subprocess_launcher_set_child_setup(l, pin_child, GINT_TO_POINTER(cpu), NULL);
  return g_subprocess_launcher_spawnv(l, argv, error);
}

static gboolean
proc_alive(gpointer proc)
{
  return g_subprocess_get_identifier(proc) != NULL;
}

gboolean
bench_backend_connect(BenchBackend *b, GError **error)
{
  b->fe = vhu_frontend_connect_wait(b->path, 10000, proc_alive, b->proc, error);
  return b->fe != NULL;
}

static void
wait_done(GObject *src, GAsyncResult *res, gpointer data)
{
  g_subprocess_wait_finish(G_SUBPROCESS(src), res, NULL);
  *(gboolean *)data = TRUE;
}

static gboolean
set_flag(gpointer data)
{
  *(gboolean *)data = TRUE;
  return G_SOURCE_REMOVE;
}

/* SIGTERM, then SIGKILL if it is still there after 5 s. */
static void
stop_process(GSubprocess *proc)
{
  gboolean done = FALSE, timed_out = FALSE;
  guint timeout_id;

  if (g_subprocess_get_identifier(proc) != NULL)
    g_subprocess_send_signal(proc, SIGTERM);
  g_subprocess_wait_async(proc, NULL, wait_done, &done);
  timeout_id = g_timeout_add(5000, set_flag, &timed_out);
  while (!done && !timed_out)
    g_main_context_iteration(NULL, TRUE);
  if (done) {
    g_source_remove(timeout_id);
    return;
  }
  g_subprocess_force_exit(proc);
  while (!done)
    g_main_context_iteration(NULL, TRUE);
}

void
bench_backend_clear(BenchBackend *b)
{
  g_clear_pointer(&b->fe, vhu_frontend_free);
  g_clear_pointer(&b->ds, vhu_display_server_free);
  if (b->proc != NULL)
    stop_process(b->proc);
  g_clear_object(&b->proc);
  if (b->path != NULL)
    g_unlink(b->path);
  if (b->dir != NULL)
    g_rmdir(b->dir);
  g_clear_pointer(&b->path, g_free);
  g_clear_pointer(&b->dir, g_free);
}

/* --- request loops --------------------------------------------------------- */

gboolean
bench_prepare_slots(VhuFrontend *fe, const BenchRequest *r, BenchSlots *s, GError **error)
{
  for (guint i = 0; i < BENCH_MAX_BATCH; i++) {
    s->req_gpa[i] = vhu_frontend_alloc(fe, r->req_size, 64);
    s->resp_gpa[i] = vhu_frontend_alloc(fe, r->resp_size, 64);
    if (s->req_gpa[i] == G_MAXUINT64 || s->resp_gpa[i] == G_MAXUINT64) {
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "no guest memory left");
      return FALSE;
    }
    memcpy(vhu_frontend_gpa_to_ptr(fe, s->req_gpa[i], r->req_size), r->req, r->req_size);
    s->resp[i] = vhu_frontend_gpa_to_ptr(fe, s->resp_gpa[i], r->resp_size);
  }
  return TRUE;
}

static gboolean
check_answer(const BenchRequest *r, const BenchSlots *s, guint slot, guint32 len, GError **error)
{
  guint32 type;

  if (r->expect_type == 0) {
    if (len == r->req_size && memcmp(s->resp[slot], r->req, len) == 0)
      return TRUE;
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "bad echo (%u bytes)", len);
    return FALSE;
  }
  memcpy(&type, s->resp[slot], sizeof type);
  if (len >= sizeof(struct virtio_gpu_ctrl_hdr) && type == r->expect_type)
    return TRUE;
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "answer 0x%x (%u bytes), expected 0x%x",
              type, len, r->expect_type);
  return FALSE;
}

gboolean
bench_round_trip(VhuDriverQueue *q, const BenchRequest *r, const BenchSlots *s, guint batch,
                 gboolean indirect, GError **error)
{
  guint done = 0;

  for (guint i = 0; i < batch; i++) {
    VhuGuestBuf out = { s->req_gpa[i], (guint32)r->req_size };
    VhuGuestBuf in = { s->resp_gpa[i], (guint32)r->resp_size };

    if (vhu_driver_queue_add(q, &out, 1, &in, 1, indirect, GUINT_TO_POINTER(i + 1)) < 0) {
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "ring full");
      return FALSE;
    }
  }
  vhu_driver_queue_kick(q);
  while (done < batch) {
    gpointer token;
    guint32 len;

    if (vhu_driver_queue_get_used(q, &token, &len)) {
      if (!check_answer(r, s, GPOINTER_TO_UINT(token) - 1, len, error))
        return FALSE;
      done++;
      continue;
    }
    if (!vhu_driver_queue_wait(q, 5000)) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "no answer within 5 s (%u of %u)", done,
                  batch);
      return FALSE;
    }
  }
  return TRUE;
}
