/* gst-vhost-gpu --rtsp with real clients: the daemon is driven by the
 * project's frontend (a "guest" showing known colours), and Debian's own
 * viewers connect over loopback: gst-launch-1.0 (rtspsrc, decodebin) writing
 * raw RGB frames to a pipe, ffprobe and ffmpeg.  Checked: the colours survive
 * the codec within a tolerance, several viewers at once from one server,
 * viewers joining and leaving, basic authentication, and a viewer that stops
 * reading its TCP socket stalling neither the guest (its requests keep
 * completing) nor the other viewer. */
#include <gio/gio.h>
#include <gio/gunixinputstream.h>
#include <glib/gstdio.h>
#include <linux/virtio_gpu.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gpu-test-frontend.h"
#include "test-util.h"
#include "vhu-display.h"

#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (32u << 20)
#define W          320u
#define H          240u
#define WAIT_MS    20000 /* upper bound: a viewer starts, negotiates, decodes */
#define TOLERANCE  24    /* per channel, after 4:2:0 and the codec */

/* --- the daemon ------------------------------------------------------------ */

/* Children die with the test, so that a failed test leaves no process holding
 * its output pipes open. */
static void
die_with_parent(gpointer data)
{
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static GSubprocess *
spawn(GSubprocessFlags flags, const char *const *argv)
{
  g_autoptr(GSubprocessLauncher) launcher = g_subprocess_launcher_new(flags);
  g_autoptr(GError) error = NULL;
  GSubprocess *p;

  g_subprocess_launcher_set_child_setup(launcher, die_with_parent, NULL, NULL);
  p = g_subprocess_launcher_spawnv(launcher, argv, &error);
  g_assert_no_error(error);
  return p;
}

typedef struct {
  GSubprocess *proc;
  char *dir, *path, *url;
  GThread *reader;
  GMutex lock;
  GCond cond;
  GPtrArray *lines;
  gboolean eof;
} Daemon;

static gpointer
daemon_reader(gpointer data)
{
  Daemon *d = data;
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

/* The first logged line holding @text (a copy), or NULL after @timeout_ms. */
static char *
daemon_wait_log(Daemon *d, const char *text, int timeout_ms)
{
  gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
  char *found = NULL;

  g_mutex_lock(&d->lock);
  while (!found) {
    for (guint i = 0; i < d->lines->len && !found; i++)
      if (strstr(d->lines->pdata[i], text))
        found = g_strdup(d->lines->pdata[i]);
    if (found || d->eof || !g_cond_wait_until(&d->cond, &d->lock, end))
      break;
  }
  g_mutex_unlock(&d->lock);
  return found;
}

static void
daemon_start(Daemon *d, const char *const *extra)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autofree char *line = NULL;
  const char *at;

  memset(d, 0, sizeof *d);
  g_mutex_init(&d->lock);
  g_cond_init(&d->cond);
  d->lines = g_ptr_array_new_with_free_func(g_free);
  d->dir = tu_make_tmpdir("gst-vhost-rtsp-XXXXXX");
  d->path = g_build_filename(d->dir, "gpu.sock", NULL);
  g_ptr_array_add(argv, GST_VHOST_GPU);
  g_ptr_array_add(argv, "--socket-path");
  g_ptr_array_add(argv, d->path);
  g_ptr_array_add(argv, "--rtsp");
  g_ptr_array_add(argv, "127.0.0.1:0/vm");
  g_ptr_array_add(argv, "-v");
  for (; extra && *extra; extra++)
    g_ptr_array_add(argv, (gpointer)*extra);
  g_ptr_array_add(argv, NULL);
  d->proc = spawn(G_SUBPROCESS_FLAGS_STDOUT_SILENCE | G_SUBPROCESS_FLAGS_STDERR_PIPE,
                  (const char *const *)argv->pdata);
  d->reader = g_thread_new("daemon-stderr", daemon_reader, d);
  line = daemon_wait_log(d, "rtsp: serving", WAIT_MS);
  g_assert_nonnull(line);
  at = strstr(line, "rtsp://");
  g_assert_nonnull(at);
  d->url = g_strndup(at, strcspn(at, " "));
  g_assert_true(g_str_has_prefix(d->url, "rtsp://127.0.0.1:"));
  g_free(daemon_wait_log(d, "listening on", WAIT_MS));
}

static void
daemon_stop(Daemon *d)
{
  g_subprocess_send_signal(d->proc, SIGTERM);
  g_assert_cmpint(tu_wait_exit(d->proc, WAIT_MS), ==, 0);
  g_thread_join(d->reader);
  g_object_unref(d->proc);
  g_ptr_array_unref(d->lines);
  g_mutex_clear(&d->lock);
  g_cond_clear(&d->cond);
  g_unlink(d->path);
  g_rmdir(d->dir);
  g_free(d->path);
  g_free(d->dir);
  g_free(d->url);
}

/* --- the guest ------------------------------------------------------------- */

typedef struct {
  Daemon d;
  VhuFrontend *fe;
  VhuDisplayServer *ds;
  guint8 *pixels; /* the scanout's backing in guest memory, B8G8R8X8 */
  guint frames;
} Guest;

#define CMD(fe, c) gpu_cmd((fe), &(c), sizeof(c), NULL, 0)

static void
guest_start(Guest *g, const char *const *extra)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 64, 16 };
  VhuDisplayConfig cfg = { 1, W, H, 0x3, FALSE };
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, W, H);
  struct virtio_gpu_mem_entry e;
  g_autofree guint8 *req = NULL;
  guint64 gpa;
  gsize len;

  memset(g, 0, sizeof *g);
  daemon_start(&g->d, extra);
  g->fe = vhu_frontend_connect(g->d.path, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(g->fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(g->fe, GUEST_GPA, GUEST_SIZE, &error));
  g->ds = vhu_display_server_new(&cfg);
  g_assert_true(vhu_display_server_attach(g->ds, g->fe, &error));
  g_assert_true(vhu_frontend_start(
      g->fe, BIT(VIRTIO_GPU_F_EDID) | BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX),
      sizes, 2, &error));
  g_assert_no_error(error);
  gpa = vhu_frontend_alloc(g->fe, (gsize)W * H * 4, 4096);
  g_assert_cmphex(gpa, !=, G_MAXUINT64);
  g->pixels = vhu_frontend_gpa_to_ptr(g->fe, gpa, (gsize)W * H * 4);
  e = (struct virtio_gpu_mem_entry){ gpa, W * H * 4, 0 };
  req = gpu_attach(1, &e, 1, 1, &len);
  g_assert_cmphex(CMD(g->fe, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(gpu_cmd(g->fe, req, len, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(g->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

static void
guest_stop(Guest *g)
{
  g_clear_pointer(&g->fe, vhu_frontend_free);
  g_clear_pointer(&g->ds, vhu_display_server_free);
  daemon_stop(&g->d);
}

/* Paints the top half @rgb (0xRRGGBB) and, with @noise, the bottom half with
 * fresh noise (a picture that costs the encoder bits), then transfers and
 * flushes it.  gpu_cmd fails the test unless each request completes: the
 * guest is never held up by the stream. */
static void
guest_show(Guest *g, guint32 rgb, gboolean noise)
{
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, W, H, 0);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, W, H);
  guint32 *px = (guint32 *)g->pixels;
  guint32 seed = ++g->frames * 2654435761u;

  for (guint y = 0; y < H; y++) {
    for (guint x = 0; x < W; x++) {
      guint32 v = rgb;

      if (noise && y >= H / 2) {
        seed = seed * 1664525u + 1013904223u;
        v = seed >> 8;
      }
      px[y * W + x] = v; /* B8G8R8X8 in memory: 0x00RRGGBB little-endian */
    }
  }
  g_assert_cmphex(CMD(g->fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(g->fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

/* --- a gst-launch-1.0 viewer ----------------------------------------------- */

typedef struct {
  GSubprocess *proc;
  GThread *reader;
  GMutex lock;
  GCond cond;
  guint64 frames;
  guint8 mean[3]; /* the latest frame's top-half centre, averaged */
  gboolean eof;
} Viewer;

static gpointer
viewer_reader(gpointer data)
{
  Viewer *v = data;
  GInputStream *in = g_subprocess_get_stdout_pipe(v->proc);
  g_autofree guint8 *frame = g_malloc((gsize)W * H * 3);
  gsize got;

  while (g_input_stream_read_all(in, frame, (gsize)W * H * 3, &got, NULL, NULL)
         && got == (gsize)W * H * 3) {
    guint sum[3] = { 0 }, n = 0;

    for (guint y = H / 8; y < H * 3 / 8; y++)
      for (guint x = W / 4; x < W * 3 / 4; x++, n++)
        for (guint c = 0; c < 3; c++)
          sum[c] += frame[((gsize)y * W + x) * 3 + c];
    g_mutex_lock(&v->lock);
    for (guint c = 0; c < 3; c++)
      v->mean[c] = (guint8)(sum[c] / n);
    v->frames++;
    g_cond_broadcast(&v->cond);
    g_mutex_unlock(&v->lock);
  }
  g_mutex_lock(&v->lock);
  v->eof = TRUE;
  g_cond_broadcast(&v->cond);
  g_mutex_unlock(&v->lock);
  return NULL;
}

static Viewer *
viewer_start(const char *url, const char *user, const char *pass)
{
  Viewer *v = g_new0(Viewer, 1);
  g_autofree char *loc = g_strdup_printf("location=%s", url);
  g_autofree char *uid = g_strdup_printf("user-id=%s", user ? user : "");
  g_autofree char *upw = g_strdup_printf("user-pw=%s", pass ? pass : "");
  g_autofree char *caps = g_strdup_printf("video/x-raw,format=RGB,width=%u,height=%u", W, H);
  const char *argv[] = { "gst-launch-1.0",
                         "-q",
                         "rtspsrc",
                         loc,
                         "protocols=tcp",
                         "latency=0",
                         uid,
                         upw,
                         "!",
                         "decodebin",
                         "!",
                         "videoconvert",
                         "!",
                         caps,
                         "!",
                         "fdsink",
                         "fd=1",
                         "sync=false",
                         NULL };

  g_mutex_init(&v->lock);
  g_cond_init(&v->cond);
  v->proc = spawn(G_SUBPROCESS_FLAGS_STDOUT_PIPE, argv);
  v->reader = g_thread_new("viewer", viewer_reader, v);
  return v;
}

static gboolean
close_to(const guint8 *mean, guint32 rgb)
{
  for (guint c = 0; c < 3; c++) {
    int want = (rgb >> (16 - 8 * c)) & 0xff;

    if (ABS((int)mean[c] - want) > TOLERANCE)
      return FALSE;
  }
  return TRUE;
}

/* Waits until the viewer decoded a frame whose colour is @rgb; the guest keeps
 * showing it (with fresh noise when @noise) meanwhile. */
static void
viewer_expect(Viewer *v, Guest *g, guint32 rgb, gboolean noise)
{
  gint64 end = g_get_monotonic_time() + (gint64)WAIT_MS * 1000;
  gboolean ok = FALSE;
  guint8 last[3] = { 0 };

  while (!ok && g_get_monotonic_time() < end) {
    gint64 step = g_get_monotonic_time() + 33 * 1000;

    guest_show(g, rgb, noise);
    g_mutex_lock(&v->lock);
    while (!(ok = close_to(v->mean, rgb) && v->frames) && !v->eof
           && g_cond_wait_until(&v->cond, &v->lock, step))
      ;
    memcpy(last, v->mean, 3);
    g_mutex_unlock(&v->lock);
    g_assert_false(v->eof && !ok);
  }
  if (!ok)
    g_error("viewer: no frame of colour %06x within %d ms (last %02x%02x%02x)", rgb, WAIT_MS,
            last[0], last[1], last[2]);
}

static void
viewer_stop(Viewer *v)
{
  g_subprocess_send_signal(v->proc, SIGKILL);
  g_subprocess_wait(v->proc, NULL, NULL);
  g_thread_join(v->reader);
  g_object_unref(v->proc);
  g_mutex_clear(&v->lock);
  g_cond_clear(&v->cond);
  g_free(v);
}

static gboolean
have_program(const char *name)
{
  g_autofree char *path = g_find_program_in_path(name);

  return path != NULL;
}

static const guint32 colours[] = { 0xff0000, 0x00ff00, 0x0000ff, 0xffffff, 0x808080, 0xffff00 };

/* --- tests ----------------------------------------------------------------- */

static void
check_colours(const char *codec)
{
  const char *extra[] = { "--rtsp-codec", codec, NULL };
  Guest g;
  Viewer *v;

  guest_start(&g, extra);
  v = viewer_start(g.d.url, NULL, NULL);
  for (guint i = 0; i < G_N_ELEMENTS(colours); i++)
    viewer_expect(v, &g, colours[i], FALSE);
  viewer_stop(v);
  guest_stop(&g);
}

static void
test_h264(void)
{
  check_colours("h264");
}

static void
test_vp8(void)
{
  check_colours("vp8");
}

/* Runs @argv to its end (bounded) while the guest keeps flushing @rgb;
 * returns its stdout. */
static GBytes *
run_client(Guest *g, const char *const *argv, guint32 rgb, int *status)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GSubprocess) p
      = spawn(G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_SILENCE, argv);
  GInputStream *out;
  GByteArray *buf = g_byte_array_new();
  guint8 chunk[65536];
  gint64 end = g_get_monotonic_time() + (gint64)WAIT_MS * 1000;

  g_assert_no_error(error);
  out = g_subprocess_get_stdout_pipe(p);
  for (;;) {
    int fd = g_unix_input_stream_get_fd(G_UNIX_INPUT_STREAM(out));
    gssize n;

    guest_show(g, rgb, FALSE);
    if (!tu_wait_readable(fd, 33))
      continue;
    n = g_input_stream_read(out, chunk, sizeof chunk, NULL, NULL);
    if (n <= 0)
      break;
    g_byte_array_append(buf, chunk, (guint)n);
    if (g_get_monotonic_time() > end)
      g_error("%s did not finish within %d ms", argv[0], WAIT_MS);
  }
  *status = tu_wait_exit(p, WAIT_MS);
  return g_byte_array_free_to_bytes(buf);
}

/* ffprobe sees an H.264 stream of the mode and decodes frames; ffmpeg decodes
 * one frame whose colour is the guest's. */
static void
test_ffmpeg(void)
{
  Guest g;
  int status;
  g_autoptr(GBytes) probe = NULL, raw = NULL;
  const char *probe_argv[] = { "ffprobe",
                               "-v",
                               "error",
                               "-rtsp_transport",
                               "tcp",
                               "-select_streams",
                               "v:0",
                               "-read_intervals",
                               "%+#3",
                               "-show_entries",
                               "stream=codec_name,width,height:frame=pict_type",
                               "-of",
                               "compact",
                               NULL,
                               NULL };
  const char *ffmpeg_argv[] = { "ffmpeg",
                                "-v",
                                "error",
                                "-rtsp_transport",
                                "tcp",
                                "-i",
                                NULL,
                                "-frames:v",
                                "1",
                                "-vf",
                                "select='eq(pict_type\\,I)+gte(n\\,10)'",
                                "-f",
                                "rawvideo",
                                "-pix_fmt",
                                "rgb24",
                                "-",
                                NULL };
  g_autofree char *text = NULL;
  const guint8 *px;
  gsize len;
  guint sum[3] = { 0 }, n = 0;
  guint8 mean[3];

  if (!have_program("ffprobe") || !have_program("ffmpeg")) {
    g_test_skip("ffprobe/ffmpeg not installed (ffmpeg)");
    return;
  }
  guest_start(&g, NULL);
  probe_argv[13] = g.d.url;
  probe = run_client(&g, probe_argv, 0x00ff00, &status);
  g_assert_cmpint(status, ==, 0);
  text = g_strndup(g_bytes_get_data(probe, NULL), g_bytes_get_size(probe));
  if (g_test_verbose())
    g_printerr("# ffprobe: %s\n", text);
  g_assert_nonnull(strstr(text, "codec_name=h264|width=320|height=240"));
  g_assert_nonnull(strstr(text, "frame|pict_type="));

  ffmpeg_argv[6] = g.d.url;
  raw = run_client(&g, ffmpeg_argv, 0x0000ff, &status);
  g_assert_cmpint(status, ==, 0);
  px = g_bytes_get_data(raw, &len);
  g_assert_cmpuint(len, ==, (gsize)W * H * 3);
  for (guint y = H / 8; y < H * 3 / 8; y++)
    for (guint x = W / 4; x < W * 3 / 4; x++, n++)
      for (guint c = 0; c < 3; c++)
        sum[c] += px[((gsize)y * W + x) * 3 + c];
  for (guint c = 0; c < 3; c++)
    mean[c] = (guint8)(sum[c] / n);
  if (!close_to(mean, 0x0000ff))
    g_error("ffmpeg decoded %02x%02x%02x, expected 0000ff", mean[0], mean[1], mean[2]);
  guest_stop(&g);
}

/* Two viewers at once; one leaves, the other goes on; a third joins. */
static void
test_viewers(void)
{
  Guest g;
  Viewer *a, *b, *c;

  guest_start(&g, NULL);
  a = viewer_start(g.d.url, NULL, NULL);
  b = viewer_start(g.d.url, NULL, NULL);
  viewer_expect(a, &g, 0xff0000, FALSE);
  viewer_expect(b, &g, 0xff0000, FALSE);
  viewer_expect(a, &g, 0x00ff00, FALSE);
  viewer_expect(b, &g, 0x00ff00, FALSE);
  viewer_stop(b);
  viewer_expect(a, &g, 0x0000ff, FALSE);
  c = viewer_start(g.d.url, NULL, NULL);
  viewer_expect(c, &g, 0xffffff, FALSE);
  viewer_expect(a, &g, 0xffffff, FALSE);
  viewer_stop(c);
  viewer_stop(a);
  /* Every viewer gone; a new one starts the stream again. */
  a = viewer_start(g.d.url, NULL, NULL);
  viewer_expect(a, &g, 0xffff00, FALSE);
  viewer_stop(a);
  guest_stop(&g);
}

/* Basic authentication: the right credentials play, none or wrong ones are
 * refused. */
static void
test_auth(void)
{
  const char *extra[] = { "--rtsp-auth", "alice:s3cret", NULL };
  const char *probe_argv[] = { "ffprobe", "-v", "error", "-rtsp_transport", "tcp", NULL, NULL };
  g_autofree char *wrong = NULL;
  g_autoptr(GBytes) o1 = NULL, o2 = NULL;
  Guest g;
  Viewer *v;
  int status;

  guest_start(&g, extra);
  v = viewer_start(g.d.url, "alice", "s3cret");
  viewer_expect(v, &g, 0xff0000, FALSE);
  viewer_stop(v);
  if (have_program("ffprobe")) {
    probe_argv[5] = g.d.url;
    o1 = run_client(&g, probe_argv, 0xff0000, &status);
    g_assert_cmpint(status, !=, 0);
    wrong = g_strdup_printf("rtsp://alice:wrong@%s", g.d.url + strlen("rtsp://"));
    probe_argv[5] = wrong;
    o2 = run_client(&g, probe_argv, 0xff0000, &status);
    g_assert_cmpint(status, !=, 0);
  }
  guest_stop(&g);
}

/* --- a viewer that stops reading ------------------------------------------- */

static void rtsp_send(int fd, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
rtsp_send(int fd, const char *fmt, ...)
{
  g_autofree char *msg = NULL;
  va_list args;
  gsize len;

  va_start(args, fmt);
  msg = g_strdup_vprintf(fmt, args);
  va_end(args);
  len = strlen(msg);
  g_assert_cmpint(send(fd, msg, len, MSG_NOSIGNAL), ==, (gssize)len);
}

/* One RTSP response (headers and body), or fails the test. */
static char *
rtsp_recv(int fd)
{
  GString *s = g_string_new(NULL);
  const char *cl;
  gsize body = 0;
  char ch;

  while (!g_str_has_suffix(s->str, "\r\n\r\n")) {
    g_assert_true(tu_wait_readable(fd, WAIT_MS));
    g_assert_cmpint(recv(fd, &ch, 1, 0), ==, 1);
    g_string_append_c(s, ch);
  }
  cl = strstr(s->str, "Content-Length:");
  if (cl)
    body = (gsize)g_ascii_strtoull(cl + strlen("Content-Length:"), NULL, 10);
  g_assert_cmpuint(body, <, 65536);
  while (body--) {
    g_assert_true(tu_wait_readable(fd, WAIT_MS));
    g_assert_cmpint(recv(fd, &ch, 1, 0), ==, 1);
    g_string_append_c(s, ch);
  }
  g_assert_true(g_str_has_prefix(s->str, "RTSP/1.0 200"));
  return g_string_free(s, FALSE);
}

/* DESCRIBE, SETUP (interleaved over this TCP connection), PLAY; then the
 * caller never reads again.  A small receive buffer fills at once. */
static int
stalled_viewer(const char *url, guint port)
{
  struct sockaddr_in sa = { .sin_family = AF_INET,
                            .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), rcvbuf = 4096;
  g_autofree char *d = NULL, *s = NULL, *p = NULL, *session = NULL;
  const char *sess;

  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), ==, 0);
  g_assert_cmpint(connect(fd, (struct sockaddr *)&sa, sizeof sa), ==, 0);
  rtsp_send(fd, "DESCRIBE %s RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n", url);
  d = rtsp_recv(fd);
  g_assert_nonnull(strstr(d, "a=control:stream=0"));
  rtsp_send(fd,
            "SETUP %s/stream=0 RTSP/1.0\r\nCSeq: 2\r\n"
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n",
            url);
  s = rtsp_recv(fd);
  sess = strstr(s, "Session: ");
  g_assert_nonnull(sess);
  sess += strlen("Session: ");
  session = g_strndup(sess, strcspn(sess, ";\r"));
  rtsp_send(fd, "PLAY %s RTSP/1.0\r\nCSeq: 3\r\nSession: %s\r\n\r\n", url, session);
  p = rtsp_recv(fd);
  return fd;
}

/* The bytes the server's end of the connection to local port @client has
 * queued and not yet sent (tx_queue in /proc/net/tcp). */
static guint64
server_unsent(guint server, guint client)
{
  g_autofree char *text = NULL;
  g_auto(GStrv) lines = NULL;

  g_assert_true(g_file_get_contents("/proc/net/tcp", &text, NULL, NULL));
  lines = g_strsplit(text, "\n", -1);
  for (guint i = 1; lines[i]; i++) {
    unsigned lport, rport;
    unsigned long long tx;
    char laddr[16], raddr[16];

    if (sscanf(lines[i], "%*u: %8[0-9A-F]:%x %8[0-9A-F]:%x %*x %llx", laddr, &lport, raddr, &rport,
               &tx)
            == 5
        && lport == server && rport == client)
      return tx;
  }
  g_error("no server socket %u -> %u in /proc/net/tcp", server, client);
  return 0;
}

static void
test_stalled_viewer(void)
{
  Guest g;
  Viewer *a;
  int fd, queued = 0, rcvbuf = 0;
  socklen_t sl = sizeof rcvbuf;
  struct sockaddr_in me;
  socklen_t ml = sizeof me;
  guint64 unsent = 0;
  guint port;
  const char *colon;

  guest_start(&g, NULL);
  colon = strrchr(g.d.url, ':');
  port = (guint)g_ascii_strtoull(colon + 1, NULL, 10);
  a = viewer_start(g.d.url, NULL, NULL);
  viewer_expect(a, &g, 0xff0000, TRUE);
  fd = stalled_viewer(g.d.url, port);
  g_assert_cmpint(getsockname(fd, (struct sockaddr *)&me, &ml), ==, 0);
  /* Noisy frames until the server's socket to the stalled viewer is full (its
   * unsent bytes stop growing: a write to it would block), then ten rounds
   * more: the guest and viewer a see every colour change all along. */
  for (guint round = 0, still = 0, after = 0; after < 10; round++) {
    guint64 prev = unsent;

    g_assert_cmpuint(round, <, 400);
    for (guint i = 0; i < G_N_ELEMENTS(colours); i++)
      viewer_expect(a, &g, colours[i], TRUE);
    unsent = server_unsent(port, ntohs(me.sin_port));
    still = unsent > 0 && unsent == prev ? still + 1 : 0;
    if (still >= 3 || after)
      after++;
  }
  g_assert_cmpint(ioctl(fd, FIONREAD, &queued), ==, 0);
  g_assert_cmpint(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &sl), ==, 0);
  if (g_test_verbose())
    g_printerr("# stalled viewer: %d bytes unread (receive buffer %d), %" G_GUINT64_FORMAT
               " unsent at the server; viewer a: %" G_GUINT64_FORMAT " frames\n",
               queued, rcvbuf, unsent, a->frames);
  /* It really stalled: its receive queue is full, nothing was taken out. */
  g_assert_cmpint(queued, >=, rcvbuf / 4);
  /* ... and the server's socket to it is full. */
  g_assert_cmpuint(unsent, >, 0);
  viewer_stop(a);
  close(fd);
  guest_stop(&g);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  if (!have_program("gst-launch-1.0")) {
    g_printerr("gst-launch-1.0 not installed (gstreamer1.0-tools)\n");
    return 77;
  }
  g_test_add_func("/rtsp/h264-gst-launch", test_h264);
  g_test_add_func("/rtsp/vp8-gst-launch", test_vp8);
  g_test_add_func("/rtsp/ffprobe-ffmpeg", test_ffmpeg);
  g_test_add_func("/rtsp/viewers-join-leave", test_viewers);
  g_test_add_func("/rtsp/auth", test_auth);
  g_test_add_func("/rtsp/stalled-viewer", test_stalled_viewer);
  return g_test_run();
}
