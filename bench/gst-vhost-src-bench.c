/* gst-vhost-src-bench: what a guest frame costs on its way into GStreamer.
 *
 * In one run, on a 1080p BGRx scanout driven through the project's frontend:
 *  1. vhostgpusrc ! fakesink in this process: CPU of the whole process per
 *     full-frame update (transfer + flush) that reaches the sink, against
 *     one memcpy of the frame (warm and cold); the same for a 64x64 update;
 *     the latency from sending RESOURCE_FLUSH to the buffer leaving the
 *     source pad (median, 95th percentile).  Then the same with the frame in
 *     a guest-memory blob (SET_SCANOUT_BLOB; each update is a flush only):
 *     buffers wrap the guest's pages, no copy (target under 0.1x memcpy).
 *  2. gst-vhost-gpu with QEMU's display attached, without and with
 *     --pipeline 'fakesink': the daemon's CPU per full-frame update.
 * Each update waits for its buffer (or display update), so nothing
 * coalesces.  The driver's own CPU (this thread) is printed beside the
 * process figure. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <gst/gst.h>
#include <linux/virtio_gpu.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench-util.h"
#include "vhu-display.h"
#include "vhu-frontend.h"

#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (64u << 20)
#define WAIT_MS    5000
#define FRAME_W    1920u
#define FRAME_H    1080u

static int n_frames = 200;
static gboolean blob_only; /* --blob-only: just the blob figures (for profiling) */
static gboolean blob_mode; /* the scanout is a guest-memory blob */

typedef struct {
  GMutex lock;
  GCond cond;
  guint64 pushed;   /* buffers that left the source pad */
  gint64 last_push; /* monotonic ns of the last one */
} Probe;

static gint64
now_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (gint64)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double
cpu_ms(clockid_t id)
{
  struct timespec ts;

  clock_gettime(id, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Nanoseconds on CPU of all threads of @pid. */
static guint64
task_cpu_ns(GPid pid)
{
  g_autofree char *dir = g_strdup_printf("/proc/%d/task", (int)pid);
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  const char *name;
  guint64 total = 0;

  while (d && (name = g_dir_read_name(d))) {
    g_autofree char *path = g_strdup_printf("%s/%s/schedstat", dir, name);
    g_autofree char *text = NULL;

    if (g_file_get_contents(path, &text, NULL, NULL))
      total += g_ascii_strtoull(text, NULL, 10);
  }
  return total;
}

/* Thread run times (ns, schedstat) of this process by thread id, names in
 * @names. */
static GHashTable *
threads_cpu_ns(GHashTable *names)
{
  g_autoptr(GDir) d = g_dir_open("/proc/self/task", 0, NULL);
  GHashTable *ns = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  const char *name;

  while (d && (name = g_dir_read_name(d))) {
    g_autofree char *path = g_strdup_printf("/proc/self/task/%s/schedstat", name);
    g_autofree char *comm_path = g_strdup_printf("/proc/self/task/%s/comm", name);
    g_autofree char *text = NULL;
    char *comm = NULL;

    if (!g_file_get_contents(path, &text, NULL, NULL))
      continue;
    g_hash_table_insert(ns, g_strdup(name),
                        GSIZE_TO_POINTER((gsize)g_ascii_strtoull(text, NULL, 10)));
    if (g_file_get_contents(comm_path, &comm, NULL, NULL))
      g_hash_table_insert(names, g_strdup(name), g_strstrip(comm));
  }
  return ns;
}

/* Per update, the run time of each thread that ran between @before and now. */
static void
print_threads(GHashTable *before, GHashTable *names, int updates)
{
  g_autoptr(GHashTable) after = threads_cpu_ns(names);
  GHashTableIter it;
  gpointer k, v;

  g_hash_table_iter_init(&it, after);
  while (g_hash_table_iter_next(&it, &k, &v)) {
    guint64 t
        = (guint64)GPOINTER_TO_SIZE(v) - (guint64)GPOINTER_TO_SIZE(g_hash_table_lookup(before, k));

    if (t >= (guint64)updates * 500)
      printf("  thread %-16s %8" G_GUINT64_FORMAT " ns per update\n",
             (const char *)g_hash_table_lookup(names, k), t / (guint64)updates);
  }
}

static GstPadProbeReturn
on_buffer(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  Probe *p = data;

  g_mutex_lock(&p->lock);
  p->pushed++;
  p->last_push = now_ns();
  g_cond_broadcast(&p->cond);
  g_mutex_unlock(&p->lock);
  return GST_PAD_PROBE_OK;
}

static gboolean
probe_wait(Probe *p, guint64 count, gint64 *when)
{
  gint64 end = g_get_monotonic_time() + WAIT_MS * 1000;
  gboolean ok = TRUE;

  g_mutex_lock(&p->lock);
  while (p->pushed < count && ok)
    ok = g_cond_wait_until(&p->cond, &p->lock, end);
  *when = p->last_push;
  ok = p->pushed >= count;
  g_mutex_unlock(&p->lock);
  return ok;
}

static guint32
cmd(VhuFrontend *fe, const void *req, gsize len)
{
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_ctrl_hdr resp = { 0 };

  if (vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 0), req, len, &resp, sizeof resp, &error)
      < (gssize)sizeof resp)
    g_error("request failed: %s", error ? error->message : "short answer");
  return resp.type;
}

#define CMD_OK(fe, c)                                                                              \
  G_STMT_START                                                                                     \
  {                                                                                                \
    if (cmd((fe), &(c), sizeof(c)) != VIRTIO_GPU_RESP_OK_NODATA)                                   \
      g_error("%s refused", #c);                                                                   \
  }                                                                                                \
  G_STMT_END

/* A 1080p BGRx resource with backing, shown on scanout 0. */
static void
setup_scanout(VhuFrontend *fe)
{
  gsize bytes = (gsize)FRAME_W * FRAME_H * 4;
  guint64 gpa = vhu_frontend_alloc(fe, bytes, 4096);
  struct virtio_gpu_resource_create_2d c = { { .type = VIRTIO_GPU_CMD_RESOURCE_CREATE_2D },
                                             1,
                                             VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
                                             FRAME_W,
                                             FRAME_H };
  struct {
    struct virtio_gpu_resource_attach_backing a;
    struct virtio_gpu_mem_entry e;
  } ab = { { { .type = VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING }, 1, 1 }, { gpa, bytes, 0 } };
  struct virtio_gpu_set_scanout s
      = { { .type = VIRTIO_GPU_CMD_SET_SCANOUT }, { 0, 0, FRAME_W, FRAME_H }, 0, 1 };
  struct {
    struct virtio_gpu_resource_create_blob c;
    struct virtio_gpu_mem_entry e;
  } cb = { { { .type = VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB },
             1,
             VIRTIO_GPU_BLOB_MEM_GUEST,
             VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE,
             1,
             0,
             bytes },
           { gpa, bytes, 0 } };
  struct virtio_gpu_set_scanout_blob sb = { { .type = VIRTIO_GPU_CMD_SET_SCANOUT_BLOB },
                                            { 0, 0, FRAME_W, FRAME_H },
                                            0,
                                            1,
                                            FRAME_W,
                                            FRAME_H,
                                            VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
                                            0,
                                            { FRAME_W * 4 },
                                            { 0 } };
  guint8 *px = vhu_frontend_gpa_to_ptr(fe, gpa, bytes);

  g_assert(gpa != G_MAXUINT64 && px);
  for (gsize i = 0; i < bytes; i++)
    px[i] = (guint8)(i * 7);
  if (blob_mode) {
    CMD_OK(fe, cb);
    CMD_OK(fe, sb);
    return;
  }
  CMD_OK(fe, c);
  CMD_OK(fe, ab);
  CMD_OK(fe, s);
}

static void
update(VhuFrontend *fe, guint32 x, guint32 y, guint32 w, guint32 h, gint64 *flush_sent)
{
  struct virtio_gpu_transfer_to_host_2d t = { { .type = VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D },
                                              { x, y, w, h },
                                              ((guint64)y * FRAME_W + x) * 4,
                                              1,
                                              0 };
  struct virtio_gpu_resource_flush f
      = { { .type = VIRTIO_GPU_CMD_RESOURCE_FLUSH }, { x, y, w, h }, 1, 0 };

  if (!blob_mode) /* a blob's pixels need no transfer */
    CMD_OK(fe, t);
  if (flush_sent)
    *flush_sent = now_ns();
  CMD_OK(fe, f);
}

static VhuFrontend *
frontend_start(const char *path, VhuDisplayServer **ds)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 64, 16 };
  VhuFrontend *fe = vhu_frontend_connect_wait(path, WAIT_MS, NULL, NULL, &error);

  if (!fe || !vhu_frontend_init(fe, G_MAXUINT64, &error)
      || !vhu_frontend_add_region(fe, GUEST_GPA, GUEST_SIZE, &error))
    g_error("frontend: %s", error->message);
  if (ds) {
    VhuDisplayConfig cfg = { 1, FRAME_W, FRAME_H, 0x3, FALSE };

    *ds = vhu_display_server_new(&cfg);
    if (!vhu_display_server_attach(*ds, fe, &error))
      g_error("display: %s", error->message);
  }
  if (!vhu_frontend_start(fe, BIT(VIRTIO_GPU_F_EDID) | BIT(VIRTIO_GPU_F_RESOURCE_BLOB), sizes, 2,
                          &error))
    g_error("start: %s", error->message);
  return fe;
}

static int
cmp_i64(gconstpointer a, gconstpointer b)
{
  gint64 x = *(const gint64 *)a, y = *(const gint64 *)b;

  return x < y ? -1 : x > y;
}

/* Per update: process CPU (ms), driver thread CPU (ms); latencies into @lat. */
static void
run_updates(VhuFrontend *fe, Probe *p, guint32 w, guint32 h, double *proc, double *driver,
            GArray *lat)
{
  double p0 = cpu_ms(CLOCK_PROCESS_CPUTIME_ID), d0 = cpu_ms(CLOCK_THREAD_CPUTIME_ID);

  for (int i = 0; i < n_frames; i++) {
    guint32 x = w == FRAME_W ? 0 : (guint32)(i * 64) % (FRAME_W - w);
    guint32 y = h == FRAME_H ? 0 : (guint32)(i * 16) % (FRAME_H - h);
    gint64 sent, pushed;
    guint64 want;

    g_mutex_lock(&p->lock);
    want = p->pushed + 1;
    g_mutex_unlock(&p->lock);
    update(fe, x, y, w, h, &sent);
    if (!probe_wait(p, want, &pushed))
      g_error("no buffer for update %d", i);
    if (lat) {
      gint64 l = pushed - sent;

      g_array_append_val(lat, l);
    }
  }
  *proc = (cpu_ms(CLOCK_PROCESS_CPUTIME_ID) - p0) / n_frames;
  *driver = (cpu_ms(CLOCK_THREAD_CPUTIME_ID) - d0) / n_frames;
}

static double
memcpy_ms(gsize bytes, guint pairs, int rounds)
{
  g_autofree guint8 **src = g_new0(guint8 *, pairs);
  g_autofree guint8 **dst = g_new0(guint8 *, pairs);
  double total = 0;

  for (guint k = 0; k < pairs; k++) {
    src[k] = g_malloc(bytes);
    dst[k] = g_malloc(bytes);
    memset(src[k], 0x5a, bytes);
    memset(dst[k], 0xa5, bytes);
  }
  for (int i = 0; i < rounds; i++) {
    guint k = (guint)i % pairs;
    double t0 = cpu_ms(CLOCK_THREAD_CPUTIME_ID);

    memcpy(dst[k], src[k], bytes);
    total += cpu_ms(CLOCK_THREAD_CPUTIME_ID) - t0;
    src[k][(gsize)i % bytes] = dst[k][(gsize)i * 4099 % bytes];
  }
  for (guint k = 0; k < pairs; k++) {
    g_free(src[k]);
    g_free(dst[k]);
  }
  return total / rounds;
}

static void
bench_element(double memcpy_warm, double memcpy_cold)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = g_dir_make_tmp("gst-vhost-src-bench-XXXXXX", &error);
  g_autofree char *path = g_build_filename(dir, "gpu.sock", NULL);
  g_autofree char *desc = g_strdup_printf(
      "vhostgpusrc name=src socket-path=%s qemu-display=false ! fakesink sync=false", path);
  g_autoptr(GstElement) pipeline = gst_parse_launch(desc, &error);
  g_autoptr(GArray) lat = g_array_new(FALSE, FALSE, sizeof(gint64));
  g_autoptr(GstStructure) stats = NULL;
  GstElement *src;
  GstPad *pad;
  Probe p = { 0 };
  double full, full_drv, small, small_drv;
  VhuFrontend *fe;
  gint64 dummy;

  if (!pipeline)
    g_error("%s", error->message);
  g_mutex_init(&p.lock);
  g_cond_init(&p.cond);
  src = gst_bin_get_by_name(GST_BIN(pipeline), "src");
  pad = gst_element_get_static_pad(src, "src");
  gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER, on_buffer, &p, NULL);
  gst_element_set_state(pipeline, GST_STATE_PLAYING);
  fe = frontend_start(path, NULL);
  setup_scanout(fe);
  update(fe, 0, 0, FRAME_W, FRAME_H, NULL); /* warm up: renegotiation, first frames */
  probe_wait(&p, 1, &dummy);
  {
    g_autoptr(GHashTable) names = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_autoptr(GHashTable) before = threads_cpu_ns(names);

    run_updates(fe, &p, FRAME_W, FRAME_H, &full, &full_drv, lat);
    printf("full-frame updates (%s), thread run times:\n", blob_mode ? "blob" : "2D");
    print_threads(before, names, n_frames);
  }
  run_updates(fe, &p, 64, 64, &small, &small_drv, NULL);
  g_array_sort(lat, cmp_i64);
  g_object_get(src, "stats", &stats, NULL);

  printf("vhostgpusrc ! fakesink, %ux%u BGRx %s, %d updates each, CPU of the whole process per "
         "update (the driver's thread beside it)\n",
         FRAME_W, FRAME_H, blob_mode ? "guest-memory blob" : "2D resource", n_frames);
  printf("%-26s %9.3f ms  (driver %.3f ms)  %5.2fx warm memcpy  %5.2fx cold memcpy\n",
         "full-frame update", full, full_drv, full / memcpy_warm, full / memcpy_cold);
  /* The driver thread plays the guest, whose CPU is not the backend's in a
   * VM: without it, the figure is what the element costs its process. */
  printf("%-26s %9.3f ms                     %5.2fx warm memcpy  %5.2fx cold memcpy\n",
         "  without the driver", full - full_drv, (full - full_drv) / memcpy_warm,
         (full - full_drv) / memcpy_cold);
  printf("%-26s %9.3f ms  (driver %.3f ms)  %5.3fx the full-frame update\n", "64x64 update", small,
         small_drv, small / full);
  printf("%-26s %9.3f ms\n%-26s %9.3f ms\n", "memcpy of the frame, warm", memcpy_warm,
         "memcpy of the frame, cold", memcpy_cold);
  printf("latency RESOURCE_FLUSH -> buffer leaving the source pad, full frames: median %.3f ms, "
         "95th percentile %.3f ms\n",
         g_array_index(lat, gint64, lat->len / 2) / 1e6,
         g_array_index(lat, gint64, lat->len * 95 / 100) / 1e6);
  {
    g_autofree char *s = gst_structure_to_string(stats);

    printf("element stats: %s\n", s);
  }
  vhu_frontend_free(fe);
  gst_element_set_state(pipeline, GST_STATE_NULL);
  gst_object_unref(pad);
  gst_object_unref(src);
  g_mutex_clear(&p.lock);
  g_cond_clear(&p.cond);
  g_rmdir(dir);
}

/* The daemon's CPU per full update with QEMU's display attached. */
static double
bench_daemon(const char *pipeline)
{
  g_autoptr(GError) error = NULL;
  BenchBackend b = { 0 };
  const char *argv[] = { GST_VHOST_GPU_PATH,
                         "--socket-path",
                         NULL,
                         "--quiet",
                         pipeline ? "--pipeline" : NULL,
                         pipeline,
                         NULL };
  VhuDisplayStats st;
  guint64 c0;

  if (!bench_backend_dir(&b, "gst-vhost-src-bench-XXXXXX", "gpu.sock", &error))
    g_error("%s", error->message);
  argv[2] = b.path;
  b.proc = bench_spawn(G_SUBPROCESS_FLAGS_NONE, -1, &error, argv);
  if (!b.proc)
    g_error("%s", error->message);
  b.fe = frontend_start(b.path, &b.ds);
  setup_scanout(b.fe);
  update(b.fe, 0, 0, FRAME_W, FRAME_H, NULL);
  vhu_display_server_get_stats(b.ds, &st);
  vhu_display_server_wait_updates(b.ds, st.updates, WAIT_MS);
  c0 = task_cpu_ns(atoi(g_subprocess_get_identifier(b.proc)));
  for (int i = 0; i < n_frames; i++) {
    vhu_display_server_get_stats(b.ds, &st);
    update(b.fe, 0, 0, FRAME_W, FRAME_H, NULL);
    if (!vhu_display_server_wait_updates(b.ds, st.updates + 1, WAIT_MS))
      g_error("the display got no update");
  }
  c0 = task_cpu_ns(atoi(g_subprocess_get_identifier(b.proc))) - c0;
  bench_backend_clear(&b);
  return (double)c0 / 1e6 / n_frames;
}

int
main(int argc, char **argv)
{
  g_autoptr(GOptionContext) ctx = g_option_context_new("- vhostgpusrc costs");
  g_autoptr(GError) error = NULL;
  GOptionEntry entries[] = {
    { "frames", 'n', 0, G_OPTION_ARG_INT, &n_frames, "Updates per figure (200)", "N" },
    { "blob-only", 0, 0, G_OPTION_ARG_NONE, &blob_only,
      "Only the guest-memory blob figures (e.g. under perf)", NULL },
    { NULL },
  };
  gsize bytes = (gsize)FRAME_W * FRAME_H * 4;
  double warm, cold, plain, piped;

  g_option_context_add_main_entries(ctx, entries, NULL);
  g_option_context_add_group(ctx, gst_init_get_option_group());
  if (!g_option_context_parse(ctx, &argc, &argv, &error) || n_frames < 10) {
    fprintf(stderr, "%s\n", error ? error->message : "--frames: at least 10");
    return 2;
  }
  warm = memcpy_ms(bytes, 1, 200);
  cold = memcpy_ms(bytes, 12, 200); /* ~200 MB in turn: beyond any cache */
  if (!blob_only)
    bench_element(warm, cold);
  blob_mode = TRUE;
  bench_element(warm, cold);
  blob_mode = FALSE;
  if (blob_only)
    return 0;
  plain = bench_daemon(NULL);
  piped = bench_daemon("fakesink sync=false");
  printf("gst-vhost-gpu with QEMU's display, CPU of the daemon per full-frame update: %.3f ms; "
         "with --pipeline 'fakesink' as well: %.3f ms (+%.3f ms, %.2fx warm memcpy)\n",
         plain, piped, piped - plain, (piped - plain) / warm);
  printf("targets: full-frame update <= 1.5x memcpy (2D), under 0.1x (blob); latency under 1 ms "
         "at 1080p\n");
  return 0;
}
