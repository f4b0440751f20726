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
 * so that source and destination come from memory. */
#include <dirent.h>
#include <errno.h>
#include <gio/gio.h>
#include <linux/virtio_gpu.h>
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
  Options opt = { NULL, NULL, 300, 30, 1920, 1080, FALSE };
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
    { NULL },
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("- GPU backend CPU time per frame");
  g_autoptr(GError) error = NULL;
  Backend ours = { .name = "gst-vhost-gpu" }, qemu = { .name = "QEMU vhost-user-gpu" };
  gsize bytes, llc;
  guint cold_pairs;
  double warm, cold;
  int status = EXIT_SUCCESS;

  g_option_context_add_main_entries(ctx, entries, NULL);
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    g_printerr("%s\n", error->message);
    return 2;
  }
  if (opt.frames < 1 || opt.warmup < 0 || opt.width < 16 || opt.height < 16 || opt.width > 4095
      || opt.height > 4095) {
    g_printerr("bad --frames, --warmup, --width or --height\n");
    return 2;
  }
  if (opt.ours == NULL)
    opt.ours = g_strdup(GST_VHOST_GPU_PATH);
  if (opt.qemu == NULL)
    opt.qemu = g_strdup(QEMU_GPU_PATH);
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
