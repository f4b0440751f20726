/* vcf-check.c: devices, the check context and the runner. */
#include "vcf-check.h"

#include <gio/gio.h>
#include <linux/virtio_gpu.h>
#include <linux/virtio_snd.h>
#include <stdio.h>
#include <string.h>

#include "vcf-target.h"

struct _VcfCtx {
  const VcfDevice *device;
  const char *path;
  char *detail;
};

const char *
vcf_verdict_name(VcfVerdict v)
{
  static const char *const names[] = { "pass", "fail", "not-offered", "crashed" };

  return v <= VCF_CRASHED ? names[v] : "?";
}

/* --- device kinds -------------------------------------------------------- */

/* GPU: a fenced RESOURCE_UNREF of a resource never created.  Virtio 1.3
 * 5.7.6.8 asks for VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, 5.7.6.7 for the
 * fence flag and id echoed, so the answer shows the whole header was read.
 * No state changes. */
#define GPU_PROBE_FENCE G_GUINT64_CONSTANT(0x5a5a0000a5a50000)

static gsize
gpu_probe_request(guint seq, guint8 *req)
{
  struct virtio_gpu_resource_unref u = { .hdr.type = VIRTIO_GPU_CMD_RESOURCE_UNREF,
                                         .hdr.flags = VIRTIO_GPU_FLAG_FENCE,
                                         .hdr.fence_id = GPU_PROBE_FENCE + seq,
                                         .resource_id = 0x7f000000u + seq };

  memcpy(req, &u, sizeof u);
  return sizeof u;
}

static gboolean
gpu_probe_ok(guint seq, const guint8 *req, gsize req_len, const guint8 *resp, gsize len,
             GString *why)
{
  struct virtio_gpu_ctrl_hdr h;

  if (len < sizeof h) {
    g_string_printf(why, "answer of %" G_GSIZE_FORMAT " bytes, expected a 24-byte header", len);
    return FALSE;
  }
  memcpy(&h, resp, sizeof h);
  if (h.type != VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID) {
    g_string_printf(why, "RESOURCE_UNREF of an unknown id answered 0x%x, expected 0x%x", h.type,
                    VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
    return FALSE;
  }
  if (!(h.flags & VIRTIO_GPU_FLAG_FENCE) || h.fence_id != GPU_PROBE_FENCE + seq) {
    g_string_printf(why,
                    "fenced request answered with flags 0x%x fence 0x%" G_GINT64_MODIFIER
                    "x, expected the fence echoed",
                    h.flags, (guint64)h.fence_id);
    return FALSE;
  }
  return TRUE;
}

const VcfDevice vcf_device_gpu = {
  .name = "gpu",
  .num_queues = 2,
  .queue_sizes = { 64, 16 },
  .config_size = sizeof(struct virtio_gpu_config),
  .writable_config = G_STRUCT_OFFSET(struct virtio_gpu_config, events_clear),
  .resp_size = sizeof(struct virtio_gpu_ctrl_hdr),
  .probe_request = gpu_probe_request,
  .probe_ok = gpu_probe_ok,
  .checks = vcf_gpu_checks,
};

/* Sound: PCM_INFO for no streams (count 0): a status answer, nothing else. */
static gsize
snd_probe_request(guint seq, guint8 *req)
{
  struct virtio_snd_query_info q = { .hdr.code = VIRTIO_SND_R_PCM_INFO,
                                     .start_id = 0,
                                     .count = 0,
                                     .size = sizeof(struct virtio_snd_pcm_info) };

  memcpy(req, &q, sizeof q);
  return sizeof q;
}

static gboolean
snd_probe_ok(guint seq, const guint8 *req, gsize req_len, const guint8 *resp, gsize len,
             GString *why)
{
  struct virtio_snd_hdr h;

  if (len < sizeof h) {
    g_string_printf(why, "answer of %" G_GSIZE_FORMAT " bytes, expected a status", len);
    return FALSE;
  }
  memcpy(&h, resp, sizeof h);
  if (h.code < VIRTIO_SND_S_OK || h.code > VIRTIO_SND_S_IO_ERR) {
    g_string_printf(why, "PCM_INFO answered status 0x%x", h.code);
    return FALSE;
  }
  return TRUE;
}

static const VcfCheck no_checks[] = { { NULL } };

const VcfDevice vcf_device_sound = {
  .name = "sound",
  .num_queues = 4,
  .queue_sizes = { 64, 64, 64, 64 },
  .config_size = sizeof(struct virtio_snd_config),
  .writable_config = -1,
  .resp_size = sizeof(struct virtio_snd_hdr),
  .probe_request = snd_probe_request,
  .probe_ok = snd_probe_ok,
  .checks = vcf_sound_checks,
};

/* The project's echo device (tests/vhost/vhu-null-backend): the answer is
 * the request.  For testing the generic groups, and the tool itself. */
#define NULL_PROBE_SIZE 32u

static gsize
null_probe_request(guint seq, guint8 *req)
{
  for (guint i = 0; i < NULL_PROBE_SIZE; i++)
    req[i] = (guint8)(seq * 31 + i * 7 + 1);
  return NULL_PROBE_SIZE;
}

static gboolean
null_probe_ok(guint seq, const guint8 *req, gsize req_len, const guint8 *resp, gsize len,
              GString *why)
{
  if (len != req_len || memcmp(req, resp, len) != 0) {
    g_string_printf(why, "echo of %" G_GSIZE_FORMAT " bytes differs from the request", len);
    return FALSE;
  }
  return TRUE;
}

const VcfDevice vcf_device_null = {
  .name = "null",
  .num_queues = 2,
  .queue_sizes = { 64, 64 },
  .config_size = 16,
  .writable_config = 4,
  .resp_size = NULL_PROBE_SIZE,
  .probe_request = null_probe_request,
  .probe_ok = null_probe_ok,
  .checks = no_checks,
};

const VcfDevice *
vcf_device_lookup(const char *name)
{
  const VcfDevice *all[] = { &vcf_device_gpu, &vcf_device_sound, &vcf_device_null };

  for (guint i = 0; i < G_N_ELEMENTS(all); i++)
    if (g_strcmp0(name, all[i]->name) == 0)
      return all[i];
  return NULL;
}

guint
vcf_device_checks(const VcfDevice *device, const VcfCheck **lists)
{
  lists[0] = vcf_vhost_checks;
  lists[1] = device->checks;
  return 2;
}

/* --- context ------------------------------------------------------------- */

const VcfDevice *
vcf_ctx_device(VcfCtx *ctx)
{
  return ctx->device;
}

const char *
vcf_ctx_socket(VcfCtx *ctx)
{
  return ctx->path;
}

VcfVerdict
vcf_ctx_verdict(VcfCtx *ctx, VcfVerdict v, const char *fmt, ...)
{
  va_list ap;

  g_free(ctx->detail);
  va_start(ap, fmt);
  ctx->detail = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  return v;
}

VcfVerdict
vcf_fail_error(VcfCtx *ctx, const char *what, const GError *error)
{
  return vcf_fail(ctx, "%s: %s", what, error != NULL ? error->message : "failed");
}

gboolean
vcf_ctx_has_detail(VcfCtx *ctx)
{
  return ctx->detail != NULL;
}

VcfSession *
vcf_ctx_open(VcfCtx *ctx, const VcfSessionOptions *options)
{
  g_autoptr(GError) error = NULL;
  VcfSession *s = vcf_session_open(ctx->path, options, &error);

  if (s == NULL)
    vcf_fail_error(ctx, "connect and handshake", error);
  return s;
}

VcfSession *
vcf_ctx_open_started(VcfCtx *ctx, guint64 features)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(VcfSession) s = vcf_ctx_open(ctx, NULL);

  if (s == NULL)
    return NULL;
  if (!vcf_session_start(s, features, ctx->device->queue_sizes, ctx->device->num_queues, &error)) {
    vcf_fail_error(ctx, "start", error);
    return NULL;
  }
  return g_steal_pointer(&s);
}

gboolean
vcf_probe_at(VcfCtx *ctx, VcfSession *s, guint seq, guint64 req_gpa, guint64 resp_gpa,
             gboolean indirect, GString *why)
{
  const VcfDevice *d = ctx->device;
  VcfRing *r = vcf_session_ring(s, 0);
  guint8 req[256], resp[256];
  gsize req_len = d->probe_request(seq, req);
  VhuGuestBuf out = { req_gpa, (guint32)req_len }, in = { resp_gpa, d->resp_size };
  guint32 len = 0;

  memset(resp, 0, sizeof resp);
  if (r == NULL || !vcf_session_write(s, req_gpa, req, req_len)
      || !vcf_session_write(s, resp_gpa, resp, d->resp_size)) {
    g_string_assign(why, "no ring, or the buffers are outside guest memory");
    return FALSE;
  }
  if (vcf_ring_add(r, &out, 1, &in, 1, indirect) < 0) {
    g_string_assign(why, "ring full");
    return FALSE;
  }
  vcf_ring_publish(r);
  vcf_ring_kick(r);
  if (!vcf_ring_wait_used(r, (int)vcf_session_timeout(s), NULL, &len)) {
    g_string_printf(why, "request %u not answered within %u ms", seq, vcf_session_timeout(s));
    return FALSE;
  }
  if (len > d->resp_size) {
    g_string_printf(why, "used length %u exceeds the %u writable bytes", len, d->resp_size);
    return FALSE;
  }
  vcf_session_read(s, resp_gpa, resp, len);
  return d->probe_ok(seq, req, req_len, resp, len, why);
}

gboolean
vcf_probe(VcfCtx *ctx, VcfSession *s, guint seq, GString *why)
{
  guint64 req = vcf_session_alloc(s, 256), resp = vcf_session_alloc(s, 256);

  return vcf_probe_at(ctx, s, seq, req, resp, FALSE, why);
}

/* --- runner -------------------------------------------------------------- */

static gboolean
selected(const VcfCheck *c, const char *const *only)
{
  if (only == NULL)
    return TRUE;
  for (guint i = 0; only[i] != NULL; i++)
    if (g_strcmp0(only[i], c->group) == 0 || g_strcmp0(only[i], c->id) == 0)
      return TRUE;
  return FALSE;
}

/* What the backend offers, from one connection before the checks. */
typedef struct {
  gboolean ok;
  char *error;
  guint64 features, protocol;
} Offer;

static void
discover(VcfTarget *t, Offer *offer)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(VcfSession) s = NULL;
  g_autofree char *why = NULL;
  const char *path = vcf_target_ensure(t, &error);

  if (path != NULL)
    s = vcf_session_open(path, NULL, &error);
  if (s == NULL) {
    offer->error = g_strdup_printf("no usable backend: %s", error->message);
    return;
  }
  offer->ok = TRUE;
  offer->features = vcf_session_offered_features(s);
  offer->protocol = vhu_frontend_get_backend_protocol_features(vcf_session_frontend(s));
  g_clear_pointer(&s, vcf_session_free);
  if (!vcf_target_survived(t, &why)) {
    offer->ok = FALSE;
    offer->error = g_strdup_printf("the backend did not survive the handshake: %s", why);
  }
}

static gboolean
offered(const VcfCheck *c, const Offer *o)
{
  switch (c->need_kind) {
    case VCF_NEED_FEATURE:
      return (o->features >> c->need_bit) & 1;
    case VCF_NEED_PROTOCOL:
      return ((o->features >> VHU_F_PROTOCOL_FEATURES) & 1) && ((o->protocol >> c->need_bit) & 1);
    default:
      return TRUE;
  }
}

static void
run_one(VcfTarget *t, const VcfDevice *device, const VcfCheck *c, const Offer *offer,
        VcfResult *res)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *why = NULL;
  VcfCtx ctx = { .device = device };

  if (!offer->ok) {
    res->verdict = VCF_FAIL;
    res->detail = g_strdup(offer->error);
    return;
  }
  if (!offered(c, offer)) {
    res->verdict = VCF_NOT_OFFERED;
    res->detail = g_strdup_printf("the backend does not offer %s bit %u",
                                  c->need_kind == VCF_NEED_FEATURE ? "feature" : "protocol feature",
                                  c->need_bit);
    return;
  }
  ctx.path = vcf_target_ensure(t, &error);
  if (ctx.path == NULL) {
    res->verdict = VCF_FAIL;
    res->detail = g_strdup_printf("no backend: %s", error->message);
    return;
  }
  res->verdict = c->run(&ctx);
  if (ctx.detail == NULL)
    ctx.detail = g_strdup(res->verdict == VCF_PASS ? "ok" : "failed");
  if (!vcf_target_survived(t, &why)) {
    res->detail = g_strdup_printf("%s after this check (its own verdict: %s: %s)", why,
                                  vcf_verdict_name(res->verdict), ctx.detail);
    res->verdict = VCF_CRASHED;
    g_free(ctx.detail);
    return;
  }
  res->detail = ctx.detail;
}

GArray *
vcf_run(VcfTarget *target, const VcfDevice *device, const char *const *only, gboolean verbose)
{
  GArray *results = g_array_new(FALSE, TRUE, sizeof(VcfResult));
  const VcfCheck *lists[2];
  guint n_lists = vcf_device_checks(device, lists);
  Offer offer = { 0 };

  discover(target, &offer);
  for (guint l = 0; l < n_lists; l++) {
    for (const VcfCheck *c = lists[l]; c->id != NULL; c++) {
      VcfResult res = { .check = c };

      if (!selected(c, only))
        continue;
      if (verbose)
        g_printerr("running %s\n", c->id);
      run_one(target, device, c, &offer, &res);
      g_array_append_val(results, res);
    }
  }
  g_free(offer.error);
  return results;
}

void
vcf_results_free(GArray *results)
{
  for (guint i = 0; i < results->len; i++)
    g_free(g_array_index(results, VcfResult, i).detail);
  g_array_unref(results);
}
