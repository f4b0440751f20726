/* gst-vhost-sound with GStreamer pipelines, through the project's frontend
 * driver: guest playback arrives bit-exact in a WAV file that SIGTERM
 * finalises, a 48 kHz guest stream is resampled into a 44.1 kHz pipeline,
 * an input pipeline's samples (audiotestsrc, a WAV file) arrive bit-exact
 * in rx buffers, transfers complete at the pace of the pipeline's clock
 * over 2.4 s, and the volume and switch controls drive the pipeline and
 * survive a reconnect. */
#include <glib/gstdio.h>
#include <gst/app/gstappsink.h>
#include <gst/gst.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

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
#define PERIOD_US  ((gint64)PERIOD_FR * G_USEC_PER_SEC / RATE)
#define N_QUEUED   4u
#define N_PERIODS  48u /* 2.4 s */

typedef struct {
  guint64 gpa;
  guint8 *host;
} Slot;

typedef struct {
  TuBackend b;
  VhuFrontend *fe;
  char *wav; /* in b.dir */
  Slot slots[N_QUEUED];
} Fixture;

/* --- the daemon and the frontend ------------------------------------------- */

static void
connect_frontend(Fixture *f)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[4] = { 64, 64, 64, 64 };

  f->fe = vhu_frontend_connect_wait(f->b.path, TIMEOUT_MS, tu_proc_alive, f->b.proc, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(f->fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(f->fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_true(vhu_frontend_start(f->fe, 1ull << VIRTIO_SND_F_CTLS, sizes, 4, &error));
  g_assert_no_error(error);
  for (guint i = 0; i < N_QUEUED; i++) {
    f->slots[i].gpa = vhu_frontend_alloc(f->fe, 4 + PERIOD + 8, 16);
    f->slots[i].host = vhu_frontend_gpa_to_ptr(f->fe, f->slots[i].gpa, 4 + PERIOD + 8);
  }
}

/* A test that fails must not leave its daemon behind. */
static void
child_setup(gpointer data)
{
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* Starts the daemon with S16 at 48 kHz only and @args (%s is the WAV path). */
static void
daemon_start(Fixture *f, const char *output, const char *input)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GSubprocessLauncher) launcher = NULL;

  tu_backend_init(&f->b, "test-sound-pipeline-XXXXXX", "snd.sock");
  f->wav = g_build_filename(f->b.dir, "out.wav", NULL);
  g_ptr_array_add(argv, g_strdup(GST_VHOST_SOUND));
  g_ptr_array_add(argv, g_strdup("--socket-path"));
  g_ptr_array_add(argv, g_strdup(f->b.path));
  g_ptr_array_add(argv, g_strdup("--formats=s16"));
  g_ptr_array_add(argv, g_strdup("--rates=48000"));
  if (output)
    g_ptr_array_add(argv,
                    g_strdup_printf("--output-pipeline=%s ! filesink location=%s", output, f->wav));
  if (input)
    g_ptr_array_add(argv, g_strdup_printf("--input-pipeline=%s", input));
  g_ptr_array_add(argv, NULL);
  launcher = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_NONE);
  g_subprocess_launcher_set_child_setup(launcher, child_setup, NULL, NULL);
  f->b.proc = g_subprocess_launcher_spawnv(launcher, (const char *const *)argv->pdata, &error);
  g_assert_no_error(error);
  connect_frontend(f);
}

/* SIGTERM: end-of-stream through the pipelines, then a clean exit. */
static void
daemon_stop(Fixture *f)
{
  g_clear_pointer(&f->fe, vhu_frontend_free);
  g_subprocess_send_signal(f->b.proc, SIGTERM);
  g_assert_cmpint(tu_wait_exit(f->b.proc, TIMEOUT_MS), ==, 0);
}

static void
fixture_clear(Fixture *f)
{
  g_clear_pointer(&f->fe, vhu_frontend_free);
  if (f->b.proc && !g_subprocess_get_if_exited(f->b.proc))
    daemon_stop(f);
  g_clear_object(&f->b.proc);
  if (f->wav)
    g_unlink(f->wav);
  g_free(f->wav);
  tu_backend_clear(&f->b);
}

static guint32
ctrl(Fixture *f, const void *req, gsize len, void *resp, gsize resp_len)
{
  g_autoptr(GError) error = NULL;
  guint8 buf[4 + 512];
  guint32 status;
  gssize n;

  g_assert_cmpuint(resp_len + 4, <=, sizeof buf);
  n = vhu_driver_queue_transact(vhu_frontend_get_queue(f->fe, 0), req, len, buf, 4 + resp_len,
                                &error);
  g_assert_no_error(error);
  g_assert_cmpint(n, >=, 4);
  memcpy(&status, buf, 4);
  if (resp)
    memcpy(resp, buf + 4, resp_len);
  return status;
}

static guint32
pcm(Fixture *f, guint32 code, guint32 stream)
{
  struct virtio_snd_pcm_hdr h = { { code }, stream };

  return ctrl(f, &h, sizeof h, NULL, 0);
}

static void
control_write(Fixture *f, guint32 control, gint32 value)
{
  struct {
    struct virtio_snd_ctl_hdr h;
    struct virtio_snd_ctl_value v;
  } w = { { { VIRTIO_SND_R_CTL_WRITE }, control } };

  w.v.value.integer[0] = value;
  g_assert_cmphex(ctrl(f, &w, sizeof w, NULL, 0), ==, VIRTIO_SND_S_OK);
}

static gint32
control_read(Fixture *f, guint32 control)
{
  struct virtio_snd_ctl_hdr rd = { { VIRTIO_SND_R_CTL_READ }, control };
  struct virtio_snd_ctl_value v;

  g_assert_cmphex(ctrl(f, &rd, sizeof rd, &v, sizeof v), ==, VIRTIO_SND_S_OK);
  return v.value.integer[0];
}

/* --- streaming ------------------------------------------------------------- */

static void
slot_add(Fixture *f, guint qidx, guint32 stream, Slot *s, const guint8 *frames)
{
  VhuGuestBuf out, in;

  memcpy(s->host, &stream, 4);
  if (qidx == VSND_TX_QUEUE) {
    memcpy(s->host + 4, frames, PERIOD);
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

/* Streams @n periods through @stream (S16 stereo 48 kHz), keeping
 * N_QUEUED queued: playback sends @data, capture fills it.  Period k must
 * complete within one period of when its frames are due on the pipeline's
 * clock (the system clock here: k + 1 periods after START), never before;
 * the checks are upper bounds on waits, never sleeps. */
static void
run_stream(Fixture *f, guint qidx, guint32 stream, guint8 *data, guint n)
{
  struct virtio_snd_pcm_set_params p = { { { VIRTIO_SND_R_PCM_SET_PARAMS }, stream },
                                         N_QUEUED * PERIOD,
                                         PERIOD,
                                         0,
                                         2,
                                         VIRTIO_SND_PCM_FMT_S16,
                                         VIRTIO_SND_PCM_RATE_48000 };
  VhuDriverQueue *q = vhu_frontend_get_queue(f->fe, qidx);
  Slot *slots = f->slots;
  guint done = 0, queued = 0;
  gint64 before, after;

  g_assert_cmphex(ctrl(f, &p, sizeof p, NULL, 0), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_PREPARE, stream), ==, VIRTIO_SND_S_OK);
  for (guint i = 0; i < N_QUEUED && queued < n; i++) {
    memset(slots[i].host, 0, 4 + PERIOD + 8);
    slot_add(f, qidx, stream, &slots[i], data + (gsize)queued * PERIOD);
    queued++;
  }
  before = g_get_monotonic_time();
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_START, stream), ==, VIRTIO_SND_S_OK);
  after = g_get_monotonic_time();
  while (done < n) {
    gint64 now = g_get_monotonic_time();
    gint64 due_early = before + (gint64)(done + 1) * PERIOD_US;
    gint64 due_late = after + (gint64)(done + 2) * PERIOD_US;
    gpointer token;
    guint32 len, status;
    Slot *s;

    if (!vhu_driver_queue_get_used(q, &token, &len)) {
      if (now >= due_late)
        g_test_message("period %u of %u not back %" G_GINT64_FORMAT " us after START", done, n,
                       now - after);
      g_assert_cmpint(now, <, due_late); /* an upper bound: it must have come by then */
      vhu_driver_queue_wait(q, (int)MAX((due_late - now) / 1000, 1));
      continue;
    }
    g_assert_cmpint(now, >=, due_early);
    g_assert_cmpint(now, <=, due_late);
    s = token;
    memcpy(&status, s->host + 4 + PERIOD, 4);
    g_assert_cmphex(status, ==, VIRTIO_SND_S_OK);
    g_assert_cmpuint(len, ==, qidx == VSND_TX_QUEUE ? 8 : PERIOD + 8);
    if (qidx == VSND_RX_QUEUE)
      memcpy(data + (gsize)done * PERIOD, s->host + 4, PERIOD);
    done++;
    if (queued < n) {
      slot_add(f, qidx, stream, s, data + (gsize)queued * PERIOD);
      queued++;
    }
  }
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_STOP, stream), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(pcm(f, VIRTIO_SND_R_PCM_RELEASE, stream), ==, VIRTIO_SND_S_OK);
}

/* --- signals and files ----------------------------------------------------- */

/* Samples that are never zero (so silence is told apart) and change fast. */
static void
pattern(guint8 *buf, gsize len, guint32 seed)
{
  gint16 *s = (gint16 *)buf;

  for (gsize i = 0; i < len / 2; i++) {
    guint32 x = (guint32)(i + seed) * 2654435761u;
    gint16 v = (gint16)(x >> 16);

    s[i] = (gint16)(v >= 0 ? v | 0x400 : v & ~0x400);
  }
}

/* All samples of a pipeline ending in appsink "sink", and their caps. */
static GBytes *
pull_all(const char *desc, GstCaps **caps)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GstElement) p = gst_parse_launch(desc, &error);
  g_autoptr(GstElement) sink = NULL;
  GByteArray *out = g_byte_array_new();
  GstSample *sample;

  g_assert_no_error(error);
  sink = gst_bin_get_by_name(GST_BIN(p), "sink");
  g_object_set(sink, "sync", FALSE, NULL);
  g_assert_cmpint(gst_element_set_state(p, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
  while ((sample = gst_app_sink_try_pull_sample(GST_APP_SINK(sink), 5 * GST_SECOND))) {
    GstBuffer *buf = gst_sample_get_buffer(sample);
    GstMapInfo map;

    if (caps && !*caps)
      *caps = gst_caps_ref(gst_sample_get_caps(sample));
    gst_buffer_map(buf, &map, GST_MAP_READ);
    g_byte_array_append(out, map.data, (guint)map.size);
    gst_buffer_unmap(buf, &map);
    gst_sample_unref(sample);
  }
  g_assert_true(gst_app_sink_is_eos(GST_APP_SINK(sink)));
  gst_element_set_state(p, GST_STATE_NULL);
  return g_byte_array_free_to_bytes(out);
}

/* The WAV file's samples: it must be complete (its RIFF size is the file's)
 * and play through wavparse. */
static GBytes *
read_wav(const char *path, gint *rate)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *contents = NULL;
  g_autofree char *desc = NULL;
  g_autoptr(GstCaps) caps = NULL;
  GstStructure *st;
  guint32 riff;
  gsize len;
  GBytes *b;

  g_assert_true(g_file_get_contents(path, &contents, &len, &error));
  g_assert_cmpuint(len, >, 44);
  g_assert_cmpmem(contents, 4, "RIFF", 4);
  memcpy(&riff, contents + 4, 4);
  g_assert_cmpuint(riff, ==, len - 8);
  desc = g_strdup_printf("filesrc location=%s ! wavparse ! appsink name=sink", path);
  b = pull_all(desc, &caps);
  st = gst_caps_get_structure(caps, 0);
  g_assert_cmpstr(gst_structure_get_string(st, "format"), ==, "S16LE");
  g_assert_true(gst_structure_get_int(st, "rate", rate));
  return b;
}

static gboolean
all_zero(const guint8 *p, gsize len)
{
  for (gsize i = 0; i < len; i++)
    if (p[i])
      return FALSE;
  return TRUE;
}

/* --- tests ----------------------------------------------------------------- */

/* What the guest played is the file's beginning, byte for byte; the rest is
 * the silence played between the last buffer and STOP. */
static void
test_playback_exact(void)
{
  Fixture f = { 0 };
  gsize len = (gsize)N_PERIODS * PERIOD, n;
  g_autofree guint8 *played = g_malloc(len);
  g_autoptr(GBytes) wav = NULL;
  const guint8 *w;
  gint rate;

  daemon_start(&f, "wavenc", NULL);
  pattern(played, len, 7);
  run_stream(&f, VSND_TX_QUEUE, 0, played, N_PERIODS);
  daemon_stop(&f);
  wav = read_wav(f.wav, &rate);
  w = g_bytes_get_data(wav, &n);
  g_assert_cmpint(rate, ==, RATE);
  g_assert_cmpuint(n, >=, len);
  g_assert_cmpmem(w, len, played, len);
  g_assert_true(all_zero(w + len, n - len));
  g_assert_cmpuint(n - len, <, 4 * PERIOD);
  fixture_clear(&f);
}

/* Positive-going zero crossings per second of mono-equivalent S16 stereo. */
static gdouble
frequency(const gint16 *s, gsize frames, gint rate)
{
  guint crossings = 0;

  for (gsize i = 1; i < frames; i++)
    if (s[2 * (i - 1)] < 0 && s[2 * i] >= 0)
      crossings++;
  return (gdouble)crossings * rate / (gdouble)frames;
}

/* 2.4 s of a 1 kHz tone at 48 kHz into a 44.1 kHz pipeline: 2.4 s of a
 * 1 kHz tone at 44.1 kHz. */
static void
test_playback_resampled(void)
{
  Fixture f = { 0 };
  gsize len = (gsize)N_PERIODS * PERIOD, n, first, last;
  g_autofree guint8 *played = g_malloc(len);
  gint16 *s = (gint16 *)played;
  g_autoptr(GBytes) wav = NULL;
  const gint16 *w;
  gint rate;

  for (gsize i = 0; i < len / FRAME; i++)
    s[2 * i] = s[2 * i + 1] = (gint16)lround(12000 * sin(2 * G_PI * 1000 * (gdouble)i / RATE));
  daemon_start(&f, "capsfilter caps=audio/x-raw,rate=44100 ! wavenc", NULL);
  run_stream(&f, VSND_TX_QUEUE, 0, played, N_PERIODS);
  daemon_stop(&f);
  wav = read_wav(f.wav, &rate);
  w = g_bytes_get_data(wav, &n);
  n /= FRAME;
  g_assert_cmpint(rate, ==, 44100);
  for (first = 0; first < n && w[2 * first] == 0 && w[2 * first + 1] == 0; first++)
    ;
  for (last = n; last > first && w[2 * (last - 1)] == 0 && w[2 * (last - 1) + 1] == 0; last--)
    ;
  /* 2.4 s at 44.1 kHz, give or take the resampler's edges (a few ms). */
  g_assert_cmpint(labs((glong)(last - first) - (glong)(44100 * 24 / 10)), <, 441);
  g_assert_cmpfloat(fabs(frequency(w + 2 * first, last - first, rate) - 1000), <, 5);
  fixture_clear(&f);
}

/* The input pipeline's samples are the rx buffers' contents. */
static void
check_capture(const char *input, const guint8 *expected)
{
  Fixture f = { 0 };
  gsize len = (gsize)N_PERIODS * PERIOD;
  g_autofree guint8 *captured = g_malloc0(len);

  daemon_start(&f, NULL, input);
  run_stream(&f, VSND_RX_QUEUE, 1, captured, N_PERIODS);
  g_assert_cmpmem(captured, len, expected, len);
  daemon_stop(&f);
  fixture_clear(&f);
}

static void
test_capture_testsrc(void)
{
  const char *src = "audiotestsrc wave=sine freq=440 volume=0.5 samplesperbuffer=1000";
  g_autofree char *ref = g_strdup_printf(
      "%s num-buffers=200 ! audio/x-raw,format=S16LE,rate=48000,channels=2 ! appsink name=sink",
      src);
  g_autoptr(GBytes) expected = pull_all(ref, NULL);

  g_assert_cmpuint(g_bytes_get_size(expected), >=, (gsize)N_PERIODS * PERIOD);
  check_capture(src, g_bytes_get_data(expected, NULL));
}

static void
test_capture_wav(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = tu_make_tmpdir("test-sound-wav-XXXXXX");
  g_autofree char *path = g_build_filename(dir, "in.wav", NULL);
  g_autofree char *src = g_strdup_printf("filesrc location=%s ! wavparse", path);
  gsize len = (gsize)N_PERIODS * PERIOD;
  g_autofree guint8 *file = g_malloc(44 + len);
  guint32 u32;
  guint16 u16;

  /* A canonical 44-byte header: PCM, 2 channels, 48 kHz, 16 bits. */
  memcpy(file, "RIFF", 4);
  u32 = (guint32)(36 + len);
  memcpy(file + 4, &u32, 4);
  memcpy(file + 8, "WAVEfmt ", 8);
  u32 = 16;
  memcpy(file + 16, &u32, 4);
  u16 = 1;
  memcpy(file + 20, &u16, 2);
  u16 = 2;
  memcpy(file + 22, &u16, 2);
  u32 = RATE;
  memcpy(file + 24, &u32, 4);
  u32 = RATE * FRAME;
  memcpy(file + 28, &u32, 4);
  u16 = FRAME;
  memcpy(file + 32, &u16, 2);
  u16 = 16;
  memcpy(file + 34, &u16, 2);
  memcpy(file + 36, "data", 4);
  u32 = (guint32)len;
  memcpy(file + 40, &u32, 4);
  pattern(file + 44, len, 3);
  g_assert_true(g_file_set_contents(path, (const char *)file, (gssize)(44 + len), &error));
  check_capture(src, file + 44);
  g_unlink(path);
  g_rmdir(dir);
}

/* Volume 50 scales what reaches the pipeline, before and after the
 * frontend reconnects; the switch mutes it. */
static void
test_volume_survives_reconnect(void)
{
  Fixture f = { 0 };
  const guint n_periods = 8;
  gsize len = (gsize)n_periods * PERIOD, n, pos;
  g_autofree guint8 *played = g_malloc(len);
  g_autoptr(GBytes) wav = NULL;
  gdouble gain = vsnd_volume_to_gain(50);
  const gint16 *p = (const gint16 *)played;
  const guint8 *w;
  gint rate;

  daemon_start(&f, "wavenc", NULL);
  pattern(played, len, 11);
  control_write(&f, 0, 50);
  run_stream(&f, VSND_TX_QUEUE, 0, played, n_periods);
  vhu_frontend_free(f.fe);
  connect_frontend(&f);
  g_assert_cmpint(control_read(&f, 0), ==, 50);
  run_stream(&f, VSND_TX_QUEUE, 0, played, n_periods);
  control_write(&f, 1, 0);
  run_stream(&f, VSND_TX_QUEUE, 0, played, n_periods);
  daemon_stop(&f);

  wav = read_wav(f.wav, &rate);
  w = g_bytes_get_data(wav, &n);
  pos = 0;
  for (guint run = 0; run < 2; run++) {
    const gint16 *s;

    while (pos + 1 < n && w[pos] == 0 && w[pos + 1] == 0)
      pos += 2;
    g_assert_cmpuint(pos + len, <=, n);
    s = (const gint16 *)(w + pos);
    /* volume scales 16-bit samples by a gain in steps of 1/8192. */
    for (gsize i = 0; i < len / 2; i++) {
      if (fabs(s[i] - p[i] * gain) > 1 + abs(p[i]) / 8192.0) {
        g_test_message("run %u at byte %zu of %zu: sample %zu of %zu is %d, not %d * %f", run, pos,
                       n, i, len / 2, s[i], p[i], gain);
      }
      g_assert_cmpfloat(fabs(s[i] - p[i] * gain), <=, 1 + abs(p[i]) / 8192.0);
    }
    pos += len;
  }
  /* Muted: the third run is silence (the gaps' trailing silence too). */
  g_assert_cmpuint(n - pos, >=, len);
  g_assert_true(all_zero(w + pos, n - pos));
  fixture_clear(&f);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  gst_init(NULL, NULL);
  g_test_add_func("/sound/pipeline/playback-exact", test_playback_exact);
  g_test_add_func("/sound/pipeline/playback-resampled", test_playback_resampled);
  g_test_add_func("/sound/pipeline/capture-testsrc", test_capture_testsrc);
  g_test_add_func("/sound/pipeline/capture-wav", test_capture_wav);
  g_test_add_func("/sound/pipeline/volume-survives-reconnect", test_volume_survives_reconnect);
  return g_test_run();
}
