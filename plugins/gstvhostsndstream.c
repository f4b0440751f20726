/* gstvhostsndstream.c: per-stream pipelines paced by their clock. */
#include "gstvhostsndstream.h"

#include <gst/app/gstappsink.h>
#include <gst/app/gstappsrc.h>
#include <gst/audio/audio.h>
#include <gst/base/gstadapter.h>
#include <string.h>

GST_DEBUG_CATEGORY_STATIC(snd_debug);
#define GST_CAT_DEFAULT snd_debug

/* The pacing tick: one guest period, within these bounds (every tick
 * pushes a buffer through the pipeline, ~50 us of CPU; half a period cost
 * twice as much for no gain: a tx buffer completes when its last frame is
 * due, which a period tick meets). */
#define MIN_TICK (2 * GST_MSECOND)
#define MAX_TICK (10 * GST_MSECOND)
/* Playback audio queued in front of a pipeline that stopped taking it. */
#define OUT_QUEUE (500 * GST_MSECOND)
/* How far capture may lag behind the clock waiting for the pipeline
 * before the gap is filled with silence. */
#define IN_SLACK (100 * GST_MSECOND)
/* Capture samples buffered in front of the stream. */
#define IN_BUFFERS 8
/* A pipeline clock that stands still this long (monotonic time) while a
 * stream runs is given up for the system clock: the guest never stalls. */
#define STALL_US (2 * G_USEC_PER_SEC)
/* Bounded waits for pipeline state changes. */
#define STATE_TIMEOUT (2 * GST_SECOND)

#define HEADLESS_OUTPUT "fakesink"
#define HEADLESS_INPUT  "audiotestsrc wave=silence is-live=true"

typedef struct {
  GstVhostSndStream *owner;
  guint index;
  guint8 direction;
  char *desc;
  GstElement *pipeline, *app, *volume, *filter;
  GSource *bus_watch;
  GThread *thread;

  GMutex lock; /* the fields down to wait_id; taken inside the device lock */
  GCond cond;
  gboolean quit;
  gboolean want_open, want_run;
  VsndPcmParams want_params;
  gint64 start_us;    /* monotonic time of the last START */
  guint gen;          /* bumped by every request */
  GstClockID wait_id; /* the pending tick, waited for asynchronously */
  gdouble gain;       /* playback controls not yet sent down */
  gboolean mute, volume_changed;
  gboolean fired; /* it has come */

  /* The stream thread's own. */
  guint seen_gen;
  gboolean is_open, running, discont, live, system_clock;
  VsndPcmParams params;
  GstCaps *caps;
  GstClock *clock;
  GstClockTime base, t0, tick; /* base and t0 in clock time */
  guint64 moved;               /* frames since t0 */
  gint64 started_us;           /* the start_us running now */
  guint64 dropped;             /* playback frames the pipeline had no room for */
  gint64 last_drop_log;
  GstAdapter *adapter; /* capture */

  gint failed;      /* atomic: the pipeline posted an error */
  gint delay_bytes; /* atomic: latency_bytes for the guest */
  gboolean warned_format;
} Stream;

struct _GstVhostSndStream {
  VsndVhost *vsnd;
  GMainContext *context;
  GstClock *clock; /* for every pipeline, or NULL */
  guint n_streams;
  Stream *streams;
  gboolean started, finished;
};

/* ------------------------------------------------------------------------ */
/* Caps */

static GstAudioFormat
gst_format(guint format)
{
  switch (format) {
    case VIRTIO_SND_PCM_FMT_S8:
      return GST_AUDIO_FORMAT_S8;
    case VIRTIO_SND_PCM_FMT_U8:
      return GST_AUDIO_FORMAT_U8;
    case VIRTIO_SND_PCM_FMT_S16:
      return GST_AUDIO_FORMAT_S16LE;
    case VIRTIO_SND_PCM_FMT_U16:
      return GST_AUDIO_FORMAT_U16LE;
    case VIRTIO_SND_PCM_FMT_S18_3:
      return GST_AUDIO_FORMAT_S18LE;
    case VIRTIO_SND_PCM_FMT_U18_3:
      return GST_AUDIO_FORMAT_U18LE;
    case VIRTIO_SND_PCM_FMT_S20_3:
      return GST_AUDIO_FORMAT_S20LE;
    case VIRTIO_SND_PCM_FMT_U20_3:
      return GST_AUDIO_FORMAT_U20LE;
    case VIRTIO_SND_PCM_FMT_S24_3:
      return GST_AUDIO_FORMAT_S24LE;
    case VIRTIO_SND_PCM_FMT_U24_3:
      return GST_AUDIO_FORMAT_U24LE;
    case VIRTIO_SND_PCM_FMT_S24:
      return GST_AUDIO_FORMAT_S24_32LE;
    case VIRTIO_SND_PCM_FMT_U24:
      return GST_AUDIO_FORMAT_U24_32LE;
    case VIRTIO_SND_PCM_FMT_S32:
      return GST_AUDIO_FORMAT_S32LE;
    case VIRTIO_SND_PCM_FMT_U32:
      return GST_AUDIO_FORMAT_U32LE;
    case VIRTIO_SND_PCM_FMT_FLOAT:
      return GST_AUDIO_FORMAT_F32LE;
    case VIRTIO_SND_PCM_FMT_FLOAT64:
      return GST_AUDIO_FORMAT_F64LE;
    default:
      return GST_AUDIO_FORMAT_UNKNOWN;
  }
}

static GstAudioChannelPosition
gst_position(guint8 position)
{
  static const GstAudioChannelPosition map[VIRTIO_SND_CHMAP_COUNT] = {
    [VIRTIO_SND_CHMAP_NONE] = GST_AUDIO_CHANNEL_POSITION_INVALID,
    [VIRTIO_SND_CHMAP_NA] = GST_AUDIO_CHANNEL_POSITION_INVALID,
    [VIRTIO_SND_CHMAP_MONO] = GST_AUDIO_CHANNEL_POSITION_MONO,
    [VIRTIO_SND_CHMAP_FL] = GST_AUDIO_CHANNEL_POSITION_FRONT_LEFT,
    [VIRTIO_SND_CHMAP_FR] = GST_AUDIO_CHANNEL_POSITION_FRONT_RIGHT,
    [VIRTIO_SND_CHMAP_RL] = GST_AUDIO_CHANNEL_POSITION_REAR_LEFT,
    [VIRTIO_SND_CHMAP_RR] = GST_AUDIO_CHANNEL_POSITION_REAR_RIGHT,
    [VIRTIO_SND_CHMAP_FC] = GST_AUDIO_CHANNEL_POSITION_FRONT_CENTER,
    [VIRTIO_SND_CHMAP_LFE] = GST_AUDIO_CHANNEL_POSITION_LFE1,
    [VIRTIO_SND_CHMAP_SL] = GST_AUDIO_CHANNEL_POSITION_SIDE_LEFT,
    [VIRTIO_SND_CHMAP_SR] = GST_AUDIO_CHANNEL_POSITION_SIDE_RIGHT,
    [VIRTIO_SND_CHMAP_RC] = GST_AUDIO_CHANNEL_POSITION_REAR_CENTER,
    [VIRTIO_SND_CHMAP_FLC] = GST_AUDIO_CHANNEL_POSITION_FRONT_LEFT_OF_CENTER,
    [VIRTIO_SND_CHMAP_FRC] = GST_AUDIO_CHANNEL_POSITION_FRONT_RIGHT_OF_CENTER,
    [VIRTIO_SND_CHMAP_RLC] = GST_AUDIO_CHANNEL_POSITION_INVALID,
    [VIRTIO_SND_CHMAP_RRC] = GST_AUDIO_CHANNEL_POSITION_INVALID,
    [VIRTIO_SND_CHMAP_FLW] = GST_AUDIO_CHANNEL_POSITION_WIDE_LEFT,
    [VIRTIO_SND_CHMAP_FRW] = GST_AUDIO_CHANNEL_POSITION_WIDE_RIGHT,
    [VIRTIO_SND_CHMAP_FLH] = GST_AUDIO_CHANNEL_POSITION_TOP_FRONT_LEFT,
    [VIRTIO_SND_CHMAP_FCH] = GST_AUDIO_CHANNEL_POSITION_TOP_FRONT_CENTER,
    [VIRTIO_SND_CHMAP_FRH] = GST_AUDIO_CHANNEL_POSITION_TOP_FRONT_RIGHT,
    [VIRTIO_SND_CHMAP_TC] = GST_AUDIO_CHANNEL_POSITION_TOP_CENTER,
    [VIRTIO_SND_CHMAP_TFL] = GST_AUDIO_CHANNEL_POSITION_TOP_FRONT_LEFT,
    [VIRTIO_SND_CHMAP_TFR] = GST_AUDIO_CHANNEL_POSITION_TOP_FRONT_RIGHT,
    [VIRTIO_SND_CHMAP_TFC] = GST_AUDIO_CHANNEL_POSITION_TOP_FRONT_CENTER,
    [VIRTIO_SND_CHMAP_TRL] = GST_AUDIO_CHANNEL_POSITION_TOP_REAR_LEFT,
    [VIRTIO_SND_CHMAP_TRR] = GST_AUDIO_CHANNEL_POSITION_TOP_REAR_RIGHT,
    [VIRTIO_SND_CHMAP_TRC] = GST_AUDIO_CHANNEL_POSITION_TOP_REAR_CENTER,
    [VIRTIO_SND_CHMAP_TFLC] = GST_AUDIO_CHANNEL_POSITION_INVALID,
    [VIRTIO_SND_CHMAP_TFRC] = GST_AUDIO_CHANNEL_POSITION_INVALID,
    [VIRTIO_SND_CHMAP_TSL] = GST_AUDIO_CHANNEL_POSITION_TOP_SIDE_LEFT,
    [VIRTIO_SND_CHMAP_TSR] = GST_AUDIO_CHANNEL_POSITION_TOP_SIDE_RIGHT,
    [VIRTIO_SND_CHMAP_LLFE] = GST_AUDIO_CHANNEL_POSITION_LFE1,
    [VIRTIO_SND_CHMAP_RLFE] = GST_AUDIO_CHANNEL_POSITION_LFE2,
    [VIRTIO_SND_CHMAP_BC] = GST_AUDIO_CHANNEL_POSITION_BOTTOM_FRONT_CENTER,
    [VIRTIO_SND_CHMAP_BLC] = GST_AUDIO_CHANNEL_POSITION_BOTTOM_FRONT_LEFT,
    [VIRTIO_SND_CHMAP_BRC] = GST_AUDIO_CHANNEL_POSITION_BOTTOM_FRONT_RIGHT,
  };

  return position < VIRTIO_SND_CHMAP_COUNT ? map[position] : GST_AUDIO_CHANNEL_POSITION_INVALID;
}

GstCaps *
gst_vhost_snd_params_to_caps(const VsndPcmParams *params)
{
  GstAudioChannelPosition pos[VIRTIO_SND_CHMAP_MAX_SIZE];
  GstAudioFormat format = gst_format(params->format);
  gboolean positioned = params->channels <= VIRTIO_SND_CHMAP_MAX_SIZE;
  GstAudioInfo info;

  if (format == GST_AUDIO_FORMAT_UNKNOWN || params->rate == 0 || params->channels == 0
      || params->channels > VIRTIO_SND_CHMAP_MAX_SIZE)
    return NULL;
  for (guint i = 0; positioned && i < params->channels; i++) {
    pos[i] = gst_position(params->positions[i]);
    positioned = pos[i] != GST_AUDIO_CHANNEL_POSITION_INVALID;
  }
  /* A mono position only stands alone; duplicates are not valid either. */
  if (positioned && !gst_audio_check_valid_channel_positions(pos, params->channels, FALSE))
    positioned = FALSE;
  gst_audio_info_init(&info);
  gst_audio_info_set_format(&info, format, (gint)params->rate, params->channels,
                            positioned ? pos : NULL);
  return gst_audio_info_to_caps(&info);
}

/* ------------------------------------------------------------------------ */
/* Stream iface (device lock held): note the request, wake the thread */

static void
request(Stream *s)
{
  s->gen++;
  g_cond_signal(&s->cond);
}

static gboolean
i_open(gpointer data, guint stream, const VsndPcmParams *params)
{
  GstVhostSndStream *self = data;
  g_autoptr(GstCaps) caps = NULL;
  Stream *s;

  if (stream >= self->n_streams)
    return FALSE;
  s = &self->streams[stream];
  caps = gst_vhost_snd_params_to_caps(params);
  if (!caps) {
    if (!s->warned_format)
      g_warning("stream %u: sample format %u has no GStreamer raw audio format", stream,
                params->format);
    s->warned_format = TRUE;
    return FALSE;
  }
  g_mutex_lock(&s->lock);
  s->want_open = TRUE;
  s->want_run = FALSE;
  s->want_params = *params;
  request(s);
  g_mutex_unlock(&s->lock);
  return TRUE;
}

static void
set_run(GstVhostSndStream *self, guint stream, gboolean open, gboolean run)
{
  Stream *s = &self->streams[stream];

  g_mutex_lock(&s->lock);
  if (run && !s->want_run)
    s->start_us = g_get_monotonic_time();
  s->want_open = open;
  s->want_run = run;
  request(s);
  g_mutex_unlock(&s->lock);
}

static void
i_start(gpointer data, guint stream)
{
  set_run(data, stream, TRUE, TRUE);
}

static void
i_stop(gpointer data, guint stream)
{
  set_run(data, stream, TRUE, FALSE);
}

static void
i_close(gpointer data, guint stream)
{
  set_run(data, stream, FALSE, FALSE);
}

static guint32
i_get_delay(gpointer data, guint stream)
{
  Stream *s = &((GstVhostSndStream *)data)->streams[stream];
  guint64 delay = (guint)g_atomic_int_get(&s->delay_bytes);

  if (s->direction == VIRTIO_SND_D_OUTPUT)
    delay += gst_app_src_get_current_level_bytes(GST_APP_SRC(s->app));
  return (guint32)MIN(delay, G_MAXUINT32);
}

static void
i_set_volume(gpointer data, guint stream, gdouble gain, gboolean mute)
{
  Stream *s = &((GstVhostSndStream *)data)->streams[stream];

  if (s->direction == VIRTIO_SND_D_INPUT) {
    /* The element's own lock, never held while it calls out. */
    g_object_set(s->volume, "volume", gain, "mute", mute, NULL);
    return;
  }
  /* Playback: from the next frames taken from the guest on, not for what
   * the pipeline still holds (see send_volume()). */
  g_mutex_lock(&s->lock);
  s->gain = gain;
  s->mute = mute;
  s->volume_changed = TRUE;
  g_mutex_unlock(&s->lock);
}

static const VsndStreamIface stream_iface = {
  .open = i_open,
  .start = i_start,
  .stop = i_stop,
  .close = i_close,
  .get_delay = i_get_delay,
  .set_volume = i_set_volume,
};

/* ------------------------------------------------------------------------ */
/* The stream thread: state changes */

static guint64
frames_to_bytes(const Stream *s, guint64 frames)
{
  return frames * s->params.frame_bytes;
}

static GstClockTime
frames_to_time(const Stream *s, guint64 frames)
{
  return gst_util_uint64_scale(frames, GST_SECOND, s->params.rate);
}

static guint64
time_to_frames(const Stream *s, GstClockTime t)
{
  return gst_util_uint64_scale(t, s->params.rate, GST_SECOND);
}

/* Takes the clock to pace by: the pipeline's while it is healthy, the
 * system clock otherwise.  Frames are due from @since_us (monotonic), the
 * guest's START, however long the pipeline took to get going. */
static void
take_clock(Stream *s, gboolean system, gint64 since_us)
{
  GstClockTime late = (GstClockTime)MAX(g_get_monotonic_time() - since_us, 0) * GST_USECOND;
  GstClock *clock
      = system || g_atomic_int_get(&s->failed) ? NULL : gst_element_get_clock(s->pipeline);

  gst_clear_object(&s->clock);
  s->system_clock = !clock;
  if (clock) {
    s->clock = clock;
    s->base = gst_element_get_base_time(s->pipeline);
  } else {
    s->clock = gst_system_clock_obtain();
    s->base = gst_clock_get_time(s->clock);
  }
  s->t0 = gst_clock_get_time(s->clock);
  s->t0 -= MIN(late, s->t0 - MIN(s->base, s->t0));
  s->moved = 0;
  s->discont = TRUE;
}

/* Playback: later guest formats are converted to the first one the
 * pipeline took. */
static void
pin_output_format(Stream *s)
{
  g_autoptr(GstCaps) pinned = NULL;
  g_autoptr(GstPad) pad = NULL;

  g_object_get(s->filter, "caps", &pinned, NULL);
  if (pinned && !gst_caps_is_any(pinned))
    return;
  pad = gst_element_get_static_pad(s->filter, "src");
  g_clear_pointer(&pinned, gst_caps_unref);
  pinned = gst_pad_get_current_caps(pad);
  if (pinned) {
    GST_INFO("stream %u: the pipeline keeps %" GST_PTR_FORMAT, s->index, pinned);
    g_object_set(s->filter, "caps", pinned, NULL);
  }
}

static GstClockTime
pipeline_latency(Stream *s)
{
  g_autoptr(GstQuery) q = gst_query_new_latency();
  GstClockTime min = 0;
  gboolean live;

  if (gst_element_query(s->pipeline, q))
    gst_query_parse_latency(q, &live, &min, NULL);
  return GST_CLOCK_TIME_IS_VALID(min) ? min : 0;
}

static void
stream_open(Stream *s, const VsndPcmParams *params)
{
  g_autoptr(GstCaps) caps = gst_vhost_snd_params_to_caps(params);
  GstClockTime period;

  s->params = *params;
  period = frames_to_time(s, params->period_bytes / params->frame_bytes);
  s->tick = CLAMP(period, MIN_TICK, MAX_TICK);
  if (s->direction == VIRTIO_SND_D_OUTPUT) {
    pin_output_format(s);
    gst_app_src_set_caps(GST_APP_SRC(s->app), caps);
    g_atomic_int_set(
        &s->delay_bytes,
        (gint)MIN(frames_to_bytes(s, time_to_frames(s, pipeline_latency(s) + s->tick)), G_MAXINT));
  } else {
    if (!s->caps || !gst_caps_is_equal(s->caps, caps)) {
      gst_adapter_clear(s->adapter);
      g_object_set(s->filter, "caps", caps, NULL);
    }
    /* Playing from PREPARE on, so that START finds it running (a live
     * source's oldest samples are dropped meanwhile). */
    gst_element_set_state(s->pipeline, GST_STATE_PLAYING);
  }
  gst_caps_replace(&s->caps, caps);
  s->is_open = TRUE;
  GST_INFO("stream %u: open, %" GST_PTR_FORMAT, s->index, caps);
}

static void
stream_start(Stream *s, gint64 since_us)
{
  if (s->direction == VIRTIO_SND_D_INPUT) {
    GstSample *stale;

    /* Its clock, once it got there (at once, unless START follows PREPARE
     * closely); the frames due meanwhile are caught up. */
    gst_element_get_state(s->pipeline, NULL, NULL, STATE_TIMEOUT);
    /* What a live source captured before START is not the guest's. */
    while (s->live && (stale = gst_app_sink_try_pull_sample(GST_APP_SINK(s->app), 0)))
      gst_sample_unref(stale);
    if (s->live)
      gst_adapter_clear(s->adapter);
  }
  take_clock(s, FALSE, since_us);
  s->started_us = since_us;
  s->running = TRUE;
  GST_INFO("stream %u: running on %" GST_PTR_FORMAT, s->index, s->clock);
}

static void
stream_stop(Stream *s)
{
  s->running = FALSE;
}

static void
stream_close(Stream *s)
{
  if (s->running)
    stream_stop(s);
  /* A live source stops capturing; any other waits where it is. */
  if (s->direction == VIRTIO_SND_D_INPUT && s->live)
    gst_element_set_state(s->pipeline, GST_STATE_PAUSED);
  s->is_open = FALSE;
  g_atomic_int_set(&s->delay_bytes, 0);
}

/* Brings the stream where the device asked (stream lock not held). */
static void
apply(Stream *s, gboolean open, gboolean run, const VsndPcmParams *params, gint64 since_us)
{
  if (s->is_open && (!open || memcmp(&s->params, params, sizeof *params) != 0))
    stream_close(s);
  if (open && !s->is_open)
    stream_open(s, params);
  /* A STOP and START both come before we look: a new start all the same. */
  if (s->running && (!run || since_us != s->started_us))
    stream_stop(s);
  if (run && !s->running)
    stream_start(s, since_us);
}

/* ------------------------------------------------------------------------ */
/* The stream thread: moving frames */

#define VOLUME_EVENT "GstVhostSndVolume"

/* Playback controls travel in order with the audio, as a serialized event
 * that the volume element's sink pad turns into its properties. */
static void
send_volume(Stream *s)
{
  GstStructure *st = NULL;

  g_mutex_lock(&s->lock);
  if (s->volume_changed)
    st = gst_structure_new(VOLUME_EVENT, "volume", G_TYPE_DOUBLE, s->gain, "mute", G_TYPE_BOOLEAN,
                           s->mute, NULL);
  s->volume_changed = FALSE;
  g_mutex_unlock(&s->lock);
  if (st)
    gst_element_send_event(s->app, gst_event_new_custom(GST_EVENT_CUSTOM_DOWNSTREAM, st));
}

static GstPadProbeReturn
on_volume_event(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  const GstStructure *st = gst_event_get_structure(event);
  gdouble gain;
  gboolean mute;

  if (GST_EVENT_TYPE(event) != GST_EVENT_CUSTOM_DOWNSTREAM || !st
      || !gst_structure_has_name(st, VOLUME_EVENT))
    return GST_PAD_PROBE_OK;
  if (gst_structure_get_double(st, "volume", &gain) && gst_structure_get_boolean(st, "mute", &mute))
    g_object_set(data, "volume", gain, "mute", mute, NULL);
  return GST_PAD_PROBE_DROP;
}

static void
pace_output(Stream *s, guint64 due)
{
  GstVhostSndStream *self = s->owner;
  guint64 max = MAX(time_to_frames(s, s->tick), 1);

  gint64 now = g_get_monotonic_time();

  if (s->dropped > 0 && now - s->last_drop_log >= G_USEC_PER_SEC) {
    g_warning("stream %u: the pipeline does not keep up: %" G_GUINT64_FORMAT " ms of audio dropped",
              s->index, s->dropped * 1000 / s->params.rate);
    s->dropped = 0;
    s->last_drop_log = now;
  }
  while (s->moved < due) {
    guint64 n = MIN(due - s->moved, max);
    GstBuffer *buf = gst_buffer_new_allocate(NULL, frames_to_bytes(s, n), NULL);
    GstClockTime t = s->t0 - MIN(s->base, s->t0);
    GstMapInfo map;

    /* Before the read: a control change that comes while (or after) the
     * guest's frames are read, e.g. once their buffer completed, is for the
     * frames after them. */
    send_volume(s);
    gst_buffer_map(buf, &map, GST_MAP_WRITE);
    vsnd_vhost_read(self->vsnd, s->index, map.data, map.size, TRUE);
    gst_buffer_unmap(buf, &map);
    GST_BUFFER_PTS(buf) = t + frames_to_time(s, s->moved);
    GST_BUFFER_DURATION(buf) = t + frames_to_time(s, s->moved + n) - GST_BUFFER_PTS(buf);
    if (s->discont)
      GST_BUFFER_FLAG_SET(buf, GST_BUFFER_FLAG_DISCONT);
    s->discont = FALSE;
    /* A pipeline that does not keep up loses audio, counted; refused
     * pushes (the pipeline is down) too: the guest goes on either way. */
    if (gst_app_src_get_current_level_bytes(GST_APP_SRC(s->app))
        > frames_to_bytes(s, time_to_frames(s, OUT_QUEUE))) {
      s->dropped += n;
      gst_buffer_unref(buf);
    } else {
      gst_app_src_push_buffer(GST_APP_SRC(s->app), buf);
    }
    s->moved += n;
  }
}

/* Pulls capture samples of the stream's format until @want bytes wait. */
static void
fill_adapter(Stream *s, gsize want)
{
  while (gst_adapter_available(s->adapter) < want) {
    GstSample *sample = gst_app_sink_try_pull_sample(GST_APP_SINK(s->app), 0);

    if (!sample)
      return;
    if (gst_caps_is_equal(gst_sample_get_caps(sample), s->caps))
      gst_adapter_push(s->adapter, gst_buffer_ref(gst_sample_get_buffer(sample)));
    gst_sample_unref(sample);
  }
}

static void
pace_input(Stream *s, guint64 due)
{
  GstVhostSndStream *self = s->owner;
  gsize need = frames_to_bytes(s, due - s->moved);
  gsize have;

  fill_adapter(s, need);
  have = gst_adapter_available(s->adapter);
  GST_LOG("stream %u: %zu bytes due, %zu there", s->index, need, have);
  have = MIN(have, need) / s->params.frame_bytes * s->params.frame_bytes;
  if (have > 0) {
    const guint8 *data = gst_adapter_map(s->adapter, have);

    vsnd_vhost_write(self->vsnd, s->index, data, have);
    gst_adapter_unmap(s->adapter);
    gst_adapter_flush(s->adapter, have);
    s->moved += have / s->params.frame_bytes;
  }
  /* The pipeline ended or fell too far behind: silence keeps the pace. */
  if (s->moved < due
      && (gst_app_sink_is_eos(GST_APP_SINK(s->app)) || g_atomic_int_get(&s->failed)
          || frames_to_time(s, due - s->moved) > IN_SLACK)) {
    gsize len = frames_to_bytes(s, due - s->moved);
    g_autofree guint8 *silence = g_malloc(len);

    vsnd_format_fill_silence(s->params.format, silence, len);
    vsnd_vhost_write(self->vsnd, s->index, silence, len);
    s->moved = due;
  }
  g_atomic_int_set(&s->delay_bytes, (gint)MIN(gst_adapter_available(s->adapter), G_MAXINT));
}

static void
pace(Stream *s)
{
  GstClockTime now;

  now = gst_clock_get_time(s->clock);
  if (now <= s->t0)
    return;
  if (s->direction == VIRTIO_SND_D_OUTPUT)
    pace_output(s, time_to_frames(s, now - s->t0));
  else
    pace_input(s, time_to_frames(s, now - s->t0));
}

/* The next tick after now, in clock time. */
static GstClockTime
next_tick(Stream *s)
{
  GstClockTime now = gst_clock_get_time(s->clock);
  guint64 k = now > s->t0 ? (now - s->t0) / s->tick + 1 : 1;

  return s->t0 + k * s->tick;
}

static gboolean
on_tick(GstClock *clock, GstClockTime time, GstClockID id, gpointer data)
{
  Stream *s = data;

  g_mutex_lock(&s->lock);
  if (id == s->wait_id) {
    s->fired = TRUE;
    g_cond_signal(&s->cond);
  }
  g_mutex_unlock(&s->lock);
  return TRUE;
}

/* Drops the pending tick.  The lock is released around the unschedule: the
 * clock may be calling on_tick(), which waits for it. */
static void
clear_tick(Stream *s)
{
  GstClockID id = s->wait_id;

  if (!id)
    return;
  s->wait_id = NULL;
  g_mutex_unlock(&s->lock);
  gst_clock_id_unschedule(id);
  gst_clock_id_unref(id);
  g_mutex_lock(&s->lock);
}

/* Waits (lock held) for the next tick of the stream's clock, a request, or
 * a clock that stands still; TRUE when the tick came. */
static gboolean
wait_tick(Stream *s)
{
  GstClockTime seen, next;
  gboolean fired;
  gint64 deadline;

  /* A pipeline that failed may have stopped its clock. */
  if (g_atomic_int_get(&s->failed) && !s->system_clock)
    take_clock(s, TRUE, g_get_monotonic_time());
  seen = gst_clock_get_time(s->clock);
  s->fired = FALSE;
  next = next_tick(s);
  s->wait_id = gst_clock_new_single_shot_id(s->clock, next);
  GST_LOG("stream %u: tick at %" GST_TIME_FORMAT ", now %" GST_TIME_FORMAT, s->index,
          GST_TIME_ARGS(next), GST_TIME_ARGS(seen));
  gst_clock_id_wait_async(s->wait_id, on_tick, s, NULL);
  for (;;) {
    deadline = g_get_monotonic_time() + STALL_US;
    while (!s->fired && !s->quit && s->seen_gen == s->gen)
      if (!g_cond_wait_until(&s->cond, &s->lock, deadline))
        break;
    if (s->fired || s->quit || s->seen_gen != s->gen)
      break;
    if (s->system_clock || gst_clock_get_time(s->clock) != seen) {
      seen = gst_clock_get_time(s->clock);
      continue; /* slow, not stopped */
    }
    g_warning("stream %u: the pipeline's clock stands still; the stream goes on by the system "
              "clock",
              s->index);
    clear_tick(s);
    take_clock(s, TRUE, g_get_monotonic_time());
    return FALSE;
  }
  fired = s->fired && !s->quit && s->seen_gen == s->gen;
  clear_tick(s);
  return fired;
}

static gpointer
stream_thread(gpointer data)
{
  Stream *s = data;

  g_mutex_lock(&s->lock);
  while (!s->quit) {
    if (s->seen_gen != s->gen) {
      gboolean open = s->want_open, run = s->want_run;
      VsndPcmParams params = s->want_params;
      gint64 since_us = s->start_us;

      s->seen_gen = s->gen;
      g_mutex_unlock(&s->lock);
      apply(s, open, run, &params, since_us);
      g_mutex_lock(&s->lock);
      continue;
    }
    if (!s->running) {
      g_cond_wait(&s->cond, &s->lock);
      continue;
    }
    if (!wait_tick(s))
      continue;
    g_mutex_unlock(&s->lock);
    pace(s);
    g_mutex_lock(&s->lock);
  }
  g_mutex_unlock(&s->lock);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Pipelines */

/* The pipeline's trouble never stops the device: logged, and the stream
 * goes on at the system clock's pace. */
static gboolean
on_bus_message(GstBus *bus, GstMessage *msg, gpointer data)
{
  Stream *s = data;
  g_autoptr(GError) error = NULL;
  g_autofree char *dbg = NULL;

  switch (GST_MESSAGE_TYPE(msg)) {
    case GST_MESSAGE_ERROR:
      gst_message_parse_error(msg, &error, &dbg);
      if (!g_atomic_int_get(&s->failed))
        g_warning("stream %u: pipeline: %s (%s); the stream goes on without it", s->index,
                  error->message, dbg ? dbg : "no details");
      g_atomic_int_set(&s->failed, 1);
      g_mutex_lock(&s->lock);
      request(s); /* to leave the pipeline's clock */
      g_mutex_unlock(&s->lock);
      break;
    case GST_MESSAGE_WARNING:
      gst_message_parse_warning(msg, &error, &dbg);
      g_warning("stream %u: pipeline: %s", s->index, error->message);
      break;
    case GST_MESSAGE_EOS:
      g_info("stream %u: pipeline: end of stream", s->index);
      break;
    default:
      break;
  }
  return G_SOURCE_CONTINUE;
}

static GstElement *
make(const char *factory, const char *name, GError **error)
{
  GstElement *e = gst_element_factory_make(factory, name);

  if (!e)
    g_set_error(error, GST_CORE_ERROR, GST_CORE_ERROR_MISSING_PLUGIN,
                "the GStreamer element '%s' is not installed", factory);
  return e;
}

/* Adds @factories (NULL-terminated) to @bin, linked in a row; the last
 * one in @last, the first in @first. */
static gboolean
add_chain(GstBin *bin, const char *const *factories, GstElement **first, GstElement **last,
          GError **error)
{
  GstElement *prev = NULL;

  for (guint i = 0; factories[i]; i++) {
    GstElement *e = make(factories[i], NULL, error);

    if (!e)
      return FALSE;
    gst_bin_add(bin, e);
    if (prev && !gst_element_link(prev, e)) {
      g_set_error(error, GST_CORE_ERROR, GST_CORE_ERROR_NEGOTIATION, "cannot link %s to %s",
                  factories[i - 1], factories[i]);
      return FALSE;
    }
    if (!prev)
      *first = e;
    prev = e;
    *last = e;
  }
  return TRUE;
}

static GstElement *
find_volume(GstBin *bin)
{
  g_auto(GValue) v = G_VALUE_INIT;
  g_autoptr(GstIterator) it = gst_bin_iterate_elements(bin);
  GstElement *found = NULL;

  while (!found && gst_iterator_next(it, &v) == GST_ITERATOR_OK) {
    GstElement *e = g_value_get_object(&v);
    GstElementFactory *f = gst_element_get_factory(e);

    if (f && g_str_equal(GST_OBJECT_NAME(f), "volume"))
      found = e;
    g_value_reset(&v);
  }
  return found;
}

static gboolean
build_output(Stream *s, GstElement *user, GError **error)
{
  static const char *const chain[]
      = { "audioconvert", "volume", "audioconvert", "audioresample", "capsfilter", NULL };
  GstBin *bin = GST_BIN(s->pipeline);
  GstElement *first = NULL, *last = NULL;

  s->app = make("appsrc", "guest", error);
  if (!s->app)
    return FALSE;
  g_object_set(s->app, "is-live", TRUE, "format", GST_FORMAT_TIME, "do-timestamp", FALSE, "block",
               FALSE, "max-bytes", (guint64)0, "max-buffers", (guint64)0, "max-time", (guint64)0,
               "leaky-type", GST_APP_LEAKY_TYPE_NONE, "min-latency", (gint64)(2 * MAX_TICK),
               "max-latency", (gint64)OUT_QUEUE, NULL);
  gst_bin_add(bin, s->app);
  if (!add_chain(bin, chain, &first, &last, error))
    return FALSE;
  s->filter = last;
  gst_bin_add(bin, user);
  if (!gst_element_link(s->app, first) || !gst_element_link(last, user)) {
    g_set_error(error, GST_CORE_ERROR, GST_CORE_ERROR_NEGOTIATION,
                "the pipeline does not take raw audio (audio/x-raw) as its input");
    return FALSE;
  }
  return TRUE;
}

static gboolean
build_input(Stream *s, GstElement *user, GError **error)
{
  static const char *const chain[]
      = { "audioconvert", "audioresample", "volume", "audioconvert", "capsfilter", NULL };
  GstBin *bin = GST_BIN(s->pipeline);
  GstElement *first = NULL, *last = NULL;

  s->app = make("appsink", "guest", error);
  if (!s->app)
    return FALSE;
  g_object_set(s->app, "sync", FALSE, "max-buffers", IN_BUFFERS, "drop", FALSE,
               "enable-last-sample", FALSE, NULL);
  gst_bin_add(bin, user);
  if (!add_chain(bin, chain, &first, &last, error))
    return FALSE;
  s->filter = last;
  gst_bin_add(bin, s->app);
  if (!gst_element_link(last, s->app) || !gst_element_link(user, first)) {
    g_set_error(error, GST_CORE_ERROR, GST_CORE_ERROR_NEGOTIATION,
                "the pipeline does not produce raw audio (audio/x-raw)");
    return FALSE;
  }
  return TRUE;
}

/* TRUE when the autodetecting element @factory finds a real device: it
 * otherwise stands in a fake one. */
static gboolean
sound_server_found(const char *factory)
{
  GstElement *e = gst_element_factory_make(factory, NULL);
  gboolean found = FALSE;

  if (!e)
    return FALSE;
  if (gst_element_set_state(e, GST_STATE_READY) != GST_STATE_CHANGE_FAILURE) {
    g_auto(GValue) v = G_VALUE_INIT;
    g_autoptr(GstIterator) it = gst_bin_iterate_elements(GST_BIN(e));

    while (gst_iterator_next(it, &v) == GST_ITERATOR_OK) {
      GstElement *kid = g_value_get_object(&v);

      found = !g_str_has_prefix(GST_OBJECT_NAME(kid), "fake-");
      g_value_reset(&v);
    }
  }
  gst_element_set_state(e, GST_STATE_NULL);
  gst_object_unref(e);
  return found;
}

/* TRUE when autoaudiosrc delivers audio within a second: some sources
 * (openalsrc) only fail once they start capturing. */
static gboolean
capture_works(void)
{
  g_autoptr(GstElement) p = gst_parse_launch("autoaudiosrc ! fakesink num-buffers=1", NULL);
  g_autoptr(GstBus) bus = NULL;
  g_autoptr(GstMessage) msg = NULL;

  if (!p)
    return FALSE;
  bus = gst_element_get_bus(p);
  if (gst_element_set_state(p, GST_STATE_PLAYING) != GST_STATE_CHANGE_FAILURE)
    msg = gst_bus_timed_pop_filtered(bus, GST_SECOND, GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  gst_element_set_state(p, GST_STATE_NULL);
  return msg && GST_MESSAGE_TYPE(msg) == GST_MESSAGE_EOS;
}

static const char *
default_description(guint8 direction)
{
  static gint probed[2];
  static gboolean found[2];
  guint d = direction == VIRTIO_SND_D_OUTPUT ? 0 : 1;

  if (!g_atomic_int_get(&probed[d])) {
    found[d] = d == 0 ? sound_server_found("autoaudiosink")
                      : sound_server_found("autoaudiosrc") && capture_works();
    if (!found[d])
      g_message("no sound server for %s: %s", d == 0 ? "playback" : "capture",
                d == 0 ? "playback is consumed at real-time pace and dropped"
                       : "capture is silence");
    g_atomic_int_set(&probed[d], 1);
  }
  if (d == 0)
    return found[0] ? GST_VHOST_SND_DEFAULT_OUTPUT : HEADLESS_OUTPUT;
  return found[1] ? GST_VHOST_SND_DEFAULT_INPUT : HEADLESS_INPUT;
}

static gboolean
stream_build(GstVhostSndStream *self, Stream *s, GError **error)
{
  const char *desc = s->desc ? s->desc : default_description(s->direction);
  g_autofree char *name = g_strdup_printf(
      "%s%u", s->direction == VIRTIO_SND_D_OUTPUT ? "playback" : "capture", s->index);
  GstElement *user = gst_parse_bin_from_description(desc, TRUE, error);
  g_autoptr(GstBus) bus = NULL;
  GstStateChangeReturn ret;
  gboolean ok;

  if (!user)
    return FALSE;
  s->pipeline = gst_pipeline_new(name);
  if (self->clock)
    gst_pipeline_use_clock(GST_PIPELINE(s->pipeline), self->clock);
  ok = s->direction == VIRTIO_SND_D_OUTPUT ? build_output(s, user, error)
                                           : build_input(s, user, error);
  if (!ok)
    return FALSE;
  s->volume = find_volume(GST_BIN(s->pipeline));
  if (s->direction == VIRTIO_SND_D_OUTPUT) {
    g_autoptr(GstPad) pad = gst_element_get_static_pad(s->volume, "sink");

    gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, on_volume_event, s->volume, NULL);
  }
  bus = gst_element_get_bus(s->pipeline);
  s->bus_watch = gst_bus_create_watch(bus);
  g_source_set_callback(s->bus_watch, G_SOURCE_FUNC(on_bus_message), s, NULL);
  g_source_attach(s->bus_watch, self->context);
  if (s->direction == VIRTIO_SND_D_INPUT) {
    /* Prerolled in the format a guest most likely asks for, so that its
     * capture starts without the pipeline's start-up time. */
    VsndPcmParams p;
    g_autoptr(GstCaps) caps = NULL;

    vsnd_vhost_lock(self->vsnd);
    vsnd_device_get_preferred_params(vsnd_vhost_get_device(self->vsnd), s->index, &p);
    vsnd_vhost_unlock(self->vsnd);
    caps = gst_vhost_snd_params_to_caps(&p);
    g_object_set(s->filter, "caps", caps, NULL);
    gst_caps_replace(&s->caps, caps);
  }
  /* Playback plays for good.  Capture from a live source waits for the
   * guest in PAUSED (nothing captured); any other source plays at once and
   * waits on the full appsink, so the guest's capture starts with data. */
  ret = gst_element_set_state(s->pipeline, s->direction == VIRTIO_SND_D_OUTPUT ? GST_STATE_PLAYING
                                                                               : GST_STATE_PAUSED);
  if (ret == GST_STATE_CHANGE_FAILURE) {
    g_set_error(error, GST_CORE_ERROR, GST_CORE_ERROR_STATE_CHANGE, "the pipeline does not start");
    return FALSE;
  }
  s->live = s->direction == VIRTIO_SND_D_INPUT && ret == GST_STATE_CHANGE_NO_PREROLL;
  if (s->direction == VIRTIO_SND_D_INPUT) {
    g_object_set(s->app, "drop", s->live, NULL);
    if (!s->live)
      gst_element_set_state(s->pipeline, GST_STATE_PLAYING);
  }
  s->thread = g_thread_new(name, stream_thread, s);
  g_info("stream %u (%s): '%s'", s->index, name, desc);
  return TRUE;
}

/* ------------------------------------------------------------------------ */

GstVhostSndStream *
gst_vhost_snd_stream_new(VsndVhost *vsnd, GMainContext *context)
{
  GstVhostSndStream *self = g_new0(GstVhostSndStream, 1);
  struct virtio_snd_config c;
  VsndDevice *dev;

  GST_DEBUG_CATEGORY_INIT(snd_debug, "vhostsndstream", 0, "virtio-sound stream pipelines");
  self->vsnd = vsnd;
  self->context = context ? g_main_context_ref(context) : NULL;
  vsnd_vhost_lock(vsnd);
  dev = vsnd_vhost_get_device(vsnd);
  vsnd_device_get_config(dev, (guint8 *)&c, sizeof c);
  self->n_streams = c.streams;
  self->streams = g_new0(Stream, c.streams);
  for (guint i = 0; i < c.streams; i++) {
    Stream *s = &self->streams[i];
    s->owner = self;
    s->index = i;
    g_mutex_init(&s->lock);
    g_cond_init(&s->cond);
    s->adapter = gst_adapter_new();
    s->direction = vsnd_device_get_direction(dev, i);
  }
  vsnd_vhost_unlock(vsnd);
  return self;
}

void
gst_vhost_snd_stream_set_description(GstVhostSndStream *self, guint stream, const char *description)
{
  g_return_if_fail(stream < self->n_streams && !self->started);
  g_free(self->streams[stream].desc);
  self->streams[stream].desc = g_strdup(description);
}

void
gst_vhost_snd_stream_set_clock(GstVhostSndStream *self, GstClock *clock)
{
  g_return_if_fail(!self->started);
  gst_object_replace((GstObject **)&self->clock, (GstObject *)clock);
}

gboolean
gst_vhost_snd_stream_start(GstVhostSndStream *self, GError **error)
{
  g_return_val_if_fail(!self->started, FALSE);
  self->started = TRUE;
  for (guint i = 0; i < self->n_streams; i++) {
    g_autoptr(GError) e = NULL;

    if (!stream_build(self, &self->streams[i], &e)) {
      g_set_error(error, e->domain, e->code, "stream %u (%s): %s", i,
                  self->streams[i].direction == VIRTIO_SND_D_OUTPUT ? "--output-pipeline"
                                                                    : "--input-pipeline",
                  e->message);
      return FALSE;
    }
  }
  /* Capture pipelines have prerolled (bounded) before the first guest. */
  for (guint i = 0; i < self->n_streams; i++)
    if (self->streams[i].direction == VIRTIO_SND_D_INPUT)
      gst_element_get_state(self->streams[i].pipeline, NULL, NULL, STATE_TIMEOUT);
  vsnd_vhost_set_stream_iface(self->vsnd, &stream_iface, self);
  return TRUE;
}

static void
stream_quit(Stream *s)
{
  if (!s->thread)
    return;
  g_mutex_lock(&s->lock);
  s->quit = TRUE;
  request(s);
  g_mutex_unlock(&s->lock);
  g_thread_join(s->thread);
  s->thread = NULL;
}

/* No more device calls, no stream threads, no bus watches. */
static void
detach(GstVhostSndStream *self)
{
  self->finished = TRUE;
  vsnd_vhost_set_stream_iface(self->vsnd, NULL, NULL);
  for (guint i = 0; i < self->n_streams; i++) {
    Stream *s = &self->streams[i];

    stream_quit(s);
    if (s->bus_watch)
      g_source_destroy(s->bus_watch);
    g_clear_pointer(&s->bus_watch, g_source_unref);
  }
}

gboolean
gst_vhost_snd_stream_finish(GstVhostSndStream *self, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
  gboolean ok = TRUE;

  if (self->finished || !self->started)
    return TRUE;
  detach(self);
  for (guint i = 0; i < self->n_streams; i++) {
    Stream *s = &self->streams[i];

    if (s->pipeline && s->direction == VIRTIO_SND_D_OUTPUT)
      gst_app_src_end_of_stream(GST_APP_SRC(s->app));
  }
  for (guint i = 0; i < self->n_streams; i++) {
    Stream *s = &self->streams[i];
    g_autoptr(GstBus) bus = NULL;
    g_autoptr(GstMessage) msg = NULL;
    gint64 left = MAX(deadline - g_get_monotonic_time(), 0);

    if (!s->pipeline || s->direction != VIRTIO_SND_D_OUTPUT || g_atomic_int_get(&s->failed))
      continue;
    bus = gst_element_get_bus(s->pipeline);
    msg = gst_bus_timed_pop_filtered(bus, (GstClockTime)left * GST_USECOND,
                                     GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
    if (!msg) {
      g_warning("stream %u: pipeline: no end of stream within %u ms; stopped anyway", i,
                timeout_ms);
      ok = FALSE;
    } else if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR) {
      g_autoptr(GError) e = NULL;

      /* Typically a pipeline that never saw the guest's format. */
      gst_message_parse_error(msg, &e, NULL);
      g_info("stream %u: pipeline ended with: %s", i, e->message);
    }
  }
  for (guint i = 0; i < self->n_streams; i++)
    if (self->streams[i].pipeline)
      gst_element_set_state(self->streams[i].pipeline, GST_STATE_NULL);
  return ok;
}

void
gst_vhost_snd_stream_free(GstVhostSndStream *self)
{
  if (!self)
    return;
  detach(self);
  for (guint i = 0; i < self->n_streams; i++) {
    Stream *s = &self->streams[i];

    if (s->pipeline)
      gst_element_set_state(s->pipeline, GST_STATE_NULL);
    gst_clear_object(&s->pipeline);
    gst_clear_object(&s->clock);
    gst_clear_caps(&s->caps);
    g_clear_object(&s->adapter);
    g_free(s->desc);
    g_mutex_clear(&s->lock);
    g_cond_clear(&s->cond);
  }
  g_free(self->streams);
  gst_clear_object(&self->clock);
  if (self->context)
    g_main_context_unref(self->context);
  g_free(self);
}

GstElement *
gst_vhost_snd_stream_get_pipeline(GstVhostSndStream *self, guint stream)
{
  g_return_val_if_fail(stream < self->n_streams, NULL);
  return self->streams[stream].pipeline;
}
