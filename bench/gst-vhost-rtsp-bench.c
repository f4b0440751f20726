/* gst-vhost-rtsp-bench: what watching a VM over RTSP costs (gst-vhost-gpu --rtsp).
 *
 * The daemon serves a 1920x1080 BGRx scanout driven through the project's
 * frontend and display server (QEMU's part), with --rtsp on loopback.  In one
 * run, for each codec (h264, vp8):
 *  1. Latency: a local viewer in this process (rtspsrc over TCP, latency=0,
 *     decodebin, appsink).  The guest fills the screen with one of eight
 *     colours, transfers and flushes it, and the time until the viewer has a
 *     decoded frame of that colour is taken; one frame in flight at a time,
 *     40 ms apart (above the stream's 30 fps cap), so nothing coalesces or
 *     waits for its slot.  Median and 95th percentile.
 *  2. Cost: the guest draws a full-screen moving picture at 30 frames per
 *     second (paced) for a few seconds; the daemon's CPU (utime + stime from
 *     /proc) per second of that, with no viewer, one viewer and two viewers
 *     (one encode for both: the second should cost little).  The viewer's own
 *     decoding is not counted.
 * Usage: gst-vhost-rtsp-bench [FRAMES] [SECONDS]   (default 100, 5) */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <gst/app/gstappsink.h>
#include <gst/gst.h>
#include <linux/virtio_gpu.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bench-util.h"
#include "vhu-display.h"
#include "vhu-frontend.h"

#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (64u << 20)
#define W          1920u
#define H          1080u
#define WAIT_MS    10000
#define TOLERANCE  40

typedef struct {
  BenchBackend b;
  char *url;
  guint32 *pixels;
  guint frames;
} Daemon;

static gint64
now_us(void)
{
  return g_get_monotonic_time();
}

static guint32
cmd(VhuFrontend *fe, const void *req, gsize size)
{
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_ctrl_hdr hdr = { 0 };
  gssize n = vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 0), req, size, &hdr, sizeof hdr,
                                       &error);

  if (n < (gssize)sizeof hdr)
    g_error("request failed: %s", error ? error->message : "short answer");
  return hdr.type;
}

/* Reads the daemon's stderr until the line naming the RTSP URL. */
static char *
read_url(GSubprocess *proc)
{
  g_autoptr(GDataInputStream) in = g_data_input_stream_new(g_subprocess_get_stderr_pipe(proc));
  char *line;

  g_filter_input_stream_set_close_base_stream(G_FILTER_INPUT_STREAM(in), FALSE);
  while ((line = g_data_input_stream_read_line_utf8(in, NULL, NULL, NULL))) {
    const char *at = strstr(line, "rtsp://");
    char *url = at ? g_strndup(at, strcspn(at, " ")) : NULL;

    g_free(line);
    if (url)
      return url;
  }
  g_error("the daemon ended without serving RTSP");
  return NULL;
}

static gpointer
drain(gpointer data)
{
  GInputStream *in = g_subprocess_get_stderr_pipe(data);
  char buf[4096];

  while (g_input_stream_read(in, buf, sizeof buf, NULL, NULL) > 0)
    ;
  return NULL;
}

static void
daemon_start(Daemon *d, const char *codec)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 64, 16 };
  VhuDisplayConfig cfg = { 1, W, H, 0x3, FALSE };
  const char *argv[] = { GST_VHOST_GPU_PATH,
                         "--socket-path",
                         NULL,
                         "--rtsp",
                         "127.0.0.1:0/vm",
                         "--rtsp-codec",
                         codec,
                         "--width",
                         "1920",
                         "--height",
                         "1080",
                         NULL };
  struct virtio_gpu_resource_create_2d c = {
    { .type = VIRTIO_GPU_CMD_RESOURCE_CREATE_2D }, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H
  };
  struct virtio_gpu_set_scanout s
      = { { .type = VIRTIO_GPU_CMD_SET_SCANOUT }, { 0, 0, W, H }, 0, 1 };
  struct {
    struct virtio_gpu_resource_attach_backing a;
    struct virtio_gpu_mem_entry e;
  } att = { { { .type = VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING }, 1, 1 }, { 0, W * H * 4, 0 } };
  guint64 gpa;

  memset(d, 0, sizeof *d);
  if (!bench_backend_dir(&d->b, "gst-vhost-rtsp-bench-XXXXXX", "gpu.sock", &error))
    g_error("%s", error->message);
  argv[2] = d->b.path;
  d->b.proc = bench_spawn(G_SUBPROCESS_FLAGS_STDERR_PIPE, -1, &error, argv);
  if (!d->b.proc)
    g_error("%s", error->message);
  d->url = read_url(d->b.proc);
  /* What it logs later is drained, so that it never waits on a full pipe. */
  g_thread_unref(g_thread_new("daemon-log", drain, d->b.proc));
  if (!bench_backend_connect(&d->b, &error))
    g_error("%s", error->message);
  if (!vhu_frontend_init(d->b.fe, G_MAXUINT64, &error)
      || !vhu_frontend_add_region(d->b.fe, GUEST_GPA, GUEST_SIZE, &error))
    g_error("%s", error->message);
  d->b.ds = vhu_display_server_new(&cfg);
  if (!vhu_display_server_attach(d->b.ds, d->b.fe, &error)
      || !vhu_frontend_start(d->b.fe, BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX),
                             sizes, 2, &error))
    g_error("%s", error->message);
  gpa = vhu_frontend_alloc(d->b.fe, (gsize)W * H * 4, 4096);
  d->pixels = vhu_frontend_gpa_to_ptr(d->b.fe, gpa, (gsize)W * H * 4);
  att.e.addr = gpa;
  if (cmd(d->b.fe, &c, sizeof c) != VIRTIO_GPU_RESP_OK_NODATA
      || cmd(d->b.fe, &att, sizeof att) != VIRTIO_GPU_RESP_OK_NODATA
      || cmd(d->b.fe, &s, sizeof s) != VIRTIO_GPU_RESP_OK_NODATA)
    g_error("the scanout could not be set up");
}

static void
daemon_stop(Daemon *d)
{
  bench_backend_clear(&d->b);
  g_free(d->url);
}

static void
guest_flush(Daemon *d)
{
  struct virtio_gpu_transfer_to_host_2d t
      = { { .type = VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D }, { 0, 0, W, H }, 0, 1, 0 };
  struct virtio_gpu_resource_flush f
      = { { .type = VIRTIO_GPU_CMD_RESOURCE_FLUSH }, { 0, 0, W, H }, 1, 0 };

  if (cmd(d->b.fe, &t, sizeof t) != VIRTIO_GPU_RESP_OK_NODATA
      || cmd(d->b.fe, &f, sizeof f) != VIRTIO_GPU_RESP_OK_NODATA)
    g_error("flush failed");
}

static void
guest_fill(Daemon *d, guint32 rgb)
{
  for (gsize i = 0; i < (gsize)W * H; i++)
    d->pixels[i] = rgb;
}

/* A picture in which every pixel changes each frame (a video in the guest). */
static void
guest_moving(Daemon *d, guint t)
{
  for (guint y = 0; y < H; y++)
    for (guint x = 0; x < W; x++)
      d->pixels[(gsize)y * W + x]
          = ((x + t * 8) & 0xff) << 16 | ((y + t * 4) & 0xff) << 8 | ((x ^ (y + t)) & 0xff);
}

/* --- viewers --------------------------------------------------------------- */

typedef struct {
  GstElement *pipeline;
  GMutex lock;
  GCond cond;
  guint8 rgb[3];
  guint64 frames;
} Viewer;

static GstFlowReturn
on_sample(GstAppSink *sink, gpointer data)
{
  Viewer *v = data;
  g_autoptr(GstSample) sample = gst_app_sink_pull_sample(sink);
  GstMapInfo map;
  GstBuffer *buf = gst_sample_get_buffer(sample);

  if (!gst_buffer_map(buf, &map, GST_MAP_READ))
    return GST_FLOW_OK;
  g_mutex_lock(&v->lock);
  /* the centre pixel (RGB, the frame's size is W x H) */
  memcpy(v->rgb, map.data + ((gsize)(H / 2) * W + W / 2) * 3, 3);
  v->frames++;
  g_cond_broadcast(&v->cond);
  g_mutex_unlock(&v->lock);
  gst_buffer_unmap(buf, &map);
  return GST_FLOW_OK;
}

static Viewer *
viewer_start(const char *url)
{
  Viewer *v = g_new0(Viewer, 1);
  g_autoptr(GError) error = NULL;
  g_autofree char *desc = g_strdup_printf(
      "rtspsrc location=%s protocols=tcp latency=0 ! decodebin ! videoconvert ! "
      "video/x-raw,format=RGB ! appsink name=sink sync=false max-buffers=2 drop=true",
      url);
  GstAppSinkCallbacks cb = { .new_sample = on_sample };
  g_autoptr(GstElement) sink = NULL;

  g_mutex_init(&v->lock);
  g_cond_init(&v->cond);
  v->pipeline = gst_parse_launch(desc, &error);
  if (!v->pipeline)
    g_error("viewer: %s", error->message);
  sink = gst_bin_get_by_name(GST_BIN(v->pipeline), "sink");
  gst_app_sink_set_callbacks(GST_APP_SINK(sink), &cb, v, NULL);
  gst_element_set_state(v->pipeline, GST_STATE_PLAYING);
  return v;
}

static void
viewer_stop(Viewer *v)
{
  gst_element_set_state(v->pipeline, GST_STATE_NULL);
  gst_object_unref(v->pipeline);
  g_mutex_clear(&v->lock);
  g_cond_clear(&v->cond);
  g_free(v);
}

static gboolean
near(const guint8 *got, guint32 rgb)
{
  for (guint c = 0; c < 3; c++)
    if (ABS((int)got[c] - (int)((rgb >> (16 - 8 * c)) & 0xff)) > TOLERANCE)
      return FALSE;
  return TRUE;
}

/* Waits for a decoded frame of @rgb; FALSE after @deadline_us. */
static gboolean
viewer_wait(Viewer *v, guint32 rgb, gint64 deadline_us)
{
  gboolean ok;

  g_mutex_lock(&v->lock);
  while (!(ok = v->frames && near(v->rgb, rgb))
         && g_cond_wait_until(&v->cond, &v->lock, deadline_us))
    ;
  g_mutex_unlock(&v->lock);
  return ok;
}

static int
cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;

  return x < y ? -1 : x > y;
}

static const guint32 colours[8]
    = { 0xff0000, 0x00ff00, 0x0000ff, 0xffffff, 0x000000, 0xffff00, 0x00ffff, 0xff00ff };

static void
latency(Daemon *d, const char *codec, int n)
{
  Viewer *v = viewer_start(d->url);
  g_autofree double *ms = g_new(double, n);
  int got = 0;

  /* Connect and decode a first frame (the stream starts with a key frame). */
  guest_fill(d, colours[7]);
  for (gint64 end = now_us() + (gint64)WAIT_MS * 1000;;) {
    guest_flush(d);
    if (viewer_wait(v, colours[7], now_us() + 100000))
      break;
    if (now_us() > end)
      g_error("%s: the viewer shows nothing", codec);
  }
  for (int i = 0; i < n; i++) {
    guint32 rgb = colours[i % 7];
    gint64 t0;

    /* 40 ms apart: the stream's 30 fps cap would otherwise hold a flush that
     * follows the previous frame within 33 ms, and that wait be measured. */
    g_usleep(40000);
    guest_fill(d, rgb);
    t0 = now_us();
    guest_flush(d);
    if (viewer_wait(v, rgb, t0 + (gint64)WAIT_MS * 1000))
      ms[got++] = (double)(now_us() - t0) / 1000.0;
  }
  if (!got)
    g_error("%s: no frame arrived", codec);
  qsort(ms, (size_t)got, sizeof *ms, cmp_double);
  printf("%s latency guest flush -> decoded frame at a local viewer, 1920x1080 (%d of %d "
         "frames): median %.1f ms, 95th percentile %.1f ms\n",
         codec, got, n, ms[got / 2], ms[MIN(got * 95 / 100, got - 1)]);
  viewer_stop(v);
}

static double
proc_cpu_s(GSubprocess *p)
{
  g_autofree char *path = g_strdup_printf("/proc/%s/stat", g_subprocess_get_identifier(p));
  g_autofree char *text = NULL;
  unsigned long long ut = 0, st = 0;
  const char *rp;

  if (!g_file_get_contents(path, &text, NULL, NULL) || !(rp = strrchr(text, ')')))
    return 0;
  sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st);
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The daemon's CPU share (of one core) while the guest draws at 30 fps. */
static double
cost(Daemon *d, double seconds)
{
  gint64 start = now_us(), next = start;
  double c0 = proc_cpu_s(d->b.proc);
  guint t = 0;

  while (now_us() - start < (gint64)(seconds * 1e6)) {
    guest_moving(d, t++);
    guest_flush(d);
    next += 1000000 / 30;
    if (next > now_us())
      g_usleep((gulong)(next - now_us()));
  }
  return (proc_cpu_s(d->b.proc) - c0) / ((double)(now_us() - start) / 1e6) * 100.0;
}

static void
cpu(Daemon *d, const char *codec, double seconds)
{
  double none, one, two;
  Viewer *a, *b;

  none = cost(d, seconds);
  a = viewer_start(d->url);
  guest_fill(d, colours[0]);
  for (gint64 end = now_us() + (gint64)WAIT_MS * 1000;
       !viewer_wait(a, colours[0], now_us() + 100000);)
    if (guest_flush(d), now_us() > end)
      g_error("%s: no picture", codec);
  one = cost(d, seconds);
  b = viewer_start(d->url);
  for (gint64 end = now_us() + (gint64)WAIT_MS * 1000;
       !viewer_wait(b, colours[0], now_us() + 100000);) {
    guest_fill(d, colours[0]);
    if (guest_flush(d), now_us() > end)
      g_error("%s: no picture at the second viewer", codec);
  }
  two = cost(d, seconds);
  printf("%s daemon CPU at 1920x1080, 30 fps of full-screen motion (%% of one core): no viewer "
         "%.1f, one viewer %.1f, two viewers %.1f\n",
         codec, none, one, two);
  viewer_stop(b);
  viewer_stop(a);
}

int
main(int argc, char **argv)
{
  int n = argc > 1 ? atoi(argv[1]) : 100;
  double seconds = argc > 2 ? g_ascii_strtod(argv[2], NULL) : 5.0;
  const char *codecs[] = { "h264", "vp8" };

  gst_init(&argc, &argv);
  if (n < 1 || seconds <= 0) {
    fprintf(stderr, "usage: %s [FRAMES] [SECONDS]\n", argv[0]);
    return 2;
  }
  printf("host: %ld CPUs online\n", sysconf(_SC_NPROCESSORS_ONLN));
  for (guint i = 0; i < G_N_ELEMENTS(codecs); i++) {
    Daemon d;

    daemon_start(&d, codecs[i]);
    latency(&d, codecs[i], n);
    cpu(&d, codecs[i], seconds);
    daemon_stop(&d);
  }
  return 0;
}
