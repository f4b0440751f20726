/* fuzz-sound.c: a hostile guest against the virtio-sound device model.
 *
 * The input is a script: a header configures a VsndDevice (1-4 streams of
 * either direction, their formats, rates and channels, jacks, channel maps,
 * controls), then each operation is a request on one of the four queues
 * (control requests usually one of the real codes with ids small and
 * parameters near valid ones; transfers with a header for a small stream
 * id and buffers of random sizes, empty and huge included; event buffers
 * of random sizes), each split over one to three descriptors at random
 * points, so headers span descriptors; or the output's side of it: frames
 * read from playback streams and written into capture streams in random
 * amounts, a queue stopping, a reset, a host-side control or jack change,
 * new features.  Every buffer is its own heap allocation of exactly its
 * size, so an access beyond it shows up under ASan.
 *
 * Checked: every element completes or is given back exactly once (and all
 * of them by the time the device is freed); a completion's length fits the
 * writable part; control answers carry one of the four status codes;
 * transfers answer OK or IO_ERR at the end of their writable part, tx with
 * no payload, rx at most the frames they hold; events are whole events; the
 * output sees open, start, stop, close in an order the lifecycle allows,
 * gains within 0..1, and reads and writes never report more than asked.
 * Any GLib warning or critical other than the device's "guest: " lines
 * aborts.  FUZZ_SOUND_VERBOSE=1 shows those lines.
 *
 * Header (4 bytes):
 *   [0] bits 0-1 streams - 1; 2-5 direction of each (1: input); 6 controls;
 *       7 the output refuses to open
 *   [1] bits 0-2 formats offered (of a few sets); 3-5 rates offered
 *   [2] bits 0-1 channels (2, 1, 1-2, 1-18); 2-3 jacks; 4-5 chmaps
 *   [3] features negotiated at start (bit 0: CTLS)
 * Then operations until the input ends (at most MAX_OPS), see run_op(). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vsnd-device.h"

#define MAX_OPS     400u
#define MAX_STREAMS 4u
#define CTRL_RESP   1100u       /* more than the largest answer asked for */
#define MAX_HELD    (48u << 20) /* bytes of buffers outstanding, for the RSS limit */

int LLVMFuzzerTestOneInput(const guint8 *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* --- input ------------------------------------------------------------------ */

typedef struct {
  const guint8 *p;
  gsize n, pos;
} Input;

static guint8
in_u8(Input *in)
{
  return in->pos < in->n ? in->p[in->pos++] : 0;
}

static guint16
in_u16(Input *in)
{
  guint16 lo = in_u8(in);

  return (guint16)(lo | in_u8(in) << 8);
}

static guint32
in_u32(Input *in)
{
  guint32 lo = in_u16(in);

  return lo | (guint32)in_u16(in) << 16;
}

/* --- state of one run ------------------------------------------------------- */

typedef struct {
  VhuElem elem; /* first: the device hands it back */
  struct iovec out[3], in[3];
  guint8 *out_parts[3], *in_parts[3];
  guint qidx;
} FElem;

typedef enum { OUT_CLOSED, OUT_OPEN, OUT_RUNNING } OutState;

static struct {
  VsndDevice *dev;
  GHashTable *outstanding; /* FElem */
  guint n_streams;
  guint8 direction[MAX_STREAMS];
  OutState out[MAX_STREAMS];
  gboolean refuse_open;
  guint32 delay;
  gsize held; /* bytes in outstanding elements */
} st;

static gboolean verbose; /* FUZZ_SOUND_VERBOSE: the device's log lines */

G_GNUC_NORETURN G_GNUC_PRINTF(1, 2) static void fail(const char *format, ...)
{
  va_list args;

  va_start(args, format);
  fputs("fuzz-sound: ", stderr);
  vfprintf(stderr, format, args);
  fputc('\n', stderr);
  va_end(args);
  abort();
}

static void
felem_free(FElem *e)
{
  st.held -= e->elem.out_len + e->elem.in_len;
  for (guint i = 0; i < 3; i++) {
    g_free(e->out_parts[i]);
    g_free(e->in_parts[i]);
  }
  g_free(e);
}

/* Gathers the writable part back into one buffer. */
static guint8 *
felem_in(FElem *e)
{
  guint8 *buf = g_malloc0(MAX(e->elem.in_len, 1));

  vhu_iov_to_buf(e->elem.in_sg, e->elem.in_num, 0, buf, e->elem.in_len);
  return buf;
}

static FElem *
take(VhuElem *elem, guint qidx, const char *what)
{
  FElem *e = (FElem *)elem;

  if (!g_hash_table_remove(st.outstanding, e))
    fail("%s of an element the device does not hold (twice?)", what);
  if (e->qidx != qidx)
    fail("%s on queue %u of an element of queue %u", what, qidx, e->qidx);
  return e;
}

/* --- device ops ------------------------------------------------------------- */

static gboolean
is_status(guint32 status)
{
  return status >= VIRTIO_SND_S_OK && status <= VIRTIO_SND_S_IO_ERR;
}

static void
op_complete(gpointer data, guint qidx, VhuElem *elem, guint32 len)
{
  FElem *e = take(elem, qidx, "completion");
  g_autofree guint8 *in = NULL;
  guint32 status;

  if (len > e->elem.in_len)
    fail("queue %u: completion of %u bytes into %zu", qidx, len, e->elem.in_len);
  in = felem_in(e);
  switch (qidx) {
    case VSND_CTRL_QUEUE:
      if (e->elem.in_len >= 4) {
        memcpy(&status, in, 4);
        if (len < 4 || !is_status(status))
          fail("control answer 0x%x, %u bytes", status, len);
        if (status != VIRTIO_SND_S_OK && len != 4)
          fail("control error 0x%x with %u bytes", status, len);
      }
      break;
    case VSND_EVENT_QUEUE:
      /* A buffer too small for an event goes back empty at once. */
      if (len
          != (e->elem.in_len < sizeof(struct virtio_snd_event) ? 0
                                                               : sizeof(struct virtio_snd_event)))
        fail("event of %u bytes into %zu", len, e->elem.in_len);
      break;
    default:
      if (e->elem.in_len >= sizeof(struct virtio_snd_pcm_status)) {
        memcpy(&status, in + e->elem.in_len - sizeof(struct virtio_snd_pcm_status), 4);
        if (status != VIRTIO_SND_S_OK && status != VIRTIO_SND_S_IO_ERR)
          fail("transfer status 0x%x", status);
        if (len < sizeof(struct virtio_snd_pcm_status)
            || (qidx == VSND_TX_QUEUE && len != sizeof(struct virtio_snd_pcm_status)))
          fail("queue %u: transfer completion of %u bytes", qidx, len);
      } else if (len != 0) {
        fail("queue %u: %u bytes into a buffer without room for a status", qidx, len);
      }
      break;
  }
  felem_free(e);
}

static void
op_discard(gpointer data, guint qidx, VhuElem *elem)
{
  felem_free(take(elem, qidx, "discard"));
}

static const VsndDeviceOps ops = { op_complete, op_discard };

/* --- the output ------------------------------------------------------------- */

static OutState *
out_state(guint stream, const char *what)
{
  if (stream >= st.n_streams)
    fail("%s of stream %u of %u", what, stream, st.n_streams);
  return &st.out[stream];
}

static gboolean
o_open(gpointer data, guint stream, const VsndPcmParams *p)
{
  OutState *s = out_state(stream, "open");

  if (*s != OUT_CLOSED)
    fail("stream %u opened twice", stream);
  if (p->direction != st.direction[stream] || p->frame_bytes == 0
      || p->period_bytes % p->frame_bytes != 0 || p->period_bytes == 0
      || p->buffer_bytes % p->period_bytes != 0 || p->buffer_bytes > VSND_MAX_BUFFER_BYTES)
    fail("stream %u opened with direction %u, frame %u, period %u, buffer %u", stream, p->direction,
         p->frame_bytes, p->period_bytes, p->buffer_bytes);
  if (st.refuse_open)
    return FALSE;
  *s = OUT_OPEN;
  return TRUE;
}

static void
o_start(gpointer data, guint stream)
{
  OutState *s = out_state(stream, "start");

  if (*s != OUT_OPEN)
    fail("stream %u started in state %u", stream, *s);
  *s = OUT_RUNNING;
}

static void
o_stop(gpointer data, guint stream)
{
  OutState *s = out_state(stream, "stop");

  if (*s != OUT_RUNNING)
    fail("stream %u stopped in state %u", stream, *s);
  *s = OUT_OPEN;
}

static void
o_close(gpointer data, guint stream)
{
  OutState *s = out_state(stream, "close");

  if (*s == OUT_CLOSED)
    fail("stream %u closed twice", stream);
  *s = OUT_CLOSED;
}

static guint32
o_get_delay(gpointer data, guint stream)
{
  out_state(stream, "get_delay");
  return st.delay;
}

static void
o_set_volume(gpointer data, guint stream, gdouble gain, gboolean mute)
{
  out_state(stream, "set_volume");
  if (!(gain >= 0 && gain <= 1))
    fail("stream %u: gain %f", stream, gain);
}

static void
o_wake(gpointer data, guint stream)
{
  out_state(stream, "wake");
}

static const VsndStreamIface iface = {
  o_open, o_start, o_stop, o_close, o_get_delay, o_set_volume, o_wake,
};

/* --- requests --------------------------------------------------------------- */

/* Splits @buf (@len bytes) over up to three heap parts at points from the
 * input. */
static guint
split(Input *in, const guint8 *buf, gsize len, struct iovec *iov, guint8 **parts)
{
  guint n = 1 + in_u8(in) % 3;
  gsize pos = 0;

  for (guint i = 0; i < n; i++) {
    gsize cut = in_u8(in) % 24; /* not inside MIN(), which evaluates twice */
    gsize part = i + 1 == n ? len - pos : MIN(len - pos, cut);

    parts[i] = g_malloc(MAX(part, 1));
    if (buf)
      memcpy(parts[i], buf + pos, part);
    else
      memset(parts[i], 0xa5, part);
    iov[i] = (struct iovec){ parts[i], part };
    pos += part;
  }
  return n;
}

static void
submit(Input *in, guint qidx, const guint8 *out, gsize out_len, gsize in_len)
{
  FElem *e = g_new0(FElem, 1);

  e->qidx = qidx;
  e->elem.out_num = out_len ? split(in, out, out_len, e->out, e->out_parts) : 0;
  e->elem.out_sg = e->out;
  e->elem.out_len = out_len;
  e->elem.in_num = in_len ? split(in, NULL, in_len, e->in, e->in_parts) : 0;
  e->elem.in_sg = e->in;
  e->elem.in_len = in_len;
  st.held += out_len + in_len;
  g_hash_table_add(st.outstanding, e);
  vsnd_device_submit(st.dev, qidx, &e->elem);
}

static guint32
stream_id(Input *in)
{
  guint8 b = in_u8(in);

  return b < 0xf0 ? b % (st.n_streams + 1) : in_u32(in);
}

static void
ctrl_request(Input *in)
{
  static const guint32 codes[] = {
    VIRTIO_SND_R_JACK_INFO,       VIRTIO_SND_R_JACK_REMAP,     VIRTIO_SND_R_PCM_INFO,
    VIRTIO_SND_R_PCM_SET_PARAMS,  VIRTIO_SND_R_PCM_PREPARE,    VIRTIO_SND_R_PCM_RELEASE,
    VIRTIO_SND_R_PCM_START,       VIRTIO_SND_R_PCM_STOP,       VIRTIO_SND_R_CHMAP_INFO,
    VIRTIO_SND_R_CTL_INFO,        VIRTIO_SND_R_CTL_ENUM_ITEMS, VIRTIO_SND_R_CTL_READ,
    VIRTIO_SND_R_CTL_WRITE,       VIRTIO_SND_R_CTL_TLV_READ,   VIRTIO_SND_R_CTL_TLV_WRITE,
    VIRTIO_SND_R_CTL_TLV_COMMAND,
  };
  guint8 req[600] = { 0 };
  guint8 pick = in_u8(in);
  guint32 code = pick < 0xf0 ? codes[pick % G_N_ELEMENTS(codes)] : in_u32(in);
  gsize len = 8;

  memcpy(req, &code, 4);
  if (code == VIRTIO_SND_R_PCM_SET_PARAMS && in_u8(in) < 0xe0) {
    /* Near valid: a period of whole frames, a buffer of whole periods. */
    struct virtio_snd_pcm_set_params p = { { { code }, stream_id(in) } };
    guint8 channels = (guint8)(1 + in_u8(in) % 3);
    guint format = in_u8(in) % (VIRTIO_SND_PCM_FMT_COUNT + 1);
    guint frame = MAX(vsnd_format_sample_bytes(format), 1) * channels;

    p.channels = channels;
    p.format = (guint8)format;
    p.rate = in_u8(in) % (VIRTIO_SND_PCM_RATE_COUNT + 1);
    p.features = in_u8(in) & 7;
    p.period_bytes = frame * (in_u16(in) % 600);
    p.buffer_bytes = p.period_bytes * (in_u8(in) % 9);
    if (in_u8(in) > 0xf0)
      p.buffer_bytes += in_u8(in);
    memcpy(req, &p, sizeof p);
    len = sizeof p;
  } else {
    guint32 id = stream_id(in);

    memcpy(req + 4, &id, 4);
    len = 8;
  }
  /* The rest of the request (counts, sizes, values) straight from the input. */
  for (gsize extra = in_u8(in) % 32; extra > 0 && len < sizeof req; extra--)
    req[len++] = in_u8(in);
  if (in_u8(in) > 0xf8)
    len = in_u16(in) % sizeof req;
  submit(in, VSND_CTRL_QUEUE, req, len, in_u16(in) % CTRL_RESP);
}

static void
xfer(Input *in, guint qidx)
{
  guint32 id = stream_id(in);
  guint8 sizes = in_u8(in);
  gsize frames = sizes < 0xf8 || st.held > MAX_HELD ? (gsize)in_u16(in) % 4096
                                                    : (gsize)in_u32(in) % (9u << 20);
  gsize status = in_u8(in) < 0xf0 ? sizeof(struct virtio_snd_pcm_status) : in_u8(in) % 12;
  g_autofree guint8 *out = NULL;

  if (qidx == VSND_TX_QUEUE) {
    gsize len = in_u8(in) < 0xf8 ? 4 + frames : in_u8(in) % 4;

    out = g_malloc0(MAX(len, 4));
    memcpy(out, &id, 4);
    for (gsize i = 4; i < len; i++)
      out[i] = (guint8)(i * 31);
    submit(in, qidx, out, len, status);
  } else {
    submit(in, qidx, (const guint8 *)&id, in_u8(in) < 0xf8 ? 4 : in_u8(in) % 4, frames + status);
  }
}

/* The output moves frames: @len bytes, each buffer exactly that size. */
static void
move_frames(Input *in, gboolean playback)
{
  guint stream = in_u8(in) % (st.n_streams + 1);
  gsize len = in_u8(in) < 0xf0 ? in_u16(in) % 20000 : in_u32(in) % (1u << 20);
  g_autofree guint8 *buf = g_malloc(MAX(len, 1));
  gsize n;

  memset(buf, 0x3c, len);
  if (playback)
    n = vsnd_device_read(st.dev, stream, buf, len, in_u8(in) & 1);
  else
    n = vsnd_device_write(st.dev, stream, buf, len);
  if (n > len)
    fail("%s of %zu bytes reported %zu", playback ? "read" : "write", len, n);
}

static void
run_op(Input *in)
{
  guint8 op = in_u8(in);
  guint8 config[16];

  switch (op % 12) {
    case 0:
    case 1:
    case 2:
      ctrl_request(in);
      break;
    case 3:
      xfer(in, VSND_TX_QUEUE);
      break;
    case 4:
      xfer(in, VSND_RX_QUEUE);
      break;
    case 5:
      submit(in, VSND_EVENT_QUEUE, NULL, 0, in_u8(in) % 16);
      break;
    case 6:
      move_frames(in, TRUE);
      break;
    case 7:
      move_frames(in, FALSE);
      break;
    case 8:
      vsnd_device_queue_stopped(st.dev, in_u8(in) % VSND_NUM_QUEUES);
      break;
    case 9:
      if (op & 0x80) {
        vsnd_device_reset(st.dev);
        vsnd_device_set_features(st.dev, in_u8(in) & 1 ? 1ull << VIRTIO_SND_F_CTLS : 0);
      } else {
        vsnd_device_get_config(st.dev, config, in_u8(in) % (sizeof config + 1));
      }
      break;
    case 10:
      if (vsnd_device_get_n_controls(st.dev) > 0)
        vsnd_device_set_control(st.dev, in_u8(in) % vsnd_device_get_n_controls(st.dev),
                                (gint32)(in_u8(in) % 130) - 10);
      break;
    case 11: {
      struct virtio_snd_config c;

      vsnd_device_get_config(st.dev, (guint8 *)&c, sizeof c);
      if (c.jacks > 0)
        vsnd_device_set_jack_connected(st.dev, in_u8(in) % c.jacks, op & 0x80);
      st.delay = in_u8(in) < 0xf0 ? in_u16(in) : in_u32(in);
      break;
    }
  }
}

/* --- one run ---------------------------------------------------------------- */

static void
start(Input *in)
{
  static const guint64 format_sets[] = {
    1ull << VIRTIO_SND_PCM_FMT_S16,
    (1ull << VIRTIO_SND_PCM_FMT_U8) | (1ull << VIRTIO_SND_PCM_FMT_S16)
        | (1ull << VIRTIO_SND_PCM_FMT_S24) | (1ull << VIRTIO_SND_PCM_FMT_S32)
        | (1ull << VIRTIO_SND_PCM_FMT_FLOAT),
    ((1ull << VIRTIO_SND_PCM_FMT_COUNT) - 1) & ~(1ull << VIRTIO_SND_PCM_FMT_IMA_ADPCM),
    (1ull << VIRTIO_SND_PCM_FMT_A_LAW) | (1ull << VIRTIO_SND_PCM_FMT_MU_LAW),
    (1ull << VIRTIO_SND_PCM_FMT_S24_3) | (1ull << VIRTIO_SND_PCM_FMT_FLOAT64),
    1ull << VIRTIO_SND_PCM_FMT_DSD_U8,
    (1ull << VIRTIO_SND_PCM_FMT_S8) | (1ull << VIRTIO_SND_PCM_FMT_U32),
    1ull << VIRTIO_SND_PCM_FMT_IEC958_SUBFRAME,
  };
  static const guint64 rate_sets[] = {
    1ull << VIRTIO_SND_PCM_RATE_48000,
    (1ull << VIRTIO_SND_PCM_RATE_COUNT) - 1,
    (1ull << VIRTIO_SND_PCM_RATE_5512) | (1ull << VIRTIO_SND_PCM_RATE_384000),
    (1ull << VIRTIO_SND_PCM_RATE_44100) | (1ull << VIRTIO_SND_PCM_RATE_48000),
    1ull << VIRTIO_SND_PCM_RATE_8000,
    1ull << VIRTIO_SND_PCM_RATE_192000,
    (1ull << VIRTIO_SND_PCM_RATE_11025) | (1ull << VIRTIO_SND_PCM_RATE_96000),
    1ull << VIRTIO_SND_PCM_RATE_16000,
  };
  static const guint8 channels[][2] = { { 2, 2 }, { 1, 1 }, { 1, 2 }, { 1, 18 } };
  guint8 h0 = in_u8(in), h1 = in_u8(in), h2 = in_u8(in), h3 = in_u8(in);
  VsndStreamConfig streams[MAX_STREAMS];
  VsndJackConfig jacks[3];
  VsndChmapConfig chmaps[3];
  VsndDeviceConfig config = { 0 };
  g_autoptr(GError) error = NULL;

  st.n_streams = 1 + (h0 & 3);
  for (guint i = 0; i < st.n_streams; i++) {
    st.direction[i] = (h0 >> (2 + i)) & 1 ? VIRTIO_SND_D_INPUT : VIRTIO_SND_D_OUTPUT;
    st.out[i] = OUT_CLOSED;
    streams[i] = (VsndStreamConfig){ 0,
                                     st.direction[i],
                                     channels[h2 & 3][0],
                                     channels[h2 & 3][1],
                                     format_sets[h1 & 7],
                                     rate_sets[(h1 >> 3) & 7] };
  }
  for (guint i = 0; i < G_N_ELEMENTS(jacks); i++)
    jacks[i] = (VsndJackConfig){ 0, 0x01014010 + i, 0x14, i & 1, i != 1 };
  for (guint i = 0; i < G_N_ELEMENTS(chmaps); i++) {
    chmaps[i] = (VsndChmapConfig){ 0, (guint8)(i & 1), (guint8)(1 + i) };
    for (guint c = 0; c < chmaps[i].channels; c++)
      chmaps[i].positions[c] = (guint8)(VIRTIO_SND_CHMAP_FL + c);
  }
  config.n_streams = st.n_streams;
  config.streams = streams;
  config.n_jacks = (h2 >> 2) & 3;
  config.jacks = config.n_jacks ? jacks : NULL;
  config.n_chmaps = (h2 >> 4) & 3;
  config.chmaps = config.n_chmaps ? chmaps : NULL;
  config.controls = h0 & 0x40;
  if (!vsnd_device_config_validate(&config, &error))
    fail("a valid configuration refused: %s", error->message);
  st.refuse_open = h0 & 0x80;
  st.delay = 0;
  st.outstanding = g_hash_table_new(NULL, NULL);
  st.dev = vsnd_device_new(&config, &ops, NULL);
  vsnd_device_set_stream_iface(st.dev, &iface, NULL);
  vsnd_device_set_features(st.dev, h3 & 1 ? 1ull << VIRTIO_SND_F_CTLS : 0);
}

static void
finish(void)
{
  vsnd_device_free(st.dev);
  st.dev = NULL;
  if (g_hash_table_size(st.outstanding) != 0)
    fail("%u elements neither completed nor given back", g_hash_table_size(st.outstanding));
  g_hash_table_unref(st.outstanding);
  for (guint i = 0; i < st.n_streams; i++)
    if (st.out[i] != OUT_CLOSED)
      fail("stream %u left open", i);
}

static void
log_handler(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer data)
{
  /* Guest errors are logged by design (and a refused open); anything else
   * is a bug. */
  if ((level & G_LOG_LEVEL_WARNING)
      && (g_str_has_prefix(message, "guest: ") || g_str_has_suffix(message, "refused to open"))) {
    if (verbose)
      fprintf(stderr, "[%s] %s\n", domain ? domain : "", message);
    return;
  }
  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING))
    fail("unexpected log: %s: %s", domain ? domain : "", message);
  if (verbose)
    fprintf(stderr, "[%s] %s\n", domain ? domain : "", message);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  verbose = g_getenv("FUZZ_SOUND_VERBOSE") != NULL;
  g_log_set_default_handler(log_handler, NULL);
  return 0;
}

int
LLVMFuzzerTestOneInput(const guint8 *data, size_t size)
{
  Input in = { data, size, 0 };

  if (size < 4)
    return 0;
  start(&in);
  for (guint n = 0; n < MAX_OPS && in.pos < in.n; n++)
    run_op(&in);
  finish();
  return 0;
}
