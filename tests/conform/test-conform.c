/* test-conform: gst-vhost-conform against real backends over real sockets.
 *
 * Our gst-vhost-gpu, gst-vhost-sound and the null device must pass (or be not-offered) every
 * check; the null device with each --fault must fail the group that fault
 * belongs to; QEMU's vhost-user-gpu must give the verdicts recorded in
 * docs/conformance.md. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>

static char *conform, *null_backend, *gpu_backend, *sound_backend;

typedef struct {
  int status;
  char *out;
  GHashTable *verdicts; /* id -> verdict */
} Run;

static void
run_clear(Run *r)
{
  g_free(r->out);
  g_clear_pointer(&r->verdicts, g_hash_table_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(Run, run_clear)

/* Runs the tool with @args (NULL-terminated) and parses its table. */
static void
run_conform(Run *r, const char *const *args)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) lines = NULL;
  int wait_status;

  g_ptr_array_add(argv, conform);
  for (guint i = 0; args[i] != NULL; i++)
    g_ptr_array_add(argv, (gpointer)args[i]);
  g_ptr_array_add(argv, NULL);
  g_assert_true(g_spawn_sync(NULL, (char **)argv->pdata, NULL, G_SPAWN_STDERR_TO_DEV_NULL, NULL,
                             NULL, &r->out, NULL, &wait_status, &error));
  g_assert_no_error(error);
  g_assert_true(WIFEXITED(wait_status));
  r->status = WEXITSTATUS(wait_status);
  r->verdicts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  lines = g_strsplit(r->out, "\n", -1);
  for (guint i = 1; lines[i] != NULL && lines[i][0] != '\0'; i++) {
    g_auto(GStrv) f = g_strsplit_set(lines[i], " ", -1);
    const char *verdict = NULL;

    for (guint k = 1; f[k] != NULL && verdict == NULL; k++)
      if (f[k][0] != '\0')
        verdict = f[k];
    g_assert_nonnull(verdict);
    g_hash_table_insert(r->verdicts, g_strdup(f[0]), g_strdup(verdict));
  }
}

static char *
start_arg(const char *binary, const char *extra)
{
  return g_strdup_printf("%s --socket-path {socket}%s%s", binary, extra != NULL ? " " : "",
                         extra != NULL ? extra : "");
}

/* Every verdict pass or not-offered, exit status 0, at least @min checks. */
static void
assert_all_pass(Run *r, guint min)
{
  GHashTableIter it;
  gpointer id, verdict;

  g_hash_table_iter_init(&it, r->verdicts);
  while (g_hash_table_iter_next(&it, &id, &verdict))
    if (strcmp(verdict, "pass") != 0 && strcmp(verdict, "not-offered") != 0)
      g_error("%s: %s\n%s", (char *)id, (char *)verdict, r->out);
  g_assert_cmpint(r->status, ==, 0);
  g_assert_cmpuint(g_hash_table_size(r->verdicts), >=, min);
}

static void
test_gpu_passes(void)
{
  g_autofree char *start = start_arg(gpu_backend, NULL);
  const char *args[] = { "--device", "gpu", "--start", start, NULL };
  g_auto(Run) r = { 0 };

  run_conform(&r, args);
  /* 50 device-independent checks and 34 of the GPU's own. */
  assert_all_pass(&r, 84);
}

static void
test_sound_passes(void)
{
  g_autofree char *start = start_arg(sound_backend, NULL);
  const char *args[] = { "--device", "sound", "--start", start, NULL };
  g_auto(Run) r = { 0 };

  run_conform(&r, args);
  /* 50 device-independent checks and 34 of the sound device's own. */
  assert_all_pass(&r, 84);
}

/* --socket-path: a backend we started; one that dies is reported once,
 * and the checks after it fail for want of a backend. */
static void
test_socket_path(void)
{
  g_autofree char *dir = g_dir_make_tmp("conform-XXXXXX", NULL);
  g_autofree char *path = g_build_filename(dir, "null.sock", NULL);
  const char *argv[] = { null_backend, "--socket-path", path, "--fault", "crash", NULL };
  const char *args[]
      = { "--device", "null", "--socket-path", path, "--only", "handshake,hostile", NULL };
  g_autoptr(GError) error = NULL;
  g_autoptr(GSubprocess) proc = NULL;
  g_autoptr(GInputStream) out = NULL;
  g_auto(Run) r = { 0 };
  char ready[6] = { 0 };

  proc = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDOUT_PIPE, &error);
  g_assert_no_error(error);
  out = g_object_ref(g_subprocess_get_stdout_pipe(proc));
  g_assert_true(g_input_stream_read_all(out, ready, 5, NULL, NULL, &error));
  g_assert_cmpstr(ready, ==, "ready");
  run_conform(&r, args);
  g_assert_cmpint(r.status, ==, 1);
  g_assert_cmpstr(g_hash_table_lookup(r.verdicts, "handshake.version-1"), ==, "pass");
  g_assert_cmpstr(g_hash_table_lookup(r.verdicts, "hostile.oversized-message"), ==, "crashed");
  g_assert_nonnull(strstr(r.out, "stopped accepting connections"));
  g_assert_cmpstr(g_hash_table_lookup(r.verdicts, "hostile.bad-version"), ==, "fail");
  g_assert_true(g_subprocess_wait(proc, NULL, &error));
  g_assert_true(g_subprocess_get_if_signaled(proc));
  g_unlink(path);
  g_rmdir(dir);
}

/* The vhostgpusrc element serves vhost-user itself, inside gst-launch-1.0. */
static void
test_element_passes(void)
{
  const char *build = g_getenv("GST_VHOST_BUILD_ROOT");
  g_autofree char *plugins = g_build_filename(build, "plugins", NULL);
  g_autofree char *so = g_build_filename(plugins, "libgstvhost.so", NULL);
  g_autofree char *launch = g_find_program_in_path("gst-launch-1.0");
  g_autofree char *start = NULL;
  const char *args[] = { "--device", "gpu", "--start", NULL, NULL };
  g_auto(Run) r = { 0 };

  g_autofree char *inspect = g_find_program_in_path("gst-inspect-1.0");
  g_auto(GStrv) env = g_environ_setenv(g_get_environ(), "GST_PLUGIN_PATH", plugins, TRUE);
  const char *inspect_argv[] = { inspect, "vhostgpusrc", NULL };
  int st = -1;

  /* Not built, or not loadable (a sanitizer build in a plain gst-launch). */
  if (launch == NULL || inspect == NULL || !g_file_test(so, G_FILE_TEST_EXISTS)
      || !g_spawn_sync(NULL, (char **)inspect_argv, env,
                       G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, NULL,
                       NULL, &st, NULL)
      || !g_spawn_check_wait_status(st, NULL)) {
    g_test_skip("no gst-launch-1.0, or the plugin is not built or cannot be loaded");
    return;
  }
  start = g_strdup_printf("env GST_PLUGIN_PATH=%s %s -q vhostgpusrc socket-path={socket} ! "
                          "fakesink",
                          plugins, launch);
  args[3] = start;
  run_conform(&r, args);
  assert_all_pass(&r, 84);
}

static void
test_null_passes(void)
{
  g_autofree char *start = start_arg(null_backend, NULL);
  const char *args[] = { "--device", "null", "--start", start, NULL };
  g_auto(Run) r = { 0 };

  run_conform(&r, args);
  assert_all_pass(&r, 50);
}

typedef struct {
  const char *fault;  /* vhu-null-backend --fault, NULL: none */
  const char *device; /* --device */
  const char *group;  /* --only */
  const char *check;  /* must be fail (or crashed when @crash) */
  gboolean crash;
} FaultCase;

static const FaultCase fault_cases[] = {
  { "no-pf-enable", "null", "handshake", "handshake.no-protocol-features" },
  { "reply-flags", "null", "reply", "reply.ack-every-request" },
  { "no-ack", "null", "reply", "reply.ack-every-request" },
  { "add-mem-reg", "null", "mem", "mem.add-mem-reg" },
  { "vring-base", "null", "vring", "vring.base-after-work" },
  { "event-idx", "null", "ring", "ring.event-idx" },
  { "config-size", "null", "config", "config.get" },
  { "status", "null", "status", "status.roundtrip" },
  { "inflight", "null", "inflight", "inflight.get-fd" },
  { "no-resubmit", "null", "inflight", "inflight.resubmit" },
  { "reconnect", "null", "reconnect", "reconnect.second-connection", TRUE },
  { "crash", "null", "hostile", "hostile.oversized-message", TRUE },
  /* An echoing device is no GPU: the device groups see it. */
  { NULL, "gpu", "gpu", "gpu.create-2d" },
  { NULL, "gpu", "display", "display.update-pixels" },
  { NULL, "sound", "sound", "sound.lifecycle-output" },
};

static void
test_fault(gconstpointer data)
{
  const FaultCase *fc = data;
  g_autofree char *extra = fc->fault != NULL ? g_strdup_printf("--fault %s", fc->fault) : NULL;
  g_autofree char *start = start_arg(null_backend, extra);
  g_autofree char *start4 = g_strdup_printf("%s --queues 4", start);
  /* A sound device has 4 queues. */
  const char *args[] = { "--device", fc->device, "--only",
                         fc->group,  "--start",  strcmp(fc->device, "sound") == 0 ? start4 : start,
                         NULL };
  g_auto(Run) r = { 0 };
  const char *v;

  run_conform(&r, args);
  g_assert_cmpint(r.status, ==, 1);
  v = g_hash_table_lookup(r.verdicts, fc->check);
  g_assert_nonnull(v);
  if (fc->crash ? strcmp(v, "crashed") != 0 && strcmp(v, "fail") != 0 : strcmp(v, "fail") != 0)
    g_error("%s: %s, expected %s\n%s", fc->check, v, fc->crash ? "crashed" : "fail", r.out);
  if (fc->fault != NULL && strcmp(fc->fault, "crash") == 0)
    g_assert_nonnull(strstr(r.out, "killed by signal 11 (SIGSEGV)"));
}

/* QEMU's verdicts that are not pass, as docs/conformance.md explains.
 * "crashed|pass": it exits with status 1 when its panic runs before it sees
 * the frontend close, with 0 otherwise; "fail|crashed": it zeroes the 1 GiB
 * it was asked for, and is killed if that outlasts the timeouts. */
static const char *const qemu_expected[][2] = {
  { "reply.ack-error", "fail" },
  { "reply.unknown-request", "crashed|pass" },
  { "mem.table-too-many", "crashed|pass" },
  { "mem.rem-unknown", "crashed|pass" },
  { "mem.add-without-fd", "crashed|pass" },
  { "vring.num-invalid", "fail" },
  { "vring.enable-cycle", "crashed|pass" },
  { "config.set-out-of-bounds", "fail" },
  { "status.roundtrip", "not-offered" },
  { "status.reset-device", "not-offered" },
  { "status.needs-reset", "not-offered" },
  { "inflight.get-fd", "not-offered" },
  { "inflight.resubmit", "not-offered" },
  { "reconnect.second-connection", "fail" },
  { "hostile.oversized-message", "crashed|pass" },
  { "hostile.queue-index", "fail" },
  { "hostile.desc-loop", "crashed" },
  { "hostile.desc-outside-memory", "crashed" },
  { "hostile.indirect-huge", "crashed" },
  { "gpu.config", "fail" },
  { "gpu.create-2d-huge", "fail|crashed" },
  { "gpu.create-2d-empty", "fail" },
  { "gpu.transfer-offset", "fail" },
  { "gpu.short-request", "fail" },
  { "gpu.edid", "fail" },
  { "display.socket-replaced", "crashed" },
};

static void
test_qemu(void)
{
  const char *qemu = "/usr/lib/qemu/vhost-user-gpu";
  /* It logs guest errors as criticals. */
  g_autofree char *start = g_strdup_printf("env -u G_DEBUG %s --socket-path {socket}", qemu);
  const char *args[] = { "--device", "gpu", "--start", start, NULL };
  g_auto(Run) r = { 0 };
  GHashTableIter it;
  gpointer id, verdict;

  if (!g_file_test(qemu, G_FILE_TEST_IS_EXECUTABLE)) {
    g_test_skip("QEMU's vhost-user-gpu is not installed");
    return;
  }
  run_conform(&r, args);
  g_assert_cmpint(r.status, ==, 1);
  g_hash_table_iter_init(&it, r.verdicts);
  while (g_hash_table_iter_next(&it, &id, &verdict)) {
    const char *want = "pass";

    /* Dies of SIGPIPE or not depending on when it writes the reply. */
    if (strcmp(id, "reconnect.close-with-reply-pending") == 0)
      continue;
    for (guint i = 0; i < G_N_ELEMENTS(qemu_expected); i++)
      if (strcmp(id, qemu_expected[i][0]) == 0)
        want = qemu_expected[i][1];
    g_auto(GStrv) alts = g_strsplit(want, "|", -1);

    if (!g_strv_contains((const char *const *)alts, verdict))
      g_error("QEMU %s: %s, docs/conformance.md records %s\n%s", (char *)id, (char *)verdict, want,
              r.out);
  }
}

static void
test_outputs(void)
{
  g_autofree char *dir = g_dir_make_tmp("conform-XXXXXX", NULL);
  g_autofree char *json_path = g_build_filename(dir, "out.json", NULL);
  g_autofree char *start = start_arg(null_backend, NULL);
  const char *args[] = { "--device", "null",    "--only", "vring,config", "--start", start,
                         "--json",   json_path, NULL };
  const char *tap_args[]
      = { "--device", "null", "--only", "vring", "--start", start, "--tap", NULL };
  const char *list_args[] = { "--device", "gpu", "--list", NULL };
  g_auto(Run) r = { 0 }, l = { 0 };
  g_autofree char *json = NULL;

  run_conform(&r, args);
  g_assert_cmpint(r.status, ==, 0);
  g_assert_true(g_file_get_contents(json_path, &json, NULL, NULL));
  g_assert_nonnull(strstr(json, "\"device\": \"null\""));
  g_assert_nonnull(strstr(json, "\"backend\": \""));
  g_assert_nonnull(strstr(json, "{\"id\": \"vring.base-after-work\", \"group\": \"vring\", "
                                "\"section\": \""));
  g_assert_nonnull(strstr(json, "\"verdict\": \"pass\", \"detail\": \"base 5 after 5 requests\""));
  g_assert_null(strstr(json, "\"group\": \"mem\""));

  {
    g_autoptr(GError) error = NULL;
    g_autofree char *out = NULL;
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    int st;

    g_ptr_array_add(argv, conform);
    for (guint i = 0; tap_args[i] != NULL; i++)
      g_ptr_array_add(argv, (gpointer)tap_args[i]);
    g_ptr_array_add(argv, NULL);
    g_assert_true(g_spawn_sync(NULL, (char **)argv->pdata, NULL, G_SPAWN_STDERR_TO_DEV_NULL, NULL,
                               NULL, &out, NULL, &st, &error));
    g_assert_true(g_str_has_prefix(out, "TAP version 13\n1..5\nok 1 - vring.base-after-work\n"));
  }
  run_conform(&l, list_args);
  g_assert_nonnull(strstr(l.out, "display.socket-replaced"));
  g_unlink(json_path);
  g_rmdir(dir);
}

static void
test_usage(void)
{
  g_autofree char *help = NULL, *man = NULL;
  g_autofree char *man_path
      = g_build_filename(g_getenv("GST_VHOST_SOURCE_ROOT"), "docs", "gst-vhost-conform.1", NULL);
  const char *argv[] = { conform, "--help", NULL };
  const char *opts[]
      = { "--device", "--socket-path", "--start", "--json", "--tap", "--only", "--list" };
  const char *bad[] = { conform, "--device", "gpu", NULL };
  int st;

  g_assert_true(
      g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &help, NULL, &st, NULL));
  g_assert_true(g_file_get_contents(man_path, &man, NULL, NULL));
  for (guint i = 0; i < G_N_ELEMENTS(opts); i++) {
    g_auto(GStrv) parts = g_strsplit(opts[i], "-", -1);
    g_autofree char *roff = g_strjoinv("\\-", parts);

    g_assert_nonnull(strstr(help, opts[i]));
    g_assert_nonnull(strstr(man, roff));
  }
  g_assert_true(g_spawn_sync(NULL, (char **)bad, NULL, G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, NULL,
                             NULL, &st, NULL));
  g_assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
}

int
main(int argc, char **argv)
{
  const char *build = g_getenv("GST_VHOST_BUILD_ROOT");

  g_test_init(&argc, &argv, NULL);
  g_assert_nonnull(build);
  conform = g_build_filename(build, "programs", "gst-vhost-conform", NULL);
  gpu_backend = g_build_filename(build, "programs", "gst-vhost-gpu", NULL);
  sound_backend = g_build_filename(build, "programs", "gst-vhost-sound", NULL);
  null_backend = g_strdup(g_getenv("VHU_NULL_BACKEND"));
  g_assert_nonnull(null_backend);
  g_test_add_func("/conform/gst-vhost-gpu", test_gpu_passes);
  g_test_add_func("/conform/gst-vhost-sound", test_sound_passes);
  g_test_add_func("/conform/vhostgpusrc", test_element_passes);
  g_test_add_func("/conform/null", test_null_passes);
  for (guint i = 0; i < G_N_ELEMENTS(fault_cases); i++) {
    g_autofree char *path
        = g_strdup_printf("/conform/fault/%s/%s", fault_cases[i].group,
                          fault_cases[i].fault != NULL ? fault_cases[i].fault : "echo-device");
    g_test_add_data_func(path, &fault_cases[i], test_fault);
  }
  g_test_add_func("/conform/qemu-vhost-user-gpu", test_qemu);
  g_test_add_func("/conform/socket-path", test_socket_path);
  g_test_add_func("/conform/outputs", test_outputs);
  g_test_add_func("/conform/usage", test_usage);
  return g_test_run();
}
