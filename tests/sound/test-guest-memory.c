/* gst-vhost-sound against a frontend that truncates guest memory while a
 * stream moves frames through it: the daemon is not killed (SIGBUS is
 * turned into zeros by the guard in vhost/), the queue that used the memory
 * breaks with one log line and the device says NEEDS_RESET, and the next
 * frontend is served as if nothing happened.  Playback reads the lost
 * pages, capture writes into them. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "test-util.h"
#include "vhu-frontend.h"
#include "vsnd-device.h"

#define GUEST_GPA  0x100000ull /* rings, headers, statuses */
#define GUEST_SIZE (4u << 20)
#define EXTRA_GPA  0x40000000ull /* frames only: the region that goes */
#define EXTRA_SIZE (1u << 20)
#define WAIT_MS    5000
#define PERIOD     (2400u * 4u) /* 50 ms of S16 stereo at 48 kHz */
#define N_BUFS     4u

typedef struct {
  GSubprocess *proc;
  char *dir, *path;
  GThread *reader;
  GMutex lock;
  GCond cond;
  GPtrArray *lines; /* the daemon's stderr */
  gboolean eof;
} Daemon;

static gpointer
reader_main(gpointer data)
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

static guint
count_log(Daemon *d, const char *text)
{
  guint n = 0;

  for (guint i = 0; i < d->lines->len; i++)
    n += strstr(d->lines->pdata[i], text) != NULL;
  return n;
}

/* Waits until the daemon logged @count lines containing @text; FALSE when
 * it ended or @timeout_ms passed first. */
static gboolean
wait_log(Daemon *d, const char *text, guint count, int timeout_ms)
{
  gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
  gboolean found;

  g_mutex_lock(&d->lock);
  while (!(found = count_log(d, text) >= count) && !d->eof
         && g_cond_wait_until(&d->cond, &d->lock, end))
    ;
  g_mutex_unlock(&d->lock);
  return found;
}

static void child_setup(gpointer data);

static void
daemon_start(Daemon *d)
{
  g_autoptr(GSubprocessLauncher) launcher = NULL;
  g_autoptr(GError) error = NULL;

  memset(d, 0, sizeof *d);
  g_mutex_init(&d->lock);
  g_cond_init(&d->cond);
  d->lines = g_ptr_array_new_with_free_func(g_free);
  d->dir = tu_make_tmpdir("test-sound-mem-XXXXXX");
  d->path = g_build_filename(d->dir, "snd.sock", NULL);
  launcher = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDERR_PIPE);
  g_subprocess_launcher_set_child_setup(launcher, child_setup, NULL, NULL);
  d->proc = g_subprocess_launcher_spawn(launcher, &error, GST_VHOST_SOUND, "--socket-path", d->path,
                                        "--formats=s16", "--rates=48000", NULL);
  g_assert_no_error(error);
  d->reader = g_thread_new("daemon-stderr", reader_main, d);
  g_assert_true(wait_log(d, "listening on", 1, WAIT_MS));
}

/* SIGTERM: the daemon, alive all along, ends cleanly. */
static void
daemon_stop(Daemon *d)
{
  g_assert_false(d->eof);
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
}

static VhuFrontend *
session_start(Daemon *d)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[VSND_NUM_QUEUES] = { 64, 64, 64, 64 };
  VhuFrontend *fe = vhu_frontend_connect(d->path, &error);

  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_true(vhu_frontend_add_region(fe, EXTRA_GPA, EXTRA_SIZE, &error));
  g_assert_true(vhu_frontend_start(fe, 0, sizes, VSND_NUM_QUEUES, &error));
  g_assert_no_error(error);
  return fe;
}

static guint32
pcm(VhuFrontend *fe, const void *req, gsize len)
{
  g_autoptr(GError) error = NULL;
  guint32 status = 0;

  g_assert_cmpint(vhu_driver_queue_transact(vhu_frontend_get_queue(fe, VSND_CTRL_QUEUE), req, len,
                                            &status, sizeof status, &error),
                  ==, 4);
  g_assert_no_error(error);
  return status;
}

static guint32
pcm_op(VhuFrontend *fe, guint32 code, guint32 stream)
{
  struct virtio_snd_pcm_hdr h = { { code }, stream };

  return pcm(fe, &h, sizeof h);
}

/* A test that fails must not leave its daemon behind. */
static void
child_setup(gpointer data)
{
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* A transfer whose frames are in @frames_gpa, its header and status in the
 * first region. */
static guint8 *
add_xfer(VhuFrontend *fe, guint qidx, guint32 stream, guint64 frames_gpa)
{
  VhuDriverQueue *q = vhu_frontend_get_queue(fe, qidx);
  guint64 gpa = vhu_frontend_alloc(fe, 16, 16);
  guint8 *host = vhu_frontend_gpa_to_ptr(fe, gpa, 16);
  VhuGuestBuf hdr = { gpa, 4 }, status = { gpa + 8, 8 }, frames = { frames_gpa, PERIOD };

  memset(host, 0, 16);
  memcpy(host, &stream, 4);
  if (qidx == VSND_TX_QUEUE) {
    VhuGuestBuf out[2] = { hdr, frames };

    g_assert_cmpint(vhu_driver_queue_add(q, out, 2, &status, 1, FALSE, host), >=, 0);
  } else {
    VhuGuestBuf in[2] = { frames, status };

    g_assert_cmpint(vhu_driver_queue_add(q, &hdr, 1, in, 2, FALSE, host), >=, 0);
  }
  vhu_driver_queue_kick(q);
  return host;
}

/* Waits for the next completion on @qidx; returns its status. */
static guint32
wait_done(VhuFrontend *fe, guint qidx)
{
  VhuDriverQueue *q = vhu_frontend_get_queue(fe, qidx);
  gint64 end = g_get_monotonic_time() + WAIT_MS * 1000;
  gpointer token;
  guint32 len, status;

  while (!vhu_driver_queue_get_used(q, &token, &len)) {
    g_assert_cmpint(g_get_monotonic_time(), <, end);
    vhu_driver_queue_wait(q, 100);
  }
  memcpy(&status, (guint8 *)token + 8, 4);
  return status;
}

static void
stream_up(VhuFrontend *fe, guint32 stream)
{
  struct virtio_snd_pcm_set_params p = { { { VIRTIO_SND_R_PCM_SET_PARAMS }, stream },
                                         N_BUFS * PERIOD,
                                         PERIOD,
                                         0,
                                         2,
                                         VIRTIO_SND_PCM_FMT_S16,
                                         VIRTIO_SND_PCM_RATE_48000 };

  g_assert_cmphex(pcm(fe, &p, sizeof p), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(pcm_op(fe, VIRTIO_SND_R_PCM_PREPARE, stream), ==, VIRTIO_SND_S_OK);
}

/* N_BUFS transfers with their frames in the second region; once the first
 * completed, the frontend truncates that region under the running stream. */
static void
truncate_mid_stream(Daemon *d, guint qidx, guint32 stream)
{
  g_autofree char *broken = g_strdup_printf("queue %u broken: guest memory shrank", qidx);
  VhuFrontend *fe = session_start(d);
  g_autoptr(GError) error = NULL;
  gint64 end = g_get_monotonic_time() + WAIT_MS * 1000;
  guint8 status = 0;
  int fd;

  stream_up(fe, stream);
  for (guint i = 0; i < N_BUFS; i++)
    add_xfer(fe, qidx, stream, EXTRA_GPA + (guint64)i * PERIOD);
  g_assert_cmphex(pcm_op(fe, VIRTIO_SND_R_PCM_START, stream), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(wait_done(fe, qidx), ==, VIRTIO_SND_S_OK);
  fd = vhu_frontend_get_region_fd(fe, EXTRA_GPA);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(ftruncate(fd, 0), ==, 0);

  /* The next frames read or written land in lost pages: the ring breaks
   * (and every other ring of that memory table when it is next used). */
  g_assert_true(wait_log(d, broken, 1, WAIT_MS));
  do {
    g_assert_true(vhu_frontend_get_status(fe, &status, &error));
    g_assert_no_error(error);
  } while (!(status & VHU_STATUS_NEEDS_RESET) && g_get_monotonic_time() < end);
  g_assert_cmphex(status & VHU_STATUS_NEEDS_RESET, ==, VHU_STATUS_NEEDS_RESET);
  g_mutex_lock(&d->lock);
  g_assert_cmpuint(count_log(d, broken), ==, 1); /* one line per ring */
  g_mutex_unlock(&d->lock);
  vhu_frontend_free(fe);
}

/* A fresh frontend plays and records a period each, as if nothing happened. */
static void
check_served(Daemon *d)
{
  VhuFrontend *fe = session_start(d);

  stream_up(fe, 0);
  stream_up(fe, 1);
  add_xfer(fe, VSND_TX_QUEUE, 0, EXTRA_GPA);
  add_xfer(fe, VSND_RX_QUEUE, 1, EXTRA_GPA + PERIOD);
  g_assert_cmphex(pcm_op(fe, VIRTIO_SND_R_PCM_START, 0), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(pcm_op(fe, VIRTIO_SND_R_PCM_START, 1), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(wait_done(fe, VSND_TX_QUEUE), ==, VIRTIO_SND_S_OK);
  g_assert_cmphex(wait_done(fe, VSND_RX_QUEUE), ==, VIRTIO_SND_S_OK);
  vhu_frontend_free(fe);
}

static void
test_truncated(void)
{
  Daemon d;

  daemon_start(&d);
  truncate_mid_stream(&d, VSND_TX_QUEUE, 0);
  check_served(&d);
  truncate_mid_stream(&d, VSND_RX_QUEUE, 1);
  check_served(&d);
  daemon_stop(&d);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/sound/guest-memory/truncated-mid-stream", test_truncated);
  return g_test_run();
}
