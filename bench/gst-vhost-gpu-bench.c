/* gst-vhost-gpu-bench: backend CPU time per full frame, gst-vhost-gpu against
 * QEMU's vhost-user-gpu and against one memcpy of the frame.
 *
 * One frontend driver (vhost/vhu-frontend) and one display server
 * (vhost/vhu-display, playing QEMU's display end) drive each backend in turn
 * through the same sequence: a 1920x1080 B8G8R8X8 resource with its backing
 * in memfd guest memory, shown on scanout 0; then, per frame,
 * TRANSFER_TO_HOST_2D of the whole frame, RESOURCE_FLUSH of the whole frame,
 * and a wait until the display server has received the UPDATE.  The backend's
 * CPU time is the run time of all its threads (/proc/PID/task/(*)/schedstat,
 * nanoseconds) over the measured frames; /proc/PID/stat utime+stime (clock
 * ticks) is printed beside it as a cross-check.  The memcpy figures are one
 * copy of the frame in this process (thread CPU time), measured twice: warm,
 * between two prefaulted buffers that stay in the last-level cache, and
 * cold, rotating through enough prefaulted pairs to exceed it three times,
 * so that source and destination come from memory.
 *
 * --small-commands measures the other end: backend CPU time per one-pixel
 * TRANSFER_TO_HOST_2D (into a 16x16 resource with backing, answered OK),
 * one per kick and 64 per kick, for both backends in one run, with the
 * driver and both backends pinned to one CPU so that every wake-up is a
 * plain context switch and the figure is the backend's own cost. */
#include <signal.h>
#include <dirent.h>
#include <errno.h>
#include <gio/gio.h>
#include <linux/virtio_gpu.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench-util.h"

#ifndef GST_VHOST_GPU_PATH
#define GST_VHOST_GPU_PATH "gst-vhost-gpu"
#endif
#define QEMU_GPU_PATH "/usr/lib/qemu/vhost-user-gpu"
#define BIT(n)        (G_GUINT64_CONSTANT(1) << (n))
#define GUEST_GPA     0x100000ull
#define WAIT_MS       10000

typedef struct {
  char *ours;
  char *qemu;
  int frames;
  int warmup;
  int width, height;
  gboolean no_qemu;
  gboolean small; /* --small-commands */
  double seconds; /* per small-command run */
  int repeat;     /* small-command runs per figure (median) */
  int per_kick;   /* small commands: 0 both, or only 1 or 64 */
} Options;

typedef struct {
  const char *name;
  BenchBackend be;
  guint64 frame_bytes;
  /* results */
  double cpu_ms, ticks_ms, wall_ms;
  GString *threads; /* "name x.xxx ms, ..." per frame */
  gboolean ok;
} Backend;

/* --- process CPU time ------------------------------------------------------ */

/* Nanoseconds on CPU of all threads of @pid. */
static guint64
task_cpu_ns(const char *pid)
{
  g_autofree char *dir = g_strdup_printf("/proc/%s/task", pid);
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  const char *name;
  guint64 total = 0;

  if (d == NULL)
    return 0;
  while ((name = g_dir_read_name(d)) != NULL) {
    g_autofree char *path = g_strdup_printf("%s/%s/schedstat", dir, name);
    g_autofree char *text = NULL;

    if (g_file_get_contents(path, &text, NULL, NULL))
      total += g_ascii_strtoull(text, NULL, 10);
  }
  return total;
}

/* Run time per thread name of @pid, nanoseconds (threads of one name summed). */
static GHashTable *
thread_cpu_ns(const char *pid)
{
  g_autofree char *dir = g_strdup_printf("/proc/%s/task", pid);
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  GHashTable *t = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  const char *name;

  while (d != NULL && (name = g_dir_read_name(d)) != NULL) {
    g_autofree char *sp = g_strdup_printf("%s/%s/schedstat", dir, name);
    g_autofree char *cp = g_strdup_printf("%s/%s/comm", dir, name);
    g_autofree char *text = NULL, *comm = NULL;
    guint64 *v;

    if (!g_file_get_contents(sp, &text, NULL, NULL) || !g_file_get_contents(cp, &comm, NULL, NULL))
      continue;
    g_strstrip(comm);
    v = g_hash_table_lookup(t, comm);
    if (v == NULL) {
      v = g_new0(guint64, 1);
      g_hash_table_insert(t, g_strdup(comm), v);
    }
    *v += g_ascii_strtoull(text, NULL, 10);
  }
  return t;
}

/* utime + stime of @pid in milliseconds (clock-tick resolution). */
static double
stat_cpu_ms(const char *pid)
{
  g_autofree char *path = g_strdup_printf("/proc/%s/stat", pid);
  g_autofree char *text = NULL;
  g_auto(GStrv) fields = NULL;
  const char *p;

  if (!g_file_get_contents(path, &text, NULL, NULL) || (p = strrchr(text, ')')) == NULL)
    return 0;
  /* after "pid (comm)": field 3 is the state; utime and stime are 14 and 15 */
  fields = g_strsplit(p + 2, " ", 0);
  if (g_strv_length(fields) < 13)
    return 0;
  return (double)(g_ascii_strtoull(fields[11], NULL, 10) + g_ascii_strtoull(fields[12], NULL, 10))
         * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

static double
thread_cpu_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* --- backends -------------------------------------------------------------- */

static guint32
cmd(Backend *b, const void *req, gsize len, GError **error)
{
  struct virtio_gpu_ctrl_hdr hdr = { 0 };
  gssize n = vhu_driver_queue_transact(vhu_frontend_get_queue(b->be.fe, 0), req, len, &hdr,
                                       sizeof hdr, error);

  return n >= (gssize)sizeof hdr ? hdr.type : 0;
}

static gboolean
expect_ok(Backend *b, const void *req, gsize len, const char *what, GError **error)
{
  guint32 type = cmd(b, req, len, error);

  if (type == VIRTIO_GPU_RESP_OK_NODATA)
    return TRUE;
  if (error != NULL && *error == NULL)
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s answered 0x%x", what, type);
  return FALSE;
}

/* Spawns @binary, connects, starts the device, shows a full-screen
 * resource whose backing is filled with a pattern. */
static gboolean
backend_start(Backend *b, const char *binary, const Options *opt, GError **error)
{
  const VhuDisplayConfig dc = { 1, (guint)opt->width, (guint)opt->height, 0x3, FALSE };
  const guint sizes[2] = { 64, 16 };
  guint32 w = (guint32)opt->width, h = (guint32)opt->height;
  struct virtio_gpu_resource_create_2d create = {
    { .type = VIRTIO_GPU_CMD_RESOURCE_CREATE_2D }, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h
  };
  struct {
    struct virtio_gpu_resource_attach_backing a;
    struct virtio_gpu_mem_entry e;
  } attach = { { { .type = VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING }, 1, 1 }, { 0 } };
  struct virtio_gpu_set_scanout scanout
      = { { .type = VIRTIO_GPU_CMD_SET_SCANOUT }, { 0, 0, w, h }, 0, 1 };
  guint64 gpa;
  guint8 *pixels;

  b->frame_bytes = (guint64)w * h * 4;
  if (!bench_backend_dir(&b->be, "gpu-bench-XXXXXX", "gpu.sock", error))
    return FALSE;
  /* Neither backend announces readiness on a pipe we can rely on for both:
   * the socket accepting is the event. */
  b->be.proc
      = bench_spawn(G_SUBPROCESS_FLAGS_STDOUT_SILENCE | G_SUBPROCESS_FLAGS_STDERR_SILENCE, -1,
                    error, (const char *const[]){ binary, "--socket-path", b->be.path, NULL });
  if (b->be.proc == NULL || !bench_backend_connect(&b->be, error)
      || !vhu_frontend_init(b->be.fe, G_MAXUINT64, error)
      || !vhu_frontend_add_region(b->be.fe, GUEST_GPA, (gsize)b->frame_bytes + (16u << 20), error))
    return FALSE;
  b->be.ds = vhu_display_server_new(&dc);
  if (!vhu_display_server_attach(b->be.ds, b->be.fe, error)
      || !vhu_frontend_start(b->be.fe, BIT(VIRTIO_GPU_F_EDID) | BIT(28) | BIT(29), sizes, 2, error))
    return FALSE;
  gpa = vhu_frontend_alloc(b->be.fe, (gsize)b->frame_bytes, 4096);
  pixels = vhu_frontend_gpa_to_ptr(b->be.fe, gpa, (gsize)b->frame_bytes);
  if (pixels == NULL) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "no guest memory for the frame");
    return FALSE;
  }
  for (guint64 i = 0; i < b->frame_bytes; i++)
    pixels[i] = (guint8)(i * 7 + i / 4096);
  attach.e = (struct virtio_gpu_mem_entry){ gpa, (guint32)b->frame_bytes, 0 };
  return expect_ok(b, &create, sizeof create, "RESOURCE_CREATE_2D", error)
         && expect_ok(b, &attach, sizeof attach, "RESOURCE_ATTACH_BACKING", error)
         && expect_ok(b, &scanout, sizeof scanout, "SET_SCANOUT", error);
}

/* TRANSFER + FLUSH of the whole frame, until the display has it. */
static gboolean
frame(Backend *b, const Options *opt, GError **error)
{
  guint32 w = (guint32)opt->width, h = (guint32)opt->height;
  struct virtio_gpu_transfer_to_host_2d t
      = { { .type = VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D }, { 0, 0, w, h }, 0, 1, 0 };
  struct virtio_gpu_resource_flush f
      = { { .type = VIRTIO_GPU_CMD_RESOURCE_FLUSH }, { 0, 0, w, h }, 1, 0 };
  VhuDisplayStats st;

  vhu_display_server_get_stats(b->be.ds, &st);
  if (!expect_ok(b, &t, sizeof t, "TRANSFER_TO_HOST_2D", error)
      || !expect_ok(b, &f, sizeof f, "RESOURCE_FLUSH", error))
    return FALSE;
  if (!vhu_display_server_wait_updates(b->be.ds, st.updates + 1, WAIT_MS)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "no UPDATE reached the display");
    return FALSE;
  }
  return TRUE;
}

static gboolean
measure(Backend *b, const char *binary, const Options *opt, GError **error)
{
  VhuDisplayStats st0, st1;
  g_autoptr(GHashTable) th0 = NULL, th1 = NULL;
  GHashTableIter it;
  gpointer key, val;
  const char *pid;
  guint64 ns0, ns1;
  double ticks0, ticks1;
  gint64 t0, t1;

  if (!backend_start(b, binary, opt, error))
    return FALSE;
  pid = g_subprocess_get_identifier(b->be.proc);
  for (int i = 0; i < opt->warmup; i++) {
    if (!frame(b, opt, error))
      return FALSE;
  }
  vhu_display_server_get_stats(b->be.ds, &st0);
  th0 = thread_cpu_ns(pid);
  ns0 = task_cpu_ns(pid);
  ticks0 = stat_cpu_ms(pid);
  t0 = g_get_monotonic_time();
  for (int i = 0; i < opt->frames; i++) {
    if (!frame(b, opt, error))
      return FALSE;
  }
  t1 = g_get_monotonic_time();
  ns1 = task_cpu_ns(pid);
  th1 = thread_cpu_ns(pid);
  ticks1 = stat_cpu_ms(pid);
  vhu_display_server_get_stats(b->be.ds, &st1);
  if (st1.update_bytes - st0.update_bytes < b->frame_bytes * (guint64)opt->frames) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                "the display received %" G_GUINT64_FORMAT " pixel bytes, not %" G_GUINT64_FORMAT,
                st1.update_bytes - st0.update_bytes, b->frame_bytes * (guint64)opt->frames);
    return FALSE;
  }
  b->cpu_ms = (double)(ns1 - ns0) / 1e6 / opt->frames;
  b->ticks_ms = (ticks1 - ticks0) / opt->frames;
  b->wall_ms = (double)(t1 - t0) / 1e3 / opt->frames;
  b->threads = g_string_new(NULL);
  g_hash_table_iter_init(&it, th1);
  while (g_hash_table_iter_next(&it, &key, &val)) {
    guint64 *before = g_hash_table_lookup(th0, key);
    guint64 d = *(guint64 *)val - (before != NULL ? *before : 0);

    if (d * 100 >= ns1 - ns0) /* at least 1% */
      g_string_append_printf(b->threads, "%s%s %.3f ms", b->threads->len ? ", " : "", (char *)key,
                             (double)d / 1e6 / opt->frames);
  }
  b->ok = TRUE;
  return TRUE;
}

/* --- small commands ---------------------------------------------------------- */

typedef struct {
  const char *name;
  BenchBackend be;
  double ns[2];           /* backend CPU per request, 1 and 64 per kick; < 0: none */
  GHashTable *threads[2]; /* thread name -> ns summed over the measured runs */
  guint64 requests[2];    /* measured requests behind threads[] */
} Small;

static const guint small_batches[2] = { 1, BENCH_MAX_BATCH };

/* Pins this process to the first CPU it may use; returns it, or -1. */
static int
pin_first_cpu(GError **error)
{
  cpu_set_t allowed, set;

  if (sched_getaffinity(0, sizeof allowed, &allowed) < 0) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "sched_getaffinity: %s",
                g_strerror(errno));
    return -1;
  }
  for (int i = 0; i < CPU_SETSIZE; i++) {
    if (!CPU_ISSET(i, &allowed))
      continue;
    CPU_ZERO(&set);
    CPU_SET(i, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0) {
      g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "sched_setaffinity: %s",
                  g_strerror(errno));
      return -1;
    }
    return i;
  }
  g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_FAILED, "no CPU allowed");
  return -1;
}

/* Spawns @binary on @cpu, starts the device (256-entry control ring) with a
 * display attached, and makes resource 1: 16x16 with a backing. */
static gboolean
small_start(Small *b, const char *binary, int cpu, GError **error)
{
  const VhuDisplayConfig dc = { 1, 640, 480, 0x3, FALSE };
  const guint sizes[2] = { 256, 16 };
  struct virtio_gpu_resource_create_2d create = {
    { .type = VIRTIO_GPU_CMD_RESOURCE_CREATE_2D }, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16
  };
  struct {
    struct virtio_gpu_resource_attach_backing a;
    struct virtio_gpu_mem_entry e;
  } attach = { { { .type = VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING }, 1, 1 }, { 0 } };
  Backend tmp = { 0 };
  gboolean ok;

  if (!bench_backend_dir(&b->be, "gpu-bench-XXXXXX", "gpu.sock", error))
    return FALSE;
  b->be.proc
      = bench_spawn(G_SUBPROCESS_FLAGS_STDOUT_SILENCE | G_SUBPROCESS_FLAGS_STDERR_SILENCE, cpu,
                    error, (const char *const[]){ binary, "--socket-path", b->be.path, NULL });
  if (b->be.proc == NULL || !bench_backend_connect(&b->be, error)
      || !vhu_frontend_init(b->be.fe, G_MAXUINT64, error)
      || !vhu_frontend_add_region(b->be.fe, GUEST_GPA, 4u << 20, error))
    return FALSE;
  b->be.ds = vhu_display_server_new(&dc);
  if (!vhu_display_server_attach(b->be.ds, b->be.fe, error)
      || !vhu_frontend_start(b->be.fe, BIT(VIRTIO_GPU_F_EDID) | BIT(28) | BIT(29), sizes, 2, error))
    return FALSE;
  attach.e = (struct virtio_gpu_mem_entry){ vhu_frontend_alloc(b->be.fe, 16 * 16 * 4, 4096),
                                            16 * 16 * 4, 0 };
  tmp.be.fe = b->be.fe; /* cmd() needs only the frontend */
  ok = expect_ok(&tmp, &create, sizeof create, "RESOURCE_CREATE_2D", error)
       && expect_ok(&tmp, &attach, sizeof attach, "RESOURCE_ATTACH_BACKING", error);
  return ok;
}

static void
add_thread_deltas(GHashTable *sum, GHashTable *before, GHashTable *after)
{
  GHashTableIter it;
  gpointer key, val;

  g_hash_table_iter_init(&it, after);
  while (g_hash_table_iter_next(&it, &key, &val)) {
    guint64 *b = g_hash_table_lookup(before, key);
    guint64 *acc = g_hash_table_lookup(sum, key);

    if (acc == NULL) {
      acc = g_new0(guint64, 1);
      g_hash_table_insert(sum, g_strdup(key), acc);
    }
    *acc += *(guint64 *)val - (b != NULL ? *b : 0);
  }
}

/* Backend CPU nanoseconds per request over @seconds of @batch-sized rounds
 * (after 0.1 s of warm-up); < 0 on failure. */
static double
small_run(Small *b, guint k, const BenchRequest *r, const BenchSlots *s, const Options *opt,
          GError **error)
{
  VhuDriverQueue *q = vhu_frontend_get_queue(b->be.fe, 0);
  const char *pid = g_subprocess_get_identifier(b->be.proc);
  g_autoptr(GHashTable) th0 = NULL, th1 = NULL;
  guint batch = small_batches[k];
  gint64 end = g_get_monotonic_time() + 100 * 1000;
  guint64 ns0, ns1, n = 0;

  if (pid == NULL) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_FAILED, "the backend exited");
    return -1;
  }
  while (g_get_monotonic_time() < end) {
    if (!bench_round_trip(q, r, s, batch, FALSE, error))
      return -1;
  }
  th0 = thread_cpu_ns(pid);
  ns0 = task_cpu_ns(pid);
  end = g_get_monotonic_time() + (gint64)(opt->seconds * G_USEC_PER_SEC);
  do {
    if (!bench_round_trip(q, r, s, batch, FALSE, error))
      return -1;
    n += batch;
  } while (g_get_monotonic_time() < end);
  ns1 = task_cpu_ns(pid);
  th1 = thread_cpu_ns(pid);
  add_thread_deltas(b->threads[k], th0, th1);
  b->requests[k] += n;
  return (double)(ns1 - ns0) / (double)n;
}

static int
cmp_double(gconstpointer a, gconstpointer b)
{
  double x = *(const double *)a, y = *(const double *)b;

  return x < y ? -1 : x > y;
}

static gboolean
small_measure(Small *b, const char *binary, int cpu, const Options *opt, GError **error)
{
  const struct virtio_gpu_transfer_to_host_2d t
      = { { .type = VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D }, { 0, 0, 1, 1 }, 0, 1, 0 };
  const BenchRequest r
      = { &t, sizeof t, sizeof(struct virtio_gpu_ctrl_hdr), VIRTIO_GPU_RESP_OK_NODATA };
  g_autofree double *runs = g_new(double, opt->repeat);
  BenchSlots s;

  if (!small_start(b, binary, cpu, error) || !bench_prepare_slots(b->be.fe, &r, &s, error))
    return FALSE;
  for (guint k = 0; k < 2; k++) {
    if (opt->per_kick != 0 && (guint)opt->per_kick != small_batches[k])
      continue;
    for (int i = 0; i < opt->repeat; i++) {
      runs[i] = small_run(b, k, &r, &s, opt, error);
      if (runs[i] < 0)
        return FALSE;
    }
    qsort(runs, (gsize)opt->repeat, sizeof *runs, cmp_double);
    b->ns[k] = runs[opt->repeat / 2];
  }
  return TRUE;
}

static void
print_threads(const Small *b, guint k)
{
  GHashTableIter it;
  gpointer key, val;
  guint64 total = 0;

  g_hash_table_iter_init(&it, b->threads[k]);
  while (g_hash_table_iter_next(&it, &key, &val))
    total += *(guint64 *)val;
  printf("  %-20s %2u per kick:", b->name, small_batches[k]);
  g_hash_table_iter_init(&it, b->threads[k]);
  while (g_hash_table_iter_next(&it, &key, &val)) {
    if (*(guint64 *)val * 100 >= total) /* at least 1% */
      printf(" %s %.0f ns", (char *)key, (double)*(guint64 *)val / (double)b->requests[k]);
  }
  printf("\n");
}

static int
small_commands(const Options *opt)
{
  g_autoptr(GError) error = NULL;
  Small ours = { .name = "gst-vhost-gpu" }, qemu = { .name = "QEMU vhost-user-gpu" };
  Small *both[2] = { &ours, &qemu };
  const char *binaries[2] = { opt->ours, opt->qemu };
  int cpu = pin_first_cpu(&error), status = EXIT_SUCCESS;

  if (cpu < 0) {
    g_printerr("%s\n", error->message);
    return EXIT_FAILURE;
  }
  printf("gst-vhost-gpu-bench --small-commands: TRANSFER_TO_HOST_2D of 1x1 pixels into a 16x16 "
         "resource,\n1 and %u per kick (256-entry ring, EVENT_IDX), driver and backends pinned to "
         "CPU %d;\nbackend CPU per request: run time of all its threads (schedstat, ns), median "
         "of %d runs of %.1f s\n\n",
         BENCH_MAX_BATCH, cpu, opt->repeat, opt->seconds);
  fflush(stdout);
  for (guint i = 0; i < 2; i++) {
    Small *b = both[i];

    b->ns[0] = b->ns[1] = -1;
    b->threads[0] = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    b->threads[1] = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    if (i == 1 && opt->no_qemu)
      continue;
    if (i == 1 && !g_file_test(opt->qemu, G_FILE_TEST_IS_EXECUTABLE)) {
      g_printerr("%s: %s not found, skipped\n", b->name, opt->qemu);
      continue;
    }
    if (!small_measure(b, binaries[i], cpu, opt, &error)) {
      g_printerr("%s: %s\n", b->name, error->message);
      g_clear_error(&error);
      b->ns[0] = b->ns[1] = -1;
      status = EXIT_FAILURE;
    }
    bench_backend_clear(&b->be);
  }
  printf("%-28s %14s %14s\n", "CPU per request", "1 per kick", "64 per kick");
  for (guint i = 0; i < 2; i++) {
    printf("%-28s", both[i]->name);
    for (guint k = 0; k < 2; k++) {
      if (both[i]->ns[k] < 0)
        printf(" %14s", "n/a");
      else
        printf(" %11.0f ns", both[i]->ns[k]);
    }
    printf("\n");
  }
  if (opt->per_kick == 0 && ours.ns[0] > 0 && qemu.ns[0] > 0 && ours.ns[1] > 0 && qemu.ns[1] > 0) {
    double r1 = qemu.ns[0] / ours.ns[0], r64 = qemu.ns[1] / ours.ns[1];

    printf("%-28s %13.2fx %13.2fx\n", "QEMU's / gst-vhost-gpu", r1, r64);
    printf("\ntargets: >= 2x cheaper than QEMU's one per kick: %s (%.2fx); >= 4x cheaper at %u "
           "per kick: %s (%.2fx)\n",
           r1 >= 2.0 ? "met" : "NOT met", r1, BENCH_MAX_BATCH, r64 >= 4.0 ? "met" : "NOT met", r64);
  }
  printf("\nby thread (CPU per request, all runs):\n");
  for (guint i = 0; i < 2; i++) {
    for (guint k = 0; k < 2; k++) {
      if (both[i]->requests[k] > 0)
        print_threads(both[i], k);
    }
    g_hash_table_unref(both[i]->threads[0]);
    g_hash_table_unref(both[i]->threads[1]);
  }
  return status;
}

/* Size of the last-level cache in bytes (sysfs; sysconf's figure is the
 * whole package's on some machines); 32 MiB when unknown. */
static gsize
llc_bytes(void)
{
  gsize best = 0;

  for (guint i = 0; i < 8; i++) {
    g_autofree char *path = g_strdup_printf("/sys/devices/system/cpu/cpu0/cache/index%u/size", i);
    g_autofree char *text = NULL;
    char *end = NULL;
    guint64 v;

    if (!g_file_get_contents(path, &text, NULL, NULL))
      continue;
    v = g_ascii_strtoull(text, &end, 10);
    if (end != NULL && (*end == 'K' || *end == 'k'))
      v *= 1024;
    else if (end != NULL && (*end == 'M' || *end == 'm'))
      v *= 1024 * 1024;
    best = MAX(best, (gsize)v);
  }
  return best ? best : 32u << 20;
}

/* Average thread CPU time of one memcpy of @bytes.  @pairs source/destination
 * pairs, each prefaulted, are used in turn: one pair stays in the cache
 * (warm); enough pairs to exceed the last-level cache several times make
 * every copy read and write memory that was evicted since its last use
 * (cold), as in the real path, whose guest backing, image, socket buffers and
 * receiving framebuffer together far exceed the cache. */
static double
memcpy_ms(gsize bytes, guint pairs, int rounds)
{
  g_autofree guint8 **src = g_new0(guint8 *, pairs);
  g_autofree guint8 **dst = g_new0(guint8 *, pairs);
  volatile guint8 sink;
  double total = 0;

  for (guint p = 0; p < pairs; p++) {
    src[p] = g_malloc(bytes);
    dst[p] = g_malloc(bytes);
    memset(src[p], 0x5a, bytes);
    memset(dst[p], 0xa5, bytes);
  }
  for (guint i = 0; i < 2 * pairs; i++)
    memcpy(dst[i % pairs], src[i % pairs], bytes);
  for (int i = 0; i < rounds; i++) {
    guint p = (guint)i % pairs;
    double t0;

    src[p][(gsize)i % bytes] = (guint8)i;
    t0 = thread_cpu_ms();
    memcpy(dst[p], src[p], bytes);
    total += thread_cpu_ms() - t0;
    sink = dst[p][(gsize)i * 4099 % bytes];
  }
  (void)sink;
  for (guint p = 0; p < pairs; p++) {
    g_free(src[p]);
    g_free(dst[p]);
  }
  return total / rounds;
}

int
main(int argc, char **argv)
{
  Options opt = { NULL, NULL, 300, 30, 1920, 1080, FALSE, FALSE, 0.5, 3, 0 };
  GOptionEntry entries[] = {
    { "frames", 'n', 0, G_OPTION_ARG_INT, &opt.frames, "Frames measured per backend (300)", "N" },
    { "warmup", 0, 0, G_OPTION_ARG_INT, &opt.warmup, "Frames before measuring (30)", "N" },
    { "width", 0, 0, G_OPTION_ARG_INT, &opt.width, "Frame width (1920)", "PIXELS" },
    { "height", 0, 0, G_OPTION_ARG_INT, &opt.height, "Frame height (1080)", "PIXELS" },
    { "gst-vhost-gpu", 0, 0, G_OPTION_ARG_FILENAME, &opt.ours,
      "Our backend (" GST_VHOST_GPU_PATH ")", "PATH" },
    { "qemu-gpu", 0, 0, G_OPTION_ARG_FILENAME, &opt.qemu, "QEMU's backend (" QEMU_GPU_PATH ")",
      "PATH" },
    { "no-qemu", 0, 0, G_OPTION_ARG_NONE, &opt.no_qemu, "Skip QEMU's backend", NULL },
    { "small-commands", 0, 0, G_OPTION_ARG_NONE, &opt.small,
      "CPU per 1x1 TRANSFER_TO_HOST_2D, 1 and 64 per kick, on one CPU", NULL },
    { "seconds", 's', 0, G_OPTION_ARG_DOUBLE, &opt.seconds,
      "--small-commands: seconds per run (0.5)", "S" },
    { "repeat", 'r', 0, G_OPTION_ARG_INT, &opt.repeat,
      "--small-commands: runs per figure, the median is printed (3)", "N" },
    { "per-kick", 0, 0, G_OPTION_ARG_INT, &opt.per_kick,
      "--small-commands: only 1 or only 64 requests per kick (e.g. under a profiler)", "N" },
    { NULL },
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("- GPU backend CPU time per frame");
  g_autoptr(GError) error = NULL;
  Backend ours = { .name = "gst-vhost-gpu" }, qemu = { .name = "QEMU vhost-user-gpu" };
  gsize bytes, llc;
  guint cold_pairs;
  double warm, cold;
  int status = EXIT_SUCCESS;

  /* A peer that goes away is an error return, never the end of us. */
  signal(SIGPIPE, SIG_IGN);
  g_option_context_add_main_entries(ctx, entries, NULL);
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    g_printerr("%s\n", error->message);
    return 2;
  }
  if (opt.frames < 1 || opt.warmup < 0 || opt.width < 16 || opt.height < 16 || opt.width > 4095
      || opt.height > 4095 || opt.seconds <= 0 || opt.repeat < 1 || opt.repeat > 100
      || (opt.per_kick != 0 && opt.per_kick != 1 && opt.per_kick != (int)BENCH_MAX_BATCH)) {
    g_printerr("bad --frames, --warmup, --width, --height, --seconds, --repeat or --per-kick\n");
    return 2;
  }
  if (opt.ours == NULL)
    opt.ours = g_strdup(GST_VHOST_GPU_PATH);
  if (opt.qemu == NULL)
    opt.qemu = g_strdup(QEMU_GPU_PATH);
  if (opt.small) {
    status = small_commands(&opt);
    g_free(opt.ours);
    g_free(opt.qemu);
    return status;
  }
  bytes = (gsize)opt.width * (gsize)opt.height * 4;
  /* Cold: the pairs together at least three times the last-level cache. */
  llc = llc_bytes();
  cold_pairs = (guint)CLAMP((3 * llc + 2 * bytes - 1) / (2 * bytes), 6, 64);

  printf("gst-vhost-gpu-bench: %dx%d B8G8R8X8 full frames (%" G_GSIZE_FORMAT " bytes), "
         "%d frames per backend after %d warm-up frames, %ld CPUs\n",
         opt.width, opt.height, bytes, opt.frames, opt.warmup, sysconf(_SC_NPROCESSORS_ONLN));
  printf("per frame: TRANSFER_TO_HOST_2D + RESOURCE_FLUSH, until the display socket delivered "
         "the UPDATE\n\n");
  fflush(stdout);

  warm = memcpy_ms(bytes, 1, 200);
  cold = memcpy_ms(bytes, cold_pairs, 200);
  if (!measure(&ours, opt.ours, &opt, &error)) {
    g_printerr("%s: %s\n", ours.name, error->message);
    g_clear_error(&error);
    status = EXIT_FAILURE;
  }
  bench_backend_clear(&ours.be);
  if (!opt.no_qemu) {
    if (!g_file_test(opt.qemu, G_FILE_TEST_IS_EXECUTABLE)) {
      g_printerr("%s: %s not found, skipped\n", qemu.name, opt.qemu);
    } else if (!measure(&qemu, opt.qemu, &opt, &error)) {
      g_printerr("%s: %s\n", qemu.name, error->message);
      g_clear_error(&error);
      status = EXIT_FAILURE;
    }
    bench_backend_clear(&qemu.be);
  }
  /* memcpy again after the backends, so a frequency change shows */
  warm = (warm + memcpy_ms(bytes, 1, 200)) / 2;
  cold = (cold + memcpy_ms(bytes, cold_pairs, 200)) / 2;

  printf("memcpy warm: one source/destination pair (%" G_GSIZE_FORMAT " MiB together), "
         "in the %" G_GSIZE_FORMAT " MiB last-level cache\n",
         2 * bytes >> 20, llc >> 20);
  printf("memcpy cold: %u pairs in turn (%" G_GSIZE_FORMAT " MiB), every copy from and to "
         "evicted memory\n\n",
         cold_pairs, 2 * bytes * cold_pairs >> 20);
  printf("%-24s %14s %8s %8s %16s %14s\n", "", "CPU/frame", "x warm", "x cold", "CPU/frame(stat)",
         "wall/frame");
  printf("%-24s %11.3f ms %8.2f %8.2f\n", "memcpy, warm", warm, 1.0, warm / cold);
  printf("%-24s %11.3f ms %8.2f %8.2f\n", "memcpy, cold", cold, cold / warm, 1.0);
  for (Backend *b = &ours; b != NULL; b = b == &ours ? &qemu : NULL) {
    if (b->ok)
      printf("%-24s %11.3f ms %8.2f %8.2f %13.3f ms %11.3f ms\n", b->name, b->cpu_ms,
             b->cpu_ms / warm, b->cpu_ms / cold, b->ticks_ms, b->wall_ms);
  }
  printf("\nby thread (CPU per frame):\n");
  for (Backend *b = &ours; b != NULL; b = b == &ours ? &qemu : NULL) {
    if (b->ok)
      printf("  %-22s %s\n", b->name, b->threads->str);
  }
  if (ours.ok && qemu.ok) {
    printf("\nQEMU's backend uses %.2fx the CPU time of gst-vhost-gpu per frame.\n",
           qemu.cpu_ms / ours.cpu_ms);
    printf("targets: <= 2.5x memcpy: %s against the warm memcpy (%.2fx), %s against the cold "
           "one (%.2fx);\n         >= 2x cheaper than QEMU's: %s (%.2fx)\n",
           ours.cpu_ms / warm <= 2.5 ? "met" : "NOT met", ours.cpu_ms / warm,
           ours.cpu_ms / cold <= 2.5 ? "met" : "NOT met", ours.cpu_ms / cold,
           qemu.cpu_ms / ours.cpu_ms >= 2.0 ? "met" : "NOT met", qemu.cpu_ms / ours.cpu_ms);
  }
  for (Backend *b = &ours; b != NULL; b = b == &ours ? &qemu : NULL) {
    if (b->threads != NULL)
      g_string_free(b->threads, TRUE);
  }
  g_free(opt.ours);
  g_free(opt.qemu);
  return status;
}
