/* test-util.c: helpers the vhost and gpu tests share (see test-util.h). */
#include "test-util.h"

#include <errno.h>
#include <gio/gunixinputstream.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

char *
tu_make_tmpdir(const char *tmpl)
{
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp(tmpl, &error);

  g_assert_no_error(error);
  return dir;
}

gboolean
tu_wait_readable(int fd, int timeout_ms)
{
  struct pollfd pfd = { .fd = fd, .events = POLLIN };
  gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;

  for (;;) {
    gint64 left = (deadline - g_get_monotonic_time()) / 1000;
    int r;

    if (left < 0)
      left = 0;
    r = poll(&pfd, 1, (int)left);
    if (r > 0)
      return TRUE;
    if (r == 0)
      return FALSE;
    g_assert_cmpint(errno, ==, EINTR);
  }
}

void
tu_read_line(GSubprocess *proc, char *line, gsize size, int timeout_ms)
{
  GInputStream *out = g_subprocess_get_stdout_pipe(proc);
  int fd = g_unix_input_stream_get_fd(G_UNIX_INPUT_STREAM(out));
  gsize n = 0;

  for (;;) {
    g_assert_cmpuint(n, <, size - 1);
    g_assert_true(tu_wait_readable(fd, timeout_ms));
    g_assert_cmpint(read(fd, line + n, 1), ==, 1);
    if (line[n] == '\n')
      break;
    n++;
  }
  line[n] = '\0';
}

void
tu_expect_line(GSubprocess *proc, const char *expected, int timeout_ms)
{
  char line[64];

  tu_read_line(proc, line, sizeof line, timeout_ms);
  g_assert_cmpstr(line, ==, expected);
}

GSubprocess *
tu_spawn_ready(GSubprocessLauncher *launcher, const char *const *argv, int timeout_ms)
{
  g_autoptr(GError) error = NULL;
  GSubprocess *proc = g_subprocess_launcher_spawnv(launcher, argv, &error);

  g_assert_no_error(error);
  tu_expect_line(proc, "ready", timeout_ms);
  return proc;
}

static void
on_wait_done(GObject *obj, GAsyncResult *res, gpointer data)
{
  g_subprocess_wait_finish(G_SUBPROCESS(obj), res, NULL);
  *(gboolean *)data = TRUE;
}

static gboolean
on_timeout_flag(gpointer data)
{
  *(gboolean *)data = TRUE;
  return G_SOURCE_REMOVE;
}

int
tu_wait_exit(GSubprocess *proc, int timeout_ms)
{
  gboolean done = FALSE, timed_out = FALSE, in_time;
  GSource *timeout = g_timeout_source_new((guint)timeout_ms);

  g_source_set_callback(timeout, on_timeout_flag, &timed_out, NULL);
  g_source_attach(timeout, NULL);
  g_subprocess_wait_async(proc, NULL, on_wait_done, &done);
  while (!done && !timed_out)
    g_main_context_iteration(NULL, TRUE);
  g_source_destroy(timeout);
  g_source_unref(timeout);
  in_time = done;
  if (!in_time) {
    /* Not left behind when the test fails. */
    g_subprocess_force_exit(proc);
    while (!done)
      g_main_context_iteration(NULL, TRUE);
  }
  g_assert_true(in_time);
  if (!g_subprocess_get_if_exited(proc))
    return -1;
  return g_subprocess_get_exit_status(proc);
}

gboolean
tu_proc_alive(gpointer proc)
{
  return g_subprocess_get_identifier(proc) != NULL;
}

void
tu_backend_init(TuBackend *b, const char *tmpl, const char *name)
{
  b->proc = NULL;
  b->dir = tu_make_tmpdir(tmpl);
  b->path = g_build_filename(b->dir, name, NULL);
}

gboolean
tu_spawn_qemu_gpu(TuBackend *b, const char *binary, const char *tmpl)
{
  g_autoptr(GSubprocessLauncher) launcher = NULL;
  g_autoptr(GError) error = NULL;

  if (!g_file_test(binary, G_FILE_TEST_IS_EXECUTABLE)) {
    g_test_skip("QEMU's vhost-user-gpu is not installed");
    return FALSE;
  }
  tu_backend_init(b, tmpl, "gpu.sock");
  /* Its stdout would mix with our TAP output; our G_DEBUG=fatal-criticals
   * would make its guest error messages fatal. */
  launcher = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_SILENCE);
  g_subprocess_launcher_unsetenv(launcher, "G_DEBUG");
  b->proc = g_subprocess_launcher_spawn(launcher, &error, binary, "--socket-path", b->path, NULL);
  g_assert_no_error(error);
  return TRUE;
}

void
tu_backend_clear(TuBackend *b)
{
  g_unlink(b->path);
  g_rmdir(b->dir);
  g_clear_object(&b->proc);
  g_clear_pointer(&b->path, g_free);
  g_clear_pointer(&b->dir, g_free);
}

static gpointer
loop_thread_main(gpointer data)
{
  GMainLoop *loop = data;
  GMainContext *ctx = g_main_loop_get_context(loop);

  g_main_context_push_thread_default(ctx);
  g_main_loop_run(loop);
  g_main_context_pop_thread_default(ctx);
  return NULL;
}

GThread *
tu_loop_thread_new(const char *name, GMainLoop *loop)
{
  return g_thread_new(name, loop_thread_main, loop);
}

static gboolean
quit_idle(gpointer loop)
{
  g_main_loop_quit(loop);
  return G_SOURCE_REMOVE;
}

void
tu_loop_thread_join(GThread *thread, GMainLoop *loop)
{
  GSource *s = g_idle_source_new();

  g_source_set_callback(s, quit_idle, loop, NULL);
  g_source_attach(s, g_main_loop_get_context(loop));
  g_source_unref(s);
  g_thread_join(thread);
}
