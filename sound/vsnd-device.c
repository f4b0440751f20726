/* vsnd-device.c: virtio-sound device model. */
#include "vsnd-device.h"

#include <gio/gio.h>
#include <math.h>
#include <string.h>

G_STATIC_ASSERT(G_BYTE_ORDER == G_LITTLE_ENDIAN); /* virtio fields are used as host order */

#define HDR_SIZE    sizeof(struct virtio_snd_hdr)
#define XFER_SIZE   sizeof(struct virtio_snd_pcm_xfer)
#define STATUS_SIZE sizeof(struct virtio_snd_pcm_status)
/* Largest info structure size a query may ask for (newer drivers may ask
 * for more than we write; the rest is zeroed). */
#define MAX_INFO_SIZE 1024u

#define VOLUME_DB_MIN_CENTI  (-5000) /* value 0, mute */
#define VOLUME_DB_STEP_CENTI 50

/* Kinds of guest errors, each rate-limited on its own. */
typedef enum {
  GE_SHORT_REQUEST,
  GE_SHORT_RESPONSE,
  GE_UNKNOWN_REQUEST,
  GE_ID,
  GE_STATE,
  GE_PARAMS,
  GE_XFER,
  GE_CONTROL,
  GE_EVENT_BUFFER,
  GE_DROPPED,
  GE_N_KINDS
} GuestError;

#define LOG_INTERVAL_US (60 * G_USEC_PER_SEC)

typedef struct {
  VhuElem *elem;
  gsize len;  /* frame bytes the buffer carries (tx) or takes (rx) */
  gsize done; /* read (tx) or filled (rx) so far */
} Xfer;

typedef struct {
  VsndStreamConfig config;
  guint index; /* among the streams of its direction */
  guint qidx;  /* VSND_TX_QUEUE or VSND_RX_QUEUE */
  VsndPcmState state;
  gboolean has_params;
  VsndPcmParams params;
  gboolean opened;
  GQueue xfers; /* Xfer, oldest first */
  gsize queued; /* tx: bytes not yet read; rx: room left */
  gboolean in_xrun;
  gsize period_pos;
  gint32 volume; /* control values, kept across resets */
  gint32 on;
} Stream;

struct _VsndDevice {
  VsndDeviceConfig config; /* arrays owned */
  VsndDeviceOps ops;
  gpointer ops_data;
  const VsndStreamIface *iface;
  gpointer iface_data;
  Stream *streams;
  guint64 features;
  GQueue event_bufs; /* VhuElem */
  GQueue events;     /* struct virtio_snd_event, waiting for a buffer */
  VsndDeviceStats stats;
  gint64 last_log[GE_N_KINDS];
  guint64 suppressed[GE_N_KINDS];
};

/* ------------------------------------------------------------------------ */
/* Formats */

static const guint8 sample_bytes[VIRTIO_SND_PCM_FMT_COUNT] = {
  [VIRTIO_SND_PCM_FMT_IMA_ADPCM] = 0,
  [VIRTIO_SND_PCM_FMT_MU_LAW] = 1,
  [VIRTIO_SND_PCM_FMT_A_LAW] = 1,
  [VIRTIO_SND_PCM_FMT_S8] = 1,
  [VIRTIO_SND_PCM_FMT_U8] = 1,
  [VIRTIO_SND_PCM_FMT_S16] = 2,
  [VIRTIO_SND_PCM_FMT_U16] = 2,
  [VIRTIO_SND_PCM_FMT_S18_3] = 3,
  [VIRTIO_SND_PCM_FMT_U18_3] = 3,
  [VIRTIO_SND_PCM_FMT_S20_3] = 3,
  [VIRTIO_SND_PCM_FMT_U20_3] = 3,
  [VIRTIO_SND_PCM_FMT_S24_3] = 3,
  [VIRTIO_SND_PCM_FMT_U24_3] = 3,
  [VIRTIO_SND_PCM_FMT_S20] = 4,
  [VIRTIO_SND_PCM_FMT_U20] = 4,
  [VIRTIO_SND_PCM_FMT_S24] = 4,
  [VIRTIO_SND_PCM_FMT_U24] = 4,
  [VIRTIO_SND_PCM_FMT_S32] = 4,
  [VIRTIO_SND_PCM_FMT_U32] = 4,
  [VIRTIO_SND_PCM_FMT_FLOAT] = 4,
  [VIRTIO_SND_PCM_FMT_FLOAT64] = 8,
  [VIRTIO_SND_PCM_FMT_DSD_U8] = 1,
  [VIRTIO_SND_PCM_FMT_DSD_U16] = 2,
  [VIRTIO_SND_PCM_FMT_DSD_U32] = 4,
  [VIRTIO_SND_PCM_FMT_IEC958_SUBFRAME] = 4,
};

static const guint32 rates_hz[VIRTIO_SND_PCM_RATE_COUNT] = {
  5512,  8000,  11025, 16000,  22050,  32000,  44100, 48000,
  64000, 88200, 96000, 176400, 192000, 384000, 12000, 24000,
};

guint
vsnd_format_sample_bytes(guint format)
{
  return format < VIRTIO_SND_PCM_FMT_COUNT ? sample_bytes[format] : 0;
}

guint32
vsnd_rate_to_hz(guint rate)
{
  return rate < VIRTIO_SND_PCM_RATE_COUNT ? rates_hz[rate] : 0;
}

/* The little-endian silence sample of @format, in sample_bytes[format]. */
static guint64
silence_sample(guint format)
{
  switch (format) {
    case VIRTIO_SND_PCM_FMT_MU_LAW:
      return 0xff;
    case VIRTIO_SND_PCM_FMT_A_LAW:
      return 0xd5;
    case VIRTIO_SND_PCM_FMT_U8:
      return 0x80;
    case VIRTIO_SND_PCM_FMT_U16:
      return 0x8000;
    case VIRTIO_SND_PCM_FMT_U18_3:
      return 0x20000;
    case VIRTIO_SND_PCM_FMT_U20_3:
    case VIRTIO_SND_PCM_FMT_U20:
      return 0x80000;
    case VIRTIO_SND_PCM_FMT_U24_3:
    case VIRTIO_SND_PCM_FMT_U24:
      return 0x800000;
    case VIRTIO_SND_PCM_FMT_U32:
      return 0x80000000u;
    case VIRTIO_SND_PCM_FMT_DSD_U8:
      return 0x69;
    case VIRTIO_SND_PCM_FMT_DSD_U16:
      return 0x6969;
    case VIRTIO_SND_PCM_FMT_DSD_U32:
      return 0x69696969u;
    default:
      return 0;
  }
}

void
vsnd_format_fill_silence(guint format, guint8 *buf, gsize len)
{
  guint width = vsnd_format_sample_bytes(format);
  guint64 sample = silence_sample(format);

  if (sample == 0 || width == 0) {
    memset(buf, 0, len);
    return;
  }
  for (gsize i = 0; i < len; i++)
    buf[i] = (guint8)(sample >> (8 * (i % width)));
}

gdouble
vsnd_volume_to_gain(gint32 value)
{
  gdouble db;

  if (value <= 0)
    return 0.0;
  value = MIN(value, VSND_VOLUME_MAX);
  db = (VOLUME_DB_MIN_CENTI + value * VOLUME_DB_STEP_CENTI) / 100.0;
  return pow(10.0, db / 20.0);
}

/* ------------------------------------------------------------------------ */
/* Logging and answers */

G_GNUC_PRINTF(3, 4)
static void
guest_error(VsndDevice *dev, GuestError kind, const char *format, ...)
{
  gint64 now = g_get_monotonic_time();
  g_autofree char *msg = NULL;
  va_list args;

  if (dev->last_log[kind] != 0 && now - dev->last_log[kind] < LOG_INTERVAL_US) {
    dev->suppressed[kind]++;
    return;
  }
  va_start(args, format);
  msg = g_strdup_vprintf(format, args);
  va_end(args);
  if (dev->suppressed[kind] > 0)
    g_warning("guest: %s (%" G_GUINT64_FORMAT " similar errors suppressed)", msg,
              dev->suppressed[kind]);
  else
    g_warning("guest: %s", msg);
  dev->last_log[kind] = now;
  dev->suppressed[kind] = 0;
}

static void
complete(VsndDevice *dev, guint qidx, VhuElem *elem, guint32 len)
{
  dev->ops.complete(dev->ops_data, qidx, elem, len);
}

/* A control request answered with @status and @len bytes in all (the
 * status and a payload already written after it). */
static void
answer_len(VsndDevice *dev, VhuElem *elem, guint32 status, gsize len)
{
  struct virtio_snd_hdr hdr = { status };

  if (status != VIRTIO_SND_S_OK)
    dev->stats.errors++;
  vhu_elem_write(elem, 0, &hdr, sizeof hdr);
  complete(dev, VSND_CTRL_QUEUE, elem, (guint32)len);
}

static void
answer(VsndDevice *dev, VhuElem *elem, guint32 status)
{
  answer_len(dev, elem, status, HDR_SIZE);
}

/* ------------------------------------------------------------------------ */
/* Events */

static void
deliver_event(VsndDevice *dev, VhuElem *elem, const struct virtio_snd_event *ev)
{
  vhu_elem_write(elem, 0, ev, sizeof *ev);
  dev->stats.events++;
  complete(dev, VSND_EVENT_QUEUE, elem, sizeof *ev);
}

static void
send_event(VsndDevice *dev, guint32 code, guint32 data)
{
  struct virtio_snd_event ev = { { code }, data };
  VhuElem *elem = g_queue_pop_head(&dev->event_bufs);

  if (elem) {
    deliver_event(dev, elem, &ev);
    return;
  }
  if (dev->events.length >= VSND_MAX_PENDING_EVENTS) {
    g_free(g_queue_pop_head(&dev->events));
    dev->stats.events_dropped++;
  }
  g_queue_push_tail(&dev->events, g_memdup2(&ev, sizeof ev));
}

static void
event_submit(VsndDevice *dev, VhuElem *elem)
{
  struct virtio_snd_event *ev;

  if (elem->in_len < sizeof *ev) {
    guest_error(dev, GE_EVENT_BUFFER, "event buffer of %zu bytes, needs %zu", elem->in_len,
                sizeof *ev);
    complete(dev, VSND_EVENT_QUEUE, elem, 0);
    return;
  }
  ev = g_queue_pop_head(&dev->events);
  if (ev) {
    deliver_event(dev, elem, ev);
    g_free(ev);
  } else {
    g_queue_push_tail(&dev->event_bufs, elem);
  }
}

static gboolean
stream_has_feature(const Stream *s, guint bit)
{
  return s->has_params && (s->params.features & (1u << bit));
}

static void
xrun(VsndDevice *dev, Stream *s, guint stream)
{
  if (s->in_xrun)
    return;
  s->in_xrun = TRUE;
  if (s->config.direction == VIRTIO_SND_D_OUTPUT)
    dev->stats.underruns++;
  else
    dev->stats.overruns++;
  if (stream_has_feature(s, VIRTIO_SND_PCM_F_EVT_XRUNS))
    send_event(dev, VIRTIO_SND_EVT_PCM_XRUN, stream);
}

static void
count_periods(VsndDevice *dev, Stream *s, guint stream, gsize bytes)
{
  if (!stream_has_feature(s, VIRTIO_SND_PCM_F_EVT_SHMEM_PERIODS) || bytes == 0)
    return;
  s->period_pos += bytes;
  while (s->period_pos >= s->params.period_bytes) {
    s->period_pos -= s->params.period_bytes;
    send_event(dev, VIRTIO_SND_EVT_PCM_PERIOD_ELAPSED, stream);
  }
}

/* ------------------------------------------------------------------------ */
/* Transfers */

static guint32
stream_delay(VsndDevice *dev, Stream *s, guint stream)
{
  if (!s->opened || !dev->iface || !dev->iface->get_delay)
    return 0;
  return dev->iface->get_delay(dev->iface_data, stream);
}

/* Writes the status at the end of the writable part and completes. */
static void
xfer_answer(VsndDevice *dev, guint qidx, VhuElem *elem, guint32 status, gsize frames,
            guint32 latency)
{
  struct virtio_snd_pcm_status st = { status, latency };

  if (status != VIRTIO_SND_S_OK)
    dev->stats.errors++;
  vhu_elem_write(elem, elem->in_len - sizeof st, &st, sizeof st);
  complete(dev, qidx, elem, (guint32)(frames + sizeof st));
}

static void
xfer_done(VsndDevice *dev, Stream *s, guint stream, Xfer *x, guint32 status)
{
  gsize frames = s->qidx == VSND_RX_QUEUE ? x->done : 0;

  if (s->qidx == VSND_TX_QUEUE)
    dev->stats.tx_buffers++;
  else
    dev->stats.rx_buffers++;
  xfer_answer(dev, s->qidx, x->elem, status, frames, stream_delay(dev, s, stream));
  g_free(x);
}

/* Completes every held transfer of @s: rx with what it holds, tx with
 * IO_ERR for frames never played (an empty one is OK). */
static void
flush_xfers(VsndDevice *dev, Stream *s, guint stream, const char *why)
{
  gsize dropped = 0;
  Xfer *x;

  while ((x = g_queue_pop_head(&s->xfers))) {
    guint32 status = VIRTIO_SND_S_OK;

    if (s->qidx == VSND_TX_QUEUE && x->done < x->len) {
      dropped += x->len - x->done;
      status = VIRTIO_SND_S_IO_ERR;
    }
    xfer_done(dev, s, stream, x, status);
  }
  s->queued = 0;
  if (dropped > 0) {
    dev->stats.dropped_tx_bytes += dropped;
    guest_error(dev, GE_DROPPED, "stream %u: %zu bytes never played (%s)", stream, dropped, why);
  }
}

static void
discard_xfers(VsndDevice *dev, Stream *s)
{
  Xfer *x;

  while ((x = g_queue_pop_head(&s->xfers))) {
    dev->ops.discard(dev->ops_data, s->qidx, x->elem);
    g_free(x);
  }
  s->queued = 0;
}

static gboolean
state_takes_xfers(VsndPcmState state)
{
  return state == VSND_STATE_PREPARE || state == VSND_STATE_START || state == VSND_STATE_STOP;
}

static void
xfer_submit(VsndDevice *dev, guint qidx, VhuElem *elem)
{
  struct virtio_snd_pcm_xfer hdr;
  gboolean tx = qidx == VSND_TX_QUEUE;
  Stream *s;
  gsize len;
  Xfer *x;

  if (elem->in_len < STATUS_SIZE) {
    guest_error(dev, GE_SHORT_RESPONSE, "%s buffer without room for a status", tx ? "tx" : "rx");
    dev->stats.errors++;
    complete(dev, qidx, elem, 0);
    return;
  }
  if (vhu_elem_read(elem, 0, &hdr, sizeof hdr) != sizeof hdr) {
    guest_error(dev, GE_SHORT_REQUEST, "%s buffer without a header", tx ? "tx" : "rx");
    xfer_answer(dev, qidx, elem, VIRTIO_SND_S_IO_ERR, 0, 0);
    return;
  }
  if (hdr.stream_id >= dev->config.n_streams) {
    guest_error(dev, GE_ID, "%s for stream %u of %u", tx ? "tx" : "rx", hdr.stream_id,
                dev->config.n_streams);
    xfer_answer(dev, qidx, elem, VIRTIO_SND_S_IO_ERR, 0, 0);
    return;
  }
  s = &dev->streams[hdr.stream_id];
  if (s->qidx != qidx) {
    guest_error(dev, GE_XFER, "%s for stream %u, an %s stream", tx ? "tx" : "rx", hdr.stream_id,
                tx ? "input" : "output");
    xfer_answer(dev, qidx, elem, VIRTIO_SND_S_IO_ERR, 0, 0);
    return;
  }
  if (!state_takes_xfers(s->state)) {
    guest_error(dev, GE_STATE, "%s for stream %u, which is not prepared", tx ? "tx" : "rx",
                hdr.stream_id);
    xfer_answer(dev, qidx, elem, VIRTIO_SND_S_IO_ERR, 0, 0);
    return;
  }
  len = tx ? elem->out_len - sizeof hdr : elem->in_len - STATUS_SIZE;
  if (len > s->params.buffer_bytes || len % s->params.frame_bytes != 0) {
    guest_error(dev, GE_XFER, "%s of %zu bytes for stream %u (buffer %u, frame %u bytes)",
                tx ? "tx" : "rx", len, hdr.stream_id, s->params.buffer_bytes,
                s->params.frame_bytes);
    xfer_answer(dev, qidx, elem, VIRTIO_SND_S_IO_ERR, 0, 0);
    return;
  }
  if (!tx && len == 0) { /* full already */
    dev->stats.rx_buffers++;
    xfer_answer(dev, qidx, elem, VIRTIO_SND_S_OK, 0, stream_delay(dev, s, hdr.stream_id));
    return;
  }
  x = g_new0(Xfer, 1);
  x->elem = elem;
  x->len = len;
  g_queue_push_tail(&s->xfers, x);
  s->queued += len;
  if (dev->iface && dev->iface->wake && s->opened)
    dev->iface->wake(dev->iface_data, hdr.stream_id);
}

static Stream *
data_stream(VsndDevice *dev, guint stream, guint8 direction)
{
  Stream *s;

  if (stream >= dev->config.n_streams)
    return NULL;
  s = &dev->streams[stream];
  return s->config.direction == direction && s->opened ? s : NULL;
}

/* Completes tx buffers at the head that have nothing left to read. */
static void
complete_read_heads(VsndDevice *dev, Stream *s, guint stream)
{
  Xfer *x;

  while ((x = g_queue_peek_head(&s->xfers)) && x->done == x->len) {
    g_queue_pop_head(&s->xfers);
    xfer_done(dev, s, stream, x, VIRTIO_SND_S_OK);
  }
}

gsize
vsnd_device_read(VsndDevice *dev, guint stream, guint8 *buf, gsize len, gboolean fill)
{
  Stream *s = data_stream(dev, stream, VIRTIO_SND_D_OUTPUT);
  gsize got = 0;

  if (!s)
    return 0;
  if (s->state == VSND_STATE_START) {
    Xfer *x;

    complete_read_heads(dev, s, stream);
    while (got < len && (x = g_queue_peek_head(&s->xfers))) {
      gsize n = MIN(x->len - x->done, len - got);

      if (vhu_elem_read(x->elem, XFER_SIZE + x->done, buf + got, n) != n) {
        /* Guest memory went away under the buffer. */
        guest_error(dev, GE_XFER, "stream %u: tx buffer no longer readable", stream);
        g_queue_pop_head(&s->xfers);
        s->queued -= x->len - x->done;
        xfer_done(dev, s, stream, x, VIRTIO_SND_S_IO_ERR);
        continue;
      }
      x->done += n;
      got += n;
      s->queued -= n;
      complete_read_heads(dev, s, stream);
    }
    dev->stats.tx_bytes += got;
    count_periods(dev, s, stream, got);
  }
  if (got < len && fill) {
    vsnd_format_fill_silence(s->params.format, buf + got, len - got);
    if (s->state == VSND_STATE_START) {
      dev->stats.silence_bytes += len - got;
      xrun(dev, s, stream);
    }
  } else if (got == len && len > 0) {
    s->in_xrun = FALSE;
  }
  return got;
}

gsize
vsnd_device_write(VsndDevice *dev, guint stream, const guint8 *buf, gsize len)
{
  Stream *s = data_stream(dev, stream, VIRTIO_SND_D_INPUT);
  gsize put = 0;
  Xfer *x;

  if (!s || s->state != VSND_STATE_START)
    return 0;
  while (put < len && (x = g_queue_peek_head(&s->xfers))) {
    gsize n = MIN(x->len - x->done, len - put);

    if (vhu_elem_write(x->elem, x->done, buf + put, n) != n) {
      guest_error(dev, GE_XFER, "stream %u: rx buffer no longer writable", stream);
      g_queue_pop_head(&s->xfers);
      s->queued -= x->len - x->done;
      xfer_done(dev, s, stream, x, VIRTIO_SND_S_IO_ERR);
      continue;
    }
    x->done += n;
    put += n;
    s->queued -= n;
    if (x->done == x->len) {
      g_queue_pop_head(&s->xfers);
      xfer_done(dev, s, stream, x, VIRTIO_SND_S_OK);
    }
  }
  dev->stats.rx_bytes += put;
  count_periods(dev, s, stream, put);
  if (put < len) {
    dev->stats.dropped_rx_bytes += len - put;
    xrun(dev, s, stream);
  } else if (len > 0) {
    s->in_xrun = FALSE;
  }
  return put;
}

/* ------------------------------------------------------------------------ */
/* Item information (JACK_INFO, PCM_INFO, CHMAP_INFO, CTL_INFO) */

typedef void (*InfoFunc)(VsndDevice *dev, guint id, guint8 *item);

static void
jack_info(VsndDevice *dev, guint id, guint8 *item)
{
  const VsndJackConfig *j = &dev->config.jacks[id];
  struct virtio_snd_jack_info *info = (void *)item;

  info->hdr.hda_fn_nid = j->hda_fn_nid;
  info->features = j->remap ? 1u << VIRTIO_SND_JACK_F_REMAP : 0;
  info->hda_reg_defconf = j->defconf;
  info->hda_reg_caps = j->caps;
  info->connected = j->connected ? 1 : 0;
}

static void
pcm_info(VsndDevice *dev, guint id, guint8 *item)
{
  const VsndStreamConfig *c = &dev->streams[id].config;
  struct virtio_snd_pcm_info *info = (void *)item;

  info->hdr.hda_fn_nid = c->hda_fn_nid;
  info->features = VSND_PCM_FEATURES;
  info->formats = c->formats;
  info->rates = c->rates;
  info->direction = c->direction;
  info->channels_min = c->channels_min;
  info->channels_max = c->channels_max;
}

static void
chmap_info(VsndDevice *dev, guint id, guint8 *item)
{
  const VsndChmapConfig *c = &dev->config.chmaps[id];
  struct virtio_snd_chmap_info *info = (void *)item;

  info->hdr.hda_fn_nid = c->hda_fn_nid;
  info->direction = c->direction;
  info->channels = c->channels;
  memcpy(info->positions, c->positions, sizeof info->positions);
}

static void
ctl_info(VsndDevice *dev, guint id, guint8 *item)
{
  const Stream *s = &dev->streams[id / 2];
  struct virtio_snd_ctl_info *info = (void *)item;
  gboolean volume = id % 2 == 0;
  gboolean out = s->config.direction == VIRTIO_SND_D_OUTPUT;

  info->hdr.hda_fn_nid = s->config.hda_fn_nid;
  info->role = ((volume ? VIRTIO_SND_CTL_ROLE_VOLUME : VIRTIO_SND_CTL_ROLE_MUTE) << 1)
               | s->config.direction;
  info->type = volume ? VIRTIO_SND_CTL_TYPE_INTEGER : VIRTIO_SND_CTL_TYPE_BOOLEAN;
  info->access = (1u << VIRTIO_SND_CTL_ACCESS_READ) | (1u << VIRTIO_SND_CTL_ACCESS_WRITE);
  if (volume)
    info->access |= 1u << VIRTIO_SND_CTL_ACCESS_TLV_READ;
  info->count = 1;
  info->index = s->index;
  g_snprintf((char *)info->name, sizeof info->name, "PCM %s %s", out ? "Playback" : "Capture",
             volume ? "Volume" : "Switch");
  info->value.integer.min = 0;
  info->value.integer.max = volume ? VSND_VOLUME_MAX : 1;
  info->value.integer.step = 1;
}

static void
query_info(VsndDevice *dev, VhuElem *elem, guint n_items, gsize item_size, InfoFunc fill,
           const char *what)
{
  struct virtio_snd_query_info q;
  guint8 item[MAX_INFO_SIZE];
  guint64 need;

  if (vhu_elem_read(elem, 0, &q, sizeof q) != sizeof q) {
    guest_error(dev, GE_SHORT_REQUEST, "%s query of %zu bytes", what, elem->out_len);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  if (q.start_id > n_items || q.count > n_items - q.start_id) {
    guest_error(dev, GE_ID, "%s query for %u items from %u, of %u", what, q.count, q.start_id,
                n_items);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  need = HDR_SIZE + (guint64)q.count * q.size;
  if (q.size < item_size || q.size > MAX_INFO_SIZE || need > elem->in_len) {
    guest_error(dev, GE_SHORT_RESPONSE, "%s query: item size %u (ours %zu), %u items, %zu bytes",
                what, q.size, item_size, q.count, elem->in_len);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  for (guint i = 0; i < q.count; i++) {
    memset(item, 0, q.size);
    fill(dev, q.start_id + i, item);
    vhu_elem_write(elem, HDR_SIZE + (gsize)i * q.size, item, q.size);
  }
  answer_len(dev, elem, VIRTIO_SND_S_OK, need);
}

/* ------------------------------------------------------------------------ */
/* Jacks */

static void
jack_remap(VsndDevice *dev, VhuElem *elem)
{
  struct virtio_snd_jack_remap r;
  VsndJackConfig *j;

  if (vhu_elem_read(elem, 0, &r, sizeof r) != sizeof r) {
    guest_error(dev, GE_SHORT_REQUEST, "JACK_REMAP of %zu bytes", elem->out_len);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  if (r.hdr.jack_id >= dev->config.n_jacks) {
    guest_error(dev, GE_ID, "JACK_REMAP of jack %u of %u", r.hdr.jack_id, dev->config.n_jacks);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  j = &dev->config.jacks[r.hdr.jack_id];
  if (!j->remap) {
    answer(dev, elem, VIRTIO_SND_S_NOT_SUPP);
    return;
  }
  if (r.association > 0xf || r.sequence > 0xf) {
    guest_error(dev, GE_PARAMS, "JACK_REMAP to association %u sequence %u", r.association,
                r.sequence);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  j->defconf = (j->defconf & ~0xffu) | (r.association << 4) | r.sequence;
  answer(dev, elem, VIRTIO_SND_S_OK);
}

void
vsnd_device_set_jack_connected(VsndDevice *dev, guint jack, gboolean connected)
{
  VsndJackConfig *j;

  g_return_if_fail(jack < dev->config.n_jacks);
  j = &dev->config.jacks[jack];
  if (!j->connected == !connected)
    return;
  j->connected = connected;
  send_event(dev, connected ? VIRTIO_SND_EVT_JACK_CONNECTED : VIRTIO_SND_EVT_JACK_DISCONNECTED,
             jack);
}

/* ------------------------------------------------------------------------ */
/* PCM control */

static void
stream_close(VsndDevice *dev, Stream *s, guint stream)
{
  if (!s->opened)
    return;
  s->opened = FALSE;
  if (dev->iface)
    dev->iface->close(dev->iface_data, stream);
}

/* The first channel map of @s's function group and direction with the
 * chosen number of channels. */
static void
stream_positions(VsndDevice *dev, Stream *s)
{
  memset(s->params.positions, VIRTIO_SND_CHMAP_NONE, sizeof s->params.positions);
  for (guint i = 0; i < dev->config.n_chmaps; i++) {
    const VsndChmapConfig *c = &dev->config.chmaps[i];

    if (c->hda_fn_nid == s->config.hda_fn_nid && c->direction == s->config.direction
        && c->channels == s->params.channels) {
      memcpy(s->params.positions, c->positions, c->channels);
      return;
    }
  }
}

/* Checks SET_PARAMS against the stream's offer; a status. */
static guint32
check_params(VsndDevice *dev, Stream *s, const struct virtio_snd_pcm_set_params *p)
{
  guint stream = p->hdr.stream_id;
  guint32 frame;

  if (p->format >= VIRTIO_SND_PCM_FMT_COUNT || p->rate >= VIRTIO_SND_PCM_RATE_COUNT) {
    guest_error(dev, GE_PARAMS, "stream %u: undefined format %u or rate %u", stream, p->format,
                p->rate);
    return VIRTIO_SND_S_BAD_MSG;
  }
  if (!(s->config.formats & (1ull << p->format)) || !(s->config.rates & (1ull << p->rate))
      || p->channels < s->config.channels_min || p->channels > s->config.channels_max
      || (p->features & ~VSND_PCM_FEATURES)) {
    guest_error(dev, GE_PARAMS,
                "stream %u: format %u, rate %u, %u channels, features 0x%x not "
                "offered",
                stream, p->format, p->rate, p->channels, p->features);
    return VIRTIO_SND_S_NOT_SUPP;
  }
  frame = sample_bytes[p->format] * p->channels;
  if (p->period_bytes == 0 || p->buffer_bytes % p->period_bytes != 0
      || p->period_bytes % frame != 0) {
    guest_error(dev, GE_PARAMS, "stream %u: buffer %u bytes, period %u bytes, frame %u bytes",
                stream, p->buffer_bytes, p->period_bytes, frame);
    return VIRTIO_SND_S_BAD_MSG;
  }
  if (p->buffer_bytes > VSND_MAX_BUFFER_BYTES) {
    guest_error(dev, GE_PARAMS, "stream %u: buffer of %u bytes (at most %u)", stream,
                p->buffer_bytes, VSND_MAX_BUFFER_BYTES);
    return VIRTIO_SND_S_NOT_SUPP;
  }
  return VIRTIO_SND_S_OK;
}

static guint32
pcm_set_params(VsndDevice *dev, Stream *s, guint stream, VhuElem *elem)
{
  struct virtio_snd_pcm_set_params p;
  guint32 status;

  if (vhu_elem_read(elem, 0, &p, sizeof p) != sizeof p) {
    guest_error(dev, GE_SHORT_REQUEST, "SET_PARAMS of %zu bytes", elem->out_len);
    return VIRTIO_SND_S_BAD_MSG;
  }
  if (s->state != VSND_STATE_INITIAL && s->state != VSND_STATE_SET_PARAMS
      && s->state != VSND_STATE_PREPARE && s->state != VSND_STATE_RELEASE) {
    guest_error(dev, GE_STATE, "stream %u: SET_PARAMS while running or stopped", stream);
    return VIRTIO_SND_S_BAD_MSG;
  }
  status = check_params(dev, s, &p);
  if (status != VIRTIO_SND_S_OK)
    return status;
  /* New parameters: what was prepared with the old ones goes. */
  flush_xfers(dev, s, stream, "new parameters");
  stream_close(dev, s, stream);
  s->params = (VsndPcmParams){
    .direction = s->config.direction,
    .format = p.format,
    .rate = rates_hz[p.rate],
    .channels = p.channels,
    .frame_bytes = sample_bytes[p.format] * p.channels,
    .buffer_bytes = p.buffer_bytes,
    .period_bytes = p.period_bytes,
    .features = p.features,
  };
  stream_positions(dev, s);
  s->has_params = TRUE;
  s->state = VSND_STATE_SET_PARAMS;
  return VIRTIO_SND_S_OK;
}

static guint32
pcm_prepare(VsndDevice *dev, Stream *s, guint stream)
{
  if (s->state == VSND_STATE_PREPARE)
    return VIRTIO_SND_S_OK;
  if (s->state != VSND_STATE_SET_PARAMS && !(s->state == VSND_STATE_RELEASE && s->has_params)) {
    guest_error(dev, GE_STATE, "stream %u: PREPARE without parameters or while running", stream);
    return VIRTIO_SND_S_BAD_MSG;
  }
  if (!dev->iface || !dev->iface->open(dev->iface_data, stream, &s->params)) {
    g_warning("stream %u: the output refused to open", stream);
    return VIRTIO_SND_S_IO_ERR;
  }
  s->opened = TRUE;
  s->in_xrun = FALSE;
  s->period_pos = 0;
  s->state = VSND_STATE_PREPARE;
  return VIRTIO_SND_S_OK;
}

static guint32
pcm_start(VsndDevice *dev, Stream *s, guint stream)
{
  if (s->state != VSND_STATE_PREPARE && s->state != VSND_STATE_STOP) {
    guest_error(dev, GE_STATE, "stream %u: START neither prepared nor stopped", stream);
    return VIRTIO_SND_S_BAD_MSG;
  }
  s->state = VSND_STATE_START;
  s->in_xrun = FALSE;
  if (dev->iface)
    dev->iface->start(dev->iface_data, stream);
  return VIRTIO_SND_S_OK;
}

static guint32
pcm_stop(VsndDevice *dev, Stream *s, guint stream)
{
  Xfer *x;

  if (s->state != VSND_STATE_START) {
    guest_error(dev, GE_STATE, "stream %u: STOP while not started", stream);
    return VIRTIO_SND_S_BAD_MSG;
  }
  s->state = VSND_STATE_STOP;
  if (dev->iface)
    dev->iface->stop(dev->iface_data, stream);
  /* The end of a capture: a partly filled buffer goes back as it is. */
  x = g_queue_peek_head(&s->xfers);
  if (s->qidx == VSND_RX_QUEUE && x && x->done > 0) {
    g_queue_pop_head(&s->xfers);
    s->queued -= x->len - x->done;
    xfer_done(dev, s, stream, x, VIRTIO_SND_S_OK);
  }
  return VIRTIO_SND_S_OK;
}

static guint32
pcm_release(VsndDevice *dev, Stream *s, guint stream)
{
  if (s->state != VSND_STATE_PREPARE && s->state != VSND_STATE_STOP) {
    guest_error(dev, GE_STATE, "stream %u: RELEASE neither prepared nor stopped", stream);
    return VIRTIO_SND_S_BAD_MSG;
  }
  /* The spec: every pending transfer completes before the RELEASE does. */
  flush_xfers(dev, s, stream, "released");
  stream_close(dev, s, stream);
  s->state = VSND_STATE_RELEASE;
  return VIRTIO_SND_S_OK;
}

static void
pcm_request(VsndDevice *dev, guint32 code, VhuElem *elem)
{
  struct virtio_snd_pcm_hdr hdr;
  guint32 status;
  Stream *s;

  if (vhu_elem_read(elem, 0, &hdr, sizeof hdr) != sizeof hdr) {
    guest_error(dev, GE_SHORT_REQUEST, "PCM request of %zu bytes", elem->out_len);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  if (hdr.stream_id >= dev->config.n_streams) {
    guest_error(dev, GE_ID, "PCM request 0x%x for stream %u of %u", code, hdr.stream_id,
                dev->config.n_streams);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  s = &dev->streams[hdr.stream_id];
  switch (code) {
    case VIRTIO_SND_R_PCM_SET_PARAMS:
      status = pcm_set_params(dev, s, hdr.stream_id, elem);
      break;
    case VIRTIO_SND_R_PCM_PREPARE:
      status = pcm_prepare(dev, s, hdr.stream_id);
      break;
    case VIRTIO_SND_R_PCM_START:
      status = pcm_start(dev, s, hdr.stream_id);
      break;
    case VIRTIO_SND_R_PCM_STOP:
      status = pcm_stop(dev, s, hdr.stream_id);
      break;
    default:
      status = pcm_release(dev, s, hdr.stream_id);
      break;
  }
  answer(dev, elem, status);
}

/* ------------------------------------------------------------------------ */
/* Control elements */

guint
vsnd_device_get_n_controls(VsndDevice *dev)
{
  return dev->config.controls ? dev->config.n_streams * 2 : 0;
}

static gint32 *
control_value(VsndDevice *dev, guint control)
{
  Stream *s = &dev->streams[control / 2];

  return control % 2 == 0 ? &s->volume : &s->on;
}

static void
apply_volume(VsndDevice *dev, guint stream)
{
  Stream *s = &dev->streams[stream];

  if (dev->iface && dev->iface->set_volume)
    dev->iface->set_volume(dev->iface_data, stream, vsnd_volume_to_gain(s->volume), !s->on);
}

static gboolean
control_set(VsndDevice *dev, guint control, gint32 value)
{
  gint32 max = control % 2 == 0 ? VSND_VOLUME_MAX : 1;
  gint32 *v = control_value(dev, control);

  if (value < 0 || value > max)
    return FALSE;
  if (*v != value) {
    *v = value;
    apply_volume(dev, control / 2);
  }
  return TRUE;
}

gboolean
vsnd_device_set_control(VsndDevice *dev, guint control, gint32 value)
{
  gint32 old;

  g_return_val_if_fail(control < vsnd_device_get_n_controls(dev), FALSE);
  old = *control_value(dev, control);
  if (!control_set(dev, control, value))
    return FALSE;
  if (old != value && (dev->features & (1ull << VIRTIO_SND_F_CTLS)))
    send_event(dev, VIRTIO_SND_EVT_CTL_NOTIFY,
               control | ((1u << VIRTIO_SND_CTL_EVT_MASK_VALUE) << 16));
  return TRUE;
}

gint32
vsnd_device_get_control(VsndDevice *dev, guint control)
{
  g_return_val_if_fail(control < vsnd_device_get_n_controls(dev), 0);
  return *control_value(dev, control);
}

static void
ctl_read(VsndDevice *dev, guint control, VhuElem *elem)
{
  struct virtio_snd_ctl_value value = { 0 };
  gsize room = elem->in_len - HDR_SIZE;

  if (room < sizeof value.value.integer[0]) {
    guest_error(dev, GE_SHORT_RESPONSE, "CTL_READ with %zu bytes for the value", room);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  value.value.integer[0] = *control_value(dev, control);
  room = vhu_elem_write(elem, HDR_SIZE, &value, MIN(room, sizeof value));
  answer_len(dev, elem, VIRTIO_SND_S_OK, HDR_SIZE + room);
}

static void
ctl_write(VsndDevice *dev, guint control, VhuElem *elem)
{
  gint32 value;

  if (vhu_elem_read(elem, sizeof(struct virtio_snd_ctl_hdr), &value, sizeof value)
      != sizeof value) {
    guest_error(dev, GE_SHORT_REQUEST, "CTL_WRITE of %zu bytes", elem->out_len);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  if (!control_set(dev, control, value)) {
    guest_error(dev, GE_CONTROL, "CTL_WRITE of %d to control %u", value, control);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  answer(dev, elem, VIRTIO_SND_S_OK);
}

static void
ctl_tlv_read(VsndDevice *dev, guint control, VhuElem *elem)
{
  const guint32 tlv[4] = { VSND_TLV_DB_SCALE, 8, (guint32)VOLUME_DB_MIN_CENTI,
                           VOLUME_DB_STEP_CENTI | VSND_TLV_DB_SCALE_MUTE };
  gsize n;

  if (control % 2 != 0) {
    answer(dev, elem, VIRTIO_SND_S_NOT_SUPP);
    return;
  }
  /* As much as fits, and success (the spec's rule for short buffers). */
  n = vhu_elem_write(elem, HDR_SIZE, tlv, MIN(elem->in_len - HDR_SIZE, sizeof tlv));
  answer_len(dev, elem, VIRTIO_SND_S_OK, HDR_SIZE + n);
}

/* TLV_WRITE and TLV_COMMAND: checked, then refused (no element takes
 * metadata). */
static void
ctl_tlv_write(VsndDevice *dev, VhuElem *elem)
{
  struct virtio_snd_ctl_tlv tlv;
  gsize off = sizeof(struct virtio_snd_ctl_hdr);

  if (vhu_elem_read(elem, off, &tlv, sizeof tlv) != sizeof tlv
      || tlv.length > VIRTIO_SND_CTL_TLV_MAX_VALUE || tlv.length % 4 != 0
      || elem->out_len - off - sizeof tlv < tlv.length) {
    guest_error(dev, GE_SHORT_REQUEST, "malformed TLV in %zu bytes", elem->out_len);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  answer(dev, elem, VIRTIO_SND_S_NOT_SUPP);
}

static void
ctl_request(VsndDevice *dev, guint32 code, VhuElem *elem)
{
  struct virtio_snd_ctl_hdr hdr;
  guint n = vsnd_device_get_n_controls(dev);

  if (!(dev->features & (1ull << VIRTIO_SND_F_CTLS))) {
    guest_error(dev, GE_UNKNOWN_REQUEST, "control request 0x%x without VIRTIO_SND_F_CTLS", code);
    answer(dev, elem, VIRTIO_SND_S_NOT_SUPP);
    return;
  }
  if (code == VIRTIO_SND_R_CTL_INFO) {
    query_info(dev, elem, n, sizeof(struct virtio_snd_ctl_info), ctl_info, "CTL_INFO");
    return;
  }
  if (vhu_elem_read(elem, 0, &hdr, sizeof hdr) != sizeof hdr) {
    guest_error(dev, GE_SHORT_REQUEST, "control request of %zu bytes", elem->out_len);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  if (hdr.control_id >= n) {
    guest_error(dev, GE_ID, "control request 0x%x for control %u of %u", code, hdr.control_id, n);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  switch (code) {
    case VIRTIO_SND_R_CTL_ENUM_ITEMS:
      /* None of our elements is ENUMERATED. */
      guest_error(dev, GE_CONTROL, "CTL_ENUM_ITEMS for control %u, not enumerated", hdr.control_id);
      answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
      break;
    case VIRTIO_SND_R_CTL_READ:
      ctl_read(dev, hdr.control_id, elem);
      break;
    case VIRTIO_SND_R_CTL_WRITE:
      ctl_write(dev, hdr.control_id, elem);
      break;
    case VIRTIO_SND_R_CTL_TLV_READ:
      ctl_tlv_read(dev, hdr.control_id, elem);
      break;
    default:
      ctl_tlv_write(dev, elem);
      break;
  }
}

/* ------------------------------------------------------------------------ */
/* Control queue */

static void
ctrl_submit(VsndDevice *dev, VhuElem *elem)
{
  struct virtio_snd_hdr hdr;

  dev->stats.requests++;
  if (elem->in_len < HDR_SIZE) {
    guest_error(dev, GE_SHORT_RESPONSE, "control request without room for a status");
    dev->stats.errors++;
    complete(dev, VSND_CTRL_QUEUE, elem, 0);
    return;
  }
  if (vhu_elem_read(elem, 0, &hdr, sizeof hdr) != sizeof hdr) {
    guest_error(dev, GE_SHORT_REQUEST, "control request of %zu bytes", elem->out_len);
    answer(dev, elem, VIRTIO_SND_S_BAD_MSG);
    return;
  }
  switch (hdr.code) {
    case VIRTIO_SND_R_JACK_INFO:
      query_info(dev, elem, dev->config.n_jacks, sizeof(struct virtio_snd_jack_info), jack_info,
                 "JACK_INFO");
      break;
    case VIRTIO_SND_R_JACK_REMAP:
      jack_remap(dev, elem);
      break;
    case VIRTIO_SND_R_PCM_INFO:
      query_info(dev, elem, dev->config.n_streams, sizeof(struct virtio_snd_pcm_info), pcm_info,
                 "PCM_INFO");
      break;
    case VIRTIO_SND_R_PCM_SET_PARAMS:
    case VIRTIO_SND_R_PCM_PREPARE:
    case VIRTIO_SND_R_PCM_RELEASE:
    case VIRTIO_SND_R_PCM_START:
    case VIRTIO_SND_R_PCM_STOP:
      pcm_request(dev, hdr.code, elem);
      break;
    case VIRTIO_SND_R_CHMAP_INFO:
      query_info(dev, elem, dev->config.n_chmaps, sizeof(struct virtio_snd_chmap_info), chmap_info,
                 "CHMAP_INFO");
      break;
    case VIRTIO_SND_R_CTL_INFO:
    case VIRTIO_SND_R_CTL_ENUM_ITEMS:
    case VIRTIO_SND_R_CTL_READ:
    case VIRTIO_SND_R_CTL_WRITE:
    case VIRTIO_SND_R_CTL_TLV_READ:
    case VIRTIO_SND_R_CTL_TLV_WRITE:
    case VIRTIO_SND_R_CTL_TLV_COMMAND:
      ctl_request(dev, hdr.code, elem);
      break;
    default:
      guest_error(dev, GE_UNKNOWN_REQUEST, "unknown control request 0x%x", hdr.code);
      answer(dev, elem, VIRTIO_SND_S_NOT_SUPP);
      break;
  }
}

void
vsnd_device_submit(VsndDevice *dev, guint qidx, VhuElem *elem)
{
  switch (qidx) {
    case VSND_CTRL_QUEUE:
      ctrl_submit(dev, elem);
      break;
    case VSND_EVENT_QUEUE:
      event_submit(dev, elem);
      break;
    case VSND_TX_QUEUE:
    case VSND_RX_QUEUE:
      xfer_submit(dev, qidx, elem);
      break;
    default:
      complete(dev, qidx, elem, 0);
      break;
  }
}

/* ------------------------------------------------------------------------ */
/* Lifetime */

gboolean
vsnd_device_config_validate(const VsndDeviceConfig *config, GError **error)
{
  if (config->n_streams < 1 || config->n_streams > VSND_MAX_STREAMS) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "%u streams (1 to %u)",
                config->n_streams, VSND_MAX_STREAMS);
    return FALSE;
  }
  if (config->n_jacks > VSND_MAX_JACKS || config->n_chmaps > VSND_MAX_CHMAPS) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "%u jacks and %u channel maps (at most %u and %u)", config->n_jacks,
                config->n_chmaps, VSND_MAX_JACKS, VSND_MAX_CHMAPS);
    return FALSE;
  }
  for (guint i = 0; i < config->n_streams; i++) {
    const VsndStreamConfig *s = &config->streams[i];
    guint64 bad_formats
        = ~((1ull << VIRTIO_SND_PCM_FMT_COUNT) - 1) | (1ull << VIRTIO_SND_PCM_FMT_IMA_ADPCM);

    if (s->direction > VIRTIO_SND_D_INPUT || s->channels_min < 1
        || s->channels_min > s->channels_max || s->channels_max > 64 || s->formats == 0
        || (s->formats & bad_formats) || s->rates == 0
        || (s->rates >> VIRTIO_SND_PCM_RATE_COUNT) != 0) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                  "stream %u: bad direction, channels (%u-%u, at most 64), formats or rates", i,
                  s->channels_min, s->channels_max);
      return FALSE;
    }
  }
  for (guint i = 0; i < config->n_chmaps; i++) {
    const VsndChmapConfig *c = &config->chmaps[i];
    gboolean ok = c->direction <= VIRTIO_SND_D_INPUT && c->channels >= 1
                  && c->channels <= VIRTIO_SND_CHMAP_MAX_SIZE;

    for (guint p = 0; ok && p < c->channels; p++)
      ok = c->positions[p] < VIRTIO_SND_CHMAP_COUNT;
    if (!ok) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                  "channel map %u: bad direction, channel count or position", i);
      return FALSE;
    }
  }
  return TRUE;
}

VsndDevice *
vsnd_device_new(const VsndDeviceConfig *config, const VsndDeviceOps *ops, gpointer data)
{
  guint per_dir[2] = { 0, 0 };
  VsndDevice *dev;

  g_return_val_if_fail(vsnd_device_config_validate(config, NULL), NULL);
  dev = g_new0(VsndDevice, 1);
  dev->config = *config;
  dev->config.streams = NULL;
  dev->config.jacks = g_memdup2(config->jacks, config->n_jacks * sizeof *config->jacks);
  dev->config.chmaps = g_memdup2(config->chmaps, config->n_chmaps * sizeof *config->chmaps);
  dev->ops = *ops;
  dev->ops_data = data;
  dev->streams = g_new0(Stream, config->n_streams);
  for (guint i = 0; i < config->n_streams; i++) {
    Stream *s = &dev->streams[i];

    s->config = config->streams[i];
    s->index = per_dir[s->config.direction]++;
    s->qidx = s->config.direction == VIRTIO_SND_D_OUTPUT ? VSND_TX_QUEUE : VSND_RX_QUEUE;
    g_queue_init(&s->xfers);
    s->volume = VSND_VOLUME_MAX;
    s->on = 1;
  }
  g_queue_init(&dev->event_bufs);
  g_queue_init(&dev->events);
  return dev;
}

void
vsnd_device_free(VsndDevice *dev)
{
  if (!dev)
    return;
  vsnd_device_reset(dev);
  g_free(dev->streams);
  g_free(dev->config.jacks);
  g_free(dev->config.chmaps);
  g_free(dev);
}

void
vsnd_device_set_stream_iface(VsndDevice *dev, const VsndStreamIface *iface, gpointer data)
{
  dev->iface = iface;
  dev->iface_data = data;
  for (guint i = 0; i < dev->config.n_streams; i++)
    apply_volume(dev, i);
}

guint64
vsnd_device_get_features(VsndDevice *dev)
{
  return dev->config.controls ? 1ull << VIRTIO_SND_F_CTLS : 0;
}

void
vsnd_device_set_features(VsndDevice *dev, guint64 features)
{
  dev->features = features & vsnd_device_get_features(dev);
}

void
vsnd_device_get_config(VsndDevice *dev, guint8 *config, gsize size)
{
  struct virtio_snd_config c = {
    .jacks = dev->config.n_jacks,
    .streams = dev->config.n_streams,
    .chmaps = dev->config.n_chmaps,
    .controls = vsnd_device_get_n_controls(dev),
  };

  memset(config, 0, size);
  memcpy(config, &c, MIN(size, sizeof c));
}

void
vsnd_device_queue_stopped(VsndDevice *dev, guint qidx)
{
  VhuElem *elem;

  if (qidx == VSND_EVENT_QUEUE) {
    /* Newest first: the caller can put them back on the ring in order. */
    while ((elem = g_queue_pop_tail(&dev->event_bufs)))
      dev->ops.discard(dev->ops_data, qidx, elem);
    return;
  }
  for (guint i = 0; i < dev->config.n_streams; i++) {
    Stream *s = &dev->streams[i];

    if (s->qidx == qidx)
      flush_xfers(dev, s, i, "queue stopped");
  }
}

void
vsnd_device_reset(VsndDevice *dev)
{
  VhuElem *elem;

  for (guint i = 0; i < dev->config.n_streams; i++) {
    Stream *s = &dev->streams[i];

    discard_xfers(dev, s);
    stream_close(dev, s, i);
    s->state = VSND_STATE_INITIAL;
    s->has_params = FALSE;
    s->in_xrun = FALSE;
  }
  while ((elem = g_queue_pop_head(&dev->event_bufs)))
    dev->ops.discard(dev->ops_data, VSND_EVENT_QUEUE, elem);
  g_queue_clear_full(&dev->events, g_free);
  dev->features = 0;
}

gsize
vsnd_device_get_queued(VsndDevice *dev, guint stream)
{
  return stream < dev->config.n_streams ? dev->streams[stream].queued : 0;
}

VsndPcmState
vsnd_device_get_state(VsndDevice *dev, guint stream)
{
  g_return_val_if_fail(stream < dev->config.n_streams, VSND_STATE_INITIAL);
  return dev->streams[stream].state;
}

guint8
vsnd_device_get_direction(VsndDevice *dev, guint stream)
{
  g_return_val_if_fail(stream < dev->config.n_streams, VIRTIO_SND_D_OUTPUT);
  return dev->streams[stream].config.direction;
}

void
vsnd_device_get_preferred_params(VsndDevice *dev, guint stream, VsndPcmParams *params)
{
  const VsndStreamConfig *c;
  guint format = VIRTIO_SND_PCM_FMT_S16, rate = VIRTIO_SND_PCM_RATE_48000;

  g_return_if_fail(stream < dev->config.n_streams);
  c = &dev->streams[stream].config;
  if (!(c->formats & (1ull << format)))
    format = (guint)g_bit_nth_lsf(c->formats, -1);
  if (!(c->rates & (1ull << rate))) {
    guint64 below = c->rates & ((1ull << VIRTIO_SND_PCM_RATE_48000) - 1);

    rate = (guint)(below ? g_bit_nth_msf(below, -1) : g_bit_nth_lsf(c->rates, -1));
  }
  *params = (VsndPcmParams){
    .direction = c->direction,
    .format = (guint8)format,
    .rate = rates_hz[rate],
    .channels = CLAMP(2, c->channels_min, c->channels_max),
  };
  params->frame_bytes = sample_bytes[format] * params->channels;
  params->period_bytes = params->frame_bytes * (params->rate / 100);
  params->buffer_bytes = params->period_bytes * 4;
}

gboolean
vsnd_device_get_params(VsndDevice *dev, guint stream, VsndPcmParams *params)
{
  if (stream >= dev->config.n_streams || !dev->streams[stream].has_params)
    return FALSE;
  *params = dev->streams[stream].params;
  return TRUE;
}

void
vsnd_device_get_stats(VsndDevice *dev, VsndDeviceStats *stats)
{
  *stats = dev->stats;
}
