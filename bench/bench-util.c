/* bench-util.c: backend processes for the benchmarks (see bench-util.h). */
#include "bench-util.h"

#include <glib/gstdio.h>
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
