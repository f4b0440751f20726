/* vcf-checks-gpu.c: virtio-gpu 2D commands (virtio 1.3 §5.7) and the
 * vhost-user-gpu display socket towards QEMU.
 *
 * Every check attaches a display socket (VhuDisplayServer plays QEMU's end)
 * before the start, as QEMU does at DRIVER_OK, and uses resource ids and
 * guest memory of its own session only. */
#include <linux/virtio_gpu.h>
#include <string.h>

#include "vcf-check.h"
#include "vhu-display.h"

#define BIT(n)       (G_GUINT64_CONSTANT(1) << (n))
#define GPU_FEATURES (BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX) | BIT(1))
#define RES          7u
#define W            64u
#define H            64u
#define FMT          VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
#define HDR(t)       ((struct virtio_gpu_ctrl_hdr){ .type = (t) })

typedef struct {
  VcfSession *s;
  VhuDisplayServer *ds;
  guint64 backing; /* W*H*4 bytes of guest memory */
} Gpu;

static void
gpu_clear(Gpu *g)
{
  g_clear_pointer(&g->s, vcf_session_free);
  g_clear_pointer(&g->ds, vhu_display_server_free);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(Gpu, gpu_clear)

static gboolean
gpu_open(VcfCtx *ctx, Gpu *g)
{
  g_autoptr(GError) error = NULL;
  VhuDisplayConfig dc = { .num_scanouts = 1, .width = 1024, .height = 768, .protocol_features = 3 };
  const VcfDevice *d = vcf_ctx_device(ctx);

  g->s = vcf_ctx_open(ctx, NULL);
  if (g->s == NULL)
    return FALSE;
  g->ds = vhu_display_server_new(&dc);
  if (!vhu_display_server_attach(g->ds, vcf_session_frontend(g->s), &error)) {
    vcf_fail_error(ctx, "GPU_SET_SOCKET", error);
    return FALSE;
  }
  if (!vcf_session_start(g->s, GPU_FEATURES, d->queue_sizes, d->num_queues, &error)) {
    vcf_fail_error(ctx, "start", error);
    return FALSE;
  }
  g->backing = vcf_session_alloc(g->s, W * H * 4);
  return TRUE;
}

#define OPEN_GPU(g)                                                                                \
  g_auto(Gpu) g = { 0 };                                                                           \
  if (!gpu_open(ctx, &g))                                                                          \
    return VCF_FAIL;

/* One command on @q; the answer's type, or 0 with the detail set. */
static guint32
cmd_q(VcfCtx *ctx, Gpu *g, guint q, const void *req, gsize size, void *resp, gsize resp_size)
{
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_ctrl_hdr h = { 0 };
  gssize n;

  if (resp == NULL) {
    resp = &h;
    resp_size = sizeof h;
  }
  n = vcf_session_transact(g->s, q, req, size, resp, resp_size, &error);
  if (n < 0) {
    vcf_fail_error(ctx, "command", error);
    return 0;
  }
  if (q == 0 && (gsize)n < sizeof h) {
    vcf_fail(ctx, "answer of %" G_GSSIZE_FORMAT " bytes, shorter than a header", n);
    return 0;
  }
  return q == 0 ? ((struct virtio_gpu_ctrl_hdr *)resp)->type : 1;
}

static guint32
cmd(VcfCtx *ctx, Gpu *g, const void *req, gsize size)
{
  return cmd_q(ctx, g, 0, req, size, NULL, 0);
}

static const char *
type_name(guint32 t)
{
  switch (t) {
    case VIRTIO_GPU_RESP_OK_NODATA:
      return "OK_NODATA";
    case VIRTIO_GPU_RESP_ERR_UNSPEC:
      return "ERR_UNSPEC";
    case VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY:
      return "ERR_OUT_OF_MEMORY";
    case VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID:
      return "ERR_INVALID_SCANOUT_ID";
    case VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID:
      return "ERR_INVALID_RESOURCE_ID";
    case VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID:
      return "ERR_INVALID_CONTEXT_ID";
    case VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER:
      return "ERR_INVALID_PARAMETER";
    default:
      return "other";
  }
}

/* Sends a command and compares its answer; 0 as @want means "any ERR_*". */
#define EXPECT(g, req, want, what)                                                                 \
  do {                                                                                             \
    __typeof__(req) r_ = (req);                                                                    \
    guint32 t_ = cmd(ctx, &(g), &r_, sizeof r_);                                                   \
    if (t_ == 0)                                                                                   \
      return VCF_FAIL;                                                                             \
    if ((want) == 0 ? t_ < VIRTIO_GPU_RESP_ERR_UNSPEC : t_ != (guint32)(want))                     \
      return vcf_fail(ctx, "%s: answered 0x%x (%s), expected %s", (what), t_, type_name(t_),       \
                      (want) == 0 ? "an error" : type_name(want));                                 \
  } while (0)

static struct virtio_gpu_resource_create_2d
create(guint32 id, guint32 fmt, guint32 w, guint32 h)
{
  return (struct virtio_gpu_resource_create_2d){ HDR(VIRTIO_GPU_CMD_RESOURCE_CREATE_2D), id, fmt, w,
                                                 h };
}

typedef struct __attribute__((packed)) {
  struct virtio_gpu_resource_attach_backing a;
  struct virtio_gpu_mem_entry e;
} Attach1;

static Attach1
attach(guint32 id, guint64 addr, guint32 len, guint32 nr)
{
  return (Attach1){ { HDR(VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING), id, nr }, { addr, len, 0 } };
}

static struct virtio_gpu_transfer_to_host_2d
transfer(guint32 id, guint32 x, guint32 y, guint32 w, guint32 h)
{
  return (struct virtio_gpu_transfer_to_host_2d){
    HDR(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D), { x, y, w, h }, (guint64)(y * W + x) * 4, id, 0
  };
}

static struct virtio_gpu_set_scanout
scanout(guint32 sid, guint32 id, guint32 w, guint32 h)
{
  return (
      struct virtio_gpu_set_scanout){ HDR(VIRTIO_GPU_CMD_SET_SCANOUT), { 0, 0, w, h }, sid, id };
}

static struct virtio_gpu_resource_flush
flush(guint32 id, guint32 x, guint32 y, guint32 w, guint32 h)
{
  return (struct virtio_gpu_resource_flush){
    HDR(VIRTIO_GPU_CMD_RESOURCE_FLUSH), { x, y, w, h }, id, 0
  };
}

static struct virtio_gpu_resource_unref
unref(guint32 id)
{
  return (struct virtio_gpu_resource_unref){ HDR(VIRTIO_GPU_CMD_RESOURCE_UNREF), id, 0 };
}

/* A W x H resource RES with backing, pattern @seed transferred. */
static gboolean
resource_ready(VcfCtx *ctx, Gpu *g, guint seed)
{
  guint8 *p = vcf_session_ptr(g->s, g->backing, W * H * 4);
  struct virtio_gpu_resource_create_2d c = create(RES, FMT, W, H);
  Attach1 a = attach(RES, g->backing, W * H * 4, 1);
  struct virtio_gpu_transfer_to_host_2d t = transfer(RES, 0, 0, W, H);

  for (guint i = 0; i < W * H; i++) {
    p[i * 4 + 0] = (guint8)(i + seed);
    p[i * 4 + 1] = (guint8)(i / W * 3 + seed);
    p[i * 4 + 2] = (guint8)(i * 7);
    p[i * 4 + 3] = 0xff;
  }
  return cmd(ctx, g, &c, sizeof c) == VIRTIO_GPU_RESP_OK_NODATA
         && cmd(ctx, g, &a, sizeof a) == VIRTIO_GPU_RESP_OK_NODATA
         && cmd(ctx, g, &t, sizeof t) == VIRTIO_GPU_RESP_OK_NODATA;
}

#define READY(g)                                                                                   \
  do {                                                                                             \
    if (!resource_ready(ctx, &(g), 1))                                                             \
      return vcf_ctx_has_detail(ctx)                                                               \
                 ? VCF_FAIL                                                                        \
                 : vcf_fail(ctx, "create, attach and transfer a %ux%u resource", W, H);            \
  } while (0)

/* --- commands ------------------------------------------------------------ */

static VcfVerdict
g_config(VcfCtx *ctx)
{
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_config c = { 0 };
  g_autoptr(VcfSession) s = vcf_ctx_open(ctx, NULL);

  if (s == NULL)
    return VCF_FAIL;
  if (!vhu_frontend_get_config(vcf_session_frontend(s), 0, &c, sizeof c, &error))
    return vcf_fail_error(ctx, "GET_CONFIG", error);
  if (c.num_scanouts < 1 || c.num_scanouts > VIRTIO_GPU_MAX_SCANOUTS || c.events_read != 0)
    return vcf_fail(ctx, "num_scanouts %u, events_read 0x%x", c.num_scanouts, c.events_read);
  return vcf_pass(ctx, "%u scanouts, %u capsets", c.num_scanouts, c.num_capsets);
}

static VcfVerdict
g_display_info(VcfCtx *ctx)
{
  struct virtio_gpu_ctrl_hdr req = HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_resp_display_info info = { 0 };
  guint32 t;

  OPEN_GPU(g);
  t = cmd_q(ctx, &g, 0, &req, sizeof req, &info, sizeof info);
  if (t == 0)
    return VCF_FAIL;
  if (t != VIRTIO_GPU_RESP_OK_DISPLAY_INFO)
    return vcf_fail(ctx, "answered 0x%x (%s)", t, type_name(t));
  if (!info.pmodes[0].enabled || info.pmodes[0].r.width == 0 || info.pmodes[0].r.height == 0)
    return vcf_fail(ctx, "scanout 0 not enabled or of size 0");
  return vcf_pass(ctx, "scanout 0: %ux%u", info.pmodes[0].r.width, info.pmodes[0].r.height);
}

static VcfVerdict
g_create(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, create(RES, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "RESOURCE_CREATE_2D");
  return vcf_pass(ctx, "OK_NODATA");
}

static VcfVerdict
g_create_id_zero(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, create(0, FMT, W, H), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, "resource id 0");
  return vcf_pass(ctx, "ERR_INVALID_RESOURCE_ID");
}

static VcfVerdict
g_create_duplicate(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, create(RES, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "first create");
  EXPECT(g, create(RES, FMT, W, H), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, "id in use");
  return vcf_pass(ctx, "ERR_INVALID_RESOURCE_ID");
}

static VcfVerdict
g_create_bad_format(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, create(RES, 999, W, H), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, "format 999");
  return vcf_pass(ctx, "ERR_INVALID_PARAMETER");
}

static VcfVerdict
g_create_huge(VcfCtx *ctx)
{
  OPEN_GPU(g);
  /* 1 GiB: more than a guest should make a backend allocate unasked (ours
   * has a --max-hostmem budget), small enough not to hurt the host. */
  EXPECT(g, create(RES, FMT, 16384, 16384), 0, "a 16384x16384 resource (1 GiB)");
  EXPECT(g, create(RES + 1, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "a normal one afterwards");
  return vcf_pass(ctx, "refused with an error, the device goes on");
}

static VcfVerdict
g_create_empty(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, create(RES, FMT, 0, H), 0, "a resource of width 0");
  EXPECT(g, create(RES + 1, FMT, W, 0), 0, "a resource of height 0");
  return vcf_pass(ctx, "refused");
}

static VcfVerdict
g_unref(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, create(RES, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "create");
  EXPECT(g, unref(RES), VIRTIO_GPU_RESP_OK_NODATA, "unref");
  EXPECT(g, unref(RES), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, "second unref");
  return vcf_pass(ctx, "OK_NODATA, then ERR_INVALID_RESOURCE_ID");
}

static VcfVerdict
g_attach(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, create(RES, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "create");
  EXPECT(g, attach(RES, g.backing, W * H * 4, 1), VIRTIO_GPU_RESP_OK_NODATA, "attach");
  return vcf_pass(ctx, "OK_NODATA");
}

static VcfVerdict
g_attach_unknown(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, attach(RES, g.backing, W * H * 4, 1), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
         "attach to an unknown resource");
  return vcf_pass(ctx, "ERR_INVALID_RESOURCE_ID");
}

static VcfVerdict
g_attach_outside(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, create(RES, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "create");
  EXPECT(g, attach(RES, G_GUINT64_CONSTANT(0xdead00000000), W * H * 4, 1), 0,
         "backing outside guest memory");
  EXPECT(g, create(RES + 1, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "create afterwards");
  return vcf_pass(ctx, "refused, device still works");
}

static VcfVerdict
g_attach_entries(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, create(RES, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "create");
  EXPECT(g, attach(RES, g.backing, W * H * 4, 0x40000000), 0,
         "nr_entries 2^30 with one entry present");
  return vcf_pass(ctx, "refused");
}

static VcfVerdict
g_transfer(VcfCtx *ctx)
{
  OPEN_GPU(g);
  READY(g);
  return vcf_pass(ctx, "create, attach, transfer: OK_NODATA");
}

static VcfVerdict
g_transfer_oob(VcfCtx *ctx)
{
  OPEN_GPU(g);
  READY(g);
  EXPECT(g, transfer(RES, W - 8, 0, 16, 16), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
         "rectangle beyond the resource");
  return vcf_pass(ctx, "ERR_INVALID_PARAMETER");
}

static VcfVerdict
g_transfer_offset(VcfCtx *ctx)
{
  struct virtio_gpu_transfer_to_host_2d t = transfer(RES, 0, 0, W, H);

  OPEN_GPU(g);
  READY(g);
  t.offset = G_GUINT64_CONSTANT(0xfffffffffffff000);
  EXPECT(g, t, 0, "offset 2^64 - 4096 into the backing");
  EXPECT(g, transfer(RES, 0, 0, W, H), VIRTIO_GPU_RESP_OK_NODATA, "a normal transfer afterwards");
  return vcf_pass(ctx, "refused, the device goes on");
}

static VcfVerdict
g_transfer_unknown(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, transfer(RES + 5, 0, 0, 8, 8), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
         "unknown resource");
  return vcf_pass(ctx, "ERR_INVALID_RESOURCE_ID");
}

static VcfVerdict
g_scanout(VcfCtx *ctx)
{
  OPEN_GPU(g);
  READY(g);
  EXPECT(g, scanout(0, RES, W, H), VIRTIO_GPU_RESP_OK_NODATA, "SET_SCANOUT");
  EXPECT(g, scanout(0, 0, 0, 0), VIRTIO_GPU_RESP_OK_NODATA, "disable with resource 0");
  return vcf_pass(ctx, "set and disabled");
}

static VcfVerdict
g_scanout_bad_id(VcfCtx *ctx)
{
  OPEN_GPU(g);
  READY(g);
  EXPECT(g, scanout(VIRTIO_GPU_MAX_SCANOUTS, RES, W, H), VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
         "scanout 16");
  return vcf_pass(ctx, "ERR_INVALID_SCANOUT_ID");
}

static VcfVerdict
g_scanout_bad_rect(VcfCtx *ctx)
{
  OPEN_GPU(g);
  READY(g);
  EXPECT(g, scanout(0, RES, W + 1, H), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
         "rectangle wider than the resource");
  return vcf_pass(ctx, "ERR_INVALID_PARAMETER");
}

static VcfVerdict
g_scanout_unknown(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, scanout(0, RES + 9, W, H), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, "unknown resource");
  return vcf_pass(ctx, "ERR_INVALID_RESOURCE_ID");
}

static VcfVerdict
g_flush(VcfCtx *ctx)
{
  OPEN_GPU(g);
  READY(g);
  EXPECT(g, scanout(0, RES, W, H), VIRTIO_GPU_RESP_OK_NODATA, "SET_SCANOUT");
  EXPECT(g, flush(RES, 0, 0, W, H), VIRTIO_GPU_RESP_OK_NODATA, "RESOURCE_FLUSH");
  EXPECT(g, flush(RES + 3, 0, 0, W, H), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
         "flush of an unknown resource");
  return vcf_pass(ctx, "OK_NODATA; unknown id refused");
}

static VcfVerdict
g_detach(VcfCtx *ctx)
{
  struct virtio_gpu_resource_detach_backing d
      = { HDR(VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING), RES, 0 };

  OPEN_GPU(g);
  READY(g);
  EXPECT(g, d, VIRTIO_GPU_RESP_OK_NODATA, "DETACH_BACKING");
  EXPECT(g, transfer(RES, 0, 0, W, H), 0, "transfer without backing");
  d.resource_id = RES + 4;
  EXPECT(g, d, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, "detach from an unknown resource");
  return vcf_pass(ctx, "detached; transfer then refused");
}

static VcfVerdict
g_unknown_command(VcfCtx *ctx)
{
  OPEN_GPU(g);
  EXPECT(g, HDR(0x0999), VIRTIO_GPU_RESP_ERR_UNSPEC, "command type 0x999");
  return vcf_pass(ctx, "ERR_UNSPEC");
}

static VcfVerdict
g_short_request(VcfCtx *ctx)
{
  struct virtio_gpu_resource_create_2d c = create(RES, FMT, W, H);
  guint32 t;

  OPEN_GPU(g);
  t = cmd(ctx, &g, &c, 12);
  if (t == 0)
    return VCF_FAIL;
  if (t < VIRTIO_GPU_RESP_ERR_UNSPEC)
    return vcf_fail(ctx, "a 12-byte RESOURCE_CREATE_2D answered 0x%x (%s)", t, type_name(t));
  EXPECT(g, create(RES, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "whole create afterwards");
  return vcf_pass(ctx, "refused with %s", type_name(t));
}

static VcfVerdict
g_fence(VcfCtx *ctx)
{
  struct virtio_gpu_resource_create_2d c = create(RES, FMT, W, H);
  struct virtio_gpu_ctrl_hdr h = { 0 };
  guint32 t;

  OPEN_GPU(g);
  c.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
  c.hdr.fence_id = G_GUINT64_CONSTANT(0x123456789);
  t = cmd_q(ctx, &g, 0, &c, sizeof c, &h, sizeof h);
  if (t == 0)
    return VCF_FAIL;
  if (t != VIRTIO_GPU_RESP_OK_NODATA || !(h.flags & VIRTIO_GPU_FLAG_FENCE)
      || h.fence_id != c.hdr.fence_id)
    return vcf_fail(ctx, "answer 0x%x flags 0x%x fence 0x%" G_GINT64_MODIFIER "x", t, h.flags,
                    (guint64)h.fence_id);
  return vcf_pass(ctx, "fence echoed");
}

static VcfVerdict
g_small_response(VcfCtx *ctx)
{
  struct virtio_gpu_ctrl_hdr req = HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  g_autoptr(GError) error = NULL;
  guint8 resp[8];
  gssize n;

  OPEN_GPU(g);
  n = vcf_session_transact(g.s, 0, &req, sizeof req, resp, sizeof resp, &error);
  if (n < 0)
    return vcf_fail_error(ctx, "GET_DISPLAY_INFO into 8 bytes", error);
  EXPECT(g, create(RES, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "create afterwards");
  return vcf_pass(ctx, "%" G_GSSIZE_FORMAT " bytes written, nothing beyond", n);
}

static VcfVerdict
g_edid(VcfCtx *ctx)
{
  struct virtio_gpu_cmd_get_edid req = { HDR(VIRTIO_GPU_CMD_GET_EDID), 0, 0 };
  struct virtio_gpu_resp_edid e = { 0 };
  static const guint8 magic[8] = { 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0 };
  guint8 sum = 0;
  guint32 t;

  OPEN_GPU(g);
  t = cmd_q(ctx, &g, 0, &req, sizeof req, &e, sizeof e);
  if (t == 0)
    return VCF_FAIL;
  if (t != VIRTIO_GPU_RESP_OK_EDID || e.size < 128 || e.size > sizeof e.edid)
    return vcf_fail(ctx, "answer 0x%x (%s), size %u", t, type_name(t), e.size);
  for (guint i = 0; i < 128; i++)
    sum += e.edid[i];
  if (memcmp(e.edid, magic, 8) != 0 || sum != 0)
    return vcf_fail(ctx, "EDID header or checksum wrong");
  req.scanout = VIRTIO_GPU_MAX_SCANOUTS;
  EXPECT(g, req, 0, "GET_EDID of scanout 16");
  return vcf_pass(ctx, "%u bytes, valid base block; scanout 16 refused", e.size);
}

static struct virtio_gpu_update_cursor
cursor(guint32 type, guint32 x, guint32 y, guint32 id)
{
  return (struct virtio_gpu_update_cursor){ HDR(type), { 0, x, y, 0 }, id, 1, 1, 0 };
}

static VcfVerdict
g_cursor(VcfCtx *ctx)
{
  struct virtio_gpu_update_cursor u = cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 10, 20, RES);
  struct virtio_gpu_update_cursor m = cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 30, 40, RES);

  OPEN_GPU(g);
  READY(g);
  if (cmd_q(ctx, &g, 1, &u, sizeof u, NULL, 0) == 0
      || cmd_q(ctx, &g, 1, &m, sizeof m, NULL, 0) == 0)
    return VCF_FAIL;
  EXPECT(g, create(RES + 1, FMT, W, H), VIRTIO_GPU_RESP_OK_NODATA, "control queue afterwards");
  return vcf_pass(ctx, "UPDATE_CURSOR and MOVE_CURSOR completed");
}

/* --- display socket ------------------------------------------------------ */

/* Shows resource RES on scanout 0 and flushes @w x @h; waits for an UPDATE. */
static gboolean
show(VcfCtx *ctx, Gpu *g, guint32 w, guint32 h)
{
  struct virtio_gpu_set_scanout so = scanout(0, RES, W, H);
  struct virtio_gpu_resource_flush f = flush(RES, 0, 0, w, h);
  VhuDisplayStats st;

  vhu_display_server_get_stats(g->ds, &st);
  if (cmd(ctx, g, &so, sizeof so) != VIRTIO_GPU_RESP_OK_NODATA
      || cmd(ctx, g, &f, sizeof f) != VIRTIO_GPU_RESP_OK_NODATA) {
    if (!vcf_ctx_has_detail(ctx))
      vcf_fail(ctx, "SET_SCANOUT or RESOURCE_FLUSH refused");
    return FALSE;
  }
  if (!vhu_display_server_wait_updates(g->ds, st.updates + 1, (int)vcf_session_timeout(g->s))) {
    vcf_fail(ctx, "no UPDATE on the display socket within %u ms of RESOURCE_FLUSH",
             vcf_session_timeout(g->s));
    return FALSE;
  }
  return TRUE;
}

/* The backend asks for the display protocol features before anything
 * else, and answers the offer with SET_PROTOCOL_FEATURES (which may follow
 * its first UPDATE: QEMU takes messages in any order). */
static VcfVerdict
d_handshake(VcfCtx *ctx)
{
  VhuDisplayStats st;
  gint64 deadline;

  OPEN_GPU(g);
  READY(g);
  if (!show(ctx, &g, W, H))
    return VCF_FAIL;
  vhu_display_server_get_stats(g.ds, &st);
  if (st.protocol_features_requests == 0)
    return vcf_fail(ctx, "no GET_PROTOCOL_FEATURES before the first UPDATE");
  /* The display server has no event for it: look again until the deadline. */
  deadline = g_get_monotonic_time() + (gint64)vcf_session_timeout(g.s) * 1000;
  while (st.set_protocol_features == 0 && g_get_monotonic_time() < deadline) {
    g_usleep(1000);
    vhu_display_server_get_stats(g.ds, &st);
  }
  if (st.set_protocol_features == 0)
    return vcf_fail(ctx, "GET_PROTOCOL_FEATURES answered, but no SET_PROTOCOL_FEATURES");
  if (st.errors != 0)
    return vcf_fail(ctx, "%" G_GUINT64_FORMAT " malformed display messages", st.errors);
  return vcf_pass(ctx, "features negotiated (0x%" G_GINT64_MODIFIER "x)", st.negotiated_features);
}

static VcfVerdict
d_update_pixels(VcfCtx *ctx)
{
  g_autofree guint32 *frame = NULL;
  const guint8 *p;
  guint fw = 0, fh = 0;
  VhuDisplayStats st;

  OPEN_GPU(g);
  READY(g);
  if (!show(ctx, &g, W, H))
    return VCF_FAIL;
  vhu_display_server_get_stats(g.ds, &st);
  if (st.scanouts == 0)
    return vcf_fail(ctx, "UPDATE without a SCANOUT message first");
  frame = vhu_display_server_get_frame(g.ds, 0, &fw, &fh);
  if (frame == NULL || fw != W || fh != H)
    return vcf_fail(ctx, "display frame %ux%u, expected %ux%u", fw, fh, W, H);
  p = vcf_session_ptr(g.s, g.backing, W * H * 4);
  for (guint i = 0; i < W * H; i++) {
    guint32 want = (guint32)p[i * 4 + 2] << 16 | (guint32)p[i * 4 + 1] << 8 | p[i * 4];

    if ((frame[i] & 0xffffff) != want)
      return vcf_fail(ctx, "pixel (%u,%u) is 0x%06x, guest wrote 0x%06x", i % W, i / W,
                      frame[i] & 0xffffff, want);
  }
  return vcf_pass(ctx, "SCANOUT then UPDATE with the guest's %ux%u pixels", W, H);
}

static VcfVerdict
d_partial_flush(VcfCtx *ctx)
{
  VhuDisplayStats a, b;

  OPEN_GPU(g);
  READY(g);
  if (!show(ctx, &g, W, H))
    return VCF_FAIL;
  vhu_display_server_get_stats(g.ds, &a);
  if (!show(ctx, &g, 16, 8))
    return VCF_FAIL;
  vhu_display_server_get_stats(g.ds, &b);
  if (b.update_bytes - a.update_bytes != 16 * 8 * 4)
    return vcf_fail(ctx, "a 16x8 flush sent %" G_GUINT64_FORMAT " pixel bytes",
                    b.update_bytes - a.update_bytes);
  return vcf_pass(ctx, "16x8 flush sent 512 bytes");
}

static VcfVerdict
d_cursor(VcfCtx *ctx)
{
  struct virtio_gpu_update_cursor u = cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 10, 20, RES);
  g_autofree guint32 *image = g_new0(guint32, 64 * 64);
  guint x = 0, y = 0;
  gboolean visible = FALSE;

  OPEN_GPU(g);
  READY(g);
  if (cmd_q(ctx, &g, 1, &u, sizeof u, NULL, 0) == 0)
    return VCF_FAIL;
  /* Display messages are ordered: the UPDATE of a later flush is the barrier. */
  if (!show(ctx, &g, W, H))
    return VCF_FAIL;
  if (!vhu_display_server_get_cursor(g.ds, 0, &x, &y, &visible, image))
    return vcf_fail(ctx, "no CURSOR_UPDATE on the display socket");
  if (x != 10 || y != 20 || !visible)
    return vcf_fail(ctx, "cursor at %u,%u visible %d, expected 10,20 visible", x, y, visible);
  return vcf_pass(ctx, "CURSOR_UPDATE at 10,20");
}

static VcfVerdict
d_socket_replaced(VcfCtx *ctx)
{
  g_autoptr(GError) error = NULL;
  VcfRing *r;
  guint base = 0;

  OPEN_GPU(g);
  READY(g);
  if (!show(ctx, &g, W, H))
    return VCF_FAIL;
  /* What QEMU does on a guest reboot: stop, new socket, start. */
  for (guint q = 0; q < 2; q++) {
    if (!vcf_session_state(g.s, VHU_SET_VRING_ENABLE, q, 0, &error)
        || !vcf_session_get_base(g.s, q, &base, &error))
      return vcf_fail_error(ctx, "stop", error);
  }
  if (!vhu_display_server_attach(g.ds, vcf_session_frontend(g.s), &error))
    return vcf_fail_error(ctx, "second GPU_SET_SOCKET", error);
  for (guint q = 0; q < 2; q++) {
    r = vcf_session_ring(g.s, q);
    if (!vcf_ring_setup(r, vcf_ring_avail_idx(r), &error))
      return vcf_fail_error(ctx, "restart", error);
  }
  if (!show(ctx, &g, W, H))
    return vcf_ctx_verdict(ctx, VCF_FAIL,
                           "after a stop and a new GPU_SET_SOCKET: no UPDATE on "
                           "the new socket");
  return vcf_pass(ctx, "updates reach the new socket");
}

#define GPU  "virtio 1.3 §5.7.6.8 Device Operation: controlq"
#define DISP "vhost-user-gpu: "
#define NONE VCF_NEED_NONE, 0

const VcfCheck vcf_gpu_checks[] = {
  { "gpu.config", "gpu", "virtio 1.3 §5.7.4 Device configuration layout", NONE,
    "config space: 1..16 scanouts, no pending events", g_config },
  { "gpu.display-info", "gpu", GPU " (GET_DISPLAY_INFO)", NONE,
    "GET_DISPLAY_INFO reports scanout 0 enabled", g_display_info },
  { "gpu.create-2d", "gpu", GPU " (RESOURCE_CREATE_2D)", NONE, "a 64x64 resource", g_create },
  { "gpu.create-2d-id-zero", "gpu", GPU " (RESOURCE_CREATE_2D)", NONE,
    "resource id 0 is ERR_INVALID_RESOURCE_ID", g_create_id_zero },
  { "gpu.create-2d-duplicate", "gpu", GPU " (RESOURCE_CREATE_2D)", NONE,
    "an id in use is ERR_INVALID_RESOURCE_ID", g_create_duplicate },
  { "gpu.create-2d-bad-format", "gpu", GPU " (RESOURCE_CREATE_2D)", NONE,
    "an unknown format is ERR_INVALID_PARAMETER", g_create_bad_format },
  { "gpu.create-2d-huge", "gpu", GPU " (RESOURCE_CREATE_2D)", NONE,
    "hostile: a 1 GiB resource is an error, not an allocation the guest controls", g_create_huge },
  { "gpu.create-2d-empty", "gpu", GPU " (RESOURCE_CREATE_2D)", NONE,
    "a resource of width or height 0 is an error", g_create_empty },
  { "gpu.unref", "gpu", GPU " (RESOURCE_UNREF)", NONE,
    "unref works once, then ERR_INVALID_RESOURCE_ID", g_unref },
  { "gpu.attach-backing", "gpu", GPU " (RESOURCE_ATTACH_BACKING)", NONE,
    "one backing entry in guest memory", g_attach },
  { "gpu.attach-backing-unknown", "gpu", GPU " (RESOURCE_ATTACH_BACKING)", NONE,
    "backing for an unknown resource is ERR_INVALID_RESOURCE_ID", g_attach_unknown },
  { "gpu.attach-backing-outside", "gpu", GPU " (RESOURCE_ATTACH_BACKING)", NONE,
    "backing outside guest memory is an error; the device goes on", g_attach_outside },
  { "gpu.attach-backing-entries", "gpu", GPU " (RESOURCE_ATTACH_BACKING)", NONE,
    "nr_entries far beyond the request is an error", g_attach_entries },
  { "gpu.transfer-2d", "gpu", GPU " (TRANSFER_TO_HOST_2D)", NONE, "transfer of the whole resource",
    g_transfer },
  { "gpu.transfer-out-of-bounds", "gpu", GPU " (TRANSFER_TO_HOST_2D)", NONE,
    "a rectangle beyond the resource is ERR_INVALID_PARAMETER", g_transfer_oob },
  { "gpu.transfer-offset", "gpu", GPU " (TRANSFER_TO_HOST_2D)", NONE,
    "an offset far beyond the backing is an error", g_transfer_offset },
  { "gpu.transfer-unknown", "gpu", GPU " (TRANSFER_TO_HOST_2D)", NONE,
    "an unknown resource is ERR_INVALID_RESOURCE_ID", g_transfer_unknown },
  { "gpu.set-scanout", "gpu", GPU " (SET_SCANOUT)", NONE,
    "show a resource, then disable with resource 0", g_scanout },
  { "gpu.set-scanout-bad-id", "gpu", GPU " (SET_SCANOUT)", NONE,
    "scanout 16 is ERR_INVALID_SCANOUT_ID", g_scanout_bad_id },
  { "gpu.set-scanout-bad-rect", "gpu", GPU " (SET_SCANOUT)", NONE,
    "a rectangle outside the resource is ERR_INVALID_PARAMETER", g_scanout_bad_rect },
  { "gpu.set-scanout-unknown", "gpu", GPU " (SET_SCANOUT)", NONE,
    "an unknown resource is ERR_INVALID_RESOURCE_ID", g_scanout_unknown },
  { "gpu.flush", "gpu", GPU " (RESOURCE_FLUSH)", NONE,
    "flush of a shown resource; an unknown one is ERR_INVALID_RESOURCE_ID", g_flush },
  { "gpu.detach-backing", "gpu", GPU " (RESOURCE_DETACH_BACKING)", NONE,
    "detach; a transfer afterwards is an error", g_detach },
  { "gpu.unknown-command", "gpu", GPU, NONE, "an unknown command type is ERR_UNSPEC",
    g_unknown_command },
  { "gpu.short-request", "gpu", GPU, NONE, "a request shorter than its command is an error",
    g_short_request },
  { "gpu.fence", "gpu", "virtio 1.3 §5.7.6.7 Device Operation: Request header", NONE,
    "VIRTIO_GPU_FLAG_FENCE and fence_id come back in the answer", g_fence },
  { "gpu.small-response-buffer", "gpu", "virtio 1.3 §2.7.8 The Virtqueue Used Ring", NONE,
    "an 8-byte answer buffer: nothing written beyond it", g_small_response },
  { "gpu.edid", "gpu", GPU " (GET_EDID)", VCF_NEED_FEATURE, 1,
    "GET_EDID answers a valid EDID; scanout 16 is an error", g_edid },
  { "gpu.cursor", "gpu", "virtio 1.3 §5.7.6.10 Device Operation: cursorq", NONE,
    "UPDATE_CURSOR and MOVE_CURSOR complete", g_cursor },
  { "display.handshake", "display", DISP "Protocol features", NONE,
    "GET_PROTOCOL_FEATURES before the first UPDATE, then SET_PROTOCOL_FEATURES", d_handshake },
  { "display.update-pixels", "display", DISP "Message types (VHOST_USER_GPU_SCANOUT, UPDATE)", NONE,
    "SCANOUT, then an UPDATE carrying exactly the guest's pixels", d_update_pixels },
  { "display.partial-flush", "display", DISP "Message types (VHOST_USER_GPU_UPDATE)", NONE,
    "a 16x8 flush sends 16x8 pixels", d_partial_flush },
  { "display.cursor", "display", DISP "Message types (VHOST_USER_GPU_CURSOR_UPDATE)", NONE,
    "UPDATE_CURSOR reaches the display socket", d_cursor },
  { "display.socket-replaced", "display", DISP "Wire format (GPU_SET_SOCKET on every start)", NONE,
    "after a stop and a new GPU_SET_SOCKET, updates go to the new socket", d_socket_replaced },
  { NULL },
};
