/* The stream pipelines (plugins/gstvhostsndstream) follow their pipeline's
 * clock, whatever its pace: with a GstTestClock that only moves when the
 * test moves it, a playback buffer of one period completes exactly when
 * the clock has gone one period further, neither before nor later, and
 * what the guest did not send is an XRUN.  The device is served in-process
 * over a real socket to the project's frontend driver. */
#include <glib/gstdio.h>
#include <gst/check/gsttestclock.h>
#include <gst/gst.h>
#include <string.h>

#include "gstvhostsndstream.h"
#include "test-util.h"
#include "vhu-frontend.h"

#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (4u << 20)
#define FRAME      4u
#define PERIOD_FR  2400u /* 50 ms at 48 kHz: five 10 ms ticks */
#define PERIOD     (PERIOD_FR * FRAME)
#define TICKS      5u
#define N_BUFS     4u

typedef struct {
  GMainContext *ctx;
  GMainLoop *loop;
  GThread *thread;
  char *dir, *path;
  VsndVhost *vsnd;
  GstVhostSndStream *pipelines;
  GstTestClock *clock;
  VhuFrontend *fe;
} Fixture;

static VsndStreamConfig streams[] = {
  { 0, VIRTIO_SND_D_OUTPUT, 2, 2, 1ull << VIRTIO_SND_PCM_FMT_S16,
    1ull << VIRTIO_SND_PCM_RATE_48000 },
};

static void
setup(Fixture *f, gconstpointer data)
{
  VsndVhostConfig config = { { G_N_ELEMENTS(streams), streams, 0, NULL, 0, NULL, FALSE } };
  const guint sizes[VSND_NUM_QUEUES] = { 64, 64, 64, 64 };
  g_autoptr(GError) error = NULL;

  f->ctx = g_main_context_new();
  f->loop = g_main_loop_new(f->ctx, FALSE);
  f->dir = tu_make_tmpdir("test-sound-clock-XXXXXX");
  f->path = g_build_filename(f->dir, "snd.sock", NULL);
  f->vsnd = vsnd_vhost_new(&config, f->ctx, &error);
  g_assert_no_error(error);
  f->clock = GST_TEST_CLOCK(gst_test_clock_new());
  f->pipelines = gst_vhost_snd_stream_new(f->vsnd, f->ctx);
  gst_vhost_snd_stream_set_description(f->pipelines, 0, "fakesink");
  gst_vhost_snd_stream_set_clock(f->pipelines, GST_CLOCK(f->clock));
  g_assert_true(gst_vhost_snd_stream_start(f->pipelines, &error));
  g_assert_no_error(error);
  g_assert_true(vhu_backend_listen(vsnd_vhost_get_backend(f->vsnd), f->path, &error));
  f->thread = tu_loop_thread_new("control", f->loop);
  f->fe = vhu_frontend_connect(f->path, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(f->fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(f->fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_true(vhu_frontend_start(f->fe, 0, sizes, VSND_NUM_QUEUES, &error));
  g_assert_no_error(error);
}

static void
teardown(Fixture *f, gconstpointer data)
{
  vhu_frontend_free(f->fe);
  gst_vhost_snd_stream_free(f->pipelines);
  tu_loop_thread_join(f->thread, f->loop);
  vsnd_vhost_free(f->vsnd);
  gst_object_unref(f->clock);
  g_main_loop_unref(f->loop);
  g_main_context_unref(f->ctx);
  g_unlink(f->path);
  g_rmdir(f->dir);
  g_free(f->path);
  g_free(f->dir);
}

static guint32
ctrl(Fixture *f, const void *req, gsize len)
{
  g_autoptr(GError) error = NULL;
  guint32 status = 0;

  g_assert_cmpint(vhu_driver_queue_transact(vhu_frontend_get_queue(f->fe, VSND_CTRL_QUEUE), req,
                                            len, &status, sizeof status, &error),
                  ==, 4);
  return status;
}

static guint32
pcm(Fixture *f, guint32 code)
{
  struct virtio_snd_pcm_hdr h = { { code }, 0 };

  return ctrl(f, &h, sizeof h);
}

/* Completions waiting in the used ring now (no waiting). */
static guint
take_used(Fixture *f)
{
  VhuDriverQueue *q = vhu_frontend_get_queue(f->fe, VSND_TX_QUEUE);
  gpointer token;
  guint32 len;
  guint n = 0;

  while (vhu_driver_queue_get_used(q, &token, &len))
    n++;
  return n;
}

/* Moves the clock to the stream's next tick and waits until the stream
 * handled it (it waits for the one after). */
static void
tick(Fixture *f)
{
  gst_test_clock_crank(f->clock);
  gst_test_clock_wait_for_next_pending_id(f->clock, NULL);
}

static void
test_playback_follows_clock(Fixture *f, gconstpointer data)
{
  struct virtio_snd_pcm_set_params p = { { { VIRTIO_SND_R_PCM_SET_PARAMS }, 0 },
                                         N_BUFS * PERIOD,
                                         PERIOD,
                                         0,
                                         2,
                                         VIRTIO_SND_PCM_FMT_S16,
                                         VIRTIO_SND_PCM_RATE_48000 };
  VhuDriverQueue *q = vhu_frontend_get_queue(f->fe, VSND_TX_QUEUE);
  VsndDeviceStats stats;
  guint done = 0;

  g_assert_cmphex(ctrl(f, &p, sizeof p), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_PREPARE), ==, VIRTIO_SND_S_OK);
  for (guint i = 0; i < N_BUFS; i++) {
    guint64 gpa = vhu_frontend_alloc(f->fe, 4 + PERIOD + 8, 16);
    guint8 *host = vhu_frontend_gpa_to_ptr(f->fe, gpa, 4 + PERIOD + 8);
    VhuGuestBuf out = { gpa, 4 + PERIOD }, in = { gpa + 4 + PERIOD, 8 };

    memset(host, 0, 4 + PERIOD + 8);
    g_assert_cmpint(vhu_driver_queue_add(q, &out, 1, &in, 1, FALSE, host), >=, 0);
  }
  vhu_driver_queue_kick(q);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_START), ==, VIRTIO_SND_S_OK);
  /* The stream starts at the clock's present and waits for its first tick. */
  gst_test_clock_wait_for_next_pending_id(f->clock, NULL);
  for (guint t = 1; t <= (N_BUFS + 1) * TICKS; t++) {
    tick(f);
    done += take_used(f);
    /* Buffer k completes at tick (k + 1) * TICKS: its last frame is due. */
    g_assert_cmpuint(done, ==, MIN(t / TICKS, N_BUFS));
  }
  /* The last TICKS ticks found nothing to play: one underrun, a period of
   * silence. */
  vsnd_vhost_lock(f->vsnd);
  vsnd_device_get_stats(vsnd_vhost_get_device(f->vsnd), &stats);
  vsnd_vhost_unlock(f->vsnd);
  g_assert_cmpuint(stats.underruns, ==, 1);
  g_assert_cmpuint(stats.silence_bytes, ==, PERIOD);
  g_assert_cmpuint(stats.tx_bytes, ==, N_BUFS * PERIOD);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_STOP), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_RELEASE), ==, VIRTIO_SND_S_OK);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  gst_init(NULL, NULL);
  g_test_add("/sound/stream-clock/playback-follows-clock", Fixture, NULL, setup,
             test_playback_follows_clock, teardown);
  return g_test_run();
}
