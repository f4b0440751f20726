/* vcf-target.c: the backend under test, as a socket or a process we run. */
#include "vcf-target.h"

#include <errno.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vhu-frontend.h"

#define START_TIMEOUT_MS 10000
#define PROBE_TIMEOUT_MS 3000
#define EXIT_TIMEOUT_MS  3000

struct _VcfTarget {
  char *describe;
  char *path;
  /* --start */
  char **argv_template;
  char *dir;
  GPid pid;
  int pidfd;
  gboolean gone; /* socket mode: no longer reachable */
};

VcfTarget *
vcf_target_new_socket(const char *path)
{
  VcfTarget *t = g_new0(VcfTarget, 1);

  t->path = g_strdup(path);
  t->describe = g_strdup_printf("socket %s", path);
  t->pid = 0;
  t->pidfd = -1;
  return t;
}

VcfTarget *
vcf_target_new_command(const char *command, GError **error)
{
  g_autoptr(GError) local = NULL;
  g_auto(GStrv) argv = NULL;
  gboolean has_socket = FALSE;
  VcfTarget *t;

  if (!g_shell_parse_argv(command, NULL, &argv, &local)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "--start: %s", local->message);
    return NULL;
  }
  for (guint i = 0; argv[i] != NULL; i++)
    has_socket = has_socket || strstr(argv[i], "{socket}") != NULL;
  if (!has_socket) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "--start: the command must contain {socket}");
    return NULL;
  }
  t = g_new0(VcfTarget, 1);
  t->argv_template = g_steal_pointer(&argv);
  t->describe = g_strdup(command);
  t->pidfd = -1;
  t->dir = g_dir_make_tmp("gst-vhost-conform-XXXXXX", error);
  if (t->dir == NULL) {
    vcf_target_free(t);
    return NULL;
  }
  t->path = g_build_filename(t->dir, "backend.sock", NULL);
  return t;
}

static gboolean
proc_exited(VcfTarget *t, int timeout_ms, int *status)
{
  struct pollfd p = { .fd = t->pidfd, .events = POLLIN };

  if (t->pid == 0)
    return TRUE;
  if (t->pidfd >= 0 && timeout_ms > 0) {
    while (poll(&p, 1, timeout_ms) < 0 && errno == EINTR)
      ;
  } else if (timeout_ms > 0) {
    /* No pidfd (a kernel before 5.3): poll the exit status. */
    for (int waited = 0; waited < timeout_ms && waitpid(t->pid, status, WNOHANG) == 0; waited++)
      g_usleep(1000);
    if (waitpid(t->pid, status, WNOHANG) < 0 && errno == ECHILD) {
      t->pid = 0;
      return TRUE;
    }
  }
  if (waitpid(t->pid, status, WNOHANG) != t->pid)
    return FALSE;
  if (t->pidfd >= 0)
    close(t->pidfd);
  t->pidfd = -1;
  t->pid = 0;
  return TRUE;
}

static void
stop_proc(VcfTarget *t)
{
  int status;

  if (t->pid == 0)
    return;
  kill(t->pid, SIGTERM);
  if (!proc_exited(t, EXIT_TIMEOUT_MS, &status)) {
    kill(t->pid, SIGKILL);
    proc_exited(t, EXIT_TIMEOUT_MS, &status);
  }
}

void
vcf_target_free(VcfTarget *t)
{
  if (t == NULL)
    return;
  stop_proc(t);
  if (t->dir != NULL) {
    g_unlink(t->path);
    g_rmdir(t->dir);
  }
  g_strfreev(t->argv_template);
  g_free(t->dir);
  g_free(t->path);
  g_free(t->describe);
  g_free(t);
}

const char *
vcf_target_describe(VcfTarget *t)
{
  return t->describe;
}

gboolean
vcf_target_is_gone(VcfTarget *t)
{
  return t->gone;
}

static char **
expand_argv(VcfTarget *t)
{
  guint n = g_strv_length(t->argv_template);
  char **argv = g_new0(char *, n + 1);

  for (guint i = 0; i < n; i++) {
    g_auto(GStrv) parts = g_strsplit(t->argv_template[i], "{socket}", -1);

    argv[i] = g_strjoinv(t->path, parts);
  }
  return argv;
}

static gboolean
spawn(VcfTarget *t, GError **error)
{
  g_auto(GStrv) argv = expand_argv(t);
  gboolean quiet = g_getenv("GST_VHOST_CONFORM_BACKEND_LOG") == NULL;
  GSpawnFlags flags = G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDOUT_TO_DEV_NULL
                      | (quiet ? G_SPAWN_STDERR_TO_DEV_NULL : 0);
  gint64 deadline;

  g_unlink(t->path);
  if (!g_spawn_async(NULL, argv, NULL, flags, NULL, NULL, &t->pid, error))
    return FALSE;
  t->pidfd = (int)syscall(SYS_pidfd_open, t->pid, 0);
  /* Listening is visible as the socket file; connecting is left to the
   * check, so a backend that serves a single connection keeps it. */
  deadline = g_get_monotonic_time() + START_TIMEOUT_MS * 1000;
  while (!g_file_test(t->path, G_FILE_TEST_EXISTS)) {
    int status;

    if (proc_exited(t, 0, &status) || g_get_monotonic_time() > deadline) {
      stop_proc(t);
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                  "the backend did not create its socket within %d ms", START_TIMEOUT_MS);
      return FALSE;
    }
    proc_exited(t, 2, &status);
  }
  return TRUE;
}

const char *
vcf_target_ensure(VcfTarget *t, GError **error)
{
  int status;

  if (t->argv_template == NULL) {
    if (t->gone) {
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_CONNECTED,
                          "the backend stopped accepting connections");
      return NULL;
    }
    return t->path;
  }
  if ((t->pid == 0 || proc_exited(t, 0, &status)) && !spawn(t, error))
    return NULL;
  return t->path;
}

static gboolean
proc_alive(gpointer data)
{
  VcfTarget *t = data;
  int status;

  return t->pid != 0 && !proc_exited(t, 0, &status);
}

static char *
describe_status(int status)
{
  if (WIFSIGNALED(status)) {
    const char *abbrev = sigabbrev_np(WTERMSIG(status));

    return g_strdup_printf("killed by signal %d (SIG%s)", WTERMSIG(status),
                           abbrev != NULL ? abbrev : "?");
  }
  return g_strdup_printf("exited with status %d", WEXITSTATUS(status));
}

static gboolean
probe(VcfTarget *t)
{
  g_autoptr(VhuFrontend) fe = NULL;
  guint64 features;

  fe = vhu_frontend_connect_wait(t->path, PROBE_TIMEOUT_MS,
                                 t->argv_template != NULL ? proc_alive : NULL, t, NULL);
  if (fe == NULL)
    return FALSE;
  vhu_frontend_set_timeout(fe, PROBE_TIMEOUT_MS);
  return vhu_frontend_get_u64(fe, VHU_GET_FEATURES, &features, NULL);
}

gboolean
vcf_target_survived(VcfTarget *t, char **why)
{
  int status = 0;

  *why = NULL;
  if (t->argv_template == NULL) {
    if (t->gone || probe(t))
      return TRUE;
    t->gone = TRUE;
    *why = g_strdup("the backend stopped accepting connections");
    return FALSE;
  }
  if (t->pid == 0)
    return TRUE;
  if (!proc_exited(t, 0, &status) && probe(t))
    return TRUE;
  /* The probe failed: the backend is going, gone, or hung. */
  if (!proc_exited(t, EXIT_TIMEOUT_MS, &status)) {
    stop_proc(t);
    *why = g_strdup("the backend stopped answering (it was killed)");
    return FALSE;
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return TRUE; /* served its one connection; started again for the next check */
  *why = describe_status(status);
  return FALSE;
}
