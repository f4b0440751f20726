/* vcf-checks-vhost.c: device-independent vhost-user and virtqueue checks.
 *
 * Every check talks to the device only through its probe request
 * (VcfDevice), so the same checks run against any device kind. */
#include <gio/gio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vcf-check.h"

#define BIT(n)        (G_GUINT64_CONSTANT(1) << (n))
#define RING_FEATURES (BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX))
#define BAD_INDEX     200u

#define OPEN_STARTED(s, features)                                                                  \
  g_autoptr(VcfSession) s = vcf_ctx_open_started(ctx, (features));                                 \
  if (s == NULL)                                                                                   \
    return VCF_FAIL;
#define OPEN(s, opts)                                                                              \
  g_autoptr(VcfSession) s = vcf_ctx_open(ctx, (opts));                                             \
  if (s == NULL)                                                                                   \
    return VCF_FAIL;
#define PROBE(s, seq)                                                                              \
  do {                                                                                             \
    g_autoptr(GString) why_ = g_string_new(NULL);                                                  \
    if (!vcf_probe(ctx, (s), (seq), why_))                                                         \
      return vcf_fail(ctx, "request %u: %s", (guint)(seq), why_->str);                             \
  } while (0)
#define TRY(what, expr)                                                                            \
  do {                                                                                             \
    g_autoptr(GError) err_ = NULL;                                                                 \
    GError **error = &err_;                                                                        \
    if (!(expr))                                                                                   \
      return vcf_fail_error(ctx, (what), err_);                                                    \
  } while (0)

/* Sends @request with NEED_REPLY and reads the ack: *value, or FALSE when
 * no well-formed ack came (the reason in @why; *closed when the backend
 * closed the connection instead). */
static gboolean
raw_ack_full(VcfSession *s, guint32 request, const void *payload, gsize size, const int *fds,
             guint n_fds, guint64 *value, gboolean *closed, GString *why)
{
  g_autoptr(GError) error = NULL;
  VcfReply r;

  *closed = FALSE;
  if (!vcf_session_send_raw(s, request, VHU_VERSION | VHU_FLAG_NEED_REPLY, payload, size, fds,
                            n_fds, &error)
      || !vcf_session_recv_raw(s, &r, (int)vcf_session_timeout(s), &error)) {
    *closed = g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED)
              || g_error_matches(error, G_IO_ERROR, G_IO_ERROR_BROKEN_PIPE);
    g_string_printf(why, "%s: %s", vhu_request_name(request), error->message);
    return FALSE;
  }
  if (r.request != request || r.flags != VHU_REPLY_FLAGS || r.size != 8) {
    g_string_printf(why, "%s: ack has request %u, flags 0x%x, size %u (expected %u, 0x5, 8)",
                    vhu_request_name(request), r.request, r.flags, r.size, request);
    return FALSE;
  }
  memcpy(value, r.payload, 8);
  return TRUE;
}

static gboolean
raw_ack(VcfSession *s, guint32 request, const void *payload, gsize size, const int *fds,
        guint n_fds, guint64 *value, GString *why)
{
  gboolean closed;

  return raw_ack_full(s, request, payload, size, fds, n_fds, value, &closed, why);
}

/* A request that must be refused: a non-zero ack, or the connection closed. */
static gboolean
refused(VcfSession *s, guint32 request, const void *payload, gsize size, const int *fds,
        guint n_fds, GString *why)
{
  guint64 v = 0;
  gboolean closed;

  if (!raw_ack_full(s, request, payload, size, fds, n_fds, &v, &closed, why))
    return closed;
  if (v == 0) {
    g_string_printf(why, "%s accepted (ack 0)", vhu_request_name(request));
    return FALSE;
  }
  return TRUE;
}

/* --- handshake ----------------------------------------------------------- */

static VcfVerdict
h_version1(VcfCtx *ctx)
{
  OPEN(s, NULL);
  if (!(vcf_session_offered_features(s) & BIT(VHU_F_VERSION_1)))
    return vcf_fail(ctx, "GET_FEATURES 0x%" G_GINT64_MODIFIER "x lacks VERSION_1 (bit 32)",
                    vcf_session_offered_features(s));
  return vcf_pass(ctx, "features 0x%" G_GINT64_MODIFIER "x", vcf_session_offered_features(s));
}

static VcfVerdict
h_config_offered(VcfCtx *ctx)
{
  OPEN(s, NULL);
  if (vcf_ctx_device(ctx)->config_size == 0)
    return vcf_pass(ctx, "the device has no config space");
  if (!(vcf_session_offered_features(s) & BIT(VHU_F_PROTOCOL_FEATURES))
      || !(vhu_frontend_get_backend_protocol_features(vcf_session_frontend(s))
           & BIT(VHU_PF_CONFIG)))
    return vcf_fail(ctx, "a %s has config space but PROTOCOL_F_CONFIG is not offered",
                    vcf_ctx_device(ctx)->name);
  return vcf_pass(ctx, "protocol features 0x%" G_GINT64_MODIFIER "x",
                  vhu_frontend_get_backend_protocol_features(vcf_session_frontend(s)));
}

static VcfVerdict
h_queue_num(VcfCtx *ctx)
{
  guint64 n = 0;

  OPEN(s, NULL);
  TRY("GET_QUEUE_NUM", vhu_frontend_get_u64(vcf_session_frontend(s), VHU_GET_QUEUE_NUM, &n, error));
  if (n < vcf_ctx_device(ctx)->num_queues)
    return vcf_fail(ctx, "GET_QUEUE_NUM says %" G_GUINT64_FORMAT ", a %s has %u queues", n,
                    vcf_ctx_device(ctx)->name, vcf_ctx_device(ctx)->num_queues);
  return vcf_pass(ctx, "%" G_GUINT64_FORMAT " queues", n);
}

static VcfVerdict
h_no_protocol_features(VcfCtx *ctx)
{
  VcfSessionOptions o = { .no_protocol_features = TRUE };
  const VcfDevice *d = vcf_ctx_device(ctx);

  OPEN(s, &o);
  TRY("start without PROTOCOL_FEATURES",
      vcf_session_start(s, RING_FEATURES, d->queue_sizes, d->num_queues, error));
  PROBE(s, 1);
  return vcf_pass(ctx, "rings enabled without SET_VRING_ENABLE");
}

static VcfVerdict
h_features_subset(VcfCtx *ctx)
{
  OPEN_STARTED(s, 0);
  PROBE(s, 1);
  PROBE(s, 2);
  return vcf_pass(ctx, "works with features 0x%" G_GINT64_MODIFIER "x", vcf_session_features(s));
}

static VcfVerdict
h_features_stable(VcfCtx *ctx)
{
  guint64 again = 0;

  OPEN_STARTED(s, RING_FEATURES);
  TRY("GET_FEATURES",
      vhu_frontend_get_u64(vcf_session_frontend(s), VHU_GET_FEATURES, &again, error));
  if (again != vcf_session_offered_features(s))
    return vcf_fail(ctx,
                    "GET_FEATURES changed from 0x%" G_GINT64_MODIFIER "x to 0x%" G_GINT64_MODIFIER
                    "x after start",
                    vcf_session_offered_features(s), again);
  PROBE(s, 1);
  return vcf_pass(ctx, "same answer after start");
}

/* --- reply rules --------------------------------------------------------- */

static VcfVerdict
r_flags(VcfCtx *ctx)
{
  const guint32 getters[] = { VHU_GET_FEATURES, VHU_GET_PROTOCOL_FEATURES, VHU_GET_QUEUE_NUM,
                              VHU_GET_MAX_MEM_SLOTS, VHU_GET_STATUS };
  const int need[] = { -1, -2, VHU_PF_MQ, VHU_PF_CONFIGURE_MEM_SLOTS, VHU_PF_STATUS };
  guint n = 0;

  OPEN(s, NULL);
  for (guint i = 0; i < G_N_ELEMENTS(getters); i++) {
    g_autoptr(GError) error = NULL;
    VcfReply r;

    if (need[i] == -2 && !(vcf_session_offered_features(s) & BIT(VHU_F_PROTOCOL_FEATURES)))
      continue;
    if (need[i] >= 0 && !vcf_session_has_pf(s, (guint)need[i]))
      continue;
    if (!vcf_session_send_raw(s, getters[i], VHU_VERSION, NULL, 0, NULL, 0, &error)
        || !vcf_session_recv_raw(s, &r, (int)vcf_session_timeout(s), &error))
      return vcf_fail_error(ctx, vhu_request_name(getters[i]), error);
    if (r.request != getters[i] || r.flags != VHU_REPLY_FLAGS || r.size != 8)
      return vcf_fail(ctx, "%s answered request %u, flags 0x%x, size %u (expected %u, 0x5, 8)",
                      vhu_request_name(getters[i]), r.request, r.flags, r.size, getters[i]);
    n++;
  }
  return vcf_pass(ctx, "%u getters answered with flags 0x5", n);
}

static VcfVerdict
r_ack_every(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  const VcfDevice *d = vcf_ctx_device(ctx);
  guint64 features, v = 1;
  VhuMemTableDesc t = { .nregions = 2 };
  int fds[2];
  VcfRing *r;
  VhuVringAddr addr;
  guint n = 0;
  guint8 config[12 + 4] = { 0 };

  OPEN(s, NULL);
  r = vcf_session_new_ring(s, 0, d->queue_sizes[0], NULL);
  if (r == NULL)
    return vcf_fail(ctx, "no ring memory");
  features = (vcf_session_offered_features(s) & (RING_FEATURES | BIT(VHU_F_PROTOCOL_FEATURES)))
             | BIT(VHU_F_VERSION_1);
  for (guint i = 0; i < 2; i++)
    vcf_session_region(s, i, &t.regions[i], &fds[i]);
  addr = (VhuVringAddr){ .index = 0,
                         .desc_user_addr = (guint64)(guintptr)vcf_ring_desc(r),
                         .used_user_addr = (guint64)(guintptr)vcf_ring_used(r),
                         .avail_user_addr = (guint64)(guintptr)vcf_ring_avail(r) };
  struct {
    guint32 request;
    const void *payload;
    gsize size;
    int fd;
    int need_pf;
  } msgs[] = {
    { VHU_SET_OWNER, NULL, 0, -1, -1 },
    { VHU_SET_FEATURES, &features, 8, -1, -1 },
    { VHU_SET_MEM_TABLE, &t, 8 + 2 * sizeof t.regions[0], -2, -1 },
    { VHU_SET_VRING_NUM, &(VhuVringState){ 0, d->queue_sizes[0] }, 8, -1, -1 },
    { VHU_SET_VRING_BASE, &(VhuVringState){ 0, 0 }, 8, -1, -1 },
    { VHU_SET_VRING_ADDR, &addr, sizeof addr, -1, -1 },
    { VHU_SET_VRING_CALL, &(guint64){ 0 }, 8, eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), -1 },
    { VHU_SET_VRING_ERR, &(guint64){ 0 }, 8, eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), -1 },
    { VHU_SET_VRING_KICK, &(guint64){ 0 }, 8, eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), -1 },
    { VHU_SET_VRING_ENABLE, &(VhuVringState){ 0, 1 }, 8, -1, -3 },
    { VHU_SET_CONFIG, config, sizeof config, -1, VHU_PF_CONFIG },
    { VHU_SET_STATUS, &(guint64){ VHU_STATUS_ACKNOWLEDGE }, 8, -1, VHU_PF_STATUS },
  };
  /* SET_CONFIG: 4 writable bytes (a gpu's events_clear), if the device has any. */
  ((guint32 *)config)[0] = (guint32)MAX(d->writable_config, 0);
  ((guint32 *)config)[1] = 4;
  for (guint i = 0; i < G_N_ELEMENTS(msgs); i++) {
    gboolean ok;

    if (msgs[i].request == VHU_SET_CONFIG && d->writable_config < 0)
      continue;
    if ((msgs[i].need_pf >= 0 && !vcf_session_has_pf(s, (guint)msgs[i].need_pf))
        || (msgs[i].need_pf == -3 && !(features & BIT(VHU_F_PROTOCOL_FEATURES))))
      continue;
    ok = raw_ack(s, msgs[i].request, msgs[i].payload, msgs[i].size,
                 msgs[i].fd == -2  ? fds
                 : msgs[i].fd >= 0 ? &msgs[i].fd
                                   : NULL,
                 msgs[i].fd == -2  ? 2
                 : msgs[i].fd >= 0 ? 1
                                   : 0,
                 &v, why);
    if (msgs[i].fd >= 0)
      close(msgs[i].fd);
    if (!ok)
      return vcf_fail(ctx, "%s", why->str);
    if (v != 0)
      return vcf_fail(ctx, "%s with NEED_REPLY acked %" G_GUINT64_FORMAT ", expected 0",
                      vhu_request_name(msgs[i].request), v);
    n++;
  }
  return vcf_pass(ctx, "%u set-up requests acked with 0", n);
}

static VcfVerdict
r_ack_error(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  VhuVringState st = { BAD_INDEX, 64 };
  guint64 v = 0;

  OPEN(s, NULL);
  if (!raw_ack(s, VHU_SET_VRING_NUM, &st, sizeof st, NULL, 0, &v, why))
    return vcf_fail(ctx, "%s", why->str);
  if (v == 0)
    return vcf_fail(ctx, "SET_VRING_NUM for queue %u acked 0 (success)", BAD_INDEX);
  TRY("GET_FEATURES after the refusal", vcf_session_alive(s, error));
  return vcf_pass(ctx, "acked %" G_GUINT64_FORMAT ", connection still usable", v);
}

static VcfVerdict
r_no_reply_without_need(VcfCtx *ctx)
{
  VhuVringState st = { 0, vcf_ctx_device(ctx)->queue_sizes[0] };
  g_autoptr(GError) error = NULL;
  VcfReply r;

  OPEN(s, NULL);
  if (!vcf_session_send_raw(s, VHU_SET_VRING_NUM, VHU_VERSION, &st, sizeof st, NULL, 0, &error)
      || !vcf_session_send_raw(s, VHU_GET_FEATURES, VHU_VERSION, NULL, 0, NULL, 0, &error)
      || !vcf_session_recv_raw(s, &r, (int)vcf_session_timeout(s), &error))
    return vcf_fail_error(ctx, "SET_VRING_NUM then GET_FEATURES", error);
  if (r.request != VHU_GET_FEATURES)
    return vcf_fail(ctx, "got a reply to %s that did not ask for one", vhu_request_name(r.request));
  return vcf_pass(ctx, "only GET_FEATURES answered");
}

static VcfVerdict
r_getter_need_reply(VcfCtx *ctx)
{
  g_autoptr(GError) error = NULL;
  VcfReply a, b;
  guint64 va, vb;

  OPEN(s, NULL);
  if (!vcf_session_send_raw(s, VHU_GET_FEATURES, VHU_VERSION | VHU_FLAG_NEED_REPLY, NULL, 0, NULL,
                            0, &error)
      || !vcf_session_send_raw(s, VHU_GET_FEATURES, VHU_VERSION, NULL, 0, NULL, 0, &error)
      || !vcf_session_recv_raw(s, &a, (int)vcf_session_timeout(s), &error)
      || !vcf_session_recv_raw(s, &b, (int)vcf_session_timeout(s), &error))
    return vcf_fail_error(ctx, "GET_FEATURES with NEED_REPLY, then without", error);
  memcpy(&va, a.payload, 8);
  memcpy(&vb, b.payload, 8);
  if (a.request != VHU_GET_FEATURES || b.request != VHU_GET_FEATURES || a.size != 8 || b.size != 8
      || va != vcf_session_offered_features(s) || vb != va)
    return vcf_fail(ctx,
                    "answers 0x%" G_GINT64_MODIFIER "x then 0x%" G_GINT64_MODIFIER
                    "x: an extra ack instead of the features",
                    va, vb);
  return vcf_pass(ctx, "one reply each, no extra ack");
}

static VcfVerdict
r_unknown_request(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  guint64 v = 0;

  gboolean closed;

  OPEN(s, NULL);
  if (!raw_ack_full(s, 0x7f00, NULL, 0, NULL, 0, &v, &closed, why)) {
    if (closed)
      return vcf_pass(ctx, "connection closed on an unknown request");
    return vcf_fail(ctx, "%s", why->str);
  }
  if (v == 0)
    return vcf_fail(ctx, "unknown request 0x7f00 acked 0 (success)");
  TRY("GET_FEATURES after the refusal", vcf_session_alive(s, error));
  return vcf_pass(ctx, "refused with ack %" G_GUINT64_FORMAT, v);
}

/* --- memory -------------------------------------------------------------- */

static VcfVerdict
m_table(VcfCtx *ctx)
{
  VcfSessionOptions o
      = { .protocol_mask = VHU_FRONTEND_PROTOCOL_FEATURES & ~BIT(VHU_PF_CONFIGURE_MEM_SLOTS) };
  const VcfDevice *d = vcf_ctx_device(ctx);

  OPEN(s, &o);
  TRY("start with SET_MEM_TABLE",
      vcf_session_start(s, RING_FEATURES, d->queue_sizes, d->num_queues, error));
  PROBE(s, 1);
  return vcf_pass(ctx, "two regions, rings in one, buffers in the other");
}

static VcfVerdict
m_mmap_offset(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);

  OPEN_STARTED(s, RING_FEATURES);
  /* The first bytes of region 1 sit VCF_REGION1_OFF into its memfd. */
  if (!vcf_probe_at(ctx, s, 1, VCF_REGION1_GPA, VCF_REGION1_GPA + 512, FALSE, why))
    return vcf_fail(ctx, "buffers at the start of a region with mmap_offset %u: %s",
                    VCF_REGION1_OFF, why->str);
  return vcf_pass(ctx, "mmap_offset honoured");
}

static VcfVerdict
m_table_too_many(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  guint8 payload[8 + 9 * sizeof(VhuMemRegionDesc)] = { 0 };
  VhuMemRegionDesc r;
  int fd;

  OPEN(s, NULL);
  vcf_session_region(s, 0, &r, &fd);
  ((guint32 *)payload)[0] = 9;
  for (guint i = 0; i < 9; i++) {
    r.guest_phys_addr = (guint64)i << 20;
    r.memory_size = 4096;
    memcpy(payload + 8 + i * sizeof r, &r, sizeof r);
  }
  {
    int fds[8] = { fd, fd, fd, fd, fd, fd, fd, fd };

    if (!refused(s, VHU_SET_MEM_TABLE, payload, sizeof payload, fds, 8, why))
      return vcf_fail(ctx, "SET_MEM_TABLE with 9 regions (8 fds): %s", why->str);
  }
  return vcf_pass(ctx, "refused");
}

static VcfVerdict
m_max_slots(VcfCtx *ctx)
{
  guint64 n;

  OPEN(s, NULL);
  n = vhu_frontend_get_max_mem_slots(vcf_session_frontend(s));
  if (n < 2 || n > 512)
    return vcf_fail(ctx, "GET_MAX_MEM_SLOTS answered %" G_GUINT64_FORMAT " (QEMU needs 2..512)", n);
  return vcf_pass(ctx, "%" G_GUINT64_FORMAT " slots", n);
}

static VcfVerdict
m_add_reg(VcfCtx *ctx)
{
  OPEN_STARTED(s, RING_FEATURES);
  if (!vcf_session_has_pf(s, VHU_PF_CONFIGURE_MEM_SLOTS))
    return vcf_fail(ctx, "CONFIGURE_MEM_SLOTS offered but not negotiated");
  PROBE(s, 1);
  return vcf_pass(ctx, "memory sent with ADD_MEM_REG");
}

#define EXTRA_GPA  G_GUINT64_CONSTANT(0x4000000)
#define EXTRA_SIZE (1u << 20)

static VcfVerdict
m_rem_reg(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  VhuMemSingleRegion m = { 0 };
  int fd;

  OPEN_STARTED(s, RING_FEATURES);
  TRY("extra region",
      vhu_frontend_add_region(vcf_session_frontend(s), EXTRA_GPA, EXTRA_SIZE, error));
  fd = vhu_frontend_get_region_fd(vcf_session_frontend(s), EXTRA_GPA);
  m.region = (VhuMemRegionDesc){ EXTRA_GPA, EXTRA_SIZE,
                                 (guint64)(guintptr)vcf_session_ptr(s, EXTRA_GPA, EXTRA_SIZE), 0 };
  for (guint round = 0; round < 2; round++) {
    TRY("ADD_MEM_REG", vcf_session_request(s, VHU_ADD_MEM_REG, &m, sizeof m, &fd, 1, error));
    if (!vcf_probe_at(ctx, s, round, EXTRA_GPA + 4096, EXTRA_GPA + 8192, FALSE, why))
      return vcf_fail(ctx, "buffers in the added region (round %u): %s", round, why->str);
    TRY("REM_MEM_REG", vcf_session_request(s, VHU_REM_MEM_REG, &m, sizeof m, NULL, 0, error));
  }
  PROBE(s, 9);
  return vcf_pass(ctx, "added, used, removed and added again");
}

static VcfVerdict
m_rem_unknown(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  VhuMemSingleRegion m = { .region = { 0x40000000, 4096, 0x7f0000000000, 0 } };

  OPEN_STARTED(s, RING_FEATURES);
  if (!refused(s, VHU_REM_MEM_REG, &m, sizeof m, NULL, 0, why))
    return vcf_fail(ctx, "REM_MEM_REG of a region never added: %s", why->str);
  return vcf_pass(ctx, "refused");
}

static VcfVerdict
m_add_no_fd(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  VhuMemSingleRegion m = { .region = { EXTRA_GPA, 4096, 0x7f0000000000, 0 } };

  OPEN(s, NULL);
  if (!refused(s, VHU_ADD_MEM_REG, &m, sizeof m, NULL, 0, why))
    return vcf_fail(ctx, "ADD_MEM_REG without its fd: %s", why->str);
  return vcf_pass(ctx, "refused");
}

static VcfVerdict
m_add_beyond_slots(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  guint64 max;
  guint added = 2;

  OPEN_STARTED(s, RING_FEATURES);
  max = vhu_frontend_get_max_mem_slots(vcf_session_frontend(s));
  if (max > 64)
    return vcf_pass(ctx, "%" G_GUINT64_FORMAT " slots: too many to fill here", max);
  for (;; added++) {
    guint64 gpa = EXTRA_GPA + (guint64)added * 0x10000;
    VhuMemSingleRegion m = { 0 };
    int fd;

    TRY("extra region", vhu_frontend_add_region(vcf_session_frontend(s), gpa, 4096, error));
    fd = vhu_frontend_get_region_fd(vcf_session_frontend(s), gpa);
    m.region = (VhuMemRegionDesc){ gpa, 4096, (guint64)(guintptr)vcf_session_ptr(s, gpa, 4096), 0 };
    if (added < max) {
      TRY("ADD_MEM_REG within the limit",
          vcf_session_request(s, VHU_ADD_MEM_REG, &m, sizeof m, &fd, 1, error));
      continue;
    }
    if (!refused(s, VHU_ADD_MEM_REG, &m, sizeof m, &fd, 1, why))
      return vcf_fail(ctx, "region %u of %" G_GUINT64_FORMAT " slots: %s", added + 1, max,
                      why->str);
    break;
  }
  PROBE(s, 1);
  return vcf_pass(ctx, "region %u refused, the others still work", added + 1);
}

/* --- ring set-up and stop ------------------------------------------------ */

static gboolean
stop_ring(VcfSession *s, guint q, guint *base, GError **error)
{
  if ((vcf_session_features(s) & BIT(VHU_F_PROTOCOL_FEATURES))
      && !vcf_session_state(s, VHU_SET_VRING_ENABLE, q, 0, error))
    return FALSE;
  return vcf_session_get_base(s, q, base, error);
}

static VcfVerdict
v_base_after_work(VcfCtx *ctx)
{
  guint base = 0;

  OPEN_STARTED(s, RING_FEATURES);
  for (guint i = 0; i < 5; i++)
    PROBE(s, i);
  TRY("stop", stop_ring(s, 0, &base, error));
  if (base != 5)
    return vcf_fail(ctx, "GET_VRING_BASE after 5 requests answered %u", base);
  return vcf_pass(ctx, "base 5 after 5 requests");
}

static VcfVerdict
v_set_base_resume(VcfCtx *ctx)
{
  VcfRing *r;
  guint base = 0;

  OPEN_STARTED(s, RING_FEATURES);
  r = vcf_session_ring(s, 0);
  for (guint i = 0; i < 3; i++)
    PROBE(s, i);
  TRY("stop", stop_ring(s, 0, &base, error));
  if (base != 3)
    return vcf_fail(ctx, "GET_VRING_BASE answered %u after 3 requests", base);
  TRY("restart at base 3", vcf_ring_setup(r, 3, error));
  PROBE(s, 3);
  if (vcf_ring_used_idx(r) != 4)
    return vcf_fail(ctx, "used index %u after the 4th request: old requests were redone",
                    vcf_ring_used_idx(r));
  return vcf_pass(ctx, "resumed at 3");
}

static VcfVerdict
v_base_nonzero(VcfCtx *ctx)
{
  const VcfDevice *d = vcf_ctx_device(ctx);
  guint base = 0;
  VcfRing *r;

  OPEN_STARTED(s, RING_FEATURES);
  TRY("stop", stop_ring(s, 0, &base, error));
  r = vcf_session_new_ring(s, 0, d->queue_sizes[0], NULL);
  if (r == NULL)
    return vcf_fail(ctx, "no ring memory");
  vcf_ring_set_indices(r, 1000);
  TRY("start at base 1000", vcf_ring_setup(r, 1000, error));
  PROBE(s, 1);
  TRY("stop", stop_ring(s, 0, &base, error));
  if (vcf_ring_used_idx(r) != 1001 || base != 1001)
    return vcf_fail(ctx, "used index %u and base %u after one request from 1000",
                    vcf_ring_used_idx(r), base);
  return vcf_pass(ctx, "started at 1000, stopped at 1001");
}

static VcfVerdict
v_num_invalid(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  const guint sizes[] = { 0, 3, 65536 };

  OPEN(s, NULL);
  for (guint i = 0; i < G_N_ELEMENTS(sizes); i++) {
    VhuVringState st = { 0, sizes[i] };

    if (!refused(s, VHU_SET_VRING_NUM, &st, sizeof st, NULL, 0, why))
      return vcf_fail(ctx, "SET_VRING_NUM(%u): %s", sizes[i], why->str);
  }
  return vcf_pass(ctx, "sizes 0, 3 and 65536 refused");
}

static VcfVerdict
v_enable_cycle(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  VhuVringState bad = { BAD_INDEX, 1 };

  OPEN_STARTED(s, RING_FEATURES);
  PROBE(s, 1);
  TRY("SET_VRING_ENABLE(0)", vcf_session_state(s, VHU_SET_VRING_ENABLE, 0, 0, error));
  TRY("SET_VRING_ENABLE(1)", vcf_session_state(s, VHU_SET_VRING_ENABLE, 0, 1, error));
  PROBE(s, 2);
  if (vcf_session_has_pf(s, VHU_PF_REPLY_ACK)
      && !refused(s, VHU_SET_VRING_ENABLE, &bad, sizeof bad, NULL, 0, why))
    return vcf_fail(ctx, "SET_VRING_ENABLE for queue %u: %s", BAD_INDEX, why->str);
  return vcf_pass(ctx, "disable, enable, work; bad index refused");
}

/* --- ring semantics ------------------------------------------------------ */

static VcfVerdict
s_indirect(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);

  OPEN_STARTED(s, RING_FEATURES);
  for (guint i = 0; i < 3; i++) {
    guint64 req = vcf_session_alloc(s, 256), resp = vcf_session_alloc(s, 256);

    if (!vcf_probe_at(ctx, s, i, req, resp, TRUE, why))
      return vcf_fail(ctx, "indirect request %u: %s", i, why->str);
  }
  return vcf_pass(ctx, "3 indirect requests answered");
}

/* The request in three readable descriptors, the answer in two writable. */
static VcfVerdict
s_split_buffers(VcfCtx *ctx)
{
  const VcfDevice *d = vcf_ctx_device(ctx);
  g_autoptr(GString) why = g_string_new(NULL);
  guint8 req[256], resp[256] = { 0 };
  gsize len = d->probe_request(7, req);
  guint32 a = (guint32)len / 3, b = (guint32)len / 3, c = (guint32)len - a - b;
  guint32 ra = d->resp_size / 2, rb = d->resp_size - ra;
  guint32 used_len = 0;
  VcfRing *r;

  OPEN_STARTED(s, RING_FEATURES);
  r = vcf_session_ring(s, 0);
  guint64 g[5];
  for (guint i = 0; i < 5; i++)
    g[i] = vcf_session_alloc(s, 128);
  vcf_session_write(s, g[0], req, a);
  vcf_session_write(s, g[1], req + a, b);
  vcf_session_write(s, g[2], req + a + b, c);
  VhuGuestBuf out[3] = { { g[0], a }, { g[1], b }, { g[2], c } };
  VhuGuestBuf in[2] = { { g[3], ra }, { g[4], rb } };
  if (vcf_ring_add(r, out, 3, in, 2, FALSE) < 0)
    return vcf_fail(ctx, "ring full");
  vcf_ring_publish(r);
  vcf_ring_kick(r);
  if (!vcf_ring_wait_used(r, (int)vcf_session_timeout(s), NULL, &used_len))
    return vcf_fail(ctx, "request in 5 descriptors not answered");
  if (used_len > d->resp_size)
    return vcf_fail(ctx, "used length %u exceeds %u writable bytes", used_len, d->resp_size);
  vcf_session_read(s, g[3], resp, MIN(used_len, ra));
  if (used_len > ra)
    vcf_session_read(s, g[4], resp + ra, used_len - ra);
  if (!d->probe_ok(7, req, len, resp, used_len, why))
    return vcf_fail(ctx, "request split %u+%u+%u, answer %u+%u: %s", a, b, c, ra, rb, why->str);
  return vcf_pass(ctx, "request in 3 descriptors, answer in 2");
}

static VcfVerdict
s_span_regions(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  guint64 edge = VCF_REGION1_GPA;

  OPEN_STARTED(s, RING_FEATURES);
  if (!vcf_probe_at(ctx, s, 1, edge - 12, vcf_session_alloc(s, 256), FALSE, why))
    return vcf_fail(ctx, "request spanning two regions: %s", why->str);
  if (!vcf_probe_at(ctx, s, 2, vcf_session_alloc(s, 256), edge - 8, FALSE, why))
    return vcf_fail(ctx, "answer buffer spanning two regions: %s", why->str);
  return vcf_pass(ctx, "buffers across the region boundary read and written");
}

/* Used-buffer notifications: with EVENT_IDX, only when used_event is
 * passed; with VRING_AVAIL_F_NO_INTERRUPT, none. */
static VcfVerdict
notify_check(VcfCtx *ctx, gboolean event_idx)
{
  VcfRing *r;
  guint64 calls;

  OPEN_STARTED(s, event_idx ? RING_FEATURES : BIT(VHU_F_RING_INDIRECT_DESC));
  r = vcf_session_ring(s, 0);
  PROBE(s, 0);
  /* Its notification may land just after its used entry: wait, then count
   * from zero. */
  if (!vcf_ring_wait_call(r, (int)vcf_session_timeout(s)))
    return vcf_fail(ctx, "no notification for the first request");
  vcf_ring_take_calls(r);
  if (event_idx) {
    /* Ask for a notification only once used idx passes current + 2. */
    vcf_ring_set_used_event(r, (guint16)(vcf_ring_used_idx(r) + 2));
  } else {
    vcf_ring_avail(r)->flags = VRING_AVAIL_F_NO_INTERRUPT;
  }
  for (guint i = 1; i <= 2; i++) {
    g_autoptr(GString) why = g_string_new(NULL);
    guint64 req = vcf_session_alloc(s, 256), resp = vcf_session_alloc(s, 256);

    /* vcf_probe_at never touches used_event or the flags. */
    if (!vcf_probe_at(ctx, s, i, req, resp, FALSE, why))
      return vcf_fail(ctx, "request %u: %s", i, why->str);
  }
  if (!event_idx)
    vcf_ring_avail(r)->flags = 0;
  {
    g_autoptr(GString) why = g_string_new(NULL);
    guint64 req = vcf_session_alloc(s, 256), resp = vcf_session_alloc(s, 256);

    if (!vcf_probe_at(ctx, s, 3, req, resp, FALSE, why))
      return vcf_fail(ctx, "request 3: %s", why->str);
  }
  if (!vcf_ring_wait_call(r, (int)vcf_session_timeout(s)))
    return vcf_fail(ctx, "no notification for the request the driver asked one for");
  calls = vcf_ring_take_calls(r);
  if (calls != 1)
    return vcf_fail(ctx, "%" G_GUINT64_FORMAT " notifications for 3 requests, %s", calls,
                    event_idx ? "used_event asked for 1" : "NO_INTERRUPT suppressed 2");
  return vcf_pass(ctx, "one notification, as asked");
}

static VcfVerdict
s_event_idx(VcfCtx *ctx)
{
  return notify_check(ctx, TRUE);
}

static VcfVerdict
s_no_interrupt(VcfCtx *ctx)
{
  return notify_check(ctx, FALSE);
}

static VcfVerdict
s_notify_on_empty(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  VcfRing *r;

  OPEN_STARTED(s, BIT(VHU_F_NOTIFY_ON_EMPTY));
  r = vcf_session_ring(s, 0);
  vcf_ring_avail(r)->flags = VRING_AVAIL_F_NO_INTERRUPT;
  if (!vcf_probe_at(ctx, s, 1, vcf_session_alloc(s, 256), vcf_session_alloc(s, 256), FALSE, why))
    return vcf_fail(ctx, "request: %s", why->str);
  if (!vcf_ring_wait_call(r, (int)vcf_session_timeout(s)))
    return vcf_fail(ctx, "ring empty, NOTIFY_ON_EMPTY negotiated, but no notification");
  return vcf_pass(ctx, "notified when the ring ran empty despite NO_INTERRUPT");
}

/* --- config -------------------------------------------------------------- */

static gboolean
get_config_raw(VcfSession *s, guint32 offset, guint32 size, VcfReply *r, GError **error)
{
  VhuConfigMsg m = { .offset = offset, .size = size, .flags = 0 };

  return vcf_session_send_raw(s, VHU_GET_CONFIG, VHU_VERSION, &m,
                              VHU_CONFIG_HDR_SIZE + MIN(size, VHU_MAX_CONFIG_SIZE), NULL, 0, error)
         && vcf_session_recv_raw(s, r, (int)vcf_session_timeout(s), error);
}

static VcfVerdict
c_get(VcfCtx *ctx)
{
  guint32 size = vcf_ctx_device(ctx)->config_size;
  VcfReply r;
  guint32 off, sz;

  OPEN(s, NULL);
  TRY("GET_CONFIG", get_config_raw(s, 0, size, &r, error));
  memcpy(&off, r.payload, 4);
  memcpy(&sz, r.payload + 4, 4);
  if (r.request != VHU_GET_CONFIG || r.flags != VHU_REPLY_FLAGS
      || r.size != VHU_CONFIG_HDR_SIZE + size || off != 0 || sz != size)
    return vcf_fail(ctx, "reply request %u flags 0x%x size %u offset %u config size %u", r.request,
                    r.flags, r.size, off, sz);
  return vcf_pass(ctx, "%u bytes", size);
}

static VcfVerdict
c_get_out_of_bounds(VcfCtx *ctx)
{
  guint32 size = vcf_ctx_device(ctx)->config_size;
  g_autoptr(GError) error = NULL;
  VcfReply r;

  OPEN(s, NULL);
  if (!get_config_raw(s, size, 8, &r, &error)) {
    if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED))
      return vcf_pass(ctx, "connection closed");
    return vcf_fail_error(ctx, "GET_CONFIG past the end", error);
  }
  if (r.request != VHU_GET_CONFIG || r.flags != VHU_REPLY_FLAGS)
    return vcf_fail(ctx, "reply request %u flags 0x%x", r.request, r.flags);
  return vcf_pass(ctx, "answered (%u bytes), no hang", r.size);
}

static VcfVerdict
c_set_out_of_bounds(VcfCtx *ctx)
{
  g_autoptr(GString) why = g_string_new(NULL);
  VhuConfigMsg m = { .offset = vcf_ctx_device(ctx)->config_size, .size = 4 };
  VhuConfigMsg lie = { .offset = 0, .size = 200 };

  OPEN(s, NULL);
  if (!refused(s, VHU_SET_CONFIG, &m, VHU_CONFIG_HDR_SIZE + 4, NULL, 0, why))
    return vcf_fail(ctx, "SET_CONFIG past the end: %s", why->str);
  if (!vcf_session_alive(s, NULL))
    return vcf_pass(ctx, "refused by closing");
  if (!refused(s, VHU_SET_CONFIG, &lie, VHU_CONFIG_HDR_SIZE + 4, NULL, 0, why))
    return vcf_fail(ctx, "SET_CONFIG claiming 200 bytes with 4: %s", why->str);
  return vcf_pass(ctx, "both refused");
}

/* --- status and reset ---------------------------------------------------- */

static VcfVerdict
t_roundtrip(VcfCtx *ctx)
{
  const guint8 want = VHU_STATUS_ACKNOWLEDGE | VHU_STATUS_DRIVER;
  guint8 st = 0;

  OPEN(s, NULL);
  TRY("SET_STATUS", vhu_frontend_set_u64(vcf_session_frontend(s), VHU_SET_STATUS, want, error));
  TRY("GET_STATUS", vhu_frontend_get_status(vcf_session_frontend(s), &st, error));
  if (st != want)
    return vcf_fail(ctx, "SET_STATUS 0x%x, GET_STATUS 0x%x", want, st);
  return vcf_pass(ctx, "0x%x", st);
}

static VcfVerdict
t_reset_device(VcfCtx *ctx)
{
  const VcfDevice *d = vcf_ctx_device(ctx);
  guint8 st = 0;
  VcfRing *r;

  OPEN_STARTED(s, RING_FEATURES);
  PROBE(s, 1);
  TRY("RESET_DEVICE", vcf_session_request(s, VHU_RESET_DEVICE, NULL, 0, NULL, 0, error));
  if (vcf_session_has_pf(s, VHU_PF_STATUS)) {
    TRY("GET_STATUS", vhu_frontend_get_status(vcf_session_frontend(s), &st, error));
    if (st != 0)
      return vcf_fail(ctx, "status 0x%x after RESET_DEVICE", st);
  }
  TRY("SET_FEATURES",
      vcf_session_request(s, VHU_SET_FEATURES, &(guint64){ vcf_session_features(s) }, 8, NULL, 0,
                          error));
  r = vcf_session_new_ring(s, 0, d->queue_sizes[0], NULL);
  if (r == NULL)
    return vcf_fail(ctx, "no ring memory");
  TRY("ring set-up after the reset", vcf_ring_setup(r, 0, error));
  PROBE(s, 2);
  return vcf_pass(ctx, "reset, set up again, works");
}

static VcfVerdict
t_needs_reset(VcfCtx *ctx)
{
  VcfRing *r;
  VhuGuestBuf bad = { G_GUINT64_CONSTANT(0xdead00000000), 64 };
  gint64 deadline;

  OPEN_STARTED(s, RING_FEATURES);
  r = vcf_session_ring(s, 0);
  vcf_ring_add(r, &bad, 1, NULL, 0, FALSE);
  vcf_ring_publish(r);
  vcf_ring_kick(r);
  deadline = g_get_monotonic_time() + (gint64)vcf_session_timeout(s) * 1000;
  do {
    guint8 st = 0;

    if (vcf_ring_take_error(r))
      return vcf_pass(ctx, "error eventfd signalled");
    TRY("GET_STATUS", vhu_frontend_get_status(vcf_session_frontend(s), &st, error));
    if (st & VHU_STATUS_NEEDS_RESET)
      return vcf_pass(ctx, "status 0x%x has NEEDS_RESET", st);
    if (vcf_ring_wait_used(r, 10, NULL, NULL))
      return vcf_fail(ctx, "a descriptor outside guest memory was completed");
  } while (g_get_monotonic_time() < deadline);
  return vcf_fail(ctx, "a descriptor outside guest memory: neither NEEDS_RESET nor the error fd");
}

/* --- inflight tracking --------------------------------------------------- */

static VcfVerdict
i_get_fd(VcfCtx *ctx)
{
  const VcfDevice *d = vcf_ctx_device(ctx);
  VhuInflightMsg m = { .num_queues = (guint16)d->num_queues, .queue_size = 64 };
  gsize size = sizeof m, need = d->num_queues * (sizeof(VhuInflightQueue) + 64 * 16);
  int fd = -1;
  guint n_fds = 1;
  void *map;

  OPEN(s, NULL);
  TRY("GET_INFLIGHT_FD",
      vhu_frontend_send(vcf_session_frontend(s), VHU_GET_INFLIGHT_FD, 0, &m, sizeof m, NULL, 0,
                        error)
          && vhu_frontend_recv_reply(vcf_session_frontend(s), VHU_GET_INFLIGHT_FD, &m, &size, &fd,
                                     &n_fds, error));
  if (n_fds != 1 || fd < 0)
    return vcf_fail(ctx, "GET_INFLIGHT_FD answered without an fd");
  if (size != sizeof m || m.mmap_size < need) {
    close(fd);
    return vcf_fail(ctx,
                    "payload %" G_GSIZE_FORMAT " bytes, mmap_size %" G_GUINT64_FORMAT
                    " (need %" G_GSIZE_FORMAT ")",
                    size, m.mmap_size, need);
  }
  map = mmap(NULL, m.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)m.mmap_offset);
  close(fd);
  if (map == MAP_FAILED)
    return vcf_fail(ctx, "the inflight fd cannot be mapped for %" G_GUINT64_FORMAT " bytes",
                    m.mmap_size);
  munmap(map, m.mmap_size);
  return vcf_pass(ctx, "%" G_GUINT64_FORMAT " bytes", m.mmap_size);
}

/* A backend restarted with the inflight buffer of its predecessor, which
 * had taken request h0 (recorded inflight) but not h1: h0 is resubmitted
 * first, then h1 is taken from the avail ring (SET_VRING_BASE says one
 * request was taken). */
static VcfVerdict
i_resubmit(VcfCtx *ctx)
{
  const VcfDevice *d = vcf_ctx_device(ctx);
  VhuInflightMsg m = { .num_queues = (guint16)d->num_queues, .queue_size = 64 };
  g_autoptr(GString) why = g_string_new(NULL);
  gsize size = sizeof m;
  guint n_fds = 1;
  int fd = -1, heads[2];
  guint64 req[2], resp[2];
  VhuInflightQueue *q;
  VcfRing *r;
  void *map;

  {
    OPEN(s1, NULL);
    TRY("GET_INFLIGHT_FD",
        vhu_frontend_send(vcf_session_frontend(s1), VHU_GET_INFLIGHT_FD, 0, &m, sizeof m, NULL, 0,
                          error)
            && vhu_frontend_recv_reply(vcf_session_frontend(s1), VHU_GET_INFLIGHT_FD, &m, &size,
                                       &fd, &n_fds, error));
  }
  if (n_fds != 1 || fd < 0 || m.mmap_size < sizeof(VhuInflightQueue) + 64 * 16)
    return vcf_fail(ctx, "GET_INFLIGHT_FD gave no usable buffer");
  map = mmap(NULL, m.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)m.mmap_offset);
  if (map == MAP_FAILED) {
    close(fd);
    return vcf_fail(ctx, "the inflight fd cannot be mapped");
  }
  OPEN(s, NULL);
  {
    g_autoptr(GError) error = NULL;

    if (!vcf_session_set_features(s, 0, &error) || !vcf_session_send_memory(s, FALSE, &error)
        || (r = vcf_session_new_ring(s, 0, 64, &error)) == NULL) {
      munmap(map, m.mmap_size);
      close(fd);
      return vcf_fail_error(ctx, "set-up", error);
    }
  }
  for (guint i = 0; i < 2; i++) {
    guint8 buf[256];
    gsize len = d->probe_request(i, buf);
    VhuGuestBuf out, in;

    req[i] = vcf_session_alloc(s, 256);
    resp[i] = vcf_session_alloc(s, 256);
    vcf_session_write(s, req[i], buf, len);
    out = (VhuGuestBuf){ req[i], (guint32)len };
    in = (VhuGuestBuf){ resp[i], d->resp_size };
    heads[i] = vcf_ring_add(r, &out, 1, &in, 1, FALSE);
  }
  vcf_ring_publish(r);
  /* What the crashed backend left: h0 inflight, nothing used. */
  q = map;
  q->version = 1;
  q->desc_num = 64;
  q->used_idx = 0;
  q->last_batch_head = 0;
  q->desc[heads[0]].inflight = 1;
  q->desc[heads[0]].counter = 1;
  munmap(map, m.mmap_size);
  {
    g_autoptr(GError) error = NULL;
    gboolean ok = vcf_session_request(s, VHU_SET_INFLIGHT_FD, &m, sizeof m, &fd, 1, &error)
                  && vcf_ring_setup(r, 1, &error);

    close(fd);
    if (!ok)
      return vcf_fail_error(ctx, "SET_INFLIGHT_FD and ring start at base 1", error);
  }
  vcf_ring_kick(r);
  for (guint i = 0; i < 2; i++) {
    guint8 in_buf[256] = { 0 }, out_buf[256];
    guint32 id = 0, len = 0;
    gsize req_len = d->probe_request(i, out_buf);

    if (!vcf_ring_wait_used(r, (int)vcf_session_timeout(s), &id, &len))
      return vcf_fail(ctx, "%s never completed", i == 0 ? "the inflight request" : "the new one");
    if (id != (guint32)heads[i])
      return vcf_fail(ctx, "completion %u is head %u, expected %d (%s)", i, id, heads[i],
                      i == 0 ? "the inflight one first" : "the new one");
    vcf_session_read(s, resp[i], in_buf, MIN(len, sizeof in_buf));
    if (len > d->resp_size || !d->probe_ok(i, out_buf, req_len, in_buf, len, why))
      return vcf_fail(ctx, "request %u answered wrongly: %s", i, why->str);
  }
  return vcf_pass(ctx, "the inflight request resubmitted first, then the new one");
}

/* --- reconnect ----------------------------------------------------------- */

static VcfVerdict
x_second_connection(VcfCtx *ctx)
{
  {
    OPEN_STARTED(s1, RING_FEATURES);
    PROBE(s1, 1);
    /* Dropped without stopping, as a crashed frontend would. */
  }
  {
    OPEN_STARTED(s2, RING_FEATURES);
    PROBE(s2, 2);
  }
  return vcf_pass(ctx, "a new frontend after one vanished mid-session");
}

static VcfVerdict
x_close_with_reply_pending(VcfCtx *ctx)
{
  OPEN(s, NULL);
  TRY("GET_FEATURES",
      vcf_session_send_raw(s, VHU_GET_FEATURES, VHU_VERSION, NULL, 0, NULL, 0, error));
  return vcf_pass(ctx, "closed before reading the reply");
}

/* --- hostile frontends and guests ---------------------------------------- */

static VcfVerdict
z_oversized(VcfCtx *ctx)
{
  VhuMsgHeader h = { VHU_SET_OWNER, VHU_VERSION, 0x100000 };

  OPEN(s, NULL);
  if (write(vhu_frontend_get_fd(vcf_session_frontend(s)), &h, sizeof h) != sizeof h)
    return vcf_fail(ctx, "write failed");
  if (!vcf_session_wait_closed(s, (int)vcf_session_timeout(s)))
    return vcf_fail(ctx, "a 1 MiB payload announced but not sent: connection still open");
  return vcf_pass(ctx, "connection closed");
}

static VcfVerdict
z_bad_version(VcfCtx *ctx)
{
  g_autoptr(GError) error = NULL;
  VcfReply r;

  OPEN(s, NULL);
  if (!vcf_session_send_raw(s, VHU_GET_FEATURES, 0x2, NULL, 0, NULL, 0, &error))
    return vcf_fail_error(ctx, "send", error);
  if (vcf_session_recv_raw(s, &r, (int)vcf_session_timeout(s), &error))
    return vcf_pass(ctx, "version 2 answered (lenient), flags 0x%x", r.flags);
  if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED))
    return vcf_pass(ctx, "connection closed");
  return vcf_fail_error(ctx, "neither answered nor closed", error);
}

static VcfVerdict
z_too_many_fds(VcfCtx *ctx)
{
  int fds[8];
  g_autoptr(GError) error = NULL;

  OPEN(s, NULL);
  for (guint i = 0; i < 8; i++)
    fds[i] = eventfd(0, EFD_CLOEXEC);
  vcf_session_send_raw(s, VHU_SET_OWNER, VHU_VERSION, NULL, 0, fds, 8, &error);
  for (guint i = 0; i < 8; i++)
    close(fds[i]);
  if (vcf_session_alive(s, &error))
    return vcf_pass(ctx, "8 fds on SET_OWNER ignored");
  if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED))
    return vcf_pass(ctx, "connection closed");
  return vcf_fail_error(ctx, "GET_FEATURES afterwards", error);
}

/* A broken ring: the control path must keep answering. */
static VcfVerdict
broken_ring(VcfCtx *ctx, const char *what, void (*breaker)(VcfSession *s, VcfRing *r))
{
  VcfRing *r;

  OPEN_STARTED(s, RING_FEATURES);
  r = vcf_session_ring(s, 0);
  PROBE(s, 1);
  breaker(s, r);
  vcf_ring_kick(r);
  vcf_ring_wait_used(r, 50, NULL, NULL);
  TRY(what, vcf_session_alive(s, error));
  return vcf_pass(ctx, "%s: control path still answers", what);
}

static void
break_loop(VcfSession *s, VcfRing *r)
{
  guint64 buf = vcf_session_alloc(s, 64);
  struct vring_desc *d = vcf_ring_desc(r);
  guint16 h = vcf_ring_next_desc(r);
  guint16 h2 = (guint16)((h + 1) % vcf_ring_size(r));

  d[h] = (struct vring_desc){ buf, 16, VRING_DESC_F_NEXT, h2 };
  d[h2] = (struct vring_desc){ buf, 16, VRING_DESC_F_NEXT, h };
  vcf_ring_avail(r)->ring[vcf_ring_avail_idx(r) % vcf_ring_size(r)] = h;
  vcf_ring_avail(r)->idx = (guint16)(vcf_ring_avail_idx(r) + 1);
}

static void
break_oob(VcfSession *s, VcfRing *r)
{
  VhuGuestBuf bad = { G_GUINT64_CONSTANT(0xfffffffffffff000), 64 };

  vcf_ring_add(r, &bad, 1, &bad, 1, FALSE);
  vcf_ring_publish(r);
}

static void
break_jump(VcfSession *s, VcfRing *r)
{
  vcf_ring_avail(r)->idx = (guint16)(vcf_ring_avail_idx(r) + vcf_ring_size(r) + 5);
}

static void
break_indirect(VcfSession *s, VcfRing *r)
{
  struct vring_desc *d = vcf_ring_desc(r);
  guint16 h = vcf_ring_next_desc(r);

  d[h] = (struct vring_desc){ vcf_session_alloc(s, 64), 0x100008, VRING_DESC_F_INDIRECT, 0 };
  vcf_ring_avail(r)->ring[vcf_ring_avail_idx(r) % vcf_ring_size(r)] = h;
  vcf_ring_avail(r)->idx = (guint16)(vcf_ring_avail_idx(r) + 1);
}

static VcfVerdict
z_desc_loop(VcfCtx *ctx)
{
  return broken_ring(ctx, "descriptor loop", break_loop);
}

static VcfVerdict
z_desc_outside(VcfCtx *ctx)
{
  return broken_ring(ctx, "descriptor outside guest memory", break_oob);
}

static VcfVerdict
z_avail_jump(VcfCtx *ctx)
{
  return broken_ring(ctx, "avail index beyond the ring size", break_jump);
}

static VcfVerdict
z_indirect_huge(VcfCtx *ctx)
{
  return broken_ring(ctx, "indirect table of 1 MiB, not a multiple of 16", break_indirect);
}

static VcfVerdict
z_index_range(VcfCtx *ctx)
{
  const guint32 requests[]
      = { VHU_SET_VRING_NUM, VHU_SET_VRING_BASE, VHU_SET_VRING_ADDR, VHU_GET_VRING_BASE };
  guint refused_n = 0;

  OPEN(s, NULL);
  for (guint i = 0; i < G_N_ELEMENTS(requests); i++) {
    VhuVringAddr a = { .index = BAD_INDEX };
    VhuVringState st = { BAD_INDEX, 64 };
    gboolean is_addr = requests[i] == VHU_SET_VRING_ADDR;
    g_autoptr(GError) error = NULL;
    VcfReply r;

    if (!vcf_session_send_raw(
            s, requests[i],
            VHU_VERSION | (requests[i] == VHU_GET_VRING_BASE ? 0 : VHU_FLAG_NEED_REPLY),
            is_addr ? (void *)&a : (void *)&st, is_addr ? sizeof a : sizeof st, NULL, 0, &error))
      return vcf_pass(ctx, "connection closed after %u refusals", refused_n);
    if (!vcf_session_recv_raw(s, &r, (int)vcf_session_timeout(s), &error)) {
      if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED))
        return vcf_pass(ctx, "connection closed after %u refusals", refused_n);
      return vcf_fail_error(ctx, vhu_request_name(requests[i]), error);
    }
    if (requests[i] != VHU_GET_VRING_BASE && r.size == 8
        && memcmp(r.payload, &(guint64){ 0 }, 8) == 0)
      return vcf_fail(ctx, "%s for queue %u acked 0 (success)", vhu_request_name(requests[i]),
                      BAD_INDEX);
    refused_n++;
  }
  return vcf_pass(ctx, "queue %u refused by every ring request", BAD_INDEX);
}

#define US         "vhost-user: "
#define FEAT(bit)  VCF_NEED_FEATURE, (bit)
#define PROTO(bit) VCF_NEED_PROTOCOL, (bit)
#define NONE       VCF_NEED_NONE, 0

const VcfCheck vcf_vhost_checks[] = {
  { "handshake.version-1", "handshake", "virtio 1.3 §6 (VIRTIO_F_VERSION_1)", NONE,
    "GET_FEATURES offers VERSION_1 (vhost-user backends are virtio 1.x devices)", h_version1 },
  { "handshake.config-offered", "handshake", US "Protocol features (VHOST_USER_PROTOCOL_F_CONFIG)",
    NONE, "a device with config space offers PROTOCOL_F_CONFIG (QEMU refuses to realize otherwise)",
    h_config_offered },
  { "handshake.queue-num", "handshake", US "Multiple queue support", PROTO(VHU_PF_MQ),
    "GET_QUEUE_NUM reports at least the device's queues", h_queue_num },
  { "handshake.no-protocol-features", "handshake", US "Ring states", NONE,
    "a frontend that never negotiates PROTOCOL_FEATURES gets rings enabled at start",
    h_no_protocol_features },
  { "handshake.features-subset", "handshake", US "Feature negotiation", NONE,
    "the device works with only VERSION_1 acked (no ring features)", h_features_subset },
  { "handshake.features-stable", "handshake",
    US "Front-end message types (VHOST_USER_GET_FEATURES)", NONE,
    "GET_FEATURES gives the same answer after start (QEMU uses it as a barrier)",
    h_features_stable },
  { "reply.flags", "reply", US "Message Specification (Header)", NONE,
    "every getter is answered with flags exactly 0x5, its own id and 8 bytes", r_flags },
  { "reply.ack-every-request", "reply", US "Communication (REPLY_ACK)", PROTO(VHU_PF_REPLY_ACK),
    "every set-up request with NEED_REPLY is acked with u64 0 and flags 0x5", r_ack_every },
  { "reply.ack-error", "reply", US "Communication (REPLY_ACK)", PROTO(VHU_PF_REPLY_ACK),
    "a request that fails is acked non-zero and the connection stays usable", r_ack_error },
  { "reply.no-reply-unasked", "reply", US "Communication", NONE,
    "a request without NEED_REPLY and without a reply of its own gets no reply",
    r_no_reply_without_need },
  { "reply.getter-need-reply", "reply", US "Communication (REPLY_ACK)", NONE,
    "a getter sent with NEED_REPLY gets its own reply only, no extra ack", r_getter_need_reply },
  { "reply.unknown-request", "reply", US "Communication (REPLY_ACK)", PROTO(VHU_PF_REPLY_ACK),
    "an unknown request with NEED_REPLY is refused (non-zero ack) or the connection closed",
    r_unknown_request },
  { "mem.set-mem-table", "mem", US "Front-end message types (VHOST_USER_SET_MEM_TABLE)", NONE,
    "two regions in one SET_MEM_TABLE (rings in one, buffers in the other)", m_table },
  { "mem.mmap-offset", "mem", US "Front-end message types (VHOST_USER_SET_MEM_TABLE)", NONE,
    "a region's mmap_offset is honoured", m_mmap_offset },
  { "mem.table-too-many", "mem", US "Front-end message types (VHOST_USER_SET_MEM_TABLE)",
    PROTO(VHU_PF_REPLY_ACK), "a table of 9 regions (more than 8) is refused", m_table_too_many },
  { "mem.max-slots", "mem", US "Front-end message types (VHOST_USER_GET_MAX_MEM_SLOTS)",
    PROTO(VHU_PF_CONFIGURE_MEM_SLOTS), "GET_MAX_MEM_SLOTS answers a usable number", m_max_slots },
  { "mem.add-mem-reg", "mem", US "Front-end message types (VHOST_USER_ADD_MEM_REG)",
    PROTO(VHU_PF_CONFIGURE_MEM_SLOTS), "memory sent region by region with ADD_MEM_REG works",
    m_add_reg },
  { "mem.rem-mem-reg", "mem", US "Front-end message types (VHOST_USER_REM_MEM_REG)",
    PROTO(VHU_PF_CONFIGURE_MEM_SLOTS), "a region is added, used, removed and added again",
    m_rem_reg },
  { "mem.rem-unknown", "mem", US "Front-end message types (VHOST_USER_REM_MEM_REG)",
    PROTO(VHU_PF_CONFIGURE_MEM_SLOTS), "removing a region never added is refused", m_rem_unknown },
  { "mem.add-without-fd", "mem", US "Front-end message types (VHOST_USER_ADD_MEM_REG)",
    PROTO(VHU_PF_CONFIGURE_MEM_SLOTS), "ADD_MEM_REG without its fd is refused", m_add_no_fd },
  { "mem.slot-limit", "mem", US "Front-end message types (VHOST_USER_ADD_MEM_REG)",
    PROTO(VHU_PF_CONFIGURE_MEM_SLOTS), "one region more than GET_MAX_MEM_SLOTS is refused",
    m_add_beyond_slots },
  { "vring.base-after-work", "vring", US "Front-end message types (VHOST_USER_GET_VRING_BASE)",
    NONE, "GET_VRING_BASE after 5 requests answers 5", v_base_after_work },
  { "vring.set-base-resume", "vring", US "Ring states (SET_VRING_BASE)", NONE,
    "a ring stopped at 3 and restarted with SET_VRING_BASE(3) goes on from there",
    v_set_base_resume },
  { "vring.base-nonzero", "vring", US "Front-end message types (VHOST_USER_SET_VRING_BASE)", NONE,
    "a fresh ring started at base 1000 processes from 1000", v_base_nonzero },
  { "vring.num-invalid", "vring", "virtio 1.3 §2.7 (Queue Size)", PROTO(VHU_PF_REPLY_ACK),
    "SET_VRING_NUM refuses 0, 3 and 65536", v_num_invalid },
  { "vring.enable-cycle", "vring", US "Ring states (VHOST_USER_SET_VRING_ENABLE)",
    FEAT(VHU_F_PROTOCOL_FEATURES),
    "disable and enable a ring, then it works; a bad index is refused", v_enable_cycle },
  { "ring.indirect", "ring", "virtio 1.3 §2.7.5.3 Indirect Descriptors",
    FEAT(VHU_F_RING_INDIRECT_DESC), "requests in indirect tables", s_indirect },
  { "ring.split-buffers", "ring", "virtio 1.3 §2.7.4 Message Framing", NONE,
    "a request in 3 descriptors, the answer in 2", s_split_buffers },
  { "ring.span-regions", "ring", US "Memory access (buffers crossing regions)", NONE,
    "a buffer contiguous in guest memory but in two regions", s_span_regions },
  { "ring.event-idx", "ring", "virtio 1.3 §2.7.10 Used Buffer Notification Suppression",
    FEAT(VHU_F_RING_EVENT_IDX), "with EVENT_IDX only the notification used_event asks for",
    s_event_idx },
  { "ring.no-interrupt", "ring", "virtio 1.3 §2.7.10 Used Buffer Notification Suppression", NONE,
    "VRING_AVAIL_F_NO_INTERRUPT suppresses notifications (a SHOULD)", s_no_interrupt },
  { "ring.notify-on-empty", "ring", "virtio 1.3 §6.3 Legacy Interface: Reserved Feature Bits",
    FEAT(VHU_F_NOTIFY_ON_EMPTY), "NOTIFY_ON_EMPTY notifies an empty ring despite NO_INTERRUPT",
    s_notify_on_empty },
  { "config.get", "config", US "Front-end message types (VHOST_USER_GET_CONFIG)",
    PROTO(VHU_PF_CONFIG), "GET_CONFIG of the whole space echoes offset and size", c_get },
  { "config.get-out-of-bounds", "config", US "Front-end message types (VHOST_USER_GET_CONFIG)",
    PROTO(VHU_PF_CONFIG), "GET_CONFIG past the end is answered or refused, never left hanging",
    c_get_out_of_bounds },
  { "config.set-out-of-bounds", "config", US "Front-end message types (VHOST_USER_SET_CONFIG)",
    PROTO(VHU_PF_CONFIG), "SET_CONFIG past the end, or longer than its payload, is refused",
    c_set_out_of_bounds },
  { "status.roundtrip", "status", "virtio 1.3 §2.1 Device Status Field", PROTO(VHU_PF_STATUS),
    "GET_STATUS returns what SET_STATUS wrote", t_roundtrip },
  { "status.reset-device", "status", US "Front-end message types (VHOST_USER_RESET_DEVICE)",
    PROTO(VHU_PF_RESET_DEVICE), "RESET_DEVICE clears the status; the device starts again",
    t_reset_device },
  { "status.needs-reset", "status", "virtio 1.3 §2.1.2 Device Requirements: Device Status Field",
    PROTO(VHU_PF_STATUS), "a broken ring sets NEEDS_RESET or signals the error eventfd",
    t_needs_reset },
  { "inflight.get-fd", "inflight", US "Inflight I/O tracking", PROTO(VHU_PF_INFLIGHT_SHMFD),
    "GET_INFLIGHT_FD returns a mappable buffer large enough for the queues", i_get_fd },
  { "inflight.resubmit", "inflight", US "Inflight I/O tracking", PROTO(VHU_PF_INFLIGHT_SHMFD),
    "a request recorded inflight by the previous backend is resubmitted first", i_resubmit },
  { "reconnect.second-connection", "reconnect", US "Communication (back-end restart and reconnect)",
    NONE, "after a frontend vanished mid-session, the next one gets a working device",
    x_second_connection },
  { "reconnect.close-with-reply-pending", "reconnect",
    US "Communication (the front-end may go away at any time)", NONE,
    "a frontend that closes before reading a reply does not kill the backend",
    x_close_with_reply_pending },
  { "hostile.oversized-message", "hostile", US "Message Specification", NONE,
    "a header announcing 1 MiB that never comes: connection closed, backend alive", z_oversized },
  { "hostile.bad-version", "hostile", US "Message Specification (Header)", NONE,
    "version 2 in the flags: answered or closed, never a crash", z_bad_version },
  { "hostile.too-many-fds", "hostile", US "Message Specification", NONE,
    "8 fds on a message that takes none", z_too_many_fds },
  { "hostile.queue-index", "hostile", US "Front-end message types (vring index)", NONE,
    "ring requests for queue 200 are refused", z_index_range },
  { "hostile.desc-loop", "hostile", "virtio 1.3 §2.7.5.2 (descriptor chains)", NONE,
    "a descriptor chain that loops", z_desc_loop },
  { "hostile.desc-outside-memory", "hostile", "virtio 1.3 §2.7.5 The Virtqueue Descriptor Table",
    NONE, "a descriptor pointing outside guest memory", z_desc_outside },
  { "hostile.avail-jump", "hostile", "virtio 1.3 §2.7.6 The Virtqueue Available Ring", NONE,
    "the avail index jumps past the ring size", z_avail_jump },
  { "hostile.indirect-huge", "hostile", "virtio 1.3 §2.7.5.3 Indirect Descriptors", NONE,
    "an indirect table of 1 MiB + 8 bytes", z_indirect_huge },
  { NULL },
};
