/* The gst-vhost-sound daemon through the project's frontend driver: program
 * conventions, and real-time pacing of playback and capture measured
 * against the clock. */
#include <glib/gstdio.h>
#include <string.h>

#include "test-util.h"
#include "vhu-frontend.h"
#include "vsnd-device.h"

#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (8u << 20)
#define TIMEOUT_MS 5000
#define RATE       48000u
#define FRAME      4u                  /* S16 stereo */
#define PERIOD_FR  2400u               /* 50 ms */
#define PERIOD     (PERIOD_FR * FRAME) /* bytes */
#define PERIOD_US  (PERIOD_FR * G_USEC_PER_SEC / RATE)
#define N_QUEUED   4u
#define N_PERIODS  48u /* 2.4 s */
/* How late a completion may be before the test gives up on it: an upper
 * bound for something that must happen, far above one period, so that a
 * loaded machine cannot fail the test.  How late completions were on this
 * run is printed, not judged. */
#define LATE_LIMIT_US (2 * G_USEC_PER_SEC)

typedef struct {
  TuBackend b;
  VhuFrontend *fe;
} Fixture;

static void
setup(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  const char *argv[] = { GST_VHOST_SOUND, "--socket-path", NULL, NULL };
  const guint sizes[4] = { 64, 64, 64, 64 };

  tu_backend_init(&f->b, "test-sound-daemon-XXXXXX", "snd.sock");
  argv[2] = f->b.path;
  f->b.proc = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_NONE, &error);
  g_assert_no_error(error);
  f->fe = vhu_frontend_connect_wait(f->b.path, TIMEOUT_MS, tu_proc_alive, f->b.proc, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(f->fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(f->fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_true(vhu_frontend_start(f->fe, 1ull << VIRTIO_SND_F_CTLS, sizes, 4, &error));
  g_assert_no_error(error);
}

static void
teardown(Fixture *f, gconstpointer data)
{
  vhu_frontend_free(f->fe);
  g_subprocess_send_signal(f->b.proc, SIGTERM);
  g_assert_cmpint(tu_wait_exit(f->b.proc, TIMEOUT_MS), ==, 0);
  g_clear_object(&f->b.proc);
  tu_backend_clear(&f->b);
}

static guint32
ctrl(Fixture *f, const void *req, gsize len)
{
  g_autoptr(GError) error = NULL;
  guint32 status = 0;
  gssize n = vhu_driver_queue_transact(vhu_frontend_get_queue(f->fe, 0), req, len, &status,
                                       sizeof status, &error);

  g_assert_no_error(error);
  g_assert_cmpint(n, ==, 4);
  return status;
}

static guint32
pcm(Fixture *f, guint32 code, guint32 stream)
{
  struct virtio_snd_pcm_hdr h = { { code }, stream };

  return ctrl(f, &h, sizeof h);
}

static void
stream_up(Fixture *f, guint32 stream)
{
  struct virtio_snd_pcm_set_params p = { { { VIRTIO_SND_R_PCM_SET_PARAMS }, stream },
                                         N_QUEUED * PERIOD,
                                         PERIOD,
                                         0,
                                         2,
                                         VIRTIO_SND_PCM_FMT_S16,
                                         VIRTIO_SND_PCM_RATE_48000 };

  g_assert_cmphex(ctrl(f, &p, sizeof p), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_PREPARE, stream), ==, VIRTIO_SND_S_OK);
}

/* N_QUEUED slots of one period each, reused as they complete. */
typedef struct {
  guint64 gpa;
  guint8 *host;
} Slot;

static void
slot_add(Fixture *f, guint qidx, guint32 stream, Slot *s)
{
  VhuGuestBuf out, in;

  memcpy(s->host, &stream, 4);
  if (qidx == VSND_TX_QUEUE) {
    out = (VhuGuestBuf){ s->gpa, 4 + PERIOD };
    in = (VhuGuestBuf){ s->gpa + 4 + PERIOD, 8 };
  } else {
    out = (VhuGuestBuf){ s->gpa, 4 };
    in = (VhuGuestBuf){ s->gpa + 4, PERIOD + 8 };
  }
  g_assert_cmpint(
      vhu_driver_queue_add(vhu_frontend_get_queue(f->fe, qidx), &out, 1, &in, 1, FALSE, s), >=, 0);
  vhu_driver_queue_kick(vhu_frontend_get_queue(f->fe, qidx));
}

/* Streams N_PERIODS periods through @stream, keeping N_QUEUED queued, and
 * checks that period k completes within one period of when its frames are
 * due (k + 1 periods after START), and never before. */
static void
check_pacing(Fixture *f, guint qidx, guint32 stream)
{
  Slot slots[N_QUEUED];
  gint64 before, after, max_late = G_MININT64;
  guint done = 0, queued = 0;

  stream_up(f, stream);
  for (guint i = 0; i < N_QUEUED; i++) {
    slots[i].gpa = vhu_frontend_alloc(f->fe, 4 + PERIOD + 8, 16);
    slots[i].host = vhu_frontend_gpa_to_ptr(f->fe, slots[i].gpa, 4 + PERIOD + 8);
    memset(slots[i].host, 0, 4 + PERIOD + 8);
    slot_add(f, qidx, stream, &slots[i]);
    queued++;
  }
  before = g_get_monotonic_time();
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_START, stream), ==, VIRTIO_SND_S_OK);
  after = g_get_monotonic_time();
  while (done < N_PERIODS) {
    VhuDriverQueue *q = vhu_frontend_get_queue(f->fe, qidx);
    gint64 now = g_get_monotonic_time();
    gint64 due_early = before + (gint64)(done + 1) * PERIOD_US;
    gint64 due_late = after + (gint64)(done + 2) * PERIOD_US;
    gpointer token;
    guint32 len, status;

    if (!vhu_driver_queue_get_used(q, &token, &len)) {
      g_assert_cmpint(now, <, due_late + LATE_LIMIT_US);
      vhu_driver_queue_wait(q, (int)MAX((due_late + LATE_LIMIT_US - now) / 1000, 1));
      continue;
    }
    /* Never before its audio was played (load can only delay what we see). */
    g_assert_cmpint(now, >=, due_early);
    max_late = MAX(max_late, now - due_late);
    memcpy(&status, ((Slot *)token)->host + 4 + PERIOD, 4);
    g_assert_cmphex(status, ==, VIRTIO_SND_S_OK);
    g_assert_cmpuint(len, ==, qidx == VSND_TX_QUEUE ? 8 : PERIOD + 8);
    done++;
    if (queued < N_PERIODS) {
      slot_add(f, qidx, stream, token);
      queued++;
    }
  }
  g_assert_cmpint(g_get_monotonic_time() - before, >=, (gint64)N_PERIODS * PERIOD_US);
  g_test_message("queue %u: latest completion %" G_GINT64_FORMAT
                 " us %s one period after its audio was due",
                 qidx, ABS(max_late), max_late <= 0 ? "before" : "past");
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_STOP, stream), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_RELEASE, stream), ==, VIRTIO_SND_S_OK);
}

static void
test_playback_pacing(Fixture *f, gconstpointer data)
{
  check_pacing(f, VSND_TX_QUEUE, 0);
}

static void
test_capture_pacing(Fixture *f, gconstpointer data)
{
  check_pacing(f, VSND_RX_QUEUE, 1);
}

static void
test_default_streams(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  struct virtio_snd_config c;
  struct virtio_snd_query_info q = { { VIRTIO_SND_R_PCM_INFO }, 0, 2, 32 };
  guint8 r[4 + 64];
  struct virtio_snd_pcm_info info;
  const guint64 formats = (1ull << VIRTIO_SND_PCM_FMT_U8) | (1ull << VIRTIO_SND_PCM_FMT_S16)
                          | (1ull << VIRTIO_SND_PCM_FMT_S24) | (1ull << VIRTIO_SND_PCM_FMT_S32)
                          | (1ull << VIRTIO_SND_PCM_FMT_FLOAT);

  g_assert_true(vhu_frontend_get_config(f->fe, 0, &c, sizeof c, &error));
  g_assert_cmpuint(c.streams, ==, 2);
  g_assert_cmpuint(c.jacks, ==, 2);
  g_assert_cmpuint(c.chmaps, ==, 2);
  g_assert_cmpuint(c.controls, ==, 4);
  g_assert_cmpint(vhu_driver_queue_transact(vhu_frontend_get_queue(f->fe, 0), &q, sizeof q, r,
                                            sizeof r, &error),
                  ==, sizeof r);
  for (guint i = 0; i < 2; i++) {
    memcpy(&info, r + 4 + 32 * i, sizeof info);
    g_assert_cmpuint(info.direction, ==, i);
    g_assert_cmphex(info.formats, ==, formats);
    g_assert_cmpuint(info.channels_min, ==, 2);
    g_assert_cmpuint(info.channels_max, ==, 2);
    /* 8000 .. 192000 without 5512 and 384000 */
    g_assert_cmphex(info.rates, ==, ((1ull << 13) - 1) & ~1ull);
  }
}

static void
test_capabilities(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *out = NULL;
  const char *argv[] = { GST_VHOST_SOUND, "--print-capabilities", NULL };
  g_autoptr(GSubprocess) p = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDOUT_PIPE, &error);

  g_assert_no_error(error);
  g_assert_true(g_subprocess_communicate_utf8(p, NULL, NULL, &out, NULL, &error));
  g_assert_true(g_subprocess_get_if_exited(p));
  g_assert_cmpint(g_subprocess_get_exit_status(p), ==, 0);
  g_assert_nonnull(strstr(out, "\"type\": \"sound\""));
}

static void
test_usage_errors(void)
{
  const char *cases[][4] = {
    { GST_VHOST_SOUND, NULL },
    { GST_VHOST_SOUND, "--socket-path", "/nonexistent/x", "--formats=s17" },
    { GST_VHOST_SOUND, "--socket-path", "/nonexistent/x", "--rates=44101" },
    { GST_VHOST_SOUND, "--socket-path", "/nonexistent/x", "--channels=0" },
  };

  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    const char *argv[5] = { cases[i][0], cases[i][1], cases[i][2], cases[i][3], NULL };
    g_autoptr(GSubprocess) p = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDERR_SILENCE, &error);

    g_assert_no_error(error);
    g_assert_true(g_subprocess_wait(p, NULL, &error));
    g_assert_cmpint(g_subprocess_get_exit_status(p), ==, 2);
  }
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/sound/daemon/capabilities", test_capabilities);
  g_test_add_func("/sound/daemon/usage-errors", test_usage_errors);
  g_test_add("/sound/daemon/default-streams", Fixture, NULL, setup, test_default_streams, teardown);
  g_test_add("/sound/daemon/playback-pacing", Fixture, NULL, setup, test_playback_pacing, teardown);
  g_test_add("/sound/daemon/capture-pacing", Fixture, NULL, setup, test_capture_pacing, teardown);
  return g_test_run();
}
