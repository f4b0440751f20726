/* test-probe.c: runs the built gst-vhost-probe against real backends (QEMU's
 * vhost-user-gpu, our null device) and against peers that misbehave, and
 * checks what it prints and how it exits.  The program is found through
 * GST_VHOST_PROBE, the null device through VHU_NULL_BACKEND (set by meson). */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "test-util.h"

#define QEMU_GPU "/usr/lib/qemu/vhost-user-gpu"
#define WAIT_MS  10000

typedef struct {
  char *out;
  char *err;
  int status;
} Run;

static void
run_clear(Run *r)
{
  g_free(r->out);
  g_free(r->err);
}

static const char *
probe_path(void)
{
  const char *p = g_getenv("GST_VHOST_PROBE");

  if (p == NULL)
    g_error("GST_VHOST_PROBE is not set (run through meson test)");
  return p;
}

/* Runs the probe to completion (it bounds its own waits with --timeout). */
static void
run_probe(Run *r, const char *const *args)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autoptr(GSubprocess) proc = NULL;
  g_autoptr(GError) error = NULL;

  g_ptr_array_add(argv, (gpointer)probe_path());
  for (guint i = 0; args[i] != NULL; i++)
    g_ptr_array_add(argv, (gpointer)args[i]);
  g_ptr_array_add(argv, NULL);
  proc = g_subprocess_newv((const char *const *)argv->pdata,
                           G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE, &error);
  g_assert_no_error(error);
  g_subprocess_communicate_utf8(proc, NULL, NULL, &r->out, &r->err, &error);
  g_assert_no_error(error);
  r->status = g_subprocess_get_if_exited(proc) ? g_subprocess_get_exit_status(proc) : -1;
  g_test_message("probe exited %d\nstdout:\n%s\nstderr:\n%s", r->status, r->out, r->err);
}

/* The value printed after "@label" on its line, or fails. */
static char *
line_value(const char *out, const char *label)
{
  const char *p = strstr(out, label);
  const char *end;

  if (p == NULL)
    g_error("no line \"%s\" in:\n%s", label, out);
  p += strlen(label);
  end = strchr(p, '\n');
  return g_strstrip(g_strndup(p, end != NULL ? (gsize)(end - p) : strlen(p)));
}

static void
assert_line(const char *out, const char *label, const char *want_part)
{
  g_autofree char *v = line_value(out, label);

  if (strstr(v, want_part) == NULL)
    g_error("line \"%s\" is \"%s\", expected it to contain \"%s\"", label, v, want_part);
}

/* --- backends ------------------------------------------------------------ */

/* TRUE when a socket bound to @path is listening (/proc/net/unix shows
 * __SO_ACCEPTCON, 0x10000, in its flags). */
static gboolean
is_listening(const char *path)
{
  g_autofree char *text = NULL;
  g_auto(GStrv) lines = NULL;

  if (!g_file_get_contents("/proc/net/unix", &text, NULL, NULL))
    return FALSE;
  lines = g_strsplit(text, "\n", -1);
  for (guint i = 1; lines[i] != NULL; i++) {
    g_auto(GStrv) f = g_strsplit_set(lines[i], " ", -1);
    g_autoptr(GPtrArray) cols = g_ptr_array_new();

    for (guint k = 0; f[k] != NULL; k++)
      if (f[k][0] != '\0')
        g_ptr_array_add(cols, f[k]);
    if (cols->len >= 8 && strcmp(cols->pdata[7], path) == 0
        && (g_ascii_strtoull(cols->pdata[3], NULL, 16) & 0x10000) != 0)
      return TRUE;
  }
  return FALSE;
}

/* QEMU's backend prints nothing when ready and accepts exactly one
 * connection, so a test connect() would steal the probe's: watch for the
 * listening socket instead (bounded). */
static void
wait_listening(TuBackend *b)
{
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;

  while (!is_listening(b->path)) {
    if (g_get_monotonic_time() > deadline || g_subprocess_get_identifier(b->proc) == NULL)
      g_error("backend did not listen on %s", b->path);
    g_usleep(2000);
  }
}

static void
backend_stop(TuBackend *b)
{
  if (g_subprocess_get_identifier(b->proc) != NULL)
    g_subprocess_send_signal(b->proc, SIGTERM);
  tu_wait_exit(b->proc, WAIT_MS);
  tu_backend_clear(b);
}

static gboolean
spawn_qemu_gpu(TuBackend *b)
{
  if (!tu_spawn_qemu_gpu(b, QEMU_GPU, "vhu-probe-XXXXXX"))
    return FALSE;
  wait_listening(b);
  return TRUE;
}

/* The null device prints "ready" once it listens. */
static gboolean
spawn_null(TuBackend *b)
{
  const char *exe = g_getenv("VHU_NULL_BACKEND");
  g_autoptr(GSubprocessLauncher) launcher = NULL;

  if (exe == NULL || !g_file_test(exe, G_FILE_TEST_IS_EXECUTABLE)) {
    g_test_skip("vhu-null-backend is not built");
    return FALSE;
  }
  tu_backend_init(b, "vhu-probe-XXXXXX", "null.sock");
  launcher = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE);
  b->proc = tu_spawn_ready(
      launcher, (const char *const[]){ exe, "--socket-path", b->path, "--queues", "3", NULL },
      WAIT_MS);
  return TRUE;
}

/* --- tests --------------------------------------------------------------- */

static void
test_qemu_gpu(void)
{
  TuBackend b;
  Run r;

  if (!spawn_qemu_gpu(&b))
    return;
  run_probe(&r, (const char *const[]){ b.path, NULL });
  g_assert_cmpint(r.status, ==, 0);
  assert_line(r.out, "device:", "gpu");
  assert_line(r.out, "virtio features:", "GPU_EDID");
  assert_line(r.out, "virtio features:", "VERSION_1");
  assert_line(r.out, "virtio features:", "PROTOCOL_FEATURES");
  assert_line(r.out, "protocol features offered:", "REPLY_ACK");
  assert_line(r.out, "protocol features negotiated:", "REPLY_ACK");
  assert_line(r.out, "protocol features negotiated:", "CONFIG");
  assert_line(r.out, "queues:", "2");
  assert_line(r.out, "max mem slots:", "509");
  assert_line(r.out, "config:", "num_scanouts=0 num_capsets=0");
  /* The handshake: QEMU 10's backend asks for EDID and DMABUF2. */
  assert_line(r.out, "display protocol offered:", "[EDID, DMABUF2]");
  assert_line(r.out, "display protocol asked for:", "0x0000000000000003 [EDID, DMABUF2]");
  assert_line(r.out, "display info (control queue):", "OK_DISPLAY_INFO");
  assert_line(r.out, "scanout 0:", "1280x800+0+0 enabled");
  assert_line(r.out, "edid (scanout 0):", "OK_EDID, 128 bytes");
  assert_line(r.out, "display socket:", "errors 0");
  g_assert_cmpstr(r.err, ==, "");
  run_clear(&r);
  backend_stop(&b);
}

static void
test_qemu_gpu_no_display(void)
{
  TuBackend b;
  Run r;

  if (!spawn_qemu_gpu(&b))
    return;
  run_probe(&r, (const char *const[]){ "--no-display", "--device", "gpu", b.path, NULL });
  g_assert_cmpint(r.status, ==, 0);
  assert_line(r.out, "device:", "gpu (forced with --device)");
  g_assert_null(strstr(r.out, "display"));
  run_clear(&r);
  backend_stop(&b);
}

static void
test_null_device(void)
{
  TuBackend b;
  Run r;

  if (!spawn_null(&b))
    return;
  run_probe(&r, (const char *const[]){ b.path, NULL });
  g_assert_cmpint(r.status, ==, 0);
  assert_line(r.out, "device:", "unknown");
  assert_line(r.out, "queues:", "3");
  assert_line(r.out, "config:", "a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af (16 bytes)");
  g_assert_null(strstr(r.out, "display"));
  run_clear(&r);
  backend_stop(&b);
}

static void
test_unreachable(void)
{
  g_autofree char *dir = tu_make_tmpdir("vhu-probe-XXXXXX");
  g_autofree char *path = g_build_filename(dir, "absent.sock", NULL);
  Run r;

  run_probe(&r, (const char *const[]){ path, NULL });
  g_assert_cmpint(r.status, ==, 1);
  g_assert_nonnull(strstr(r.err, "cannot connect to"));
  g_assert_nonnull(strstr(r.err, path));
  run_clear(&r);
  g_rmdir(dir);
}

/* A listener that never answers: the probe gives up after --timeout. */
static void
test_silent_peer(void)
{
  g_autofree char *dir = tu_make_tmpdir("vhu-probe-XXXXXX");
  g_autofree char *path = g_build_filename(dir, "silent.sock", NULL);
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  Run r;

  g_strlcpy(sun.sun_path, path, sizeof sun.sun_path);
  g_assert_cmpint(bind(fd, (struct sockaddr *)&sun, sizeof sun), ==, 0);
  g_assert_cmpint(listen(fd, 4), ==, 0);
  run_probe(&r, (const char *const[]){ "--timeout", "300", path, NULL });
  g_assert_cmpint(r.status, ==, 1);
  g_assert_nonnull(strstr(r.err, "no reply to GET_FEATURES"));
  g_assert_nonnull(strstr(r.err, "300 ms"));
  run_clear(&r);
  close(fd);
  g_unlink(path);
  g_rmdir(dir);
}

static void
test_usage(void)
{
  Run r;

  run_probe(&r, (const char *const[]){ "--device", "modem", "x.sock", NULL });
  g_assert_cmpint(r.status, ==, 2);
  g_assert_nonnull(strstr(r.err, "--device"));
  run_clear(&r);
  run_probe(&r, (const char *const[]){ "--help", NULL });
  g_assert_cmpint(r.status, ==, 0);
  g_assert_nonnull(strstr(r.out, "virtio_gpu_config"));
  run_clear(&r);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/probe/usage", test_usage);
  g_test_add_func("/probe/unreachable", test_unreachable);
  g_test_add_func("/probe/silent-peer", test_silent_peer);
  g_test_add_func("/probe/null-device", test_null_device);
  g_test_add_func("/probe/qemu-gpu", test_qemu_gpu);
  g_test_add_func("/probe/qemu-gpu-no-display", test_qemu_gpu_no_display);
  return g_test_run();
}
