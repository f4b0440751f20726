/* gst-vhost-sound-bench: gst-vhost-sound's CPU per playback stream-second,
 * the streams one core sustains without an xrun, and the latency it adds.
 *
 * The daemon runs pinned to one CPU with N playback streams, each into
 * "fakesink sync=true" (--output-pipeline); the frontend driver plays the
 * guest on another CPU: 48 kHz S16 stereo, XRUN events enabled, every
 * stream kept QUEUED periods ahead (a buffer is queued again as soon as it
 * completes, i.e. once its last frame was due), which is real-time pace.
 * CPU is the run time of all the daemon's threads (schedstat, ns) over the
 * measured seconds; xruns are the XRUN events the device sent.
 *
 * Latency: one stream, double-buffered (two periods queued, the next one
 * written when one completes).  A period written at w completes when its
 * last frame was due at the sink, ideally w + 2 periods (the period ahead,
 * then its own); what comes beyond that is what the backend adds. */
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench-util.h"
#include "vsnd-device.h"

#ifndef GST_VHOST_SOUND_PATH
#define GST_VHOST_SOUND_PATH "gst-vhost-sound"
#endif
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (64u << 20)
#define RATE       48000u
#define FRAME      4u
#define QUEUED     3u
#define RING       1024u
#define N_EVENTS   64u
#define WAIT_MS    5000

typedef struct {
  guint64 gpa;
  guint8 *host;
  guint32 stream;
  gint64 written;
} Slot;

typedef struct {
  BenchBackend be;
  guint n;
  guint32 period; /* bytes */
  Slot *slots;
  Slot events[N_EVENTS];
  guint64 xruns;
} Run;

static guint64
task_cpu_ns(const char *pid)
{
  g_autofree char *dir = g_strdup_printf("/proc/%s/task", pid);
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  const char *name;
  guint64 total = 0;

  while (d != NULL && (name = g_dir_read_name(d)) != NULL) {
    g_autofree char *path = g_strdup_printf("%s/%s/schedstat", dir, name);
    g_autofree char *text = NULL;

    if (g_file_get_contents(path, &text, NULL, NULL))
      total += g_ascii_strtoull(text, NULL, 10);
  }
  return total;
}

static gboolean
ctrl(Run *r, const void *req, gsize len, const char *what, GError **error)
{
  guint32 status = 0;
  gssize n = vhu_driver_queue_transact(vhu_frontend_get_queue(r->be.fe, VSND_CTRL_QUEUE), req, len,
                                       &status, sizeof status, error);

  if (n == 4 && status == VIRTIO_SND_S_OK)
    return TRUE;
  if (error != NULL && *error == NULL)
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s answered 0x%x", what, status);
  return FALSE;
}

static gboolean
slot_add(Run *r, guint qidx, Slot *s)
{
  VhuDriverQueue *q = vhu_frontend_get_queue(r->be.fe, qidx);
  VhuGuestBuf out = { s->gpa, 4 + r->period }, in = { s->gpa + 4 + r->period, 8 };
  VhuGuestBuf ev = { s->gpa, sizeof(struct virtio_snd_event) };
  int head = qidx == VSND_TX_QUEUE ? vhu_driver_queue_add(q, &out, 1, &in, 1, FALSE, s)
                                   : vhu_driver_queue_add(q, NULL, 0, &ev, 1, FALSE, s);

  s->written = g_get_monotonic_time();
  return head >= 0;
}

/* Spawns the daemon with @n outputs on @cpu, starts the device, sets up
 * every stream with @period-byte periods and QUEUED periods queued. */
static gboolean
run_start(Run *r, guint n, guint32 period, guint queued, int cpu, GError **error)
{
  const guint sizes[4] = { 64, RING, RING, 64 };
  g_autofree char *outputs = g_strdup_printf("--outputs=%u", n);
  VhuDriverQueue *tx;

  r->n = n;
  r->period = period;
  if (!bench_backend_dir(&r->be, "snd-bench-XXXXXX", "snd.sock", error))
    return FALSE;
  r->be.proc = bench_spawn(
      G_SUBPROCESS_FLAGS_STDOUT_SILENCE | G_SUBPROCESS_FLAGS_STDERR_SILENCE, cpu, error,
      (const char *const[]){ GST_VHOST_SOUND_PATH, "--socket-path", r->be.path, outputs,
                             "--inputs=0", "--no-controls", "--output-pipeline",
                             "fakesink sync=true", NULL });
  if (r->be.proc == NULL || !bench_backend_connect(&r->be, error)
      || !vhu_frontend_init(r->be.fe, G_MAXUINT64, error)
      || !vhu_frontend_add_region(r->be.fe, GUEST_GPA, GUEST_SIZE, error)
      || !vhu_frontend_start(r->be.fe, 0, sizes, 4, error))
    return FALSE;
  for (guint i = 0; i < N_EVENTS; i++) {
    r->events[i].gpa = vhu_frontend_alloc(r->be.fe, 8, 8);
    r->events[i].host = vhu_frontend_gpa_to_ptr(r->be.fe, r->events[i].gpa, 8);
    slot_add(r, VSND_EVENT_QUEUE, &r->events[i]);
  }
  vhu_driver_queue_kick(vhu_frontend_get_queue(r->be.fe, VSND_EVENT_QUEUE));
  r->slots = g_new0(Slot, (gsize)n * queued);
  tx = vhu_frontend_get_queue(r->be.fe, VSND_TX_QUEUE);
  for (guint32 s = 0; s < n; s++) {
    struct virtio_snd_pcm_set_params p = { { { VIRTIO_SND_R_PCM_SET_PARAMS }, s },
                                           4 * period,
                                           period,
                                           1u << VIRTIO_SND_PCM_F_EVT_XRUNS,
                                           2,
                                           VIRTIO_SND_PCM_FMT_S16,
                                           VIRTIO_SND_PCM_RATE_48000 };
    struct virtio_snd_pcm_hdr prep = { { VIRTIO_SND_R_PCM_PREPARE }, s };

    if (!ctrl(r, &p, sizeof p, "SET_PARAMS", error)
        || !ctrl(r, &prep, sizeof prep, "PREPARE", error))
      return FALSE;
    for (guint k = 0; k < queued; k++) {
      Slot *sl = &r->slots[s * queued + k];

      sl->stream = s;
      sl->gpa = vhu_frontend_alloc(r->be.fe, 4 + period + 8, 16);
      sl->host = vhu_frontend_gpa_to_ptr(r->be.fe, sl->gpa, 4 + period + 8);
      if (sl->host == NULL) {
        g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "guest memory is full");
        return FALSE;
      }
      memset(sl->host, 0, 4 + period + 8);
      memcpy(sl->host, &s, 4);
      if (!slot_add(r, VSND_TX_QUEUE, sl)) {
        g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "tx ring is full");
        return FALSE;
      }
    }
  }
  vhu_driver_queue_kick(tx);
  for (guint32 s = 0; s < n; s++) {
    struct virtio_snd_pcm_hdr start = { { VIRTIO_SND_R_PCM_START }, s };

    if (!ctrl(r, &start, sizeof start, "START", error))
      return FALSE;
  }
  return TRUE;
}

/* Counts XRUN events and gives their buffers back. */
static void
drain_events(Run *r)
{
  VhuDriverQueue *q = vhu_frontend_get_queue(r->be.fe, VSND_EVENT_QUEUE);
  gpointer token;
  guint32 len, code;
  gboolean any = FALSE;

  while (vhu_driver_queue_get_used(q, &token, &len)) {
    memcpy(&code, ((Slot *)token)->host, 4);
    if (code == VIRTIO_SND_EVT_PCM_XRUN)
      r->xruns++;
    slot_add(r, VSND_EVENT_QUEUE, token);
    any = TRUE;
  }
  if (any)
    vhu_driver_queue_kick(q);
}

/* Requeues every completed tx buffer until @until; @lat (if any) gets
 * completion - write per buffer, microseconds.  FALSE if the daemon stalls
 * or answers an error. */
static gboolean
pump(Run *r, gint64 until, GArray *lat, GError **error)
{
  VhuDriverQueue *tx = vhu_frontend_get_queue(r->be.fe, VSND_TX_QUEUE);

  while (g_get_monotonic_time() < until) {
    gpointer token;
    guint32 len, status;
    gboolean any = FALSE;

    while (vhu_driver_queue_get_used(tx, &token, &len)) {
      Slot *s = token;
      gint64 now = g_get_monotonic_time();

      memcpy(&status, s->host + 4 + r->period, 4);
      if (status != VIRTIO_SND_S_OK) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "tx buffer answered 0x%x", status);
        return FALSE;
      }
      if (lat != NULL) {
        gint64 d = now - s->written;

        g_array_append_val(lat, d);
      }
      slot_add(r, VSND_TX_QUEUE, s);
      any = TRUE;
    }
    if (any)
      vhu_driver_queue_kick(tx);
    drain_events(r);
    if (!any && !vhu_driver_queue_wait(tx, WAIT_MS)) {
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "no tx buffer completed");
      return FALSE;
    }
  }
  return TRUE;
}

static void
run_clear(Run *r)
{
  bench_backend_clear(&r->be);
  g_clear_pointer(&r->slots, g_free);
}

static int
cmp_i64(gconstpointer a, gconstpointer b)
{
  gint64 x = *(const gint64 *)a, y = *(const gint64 *)b;

  return x < y ? -1 : x > y;
}

/* CPU per stream-second and xruns with @n streams of @period_frames periods. */
static gboolean
measure_streams(guint n, guint32 period_frames, double seconds, int cpu, double *ns_per_s,
                guint64 *xruns, GError **error)
{
  Run r = { 0 };
  const char *pid;
  guint64 ns0, ns1;
  gint64 t0, t1;
  gboolean ok = FALSE;

  if (!run_start(&r, n, period_frames * FRAME, QUEUED, cpu, error)
      || !pump(&r, g_get_monotonic_time() + G_USEC_PER_SEC / 2, NULL, error))
    goto out;
  pid = g_subprocess_get_identifier(r.be.proc);
  r.xruns = 0;
  ns0 = task_cpu_ns(pid);
  t0 = g_get_monotonic_time();
  if (!pump(&r, t0 + (gint64)(seconds * G_USEC_PER_SEC), NULL, error))
    goto out;
  t1 = g_get_monotonic_time();
  ns1 = task_cpu_ns(pid);
  *ns_per_s = (double)(ns1 - ns0) / ((double)(t1 - t0) / 1e6) / n;
  *xruns = r.xruns;
  ok = TRUE;
out:
  run_clear(&r);
  return ok;
}

static gboolean
measure_latency(guint32 period_frames, double seconds, int cpu, GError **error)
{
  Run r = { 0 };
  g_autoptr(GArray) lat = g_array_new(FALSE, FALSE, sizeof(gint64));
  double period_ms = period_frames * 1000.0 / RATE, med, p95;
  gboolean ok = FALSE;

  if (!run_start(&r, 1, period_frames * FRAME, 2, cpu, error)
      || !pump(&r, g_get_monotonic_time() + G_USEC_PER_SEC / 2, NULL, error))
    goto out;
  r.xruns = 0;
  if (!pump(&r, g_get_monotonic_time() + (gint64)(seconds * G_USEC_PER_SEC), lat, error))
    goto out;
  if (lat->len == 0) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_FAILED, "nothing completed");
    goto out;
  }
  g_array_sort(lat, cmp_i64);
  med = g_array_index(lat, gint64, lat->len / 2) / 1000.0 - 2 * period_ms;
  p95 = g_array_index(lat, gint64, lat->len * 95 / 100) / 1000.0 - 2 * period_ms;
  printf("%9.1f ms %10.2f ms %10.2f ms %9.2f %9.2f %7" G_GUINT64_FORMAT "   %s\n", period_ms, med,
         p95, med / period_ms, p95 / period_ms, r.xruns, p95 <= period_ms ? "met" : "NOT met");
  ok = TRUE;
out:
  run_clear(&r);
  return ok;
}

int
main(int argc, char **argv)
{
  double seconds = 5.0;
  int max_streams = 128, period_ms = 10;
  cpu_set_t set;
  GOptionEntry entries[] = {
    { "seconds", 's', 0, G_OPTION_ARG_DOUBLE, &seconds, "Measured seconds per run (5)", "S" },
    { "max-streams", 'n', 0, G_OPTION_ARG_INT, &max_streams,
      "Most playback streams tried (128; 1..255)", "N" },
    { "period-ms", 'p', 0, G_OPTION_ARG_INT, &period_ms,
      "Period of the stream-count runs, milliseconds (10; 1..100)", "MS" },
    { NULL },
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("- gst-vhost-sound CPU, streams, latency");
  g_autoptr(GError) error = NULL;
  const guint32 periods[3] = { 240, 480, 960 };
  double one_ns = 0;
  guint best = 0;
  int status = EXIT_SUCCESS;

  signal(SIGPIPE, SIG_IGN);
  g_option_context_add_main_entries(ctx, entries, NULL);
  if (!g_option_context_parse(ctx, &argc, &argv, &error) || seconds <= 0 || max_streams < 1
      || max_streams >= (int)VSND_MAX_STREAMS || period_ms < 1 || period_ms > 100) {
    g_printerr("%s\n", error ? error->message : "bad --seconds or --max-streams");
    return 2;
  }
  /* The driver off the daemon's CPU, where there is another. */
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 1 && CPU_ISSET(0, &set)) {
    CPU_CLR(0, &set);
    sched_setaffinity(0, sizeof set, &set);
  }
  printf("gst-vhost-sound-bench: 48 kHz S16 stereo playback into fakesink sync=true, daemon "
         "pinned to CPU 0, driver on the others;\n%.1f s measured per run after 0.5 s, %u periods "
         "of %d ms queued per stream; CPU: daemon threads' run time (schedstat)\n\n",
         seconds, QUEUED, period_ms);
  printf("%8s %16s %14s %8s\n", "streams", "CPU/stream-s", "% core/stream", "xruns");
  fflush(stdout);
  for (guint n = 1; n <= (guint)max_streams; n = n < 16 ? n * 4 : n + 16) {
    double ns;
    guint64 xruns;

    if (!measure_streams(n, RATE / 1000 * (guint32)period_ms, seconds, 0, &ns, &xruns, &error)) {
      g_printerr("%u streams: %s\n", n, error->message);
      g_clear_error(&error);
      status = EXIT_FAILURE;
      break;
    }
    if (n == 1)
      one_ns = ns;
    printf("%8u %13.0f ns %13.3f%% %8" G_GUINT64_FORMAT "\n", n, ns, ns / 1e7, xruns);
    fflush(stdout);
    if (xruns == 0)
      best = n;
    else
      break;
  }
  printf("\nlargest stream count with no xrun on one core: %u (target >= 64: %s); one stream: "
         "%.3f%% of a core (target <= 0.5%%: %s)\n\n",
         best, best >= 64 ? "met" : "NOT met", one_ns / 1e7,
         one_ns / 1e7 <= 0.5 ? "met" : "NOT met");
  printf("added latency, one stream, double-buffered: completion - write - 2 periods\n");
  printf("%12s %13s %13s %9s %9s %7s   %s\n", "period", "median", "p95", "med/per", "p95/per",
         "xruns", "p95 <= 1 period");
  fflush(stdout);
  for (guint i = 0; i < G_N_ELEMENTS(periods); i++) {
    if (!measure_latency(periods[i], seconds, 0, &error)) {
      g_printerr("period %u: %s\n", periods[i], error->message);
      g_clear_error(&error);
      status = EXIT_FAILURE;
    }
    fflush(stdout);
  }
  return status;
}
