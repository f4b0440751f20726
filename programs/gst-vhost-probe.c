/* gst-vhost-probe: connect to a vhost-user backend as QEMU would and print
 * what it offers; for a GPU, also run the display-protocol handshake. */
#include <signal.h>
#include <gio/gio.h>
#include <linux/virtio_gpu.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vhu-display.h"
#include "vhu-frontend.h"

#define BIT(n) (G_GUINT64_CONSTANT(1) << (n))

typedef enum {
  KIND_UNKNOWN,
  KIND_GPU,
  KIND_SOUND,
} DeviceKind;

static const char *const kind_names[] = { "unknown", "gpu", "sound" };

typedef struct {
  int timeout_ms;
  gboolean no_display;
  const char *device;
} Options;

/* --- names --------------------------------------------------------------- */

static const char *
transport_bit_name(guint bit)
{
  switch (bit) {
    case 24:
      return "NOTIFY_ON_EMPTY";
    case 26:
      return "LOG_ALL";
    case 27:
      return "ANY_LAYOUT";
    case 28:
      return "RING_INDIRECT_DESC";
    case 29:
      return "RING_EVENT_IDX";
    case 30:
      return "PROTOCOL_FEATURES";
    case 32:
      return "VERSION_1";
    case 33:
      return "ACCESS_PLATFORM";
    case 34:
      return "RING_PACKED";
    case 35:
      return "IN_ORDER";
    case 36:
      return "ORDER_PLATFORM";
    case 37:
      return "SR_IOV";
    case 38:
      return "NOTIFICATION_DATA";
    case 39:
      return "NOTIF_CONFIG_DATA";
    case 40:
      return "RING_RESET";
    default:
      return NULL;
  }
}

static const char *
device_bit_name(DeviceKind kind, guint bit)
{
  static const char *const gpu[]
      = { "GPU_VIRGL", "GPU_EDID", "GPU_RESOURCE_UUID", "GPU_RESOURCE_BLOB", "GPU_CONTEXT_INIT" };

  if (kind == KIND_GPU && bit < G_N_ELEMENTS(gpu))
    return gpu[bit];
  if (kind == KIND_SOUND && bit == 0)
    return "SND_CTLS";
  return NULL;
}

static const char *
protocol_bit_name(guint bit)
{
  static const char *const names[] = {
    "MQ",
    "LOG_SHMFD",
    "RARP",
    "REPLY_ACK",
    "NET_MTU",
    "BACKEND_REQ",
    "CROSS_ENDIAN",
    "CRYPTO_SESSION",
    "PAGEFAULT",
    "CONFIG",
    "BACKEND_SEND_FD",
    "HOST_NOTIFIER",
    "INFLIGHT_SHMFD",
    "RESET_DEVICE",
    "INBAND_NOTIFICATIONS",
    "CONFIGURE_MEM_SLOTS",
    "STATUS",
    "XEN_MMAP",
    "SHARED_OBJECT",
    "DEVICE_STATE",
    "SHMEM",
  };

  return bit < G_N_ELEMENTS(names) ? names[bit] : NULL;
}

static const char *
display_bit_name(guint bit)
{
  return bit == VHU_DISPLAY_PF_EDID ? "EDID" : bit == VHU_DISPLAY_PF_DMABUF2 ? "DMABUF2" : NULL;
}

typedef const char *(*BitNamer)(guint bit, gpointer data);

static const char *
name_transport_or_device(guint bit, gpointer data)
{
  const char *n = transport_bit_name(bit);

  return n != NULL ? n : device_bit_name(*(DeviceKind *)data, bit);
}

static const char *
name_protocol(guint bit, gpointer data)
{
  return protocol_bit_name(bit);
}

static const char *
name_display(guint bit, gpointer data)
{
  return display_bit_name(bit);
}

/* "0x... [A, B, bit 7]" */
static void
print_bits(const char *label, guint64 value, BitNamer namer, gpointer data)
{
  GString *s = g_string_new(NULL);

  for (guint bit = 0; bit < 64; bit++) {
    const char *name;

    if (!(value & BIT(bit)))
      continue;
    if (s->len > 0)
      g_string_append(s, ", ");
    name = namer(bit, data);
    if (name != NULL)
      g_string_append(s, name);
    else
      g_string_append_printf(s, "bit %u", bit);
  }
  printf("%-30s 0x%016" G_GINT64_MODIFIER "x [%s]\n", label, value, s->str);
  g_string_free(s, TRUE);
}

/* --- device kind --------------------------------------------------------- */

static guint32
cfg_u32(const guint8 *cfg, guint i)
{
  guint32 v;

  memcpy(&v, cfg + 4 * i, sizeof v);
  return v;
}

/* virtio_gpu_config: events_read only knows DISPLAY (bit 0), events_clear
 * reads back 0, at most 16 scanouts, a handful of capsets.  QEMU's backend
 * leaves num_scanouts 0 (QEMU fills it in itself). */
static gboolean
looks_like_gpu(const guint8 *cfg)
{
  return cfg_u32(cfg, 0) <= 1 && cfg_u32(cfg, 1) == 0 && cfg_u32(cfg, 2) <= 16
         && cfg_u32(cfg, 3) <= 16;
}

/* virtio_snd_config: a few jacks, at least one stream, a few channel maps. */
static gboolean
looks_like_sound(const guint8 *cfg, gsize size)
{
  return cfg_u32(cfg, 0) <= 64 && cfg_u32(cfg, 1) >= 1 && cfg_u32(cfg, 1) <= 64
         && cfg_u32(cfg, 2) <= 64 && (size < 16 || cfg_u32(cfg, 3) <= 1024);
}

/* Reads the config space: 16 bytes (gpu, sound with CTLS), else 12 (sound). */
static gsize
read_config(VhuFrontend *fe, guint8 *cfg, GError **error)
{
  g_autoptr(GError) first = NULL;

  if (vhu_frontend_get_config(fe, 0, cfg, 16, &first))
    return 16;
  if (vhu_frontend_get_config(fe, 0, cfg, 12, error))
    return 12;
  g_prefix_error(error, "GET_CONFIG of 16 bytes: %s; of 12 bytes: ", first->message);
  return 0;
}

static DeviceKind
guess_kind(VhuFrontend *fe, const guint8 *cfg, gsize size, const char **why)
{
  guint nq = vhu_frontend_get_num_queues(fe);
  guint64 dev_bits = vhu_frontend_get_backend_features(fe) & 0xffffff;
  gboolean gpu = size == 16 && looks_like_gpu(cfg) && (nq == 0 || nq == 2) && dev_bits < BIT(5);
  gboolean sound
      = size >= 12 && looks_like_sound(cfg, size) && (nq == 0 || nq == 4) && dev_bits < BIT(1);

  /* Exclusive: events_clear (gpu) is 0, streams (sound) is not. */
  if (gpu) {
    *why = "guessed: config space reads as virtio_gpu_config";
    return KIND_GPU;
  }
  if (sound) {
    *why = "guessed: config space reads as virtio_snd_config";
    return KIND_SOUND;
  }
  *why = "config space matches no known device; see --device";
  return KIND_UNKNOWN;
}

static void
print_config(DeviceKind kind, const guint8 *cfg, gsize size)
{
  if (kind == KIND_GPU && size == 16) {
    printf("%-30s events_read=%u events_clear=%u num_scanouts=%u num_capsets=%u\n",
           "config:", cfg_u32(cfg, 0), cfg_u32(cfg, 1), cfg_u32(cfg, 2), cfg_u32(cfg, 3));
  } else if (kind == KIND_SOUND && size >= 12) {
    printf("%-30s jacks=%u streams=%u chmaps=%u", "config:", cfg_u32(cfg, 0), cfg_u32(cfg, 1),
           cfg_u32(cfg, 2));
    if (size == 16)
      printf(" controls=%u", cfg_u32(cfg, 3));
    printf("\n");
  } else {
    printf("%-30s", "config:");
    for (gsize i = 0; i < size; i++)
      printf(" %02x", cfg[i]);
    printf(" (%" G_GSIZE_FORMAT " bytes)\n", size);
  }
}

/* --- GPU display handshake ----------------------------------------------- */

static gboolean
gpu_display_info(VhuFrontend *fe, GError **error)
{
  struct virtio_gpu_ctrl_hdr req = { .type = VIRTIO_GPU_CMD_GET_DISPLAY_INFO };
  struct virtio_gpu_resp_display_info info;
  gssize n;

  n = vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 0), &req, sizeof req, &info, sizeof info,
                                error);
  if (n < 0) {
    g_prefix_error(error, "GET_DISPLAY_INFO: ");
    return FALSE;
  }
  if ((gsize)n < sizeof info.hdr || info.hdr.type != VIRTIO_GPU_RESP_OK_DISPLAY_INFO) {
    printf("%-30s answer 0x%x, %" G_GSSIZE_FORMAT " bytes\n",
           "display info (control queue):", (gsize)n >= sizeof info.hdr ? info.hdr.type : 0, n);
    return TRUE;
  }
  printf("%-30s OK_DISPLAY_INFO\n", "display info (control queue):");
  for (guint i = 0; i < VIRTIO_GPU_MAX_SCANOUTS; i++) {
    char label[32];

    if (!info.pmodes[i].enabled)
      continue;
    g_snprintf(label, sizeof label, "  scanout %u:", i);
    printf("%-30s %ux%u+%u+%u enabled\n", label, info.pmodes[i].r.width, info.pmodes[i].r.height,
           info.pmodes[i].r.x, info.pmodes[i].r.y);
  }
  return TRUE;
}

static gboolean
gpu_edid(VhuFrontend *fe, GError **error)
{
  struct virtio_gpu_cmd_get_edid req = { .hdr.type = VIRTIO_GPU_CMD_GET_EDID, .scanout = 0 };
  g_autofree struct virtio_gpu_resp_edid *resp = g_new0(struct virtio_gpu_resp_edid, 1);
  gssize n;

  n = vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 0), &req, sizeof req, resp, sizeof *resp,
                                error);
  if (n < 0) {
    g_prefix_error(error, "GET_EDID: ");
    return FALSE;
  }
  if (resp->hdr.type == VIRTIO_GPU_RESP_OK_EDID)
    printf("%-30s OK_EDID, %u bytes\n", "edid (scanout 0):", resp->size);
  else
    printf("%-30s answer 0x%x\n", "edid (scanout 0):", resp->hdr.type);
  return TRUE;
}

static void
print_display_stats(VhuDisplayServer *ds, guint64 offered)
{
  VhuDisplayStats st;

  vhu_display_server_get_stats(ds, &st);
  if (st.protocol_features_requests == 0) {
    printf("%-30s backend never asked (QEMU 7.2-style: no EDID, no DMABUF2)\n",
           "display protocol:");
  } else {
    print_bits("display protocol offered:", offered, name_display, NULL);
    if (st.set_protocol_features > 0)
      print_bits("display protocol asked for:", st.negotiated_features, name_display, NULL);
    else
      printf("%-30s nothing (no SET_PROTOCOL_FEATURES)\n", "display protocol asked for:");
  }
  printf("%-30s %" G_GUINT64_FORMAT " messages: GET_DISPLAY_INFO x%" G_GUINT64_FORMAT
         ", GET_EDID x%" G_GUINT64_FORMAT ", SCANOUT x%" G_GUINT64_FORMAT
         ", UPDATE x%" G_GUINT64_FORMAT ", errors %" G_GUINT64_FORMAT "\n",
         "display socket:", st.messages, st.display_info_requests, st.edid_requests, st.scanouts,
         st.updates, st.errors);
}

/* Starts the device as QEMU does at DRIVER_OK, display socket first, with a
 * tiny guest memory, and asks for the display info and EDID. */
static gboolean
gpu_handshake(VhuFrontend *fe, const guint8 *cfg, GError **error)
{
  VhuDisplayConfig dc = {
    .num_scanouts = cfg_u32(cfg, 2) >= 1 && cfg_u32(cfg, 2) <= 16 ? cfg_u32(cfg, 2) : 1,
    .width = 1280,
    .height = 800,
    .protocol_features = BIT(VHU_DISPLAY_PF_EDID) | BIT(VHU_DISPLAY_PF_DMABUF2),
  };
  const guint sizes[2] = { 64, 16 };
  guint nq = vhu_frontend_get_num_queues(fe);
  guint64 offer = vhu_frontend_get_backend_features(fe);
  /* EDID as a guest would ack it; never VIRGL (it needs a render node). */
  guint64 drv = (offer & BIT(VIRTIO_GPU_F_EDID)) | BIT(28) | BIT(29);
  g_autoptr(VhuDisplayServer) ds = vhu_display_server_new(&dc);
  gboolean ok;

  if (!vhu_frontend_add_region(fe, 0, 1 << 20, error) || !vhu_display_server_attach(ds, fe, error)
      || !vhu_frontend_start(fe, drv, sizes, nq == 1 ? 1 : 2, error))
    return FALSE;
  print_bits("driver features acked:", vhu_frontend_get_driver_features(fe),
             name_transport_or_device, &(DeviceKind){ KIND_GPU });
  ok = gpu_display_info(fe, error) && (!(drv & BIT(VIRTIO_GPU_F_EDID)) || gpu_edid(fe, error));
  print_display_stats(ds, dc.protocol_features);
  if (!ok)
    return FALSE;
  return vhu_frontend_stop(fe, error);
}

/* --- main ---------------------------------------------------------------- */

static gboolean
probe(const char *path, const Options *opt, GError **error)
{
  g_autoptr(VhuFrontend) fe = vhu_frontend_connect(path, error);
  guint8 cfg[16] = { 0 };
  gsize cfg_size = 0;
  DeviceKind kind = KIND_UNKNOWN;
  const char *why = "forced with --device";
  guint64 features;

  if (fe == NULL)
    return FALSE;
  vhu_frontend_set_timeout(fe, (guint)opt->timeout_ms);
  if (!vhu_frontend_init(fe, G_MAXUINT64, error))
    return FALSE;
  features = vhu_frontend_get_backend_features(fe);
  if (g_strcmp0(opt->device, "gpu") == 0)
    kind = KIND_GPU;
  else if (g_strcmp0(opt->device, "sound") == 0)
    kind = KIND_SOUND;

  if (vhu_frontend_has_protocol_feature(fe, VHU_PF_CONFIG)) {
    if (kind == KIND_SOUND && !(features & BIT(0)))
      cfg_size = vhu_frontend_get_config(fe, 0, cfg, 12, error) ? 12 : 0;
    else
      cfg_size = read_config(fe, cfg, error);
    if (cfg_size == 0)
      return FALSE;
    if (kind == KIND_UNKNOWN)
      kind = guess_kind(fe, cfg, cfg_size, &why);
  } else if (kind == KIND_UNKNOWN) {
    why = "no config space (CONFIG not offered)";
  }

  printf("%-30s %s\n", "socket:", path);
  printf("%-30s %s (%s)\n", "device:", kind_names[kind], why);
  print_bits("virtio features:", features, name_transport_or_device, &kind);
  print_bits("protocol features offered:", vhu_frontend_get_backend_protocol_features(fe),
             name_protocol, NULL);
  print_bits("protocol features negotiated:", vhu_frontend_get_protocol_features(fe), name_protocol,
             NULL);
  if (vhu_frontend_has_protocol_feature(fe, VHU_PF_MQ))
    printf("%-30s %u\n", "queues:", vhu_frontend_get_num_queues(fe));
  else
    printf("%-30s unknown (MQ not offered)\n", "queues:");
  if (vhu_frontend_has_protocol_feature(fe, VHU_PF_CONFIGURE_MEM_SLOTS))
    printf("%-30s %" G_GUINT64_FORMAT "\n", "max mem slots:", vhu_frontend_get_max_mem_slots(fe));
  else
    printf("%-30s - (SET_MEM_TABLE, at most 8 regions)\n", "max mem slots:");
  if (vhu_frontend_has_protocol_feature(fe, VHU_PF_STATUS)) {
    guint8 status;

    if (!vhu_frontend_get_status(fe, &status, error))
      return FALSE;
    printf("%-30s 0x%02x\n", "device status:", status);
  }
  if (cfg_size > 0)
    print_config(kind, cfg, cfg_size);
  else
    printf("%-30s none\n", "config:");
  fflush(stdout);

  if (kind == KIND_GPU && !opt->no_display) {
    if (cfg_size != 16)
      memset(cfg, 0, sizeof cfg);
    if (!gpu_handshake(fe, cfg, error))
      return FALSE;
  }
  return TRUE;
}

int
main(int argc, char **argv)
{
  Options opt = { .timeout_ms = VHU_FRONTEND_DEFAULT_TIMEOUT_MS };
  g_autofree char *device = NULL;
  const GOptionEntry entries[] = {
    { "timeout", 't', 0, G_OPTION_ARG_INT, &opt.timeout_ms,
      "Wait at most MS milliseconds for each reply (default 5000)", "MS" },
    { "no-display", 0, 0, G_OPTION_ARG_NONE, &opt.no_display,
      "GPU: do not start the device or run the display handshake", NULL },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "Device kind: gpu, sound or auto (default)",
      "KIND" },
    { NULL },
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("SOCKET");
  g_autoptr(GError) error = NULL;

  /* A peer that goes away is an error return, never the end of us. */
  signal(SIGPIPE, SIG_IGN);
  g_option_context_set_summary(ctx, "Connect to a vhost-user backend as QEMU would and print what "
                                    "it offers.");
  g_option_context_set_description(
      ctx, "Prints the virtio and protocol features (hex and names), the queue count, the\n"
           "memory slots, the device status and the config space.  vhost-user has no message\n"
           "that names the device, so with --device auto the kind is guessed: a 16-byte\n"
           "config that reads as virtio_gpu_config (events_read <= 1, events_clear 0, at most\n"
           "16 scanouts and capsets) with 2 queues means gpu; a 12- or 16-byte config that\n"
           "reads as virtio_snd_config (1..64 streams, few jacks and channel maps) with 4\n"
           "queues means sound; anything else is printed as a hex dump.\n"
           "\n"
           "For a GPU the device is then started like QEMU does at DRIVER_OK: a display\n"
           "socket is handed over with GPU_SET_SOCKET, 1 MiB of guest memory and two queues\n"
           "are set up, and GET_DISPLAY_INFO (and GET_EDID when offered) go over the control\n"
           "queue.  It prints what the backend asked for on the display socket (the protocol\n"
           "features QEMU 10's backend sets: EDID, DMABUF2) and its display info answer.\n"
           "\n"
           "Exit status: 0 on success, 1 when the socket cannot be reached or the backend\n"
           "misbehaves (bad reply, timeout), 2 on a usage error.\n"
           "\n"
           "Example: gst-vhost-probe /run/gpu.sock");
  g_option_context_add_main_entries(ctx, entries, NULL);
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    fprintf(stderr, "gst-vhost-probe: %s\n", error->message);
    return 2;
  }
  opt.device = device;
  if (argc != 2 || opt.timeout_ms <= 0
      || (opt.device != NULL && strcmp(opt.device, "gpu") != 0 && strcmp(opt.device, "sound") != 0
          && strcmp(opt.device, "auto") != 0)) {
    g_autofree char *help = g_option_context_get_help(ctx, TRUE, NULL);

    fprintf(stderr, "%s", help);
    return 2;
  }
  if (!probe(argv[1], &opt, &error)) {
    fflush(stdout);
    fprintf(stderr, "gst-vhost-probe: %s\n", error->message);
    return 1;
  }
  return 0;
}
