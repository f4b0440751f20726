/* vsnd-null-output.c: clock-paced headless output. */
#include "vsnd-null-output.h"

#include <string.h>

/* Bytes moved per device call. */
#define CHUNK 16384u

typedef struct {
  gboolean opened, running;
  VsndPcmParams params;
  gint64 t0;      /* monotonic µs of the start */
  guint64 frames; /* moved since t0 */
} NullStream;

struct _VsndNullOutput {
  VsndVhost *vsnd;
  guint n_streams;
  NullStream *streams; /* device lock */
  GThread *thread;
  GMutex lock; /* quit, cond */
  GCond cond;
  gboolean quit;
};

/* --- stream iface (device lock held) ------------------------------------- */

static gboolean
n_open(gpointer data, guint stream, const VsndPcmParams *params)
{
  VsndNullOutput *o = data;

  if (stream >= o->n_streams)
    return FALSE;
  o->streams[stream] = (NullStream){ .opened = TRUE, .params = *params };
  return TRUE;
}

static void
n_start(gpointer data, guint stream)
{
  NullStream *s = &((VsndNullOutput *)data)->streams[stream];

  s->running = TRUE;
  s->t0 = g_get_monotonic_time();
  s->frames = 0;
}

static void
n_stop(gpointer data, guint stream)
{
  ((VsndNullOutput *)data)->streams[stream].running = FALSE;
}

static void
n_close(gpointer data, guint stream)
{
  memset(&((VsndNullOutput *)data)->streams[stream], 0, sizeof(NullStream));
}

static const VsndStreamIface null_iface = { n_open, n_start, n_stop, n_close, NULL, NULL, NULL };

/* --- the clock thread ------------------------------------------------------ */

/* Moves what is due on @s by @now (device lock held). */
static void
pace(VsndNullOutput *o, VsndDevice *dev, guint stream, NullStream *s, gint64 now, guint8 *buf)
{
  guint64 due = (guint64)(now - s->t0) * s->params.rate / G_USEC_PER_SEC;

  while (s->running && s->frames < due) {
    guint64 frames = MIN(due - s->frames, CHUNK / s->params.frame_bytes);
    gsize bytes = frames * s->params.frame_bytes;

    if (s->params.direction == VIRTIO_SND_D_OUTPUT) {
      vsnd_device_read(dev, stream, buf, bytes, TRUE);
    } else {
      vsnd_format_fill_silence(s->params.format, buf, bytes);
      vsnd_device_write(dev, stream, buf, bytes);
    }
    s->frames += frames;
  }
}

static gpointer
run(gpointer data)
{
  VsndNullOutput *o = data;
  guint8 *buf = g_malloc(CHUNK);

  g_mutex_lock(&o->lock);
  while (!o->quit) {
    gint64 now = g_get_monotonic_time();

    g_mutex_unlock(&o->lock);
    vsnd_vhost_lock(o->vsnd);
    for (guint i = 0; i < o->n_streams; i++)
      pace(o, vsnd_vhost_get_device(o->vsnd), i, &o->streams[i], now, buf);
    vsnd_vhost_unlock(o->vsnd);
    g_mutex_lock(&o->lock);
    g_cond_wait_until(&o->cond, &o->lock, now + VSND_NULL_OUTPUT_TICK_MS * 1000);
  }
  g_mutex_unlock(&o->lock);
  g_free(buf);
  return NULL;
}

VsndNullOutput *
vsnd_null_output_new(VsndVhost *vsnd)
{
  VsndNullOutput *o = g_new0(VsndNullOutput, 1);
  struct virtio_snd_config c;

  vsnd_vhost_lock(vsnd);
  vsnd_device_get_config(vsnd_vhost_get_device(vsnd), (guint8 *)&c, sizeof c);
  vsnd_vhost_unlock(vsnd);
  o->vsnd = vsnd;
  o->n_streams = c.streams;
  o->streams = g_new0(NullStream, c.streams);
  g_mutex_init(&o->lock);
  g_cond_init(&o->cond);
  vsnd_vhost_set_stream_iface(vsnd, &null_iface, o);
  o->thread = g_thread_new("snd-null", run, o);
  return o;
}

void
vsnd_null_output_free(VsndNullOutput *o)
{
  if (!o)
    return;
  g_mutex_lock(&o->lock);
  o->quit = TRUE;
  g_cond_signal(&o->cond);
  g_mutex_unlock(&o->lock);
  g_thread_join(o->thread);
  vsnd_vhost_set_stream_iface(o->vsnd, NULL, NULL);
  g_mutex_clear(&o->lock);
  g_cond_clear(&o->cond);
  g_free(o->streams);
  g_free(o);
}
