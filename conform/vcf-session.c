/* vcf-session.c: the frontend side of one conformance connection. */
#include "vcf-session.h"

#include <errno.h>
#include <gio/gio.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vhu-msg.h"

#define BIT(n)           (G_GUINT64_CONSTANT(1) << (n))
#define RING_AREA        (64u * 1024)
#define INDIRECT_ENTRIES 1024u
#define SCRATCH_SIZE     (64u * 1024)
#define DEFAULT_TIMEOUT  2000u
#define POLL_SLICE_MS    10
#define CONNECT_TIMEOUT  2000u

struct _VcfRing {
  VcfSession *s;
  guint index, size;
  guint64 desc_gpa, avail_gpa, used_gpa, ind_gpa, scratch_gpa;
  struct vring_desc *desc;
  struct vring_avail *avail;
  struct vring_used *used;
  struct vring_desc *ind;
  guint ind_next;
  int kick_fd, call_fd, err_fd;
  guint16 avail_idx, last_used, next_desc;
  guint in_flight;    /* descriptors in use */
  guint16 *chain_len; /* per head: descriptors its chain took */
  guint64 calls;      /* call notifications seen while waiting */
  gboolean event_idx;
};

struct _VcfSession {
  VhuFrontend *fe;
  guint timeout_ms;
  gboolean no_pf;
  guint64 offered, features, protocol;
  guint64 r0_next, r1_next;
  VcfRing *rings[VCF_MAX_QUEUES];
};

static void
ring_free(VcfRing *r)
{
  if (r == NULL)
    return;
  if (r->kick_fd >= 0)
    close(r->kick_fd);
  if (r->call_fd >= 0)
    close(r->call_fd);
  if (r->err_fd >= 0)
    close(r->err_fd);
  g_free(r->chain_len);
  g_free(r);
}

void
vcf_session_free(VcfSession *s)
{
  if (s == NULL)
    return;
  for (guint i = 0; i < VCF_MAX_QUEUES; i++)
    ring_free(s->rings[i]);
  if (s->fe != NULL)
    vhu_frontend_free(s->fe);
  g_free(s);
}

/* The handshake of a frontend that does not know protocol features. */
static gboolean
init_without_pf(VcfSession *s, GError **error)
{
  guint64 again;

  if (!vhu_frontend_get_u64(s->fe, VHU_GET_FEATURES, &s->offered, error)
      || !vhu_frontend_send(s->fe, VHU_SET_OWNER, 0, NULL, 0, NULL, 0, error)
      || !vhu_frontend_get_u64(s->fe, VHU_GET_FEATURES, &again, error))
    return FALSE;
  return TRUE;
}

VcfSession *
vcf_session_open(const char *path, const VcfSessionOptions *options, GError **error)
{
  g_autoptr(VcfSession) s = g_new0(VcfSession, 1);
  guint64 mask = options != NULL ? options->protocol_mask : VHU_FRONTEND_PROTOCOL_FEATURES;

  s->timeout_ms
      = options != NULL && options->timeout_ms != 0 ? options->timeout_ms : DEFAULT_TIMEOUT;
  s->no_pf = options != NULL && options->no_protocol_features;
  /* A backend just started may have bound its socket but not listen yet. */
  s->fe = vhu_frontend_connect_wait(path, CONNECT_TIMEOUT, NULL, NULL, error);
  if (s->fe == NULL)
    return NULL;
  vhu_frontend_set_timeout(s->fe, s->timeout_ms);
  if (s->no_pf) {
    if (!init_without_pf(s, error))
      return NULL;
  } else {
    if (!vhu_frontend_init(s->fe, mask, error))
      return NULL;
    s->offered = vhu_frontend_get_backend_features(s->fe);
    s->protocol = vhu_frontend_get_protocol_features(s->fe);
  }
  if (!vhu_frontend_add_region(s->fe, VCF_REGION0_GPA, VCF_REGION0_SIZE, error)
      || !vhu_frontend_add_region_offset(s->fe, VCF_REGION1_GPA, VCF_REGION1_SIZE, VCF_REGION1_OFF,
                                         error))
    return NULL;
  s->r0_next = VCF_REGION0_GPA;
  /* The first page of region 1 is for buffers that span regions. */
  s->r1_next = VCF_REGION1_GPA + 4096;
  return g_steal_pointer(&s);
}

VhuFrontend *
vcf_session_frontend(VcfSession *s)
{
  return s->fe;
}

guint
vcf_session_timeout(VcfSession *s)
{
  return s->timeout_ms;
}

guint64
vcf_session_offered_features(VcfSession *s)
{
  return s->offered;
}

guint64
vcf_session_negotiated_protocol(VcfSession *s)
{
  return s->protocol;
}

gboolean
vcf_session_has_pf(VcfSession *s, guint bit)
{
  return (s->protocol & BIT(bit)) != 0;
}

guint64
vcf_session_features(VcfSession *s)
{
  return s->features;
}

/* --- memory -------------------------------------------------------------- */

static guint64
bump(guint64 *next, guint64 limit, gsize size, gsize align)
{
  guint64 gpa = (*next + align - 1) & ~(guint64)(align - 1);

  if (gpa > limit || size > limit - gpa)
    return G_MAXUINT64;
  *next = gpa + size;
  return gpa;
}

guint64
vcf_session_alloc(VcfSession *s, gsize size)
{
  guint64 gpa = bump(&s->r1_next, VCF_REGION1_GPA + VCF_REGION1_SIZE, size, 64);

  if (gpa != G_MAXUINT64)
    memset(vcf_session_ptr(s, gpa, size), 0, size);
  return gpa;
}

static guint64
alloc_low(VcfSession *s, gsize size, gsize align)
{
  /* The last page of region 0 stays free for buffers that span regions. */
  guint64 gpa = bump(&s->r0_next, VCF_REGION0_GPA + VCF_REGION0_SIZE - 4096, size, align);

  if (gpa != G_MAXUINT64)
    memset(vcf_session_ptr(s, gpa, size), 0, size);
  return gpa;
}

void *
vcf_session_ptr(VcfSession *s, guint64 gpa, gsize len)
{
  return vhu_frontend_gpa_to_ptr(s->fe, gpa, len);
}

static gboolean
copy_guest(VcfSession *s, guint64 gpa, guint8 *data, gsize len, gboolean to_guest)
{
  while (len > 0) {
    gsize n = gpa < VCF_REGION1_GPA ? MIN(len, VCF_REGION1_GPA - gpa) : len;
    guint8 *p = vcf_session_ptr(s, gpa, n);

    if (p == NULL)
      return FALSE;
    if (to_guest)
      memcpy(p, data, n);
    else
      memcpy(data, p, n);
    gpa += n, data += n, len -= n;
  }
  return TRUE;
}

gboolean
vcf_session_write(VcfSession *s, guint64 gpa, const void *data, gsize len)
{
  return copy_guest(s, gpa, (guint8 *)data, len, TRUE);
}

gboolean
vcf_session_read(VcfSession *s, guint64 gpa, void *data, gsize len)
{
  return copy_guest(s, gpa, data, len, FALSE);
}

void
vcf_session_region(VcfSession *s, guint i, VhuMemRegionDesc *desc, int *fd)
{
  guint64 gpa = i == 0 ? VCF_REGION0_GPA : VCF_REGION1_GPA;
  gsize size = i == 0 ? VCF_REGION0_SIZE : VCF_REGION1_SIZE;

  desc->guest_phys_addr = gpa;
  desc->memory_size = size;
  desc->userspace_addr = (guint64)(guintptr)vcf_session_ptr(s, gpa, size);
  desc->mmap_offset = i == 0 ? 0 : VCF_REGION1_OFF;
  if (fd != NULL)
    *fd = vhu_frontend_get_region_fd(s->fe, gpa);
}

gboolean
vcf_session_send_memory(VcfSession *s, gboolean force_table, GError **error)
{
  if (!force_table && vcf_session_has_pf(s, VHU_PF_CONFIGURE_MEM_SLOTS)) {
    for (guint i = 0; i < 2; i++) {
      VhuMemSingleRegion m = { 0 };
      int fd;

      vcf_session_region(s, i, &m.region, &fd);
      if (!vcf_session_request(s, VHU_ADD_MEM_REG, &m, sizeof m, &fd, 1, error))
        return FALSE;
    }
    return TRUE;
  } else {
    VhuMemTableDesc t = { .nregions = 2 };
    int fds[2];

    for (guint i = 0; i < 2; i++)
      vcf_session_region(s, i, &t.regions[i], &fds[i]);
    return vcf_session_request(s, VHU_SET_MEM_TABLE, &t, 8 + 2 * sizeof t.regions[0], fds, 2,
                               error);
  }
}

/* --- messages ------------------------------------------------------------ */

gboolean
vcf_session_request(VcfSession *s, guint32 request, const void *payload, gsize size, const int *fds,
                    guint n_fds, GError **error)
{
  if (s->no_pf)
    return vhu_frontend_send(s->fe, request, 0, payload, size, fds, n_fds, error);
  return vhu_frontend_request(s->fe, request, payload, size, fds, n_fds, error);
}

gboolean
vcf_session_state(VcfSession *s, guint32 request, guint index, guint num, GError **error)
{
  VhuVringState st = { .index = index, .num = num };

  return vcf_session_request(s, request, &st, sizeof st, NULL, 0, error);
}

gboolean
vcf_session_get_base(VcfSession *s, guint index, guint *num, GError **error)
{
  VhuVringState st = { .index = index, .num = 0 };
  gsize size = sizeof st;

  if (!vhu_frontend_send(s->fe, VHU_GET_VRING_BASE, 0, &st, sizeof st, NULL, 0, error)
      || !vhu_frontend_recv_reply(s->fe, VHU_GET_VRING_BASE, &st, &size, NULL, NULL, error))
    return FALSE;
  if (size != sizeof st || st.index != index) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "GET_VRING_BASE(%u) answered %" G_GSIZE_FORMAT " bytes for index %u", index, size,
                st.index);
    return FALSE;
  }
  *num = st.num;
  return TRUE;
}

gboolean
vcf_session_send_raw(VcfSession *s, guint32 request, guint32 flags, const void *payload, gsize size,
                     const int *fds, guint n_fds, GError **error)
{
  /* vhu_frontend_send ORs in the version; raw flags are written as given. */
  return vhu_msg_write(vhu_frontend_get_fd(s->fe), request, flags, payload, size, fds, n_fds,
                       error);
}

static gboolean
wait_fd(int fd, int timeout_ms)
{
  struct pollfd p = { .fd = fd, .events = POLLIN };
  int rc;

  do
    rc = poll(&p, 1, timeout_ms);
  while (rc < 0 && errno == EINTR);
  return rc > 0;
}

gboolean
vcf_session_recv_raw(VcfSession *s, VcfReply *reply, int timeout_ms, GError **error)
{
  int sock = vhu_frontend_get_fd(s->fe);
  g_autofree VhuMsg *msg = g_new0(VhuMsg, 1);
  VhuMsgStatus st;

  if (!wait_fd(sock, timeout_ms)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "no message within %d ms", timeout_ms);
    return FALSE;
  }
  vhu_msg_init(msg);
  st = vhu_msg_read(sock, msg, timeout_ms, error);
  if (st == VHU_MSG_EOF) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED,
                        "the backend closed the connection");
    return FALSE;
  }
  if (st != VHU_MSG_OK)
    return FALSE;
  reply->request = msg->hdr.request;
  reply->flags = msg->hdr.flags;
  reply->size = msg->hdr.size;
  memcpy(reply->payload, msg->payload, MIN(sizeof reply->payload, (gsize)msg->hdr.size));
  vhu_msg_close_fds(msg);
  return TRUE;
}

gboolean
vcf_session_wait_closed(VcfSession *s, int timeout_ms)
{
  int sock = vhu_frontend_get_fd(s->fe);
  gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;

  for (;;) {
    gint64 left = (deadline - g_get_monotonic_time()) / 1000;
    char buf[256];
    ssize_t n;

    if (left <= 0 || !wait_fd(sock, (int)left))
      return FALSE;
    n = recv(sock, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
      return TRUE;
  }
}

gboolean
vcf_session_alive(VcfSession *s, GError **error)
{
  guint64 f;

  return vhu_frontend_get_u64(s->fe, VHU_GET_FEATURES, &f, error);
}

/* --- start --------------------------------------------------------------- */

static gboolean
add_status(VcfSession *s, guint8 bits, GError **error)
{
  guint8 status;

  if (!vhu_frontend_get_status(s->fe, &status, error))
    return FALSE;
  return vhu_frontend_set_u64(s->fe, VHU_SET_STATUS, status | bits, error);
}

gboolean
vcf_session_set_features(VcfSession *s, guint64 features, GError **error)
{
  s->features = (features | BIT(VHU_F_VERSION_1)) & s->offered;
  if (!s->no_pf)
    s->features |= s->offered & BIT(VHU_F_PROTOCOL_FEATURES);
  return vcf_session_request(s, VHU_SET_FEATURES, &s->features, sizeof s->features, NULL, 0, error)
         && (!vcf_session_has_pf(s, VHU_PF_STATUS) || add_status(s, VHU_STATUS_FEATURES_OK, error));
}

gboolean
vcf_session_start(VcfSession *s, guint64 features, const guint *sizes, guint n, GError **error)
{
  g_return_val_if_fail(n <= VCF_MAX_QUEUES, FALSE);
  if (!vcf_session_set_features(s, features, error) || !vcf_session_send_memory(s, FALSE, error))
    return FALSE;
  for (guint i = 0; i < n; i++) {
    VcfRing *r = vcf_session_new_ring(s, i, sizes[i], error);

    if (r == NULL || !vcf_ring_setup(r, 0, error))
      return FALSE;
  }
  return !vcf_session_has_pf(s, VHU_PF_STATUS)
         || add_status(s, VHU_STATUS_ACKNOWLEDGE | VHU_STATUS_DRIVER | VHU_STATUS_DRIVER_OK, error);
}

/* --- rings --------------------------------------------------------------- */

static int
new_eventfd(GError **error)
{
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

  if (fd < 0)
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "eventfd: %s", g_strerror(errno));
  return fd;
}

VcfRing *
vcf_session_ring(VcfSession *s, guint index)
{
  return index < VCF_MAX_QUEUES ? s->rings[index] : NULL;
}

VcfRing *
vcf_session_new_ring(VcfSession *s, guint index, guint size, GError **error)
{
  VcfRing *r;
  gsize desc_size = 16u * size, avail_size = 6u + 2u * size, used_size = 6u + 8u * size;
  guint64 base;

  g_return_val_if_fail(index < VCF_MAX_QUEUES && size > 0 && size <= 32768, NULL);
  base = alloc_low(s, RING_AREA + INDIRECT_ENTRIES * 16u + SCRATCH_SIZE, 4096);
  if (base == G_MAXUINT64 || desc_size + avail_size + used_size + 8192 > RING_AREA) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "no room for ring %u", index);
    return NULL;
  }
  r = g_new0(VcfRing, 1);
  r->s = s;
  r->index = index;
  r->size = size;
  r->chain_len = g_new0(guint16, size);
  r->desc_gpa = base;
  r->avail_gpa = base + desc_size;
  r->used_gpa = (r->avail_gpa + avail_size + 4095) & ~(guint64)4095;
  r->ind_gpa = base + RING_AREA;
  r->scratch_gpa = r->ind_gpa + INDIRECT_ENTRIES * 16u;
  r->desc = vcf_session_ptr(s, r->desc_gpa, desc_size);
  r->avail = vcf_session_ptr(s, r->avail_gpa, avail_size);
  r->used = vcf_session_ptr(s, r->used_gpa, used_size);
  r->ind = vcf_session_ptr(s, r->ind_gpa, INDIRECT_ENTRIES * 16u);
  r->kick_fd = new_eventfd(NULL);
  r->call_fd = new_eventfd(NULL);
  r->err_fd = new_eventfd(error);
  ring_free(s->rings[index]);
  s->rings[index] = r;
  if (r->kick_fd < 0 || r->call_fd < 0 || r->err_fd < 0)
    return NULL;
  return r;
}

static gboolean
set_fd(VcfSession *s, guint32 request, guint index, int fd, GError **error)
{
  guint64 v = index;

  return vcf_session_request(s, request, &v, sizeof v, &fd, 1, error);
}

void
vcf_ring_set_indices(VcfRing *r, guint16 idx)
{
  r->avail_idx = idx;
  r->last_used = idx;
  r->avail->idx = idx;
  r->used->idx = idx;
  r->in_flight = 0;
  r->next_desc = 0;
  memset(r->chain_len, 0, r->size * sizeof *r->chain_len);
}

gboolean
vcf_ring_setup(VcfRing *r, guint base, GError **error)
{
  VcfSession *s = r->s;
  VhuVringAddr addr = {
    .index = r->index,
    .desc_user_addr = (guint64)(guintptr)r->desc,
    .used_user_addr = (guint64)(guintptr)r->used,
    .avail_user_addr = (guint64)(guintptr)r->avail,
  };

  r->event_idx = (s->features & BIT(VHU_F_RING_EVENT_IDX)) != 0;
  if (r->event_idx)
    vcf_ring_set_used_event(r, r->last_used);
  if (!vcf_session_state(s, VHU_SET_VRING_NUM, r->index, r->size, error)
      || !vcf_session_state(s, VHU_SET_VRING_BASE, r->index, base, error)
      || !vcf_session_request(s, VHU_SET_VRING_ADDR, &addr, sizeof addr, NULL, 0, error)
      || !set_fd(s, VHU_SET_VRING_CALL, r->index, r->call_fd, error)
      || !set_fd(s, VHU_SET_VRING_ERR, r->index, r->err_fd, error)
      || !set_fd(s, VHU_SET_VRING_KICK, r->index, r->kick_fd, error))
    return FALSE;
  if (s->features & BIT(VHU_F_PROTOCOL_FEATURES)) {
    guint64 f;

    if (!vcf_session_state(s, VHU_SET_VRING_ENABLE, r->index, 1, error))
      return FALSE;
    /* Without REPLY_ACK, GET_FEATURES is the barrier QEMU uses. */
    if (!vcf_session_has_pf(s, VHU_PF_REPLY_ACK)
        && !vhu_frontend_get_u64(s->fe, VHU_GET_FEATURES, &f, error))
      return FALSE;
  }
  return TRUE;
}

guint16
vcf_ring_next_desc(VcfRing *r)
{
  return r->next_desc;
}

void
vcf_ring_skip_desc(VcfRing *r, guint n)
{
  r->next_desc = (guint16)((r->next_desc + n) % r->size);
}

static void
put_desc(struct vring_desc *d, const VhuGuestBuf *b, guint16 flags, guint16 next)
{
  d->addr = b->gpa;
  d->len = b->len;
  d->flags = flags;
  d->next = next;
}

int
vcf_ring_add(VcfRing *r, const VhuGuestBuf *out, guint n_out, const VhuGuestBuf *in, guint n_in,
             gboolean indirect)
{
  guint n = n_out + n_in;
  guint16 head = r->next_desc;

  if (n == 0 || r->in_flight >= r->size || (!indirect && n > r->size - r->in_flight))
    return -1;
  if (indirect) {
    VhuGuestBuf table;

    if (n > INDIRECT_ENTRIES)
      return -1;
    if (r->ind_next + n > INDIRECT_ENTRIES)
      r->ind_next = 0;
    for (guint k = 0; k < n; k++) {
      const VhuGuestBuf *b = k < n_out ? &out[k] : &in[k - n_out];
      guint16 flags = (k < n_out ? 0 : VRING_DESC_F_WRITE) | (k + 1 < n ? VRING_DESC_F_NEXT : 0);

      put_desc(&r->ind[r->ind_next + k], b, flags, (guint16)(k + 1 < n ? k + 1 : 0));
    }
    table.gpa = r->ind_gpa + 16u * r->ind_next;
    table.len = 16u * n;
    r->ind_next += n;
    put_desc(&r->desc[head], &table, VRING_DESC_F_INDIRECT, 0);
    r->next_desc = (guint16)((head + 1) % r->size);
    r->in_flight++;
    r->chain_len[head] = 1;
  } else {
    guint16 i = head;

    for (guint k = 0; k < n; k++) {
      const VhuGuestBuf *b = k < n_out ? &out[k] : &in[k - n_out];
      guint16 next = (guint16)((i + 1) % r->size);
      guint16 flags = (k < n_out ? 0 : VRING_DESC_F_WRITE) | (k + 1 < n ? VRING_DESC_F_NEXT : 0);

      put_desc(&r->desc[i], b, flags, k + 1 < n ? next : 0);
      i = next;
    }
    r->next_desc = i;
    r->in_flight += n;
    r->chain_len[head] = (guint16)n;
  }
  r->avail->ring[r->avail_idx % r->size] = head;
  r->avail_idx++;
  return head;
}

void
vcf_ring_publish(VcfRing *r)
{
  __atomic_store_n(&r->avail->idx, r->avail_idx, __ATOMIC_RELEASE);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

void
vcf_ring_kick(VcfRing *r)
{
  guint64 one = 1;

  if (write(r->kick_fd, &one, sizeof one) < 0 && errno != EAGAIN)
    g_warning("ring %u: kick: %s", r->index, g_strerror(errno));
}

static guint64
read_counter(int fd)
{
  guint64 v = 0;

  if (read(fd, &v, sizeof v) != sizeof v)
    return 0;
  return v;
}

gboolean
vcf_ring_wait_used(VcfRing *r, int timeout_ms, guint32 *id, guint32 *len)
{
  gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;

  for (;;) {
    guint16 used_idx = __atomic_load_n(&r->used->idx, __ATOMIC_ACQUIRE);
    gint64 left;

    if (used_idx != r->last_used) {
      struct vring_used_elem e = r->used->ring[r->last_used % r->size];

      r->last_used++;
      if (e.id < r->size) {
        r->in_flight -= MIN(r->in_flight, r->chain_len[e.id]);
        r->chain_len[e.id] = 0;
      }
      if (r->in_flight == 0)
        r->next_desc = 0;
      if (id != NULL)
        *id = e.id;
      if (len != NULL)
        *len = e.len;
      return TRUE;
    }
    left = (deadline - g_get_monotonic_time()) / 1000;
    if (left <= 0)
      return FALSE;
    /* The call fd wakes us; a suppressed notification only costs a slice. */
    if (wait_fd(r->call_fd, (int)MIN(left, POLL_SLICE_MS)))
      r->calls += read_counter(r->call_fd);
  }
}

guint64
vcf_ring_take_calls(VcfRing *r)
{
  guint64 n = r->calls + read_counter(r->call_fd);

  r->calls = 0;
  return n;
}

gboolean
vcf_ring_wait_call(VcfRing *r, int timeout_ms)
{
  if (r->calls > 0)
    return TRUE;
  return wait_fd(r->call_fd, timeout_ms);
}

gboolean
vcf_ring_take_error(VcfRing *r)
{
  return read_counter(r->err_fd) > 0;
}

guint16
vcf_ring_used_idx(VcfRing *r)
{
  return __atomic_load_n(&r->used->idx, __ATOMIC_ACQUIRE);
}

guint16
vcf_ring_avail_idx(VcfRing *r)
{
  return r->avail_idx;
}

guint
vcf_ring_size(VcfRing *r)
{
  return r->size;
}

struct vring_desc *
vcf_ring_desc(VcfRing *r)
{
  return r->desc;
}

struct vring_avail *
vcf_ring_avail(VcfRing *r)
{
  return r->avail;
}

struct vring_used *
vcf_ring_used(VcfRing *r)
{
  return r->used;
}

void
vcf_ring_set_used_event(VcfRing *r, guint16 v)
{
  __atomic_store_n(&r->avail->ring[r->size], v, __ATOMIC_RELEASE);
}

gssize
vcf_session_transact(VcfSession *s, guint q, const void *req, gsize req_size, void *resp,
                     gsize resp_size, GError **error)
{
  VcfRing *r = vcf_session_ring(s, q);
  gsize room = (req_size + 63) & ~(gsize)63;
  VhuGuestBuf out, in;
  guint32 len = 0;

  if (r == NULL || req_size == 0 || room + resp_size > SCRATCH_SIZE) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: no ring, or request too large", q);
    return -1;
  }
  out = (VhuGuestBuf){ r->scratch_gpa, (guint32)req_size };
  in = (VhuGuestBuf){ r->scratch_gpa + room, (guint32)resp_size };
  vcf_session_write(s, out.gpa, req, req_size);
  memset(vcf_session_ptr(s, in.gpa, MAX(resp_size, 1)), 0, resp_size);
  if (vcf_ring_add(r, &out, 1, &in, resp_size > 0 ? 1 : 0, FALSE) < 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "queue %u: ring full", q);
    return -1;
  }
  vcf_ring_publish(r);
  vcf_ring_kick(r);
  if (r->event_idx)
    vcf_ring_set_used_event(r, r->last_used);
  if (!vcf_ring_wait_used(r, (int)s->timeout_ms, NULL, &len)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                "queue %u: no answer from the device within %u ms", q, s->timeout_ms);
    return -1;
  }
  if (len > resp_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "queue %u: device claims %u bytes written into a %" G_GSIZE_FORMAT "-byte buffer",
                q, len, resp_size);
    return -1;
  }
  vcf_session_read(s, in.gpa, resp, len);
  return len;
}
