/* vsnd-proto.h: the virtio-sound wire format (virtio 1.3, section 5.14).
 *
 * Our own copy, because Debian 12's <linux/virtio_snd.h> predates the 1.3
 * control elements (VIRTIO_SND_F_CTLS, the `controls` config field, the
 * CTL_* requests and structures) and the 1.4 rates 12000 and 24000.  Never
 * include both headers in one file.
 *
 * Every multi-byte field is little-endian on the wire; the device model only
 * builds on little-endian hosts and uses the fields as host order.  Layouts
 * follow natural C alignment, as guests compile them: struct
 * virtio_snd_ctl_info has 4 bytes of padding before its 8-byte aligned union
 * (96 bytes in all).  The sizes are checked below. */
#pragma once

#include <glib.h>

#ifdef VIRTIO_SND_IF_H
#error "vsnd-proto.h and <linux/virtio_snd.h> define the same names"
#endif
#define VIRTIO_SND_IF_H /* keep the system header out from here on */

G_BEGIN_DECLS

/* Device feature bits. */
#define VIRTIO_SND_F_CTLS 0

/* Virtqueues. */
enum {
  VIRTIO_SND_VQ_CONTROL = 0,
  VIRTIO_SND_VQ_EVENT,
  VIRTIO_SND_VQ_TX,
  VIRTIO_SND_VQ_RX,
  VIRTIO_SND_VQ_MAX
};

/* Data flow directions. */
enum { VIRTIO_SND_D_OUTPUT = 0, VIRTIO_SND_D_INPUT };

/* Request codes, event codes and status codes. */
enum {
  VIRTIO_SND_R_JACK_INFO = 1,
  VIRTIO_SND_R_JACK_REMAP,

  VIRTIO_SND_R_PCM_INFO = 0x0100,
  VIRTIO_SND_R_PCM_SET_PARAMS,
  VIRTIO_SND_R_PCM_PREPARE,
  VIRTIO_SND_R_PCM_RELEASE,
  VIRTIO_SND_R_PCM_START,
  VIRTIO_SND_R_PCM_STOP,

  VIRTIO_SND_R_CHMAP_INFO = 0x0200,

  VIRTIO_SND_R_CTL_INFO = 0x0300,
  VIRTIO_SND_R_CTL_ENUM_ITEMS,
  VIRTIO_SND_R_CTL_READ,
  VIRTIO_SND_R_CTL_WRITE,
  VIRTIO_SND_R_CTL_TLV_READ,
  VIRTIO_SND_R_CTL_TLV_WRITE,
  VIRTIO_SND_R_CTL_TLV_COMMAND,

  VIRTIO_SND_EVT_JACK_CONNECTED = 0x1000,
  VIRTIO_SND_EVT_JACK_DISCONNECTED,

  VIRTIO_SND_EVT_PCM_PERIOD_ELAPSED = 0x1100,
  VIRTIO_SND_EVT_PCM_XRUN,

  VIRTIO_SND_EVT_CTL_NOTIFY = 0x1200,

  VIRTIO_SND_S_OK = 0x8000,
  VIRTIO_SND_S_BAD_MSG,
  VIRTIO_SND_S_NOT_SUPP,
  VIRTIO_SND_S_IO_ERR
};

struct virtio_snd_config {
  guint32 jacks;
  guint32 streams;
  guint32 chmaps;
  guint32 controls; /* valid only with VIRTIO_SND_F_CTLS */
};

struct virtio_snd_hdr {
  guint32 code;
};

struct virtio_snd_event {
  struct virtio_snd_hdr hdr;
  guint32 data; /* jack, stream or (ctl_event) control id */
};

/* JACK_INFO, PCM_INFO, CHMAP_INFO, CTL_INFO. */
struct virtio_snd_query_info {
  struct virtio_snd_hdr hdr;
  guint32 start_id;
  guint32 count;
  guint32 size; /* of one info structure */
};

struct virtio_snd_info {
  guint32 hda_fn_nid;
};

/* Jacks. */
struct virtio_snd_jack_hdr {
  struct virtio_snd_hdr hdr;
  guint32 jack_id;
};

enum { VIRTIO_SND_JACK_F_REMAP = 0 };

struct virtio_snd_jack_info {
  struct virtio_snd_info hdr;
  guint32 features; /* 1 << VIRTIO_SND_JACK_F_* */
  guint32 hda_reg_defconf;
  guint32 hda_reg_caps;
  guint8 connected;
  guint8 padding[7];
};

struct virtio_snd_jack_remap {
  struct virtio_snd_jack_hdr hdr;
  guint32 association;
  guint32 sequence;
};

/* PCM streams. */
struct virtio_snd_pcm_hdr {
  struct virtio_snd_hdr hdr;
  guint32 stream_id;
};

enum {
  VIRTIO_SND_PCM_F_SHMEM_HOST = 0,
  VIRTIO_SND_PCM_F_SHMEM_GUEST,
  VIRTIO_SND_PCM_F_MSG_POLLING,
  VIRTIO_SND_PCM_F_EVT_SHMEM_PERIODS,
  VIRTIO_SND_PCM_F_EVT_XRUNS
};

enum {
  VIRTIO_SND_PCM_FMT_IMA_ADPCM = 0,   /*  4 /  4 bits */
  VIRTIO_SND_PCM_FMT_MU_LAW,          /*  8 /  8 bits */
  VIRTIO_SND_PCM_FMT_A_LAW,           /*  8 /  8 bits */
  VIRTIO_SND_PCM_FMT_S8,              /*  8 /  8 bits */
  VIRTIO_SND_PCM_FMT_U8,              /*  8 /  8 bits */
  VIRTIO_SND_PCM_FMT_S16,             /* 16 / 16 bits */
  VIRTIO_SND_PCM_FMT_U16,             /* 16 / 16 bits */
  VIRTIO_SND_PCM_FMT_S18_3,           /* 18 / 24 bits */
  VIRTIO_SND_PCM_FMT_U18_3,           /* 18 / 24 bits */
  VIRTIO_SND_PCM_FMT_S20_3,           /* 20 / 24 bits */
  VIRTIO_SND_PCM_FMT_U20_3,           /* 20 / 24 bits */
  VIRTIO_SND_PCM_FMT_S24_3,           /* 24 / 24 bits */
  VIRTIO_SND_PCM_FMT_U24_3,           /* 24 / 24 bits */
  VIRTIO_SND_PCM_FMT_S20,             /* 20 / 32 bits */
  VIRTIO_SND_PCM_FMT_U20,             /* 20 / 32 bits */
  VIRTIO_SND_PCM_FMT_S24,             /* 24 / 32 bits */
  VIRTIO_SND_PCM_FMT_U24,             /* 24 / 32 bits */
  VIRTIO_SND_PCM_FMT_S32,             /* 32 / 32 bits */
  VIRTIO_SND_PCM_FMT_U32,             /* 32 / 32 bits */
  VIRTIO_SND_PCM_FMT_FLOAT,           /* 32 / 32 bits */
  VIRTIO_SND_PCM_FMT_FLOAT64,         /* 64 / 64 bits */
  VIRTIO_SND_PCM_FMT_DSD_U8,          /*  8 /  8 bits */
  VIRTIO_SND_PCM_FMT_DSD_U16,         /* 16 / 16 bits */
  VIRTIO_SND_PCM_FMT_DSD_U32,         /* 32 / 32 bits */
  VIRTIO_SND_PCM_FMT_IEC958_SUBFRAME, /* 32 / 32 bits */
  VIRTIO_SND_PCM_FMT_COUNT
};

enum {
  VIRTIO_SND_PCM_RATE_5512 = 0,
  VIRTIO_SND_PCM_RATE_8000,
  VIRTIO_SND_PCM_RATE_11025,
  VIRTIO_SND_PCM_RATE_16000,
  VIRTIO_SND_PCM_RATE_22050,
  VIRTIO_SND_PCM_RATE_32000,
  VIRTIO_SND_PCM_RATE_44100,
  VIRTIO_SND_PCM_RATE_48000,
  VIRTIO_SND_PCM_RATE_64000,
  VIRTIO_SND_PCM_RATE_88200,
  VIRTIO_SND_PCM_RATE_96000,
  VIRTIO_SND_PCM_RATE_176400,
  VIRTIO_SND_PCM_RATE_192000,
  VIRTIO_SND_PCM_RATE_384000,
  VIRTIO_SND_PCM_RATE_12000, /* 1.4 */
  VIRTIO_SND_PCM_RATE_24000, /* 1.4 */
  VIRTIO_SND_PCM_RATE_COUNT
};

struct virtio_snd_pcm_info {
  struct virtio_snd_info hdr;
  guint32 features; /* 1 << VIRTIO_SND_PCM_F_* */
  guint64 formats;  /* 1 << VIRTIO_SND_PCM_FMT_* */
  guint64 rates;    /* 1 << VIRTIO_SND_PCM_RATE_* */
  guint8 direction;
  guint8 channels_min;
  guint8 channels_max;
  guint8 padding[5];
};

struct virtio_snd_pcm_set_params {
  struct virtio_snd_pcm_hdr hdr; /* VIRTIO_SND_R_PCM_SET_PARAMS */
  guint32 buffer_bytes;
  guint32 period_bytes;
  guint32 features;
  guint8 channels;
  guint8 format;
  guint8 rate;
  guint8 padding;
};

/* tx and rx requests: xfer, then the frames, then the status. */
struct virtio_snd_pcm_xfer {
  guint32 stream_id;
};

struct virtio_snd_pcm_status {
  guint32 status;
  guint32 latency_bytes;
};

/* Channel maps. */
struct virtio_snd_chmap_hdr {
  struct virtio_snd_hdr hdr;
  guint32 chmap_id;
};

enum {
  VIRTIO_SND_CHMAP_NONE = 0, /* undefined */
  VIRTIO_SND_CHMAP_NA,       /* silent */
  VIRTIO_SND_CHMAP_MONO,
  VIRTIO_SND_CHMAP_FL,
  VIRTIO_SND_CHMAP_FR,
  VIRTIO_SND_CHMAP_RL,
  VIRTIO_SND_CHMAP_RR,
  VIRTIO_SND_CHMAP_FC,
  VIRTIO_SND_CHMAP_LFE,
  VIRTIO_SND_CHMAP_SL,
  VIRTIO_SND_CHMAP_SR,
  VIRTIO_SND_CHMAP_RC,
  VIRTIO_SND_CHMAP_FLC,
  VIRTIO_SND_CHMAP_FRC,
  VIRTIO_SND_CHMAP_RLC,
  VIRTIO_SND_CHMAP_RRC,
  VIRTIO_SND_CHMAP_FLW,
  VIRTIO_SND_CHMAP_FRW,
  VIRTIO_SND_CHMAP_FLH,
  VIRTIO_SND_CHMAP_FCH,
  VIRTIO_SND_CHMAP_FRH,
  VIRTIO_SND_CHMAP_TC,
  VIRTIO_SND_CHMAP_TFL,
  VIRTIO_SND_CHMAP_TFR,
  VIRTIO_SND_CHMAP_TFC,
  VIRTIO_SND_CHMAP_TRL,
  VIRTIO_SND_CHMAP_TRR,
  VIRTIO_SND_CHMAP_TRC,
  VIRTIO_SND_CHMAP_TFLC,
  VIRTIO_SND_CHMAP_TFRC,
  VIRTIO_SND_CHMAP_TSL,
  VIRTIO_SND_CHMAP_TSR,
  VIRTIO_SND_CHMAP_LLFE,
  VIRTIO_SND_CHMAP_RLFE,
  VIRTIO_SND_CHMAP_BC,
  VIRTIO_SND_CHMAP_BLC,
  VIRTIO_SND_CHMAP_BRC,
  VIRTIO_SND_CHMAP_COUNT
};

#define VIRTIO_SND_CHMAP_MAX_SIZE 18

struct virtio_snd_chmap_info {
  struct virtio_snd_info hdr;
  guint8 direction;
  guint8 channels;
  guint8 positions[VIRTIO_SND_CHMAP_MAX_SIZE];
};

/* Control elements (VIRTIO_SND_F_CTLS). */
struct virtio_snd_ctl_hdr {
  struct virtio_snd_hdr hdr;
  guint32 control_id;
};

/* ctl_info.role: UNDEFINED, or (ROLE << 1) | direction. */
enum {
  VIRTIO_SND_CTL_ROLE_UNDEFINED = 0,
  VIRTIO_SND_CTL_ROLE_VOLUME,
  VIRTIO_SND_CTL_ROLE_MUTE,
  VIRTIO_SND_CTL_ROLE_GAIN
};

enum {
  VIRTIO_SND_CTL_TYPE_BOOLEAN = 0,
  VIRTIO_SND_CTL_TYPE_INTEGER,
  VIRTIO_SND_CTL_TYPE_INTEGER64,
  VIRTIO_SND_CTL_TYPE_ENUMERATED,
  VIRTIO_SND_CTL_TYPE_BYTES,
  VIRTIO_SND_CTL_TYPE_IEC958
};

enum {
  VIRTIO_SND_CTL_ACCESS_READ = 0,
  VIRTIO_SND_CTL_ACCESS_WRITE,
  VIRTIO_SND_CTL_ACCESS_VOLATILE,
  VIRTIO_SND_CTL_ACCESS_INACTIVE,
  VIRTIO_SND_CTL_ACCESS_TLV_READ,
  VIRTIO_SND_CTL_ACCESS_TLV_WRITE,
  VIRTIO_SND_CTL_ACCESS_TLV_COMMAND
};

#define VIRTIO_SND_CTL_NAME_SIZE 44

struct virtio_snd_ctl_info {
  struct virtio_snd_info hdr;
  guint32 role;
  guint32 type;
  guint32 access; /* 1 << VIRTIO_SND_CTL_ACCESS_* */
  guint32 count;  /* members of the value */
  guint32 index;  /* for a non-unique name */
  guint8 name[VIRTIO_SND_CTL_NAME_SIZE];
  union {
    struct {
      gint32 min, max, step;
    } integer;
    struct {
      gint64 min, max, step;
    } integer64;
    struct {
      guint32 items;
    } enumerated;
  } value;
};

struct virtio_snd_ctl_enum_item {
  guint8 item[64];
};

struct virtio_snd_ctl_iec958 {
  guint8 status[24];
  guint8 subcode[147];
  guint8 pad;
  guint8 dig_subframe[4];
};

/* CTL_READ answers it after the header; CTL_WRITE carries it after the
 * ctl_hdr. */
struct virtio_snd_ctl_value {
  union {
    gint32 integer[128];
    gint64 integer64[64];
    guint32 enumerated[128];
    guint8 bytes[512];
    struct virtio_snd_ctl_iec958 iec958;
  } value;
};

/* Largest value a driver may send in CTL_TLV_WRITE/COMMAND. */
#define VIRTIO_SND_CTL_TLV_MAX_VALUE 65536u

/* Metadata: length is the size of value in bytes, a multiple of 4. */
struct virtio_snd_ctl_tlv {
  guint32 type;
  guint32 length;
  guint32 value[];
};

enum {
  VIRTIO_SND_CTL_EVT_MASK_VALUE = 0,
  VIRTIO_SND_CTL_EVT_MASK_INFO,
  VIRTIO_SND_CTL_EVT_MASK_TLV
};

struct virtio_snd_ctl_event {
  struct virtio_snd_hdr hdr; /* VIRTIO_SND_EVT_CTL_NOTIFY */
  guint16 control_id;
  guint16 mask; /* 1 << VIRTIO_SND_CTL_EVT_MASK_* */
};

/* ALSA's TLV types that describe a volume range (SNDRV_CTL_TLVT_*). */
#define VSND_TLV_DB_SCALE      1u
#define VSND_TLV_DB_SCALE_MUTE 0x10000u /* in the second word: the minimum is mute */

G_STATIC_ASSERT(sizeof(struct virtio_snd_config) == 16);
G_STATIC_ASSERT(sizeof(struct virtio_snd_event) == 8);
G_STATIC_ASSERT(sizeof(struct virtio_snd_query_info) == 16);
G_STATIC_ASSERT(sizeof(struct virtio_snd_jack_info) == 24);
G_STATIC_ASSERT(sizeof(struct virtio_snd_jack_remap) == 16);
G_STATIC_ASSERT(sizeof(struct virtio_snd_pcm_info) == 32);
G_STATIC_ASSERT(sizeof(struct virtio_snd_pcm_set_params) == 24);
G_STATIC_ASSERT(sizeof(struct virtio_snd_pcm_status) == 8);
G_STATIC_ASSERT(sizeof(struct virtio_snd_chmap_info) == 24);
G_STATIC_ASSERT(sizeof(struct virtio_snd_ctl_hdr) == 8);
G_STATIC_ASSERT(sizeof(struct virtio_snd_ctl_info) == 96);
G_STATIC_ASSERT(G_STRUCT_OFFSET(struct virtio_snd_ctl_info, value) == 72);
G_STATIC_ASSERT(sizeof(struct virtio_snd_ctl_enum_item) == 64);
G_STATIC_ASSERT(sizeof(struct virtio_snd_ctl_iec958) == 176);
G_STATIC_ASSERT(sizeof(struct virtio_snd_ctl_value) == 512);
G_STATIC_ASSERT(sizeof(struct virtio_snd_ctl_tlv) == 8);
G_STATIC_ASSERT(sizeof(struct virtio_snd_ctl_event) == 8);

G_END_DECLS
