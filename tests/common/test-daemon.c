/* test-daemon.c: see test-daemon.h. */
#include "test-daemon.h"

#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>

#include "test-util.h"

static gpointer
reader_main(gpointer data)
{
  TuDaemon *d = data;
  g_autoptr(GDataInputStream) in = g_data_input_stream_new(g_subprocess_get_stderr_pipe(d->proc));
  char *line;

  while ((line = g_data_input_stream_read_line_utf8(in, NULL, NULL, NULL))) {
    if (g_test_verbose())
      g_printerr("# daemon: %s\n", line);
    g_mutex_lock(&d->lock);
    g_ptr_array_add(d->lines, line);
    g_cond_broadcast(&d->cond);
    g_mutex_unlock(&d->lock);
  }
  g_mutex_lock(&d->lock);
  d->eof = TRUE;
  g_cond_broadcast(&d->cond);
  g_mutex_unlock(&d->lock);
  return NULL;
}

void
tu_daemon_start(TuDaemon *d, const char *binary, const char *tmpl, const char *sock_name,
                const char *const *extra, int timeout_ms)
{
  g_autoptr(GSubprocessLauncher) launcher = NULL;
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autoptr(GError) error = NULL;

  memset(d, 0, sizeof *d);
  g_mutex_init(&d->lock);
  g_cond_init(&d->cond);
  d->lines = g_ptr_array_new_with_free_func(g_free);
  d->dir = tu_make_tmpdir(tmpl);
  d->path = g_build_filename(d->dir, sock_name, NULL);
  g_ptr_array_add(argv, (gpointer)binary);
  g_ptr_array_add(argv, "--socket-path");
  g_ptr_array_add(argv, d->path);
  for (; extra && *extra; extra++)
    g_ptr_array_add(argv, (gpointer)*extra);
  g_ptr_array_add(argv, NULL);
  launcher = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_SILENCE
                                       | G_SUBPROCESS_FLAGS_STDERR_PIPE);
  d->proc = g_subprocess_launcher_spawnv(launcher, (const char *const *)argv->pdata, &error);
  g_assert_no_error(error);
  d->reader = g_thread_new("daemon-stderr", reader_main, d);
  g_assert_true(tu_daemon_wait_log(d, "listening on", timeout_ms));
}

gboolean
tu_daemon_wait_log(TuDaemon *d, const char *text, int timeout_ms)
{
  gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
  gboolean found = FALSE;

  g_mutex_lock(&d->lock);
  for (;;) {
    for (guint i = 0; i < d->lines->len && !found; i++)
      found = strstr(d->lines->pdata[i], text) != NULL;
    if (found || d->eof || !g_cond_wait_until(&d->cond, &d->lock, end))
      break;
  }
  g_mutex_unlock(&d->lock);
  return found;
}

guint
tu_daemon_count_log(TuDaemon *d, const char *text)
{
  guint n = 0;

  g_mutex_lock(&d->lock);
  for (guint i = 0; i < d->lines->len; i++)
    n += strstr(d->lines->pdata[i], text) != NULL;
  g_mutex_unlock(&d->lock);
  return n;
}

void
tu_daemon_wait_exit(TuDaemon *d, int timeout_ms)
{
  gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;

  g_mutex_lock(&d->lock);
  while (!d->eof && g_cond_wait_until(&d->cond, &d->lock, end))
    ;
  g_mutex_unlock(&d->lock);
  g_assert_true(d->eof);
  g_assert_true(g_subprocess_wait(d->proc, NULL, NULL));
}

void
tu_daemon_clear(TuDaemon *d)
{
  if (d->proc == NULL)
    return;
  g_thread_join(d->reader);
  g_object_unref(d->proc);
  g_ptr_array_unref(d->lines);
  g_mutex_clear(&d->lock);
  g_cond_clear(&d->cond);
  g_unlink(d->path);
  g_rmdir(d->dir);
  g_free(d->path);
  g_free(d->dir);
  d->proc = NULL;
}

void
tu_daemon_stop(TuDaemon *d, int timeout_ms)
{
  if (d->proc == NULL)
    return;
  g_subprocess_send_signal(d->proc, SIGTERM);
  tu_daemon_wait_exit(d, timeout_ms);
  g_assert_true(g_subprocess_get_if_exited(d->proc));
  g_assert_cmpint(g_subprocess_get_exit_status(d->proc), ==, 0);
  tu_daemon_clear(d);
}
