/* The sound device behind a real VhuBackend, driven over a Unix socket by
 * the project's frontend driver with memfd guest memory: control requests,
 * playback and capture round trips (frames read and written by an output
 * on the test thread while the backend's queue thread pops), events kept
 * across a ring stop, and a frontend that leaves mid-stream. */
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "test-util.h"
#include "vhu-frontend.h"
#include "vsnd-vhost.h"

#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (4u << 20)
#define TIMEOUT_MS 5000
#define PERIOD     1024u

typedef struct {
  GMainContext *ctx;
  GMainLoop *loop;
  GThread *thread;
  char *dir, *path;
  VsndVhost *vsnd;
  VhuFrontend *fe;
  GMutex lock; /* below */
  GString *calls;
  gdouble gain;
  gboolean mute;
} Fixture;

static VsndStreamConfig streams[] = {
  { 0, VIRTIO_SND_D_OUTPUT, 2, 2, 1ull << VIRTIO_SND_PCM_FMT_S16,
    1ull << VIRTIO_SND_PCM_RATE_48000 },
  { 0, VIRTIO_SND_D_INPUT, 2, 2, 1ull << VIRTIO_SND_PCM_FMT_S16,
    1ull << VIRTIO_SND_PCM_RATE_48000 },
};
static VsndJackConfig jacks[] = { { 0, 0x02211010, 0x14, FALSE, FALSE } };

/* --- the output (called with the device lock held, from any thread) ------ */

static void
note(Fixture *f, const char *what, guint stream)
{
  g_mutex_lock(&f->lock);
  g_string_append_printf(f->calls, "%s%u ", what, stream);
  g_mutex_unlock(&f->lock);
}

static gboolean
o_open(gpointer data, guint stream, const VsndPcmParams *params)
{
  note(data, "open", stream);
  return TRUE;
}

static void
o_start(gpointer data, guint stream)
{
  note(data, "start", stream);
}

static void
o_stop(gpointer data, guint stream)
{
  note(data, "stop", stream);
}

static void
o_close(gpointer data, guint stream)
{
  note(data, "close", stream);
}

static void
o_volume(gpointer data, guint stream, gdouble gain, gboolean mute)
{
  Fixture *f = data;

  if (stream != 0)
    return;
  g_mutex_lock(&f->lock);
  f->gain = gain;
  f->mute = mute;
  g_mutex_unlock(&f->lock);
}

static const VsndStreamIface output = { o_open, o_start, o_stop, o_close, NULL, o_volume, NULL };

/* --- frontend -------------------------------------------------------------- */

static void
frontend_connect(Fixture *f, gboolean ctls)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[VSND_NUM_QUEUES] = { 64, 64, 64, 64 };
  guint64 drv = (1ull << VHU_F_RING_INDIRECT_DESC) | (1ull << VHU_F_RING_EVENT_IDX);

  if (ctls)
    drv |= 1ull << VIRTIO_SND_F_CTLS;
  f->fe = vhu_frontend_connect(f->path, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(f->fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(f->fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_true(vhu_frontend_start(f->fe, drv, sizes, VSND_NUM_QUEUES, &error));
  g_assert_no_error(error);
}

static void
setup(Fixture *f, gconstpointer data)
{
  VsndVhostConfig config
      = { { G_N_ELEMENTS(streams), streams, G_N_ELEMENTS(jacks), jacks, 0, NULL, TRUE } };
  g_autoptr(GError) error = NULL;

  g_mutex_init(&f->lock);
  f->calls = g_string_new(NULL);
  f->ctx = g_main_context_new();
  f->loop = g_main_loop_new(f->ctx, FALSE);
  f->dir = tu_make_tmpdir("test-sound-vhost-XXXXXX");
  f->path = g_build_filename(f->dir, "snd.sock", NULL);
  f->vsnd = vsnd_vhost_new(&config, f->ctx, &error);
  g_assert_no_error(error);
  vsnd_vhost_set_stream_iface(f->vsnd, &output, f);
  g_assert_true(vhu_backend_listen(vsnd_vhost_get_backend(f->vsnd), f->path, &error));
  g_assert_no_error(error);
  f->thread = tu_loop_thread_new("control", f->loop);
  frontend_connect(f, TRUE);
}

static void
teardown(Fixture *f, gconstpointer data)
{
  vhu_frontend_free(f->fe);
  tu_loop_thread_join(f->thread, f->loop);
  vsnd_vhost_free(f->vsnd);
  g_main_loop_unref(f->loop);
  g_main_context_unref(f->ctx);
  g_unlink(f->path);
  g_rmdir(f->dir);
  g_free(f->path);
  g_free(f->dir);
  g_string_free(f->calls, TRUE);
  g_mutex_clear(&f->lock);
}

static VhuDriverQueue *
queue(Fixture *f, guint idx)
{
  return vhu_frontend_get_queue(f->fe, idx);
}

/* A control request; returns the status, the answer in @resp. */
static guint32
ctrl(Fixture *f, const void *req, gsize len, void *resp, gsize resp_len)
{
  g_autoptr(GError) error = NULL;
  guint8 buf[1024];
  gssize n;

  g_assert_cmpuint(resp_len, <=, sizeof buf);
  n = vhu_driver_queue_transact(queue(f, VSND_CTRL_QUEUE), req, len, buf, MAX(resp_len, 4), &error);
  g_assert_no_error(error);
  g_assert_cmpint(n, >=, 4);
  if (resp)
    memcpy(resp, buf, resp_len);
  return *(guint32 *)buf;
}

static guint32
pcm(Fixture *f, guint32 code, guint32 stream)
{
  struct virtio_snd_pcm_hdr h = { { code }, stream };

  return ctrl(f, &h, sizeof h, NULL, 4);
}

static void
stream_up(Fixture *f, guint32 stream)
{
  struct virtio_snd_pcm_set_params p = { { { VIRTIO_SND_R_PCM_SET_PARAMS }, stream },
                                         4 * PERIOD,
                                         PERIOD,
                                         1u << VIRTIO_SND_PCM_F_EVT_XRUNS,
                                         2,
                                         VIRTIO_SND_PCM_FMT_S16,
                                         VIRTIO_SND_PCM_RATE_48000 };

  g_assert_cmphex(ctrl(f, &p, sizeof p, NULL, 4), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_PREPARE, stream), ==, VIRTIO_SND_S_OK);
}

/* A transfer in guest memory: header + frames readable (tx), or header
 * readable and frames + status writable (rx). */
typedef struct {
  guint64 gpa;
  guint8 *host;
  gsize frames;
} Buf;

static Buf
xfer_add(Fixture *f, guint qidx, guint32 stream, const guint8 *frames, gsize n)
{
  Buf b = { 0 };
  gsize size = 4 + n + 8;
  VhuGuestBuf out, in;

  b.gpa = vhu_frontend_alloc(f->fe, size, 16);
  g_assert_cmphex(b.gpa, !=, G_MAXUINT64);
  b.host = vhu_frontend_gpa_to_ptr(f->fe, b.gpa, size);
  b.frames = n;
  memset(b.host, 0xee, size);
  memcpy(b.host, &stream, 4);
  if (qidx == VSND_TX_QUEUE) {
    memcpy(b.host + 4, frames, n);
    out = (VhuGuestBuf){ b.gpa, (guint32)(4 + n) };
    in = (VhuGuestBuf){ b.gpa + 4 + n, 8 };
  } else {
    out = (VhuGuestBuf){ b.gpa, 4 };
    in = (VhuGuestBuf){ b.gpa + 4, (guint32)(n + 8) };
  }
  g_assert_cmpint(vhu_driver_queue_add(queue(f, qidx), &out, 1, &in, 1, FALSE, b.host), >=, 0);
  vhu_driver_queue_kick(queue(f, qidx));
  return b;
}

/* Waits for the next used element of @qidx; returns its token. */
static gpointer
used(Fixture *f, guint qidx, guint32 *len)
{
  gint64 end = g_get_monotonic_time() + TIMEOUT_MS * 1000;
  gpointer token;

  while (!vhu_driver_queue_get_used(queue(f, qidx), &token, len)) {
    g_assert_cmpint(g_get_monotonic_time(), <, end);
    vhu_driver_queue_wait(queue(f, qidx), 100);
  }
  return token;
}

static guint32
status_of(const Buf *b)
{
  guint32 st;

  memcpy(&st, b->host + 4 + b->frames, 4);
  return st;
}

/* Frames the queue thread has taken in: waits until @stream holds @n. */
static void
wait_queued(Fixture *f, guint stream, gsize n)
{
  gint64 end = g_get_monotonic_time() + TIMEOUT_MS * 1000;

  for (;;) {
    gsize q;

    vsnd_vhost_lock(f->vsnd);
    q = vsnd_device_get_queued(vsnd_vhost_get_device(f->vsnd), stream);
    vsnd_vhost_unlock(f->vsnd);
    if (q == n)
      return;
    g_assert_cmpint(g_get_monotonic_time(), <, end);
    g_usleep(1000); /* polling a condition with a bound, not a verdict */
  }
}

static void
pattern(guint8 *buf, gsize n, guint seed)
{
  for (gsize i = 0; i < n; i++)
    buf[i] = (guint8)(i * 13 + seed * 101 + (i >> 9));
}

/* --- tests ----------------------------------------------------------------- */

static void
test_config(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  struct virtio_snd_config c;
  struct virtio_snd_query_info q = { { VIRTIO_SND_R_PCM_INFO }, 0, 2, 32 };
  guint8 r[4 + 64];

  g_assert_true(vhu_frontend_get_config(f->fe, 0, &c, sizeof c, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(c.streams, ==, 2);
  g_assert_cmpuint(c.jacks, ==, 1);
  g_assert_cmpuint(c.chmaps, ==, 0);
  g_assert_cmpuint(c.controls, ==, 4);
  g_assert_true(vhu_frontend_get_backend_features(f->fe) & (1ull << VIRTIO_SND_F_CTLS));
  g_assert_cmphex(ctrl(f, &q, sizeof q, r, sizeof r), ==, VIRTIO_SND_S_OK);
  g_assert_cmpuint(r[4 + 24], ==, VIRTIO_SND_D_OUTPUT);
  g_assert_cmpuint(r[4 + 32 + 24], ==, VIRTIO_SND_D_INPUT);
  /* A request whose header spans two descriptors. */
  {
    guint64 gpa = vhu_frontend_alloc(f->fe, 64, 16);
    guint8 *p = vhu_frontend_gpa_to_ptr(f->fe, gpa, 64);
    VhuGuestBuf out[2] = { { gpa, 3 }, { gpa + 3, sizeof q - 3 } };
    VhuGuestBuf in = { gpa + 32, 4 + 32 };
    guint32 len;

    memcpy(p, &q, sizeof q);
    q.count = 1;
    memcpy(p, &q, sizeof q);
    g_assert_cmpint(vhu_driver_queue_add(queue(f, 0), out, 2, &in, 1, FALSE, p), >=, 0);
    vhu_driver_queue_kick(queue(f, 0));
    g_assert_true(used(f, 0, &len) == p);
    g_assert_cmpuint(len, ==, 36);
    g_assert_cmphex(*(guint32 *)(p + 32), ==, VIRTIO_SND_S_OK);
  }
}

static void
test_playback(Fixture *f, gconstpointer data)
{
  guint8 frames[3][PERIOD], out[3 * PERIOD];
  Buf b[3], bad;
  guint32 len;

  stream_up(f, 0);
  for (guint i = 0; i < 3; i++) {
    pattern(frames[i], PERIOD, i);
    b[i] = xfer_add(f, VSND_TX_QUEUE, 0, frames[i], PERIOD);
  }
  bad = xfer_add(f, VSND_TX_QUEUE, 7, frames[0], 64); /* no such stream: answered at once */
  g_assert_true(used(f, VSND_TX_QUEUE, &len) == bad.host);
  g_assert_cmpuint(len, ==, 8);
  g_assert_cmphex(status_of(&bad), ==, VIRTIO_SND_S_IO_ERR);
  wait_queued(f, 0, 3 * PERIOD);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_START, 0), ==, VIRTIO_SND_S_OK);
  /* The output reads on this thread: two buffers whole, the third half. */
  g_assert_cmpuint(vsnd_vhost_read(f->vsnd, 0, out, 2 * PERIOD + PERIOD / 2, FALSE), ==,
                   2 * PERIOD + PERIOD / 2);
  for (guint i = 0; i < 2; i++) {
    g_assert_true(used(f, VSND_TX_QUEUE, &len) == b[i].host);
    g_assert_cmphex(status_of(&b[i]), ==, VIRTIO_SND_S_OK);
    g_assert_cmpmem(out + i * PERIOD, PERIOD, frames[i], PERIOD);
  }
  g_assert_false(vhu_driver_queue_get_used(queue(f, VSND_TX_QUEUE), NULL, &len));
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_STOP, 0), ==, VIRTIO_SND_S_OK);
  /* RELEASE answers only after the half-played buffer came back. */
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_RELEASE, 0), ==, VIRTIO_SND_S_OK);
  g_assert_true(vhu_driver_queue_get_used(queue(f, VSND_TX_QUEUE), NULL, &len));
  g_assert_cmphex(status_of(&b[2]), ==, VIRTIO_SND_S_IO_ERR);
  g_mutex_lock(&f->lock);
  g_assert_cmpstr(f->calls->str, ==, "open0 start0 stop0 close0 ");
  g_mutex_unlock(&f->lock);
}

static void
test_capture(Fixture *f, gconstpointer data)
{
  guint8 frames[2 * PERIOD];
  Buf b[2];
  guint32 len;

  stream_up(f, 1);
  b[0] = xfer_add(f, VSND_RX_QUEUE, 1, NULL, PERIOD);
  b[1] = xfer_add(f, VSND_RX_QUEUE, 1, NULL, PERIOD);
  wait_queued(f, 1, 2 * PERIOD);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_START, 1), ==, VIRTIO_SND_S_OK);
  pattern(frames, sizeof frames, 4);
  g_assert_cmpuint(vsnd_vhost_write(f->vsnd, 1, frames, PERIOD + 100), ==, PERIOD + 100);
  g_assert_true(used(f, VSND_RX_QUEUE, &len) == b[0].host);
  g_assert_cmpuint(len, ==, PERIOD + 8);
  g_assert_cmpmem(b[0].host + 4, PERIOD, frames, PERIOD);
  g_assert_cmphex(status_of(&b[0]), ==, VIRTIO_SND_S_OK);
  /* STOP ends the capture: 100 bytes come back in the second buffer. */
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_STOP, 1), ==, VIRTIO_SND_S_OK);
  g_assert_true(used(f, VSND_RX_QUEUE, &len) == b[1].host);
  g_assert_cmpuint(len, ==, 100 + 8);
  g_assert_cmpmem(b[1].host + 4, 100, frames + PERIOD, 100);
  g_assert_cmphex(status_of(&b[1]), ==, VIRTIO_SND_S_OK);
}

static void
test_events_across_stop(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  guint8 *p;
  guint32 len;
  guint64 gpa;

  gpa = vhu_frontend_alloc(f->fe, 8, 8);
  p = vhu_frontend_gpa_to_ptr(f->fe, gpa, 8);
  g_assert_cmpint(vhu_driver_queue_add(queue(f, VSND_EVENT_QUEUE), NULL, 0,
                                       &(VhuGuestBuf){ gpa, 8 }, 1, FALSE, p),
                  >=, 0);
  vhu_driver_queue_kick(queue(f, VSND_EVENT_QUEUE));
  /* The held buffer goes back to the ring when it stops: GET_VRING_BASE
   * counts it as not taken, so a resumed VM hands it out again. */
  {
    gint64 end = g_get_monotonic_time() + TIMEOUT_MS * 1000;
    while (vhu_vring_get_base(vhu_backend_get_vring(vsnd_vhost_get_backend(f->vsnd), 1)) == 0) {
      g_assert_cmpint(g_get_monotonic_time(), <, end);
      g_usleep(1000);
    }
  }
  g_assert_true(vhu_frontend_stop(f->fe, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(vhu_vring_get_base(vhu_backend_get_vring(vsnd_vhost_get_backend(f->vsnd), 1)),
                   ==, 0);
  g_assert_false(vhu_driver_queue_get_used(queue(f, VSND_EVENT_QUEUE), NULL, &len));
}

static void
test_reconnect(Fixture *f, gconstpointer data)
{
  struct {
    struct virtio_snd_ctl_hdr h;
    struct virtio_snd_ctl_value v;
  } w = { { { VIRTIO_SND_R_CTL_WRITE }, 0 } };
  struct virtio_snd_ctl_hdr rd = { { VIRTIO_SND_R_CTL_READ }, 0 };
  guint8 frames[PERIOD], r[4 + 512];
  gint64 end;

  w.v.value.integer[0] = 40;
  g_assert_cmphex(ctrl(f, &w, sizeof w, NULL, 4), ==, VIRTIO_SND_S_OK);
  stream_up(f, 0);
  pattern(frames, sizeof frames, 1);
  xfer_add(f, VSND_TX_QUEUE, 0, frames, PERIOD);
  wait_queued(f, 0, PERIOD);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_START, 0), ==, VIRTIO_SND_S_OK);
  /* The frontend vanishes mid-stream: the device resets, the output is
   * closed, the held buffer is dropped. */
  vhu_frontend_free(f->fe);
  f->fe = NULL;
  end = g_get_monotonic_time() + TIMEOUT_MS * 1000;
  for (;;) {
    gboolean closed;

    g_mutex_lock(&f->lock);
    closed = strstr(f->calls->str, "close0") != NULL;
    g_mutex_unlock(&f->lock);
    if (closed)
      break;
    g_assert_cmpint(g_get_monotonic_time(), <, end);
    g_usleep(1000);
  }
  g_assert_cmpuint(vsnd_vhost_read(f->vsnd, 0, frames, PERIOD, FALSE), ==, 0);
  /* The next frontend finds a fresh stream and the volume it left. */
  frontend_connect(f, TRUE);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_START, 0), ==, VIRTIO_SND_S_BAD_MSG);
  g_assert_cmphex(ctrl(f, &rd, sizeof rd, r, sizeof r), ==, VIRTIO_SND_S_OK);
  g_assert_cmpint(*(gint32 *)(r + 4), ==, 40);
  g_mutex_lock(&f->lock);
  g_assert_cmpfloat_with_epsilon(f->gain, vsnd_volume_to_gain(40), 1e-12);
  g_mutex_unlock(&f->lock);
  stream_up(f, 0);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);

#define ADD(path, fn) g_test_add(path, Fixture, NULL, setup, fn, teardown)
  ADD("/sound/vhost/config", test_config);
  ADD("/sound/vhost/playback", test_playback);
  ADD("/sound/vhost/capture", test_capture);
  ADD("/sound/vhost/events-across-stop", test_events_across_stop);
  ADD("/sound/vhost/reconnect", test_reconnect);
#undef ADD
  return g_test_run();
}
