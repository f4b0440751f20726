/* vcf-checks-sound.c: virtio-sound checks (virtio 1.3 §5.14): item
 * information, the PCM state machine, parameters, tx and rx transfers and
 * their pacing, latency reporting, events and control elements.
 *
 * Each check picks the first output (and input) stream PCM_INFO reports and
 * parameters it offers: S16 when it can, 48 kHz when it can, 2 channels
 * within its range, 10 ms periods, a 4-period buffer. */
#include <string.h>

#include "vcf-check.h"
#include "vsnd-proto.h"

#define BIT(n) (G_GUINT64_CONSTANT(1) << (n))
#define SND_FEATURES                                                                               \
  (BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX) | BIT(VIRTIO_SND_F_CTLS))
#define MAX_STREAMS 64u
#define NO_STREAM   G_MAXUINT32
#define PERIOD_MS   10u
#define PERIODS     4u
#define Q_CTL       0
#define Q_EVT       1
#define Q_TX        2
#define Q_RX        3

typedef struct {
  VcfSession *s;
  struct virtio_snd_config cfg;
  guint n_info;
  struct virtio_snd_pcm_info info[MAX_STREAMS];
  guint32 out, in;         /* first stream of each direction, or NO_STREAM */
  guint64 status_gpa[256]; /* per ring head: where its status lands */
} Snd;

typedef struct {
  guint8 format, rate, channels;
  guint32 frame, hz, period, buffer;
} Params;

static void
snd_clear(Snd *d)
{
  g_clear_pointer(&d->s, vcf_session_free);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(Snd, snd_clear)

static const guint rate_hz[] = { 5512,  8000,  11025, 16000,  22050,  32000,  44100, 48000,
                                 64000, 88200, 96000, 176400, 192000, 384000, 12000, 24000 };

static guint
format_bytes(guint f)
{
  switch (f) {
    case VIRTIO_SND_PCM_FMT_MU_LAW:
    case VIRTIO_SND_PCM_FMT_A_LAW:
    case VIRTIO_SND_PCM_FMT_S8:
    case VIRTIO_SND_PCM_FMT_U8:
      return 1;
    case VIRTIO_SND_PCM_FMT_S16:
    case VIRTIO_SND_PCM_FMT_U16:
      return 2;
    case VIRTIO_SND_PCM_FMT_S24_3:
    case VIRTIO_SND_PCM_FMT_U24_3:
      return 3;
    case VIRTIO_SND_PCM_FMT_S24:
    case VIRTIO_SND_PCM_FMT_U24:
    case VIRTIO_SND_PCM_FMT_S32:
    case VIRTIO_SND_PCM_FMT_U32:
    case VIRTIO_SND_PCM_FMT_FLOAT:
      return 4;
    case VIRTIO_SND_PCM_FMT_FLOAT64:
      return 8;
    default:
      return 0;
  }
}

/* One control request; the status code, or 0 with the detail set. */
static guint32
ctl(VcfCtx *ctx, Snd *d, const void *req, gsize size, void *resp, gsize resp_size)
{
  g_autoptr(GError) error = NULL;
  struct virtio_snd_hdr h = { 0 };
  gssize n;

  if (resp == NULL) {
    resp = &h;
    resp_size = sizeof h;
  }
  n = vcf_session_transact(d->s, Q_CTL, req, size, resp, resp_size, &error);
  if (n < 0) {
    vcf_fail_error(ctx, "control request", error);
    return 0;
  }
  if ((gsize)n < sizeof h) {
    vcf_fail(ctx, "answer of %" G_GSSIZE_FORMAT " bytes, shorter than a status", n);
    return 0;
  }
  return ((struct virtio_snd_hdr *)resp)->code;
}

static const char *
code_name(guint32 c)
{
  switch (c) {
    case VIRTIO_SND_S_OK:
      return "S_OK";
    case VIRTIO_SND_S_BAD_MSG:
      return "S_BAD_MSG";
    case VIRTIO_SND_S_NOT_SUPP:
      return "S_NOT_SUPP";
    case VIRTIO_SND_S_IO_ERR:
      return "S_IO_ERR";
    default:
      return "other";
  }
}

static gboolean
snd_open(VcfCtx *ctx, Snd *d)
{
  g_autoptr(GError) error = NULL;
  struct virtio_snd_query_info q
      = { { VIRTIO_SND_R_PCM_INFO }, 0, 0, sizeof(struct virtio_snd_pcm_info) };
  g_autofree guint8 *resp = NULL;
  gsize resp_size;
  guint32 code;

  d->s = vcf_ctx_open_started(ctx, SND_FEATURES);
  if (d->s == NULL)
    return FALSE;
  if (!vhu_frontend_get_config(vcf_session_frontend(d->s), 0, &d->cfg,
                               vcf_session_features(d->s) & BIT(VIRTIO_SND_F_CTLS) ? 16 : 12,
                               &error)) {
    vcf_fail_error(ctx, "GET_CONFIG", error);
    return FALSE;
  }
  d->n_info = MIN(d->cfg.streams, MAX_STREAMS);
  d->out = d->in = NO_STREAM;
  if (d->n_info == 0) {
    vcf_fail(ctx, "the device has no PCM streams");
    return FALSE;
  }
  q.count = d->n_info;
  resp_size = sizeof(struct virtio_snd_hdr) + d->n_info * sizeof d->info[0];
  resp = g_malloc0(resp_size);
  code = ctl(ctx, d, &q, sizeof q, resp, resp_size);
  if (code != VIRTIO_SND_S_OK) {
    if (code != 0)
      vcf_fail(ctx, "PCM_INFO of %u streams answered 0x%x (%s)", d->n_info, code, code_name(code));
    return FALSE;
  }
  memcpy(d->info, resp + sizeof(struct virtio_snd_hdr), d->n_info * sizeof d->info[0]);
  for (guint i = 0; i < d->n_info; i++) {
    if (d->info[i].direction == VIRTIO_SND_D_OUTPUT && d->out == NO_STREAM)
      d->out = i;
    if (d->info[i].direction == VIRTIO_SND_D_INPUT && d->in == NO_STREAM)
      d->in = i;
  }
  return TRUE;
}

#define OPEN_SND(d)                                                                                \
  g_auto(Snd) d = { 0 };                                                                           \
  if (!snd_open(ctx, &d))                                                                          \
    return VCF_FAIL;

#define NEED_STREAM(d, id, what)                                                                   \
  if ((id) == NO_STREAM)                                                                           \
    return vcf_pass(ctx, "no %s stream to check", (what));

/* Parameters stream @id offers. */
static gboolean
pick_params(const Snd *d, guint32 id, Params *p)
{
  const struct virtio_snd_pcm_info *i = &d->info[id];
  const guint formats[]
      = { VIRTIO_SND_PCM_FMT_S16, VIRTIO_SND_PCM_FMT_S32, VIRTIO_SND_PCM_FMT_FLOAT,
          VIRTIO_SND_PCM_FMT_U8,  VIRTIO_SND_PCM_FMT_S24, VIRTIO_SND_PCM_FMT_S8 };

  p->format = 0xff;
  for (guint k = 0; k < G_N_ELEMENTS(formats) && p->format == 0xff; k++)
    if (i->formats & BIT(formats[k]))
      p->format = (guint8)formats[k];
  p->rate = 0xff;
  if (i->rates & BIT(VIRTIO_SND_PCM_RATE_48000))
    p->rate = VIRTIO_SND_PCM_RATE_48000;
  for (guint k = 0; k < G_N_ELEMENTS(rate_hz) && p->rate == 0xff; k++)
    if (i->rates & BIT(k))
      p->rate = (guint8)k;
  if (p->format == 0xff || p->rate == 0xff || i->channels_min == 0)
    return FALSE;
  p->channels = (guint8)CLAMP(2, i->channels_min, i->channels_max);
  p->hz = rate_hz[p->rate];
  p->frame = p->channels * format_bytes(p->format);
  p->period = MAX(1u, p->hz * PERIOD_MS / 1000) * p->frame;
  p->buffer = p->period * PERIODS;
  return TRUE;
}

static struct virtio_snd_pcm_set_params
set_params_req(guint32 id, const Params *p)
{
  return (struct virtio_snd_pcm_set_params){ { { VIRTIO_SND_R_PCM_SET_PARAMS }, id },
                                             p->buffer,
                                             p->period,
                                             0,
                                             p->channels,
                                             p->format,
                                             p->rate,
                                             0 };
}

static guint32
pcm(VcfCtx *ctx, Snd *d, guint32 code, guint32 id)
{
  struct virtio_snd_pcm_hdr h = { { code }, id };

  return ctl(ctx, d, &h, sizeof h, NULL, 0);
}

/* Sends @req and compares its status; 0 as @want2 means "only @want". */
#define EXPECT_CODE(got, want, want2, what)                                                        \
  do {                                                                                             \
    guint32 g_ = (got);                                                                            \
    if (g_ == 0)                                                                                   \
      return VCF_FAIL;                                                                             \
    if (g_ != (guint32)(want) && (!(want2) || g_ != (guint32)(want2)))                             \
      return vcf_fail(ctx, "%s: answered 0x%x (%s), expected %s", (what), g_, code_name(g_),       \
                      code_name(want));                                                            \
  } while (0)

#define SET_PARAMS(d, id, p)                                                                       \
  do {                                                                                             \
    struct virtio_snd_pcm_set_params sp_ = set_params_req((id), &(p));                             \
    EXPECT_CODE(ctl(ctx, &(d), &sp_, sizeof sp_, NULL, 0), VIRTIO_SND_S_OK, 0, "SET_PARAMS");      \
  } while (0)
#define PICK(d, id, p)                                                                             \
  Params p;                                                                                        \
  if (!pick_params(&(d), (id), &p))                                                                \
    return vcf_fail(ctx, "stream %u offers no usable format and rate", (id));

/* Queues one transfer of @bytes on @q (tx: frames readable; rx: writable);
 * returns the head or -1. */
static int
xfer(Snd *d, guint q, guint32 id, guint32 bytes)
{
  VcfRing *r = vcf_session_ring(d->s, q);
  guint64 base = vcf_session_alloc(d->s, 64 + bytes + 64);
  struct virtio_snd_pcm_xfer x = { id };
  VhuGuestBuf hdr = { base, sizeof x }, data = { base + 64, bytes },
              st = { base + 64 + ((bytes + 63) & ~63u), sizeof(struct virtio_snd_pcm_status) };
  VhuGuestBuf out[2] = { hdr, data }, in[2] = { data, st };
  int head;

  if (base == G_MAXUINT64)
    return -1;
  vcf_session_write(d->s, hdr.gpa, &x, sizeof x);
  head = q == Q_TX ? vcf_ring_add(r, out, bytes > 0 ? 2 : 1, &st, 1, FALSE)
                   : vcf_ring_add(r, &hdr, 1, in, 2, FALSE);
  if (head >= 0 && (guint)head < G_N_ELEMENTS(d->status_gpa))
    d->status_gpa[head] = st.gpa;
  return head;
}

static void
kick(Snd *d, guint q)
{
  vcf_ring_publish(vcf_session_ring(d->s, q));
  vcf_ring_kick(vcf_session_ring(d->s, q));
}

/* Waits for one completion on @q: its status and used length. */
static gboolean
completion(VcfCtx *ctx, Snd *d, guint q, int timeout_ms, struct virtio_snd_pcm_status *st,
           guint32 *len)
{
  guint32 id = 0;

  if (!vcf_ring_wait_used(vcf_session_ring(d->s, q), timeout_ms, &id, len)) {
    vcf_fail(ctx, "no %s completion within %d ms", q == Q_TX ? "tx" : "rx", timeout_ms);
    return FALSE;
  }
  if (id >= G_N_ELEMENTS(d->status_gpa) || d->status_gpa[id] == 0) {
    vcf_fail(ctx, "used entry names head %u, which was not queued", id);
    return FALSE;
  }
  vcf_session_read(d->s, d->status_gpa[id], st, sizeof *st);
  return TRUE;
}

#define SLOW_MS 5000 /* upper bound for things that must happen */

/* --- information ---------------------------------------------------------- */

static VcfVerdict
s_config(VcfCtx *ctx)
{
  OPEN_SND(d);
  if (d.cfg.streams > 1024 || d.cfg.jacks > 1024 || d.cfg.chmaps > 1024)
    return vcf_fail(ctx, "jacks %u streams %u chmaps %u", d.cfg.jacks, d.cfg.streams, d.cfg.chmaps);
  if (!(vcf_session_features(d.s) & BIT(VIRTIO_SND_F_CTLS)) && d.cfg.controls != 0)
    return vcf_fail(ctx, "controls %u without VIRTIO_SND_F_CTLS", d.cfg.controls);
  return vcf_pass(ctx, "%u jacks, %u streams, %u chmaps, %u controls", d.cfg.jacks, d.cfg.streams,
                  d.cfg.chmaps, d.cfg.controls);
}

static VcfVerdict
s_pcm_info(VcfCtx *ctx)
{
  OPEN_SND(d);
  for (guint i = 0; i < d.n_info; i++) {
    const struct virtio_snd_pcm_info *p = &d.info[i];

    if (p->direction > VIRTIO_SND_D_INPUT || p->channels_min == 0
        || p->channels_min > p->channels_max || p->formats == 0 || p->rates == 0
        || (p->formats >> VIRTIO_SND_PCM_FMT_COUNT) != 0 || (p->rates >> VIRTIO_SND_PCM_RATE_COUNT))
      return vcf_fail(ctx,
                      "stream %u: direction %u, channels %u..%u, formats 0x%" G_GINT64_MODIFIER
                      "x, rates 0x%" G_GINT64_MODIFIER "x",
                      i, p->direction, p->channels_min, p->channels_max, p->formats, p->rates);
  }
  return vcf_pass(ctx, "%u streams described", d.n_info);
}

static VcfVerdict
s_info_range(VcfCtx *ctx)
{
  OPEN_SND(d);
  struct virtio_snd_query_info q
      = { { VIRTIO_SND_R_PCM_INFO }, d.cfg.streams, 1, sizeof(struct virtio_snd_pcm_info) };
  guint8 resp[64] = { 0 };

  EXPECT_CODE(ctl(ctx, &d, &q, sizeof q, resp, sizeof resp), VIRTIO_SND_S_BAD_MSG, 0,
              "PCM_INFO past the last stream");
  return vcf_pass(ctx, "S_BAD_MSG");
}

static VcfVerdict
s_jack_info(VcfCtx *ctx)
{
  OPEN_SND(d);
  struct virtio_snd_query_info q = {
    { VIRTIO_SND_R_JACK_INFO }, 0, MAX(d.cfg.jacks, 1u), sizeof(struct virtio_snd_jack_info)
  };
  gsize size = 4 + q.count * sizeof(struct virtio_snd_jack_info);
  g_autofree guint8 *resp = g_malloc0(size);

  if (d.cfg.jacks == 0 || d.cfg.jacks > 64) {
    EXPECT_CODE(ctl(ctx, &d, &q, sizeof q, resp, size), VIRTIO_SND_S_BAD_MSG, 0,
                "JACK_INFO with no jacks");
    return vcf_pass(ctx, "no jacks: S_BAD_MSG");
  }
  EXPECT_CODE(ctl(ctx, &d, &q, sizeof q, resp, size), VIRTIO_SND_S_OK, 0, "JACK_INFO");
  return vcf_pass(ctx, "%u jacks", d.cfg.jacks);
}

static VcfVerdict
s_chmap_info(VcfCtx *ctx)
{
  OPEN_SND(d);
  struct virtio_snd_query_info q = {
    { VIRTIO_SND_R_CHMAP_INFO }, 0, MAX(d.cfg.chmaps, 1u), sizeof(struct virtio_snd_chmap_info)
  };
  gsize size = 4 + MIN(q.count, 64u) * sizeof(struct virtio_snd_chmap_info);
  g_autofree guint8 *resp = g_malloc0(size);

  if (d.cfg.chmaps == 0 || d.cfg.chmaps > 64) {
    EXPECT_CODE(ctl(ctx, &d, &q, sizeof q, resp, size), VIRTIO_SND_S_BAD_MSG, 0,
                "CHMAP_INFO with no channel maps");
    return vcf_pass(ctx, "no channel maps: S_BAD_MSG");
  }
  EXPECT_CODE(ctl(ctx, &d, &q, sizeof q, resp, size), VIRTIO_SND_S_OK, 0, "CHMAP_INFO");
  for (guint i = 0; i < d.cfg.chmaps; i++) {
    struct virtio_snd_chmap_info c;

    memcpy(&c, resp + 4 + i * sizeof c, sizeof c);
    if (c.channels == 0 || c.channels > VIRTIO_SND_CHMAP_MAX_SIZE || c.direction > 1)
      return vcf_fail(ctx, "channel map %u: %u channels, direction %u", i, c.channels, c.direction);
  }
  return vcf_pass(ctx, "%u channel maps", d.cfg.chmaps);
}

static VcfVerdict
s_unknown_request(VcfCtx *ctx)
{
  struct virtio_snd_hdr h = { 0x0999 };

  OPEN_SND(d);
  EXPECT_CODE(ctl(ctx, &d, &h, sizeof h, NULL, 0), VIRTIO_SND_S_NOT_SUPP, VIRTIO_SND_S_BAD_MSG,
              "request code 0x999");
  return vcf_pass(ctx, "refused");
}

static VcfVerdict
s_short_request(VcfCtx *ctx)
{
  struct virtio_snd_pcm_hdr h = { { VIRTIO_SND_R_PCM_PREPARE }, 0 };

  OPEN_SND(d);
  EXPECT_CODE(ctl(ctx, &d, &h, 2, NULL, 0), VIRTIO_SND_S_BAD_MSG, 0, "a 2-byte request");
  EXPECT_CODE(ctl(ctx, &d, &h, 4, NULL, 0), VIRTIO_SND_S_BAD_MSG, 0,
              "PREPARE without its stream id");
  return vcf_pass(ctx, "S_BAD_MSG");
}

/* --- the PCM state machine ------------------------------------------------ */

static VcfVerdict
lifecycle(VcfCtx *ctx, gboolean input)
{
  const guint32 seq[]
      = { VIRTIO_SND_R_PCM_PREPARE, VIRTIO_SND_R_PCM_START,  VIRTIO_SND_R_PCM_STOP,
          VIRTIO_SND_R_PCM_START,   VIRTIO_SND_R_PCM_STOP,   VIRTIO_SND_R_PCM_RELEASE,
          VIRTIO_SND_R_PCM_PREPARE, VIRTIO_SND_R_PCM_RELEASE };
  guint32 id;

  OPEN_SND(d);
  id = input ? d.in : d.out;
  NEED_STREAM(d, id, input ? "input" : "output");
  PICK(d, id, p);
  SET_PARAMS(d, id, p);
  for (guint i = 0; i < G_N_ELEMENTS(seq); i++)
    EXPECT_CODE(pcm(ctx, &d, seq[i], id), VIRTIO_SND_S_OK, 0, "lifecycle step");
  return vcf_pass(ctx, "SET_PARAMS PREPARE START STOP START STOP RELEASE PREPARE RELEASE");
}

static VcfVerdict
s_lifecycle_out(VcfCtx *ctx)
{
  return lifecycle(ctx, FALSE);
}

static VcfVerdict
s_lifecycle_in(VcfCtx *ctx)
{
  return lifecycle(ctx, TRUE);
}

/* A transition the lifecycle forbids, after @n_pre allowed ones. */
static VcfVerdict
bad_transition(VcfCtx *ctx, const guint32 *pre, guint n_pre, guint32 bad, const char *what)
{
  OPEN_SND(d);
  NEED_STREAM(d, d.out, "output");
  PICK(d, d.out, p);
  if (n_pre > 0 && pre[0] == VIRTIO_SND_R_PCM_SET_PARAMS) {
    SET_PARAMS(d, d.out, p);
    pre++, n_pre--;
  }
  for (guint i = 0; i < n_pre; i++)
    EXPECT_CODE(pcm(ctx, &d, pre[i], d.out), VIRTIO_SND_S_OK, 0, "allowed step");
  if (bad == VIRTIO_SND_R_PCM_SET_PARAMS) {
    struct virtio_snd_pcm_set_params sp = set_params_req(d.out, &p);

    EXPECT_CODE(ctl(ctx, &d, &sp, sizeof sp, NULL, 0), VIRTIO_SND_S_BAD_MSG, 0, what);
  } else {
    EXPECT_CODE(pcm(ctx, &d, bad, d.out), VIRTIO_SND_S_BAD_MSG, 0, what);
  }
  return vcf_pass(ctx, "S_BAD_MSG");
}

static VcfVerdict
s_prepare_without_params(VcfCtx *ctx)
{
  return bad_transition(ctx, NULL, 0, VIRTIO_SND_R_PCM_PREPARE, "PREPARE before SET_PARAMS");
}

static VcfVerdict
s_start_without_prepare(VcfCtx *ctx)
{
  const guint32 pre[] = { VIRTIO_SND_R_PCM_SET_PARAMS };

  return bad_transition(ctx, pre, 1, VIRTIO_SND_R_PCM_START, "START before PREPARE");
}

static VcfVerdict
s_stop_not_started(VcfCtx *ctx)
{
  const guint32 pre[] = { VIRTIO_SND_R_PCM_SET_PARAMS, VIRTIO_SND_R_PCM_PREPARE };

  return bad_transition(ctx, pre, 2, VIRTIO_SND_R_PCM_STOP, "STOP of a prepared stream");
}

static VcfVerdict
s_release_running(VcfCtx *ctx)
{
  const guint32 pre[]
      = { VIRTIO_SND_R_PCM_SET_PARAMS, VIRTIO_SND_R_PCM_PREPARE, VIRTIO_SND_R_PCM_START };

  return bad_transition(ctx, pre, 3, VIRTIO_SND_R_PCM_RELEASE, "RELEASE of a running stream");
}

static VcfVerdict
s_params_running(VcfCtx *ctx)
{
  const guint32 pre[]
      = { VIRTIO_SND_R_PCM_SET_PARAMS, VIRTIO_SND_R_PCM_PREPARE, VIRTIO_SND_R_PCM_START };

  return bad_transition(ctx, pre, 3, VIRTIO_SND_R_PCM_SET_PARAMS, "SET_PARAMS of a running stream");
}

static VcfVerdict
s_bad_stream_id(VcfCtx *ctx)
{
  OPEN_SND(d);
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_PREPARE, d.cfg.streams), VIRTIO_SND_S_BAD_MSG, 0,
              "PREPARE of a stream that does not exist");
  return vcf_pass(ctx, "S_BAD_MSG");
}

/* --- parameters ----------------------------------------------------------- */

static VcfVerdict
params_case(VcfCtx *ctx, guint which)
{
  struct virtio_snd_pcm_set_params sp;
  guint32 want = VIRTIO_SND_S_NOT_SUPP, alt = 0;
  const char *what;

  OPEN_SND(d);
  NEED_STREAM(d, d.out, "output");
  PICK(d, d.out, p);
  sp = set_params_req(d.out, &p);
  switch (which) {
    case 0: {
      guint f = 0;

      while (f < VIRTIO_SND_PCM_FMT_COUNT && (d.info[d.out].formats & BIT(f)))
        f++;
      if (f == VIRTIO_SND_PCM_FMT_COUNT)
        return vcf_pass(ctx, "every format is offered");
      sp.format = (guint8)f;
      what = "a format the stream does not offer";
      break;
    }
    case 1:
      if (d.info[d.out].channels_max == 255)
        return vcf_pass(ctx, "every channel count is offered");
      sp.channels = (guint8)(d.info[d.out].channels_max + 1);
      what = "more channels than channels_max";
      break;
    case 2:
      sp.buffer_bytes = sp.period_bytes * 3 + sp.period_bytes / 2;
      want = VIRTIO_SND_S_BAD_MSG;
      what = "buffer_bytes not a multiple of period_bytes";
      break;
    default:
      sp.rate = 200;
      want = VIRTIO_SND_S_BAD_MSG;
      alt = VIRTIO_SND_S_NOT_SUPP;
      what = "rate index 200 (undefined)";
      break;
  }
  EXPECT_CODE(ctl(ctx, &d, &sp, sizeof sp, NULL, 0), want, alt, what);
  return vcf_pass(ctx, "%s refused", what);
}

static VcfVerdict
s_params_format(VcfCtx *ctx)
{
  return params_case(ctx, 0);
}

static VcfVerdict
s_params_channels(VcfCtx *ctx)
{
  return params_case(ctx, 1);
}

static VcfVerdict
s_params_inconsistent(VcfCtx *ctx)
{
  return params_case(ctx, 2);
}

static VcfVerdict
s_params_rate(VcfCtx *ctx)
{
  return params_case(ctx, 3);
}

/* --- transfers ------------------------------------------------------------ */

/* An output stream set up, prepared and (when @start) started. */
#define RUNNING_OUT(d, p, start)                                                                   \
  OPEN_SND(d);                                                                                     \
  NEED_STREAM(d, d.out, "output");                                                                 \
  PICK(d, d.out, p);                                                                               \
  SET_PARAMS(d, d.out, p);                                                                         \
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_PREPARE, d.out), VIRTIO_SND_S_OK, 0, "PREPARE");       \
  if (start)                                                                                       \
    EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_START, d.out), VIRTIO_SND_S_OK, 0, "START");

static VcfVerdict
s_tx_complete(VcfCtx *ctx)
{
  struct virtio_snd_pcm_status st;
  guint32 len = 0;

  RUNNING_OUT(d, p, TRUE);
  if (xfer(&d, Q_TX, d.out, p.period) < 0)
    return vcf_fail(ctx, "tx ring full");
  kick(&d, Q_TX);
  if (!completion(ctx, &d, Q_TX, SLOW_MS, &st, &len))
    return VCF_FAIL;
  if (st.status != VIRTIO_SND_S_OK || len != sizeof st)
    return vcf_fail(ctx, "status 0x%x (%s), used length %u (expected S_OK, 8)", st.status,
                    code_name(st.status), len);
  return vcf_pass(ctx, "one %u-byte period played", p.period);
}

/* The device plays in real time: n periods cannot complete much faster
 * than they last (a slow machine only makes it slower). */
static VcfVerdict
s_tx_pacing(VcfCtx *ctx)
{
  const guint n = 10;
  struct virtio_snd_pcm_status st;
  gint64 t0, elapsed_ms;

  RUNNING_OUT(d, p, FALSE);
  for (guint i = 0; i < n; i++)
    if (xfer(&d, Q_TX, d.out, p.period) < 0)
      return vcf_fail(ctx, "tx ring full");
  kick(&d, Q_TX);
  t0 = g_get_monotonic_time();
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_START, d.out), VIRTIO_SND_S_OK, 0, "START");
  for (guint i = 0; i < n; i++)
    if (!completion(ctx, &d, Q_TX, SLOW_MS, &st, NULL))
      return VCF_FAIL;
  elapsed_ms = (g_get_monotonic_time() - t0) / 1000;
  if (elapsed_ms < (gint64)(n * PERIOD_MS / 2))
    return vcf_fail(ctx, "%u periods of %u ms completed in %" G_GINT64_FORMAT " ms", n, PERIOD_MS,
                    elapsed_ms);
  return vcf_pass(ctx, "%u ms of audio completed in %" G_GINT64_FORMAT " ms", n * PERIOD_MS,
                  elapsed_ms);
}

static VcfVerdict
tx_refused(VcfCtx *ctx, guint which)
{
  struct virtio_snd_pcm_status st;
  guint32 id;
  guint32 bytes;
  const char *what;

  RUNNING_OUT(d, p, which != 1);
  id = d.out;
  bytes = p.period;
  if (which == 0) {
    id = d.cfg.streams;
    what = "a transfer to a stream that does not exist";
  } else if (which == 1) {
    EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_RELEASE, d.out), VIRTIO_SND_S_OK, 0, "RELEASE");
    what = "a transfer to a released stream";
  } else if (which == 2) {
    bytes = p.buffer + p.period;
    what = "a transfer larger than buffer_bytes";
  } else {
    id = d.in != NO_STREAM ? d.in : d.cfg.streams;
    what = "a transfer on the tx queue to an input stream";
  }
  if (xfer(&d, Q_TX, id, bytes) < 0)
    return vcf_fail(ctx, "tx ring full");
  kick(&d, Q_TX);
  if (!completion(ctx, &d, Q_TX, SLOW_MS, &st, NULL))
    return VCF_FAIL;
  if (st.status != VIRTIO_SND_S_IO_ERR)
    return vcf_fail(ctx, "%s: status 0x%x (%s), expected S_IO_ERR", what, st.status,
                    code_name(st.status));
  return vcf_pass(ctx, "%s: S_IO_ERR", what);
}

static VcfVerdict
s_tx_bad_stream(VcfCtx *ctx)
{
  return tx_refused(ctx, 0);
}

static VcfVerdict
s_tx_released(VcfCtx *ctx)
{
  return tx_refused(ctx, 1);
}

static VcfVerdict
s_tx_too_large(VcfCtx *ctx)
{
  return tx_refused(ctx, 2);
}

static VcfVerdict
s_tx_wrong_direction(VcfCtx *ctx)
{
  return tx_refused(ctx, 3);
}

static VcfVerdict
s_tx_latency(VcfCtx *ctx)
{
  struct virtio_snd_pcm_status st;
  guint32 max = 0;

  RUNNING_OUT(d, p, TRUE);
  for (guint i = 0; i < PERIODS; i++)
    if (xfer(&d, Q_TX, d.out, p.period) < 0)
      return vcf_fail(ctx, "tx ring full");
  kick(&d, Q_TX);
  for (guint i = 0; i < PERIODS; i++) {
    if (!completion(ctx, &d, Q_TX, SLOW_MS, &st, NULL))
      return VCF_FAIL;
    /* Frames taken and not yet played: at most a buffer and a period in flight. */
    if (st.latency_bytes > p.buffer + p.period)
      return vcf_fail(ctx, "latency_bytes %u with a %u-byte buffer", st.latency_bytes, p.buffer);
    max = MAX(max, st.latency_bytes);
  }
  return vcf_pass(ctx, "latency_bytes up to %u (buffer %u)", max, p.buffer);
}

static VcfVerdict
s_release_returns(VcfCtx *ctx)
{
  const guint n = 8;
  struct virtio_snd_pcm_status st;

  RUNNING_OUT(d, p, TRUE);
  for (guint i = 0; i < n; i++)
    if (xfer(&d, Q_TX, d.out, p.period) < 0)
      return vcf_fail(ctx, "tx ring full");
  kick(&d, Q_TX);
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_STOP, d.out), VIRTIO_SND_S_OK, 0, "STOP");
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_RELEASE, d.out), VIRTIO_SND_S_OK, 0, "RELEASE");
  for (guint i = 0; i < n; i++) {
    if (!completion(ctx, &d, Q_TX, SLOW_MS, &st, NULL))
      return vcf_fail(ctx, "only %u of %u queued buffers came back after RELEASE", i, n);
    if (st.status != VIRTIO_SND_S_OK && st.status != VIRTIO_SND_S_IO_ERR)
      return vcf_fail(ctx, "buffer returned with status 0x%x", st.status);
  }
  return vcf_pass(ctx, "all %u buffers returned", n);
}

static VcfVerdict
s_rx_capture(VcfCtx *ctx)
{
  struct virtio_snd_pcm_status st;
  guint32 len = 0;

  OPEN_SND(d);
  NEED_STREAM(d, d.in, "input");
  PICK(d, d.in, p);
  SET_PARAMS(d, d.in, p);
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_PREPARE, d.in), VIRTIO_SND_S_OK, 0, "PREPARE");
  if (xfer(&d, Q_RX, d.in, p.period) < 0)
    return vcf_fail(ctx, "rx ring full");
  kick(&d, Q_RX);
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_START, d.in), VIRTIO_SND_S_OK, 0, "START");
  if (!completion(ctx, &d, Q_RX, SLOW_MS, &st, &len))
    return VCF_FAIL;
  if (st.status != VIRTIO_SND_S_OK || len != p.period + sizeof st)
    return vcf_fail(ctx, "status 0x%x (%s), used length %u (expected S_OK, %u)", st.status,
                    code_name(st.status), len, p.period + (guint)sizeof st);
  return vcf_pass(ctx, "one %u-byte period captured", p.period);
}

static VcfVerdict
s_rx_release_returns(VcfCtx *ctx)
{
  const guint n = 4;
  struct virtio_snd_pcm_status st;

  OPEN_SND(d);
  NEED_STREAM(d, d.in, "input");
  PICK(d, d.in, p);
  SET_PARAMS(d, d.in, p);
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_PREPARE, d.in), VIRTIO_SND_S_OK, 0, "PREPARE");
  for (guint i = 0; i < n; i++)
    if (xfer(&d, Q_RX, d.in, p.buffer) < 0)
      return vcf_fail(ctx, "rx ring full");
  kick(&d, Q_RX);
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_RELEASE, d.in), VIRTIO_SND_S_OK, 0, "RELEASE");
  for (guint i = 0; i < n; i++)
    if (!completion(ctx, &d, Q_RX, SLOW_MS, &st, NULL))
      return vcf_fail(ctx, "only %u of %u rx buffers came back after RELEASE", i, n);
  return vcf_pass(ctx, "all %u rx buffers returned", n);
}

static VcfVerdict
s_xrun_event(VcfCtx *ctx)
{
  VcfRing *ev;
  guint64 buf;
  struct virtio_snd_event e = { 0 };
  struct virtio_snd_pcm_set_params sp;

  OPEN_SND(d);
  NEED_STREAM(d, d.out, "output");
  if (!(d.info[d.out].features & (1u << VIRTIO_SND_PCM_F_EVT_XRUNS)))
    return vcf_pass(ctx, "stream %u does not offer VIRTIO_SND_PCM_F_EVT_XRUNS", d.out);
  PICK(d, d.out, p);
  sp = set_params_req(d.out, &p);
  sp.features = 1u << VIRTIO_SND_PCM_F_EVT_XRUNS;
  EXPECT_CODE(ctl(ctx, &d, &sp, sizeof sp, NULL, 0), VIRTIO_SND_S_OK, 0, "SET_PARAMS");
  ev = vcf_session_ring(d.s, Q_EVT);
  buf = vcf_session_alloc(d.s, 64);
  vcf_ring_add(ev, NULL, 0, &(VhuGuestBuf){ buf, sizeof e }, 1, FALSE);
  kick(&d, Q_EVT);
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_PREPARE, d.out), VIRTIO_SND_S_OK, 0, "PREPARE");
  /* Running with nothing to play is an underrun. */
  EXPECT_CODE(pcm(ctx, &d, VIRTIO_SND_R_PCM_START, d.out), VIRTIO_SND_S_OK, 0, "START");
  if (!vcf_ring_wait_used(ev, SLOW_MS, NULL, NULL))
    return vcf_fail(ctx, "no event within %d ms of running without buffers", SLOW_MS);
  vcf_session_read(d.s, buf, &e, sizeof e);
  if (e.hdr.code != VIRTIO_SND_EVT_PCM_XRUN || e.data != d.out)
    return vcf_fail(ctx, "event 0x%x for %u, expected PCM_XRUN for stream %u", e.hdr.code, e.data,
                    d.out);
  return vcf_pass(ctx, "PCM_XRUN");
}

static VcfVerdict
s_reconnect_reset(VcfCtx *ctx)
{
  {
    RUNNING_OUT(d1, p, TRUE);
  }
  {
    OPEN_SND(d2);
    EXPECT_CODE(pcm(ctx, &d2, VIRTIO_SND_R_PCM_START, d2.out), VIRTIO_SND_S_BAD_MSG, 0,
                "START on a new connection (the stream must be back in its initial state)");
  }
  return vcf_pass(ctx, "streams reset when the frontend left");
}

/* --- control elements ----------------------------------------------------- */

static gboolean
ctl_info(VcfCtx *ctx, Snd *d, guint32 id, struct virtio_snd_ctl_info *info)
{
  struct virtio_snd_query_info q = { { VIRTIO_SND_R_CTL_INFO }, id, 1, sizeof *info };
  guint8 resp[4 + sizeof *info];
  guint32 code = ctl(ctx, d, &q, sizeof q, resp, sizeof resp);

  if (code != VIRTIO_SND_S_OK) {
    if (code != 0)
      vcf_fail(ctx, "CTL_INFO %u answered 0x%x (%s)", id, code, code_name(code));
    return FALSE;
  }
  memcpy(info, resp + 4, sizeof *info);
  return TRUE;
}

static VcfVerdict
s_ctl_info(VcfCtx *ctx)
{
  OPEN_SND(d);
  for (guint32 i = 0; i < MIN(d.cfg.controls, 256u); i++) {
    struct virtio_snd_ctl_info info;

    if (!ctl_info(ctx, &d, i, &info))
      return VCF_FAIL;
    if (info.type > VIRTIO_SND_CTL_TYPE_IEC958 || info.name[0] == '\0' || info.count == 0
        || memchr(info.name, '\0', sizeof info.name) == NULL)
      return vcf_fail(ctx, "control %u: type %u, count %u, name not a string", i, info.type,
                      info.count);
  }
  return vcf_pass(ctx, "%u controls described", d.cfg.controls);
}

/* The first readable and writable INTEGER control, or FALSE. */
static gboolean
find_integer(VcfCtx *ctx, Snd *d, guint32 *id, struct virtio_snd_ctl_info *info)
{
  const guint32 rw = 1u << VIRTIO_SND_CTL_ACCESS_READ | 1u << VIRTIO_SND_CTL_ACCESS_WRITE;

  for (guint32 i = 0; i < MIN(d->cfg.controls, 256u); i++) {
    if (!ctl_info(ctx, d, i, info))
      return FALSE;
    if (info->type == VIRTIO_SND_CTL_TYPE_INTEGER && (info->access & rw) == rw) {
      *id = i;
      return TRUE;
    }
  }
  return FALSE;
}

typedef struct __attribute__((packed)) {
  struct virtio_snd_ctl_hdr hdr;
  struct virtio_snd_ctl_value v;
} CtlWrite;

static VcfVerdict
ctl_write_case(VcfCtx *ctx, gboolean out_of_range)
{
  struct virtio_snd_ctl_info info;
  g_autofree CtlWrite *w = g_new0(CtlWrite, 1);
  g_autofree guint8 *resp = g_malloc0(4 + sizeof(struct virtio_snd_ctl_value));
  struct virtio_snd_ctl_hdr r = { { VIRTIO_SND_R_CTL_READ }, 0 };
  guint32 id = 0;
  gint32 v;

  OPEN_SND(d);
  if (!find_integer(ctx, &d, &id, &info))
    return vcf_ctx_has_detail(ctx) ? VCF_FAIL : vcf_pass(ctx, "no writable INTEGER control");
  w->hdr = (struct virtio_snd_ctl_hdr){ { VIRTIO_SND_R_CTL_WRITE }, id };
  v = out_of_range ? info.value.integer.max + 1 : info.value.integer.min;
  for (guint i = 0; i < MIN(info.count, 128u); i++)
    w->v.value.integer[i] = v;
  if (out_of_range) {
    EXPECT_CODE(ctl(ctx, &d, w, sizeof *w, NULL, 0), VIRTIO_SND_S_BAD_MSG, 0,
                "CTL_WRITE above max");
    return vcf_pass(ctx, "control %u: %d refused", id, v);
  }
  EXPECT_CODE(ctl(ctx, &d, w, sizeof *w, NULL, 0), VIRTIO_SND_S_OK, 0, "CTL_WRITE");
  r.control_id = id;
  EXPECT_CODE(ctl(ctx, &d, &r, sizeof r, resp, 4 + sizeof(struct virtio_snd_ctl_value)),
              VIRTIO_SND_S_OK, 0, "CTL_READ");
  memcpy(&v, resp + 4, sizeof v);
  if (v != info.value.integer.min)
    return vcf_fail(ctx, "control %u: wrote %d, read %d", id, info.value.integer.min, v);
  return vcf_pass(ctx, "control %u: wrote and read back %d", id, v);
}

static VcfVerdict
s_ctl_write_read(VcfCtx *ctx)
{
  return ctl_write_case(ctx, FALSE);
}

static VcfVerdict
s_ctl_out_of_range(VcfCtx *ctx)
{
  return ctl_write_case(ctx, TRUE);
}

#define SND  "virtio 1.3 §5.14.6 Device Operation"
#define LIFE "virtio 1.3 §5.14.6.6.1 PCM Command Lifecycle"
#define IO   "virtio 1.3 §5.14.6.8 PCM I/O Messages"
#define INFO "virtio 1.3 §5.14.6.1 Item Information Request"
#define CTLS VCF_NEED_FEATURE, VIRTIO_SND_F_CTLS
#define NONE VCF_NEED_NONE, 0

const VcfCheck vcf_sound_checks[] = {
  { "sound.config", "sound", "virtio 1.3 §5.14.4 Device Configuration Layout", NONE,
    "config space: plausible counts, controls only with VIRTIO_SND_F_CTLS", s_config },
  { "sound.pcm-info", "sound", INFO, NONE,
    "PCM_INFO describes every stream (direction, channels, formats, rates)", s_pcm_info },
  { "sound.info-range", "sound", INFO, NONE, "PCM_INFO past the last stream is S_BAD_MSG",
    s_info_range },
  { "sound.jack-info", "sound", "virtio 1.3 §5.14.6.4 Jack Control Messages", NONE,
    "JACK_INFO answers for the jacks there are, S_BAD_MSG beyond", s_jack_info },
  { "sound.chmap-info", "sound", "virtio 1.3 §5.14.6.9 Channel Map Control Messages", NONE,
    "CHMAP_INFO answers valid maps, S_BAD_MSG beyond", s_chmap_info },
  { "sound.unknown-request", "sound", SND, NONE, "an unknown request code is refused",
    s_unknown_request },
  { "sound.short-request", "sound", SND, NONE, "requests shorter than their structure: S_BAD_MSG",
    s_short_request },
  { "sound.lifecycle-output", "sound", LIFE, NONE,
    "an output stream through every allowed transition", s_lifecycle_out },
  { "sound.lifecycle-input", "sound", LIFE, NONE,
    "an input stream through every allowed transition", s_lifecycle_in },
  { "sound.prepare-without-params", "sound", LIFE, NONE, "PREPARE before SET_PARAMS: S_BAD_MSG",
    s_prepare_without_params },
  { "sound.start-without-prepare", "sound", LIFE, NONE, "START before PREPARE: S_BAD_MSG",
    s_start_without_prepare },
  { "sound.stop-not-started", "sound", LIFE, NONE, "STOP of a prepared stream: S_BAD_MSG",
    s_stop_not_started },
  { "sound.release-running", "sound", LIFE, NONE, "RELEASE of a running stream: S_BAD_MSG",
    s_release_running },
  { "sound.set-params-running", "sound", LIFE, NONE, "SET_PARAMS of a running stream: S_BAD_MSG",
    s_params_running },
  { "sound.bad-stream-id", "sound", LIFE, NONE, "a stream id out of range: S_BAD_MSG",
    s_bad_stream_id },
  { "sound.params-format", "sound", "virtio 1.3 §5.14.6.6.3 PCM Set Parameters", NONE,
    "a format the stream does not offer: S_NOT_SUPP", s_params_format },
  { "sound.params-channels", "sound", "virtio 1.3 §5.14.6.6.3 PCM Set Parameters", NONE,
    "more channels than offered: S_NOT_SUPP", s_params_channels },
  { "sound.params-inconsistent", "sound", "virtio 1.3 §5.14.6.6.3 PCM Set Parameters", NONE,
    "buffer_bytes not a multiple of period_bytes: S_BAD_MSG", s_params_inconsistent },
  { "sound.params-rate", "sound", "virtio 1.3 §5.14.6.6.3 PCM Set Parameters", NONE,
    "an undefined rate value is refused", s_params_rate },
  { "sound.tx-complete", "sound", IO, NONE, "a played period completes with S_OK and 8 bytes",
    s_tx_complete },
  { "sound.tx-pacing", "sound", IO, NONE, "tx buffers complete at the pace they play, not at once",
    s_tx_pacing },
  { "sound.tx-latency", "sound", IO, NONE, "latency_bytes stays within what can be in flight",
    s_tx_latency },
  { "sound.tx-bad-stream", "sound", IO, NONE, "a transfer to no stream: S_IO_ERR",
    s_tx_bad_stream },
  { "sound.tx-released", "sound", IO, NONE, "a transfer to a released stream: S_IO_ERR",
    s_tx_released },
  { "sound.tx-too-large", "sound", IO, NONE, "a transfer larger than the buffer: S_IO_ERR",
    s_tx_too_large },
  { "sound.tx-wrong-direction", "sound", IO, NONE, "a tx transfer to an input stream: S_IO_ERR",
    s_tx_wrong_direction },
  { "sound.release-returns-buffers", "sound", IO, NONE, "RELEASE gives back every queued tx buffer",
    s_release_returns },
  { "sound.rx-capture", "sound", IO, NONE, "a captured period completes with S_OK and its frames",
    s_rx_capture },
  { "sound.rx-release-returns-buffers", "sound", IO, NONE,
    "RELEASE gives back every queued rx buffer", s_rx_release_returns },
  { "sound.xrun-event", "sound", "virtio 1.3 §5.14.6.10 PCM Notifications", NONE,
    "running with nothing to play sends PCM_XRUN (when the stream offers it)", s_xrun_event },
  { "sound.reconnect-reset", "sound", "virtio 1.3 §5.14.6.6.1 PCM Command Lifecycle", NONE,
    "a new frontend finds every stream in its initial state", s_reconnect_reset },
  { "sound.ctl-info", "sound", "virtio 1.3 §5.14.6.11 Control Elements", CTLS,
    "CTL_INFO describes every control", s_ctl_info },
  { "sound.ctl-write-read", "sound", "virtio 1.3 §5.14.6.11 Control Elements", CTLS,
    "a value written is read back", s_ctl_write_read },
  { "sound.ctl-out-of-range", "sound", "virtio 1.3 §5.14.6.11 Control Elements", CTLS,
    "a value above the maximum: S_BAD_MSG", s_ctl_out_of_range },
  { NULL },
};
