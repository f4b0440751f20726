/* vsnd-device.h: the virtio-sound device model.
 *
 * Turns control-, event-, tx- and rx-queue requests into stream state
 * changes and calls on one "audio stream" output (VsndStreamIface), and
 * moves PCM frames between guest buffers and that output.  Knows nothing of
 * rings, sockets or GStreamer: the caller pops requests and hands them in
 * with vsnd_device_submit(); the device writes the answer into the request's
 * writable buffers and gives the element back through ops->complete, at
 * once (control requests, bad transfers) or later (transfers, once their
 * frames were consumed or filled; event buffers, once an event happens).
 *
 * Not thread-safe: the caller serialises every call, including the data
 * calls vsnd_device_read()/vsnd_device_write() that an output makes from
 * its own threads (vsnd-vhost holds its device lock).  ops and the stream
 * iface are called from inside those calls, with the caller's lock held:
 * they must not block and must not call back into the device.
 *
 * Streams follow the spec's lifecycle: SET_PARAMS from {initial, SET_PARAMS,
 * PREPARE, RELEASE}; PREPARE from {SET_PARAMS, PREPARE, RELEASE}; START from
 * {PREPARE, STOP}; STOP from START; RELEASE from {PREPARE, STOP}.  The output
 * is opened at PREPARE (FALSE from open() answers IO_ERR), started, stopped
 * and closed at RELEASE and on reset.
 *
 * Playback (tx): a buffer is accepted in PREPARE (pre-buffering), START and
 * STOP and completes only once the output has read all its frames through
 * vsnd_device_read(), so the output's pace is the guest's clock.  An output
 * that asks for frames the guest has not sent while the stream runs gets
 * silence (if it asks for it) and the stream records an underrun: one XRUN
 * event per underrun (when the driver enabled VIRTIO_SND_PCM_F_EVT_XRUNS).
 * RELEASE completes the buffers still queued with IO_ERR (their frames were
 * never played; counted in the stats and logged).
 *
 * Capture (rx): buffers queue in PREPARE, START and STOP; frames the input
 * hands in with vsnd_device_write() while the stream runs fill them in
 * order, and a buffer completes when full.  Frames with no buffer to go to
 * are dropped and counted as an overrun (one XRUN event per overrun).  STOP
 * completes a partly filled buffer with what it holds (the end of the
 * stream); RELEASE completes every buffer.
 *
 * latency_bytes in every status is what the output reports through
 * get_delay() (frames taken from the guest and not yet played, or captured
 * and not yet handed in), in bytes of the stream's format.
 *
 * Events: the driver's event buffers are held until something happens;
 * events without a buffer wait in a bounded queue (VSND_MAX_PENDING_EVENTS,
 * the oldest is dropped and counted).  PCM_PERIOD_ELAPSED is sent for every
 * period_bytes moved when the driver enabled
 * VIRTIO_SND_PCM_F_EVT_SHMEM_PERIODS; jack events on
 * vsnd_device_set_jack_connected(); CTL_NOTIFY when a control changes from
 * the host side (vsnd_device_set_control()).
 *
 * Controls (when config.controls): per stream a volume (INTEGER 0..100 with
 * a dB-scale TLV, -50 dB to 0 dB, 0 is mute) and a switch (BOOLEAN, 1 =
 * audible), named "PCM Playback/Capture Volume/Switch" with the stream's
 * index among those of its direction.  Their values survive
 * vsnd_device_reset(): a guest reconnecting keeps its levels.
 *
 * Answers to the guest:
 *   BAD_MSG   short or malformed request, id out of range, a transition the
 *             lifecycle does not allow, inconsistent sizes (period_bytes 0,
 *             buffer_bytes not a multiple of period_bytes, period_bytes not a
 *             multiple of the frame size), undefined format or rate values,
 *             a control value out of its range
 *   NOT_SUPP  unknown request, format/rate/channels/features not offered,
 *             buffer_bytes above VSND_MAX_BUFFER_BYTES, controls without
 *             VIRTIO_SND_F_CTLS, a control access the element lacks
 *   IO_ERR    transfers (the spec's only error for them): bad stream id or
 *             direction, wrong state, buffer larger than buffer_bytes,
 *             frames dropped at RELEASE; PREPARE the output refused
 * Each kind of guest error is logged once, then at most once a minute with a
 * count of the suppressed ones. */
#pragma once

#include <glib.h>

#include "vhu-vring.h"
#include "vsnd-proto.h"

G_BEGIN_DECLS

#define VSND_CTRL_QUEUE  0u
#define VSND_EVENT_QUEUE 1u
#define VSND_TX_QUEUE    2u
#define VSND_RX_QUEUE    3u
#define VSND_NUM_QUEUES  4u

#define VSND_MAX_STREAMS        256u
#define VSND_MAX_JACKS          256u
#define VSND_MAX_CHMAPS         256u
#define VSND_MAX_BUFFER_BYTES   (8u << 20)
#define VSND_MAX_PENDING_EVENTS 256u
#define VSND_VOLUME_MAX         100

/* Stream features the device offers: XRUN and period events. */
#define VSND_PCM_FEATURES                                                                          \
  ((1u << VIRTIO_SND_PCM_F_EVT_XRUNS) | (1u << VIRTIO_SND_PCM_F_EVT_SHMEM_PERIODS))

typedef struct _VsndDevice VsndDevice;

typedef enum {
  VSND_STATE_INITIAL, /* no parameters yet */
  VSND_STATE_SET_PARAMS,
  VSND_STATE_PREPARE,
  VSND_STATE_START,
  VSND_STATE_STOP,
  VSND_STATE_RELEASE,
} VsndPcmState;

typedef struct {
  guint32 hda_fn_nid;
  guint8 direction; /* VIRTIO_SND_D_* */
  guint8 channels_min, channels_max;
  guint64 formats; /* 1 << VIRTIO_SND_PCM_FMT_* */
  guint64 rates;   /* 1 << VIRTIO_SND_PCM_RATE_* */
} VsndStreamConfig;

typedef struct {
  guint32 hda_fn_nid;
  guint32 defconf; /* HDA pin default configuration */
  guint32 caps;    /* HDA pin capabilities */
  gboolean remap;  /* JACK_REMAP allowed */
  gboolean connected;
} VsndJackConfig;

typedef struct {
  guint32 hda_fn_nid;
  guint8 direction;
  guint8 channels; /* 1..VIRTIO_SND_CHMAP_MAX_SIZE */
  guint8 positions[VIRTIO_SND_CHMAP_MAX_SIZE];
} VsndChmapConfig;

typedef struct {
  guint n_streams; /* 1..VSND_MAX_STREAMS */
  VsndStreamConfig *streams;
  guint n_jacks;
  VsndJackConfig *jacks;
  guint n_chmaps;
  VsndChmapConfig *chmaps;
  gboolean controls; /* offer VIRTIO_SND_F_CTLS: volume and switch per stream */
} VsndDeviceConfig;

/* What SET_PARAMS chose, handed to open(). */
typedef struct {
  guint8 direction;
  guint8 format; /* VIRTIO_SND_PCM_FMT_* */
  guint32 rate;  /* frames per second */
  guint8 channels;
  guint32 frame_bytes;
  guint32 buffer_bytes, period_bytes;
  guint32 features; /* negotiated VIRTIO_SND_PCM_F_* */
  /* Channel positions from the first channel map of the stream's function
   * group and direction with this many channels; all NONE when none. */
  guint8 positions[VIRTIO_SND_CHMAP_MAX_SIZE];
} VsndPcmParams;

/* The audio stream output.  Calls happen inside device calls (lock held):
 * never block; hand work to another thread. */
typedef struct {
  /* PREPARE: get ready to move frames with @params.  FALSE: IO_ERR. */
  gboolean (*open)(gpointer data, guint stream, const VsndPcmParams *params);
  void (*start)(gpointer data, guint stream);
  void (*stop)(gpointer data, guint stream);
  /* RELEASE or reset: forget the stream. */
  void (*close)(gpointer data, guint stream);
  /* Optional: bytes taken and not yet played (output) or captured and not
   * yet written (input). */
  guint32 (*get_delay)(gpointer data, guint stream);
  /* Optional: the stream's controls changed (also called once per stream
   * when the iface is set).  @gain is linear, 0..1. */
  void (*set_volume)(gpointer data, guint stream, gdouble gain, gboolean mute);
  /* Optional: frames (tx) or buffers (rx) arrived for @stream. */
  void (*wake)(gpointer data, guint stream);
} VsndStreamIface;

typedef struct {
  /* @elem is done, @len bytes written into its writable part; the device no
   * longer touches it. */
  void (*complete)(gpointer data, guint qidx, VhuElem *elem, guint32 len);
  /* @elem is given back without an answer: reset, or an event buffer held
   * when its queue stopped (the caller may put it back on the ring). */
  void (*discard)(gpointer data, guint qidx, VhuElem *elem);
} VsndDeviceOps;

typedef struct {
  guint64 requests; /* control requests */
  guint64 errors;   /* requests and transfers answered with an error */
  guint64 tx_buffers, rx_buffers;
  guint64 tx_bytes, rx_bytes;  /* frames moved */
  guint64 underruns, overruns; /* xrun episodes */
  guint64 silence_bytes;       /* silence given to an output for lack of frames */
  guint64 dropped_tx_bytes;    /* never played (RELEASE, queue stop) */
  guint64 dropped_rx_bytes;    /* captured with no buffer to go to */
  guint64 events, events_dropped;
} VsndDeviceStats;

/* Checks @config; fills @error with a message for the user. */
gboolean vsnd_device_config_validate(const VsndDeviceConfig *config, GError **error);
/* Copies @config. */
VsndDevice *vsnd_device_new(const VsndDeviceConfig *config, const VsndDeviceOps *ops,
                            gpointer data);
/* Closes open streams and discards every held request (ops->discard). */
void vsnd_device_free(VsndDevice *dev);

/* The output for every stream (NULL iface: none; open() then fails). */
void vsnd_device_set_stream_iface(VsndDevice *dev, const VsndStreamIface *iface, gpointer data);

/* Device feature bits offered (VIRTIO_SND_F_CTLS with config.controls). */
guint64 vsnd_device_get_features(VsndDevice *dev);
void vsnd_device_set_features(VsndDevice *dev, guint64 features);
/* struct virtio_snd_config; @size bytes from offset 0 (at most 16). */
void vsnd_device_get_config(VsndDevice *dev, guint8 *config, gsize size);

/* Takes @elem popped from queue @qidx (always). */
void vsnd_device_submit(VsndDevice *dev, guint qidx, VhuElem *elem);
/* Queue @qidx stops handing out requests: tx buffers held complete with
 * IO_ERR (counted), rx buffers with the frames they hold, event buffers go
 * back through ops->discard, newest first (so they can be put back on the
 * ring: a VM pause keeps the guest's event buffers). */
void vsnd_device_queue_stopped(VsndDevice *dev, guint qidx);
/* The guest reset the device or the frontend left: streams closed and back
 * to the initial state, held requests discarded, pending events dropped.
 * Control values and jack states stay. */
void vsnd_device_reset(VsndDevice *dev);

/* Output side of playback stream @stream: copies up to @len bytes of guest
 * frames into @buf, completing each buffer once read whole.  Returns the
 * number of guest bytes.  With @fill and the stream running, the rest of
 * @buf is silence of the stream's format and the shortfall an underrun.
 * Returns 0 for a stream that is not an opened output. */
gsize vsnd_device_read(VsndDevice *dev, guint stream, guint8 *buf, gsize len, gboolean fill);
/* Input side of capture stream @stream: hands in @len bytes of frames.
 * Returns the bytes that went into guest buffers; while the stream runs the
 * rest is dropped and counted as an overrun. */
gsize vsnd_device_write(VsndDevice *dev, guint stream, const guint8 *buf, gsize len);
/* Bytes of guest buffers queued on @stream and not yet read (tx) or room
 * left in queued buffers (rx). */
gsize vsnd_device_get_queued(VsndDevice *dev, guint stream);
VsndPcmState vsnd_device_get_state(VsndDevice *dev, guint stream);
/* VIRTIO_SND_D_OUTPUT or _INPUT, as configured. */
guint8 vsnd_device_get_direction(VsndDevice *dev, guint stream);
/* The parameters a driver most likely picks for @stream (S16, 48 kHz and
 * stereo where offered, else the nearest offer), for an output to get
 * ready before the guest asks; positions are left NONE. */
void vsnd_device_get_preferred_params(VsndDevice *dev, guint stream, VsndPcmParams *params);
/* The parameters of @stream; FALSE before its first SET_PARAMS. */
gboolean vsnd_device_get_params(VsndDevice *dev, guint stream, VsndPcmParams *params);

/* Jack @jack was (dis)connected: JACK_INFO follows, and the guest gets an
 * event when the state changed. */
void vsnd_device_set_jack_connected(VsndDevice *dev, guint jack, gboolean connected);

/* Controls: ids 2 * stream (volume) and 2 * stream + 1 (switch).  set
 * checks the range, calls set_volume() and sends CTL_NOTIFY. */
guint vsnd_device_get_n_controls(VsndDevice *dev);
gboolean vsnd_device_set_control(VsndDevice *dev, guint control, gint32 value);
gint32 vsnd_device_get_control(VsndDevice *dev, guint control);
/* The linear gain of volume value @value (0..VSND_VOLUME_MAX). */
gdouble vsnd_volume_to_gain(gint32 value);

void vsnd_device_get_stats(VsndDevice *dev, VsndDeviceStats *stats);

/* Format helpers: bytes per sample (0 for formats without whole-byte
 * samples), the frame rate of a rate index (0 if undefined), silence. */
guint vsnd_format_sample_bytes(guint format);
guint32 vsnd_rate_to_hz(guint rate);
void vsnd_format_fill_silence(guint format, guint8 *buf, gsize len);

G_END_DECLS
