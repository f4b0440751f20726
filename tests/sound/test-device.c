/* Unit tests of the virtio-sound device model: requests built as VhuElems
 * (optionally cut into tiny descriptors), answers read back from their
 * writable buffers, and a recording audio stream output. */
#include <math.h>
#include <string.h>

#include "vsnd-device.h"

#define S_OK       VIRTIO_SND_S_OK
#define S_BAD_MSG  VIRTIO_SND_S_BAD_MSG
#define S_NOT_SUPP VIRTIO_SND_S_NOT_SUPP
#define S_IO_ERR   VIRTIO_SND_S_IO_ERR

#define FMT_BIT(f)  (1ull << VIRTIO_SND_PCM_FMT_##f)
#define RATE_BIT(r) (1ull << VIRTIO_SND_PCM_RATE_##r)
#define DEFAULT_FORMATS                                                                            \
  (FMT_BIT(U8) | FMT_BIT(S16) | FMT_BIT(S24) | FMT_BIT(S32) | FMT_BIT(FLOAT) | FMT_BIT(U16))
#define DEFAULT_RATES (RATE_BIT(8000) | RATE_BIT(44100) | RATE_BIT(48000) | RATE_BIT(192000))

/* An element whose buffers live on the heap, each side cut into iovecs of
 * at most @split bytes (0: one iovec). */
typedef struct {
  VhuElem elem;
  guint8 *out, *in;
  struct iovec iov[];
} TElem;

typedef struct {
  guint qidx;
  guint32 len;
  gsize in_len;
  guint8 *in; /* copy of the writable part */
  gboolean discarded;
} Done;

typedef struct {
  VsndDevice *dev;
  GArray *done; /* Done */
  GString *calls;
  gboolean refuse_open;
  guint32 delay;
  VsndPcmParams opened;
  gdouble gain[8];
  gboolean mute[8];
  guint volume_calls, wakes;
} Fixture;

static guint log_count;

static void
count_log(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer data)
{
  log_count++;
  if (g_test_verbose())
    g_printerr("[log] %s\n", message);
}

/* Cuts @len bytes at @base into iovecs of at most @split bytes. */
static guint
cut(struct iovec *iov, guint8 *base, gsize len, gsize split)
{
  gsize chunk = split ? split : len;
  guint n = 0;

  for (gsize off = 0; off < len; off += chunk, n++)
    iov[n] = (struct iovec){ base + off, MIN(chunk, len - off) };
  return n;
}

static TElem *
telem_new(const void *out, gsize out_len, gsize in_len, gsize split)
{
  gsize max_iov = split ? out_len / split + in_len / split + 2 : 2;
  TElem *t = g_malloc0(sizeof *t + max_iov * sizeof(struct iovec));

  t->out = g_memdup2(out, out_len);
  t->in = g_malloc0(MAX(in_len, 1));
  t->elem.out_sg = t->iov;
  t->elem.out_num = cut(t->iov, t->out, out_len, split);
  t->elem.in_sg = t->iov + t->elem.out_num;
  t->elem.in_num = cut(t->elem.in_sg, t->in, in_len, split);
  t->elem.out_len = out_len;
  t->elem.in_len = in_len;
  return t;
}

static void
telem_free(TElem *t)
{
  g_free(t->out);
  g_free(t->in);
  g_free(t);
}

/* --- ops and output -------------------------------------------------------- */

static void
record(Fixture *f, guint qidx, VhuElem *elem, guint32 len, gboolean discarded)
{
  TElem *t = (TElem *)elem;
  Done d = { qidx, len, elem->in_len, g_memdup2(t->in, MAX(elem->in_len, 1)), discarded };

  g_array_append_val(f->done, d);
  telem_free(t);
}

static void
t_complete(gpointer data, guint qidx, VhuElem *elem, guint32 len)
{
  g_assert_cmpuint(len, <=, elem->in_len);
  record(data, qidx, elem, len, FALSE);
}

static void
t_discard(gpointer data, guint qidx, VhuElem *elem)
{
  record(data, qidx, elem, 0, TRUE);
}

static const VsndDeviceOps ops = { t_complete, t_discard };

static gboolean
o_open(gpointer data, guint stream, const VsndPcmParams *params)
{
  Fixture *f = data;

  g_string_append_printf(f->calls, "open%u ", stream);
  f->opened = *params;
  return !f->refuse_open;
}

static void
o_start(gpointer data, guint stream)
{
  g_string_append_printf(((Fixture *)data)->calls, "start%u ", stream);
}

static void
o_stop(gpointer data, guint stream)
{
  g_string_append_printf(((Fixture *)data)->calls, "stop%u ", stream);
}

static void
o_close(gpointer data, guint stream)
{
  g_string_append_printf(((Fixture *)data)->calls, "close%u ", stream);
}

static guint32
o_delay(gpointer data, guint stream)
{
  return ((Fixture *)data)->delay;
}

static void
o_volume(gpointer data, guint stream, gdouble gain, gboolean mute)
{
  Fixture *f = data;

  g_assert_cmpuint(stream, <, G_N_ELEMENTS(f->gain));
  f->gain[stream] = gain;
  f->mute[stream] = mute;
  f->volume_calls++;
}

static void
o_wake(gpointer data, guint stream)
{
  ((Fixture *)data)->wakes++;
}

static const VsndStreamIface output
    = { o_open, o_start, o_stop, o_close, o_delay, o_volume, o_wake };

/* Streams: 0 output (stereo), 1 input (mono..stereo), 2 output (1..6). */
static VsndStreamConfig streams[] = {
  { 0, VIRTIO_SND_D_OUTPUT, 2, 2, DEFAULT_FORMATS, DEFAULT_RATES },
  { 0, VIRTIO_SND_D_INPUT, 1, 2, DEFAULT_FORMATS, DEFAULT_RATES },
  { 0, VIRTIO_SND_D_OUTPUT, 1, 6, FMT_BIT(S16), RATE_BIT(48000) },
};
static VsndJackConfig jacks[] = {
  { 0, 0x02211010, 0x14, TRUE, TRUE },
  { 0, 0x02a11020, 0x24, FALSE, FALSE },
};
static VsndChmapConfig chmaps[] = {
  { 0, VIRTIO_SND_D_OUTPUT, 2, { VIRTIO_SND_CHMAP_FL, VIRTIO_SND_CHMAP_FR } },
  { 0, VIRTIO_SND_D_INPUT, 1, { VIRTIO_SND_CHMAP_MONO } },
  { 0,
    VIRTIO_SND_D_OUTPUT,
    6,
    { VIRTIO_SND_CHMAP_FL, VIRTIO_SND_CHMAP_FR, VIRTIO_SND_CHMAP_FC, VIRTIO_SND_CHMAP_LFE,
      VIRTIO_SND_CHMAP_RL, VIRTIO_SND_CHMAP_RR } },
};

static void
fixture_setup(Fixture *f, gconstpointer data)
{
  VsndDeviceConfig config = {
    G_N_ELEMENTS(streams), streams, G_N_ELEMENTS(jacks), jacks, G_N_ELEMENTS(chmaps), chmaps, TRUE
  };

  g_assert_true(vsnd_device_config_validate(&config, NULL));
  f->done = g_array_new(FALSE, TRUE, sizeof(Done));
  f->calls = g_string_new(NULL);
  f->dev = vsnd_device_new(&config, &ops, f);
  vsnd_device_set_stream_iface(f->dev, &output, f);
  vsnd_device_set_features(f->dev, 1ull << VIRTIO_SND_F_CTLS);
  log_count = 0;
}

static void
clear_done(Fixture *f)
{
  for (guint i = 0; i < f->done->len; i++)
    g_free(g_array_index(f->done, Done, i).in);
  g_array_set_size(f->done, 0);
}

static void
fixture_teardown(Fixture *f, gconstpointer data)
{
  vsnd_device_free(f->dev);
  clear_done(f);
  g_array_free(f->done, TRUE);
  g_string_free(f->calls, TRUE);
}

static Done *
last(Fixture *f)
{
  g_assert_cmpuint(f->done->len, >, 0);
  return &g_array_index(f->done, Done, f->done->len - 1);
}

/* --- control requests -------------------------------------------------------- */

/* Submits a control request; returns its status (the response's first word)
 * and copies the response (len bytes) into @resp. */
static guint32
ctrl_split(Fixture *f, const void *req, gsize req_len, void *resp, gsize resp_len, gsize split,
           guint32 *used)
{
  guint before = f->done->len;
  TElem *t = telem_new(req, req_len, resp_len, split);
  Done *d;
  guint32 status;

  vsnd_device_submit(f->dev, VSND_CTRL_QUEUE, &t->elem);
  g_assert_cmpuint(f->done->len, >, before); /* transfers first, then the request */
  d = last(f);
  g_assert_cmpuint(d->qidx, ==, VSND_CTRL_QUEUE);
  g_assert_false(d->discarded);
  if (used)
    *used = d->len;
  if (resp)
    memcpy(resp, d->in, resp_len);
  if (d->len < 4)
    return 0;
  memcpy(&status, d->in, 4);
  return status;
}

static guint32
ctrl_status(Fixture *f, const void *req, gsize req_len)
{
  struct virtio_snd_hdr hdr;
  guint32 used;
  guint32 st = ctrl_split(f, req, req_len, &hdr, sizeof hdr, 0, &used);

  g_assert_cmpuint(used, ==, sizeof hdr);
  return st;
}

static guint32
pcm_cmd(Fixture *f, guint32 code, guint32 stream)
{
  struct virtio_snd_pcm_hdr h = { { code }, stream };

  return ctrl_status(f, &h, sizeof h);
}

static struct virtio_snd_pcm_set_params
params(guint32 stream, guint32 buffer, guint32 period, guint8 channels, guint8 format, guint8 rate,
       guint32 features)
{
  return (struct virtio_snd_pcm_set_params){
    { { VIRTIO_SND_R_PCM_SET_PARAMS }, stream }, buffer, period, features, channels, format, rate, 0
  };
}

static guint32
set_params(Fixture *f, guint32 stream, guint32 buffer, guint32 period, guint8 channels,
           guint8 format, guint8 rate, guint32 features)
{
  struct virtio_snd_pcm_set_params p
      = params(stream, buffer, period, channels, format, rate, features);

  return ctrl_status(f, &p, sizeof p);
}

/* Stream @stream set up as S16 stereo at 48 kHz,
 * 4 periods of 1024 bytes, prepared. */
static void
prepare_s16(Fixture *f, guint stream, guint32 features)
{
  g_assert_cmphex(set_params(f, stream, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16,
                             VIRTIO_SND_PCM_RATE_48000, features),
                  ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, stream), ==, S_OK);
}

static guint32
query(Fixture *f, guint32 code, guint32 start, guint32 count, guint32 size, void *resp,
      gsize resp_len, guint32 *used)
{
  struct virtio_snd_query_info q = { { code }, start, count, size };

  return ctrl_split(f, &q, sizeof q, resp, resp_len, 0, used);
}

static void
test_config(Fixture *f, gconstpointer data)
{
  struct virtio_snd_config c;
  guint8 small[6];

  vsnd_device_get_config(f->dev, (guint8 *)&c, sizeof c);
  g_assert_cmpuint(c.jacks, ==, 2);
  g_assert_cmpuint(c.streams, ==, 3);
  g_assert_cmpuint(c.chmaps, ==, 3);
  g_assert_cmpuint(c.controls, ==, 6);
  memset(small, 0xaa, sizeof small);
  vsnd_device_get_config(f->dev, small, sizeof small);
  g_assert_cmpuint(small[0], ==, 2);
  g_assert_cmpuint(small[4], ==, 3);
  g_assert_cmpuint(small[5], ==, 0);
  g_assert_cmphex(vsnd_device_get_features(f->dev), ==, 1ull << VIRTIO_SND_F_CTLS);
  g_assert_cmpuint(f->volume_calls, ==, 3); /* one per stream when the output was set */
  g_assert_cmpfloat(f->gain[0], ==, 1.0);
  g_assert_false(f->mute[0]);
}

static void
test_config_validate(void)
{
  VsndStreamConfig s = { 0, VIRTIO_SND_D_OUTPUT, 2, 2, FMT_BIT(S16), RATE_BIT(48000) };
  VsndChmapConfig m = { 0, VIRTIO_SND_D_OUTPUT, 19, { 0 } };
  VsndDeviceConfig c = { 1, &s };
  g_autoptr(GError) error = NULL;

  g_assert_true(vsnd_device_config_validate(&c, NULL));
  c.n_streams = 0;
  g_assert_false(vsnd_device_config_validate(&c, &error));
  g_clear_error(&error);
  c.n_streams = VSND_MAX_STREAMS + 1;
  g_assert_false(vsnd_device_config_validate(&c, NULL));
  c.n_streams = 1;
  s.formats = FMT_BIT(IMA_ADPCM);
  g_assert_false(vsnd_device_config_validate(&c, NULL));
  s.formats = FMT_BIT(S16);
  s.rates = 1ull << VIRTIO_SND_PCM_RATE_COUNT;
  g_assert_false(vsnd_device_config_validate(&c, NULL));
  s.rates = RATE_BIT(48000);
  s.channels_min = 3;
  g_assert_false(vsnd_device_config_validate(&c, NULL));
  s.channels_min = 0;
  g_assert_false(vsnd_device_config_validate(&c, NULL));
  s.channels_min = 1;
  c.n_chmaps = 1;
  c.chmaps = &m;
  g_assert_false(vsnd_device_config_validate(&c, &error));
  g_assert_nonnull(error);
}

static void
test_jack_info(Fixture *f, gconstpointer data)
{
  struct {
    struct virtio_snd_hdr hdr;
    struct virtio_snd_jack_info info[2];
  } r;
  guint8 big[4 + 2 * 40];
  guint32 used;

  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 0, 2, sizeof r.info[0], &r, sizeof r, &used), ==,
                  S_OK);
  g_assert_cmpuint(used, ==, sizeof r);
  g_assert_cmphex(r.info[0].hda_reg_defconf, ==, 0x02211010);
  g_assert_cmphex(r.info[0].hda_reg_caps, ==, 0x14);
  g_assert_cmphex(r.info[0].features, ==, 1u << VIRTIO_SND_JACK_F_REMAP);
  g_assert_cmpuint(r.info[0].connected, ==, 1);
  g_assert_cmpuint(r.info[1].connected, ==, 0);
  g_assert_cmphex(r.info[1].features, ==, 0);
  for (guint i = 0; i < 7; i++)
    g_assert_cmpuint(r.info[1].padding[i], ==, 0);
  /* A larger item size (a newer driver): our structure, then zeros. */
  memset(big, 0xee, sizeof big);
  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 1, 2 - 1, 40, big, 4 + 40, &used), ==, S_OK);
  g_assert_cmpuint(used, ==, 44);
  g_assert_cmphex(*(guint32 *)(big + 4 + 8), ==, 0x02a11020);
  for (guint i = 4 + 24; i < 44; i++)
    g_assert_cmpuint(big[i], ==, 0);
  /* Out of range, overflowing, too small an item, too small a buffer. */
  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 2, 1, 24, &r, sizeof r, NULL), ==, S_BAD_MSG);
  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 1, G_MAXUINT32, 24, &r, sizeof r, NULL), ==,
                  S_BAD_MSG);
  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 0, 1, 20, &r, sizeof r, NULL), ==, S_BAD_MSG);
  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 0, 2, 24, &r, 4 + 24, NULL), ==, S_BAD_MSG);
  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 0, 1, G_MAXUINT32, &r, sizeof r, NULL), ==,
                  S_BAD_MSG);
  /* Zero items is a valid, empty answer. */
  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 2, 0, 24, &r, 4, &used), ==, S_OK);
  g_assert_cmpuint(used, ==, 4);
  g_assert_cmpuint(log_count, >=, 1);
}

static void
test_jack_remap(Fixture *f, gconstpointer data)
{
  struct virtio_snd_jack_remap r = { { { VIRTIO_SND_R_JACK_REMAP }, 0 }, 3, 7 };
  struct {
    struct virtio_snd_hdr hdr;
    struct virtio_snd_jack_info info;
  } q;

  g_assert_cmphex(ctrl_status(f, &r, sizeof r), ==, S_OK);
  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 0, 1, 24, &q, sizeof q, NULL), ==, S_OK);
  g_assert_cmphex(q.info.hda_reg_defconf, ==, 0x02211037);
  r.hdr.jack_id = 1; /* no REMAP feature */
  g_assert_cmphex(ctrl_status(f, &r, sizeof r), ==, S_NOT_SUPP);
  r.hdr.jack_id = 2;
  g_assert_cmphex(ctrl_status(f, &r, sizeof r), ==, S_BAD_MSG);
  r.hdr.jack_id = 0;
  r.association = 16;
  g_assert_cmphex(ctrl_status(f, &r, sizeof r), ==, S_BAD_MSG);
  g_assert_cmphex(ctrl_status(f, &r, sizeof r - 4), ==, S_BAD_MSG);
}

static void
test_pcm_info(Fixture *f, gconstpointer data)
{
  struct {
    struct virtio_snd_hdr hdr;
    struct virtio_snd_pcm_info info[3];
  } __attribute__((packed)) r; /* the items follow the 4-byte header */

  g_assert_cmphex(query(f, VIRTIO_SND_R_PCM_INFO, 0, 3, 32, &r, sizeof r, NULL), ==, S_OK);
  g_assert_cmpuint(r.info[0].direction, ==, VIRTIO_SND_D_OUTPUT);
  g_assert_cmpuint(r.info[1].direction, ==, VIRTIO_SND_D_INPUT);
  g_assert_cmphex(r.info[0].formats, ==, DEFAULT_FORMATS);
  g_assert_cmphex(r.info[0].rates, ==, DEFAULT_RATES);
  g_assert_cmphex(r.info[0].features, ==, VSND_PCM_FEATURES);
  g_assert_cmpuint(r.info[1].channels_min, ==, 1);
  g_assert_cmpuint(r.info[2].channels_max, ==, 6);
  for (guint i = 0; i < 5; i++)
    g_assert_cmpuint(r.info[2].padding[i], ==, 0);
  g_assert_cmphex(query(f, VIRTIO_SND_R_PCM_INFO, 3, 1, 32, &r, sizeof r, NULL), ==, S_BAD_MSG);
}

static void
test_chmap_info(Fixture *f, gconstpointer data)
{
  struct {
    struct virtio_snd_hdr hdr;
    struct virtio_snd_chmap_info info[3];
  } r;

  g_assert_cmphex(query(f, VIRTIO_SND_R_CHMAP_INFO, 0, 3, 24, &r, sizeof r, NULL), ==, S_OK);
  g_assert_cmpuint(r.info[0].channels, ==, 2);
  g_assert_cmpuint(r.info[0].positions[1], ==, VIRTIO_SND_CHMAP_FR);
  g_assert_cmpuint(r.info[0].positions[2], ==, 0);
  g_assert_cmpuint(r.info[1].direction, ==, VIRTIO_SND_D_INPUT);
  g_assert_cmpuint(r.info[2].positions[3], ==, VIRTIO_SND_CHMAP_LFE);
  g_assert_cmphex(query(f, VIRTIO_SND_R_CHMAP_INFO, 0, 4, 24, &r, sizeof r, NULL), ==, S_BAD_MSG);
}

static void
test_bad_requests(Fixture *f, gconstpointer data)
{
  struct virtio_snd_hdr h = { 0x0400 };
  guint8 two[2] = { 1, 1 };
  guint32 used = 99;

  g_assert_cmphex(ctrl_status(f, &h, sizeof h), ==, S_NOT_SUPP);
  g_assert_cmphex(ctrl_status(f, two, sizeof two), ==, S_BAD_MSG);
  g_assert_cmphex(ctrl_status(f, NULL, 0), ==, S_BAD_MSG);
  h.code = VIRTIO_SND_R_PCM_INFO; /* query without its fields */
  g_assert_cmphex(ctrl_status(f, &h, sizeof h), ==, S_BAD_MSG);
  h.code = VIRTIO_SND_R_PCM_START; /* PCM request without a stream id */
  g_assert_cmphex(ctrl_status(f, &h, sizeof h), ==, S_BAD_MSG);
  /* No room for the status: nothing written. */
  ctrl_split(f, &h, sizeof h, NULL, 3, 0, &used);
  g_assert_cmpuint(used, ==, 0);
  /* One line per kind of error (unknown, short request, no room), the
   * repeated short requests suppressed. */
  g_assert_cmpuint(log_count, ==, 3);
}

static void
test_set_params(Fixture *f, gconstpointer data)
{
  VsndPcmParams p;
  const guint32 xr = 1u << VIRTIO_SND_PCM_F_EVT_XRUNS;

  g_assert_false(vsnd_device_get_params(f->dev, 0, &p));
  g_assert_cmphex(
      set_params(f, 0, 8192, 2048, 2, VIRTIO_SND_PCM_FMT_S24, VIRTIO_SND_PCM_RATE_44100, xr), ==,
      S_OK);
  g_assert_true(vsnd_device_get_params(f->dev, 0, &p));
  g_assert_cmpuint(p.rate, ==, 44100);
  g_assert_cmpuint(p.frame_bytes, ==, 8);
  g_assert_cmpuint(p.features, ==, xr);
  g_assert_cmpuint(p.positions[0], ==, VIRTIO_SND_CHMAP_FL);
  g_assert_cmpint(vsnd_device_get_state(f->dev, 0), ==, VSND_STATE_SET_PARAMS);

  /* Stream id, undefined values, what is not offered, sizes. */
  g_assert_cmphex(set_params(f, 3, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_BAD_MSG);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, 25, 7, 0), ==, S_BAD_MSG);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 16, 0), ==, S_BAD_MSG);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S8, 7, 0), ==, S_NOT_SUPP);
  g_assert_cmphex(
      set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, VIRTIO_SND_PCM_RATE_96000, 0), ==,
      S_NOT_SUPP);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 1, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_NOT_SUPP);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 0, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_NOT_SUPP);
  g_assert_cmphex(
      set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 1u << VIRTIO_SND_PCM_F_SHMEM_HOST),
      ==, S_NOT_SUPP);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7,
                             1u << VIRTIO_SND_PCM_F_MSG_POLLING),
                  ==, S_NOT_SUPP);
  g_assert_cmphex(set_params(f, 0, 4096, 0, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_BAD_MSG);
  g_assert_cmphex(set_params(f, 0, 4000, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_BAD_MSG);
  g_assert_cmphex(set_params(f, 0, 4098, 2049, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_BAD_MSG);
  g_assert_cmphex(set_params(f, 0, 0, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_OK); /* 0 % n */
  g_assert_cmphex(set_params(f, 0, VSND_MAX_BUFFER_BYTES * 2, VSND_MAX_BUFFER_BYTES, 2,
                             VIRTIO_SND_PCM_FMT_S16, 7, 0),
                  ==, S_NOT_SUPP);
  /* A short SET_PARAMS. */
  {
    struct virtio_snd_pcm_set_params sp = params(0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0);
    g_assert_cmphex(ctrl_status(f, &sp, sizeof sp - 4), ==, S_BAD_MSG);
  }
  /* The failures left the last good parameters. */
  g_assert_true(vsnd_device_get_params(f->dev, 0, &p));
  g_assert_cmpuint(p.buffer_bytes, ==, 0);
  g_assert_cmpuint(f->calls->len, ==, 0);
}

static void
test_lifecycle(Fixture *f, gconstpointer data)
{
  /* Nothing is allowed before SET_PARAMS but SET_PARAMS. */
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_STOP, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_RELEASE, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 7), ==, S_BAD_MSG);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_RELEASE, 0), ==, S_BAD_MSG);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_OK); /* again: no-op */
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_STOP, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_OK);
  g_assert_cmpint(vsnd_device_get_state(f->dev, 0), ==, VSND_STATE_START);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_RELEASE, 0), ==, S_BAD_MSG);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_STOP, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_STOP, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_STOP, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_RELEASE, 0), ==, S_OK);
  g_assert_cmpint(vsnd_device_get_state(f->dev, 0), ==, VSND_STATE_RELEASE);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_BAD_MSG);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_RELEASE, 0), ==, S_BAD_MSG);
  /* RELEASE keeps the parameters: PREPARE again needs no SET_PARAMS. */
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_RELEASE, 0), ==, S_OK);
  g_assert_cmpstr(f->calls->str, ==, "open0 start0 stop0 start0 stop0 close0 open0 close0 ");
  /* An output that cannot open: IO_ERR, and the stream stays where it was. */
  f->refuse_open = TRUE;
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_IO_ERR);
  g_assert_cmpint(vsnd_device_get_state(f->dev, 0), ==, VSND_STATE_RELEASE);
  f->refuse_open = FALSE;
  /* SET_PARAMS while prepared closes the output. */
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_OK);
  g_string_truncate(f->calls, 0);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_U8, 7, 0), ==, S_OK);
  g_assert_cmpstr(f->calls->str, ==, "close0 ");
}

/* --- transfers ------------------------------------------------------------- */

typedef struct {
  guint32 status, latency;
  guint32 used;
  guint8 *frames; /* rx: in, copy */
} XferResult;

/* Submits a tx buffer of @n bytes of @frames for @stream. */
static void
tx_submit_split(Fixture *f, guint32 stream, const guint8 *frames, gsize n, gsize status_len,
                gsize split)
{
  guint8 *buf = g_malloc(4 + n);
  TElem *t;

  memcpy(buf, &stream, 4);
  if (n)
    memcpy(buf + 4, frames, n);
  t = telem_new(buf, 4 + n, status_len, split);
  g_free(buf);
  vsnd_device_submit(f->dev, VSND_TX_QUEUE, &t->elem);
}

static void
tx_submit(Fixture *f, guint32 stream, const guint8 *frames, gsize n)
{
  tx_submit_split(f, stream, frames, n, 8, 0);
}

static void
rx_submit(Fixture *f, guint32 stream, gsize n)
{
  TElem *t = telem_new(&stream, 4, n + 8, 0);

  vsnd_device_submit(f->dev, VSND_RX_QUEUE, &t->elem);
}

/* The status of completion @i (of the whole record). */
static void
xfer_result(Fixture *f, guint i, guint qidx, guint32 *status, guint32 *latency)
{
  Done *d = &g_array_index(f->done, Done, i);
  struct virtio_snd_pcm_status st;

  g_assert_cmpuint(i, <, f->done->len);
  g_assert_cmpuint(d->qidx, ==, qidx);
  g_assert_false(d->discarded);
  memcpy(&st, d->in + d->in_len - 8, 8);
  *status = st.status;
  if (latency)
    *latency = st.latency_bytes;
}

static guint
count_done(Fixture *f, guint qidx)
{
  guint n = 0;

  for (guint i = 0; i < f->done->len; i++)
    n += g_array_index(f->done, Done, i).qidx == qidx;
  return n;
}

static void
pattern(guint8 *buf, gsize n, guint seed)
{
  for (gsize i = 0; i < n; i++)
    buf[i] = (guint8)(i * 31 + seed * 7 + (i >> 8));
}

static void
test_tx(Fixture *f, gconstpointer data)
{
  guint8 frames[3][1024], out[4096];
  guint32 status, latency;
  gsize got;

  prepare_s16(f, 0, 0);
  clear_done(f);
  for (guint i = 0; i < 3; i++) {
    pattern(frames[i], sizeof frames[i], i);
    tx_submit(f, 0, frames[i], sizeof frames[i]);
  }
  g_assert_cmpuint(f->done->len, ==, 0); /* pre-buffered, nothing consumed */
  g_assert_cmpuint(vsnd_device_get_queued(f->dev, 0), ==, 3072);
  g_assert_cmpuint(f->wakes, ==, 3);
  /* Not started: nothing is read, and no underrun either. */
  g_assert_cmpuint(vsnd_device_read(f->dev, 0, out, 512, TRUE), ==, 0);
  g_assert_cmpuint(f->done->len, ==, 0);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_OK);
  clear_done(f);

  /* Read in odd pieces: a buffer completes exactly when its last byte is
   * read, its frames arrive bit-exact, latency is the output's delay. */
  f->delay = 333;
  got = vsnd_device_read(f->dev, 0, out, 1000, FALSE);
  g_assert_cmpuint(got, ==, 1000);
  g_assert_cmpuint(f->done->len, ==, 0);
  got += vsnd_device_read(f->dev, 0, out + got, 24, FALSE);
  g_assert_cmpuint(f->done->len, ==, 1);
  xfer_result(f, 0, VSND_TX_QUEUE, &status, &latency);
  g_assert_cmphex(status, ==, S_OK);
  g_assert_cmpuint(latency, ==, 333);
  g_assert_cmpuint(g_array_index(f->done, Done, 0).len, ==, 8);
  got += vsnd_device_read(f->dev, 0, out + got, 2048, FALSE);
  g_assert_cmpuint(got, ==, 3072);
  g_assert_cmpuint(f->done->len, ==, 3);
  g_assert_cmpmem(out, 1024, frames[0], 1024);
  g_assert_cmpmem(out + 1024, 1024, frames[1], 1024);
  g_assert_cmpmem(out + 2048, 1024, frames[2], 1024);
  g_assert_cmpuint(vsnd_device_get_queued(f->dev, 0), ==, 0);
  {
    VsndDeviceStats st;
    vsnd_device_get_stats(f->dev, &st);
    g_assert_cmpuint(st.tx_bytes, ==, 3072);
    g_assert_cmpuint(st.tx_buffers, ==, 3);
    g_assert_cmpuint(st.underruns, ==, 0);
  }
}

/* Event buffers for the guest: @n of them. */
static void
events_submit(Fixture *f, guint n)
{
  for (guint i = 0; i < n; i++) {
    TElem *t = telem_new(NULL, 0, 8, 0);
    vsnd_device_submit(f->dev, VSND_EVENT_QUEUE, &t->elem);
  }
}

/* Counts completed events of @code for @data. */
static guint
count_events(Fixture *f, guint32 code, guint32 data)
{
  guint n = 0;

  for (guint i = 0; i < f->done->len; i++) {
    Done *d = &g_array_index(f->done, Done, i);
    struct virtio_snd_event ev;

    if (d->qidx != VSND_EVENT_QUEUE || d->discarded)
      continue;
    g_assert_cmpuint(d->len, ==, 8);
    memcpy(&ev, d->in, 8);
    n += ev.hdr.code == code && ev.data == data;
  }
  return n;
}

static void
test_tx_underrun(Fixture *f, gconstpointer data)
{
  guint8 frames[1024], out[2048];
  VsndDeviceStats st;

  events_submit(f, 8);
  prepare_s16(f, 0, 1u << VIRTIO_SND_PCM_F_EVT_XRUNS);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_OK);
  pattern(frames, sizeof frames, 9);
  tx_submit(f, 0, frames, 1024);
  /* Asked for 2048: 1024 from the guest, then silence, and one XRUN. */
  memset(out, 0x55, sizeof out);
  g_assert_cmpuint(vsnd_device_read(f->dev, 0, out, 2048, TRUE), ==, 1024);
  g_assert_cmpmem(out, 1024, frames, 1024);
  for (guint i = 1024; i < 2048; i++)
    g_assert_cmpuint(out[i], ==, 0);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_PCM_XRUN, 0), ==, 1);
  /* Still starving: the same underrun, no new event. */
  vsnd_device_read(f->dev, 0, out, 512, TRUE);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_PCM_XRUN, 0), ==, 1);
  /* Frames again, then a new starvation: a second event. */
  tx_submit(f, 0, frames, 1024);
  g_assert_cmpuint(vsnd_device_read(f->dev, 0, out, 1024, TRUE), ==, 1024);
  vsnd_device_read(f->dev, 0, out, 4, TRUE);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_PCM_XRUN, 0), ==, 2);
  vsnd_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.underruns, ==, 2);
  g_assert_cmpuint(st.silence_bytes, ==, 1024 + 512 + 4);
  /* U8 silence is 0x80; without EVT_XRUNS the underrun is counted only. */
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_STOP, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_RELEASE, 0), ==, S_OK);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_U8, 7, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_OK);
  g_assert_cmpuint(vsnd_device_read(f->dev, 0, out, 16, TRUE), ==, 0);
  for (guint i = 0; i < 16; i++)
    g_assert_cmphex(out[i], ==, 0x80);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_PCM_XRUN, 0), ==, 2);
  vsnd_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.underruns, ==, 3);
}

static void
test_period_events(Fixture *f, gconstpointer data)
{
  guint8 frames[1024], out[700];

  events_submit(f, 16);
  prepare_s16(f, 0, 1u << VIRTIO_SND_PCM_F_EVT_SHMEM_PERIODS);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_OK);
  pattern(frames, sizeof frames, 1);
  for (guint i = 0; i < 4; i++)
    tx_submit(f, 0, frames, sizeof frames);
  /* 4096 bytes in reads of 700: one event per 1024 bytes moved. */
  for (guint i = 0; i < 6; i++)
    vsnd_device_read(f->dev, 0, out, sizeof out, FALSE);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_PCM_PERIOD_ELAPSED, 0), ==, 4);
  g_assert_cmpuint(count_done(f, VSND_TX_QUEUE), ==, 4);
}

static void
test_tx_hostile(Fixture *f, gconstpointer data)
{
  guint8 frames[4096 + 4], out[64];
  guint32 status;
  guint i = 0;

  pattern(frames, sizeof frames, 3);
  /* Before SET_PARAMS, then after it: wrong state. */
  tx_submit(f, 0, frames, 64);
  xfer_result(f, 0, VSND_TX_QUEUE, &status, NULL);
  g_assert_cmphex(status, ==, S_IO_ERR);
  prepare_s16(f, 1, 0);
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_OK);
  clear_done(f);
  tx_submit(f, 0, frames, 64);
  xfer_result(f, 0, VSND_TX_QUEUE, &status, NULL);
  g_assert_cmphex(status, ==, S_IO_ERR);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_OK);
  clear_done(f);
  tx_submit(f, 3, frames, 64);          /* stream out of range */
  tx_submit(f, 0xffffffff, frames, 64); /* likewise */
  tx_submit(f, 1, frames, 64);          /* an input stream */
  tx_submit(f, 0, frames, 4096 + 4);    /* beyond buffer_bytes */
  tx_submit(f, 0, frames, 62);          /* not whole frames */
  for (; i < 5; i++) {
    xfer_result(f, i, VSND_TX_QUEUE, &status, NULL);
    g_assert_cmphex(status, ==, S_IO_ERR);
    g_assert_cmpuint(g_array_index(f->done, Done, i).len, ==, 8);
  }
  /* No header at all, or no room for the status. */
  {
    TElem *t = telem_new(frames, 2, 8, 0);
    vsnd_device_submit(f->dev, VSND_TX_QUEUE, &t->elem);
    xfer_result(f, i++, VSND_TX_QUEUE, &status, NULL);
    g_assert_cmphex(status, ==, S_IO_ERR);
    t = telem_new(frames, 8, 4, 0);
    vsnd_device_submit(f->dev, VSND_TX_QUEUE, &t->elem);
    g_assert_cmpuint(last(f)->len, ==, 0);
    i++;
  }
  g_assert_cmpuint(f->done->len, ==, i);
  /* A header spanning 1-byte descriptors and a status spanning two, an empty
   * buffer, and a status area longer than the status. */
  {
    guint8 data4[64];

    pattern(data4, sizeof data4, 4);
    tx_submit_split(f, 0, data4, sizeof data4, 8, 1);
    tx_submit_split(f, 0, NULL, 0, 8, 3);
    tx_submit_split(f, 0, data4, 32, 16, 0);
    g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_OK);
    g_assert_cmpuint(vsnd_device_read(f->dev, 0, out, 64, FALSE), ==, 64);
    g_assert_cmpmem(out, 64, data4, 64);
    g_assert_cmpuint(vsnd_device_read(f->dev, 0, out, 64, FALSE), ==, 32);
    g_assert_cmpmem(out, 32, data4, 32);
  }
  g_assert_cmpuint(count_done(f, VSND_TX_QUEUE), ==, i + 3);
  for (guint k = i; k < f->done->len; k++) {
    if (g_array_index(f->done, Done, k).qidx != VSND_TX_QUEUE)
      continue;
    xfer_result(f, k, VSND_TX_QUEUE, &status, NULL);
    g_assert_cmphex(status, ==, S_OK);
  }
  g_assert_cmpuint(log_count, >=, 3);
}

static void
test_tx_release(Fixture *f, gconstpointer data)
{
  guint8 frames[1024], out[100];
  VsndDeviceStats st;
  guint32 status;
  Done *d;

  prepare_s16(f, 0, 0);
  pattern(frames, sizeof frames, 5);
  tx_submit(f, 0, frames, 1024);
  tx_submit(f, 0, frames, 1024);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_OK);
  g_assert_cmpuint(vsnd_device_read(f->dev, 0, out, 100, FALSE), ==, 100);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_STOP, 0), ==, S_OK);
  /* Stopped: the output gets nothing more. */
  g_assert_cmpuint(vsnd_device_read(f->dev, 0, out, 100, FALSE), ==, 0);
  clear_done(f);
  /* RELEASE: both buffers complete first (IO_ERR, never played whole),
   * then the RELEASE itself. */
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_RELEASE, 0), ==, S_OK);
  g_assert_cmpuint(f->done->len, ==, 3);
  xfer_result(f, 0, VSND_TX_QUEUE, &status, NULL);
  g_assert_cmphex(status, ==, S_IO_ERR);
  xfer_result(f, 1, VSND_TX_QUEUE, &status, NULL);
  g_assert_cmphex(status, ==, S_IO_ERR);
  d = &g_array_index(f->done, Done, 2);
  g_assert_cmpuint(d->qidx, ==, VSND_CTRL_QUEUE);
  vsnd_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.dropped_tx_bytes, ==, 2048 - 100);
  g_assert_cmpuint(log_count, ==, 1);
}

static void
test_rx(Fixture *f, gconstpointer data)
{
  guint8 frames[3000];
  guint32 status, latency;
  VsndDeviceStats st;
  Done *d;

  events_submit(f, 4);
  prepare_s16(f, 1, 1u << VIRTIO_SND_PCM_F_EVT_XRUNS);
  g_assert_cmpuint(f->opened.direction, ==, VIRTIO_SND_D_INPUT);
  g_assert_cmpuint(f->opened.positions[0], ==, VIRTIO_SND_CHMAP_NONE); /* no stereo input map */
  rx_submit(f, 1, 1024);
  rx_submit(f, 1, 1024);
  rx_submit(f, 1, 0); /* empty: full at once */
  g_assert_cmpuint(count_done(f, VSND_RX_QUEUE), ==, 1);
  clear_done(f);
  pattern(frames, sizeof frames, 11);
  /* Not started: nothing taken, no overrun. */
  g_assert_cmpuint(vsnd_device_write(f->dev, 1, frames, 100), ==, 0);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0 + 1), ==, S_OK);
  clear_done(f);
  f->delay = 64;
  g_assert_cmpuint(vsnd_device_write(f->dev, 1, frames, 1000), ==, 1000);
  g_assert_cmpuint(f->done->len, ==, 0);
  g_assert_cmpuint(vsnd_device_write(f->dev, 1, frames + 1000, 500), ==, 500);
  g_assert_cmpuint(f->done->len, ==, 1);
  d = &g_array_index(f->done, Done, 0);
  g_assert_cmpuint(d->len, ==, 1024 + 8);
  g_assert_cmpmem(d->in, 1024, frames, 1024);
  xfer_result(f, 0, VSND_RX_QUEUE, &status, &latency);
  g_assert_cmphex(status, ==, S_OK);
  g_assert_cmpuint(latency, ==, 64);
  /* 476 bytes in the second buffer; 600 more: 548 fit, 52 dropped, and
   * one XRUN. */
  g_assert_cmpuint(vsnd_device_write(f->dev, 1, frames + 1500, 600), ==, 548);
  g_assert_cmpuint(count_done(f, VSND_RX_QUEUE), ==, 2);
  d = &g_array_index(f->done, Done, 1);
  g_assert_cmpmem(d->in, 1024, frames + 1024, 1024);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_PCM_XRUN, 1), ==, 1);
  g_assert_cmpuint(vsnd_device_write(f->dev, 1, frames, 4), ==, 0);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_PCM_XRUN, 1), ==, 1);
  vsnd_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.dropped_rx_bytes, ==, 56);
  g_assert_cmpuint(st.rx_bytes, ==, 2048);
  g_assert_cmpuint(st.overruns, ==, 1);
}

static void
test_rx_stop_release(Fixture *f, gconstpointer data)
{
  guint8 frames[256];
  guint32 status;
  Done *d;

  prepare_s16(f, 1, 0);
  rx_submit(f, 1, 1024);
  rx_submit(f, 1, 1024);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 1), ==, S_OK);
  pattern(frames, sizeof frames, 2);
  g_assert_cmpuint(vsnd_device_write(f->dev, 1, frames, 256), ==, 256);
  clear_done(f);
  /* STOP ends the stream: the partly filled buffer comes back with its 256
   * bytes, before the STOP's answer; the empty one stays. */
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_STOP, 1), ==, S_OK);
  g_assert_cmpuint(f->done->len, ==, 2);
  d = &g_array_index(f->done, Done, 0);
  g_assert_cmpuint(d->qidx, ==, VSND_RX_QUEUE);
  g_assert_cmpuint(d->len, ==, 256 + 8);
  g_assert_cmpmem(d->in, 256, frames, 256);
  xfer_result(f, 0, VSND_RX_QUEUE, &status, NULL);
  g_assert_cmphex(status, ==, S_OK);
  g_assert_cmpuint(vsnd_device_get_queued(f->dev, 1), ==, 1024);
  clear_done(f);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_RELEASE, 1), ==, S_OK);
  g_assert_cmpuint(f->done->len, ==, 2);
  d = &g_array_index(f->done, Done, 0);
  g_assert_cmpuint(d->qidx, ==, VSND_RX_QUEUE);
  g_assert_cmpuint(d->len, ==, 8);
  /* rx hostile: too big, not whole frames, wrong stream, released. */
  clear_done(f);
  rx_submit(f, 1, 8);
  rx_submit(f, 0, 8);
  rx_submit(f, 9, 8);
  g_assert_cmpuint(f->done->len, ==, 3);
  for (guint i = 0; i < 3; i++) {
    xfer_result(f, i, VSND_RX_QUEUE, &status, NULL);
    g_assert_cmphex(status, ==, S_IO_ERR);
    g_assert_cmpuint(g_array_index(f->done, Done, i).len, ==, 8);
  }
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 1), ==, S_OK);
  clear_done(f);
  rx_submit(f, 1, 4096 + 4);
  rx_submit(f, 1, 6);
  for (guint i = 0; i < 2; i++) {
    xfer_result(f, i, VSND_RX_QUEUE, &status, NULL);
    g_assert_cmphex(status, ==, S_IO_ERR);
  }
}

/* --- events ---------------------------------------------------------------- */

static void
test_events(Fixture *f, gconstpointer data)
{
  VsndDeviceStats st;
  guint32 used;

  /* Jack events wait for buffers, then go out in order. */
  vsnd_device_set_jack_connected(f->dev, 1, TRUE);
  vsnd_device_set_jack_connected(f->dev, 1, TRUE); /* no change: no event */
  vsnd_device_set_jack_connected(f->dev, 0, FALSE);
  g_assert_cmpuint(f->done->len, ==, 0);
  events_submit(f, 3);
  g_assert_cmpuint(f->done->len, ==, 2);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_JACK_CONNECTED, 1), ==, 1);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_JACK_DISCONNECTED, 0), ==, 1);
  {
    struct {
      struct virtio_snd_hdr hdr;
      struct virtio_snd_jack_info info[2];
    } r;
    g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 0, 2, 24, &r, sizeof r, NULL), ==, S_OK);
    g_assert_cmpuint(r.info[0].connected, ==, 0);
    g_assert_cmpuint(r.info[1].connected, ==, 1);
  }
  /* The third buffer is held for the next event. */
  vsnd_device_set_jack_connected(f->dev, 0, TRUE);
  g_assert_cmpuint(count_events(f, VIRTIO_SND_EVT_JACK_CONNECTED, 0), ==, 1);
  /* Too small an event buffer: given back empty. */
  {
    TElem *t = telem_new(NULL, 0, 4, 0);
    vsnd_device_submit(f->dev, VSND_EVENT_QUEUE, &t->elem);
    g_assert_cmpuint(last(f)->len, ==, 0);
  }
  /* The waiting queue is bounded: the oldest go. */
  clear_done(f);
  for (guint i = 0; i < VSND_MAX_PENDING_EVENTS + 10; i++)
    vsnd_device_set_jack_connected(f->dev, 1, i % 2);
  vsnd_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.events_dropped, ==, 10);
  events_submit(f, VSND_MAX_PENDING_EVENTS + 1);
  g_assert_cmpuint(f->done->len, ==, VSND_MAX_PENDING_EVENTS);
  /* The first kept is event 10 (connected: 10 % 2 == 0 is disconnect). */
  {
    struct virtio_snd_event ev;
    memcpy(&ev, g_array_index(f->done, Done, 0).in, 8);
    g_assert_cmphex(ev.hdr.code, ==, VIRTIO_SND_EVT_JACK_DISCONNECTED);
  }
  (void)used;
}

/* --- controls -------------------------------------------------------------- */

static guint32
ctl_cmd(Fixture *f, guint32 code, guint32 id, void *resp, gsize resp_len, guint32 *used)
{
  struct virtio_snd_ctl_hdr h = { { code }, id };

  return ctrl_split(f, &h, sizeof h, resp, resp_len, 0, used);
}

static guint32
ctl_write(Fixture *f, guint32 id, gint32 value)
{
  struct {
    struct virtio_snd_ctl_hdr h;
    struct virtio_snd_ctl_value v;
  } w = { { { VIRTIO_SND_R_CTL_WRITE }, id } };

  w.v.value.integer[0] = value;
  return ctrl_status(f, &w, sizeof w);
}

static gint32
ctl_read(Fixture *f, guint32 id)
{
  struct {
    struct virtio_snd_hdr hdr;
    struct virtio_snd_ctl_value v;
  } __attribute__((packed)) r;
  guint32 used;

  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_READ, id, &r, sizeof r, &used), ==, S_OK);
  g_assert_cmpuint(used, ==, sizeof r);
  g_assert_cmpint(r.v.value.integer[1], ==, 0);
  return r.v.value.integer[0];
}

static void
test_ctl_info(Fixture *f, gconstpointer data)
{
  struct {
    struct virtio_snd_hdr hdr;
    struct virtio_snd_ctl_info info[6];
  } __attribute__((packed)) r;

  g_assert_cmphex(query(f, VIRTIO_SND_R_CTL_INFO, 0, 6, 96, &r, sizeof r, NULL), ==, S_OK);
  g_assert_cmpstr((char *)r.info[0].name, ==, "PCM Playback Volume");
  g_assert_cmpstr((char *)r.info[1].name, ==, "PCM Playback Switch");
  g_assert_cmpstr((char *)r.info[2].name, ==, "PCM Capture Volume");
  g_assert_cmpstr((char *)r.info[5].name, ==, "PCM Playback Switch");
  g_assert_cmpuint(r.info[0].index, ==, 0);
  g_assert_cmpuint(r.info[4].index, ==, 1); /* second output stream */
  g_assert_cmpuint(r.info[2].index, ==, 0);
  g_assert_cmpuint(r.info[0].role, ==, VIRTIO_SND_CTL_ROLE_VOLUME << 1);
  g_assert_cmpuint(r.info[3].role, ==, (VIRTIO_SND_CTL_ROLE_MUTE << 1) | VIRTIO_SND_D_INPUT);
  g_assert_cmpuint(r.info[0].type, ==, VIRTIO_SND_CTL_TYPE_INTEGER);
  g_assert_cmpuint(r.info[1].type, ==, VIRTIO_SND_CTL_TYPE_BOOLEAN);
  g_assert_cmphex(r.info[0].access, ==, 0x13);
  g_assert_cmphex(r.info[1].access, ==, 0x3);
  g_assert_cmpuint(r.info[0].count, ==, 1);
  g_assert_cmpint(r.info[0].value.integer.min, ==, 0);
  g_assert_cmpint(r.info[0].value.integer.max, ==, VSND_VOLUME_MAX);
  g_assert_cmpint(r.info[0].value.integer.step, ==, 1);
  g_assert_cmphex(query(f, VIRTIO_SND_R_CTL_INFO, 5, 2, 96, &r, sizeof r, NULL), ==, S_BAD_MSG);
  g_assert_cmphex(query(f, VIRTIO_SND_R_CTL_INFO, 0, 1, 92, &r, sizeof r, NULL), ==, S_BAD_MSG);
}

static void
test_ctl_values(Fixture *f, gconstpointer data)
{
  g_assert_cmpint(ctl_read(f, 0), ==, VSND_VOLUME_MAX);
  g_assert_cmpint(ctl_read(f, 1), ==, 1);
  g_assert_cmphex(ctl_write(f, 0, 60), ==, S_OK);
  g_assert_cmpint(ctl_read(f, 0), ==, 60);
  g_assert_cmpfloat_with_epsilon(f->gain[0], pow(10.0, -20.0 / 20.0), 1e-9); /* -20 dB */
  g_assert_cmphex(ctl_write(f, 1, 0), ==, S_OK);
  g_assert_true(f->mute[0]);
  g_assert_cmphex(ctl_write(f, 3, 0), ==, S_OK);
  g_assert_true(f->mute[1]);
  g_assert_false(f->mute[2]);
  g_assert_cmphex(ctl_write(f, 0, 0), ==, S_OK);
  g_assert_cmpfloat(f->gain[0], ==, 0.0);
  /* Out of range values and ids; short requests. */
  g_assert_cmphex(ctl_write(f, 0, 101), ==, S_BAD_MSG);
  g_assert_cmphex(ctl_write(f, 0, -1), ==, S_BAD_MSG);
  g_assert_cmphex(ctl_write(f, 1, 2), ==, S_BAD_MSG);
  g_assert_cmphex(ctl_write(f, 6, 1), ==, S_BAD_MSG);
  g_assert_cmpint(ctl_read(f, 0), ==, 0);
  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_READ, 6, NULL, 516, NULL), ==, S_BAD_MSG);
  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_READ, 0, NULL, 6, NULL), ==, S_BAD_MSG);
  {
    struct virtio_snd_ctl_hdr h = { { VIRTIO_SND_R_CTL_WRITE }, 0 };
    g_assert_cmphex(ctrl_status(f, &h, sizeof h), ==, S_BAD_MSG);
    g_assert_cmphex(ctrl_status(f, &h, 6), ==, S_BAD_MSG);
  }
  /* Not enumerated. */
  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_ENUM_ITEMS, 0, NULL, 4 + 64, NULL), ==, S_BAD_MSG);
}

static void
test_ctl_tlv(Fixture *f, gconstpointer data)
{
  guint32 r[1 + 4], used;
  /* struct virtio_snd_ctl_tlv ends in a flexible array: its type and
   * length spelled out. */
  struct {
    struct virtio_snd_ctl_hdr h;
    guint32 type, length;
    guint32 v[2];
  } w = { { { VIRTIO_SND_R_CTL_TLV_WRITE }, 0 }, 1, 8, { 0, 0 } };

  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_TLV_READ, 0, r, sizeof r, &used), ==, S_OK);
  g_assert_cmpuint(used, ==, sizeof r);
  g_assert_cmpuint(r[1], ==, VSND_TLV_DB_SCALE);
  g_assert_cmpuint(r[2], ==, 8);
  g_assert_cmpint((gint32)r[3], ==, -5000);
  g_assert_cmphex(r[4], ==, 50 | VSND_TLV_DB_SCALE_MUTE);
  /* Too little room: as much as fits, and OK. */
  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_TLV_READ, 0, r, 4 + 6, &used), ==, S_OK);
  g_assert_cmpuint(used, ==, 10);
  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_TLV_READ, 1, r, sizeof r, NULL), ==, S_NOT_SUPP);
  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_TLV_READ, 99, r, sizeof r, NULL), ==, S_BAD_MSG);
  g_assert_cmphex(ctrl_status(f, &w, sizeof w), ==, S_NOT_SUPP);
  w.h.hdr.code = VIRTIO_SND_R_CTL_TLV_COMMAND;
  g_assert_cmphex(ctrl_status(f, &w, sizeof w), ==, S_NOT_SUPP);
  w.length = 12; /* longer than what follows */
  g_assert_cmphex(ctrl_status(f, &w, sizeof w), ==, S_BAD_MSG);
  w.length = VIRTIO_SND_CTL_TLV_MAX_VALUE + 4;
  g_assert_cmphex(ctrl_status(f, &w, sizeof w), ==, S_BAD_MSG);
  w.length = 6;
  g_assert_cmphex(ctrl_status(f, &w, sizeof w), ==, S_BAD_MSG);
}

static void
test_ctl_notify_and_reset(Fixture *f, gconstpointer data)
{
  guint8 frames[64];

  events_submit(f, 2);
  g_assert_true(vsnd_device_set_control(f->dev, 2, 40));
  g_assert_false(vsnd_device_set_control(f->dev, 2, 400));
  g_assert_true(vsnd_device_set_control(f->dev, 2, 40)); /* unchanged: no event */
  g_assert_cmpuint(
      count_events(f, VIRTIO_SND_EVT_CTL_NOTIFY, 2 | ((1u << VIRTIO_SND_CTL_EVT_MASK_VALUE) << 16)),
      ==, 1);
  g_assert_cmpfloat_with_epsilon(f->gain[1], pow(10.0, -30.0 / 20.0), 1e-9);
  g_assert_cmphex(ctl_write(f, 1, 0), ==, S_OK);
  /* A stream running with buffers and an event buffer held: reset discards
   * them all and closes the output, and keeps the control values. */
  prepare_s16(f, 0, 0);
  pattern(frames, sizeof frames, 0);
  tx_submit(f, 0, frames, sizeof frames);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 0), ==, S_OK);
  clear_done(f);
  g_string_truncate(f->calls, 0);
  vsnd_device_reset(f->dev);
  g_assert_cmpuint(f->done->len, ==, 2);
  g_assert_true(g_array_index(f->done, Done, 0).discarded);
  g_assert_true(g_array_index(f->done, Done, 1).discarded);
  g_assert_cmpstr(f->calls->str, ==, "close0 ");
  g_assert_cmpint(vsnd_device_get_state(f->dev, 0), ==, VSND_STATE_INITIAL);
  g_assert_cmpint(vsnd_device_get_control(f->dev, 2), ==, 40);
  g_assert_cmpint(vsnd_device_get_control(f->dev, 1), ==, 0);
  /* Reset dropped the features: controls are refused until negotiated. */
  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_READ, 0, NULL, 516, NULL), ==, S_NOT_SUPP);
  vsnd_device_set_features(f->dev, 1ull << VIRTIO_SND_F_CTLS);
  g_assert_cmpint(ctl_read(f, 1), ==, 0);
  g_assert_cmpint(ctl_read(f, 2), ==, 40);
}

static void
test_no_controls(void)
{
  VsndDeviceConfig config = { 1, streams };
  Fixture fx = { 0 }, *f = &fx;
  struct virtio_snd_config c;

  f->done = g_array_new(FALSE, TRUE, sizeof(Done));
  f->calls = g_string_new(NULL);
  f->dev = vsnd_device_new(&config, &ops, f);
  g_assert_cmphex(vsnd_device_get_features(f->dev), ==, 0);
  vsnd_device_set_features(f->dev, 1ull << VIRTIO_SND_F_CTLS); /* not offered: ignored */
  vsnd_device_get_config(f->dev, (guint8 *)&c, sizeof c);
  g_assert_cmpuint(c.controls, ==, 0);
  g_assert_cmpuint(c.jacks, ==, 0);
  g_assert_cmphex(ctl_cmd(f, VIRTIO_SND_R_CTL_READ, 0, NULL, 516, NULL), ==, S_NOT_SUPP);
  g_assert_cmphex(query(f, VIRTIO_SND_R_CTL_INFO, 0, 1, 96, NULL, 100, NULL), ==, S_NOT_SUPP);
  g_assert_cmphex(query(f, VIRTIO_SND_R_JACK_INFO, 0, 1, 24, NULL, 100, NULL), ==, S_BAD_MSG);
  /* No output set: PREPARE fails with IO_ERR. */
  g_assert_cmphex(set_params(f, 0, 4096, 1024, 2, VIRTIO_SND_PCM_FMT_S16, 7, 0), ==, S_OK);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_PREPARE, 0), ==, S_IO_ERR);
  fixture_teardown(f, NULL);
}

static void
test_queue_stopped(Fixture *f, gconstpointer data)
{
  guint8 frames[1024];
  guint32 status;

  events_submit(f, 2);
  prepare_s16(f, 0, 0);
  prepare_s16(f, 1, 0);
  pattern(frames, sizeof frames, 6);
  tx_submit(f, 0, frames, 1024);
  rx_submit(f, 1, 1024);
  g_assert_cmphex(pcm_cmd(f, VIRTIO_SND_R_PCM_START, 1), ==, S_OK);
  g_assert_cmpuint(vsnd_device_write(f->dev, 1, frames, 100), ==, 100);
  clear_done(f);
  vsnd_device_queue_stopped(f->dev, VSND_TX_QUEUE);
  g_assert_cmpuint(f->done->len, ==, 1);
  xfer_result(f, 0, VSND_TX_QUEUE, &status, NULL);
  g_assert_cmphex(status, ==, S_IO_ERR);
  vsnd_device_queue_stopped(f->dev, VSND_RX_QUEUE);
  g_assert_cmpuint(f->done->len, ==, 2);
  xfer_result(f, 1, VSND_RX_QUEUE, &status, NULL);
  g_assert_cmphex(status, ==, S_OK);
  g_assert_cmpuint(g_array_index(f->done, Done, 1).len, ==, 108);
  vsnd_device_queue_stopped(f->dev, VSND_EVENT_QUEUE);
  g_assert_cmpuint(f->done->len, ==, 4);
  g_assert_true(g_array_index(f->done, Done, 3).discarded);
  vsnd_device_queue_stopped(f->dev, VSND_CTRL_QUEUE);
  g_assert_cmpuint(f->done->len, ==, 4);
}

static void
test_formats(void)
{
  guint8 b[8];

  g_assert_cmpuint(vsnd_format_sample_bytes(VIRTIO_SND_PCM_FMT_S24_3), ==, 3);
  g_assert_cmpuint(vsnd_format_sample_bytes(VIRTIO_SND_PCM_FMT_S24), ==, 4);
  g_assert_cmpuint(vsnd_format_sample_bytes(VIRTIO_SND_PCM_FMT_FLOAT64), ==, 8);
  g_assert_cmpuint(vsnd_format_sample_bytes(VIRTIO_SND_PCM_FMT_IMA_ADPCM), ==, 0);
  g_assert_cmpuint(vsnd_format_sample_bytes(99), ==, 0);
  g_assert_cmpuint(vsnd_rate_to_hz(VIRTIO_SND_PCM_RATE_44100), ==, 44100);
  g_assert_cmpuint(vsnd_rate_to_hz(VIRTIO_SND_PCM_RATE_24000), ==, 24000);
  g_assert_cmpuint(vsnd_rate_to_hz(16), ==, 0);
  vsnd_format_fill_silence(VIRTIO_SND_PCM_FMT_U16, b, 6);
  g_assert_cmpmem(b, 6, ((guint8[]){ 0, 0x80, 0, 0x80, 0, 0x80 }), 6);
  vsnd_format_fill_silence(VIRTIO_SND_PCM_FMT_U24_3, b, 6);
  g_assert_cmpmem(b, 6, ((guint8[]){ 0, 0, 0x80, 0, 0, 0x80 }), 6);
  vsnd_format_fill_silence(VIRTIO_SND_PCM_FMT_FLOAT, b, 8);
  g_assert_cmpmem(b, 8, ((guint8[8]){ 0 }), 8);
  g_assert_cmpfloat(vsnd_volume_to_gain(VSND_VOLUME_MAX), ==, 1.0);
  g_assert_cmpfloat(vsnd_volume_to_gain(0), ==, 0.0);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  /* Guest errors are warnings by design; criticals stay fatal. */
  g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
  g_log_set_handler("vsnd", G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE | G_LOG_FLAG_FATAL, count_log,
                    NULL);

#define ADD(path, fn) g_test_add(path, Fixture, NULL, fixture_setup, fn, fixture_teardown)
  g_test_add_func("/sound/device/config-validate", test_config_validate);
  g_test_add_func("/sound/device/formats", test_formats);
  g_test_add_func("/sound/device/no-controls", test_no_controls);
  ADD("/sound/device/config", test_config);
  ADD("/sound/device/jack-info", test_jack_info);
  ADD("/sound/device/jack-remap", test_jack_remap);
  ADD("/sound/device/pcm-info", test_pcm_info);
  ADD("/sound/device/chmap-info", test_chmap_info);
  ADD("/sound/device/bad-requests", test_bad_requests);
  ADD("/sound/device/set-params", test_set_params);
  ADD("/sound/device/lifecycle", test_lifecycle);
  ADD("/sound/device/tx", test_tx);
  ADD("/sound/device/tx-underrun", test_tx_underrun);
  ADD("/sound/device/period-events", test_period_events);
  ADD("/sound/device/tx-hostile", test_tx_hostile);
  ADD("/sound/device/tx-release", test_tx_release);
  ADD("/sound/device/rx", test_rx);
  ADD("/sound/device/rx-stop-release", test_rx_stop_release);
  ADD("/sound/device/events", test_events);
  ADD("/sound/device/ctl-info", test_ctl_info);
  ADD("/sound/device/ctl-values", test_ctl_values);
  ADD("/sound/device/ctl-tlv", test_ctl_tlv);
  ADD("/sound/device/ctl-notify-and-reset", test_ctl_notify_and_reset);
  ADD("/sound/device/queue-stopped", test_queue_stopped);
#undef ADD
  return g_test_run();
}
