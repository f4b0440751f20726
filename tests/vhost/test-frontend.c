/* test-frontend.c: the frontend (VMM side) against a scripted peer and
 * against QEMU's own vhost-user-gpu backend.
 *
 * The scripted peer runs in a thread on the other end of a socketpair,
 * answers like a libvhost-user backend, records every request and maps the
 * memory it is sent, so the ring tests can play the device directly on the
 * shared memory.  The QEMU tests spawn /usr/lib/qemu/vhost-user-gpu (skipped
 * when absent) and drive a real 2D session through it. */
#include <errno.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <linux/virtio_gpu.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "gpu-test-frontend.h"
#include "test-util.h"
#include "vhu-display.h"
#include "vhu-frontend.h"
#include "vhu-msg.h"

#define BIT(n)   (G_GUINT64_CONSTANT(1) << (n))
#define QEMU_GPU "/usr/lib/qemu/vhost-user-gpu"

/* --- scripted peer ------------------------------------------------------- */

#define PEER_FEATURES                                                                              \
  (BIT(VHU_F_VERSION_1) | BIT(VHU_F_PROTOCOL_FEATURES) | BIT(VHU_F_RING_INDIRECT_DESC)             \
   | BIT(VHU_F_RING_EVENT_IDX) | BIT(0))

typedef struct {
  guint64 gpa, size, uva;
  guint8 *map, *host;
  gsize map_size;
} PeerRegion;

typedef struct {
  int sock;
  GThread *thread;
  guint64 protocol_offer;
  GMutex lock;      /* protects everything below once the thread runs */
  GArray *requests; /* guint32 ids, in order */
  GArray *flags;    /* guint32 flags, in order */
  PeerRegion regions[8];
  guint n_regions;
  guint64 features;
  guint64 status;
  guint16 num[4];
  guint64 addr_desc[4], addr_avail[4], addr_used[4];
  guint vring_base[4];
  int kick[4], call[4];
  gboolean enabled[4];
  int backend_req;
} Peer;

static void *
peer_uva(Peer *p, guint64 uva, gsize len)
{
  for (guint i = 0; i < p->n_regions; i++) {
    PeerRegion *r = &p->regions[i];

    if (uva >= r->uva && len <= r->size && uva - r->uva <= r->size - len)
      return r->host + (uva - r->uva);
  }
  return NULL;
}

static void
peer_map(Peer *p, const VhuMemRegionDesc *d, int fd)
{
  PeerRegion *r = &p->regions[p->n_regions++];

  g_assert_cmpuint(p->n_regions, <=, 8);
  r->gpa = d->guest_phys_addr;
  r->size = d->memory_size;
  r->uva = d->userspace_addr;
  r->map_size = d->memory_size + d->mmap_offset;
  r->map = mmap(NULL, r->map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  g_assert_true(r->map != MAP_FAILED);
  r->host = r->map + d->mmap_offset;
}

static void
peer_reply_u64(Peer *p, const VhuMsg *m, guint64 v)
{
  g_assert_true(
      vhu_msg_write(p->sock, m->hdr.request, VHU_REPLY_FLAGS, &v, sizeof v, NULL, 0, NULL));
}

static void
peer_take_fd(int *slot, VhuMsg *m)
{
  if (*slot >= 0)
    close(*slot);
  *slot = vhu_msg_steal_fd(m, 0);
}

/* Handles one request like a well-behaved backend. */
static void
peer_handle(Peer *p, VhuMsg *m)
{
  guint64 u64 = 0;
  VhuVringState st;
  gboolean replied = FALSE;

  memcpy(&u64, m->payload, MIN(sizeof u64, (gsize)m->hdr.size));
  memcpy(&st, m->payload, MIN(sizeof st, (gsize)m->hdr.size));
  switch (m->hdr.request) {
    case VHU_GET_FEATURES:
      peer_reply_u64(p, m, PEER_FEATURES);
      replied = TRUE;
      break;
    case VHU_GET_PROTOCOL_FEATURES:
      peer_reply_u64(p, m, p->protocol_offer);
      replied = TRUE;
      break;
    case VHU_GET_QUEUE_NUM:
      peer_reply_u64(p, m, 2);
      replied = TRUE;
      break;
    case VHU_GET_MAX_MEM_SLOTS:
      peer_reply_u64(p, m, 8);
      replied = TRUE;
      break;
    case VHU_GET_STATUS:
      peer_reply_u64(p, m, p->status);
      replied = TRUE;
      break;
    case VHU_SET_STATUS:
      p->status = u64;
      break;
    case VHU_SET_FEATURES:
      p->features = u64;
      break;
    case VHU_SET_BACKEND_REQ_FD:
      peer_take_fd(&p->backend_req, m);
      break;
    case VHU_SET_MEM_TABLE: {
      VhuMemTableDesc t;

      memcpy(&t, m->payload, m->hdr.size);
      g_assert_cmpuint(t.nregions, ==, m->n_fds);
      for (guint i = 0; i < t.nregions; i++)
        peer_map(p, &t.regions[i], m->fds[i]);
      break;
    }
    case VHU_ADD_MEM_REG: {
      VhuMemSingleRegion s;

      g_assert_cmpuint(m->hdr.size, ==, sizeof s);
      g_assert_cmpuint(m->n_fds, ==, 1);
      memcpy(&s, m->payload, sizeof s);
      peer_map(p, &s.region, m->fds[0]);
      break;
    }
    case VHU_SET_VRING_NUM:
      p->num[st.index] = (guint16)st.num;
      break;
    case VHU_SET_VRING_BASE:
      p->vring_base[st.index] = st.num;
      break;
    case VHU_SET_VRING_ADDR: {
      VhuVringAddr a;

      memcpy(&a, m->payload, sizeof a);
      p->addr_desc[a.index] = a.desc_user_addr;
      p->addr_avail[a.index] = a.avail_user_addr;
      p->addr_used[a.index] = a.used_user_addr;
      break;
    }
    case VHU_SET_VRING_KICK:
      peer_take_fd(&p->kick[u64 & 0xff], m);
      break;
    case VHU_SET_VRING_CALL:
      peer_take_fd(&p->call[u64 & 0xff], m);
      break;
    case VHU_SET_VRING_ENABLE:
      p->enabled[st.index] = st.num;
      break;
    case VHU_GET_VRING_BASE: {
      VhuVringState reply = { .index = st.index, .num = p->vring_base[st.index] };

      g_assert_true(vhu_msg_write(p->sock, m->hdr.request, VHU_REPLY_FLAGS, &reply, sizeof reply,
                                  NULL, 0, NULL));
      replied = TRUE;
      break;
    }
    case VHU_GET_CONFIG: {
      VhuConfigMsg c;

      memcpy(&c, m->payload, m->hdr.size);
      for (guint i = 0; i < c.size; i++)
        c.region[i] = (guint8)(c.offset + i);
      g_assert_true(vhu_msg_write(p->sock, m->hdr.request, VHU_REPLY_FLAGS, &c,
                                  VHU_CONFIG_HDR_SIZE + c.size, NULL, 0, NULL));
      replied = TRUE;
      break;
    }
    default:
      break;
  }
  if (!replied && (m->hdr.flags & VHU_FLAG_NEED_REPLY))
    peer_reply_u64(p, m, 0);
}

static gpointer
peer_thread(gpointer data)
{
  Peer *p = data;

  for (;;) {
    VhuMsg m;
    struct pollfd pfd = { .fd = p->sock, .events = POLLIN };

    if (poll(&pfd, 1, 10000) <= 0)
      break;
    if (vhu_msg_read(p->sock, &m, 5000, NULL) != VHU_MSG_OK)
      break;
    g_mutex_lock(&p->lock);
    g_array_append_val(p->requests, m.hdr.request);
    g_array_append_val(p->flags, m.hdr.flags);
    peer_handle(p, &m);
    g_mutex_unlock(&p->lock);
    vhu_msg_close_fds(&m);
  }
  return NULL;
}

static Peer *
peer_new(guint64 protocol_offer, VhuFrontend **fe)
{
  Peer *p = g_new0(Peer, 1);
  int sv[2];

  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  p->sock = sv[1];
  p->protocol_offer = protocol_offer;
  p->requests = g_array_new(FALSE, FALSE, sizeof(guint32));
  p->flags = g_array_new(FALSE, FALSE, sizeof(guint32));
  p->backend_req = -1;
  for (guint i = 0; i < 4; i++)
    p->kick[i] = p->call[i] = -1;
  g_mutex_init(&p->lock);
  p->thread = g_thread_new("peer", peer_thread, p);
  *fe = vhu_frontend_new_from_fd(sv[0]);
  return p;
}

/* Frees the frontend first: the peer thread ends on EOF. */
static void
peer_free(Peer *p, VhuFrontend *fe)
{
  vhu_frontend_free(fe);
  g_thread_join(p->thread);
  close(p->sock);
  for (guint i = 0; i < p->n_regions; i++)
    munmap(p->regions[i].map, p->regions[i].map_size);
  for (guint i = 0; i < 4; i++) {
    if (p->kick[i] >= 0)
      close(p->kick[i]);
    if (p->call[i] >= 0)
      close(p->call[i]);
  }
  if (p->backend_req >= 0)
    close(p->backend_req);
  g_array_free(p->requests, TRUE);
  g_array_free(p->flags, TRUE);
  g_mutex_clear(&p->lock);
  g_free(p);
}

/* Checks that the requests recorded from @from on are exactly @want. */
static void
assert_requests(Peer *p, guint from, const guint32 *want, guint n)
{
  GString *got = g_string_new(NULL);
  GString *exp = g_string_new(NULL);

  g_mutex_lock(&p->lock);
  for (guint i = from; i < p->requests->len; i++)
    g_string_append_printf(got, "%s ", vhu_request_name(g_array_index(p->requests, guint32, i)));
  g_mutex_unlock(&p->lock);
  for (guint i = 0; i < n; i++)
    g_string_append_printf(exp, "%s ", vhu_request_name(want[i]));
  g_assert_cmpstr(got->str, ==, exp->str);
  g_string_free(got, TRUE);
  g_string_free(exp, TRUE);
}

static guint
n_requests(Peer *p)
{
  guint n;

  g_mutex_lock(&p->lock);
  n = p->requests->len;
  g_mutex_unlock(&p->lock);
  return n;
}

#define FULL_OFFER                                                                                 \
  (BIT(VHU_PF_MQ) | BIT(VHU_PF_REPLY_ACK) | BIT(VHU_PF_BACKEND_REQ) | BIT(VHU_PF_CONFIG)           \
   | BIT(VHU_PF_CONFIGURE_MEM_SLOTS) | BIT(VHU_PF_STATUS) | BIT(VHU_PF_INBAND_NOTIFICATIONS))

/* The realize/start/stop sequences are QEMU 10's (reference 1.12, 1.7). */
static void
test_sequence_full(void)
{
  static const guint32 init_seq[] = {
    VHU_GET_FEATURES,  VHU_GET_PROTOCOL_FEATURES, VHU_SET_PROTOCOL_FEATURES,
    VHU_GET_QUEUE_NUM, VHU_GET_MAX_MEM_SLOTS,     VHU_SET_BACKEND_REQ_FD,
    VHU_SET_OWNER,     VHU_GET_FEATURES,          VHU_SET_VRING_CALL,
    VHU_SET_VRING_ERR, VHU_SET_VRING_CALL,        VHU_SET_VRING_ERR,
  };
  static const guint32 start_seq[] = {
    VHU_SET_FEATURES,   VHU_GET_STATUS,       VHU_SET_STATUS,     VHU_ADD_MEM_REG,
    VHU_ADD_MEM_REG,    VHU_SET_VRING_NUM,    VHU_SET_VRING_BASE, VHU_SET_VRING_ADDR,
    VHU_SET_VRING_KICK, VHU_SET_VRING_ENABLE, VHU_SET_VRING_CALL, VHU_SET_VRING_NUM,
    VHU_SET_VRING_BASE, VHU_SET_VRING_ADDR,   VHU_SET_VRING_KICK, VHU_SET_VRING_ENABLE,
    VHU_SET_VRING_CALL, VHU_GET_STATUS,       VHU_SET_STATUS,
  };
  static const guint32 stop_seq[] = {
    VHU_SET_VRING_ENABLE, VHU_SET_VRING_ENABLE, VHU_GET_VRING_BASE,
    VHU_GET_VRING_BASE,   VHU_SET_STATUS,
  };
  static const guint32 restart_seq[] = {
    VHU_SET_FEATURES,   VHU_GET_STATUS,     VHU_SET_STATUS,     VHU_SET_VRING_NUM,
    VHU_SET_VRING_BASE, VHU_SET_VRING_ADDR, VHU_SET_VRING_KICK, VHU_SET_VRING_ENABLE,
    VHU_SET_VRING_CALL, VHU_GET_STATUS,     VHU_SET_STATUS,
  };
  const guint sizes[2] = { 64, 16 };
  g_autoptr(GError) error = NULL;
  VhuFrontend *fe;
  Peer *p = peer_new(FULL_OFFER, &fe);
  guint8 cfg[8];
  guint mark;

  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  assert_requests(p, 0, init_seq, G_N_ELEMENTS(init_seq));
  /* INBAND_NOTIFICATIONS is offered but not something we implement. */
  g_assert_cmphex(vhu_frontend_get_protocol_features(fe), ==,
                  FULL_OFFER & ~BIT(VHU_PF_INBAND_NOTIFICATIONS));
  g_assert_cmphex(vhu_frontend_get_backend_protocol_features(fe), ==, FULL_OFFER);
  g_assert_cmpuint(vhu_frontend_get_num_queues(fe), ==, 2);
  g_assert_cmpuint(vhu_frontend_get_max_mem_slots(fe), ==, 8);
  /* Everything without a reply of its own was sent with NEED_REPLY. */
  g_assert_cmphex(g_array_index(p->flags, guint32, 6), ==, VHU_VERSION | VHU_FLAG_NEED_REPLY);

  /* Backend requests are answered while the frontend waits for a reply:
   * CONFIG_CHANGE acked with 0, anything else refused with 1. */
  g_assert_true(vhu_msg_write(p->backend_req, VHU_BACKEND_CONFIG_CHANGE_MSG,
                              VHU_VERSION | VHU_FLAG_NEED_REPLY, NULL, 0, NULL, 0, NULL));
  g_assert_true(
      vhu_msg_write(p->backend_req, 77, VHU_VERSION | VHU_FLAG_NEED_REPLY, NULL, 0, NULL, 0, NULL));
  mark = n_requests(p);
  g_assert_true(vhu_frontend_get_config(fe, 4, cfg, sizeof cfg, &error));
  for (guint i = 0; i < 2; i++) {
    VhuMsg m;
    guint64 ack;

    g_assert_true(tu_wait_readable(p->backend_req, 5000));
    g_assert_cmpint(vhu_msg_read(p->backend_req, &m, 5000, NULL), ==, VHU_MSG_OK);
    g_assert_cmpuint(m.hdr.request, ==, i == 0 ? VHU_BACKEND_CONFIG_CHANGE_MSG : 77);
    g_assert_cmphex(m.hdr.flags, ==, VHU_REPLY_FLAGS);
    g_assert_cmpuint(m.hdr.size, ==, 8);
    memcpy(&ack, m.payload, 8);
    g_assert_cmpuint(ack, ==, i);
  }
  g_assert_no_error(error);
  g_assert_cmpuint(cfg[0], ==, 4);
  g_assert_cmpuint(cfg[7], ==, 11);

  g_assert_true(vhu_frontend_add_region(fe, 0, 1 << 20, &error));
  g_assert_true(vhu_frontend_add_region_offset(fe, 0x200000, 1 << 20, 0x3000, &error));
  g_assert_no_error(error);
  mark = n_requests(p);
  g_assert_true(vhu_frontend_start(fe, BIT(0) | BIT(VHU_F_RING_EVENT_IDX), sizes, 2, &error));
  g_assert_no_error(error);
  assert_requests(p, mark, start_seq, G_N_ELEMENTS(start_seq));
  g_mutex_lock(&p->lock);
  g_assert_cmphex(p->features, ==, PEER_FEATURES & ~BIT(VHU_F_RING_INDIRECT_DESC));
  g_assert_cmphex(p->status, ==, 0xf);
  g_assert_true(p->enabled[0] && p->enabled[1]);
  g_assert_cmpuint(p->num[0], ==, 64);
  g_assert_cmpuint(p->num[1], ==, 16);
  /* The region uva is our own mapping, as QEMU does; the offset region
   * shows the same bytes through the peer's mapping of the memfd. */
  g_assert_cmpuint(p->regions[1].uva, ==,
                   (guint64)(guintptr)vhu_frontend_gpa_to_ptr(fe, 0x200000, 1));
  *(guint32 *)vhu_frontend_gpa_to_ptr(fe, 0x200010, 4) = 0xfeedf00d;
  g_assert_cmphex(*(guint32 *)(p->regions[1].host + 0x10), ==, 0xfeedf00d);
  /* Ring addresses are our own virtual addresses too. */
  g_assert_cmphex(p->addr_desc[0], ==,
                  (guint64)(guintptr)vhu_driver_queue_desc_table(vhu_frontend_get_queue(fe, 0)));
  g_assert_nonnull(peer_uva(p, p->addr_used[1], 6 + 8 * 16));
  g_mutex_unlock(&p->lock);

  mark = n_requests(p);
  g_assert_true(vhu_frontend_stop(fe, &error));
  g_assert_no_error(error);
  assert_requests(p, mark, stop_seq, G_N_ELEMENTS(stop_seq));
  g_assert_cmphex(p->status, ==, 0);

  /* Restart: the memory is known already, the rings are re-initialised. */
  mark = n_requests(p);
  g_assert_true(vhu_frontend_start(fe, 0, sizes, 2, &error));
  g_assert_no_error(error);
  {
    static guint32 seq[G_N_ELEMENTS(restart_seq) + 6];
    guint n = 0;

    for (guint i = 0; i < G_N_ELEMENTS(restart_seq); i++) {
      seq[n++] = restart_seq[i];
      /* second queue, same five-step block */
      if (i == 8)
        for (guint k = 3; k <= 8; k++)
          seq[n++] = restart_seq[k];
    }
    assert_requests(p, mark, seq, n);
  }
  peer_free(p, fe);
}

/* Without REPLY_ACK, CONFIGURE_MEM_SLOTS or STATUS: SET_MEM_TABLE, no acks,
 * and GET_FEATURES after SET_VRING_ENABLE as the synchronisation point. */
static void
test_sequence_minimal(void)
{
  static const guint32 start_seq[] = {
    VHU_SET_FEATURES,   VHU_SET_MEM_TABLE,  VHU_SET_VRING_NUM,    VHU_SET_VRING_BASE,
    VHU_SET_VRING_ADDR, VHU_SET_VRING_KICK, VHU_SET_VRING_ENABLE, VHU_GET_FEATURES,
    VHU_SET_VRING_CALL, VHU_GET_FEATURES, /* the last one is the test's barrier */
  };
  static const guint32 stop_seq[] = { VHU_SET_VRING_ENABLE, VHU_GET_FEATURES, VHU_GET_VRING_BASE };
  const guint size = 8;
  g_autoptr(GError) error = NULL;
  VhuFrontend *fe;
  Peer *p = peer_new(BIT(VHU_PF_CONFIG), &fe);
  guint64 features;
  guint mark;

  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(vhu_frontend_get_num_queues(fe), ==, 0);
  g_assert_true(vhu_frontend_add_region(fe, 0x1000, 64 << 10, &error));
  g_assert_true(vhu_frontend_add_region_offset(fe, 0x100000, 64 << 10, 0x10000, &error));
  g_assert_no_error(error);
  mark = n_requests(p);
  g_assert_true(vhu_frontend_start(fe, 0, &size, 1, &error));
  g_assert_no_error(error);
  /* Nothing is acknowledged: a request with a reply orders the rest. */
  g_assert_true(vhu_frontend_get_u64(fe, VHU_GET_FEATURES, &features, &error));
  assert_requests(p, mark, start_seq, G_N_ELEMENTS(start_seq));
  for (guint i = mark; i < p->requests->len; i++)
    g_assert_cmphex(g_array_index(p->flags, guint32, i), ==, VHU_VERSION);
  g_assert_cmpuint(p->n_regions, ==, 2);
  g_assert_cmpuint(p->regions[1].gpa, ==, 0x100000);

  /* A region added while started goes out at once (whole table again). */
  g_assert_true(vhu_frontend_add_region(fe, 0x400000, 64 << 10, &error));
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_get_u64(fe, VHU_GET_FEATURES, &features, &error));
  g_assert_cmpuint(g_array_index(p->requests, guint32, p->requests->len - 2), ==,
                   VHU_SET_MEM_TABLE);
  g_assert_cmpuint(p->n_regions, ==, 3 + 2);
  mark = n_requests(p);
  g_assert_true(vhu_frontend_stop(fe, &error));
  assert_requests(p, mark, stop_seq, G_N_ELEMENTS(stop_seq));
  peer_free(p, fe);
}

/* --- driver queue against the peer's view of the ring -------------------- */

typedef struct {
  Peer *p;
  VhuFrontend *fe;
  VhuDriverQueue *q;
  struct vring_desc *desc; /* the device's view */
  struct vring_avail *avail;
  struct vring_used *used;
  guint size;
  guint16 last_avail;
} Ring;

static void
ring_setup(Ring *r, guint64 features, guint size)
{
  g_autoptr(GError) error = NULL;

  r->p = peer_new(BIT(VHU_PF_REPLY_ACK) | BIT(VHU_PF_MQ), &r->fe);
  g_assert_true(vhu_frontend_init(r->fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(r->fe, 0x10000, 1 << 20, &error));
  g_assert_true(vhu_frontend_start(r->fe, features, &size, 1, &error));
  g_assert_no_error(error);
  r->q = vhu_frontend_get_queue(r->fe, 0);
  r->size = size;
  r->desc = peer_uva(r->p, r->p->addr_desc[0], 16 * size);
  r->avail = peer_uva(r->p, r->p->addr_avail[0], 6 + 2 * size);
  r->used = peer_uva(r->p, r->p->addr_used[0], 6 + 8 * size);
  g_assert_nonnull(r->desc);
  g_assert_nonnull(r->avail);
  g_assert_nonnull(r->used);
  r->last_avail = 0;
}

static void
ring_teardown(Ring *r)
{
  peer_free(r->p, r->fe);
}

/* Number of kicks the device has seen since the last call (0 or more). */
static guint64
ring_kicks(Ring *r)
{
  guint64 n = 0;

  if (read(r->p->kick[0], &n, sizeof n) != sizeof n)
    g_assert_cmpint(errno, ==, EAGAIN);
  return n;
}

static guint16
ring_pop(Ring *r)
{
  guint16 idx = __atomic_load_n(&r->avail->idx, __ATOMIC_ACQUIRE);

  g_assert_cmpuint(idx, !=, r->last_avail);
  return r->avail->ring[r->last_avail++ % r->size];
}

static void
ring_push(Ring *r, guint32 id, guint32 len)
{
  guint16 idx = r->used->idx;
  guint64 one = 1;

  r->used->ring[idx % r->size].id = id;
  r->used->ring[idx % r->size].len = len;
  __atomic_store_n(&r->used->idx, (guint16)(idx + 1), __ATOMIC_RELEASE);
  g_assert_cmpint(write(r->p->call[0], &one, sizeof one), ==, sizeof one);
}

static void
test_queue_direct(void)
{
  Ring r;
  VhuGuestBuf out[2] = { { 0x20000, 100 }, { 0x30000, 200 } };
  VhuGuestBuf in[1] = { { 0x40000, 300 } };
  int token = 0;
  gpointer got = NULL;
  guint32 len = 0;
  guint16 head, i;

  ring_setup(&r, 0, 8);
  g_assert_cmpuint(vhu_driver_queue_num_free(r.q), ==, 8);
  g_assert_cmpint(vhu_driver_queue_add(r.q, out, 2, in, 1, FALSE, &token), >=, 0);
  g_assert_cmpuint(vhu_driver_queue_num_free(r.q), ==, 5);
  /* Not published before the kick. */
  g_assert_cmpuint(r.avail->idx, ==, 0);
  vhu_driver_queue_kick(r.q);
  g_assert_cmpuint(ring_kicks(&r), ==, 1);
  head = ring_pop(&r);
  i = head;
  for (guint k = 0; k < 3; k++) {
    const VhuGuestBuf *b = k < 2 ? &out[k] : &in[0];

    g_assert_cmphex(r.desc[i].addr, ==, b->gpa);
    g_assert_cmpuint(r.desc[i].len, ==, b->len);
    g_assert_cmpuint(!!(r.desc[i].flags & VRING_DESC_F_WRITE), ==, k == 2);
    g_assert_cmpuint(!!(r.desc[i].flags & VRING_DESC_F_NEXT), ==, k < 2);
    i = r.desc[i].next;
  }
  g_assert_false(vhu_driver_queue_get_used(r.q, &got, &len));
  ring_push(&r, head, 42);
  g_assert_true(vhu_driver_queue_wait(r.q, 5000));
  g_assert_true(vhu_driver_queue_get_used(r.q, &got, &len));
  g_assert_true(got == &token);
  g_assert_cmpuint(len, ==, 42);
  g_assert_cmpuint(vhu_driver_queue_num_free(r.q), ==, 8);
  /* Nothing more: the wait times out. */
  g_assert_false(vhu_driver_queue_wait(r.q, 50));

  /* Fill the ring: 8 one-descriptor chains, the ninth does not fit. */
  for (guint k = 0; k < 8; k++)
    g_assert_cmpint(vhu_driver_queue_add(r.q, in, 0, in, 1, FALSE, GUINT_TO_POINTER(k + 1)), >=, 0);
  g_assert_cmpint(vhu_driver_queue_add(r.q, in, 0, in, 1, FALSE, NULL), ==, -1);
  g_assert_cmpint(vhu_driver_queue_add(r.q, NULL, 0, NULL, 0, FALSE, NULL), ==, -1);
  /* VRING_USED_F_NO_NOTIFY suppresses the kick. */
  r.used->flags = VRING_USED_F_NO_NOTIFY;
  vhu_driver_queue_kick(r.q);
  g_assert_cmpuint(ring_kicks(&r), ==, 0);
  g_assert_cmpuint(r.avail->idx, ==, 9);
  /* Completed out of order, tokens follow the heads. */
  {
    guint16 heads[8];

    for (guint k = 0; k < 8; k++)
      heads[k] = ring_pop(&r);
    for (int k = 7; k >= 0; k--)
      ring_push(&r, heads[k], (guint32)k);
    for (int k = 7; k >= 0; k--) {
      g_assert_true(vhu_driver_queue_get_used(r.q, &got, &len));
      g_assert_cmpuint(GPOINTER_TO_UINT(got), ==, (guint)k + 1);
      g_assert_cmpuint(len, ==, (guint)k);
    }
  }
  g_assert_cmpuint(vhu_driver_queue_num_free(r.q), ==, 8);
  ring_teardown(&r);
}

static void
test_queue_indirect(void)
{
  Ring r;
  VhuGuestBuf out[3] = { { 0x20000, 16 }, { 0x20010, 32 }, { 0x20030, 48 } };
  VhuGuestBuf in[2] = { { 0x30000, 8 }, { 0x30008, 4096 } };
  struct vring_desc *table;
  guint64 table_gpa;
  guint16 head, head2;
  gpointer got;
  guint32 len;

  ring_setup(&r, BIT(VHU_F_RING_INDIRECT_DESC), 4);
  g_assert_cmpint(vhu_driver_queue_add(r.q, out, 3, in, 2, TRUE, GINT_TO_POINTER(7)), >=, 0);
  /* One ring descriptor for five buffers. */
  g_assert_cmpuint(vhu_driver_queue_num_free(r.q), ==, 3);
  vhu_driver_queue_kick(r.q);
  head = ring_pop(&r);
  g_assert_cmpuint(r.desc[head].flags, ==, VRING_DESC_F_INDIRECT);
  g_assert_cmpuint(r.desc[head].len, ==, 5 * sizeof(struct vring_desc));
  table_gpa = r.desc[head].addr;
  table = vhu_frontend_gpa_to_ptr(r.fe, table_gpa, r.desc[head].len);
  g_assert_nonnull(table);
  g_assert_cmpuint(table_gpa % 16, ==, 0);
  for (guint k = 0; k < 5; k++) {
    const VhuGuestBuf *b = k < 3 ? &out[k] : &in[k - 3];

    g_assert_cmphex(table[k].addr, ==, b->gpa);
    g_assert_cmpuint(table[k].len, ==, b->len);
    g_assert_cmpuint(!!(table[k].flags & VRING_DESC_F_WRITE), ==, k >= 3);
    g_assert_cmpuint(!!(table[k].flags & VRING_DESC_F_NEXT), ==, k < 4);
    if (k < 4)
      g_assert_cmpuint(table[k].next, ==, k + 1);
  }
  ring_push(&r, head, 4104);
  g_assert_true(vhu_driver_queue_wait(r.q, 5000));
  g_assert_true(vhu_driver_queue_get_used(r.q, &got, &len));
  g_assert_cmpint(GPOINTER_TO_INT(got), ==, 7);
  g_assert_cmpuint(len, ==, 4104);
  g_assert_cmpuint(vhu_driver_queue_num_free(r.q), ==, 4);

  /* The head is reused with its table; a larger chain gets a larger table. */
  g_assert_cmpint(vhu_driver_queue_add(r.q, out, 1, in, 1, TRUE, NULL), >=, 0);
  vhu_driver_queue_kick(r.q);
  head2 = ring_pop(&r);
  if (head2 == head)
    g_assert_cmphex(r.desc[head2].addr, ==, table_gpa);
  g_assert_cmpuint(r.desc[head2].len, ==, 2 * sizeof(struct vring_desc));
  {
    VhuGuestBuf many[20];

    for (guint k = 0; k < 20; k++)
      many[k] = (VhuGuestBuf){ 0x20000 + k * 64, 64 };
    g_assert_cmpint(vhu_driver_queue_add(r.q, many, 10, many + 10, 10, TRUE, NULL), >=, 0);
    vhu_driver_queue_kick(r.q);
    head = ring_pop(&r);
    table = vhu_frontend_gpa_to_ptr(r.fe, r.desc[head].addr, 20 * 16);
    g_assert_nonnull(table);
    g_assert_cmphex(table[19].addr, ==, 0x20000 + 19 * 64);
    g_assert_cmpuint(table[19].flags, ==, VRING_DESC_F_WRITE);
  }
  ring_teardown(&r);
}

static void
test_queue_event_idx(void)
{
  Ring r;
  VhuGuestBuf in = { 0x20000, 64 };
  guint16 *avail_event, *used_event;
  gpointer got;

  ring_setup(&r, BIT(VHU_F_RING_EVENT_IDX), 16);
  avail_event = (guint16 *)&r.used->ring[16];
  used_event = &r.avail->ring[16];
  /* avail_event 0: the device wants a kick when entry 0 is published. */
  vhu_driver_queue_add(r.q, NULL, 0, &in, 1, FALSE, NULL);
  vhu_driver_queue_kick(r.q);
  g_assert_cmpuint(ring_kicks(&r), ==, 1);
  /* The device asks to be kicked only once idx passes 4. */
  *avail_event = 4;
  for (guint k = 0; k < 3; k++) {
    vhu_driver_queue_add(r.q, NULL, 0, &in, 1, FALSE, NULL);
    vhu_driver_queue_kick(r.q);
  }
  g_assert_cmpuint(ring_kicks(&r), ==, 0);
  vhu_driver_queue_add(r.q, NULL, 0, &in, 1, FALSE, NULL);
  vhu_driver_queue_add(r.q, NULL, 0, &in, 1, FALSE, NULL);
  vhu_driver_queue_kick(r.q); /* 4 -> 6 crosses avail_event */
  g_assert_cmpuint(ring_kicks(&r), ==, 1);
  /* used_event follows consumption. */
  for (guint k = 0; k < 3; k++)
    ring_push(&r, ring_pop(&r), 0);
  for (guint k = 0; k < 3; k++)
    g_assert_true(vhu_driver_queue_get_used(r.q, &got, NULL));
  g_assert_cmpuint(*used_event, ==, 3);
  ring_teardown(&r);
}

/* A device that returns heads it was never given breaks the queue; the
 * driver refuses to go on rather than free descriptors twice. */
static void
test_queue_hostile_used(void)
{
  Ring r;
  VhuGuestBuf in = { 0x20000, 64 };
  gpointer got;
  guint32 len;
  g_autoptr(GError) error = NULL;
  guint8 req[8] = { 0 }, resp[8];

  ring_setup(&r, 0, 4);
  vhu_driver_queue_add(r.q, NULL, 0, &in, 1, FALSE, NULL);
  vhu_driver_queue_kick(r.q);
  (void)ring_pop(&r);
  g_test_expect_message("vhost", G_LOG_LEVEL_WARNING, "*not in flight*");
  ring_push(&r, 3, 0);
  g_assert_false(vhu_driver_queue_get_used(r.q, &got, &len));
  g_test_assert_expected_messages();
  g_assert_cmpint(vhu_driver_queue_add(r.q, NULL, 0, &in, 1, FALSE, NULL), ==, -1);
  g_assert_cmpint(vhu_driver_queue_transact(r.q, req, sizeof req, resp, sizeof resp, &error), ==,
                  -1);
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_BUSY);
  ring_teardown(&r);
}

/* --- protocol errors from a misbehaving peer ----------------------------- */

/* A peer that answers GET_FEATURES with @flags, or not at all (@flags 0). */
static gpointer
bad_peer_thread(gpointer data)
{
  int *args = data;
  VhuMsg m;
  guint64 v = BIT(VHU_F_VERSION_1);
  struct pollfd pfd = { .fd = args[0], .events = POLLIN };

  if (poll(&pfd, 1, 5000) == 1 && vhu_msg_read(args[0], &m, 5000, NULL) == VHU_MSG_OK
      && args[1] != 0)
    vhu_msg_write(args[0], (guint32)args[2], (guint32)args[1], &v, (gsize)args[3], NULL, 0, NULL);
  return NULL;
}

static void
check_bad_reply(int flags, int request, int size, gint code, const char *msg_part)
{
  g_autoptr(GError) error = NULL;
  int sv[2], args[4];
  VhuFrontend *fe;
  GThread *t;
  guint64 v;

  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  args[0] = sv[1];
  args[1] = flags;
  args[2] = request;
  args[3] = size;
  fe = vhu_frontend_new_from_fd(sv[0]);
  vhu_frontend_set_timeout(fe, 200);
  t = g_thread_new("bad-peer", bad_peer_thread, args);
  g_assert_false(vhu_frontend_get_u64(fe, VHU_GET_FEATURES, &v, &error));
  g_assert_error(error, G_IO_ERROR, code);
  g_assert_nonnull(strstr(error->message, msg_part));
  g_thread_join(t);
  vhu_frontend_free(fe);
  close(sv[1]);
}

static void
test_bad_replies(void)
{
  check_bad_reply(0, 0, 0, G_IO_ERROR_TIMED_OUT, "within 200 ms");
  check_bad_reply(0x4, VHU_GET_FEATURES, 8, G_IO_ERROR_INVALID_DATA, "flags 0x4");
  check_bad_reply(0xd, VHU_GET_FEATURES, 8, G_IO_ERROR_INVALID_DATA, "flags 0xd");
  check_bad_reply(0x5, VHU_GET_PROTOCOL_FEATURES, 8, G_IO_ERROR_INVALID_DATA, "while GET_FEATURES");
  check_bad_reply(0x5, VHU_GET_FEATURES, 4, G_IO_ERROR_INVALID_DATA, "expected 8");
}

static void
test_connect_errors(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = tu_make_tmpdir("vhu-fe-XXXXXX");
  g_autofree char *path = g_build_filename(dir, "none.sock", NULL);

  g_assert_null(vhu_frontend_connect(path, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, path));
  g_rmdir(dir);
}

typedef struct {
  int listener;    /* bound to the path, not listening yet */
  guint listen_at; /* listen() on this call of wait_alive; 0: never */
  gboolean alive;
  guint calls;
} ConnectWait;

static gboolean
wait_alive(gpointer data)
{
  ConnectWait *w = data;

  if (++w->calls == w->listen_at)
    g_assert_cmpint(listen(w->listener, 1), ==, 0);
  return w->alive;
}

/* Retries while the socket is missing or refuses, within the timeout and
 * while the callback says the backend lives; other errors end it at once. */
static void
test_connect_wait(void)
{
  g_autofree char *dir = tu_make_tmpdir("vhu-fe-XXXXXX");
  g_autofree char *path = g_build_filename(dir, "late.sock", NULL);
  g_autofree char *long_path = g_strnfill(200, 'x');
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  ConnectWait w = { .listener = -1, .alive = TRUE };
  VhuFrontend *fe;
  GError *error = NULL;
  gint64 t0;

  g_assert_null(vhu_frontend_connect_wait(long_path, 5000, wait_alive, &w, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);
  g_assert_cmpuint(w.calls, ==, 0);
  g_clear_error(&error);

  /* Nothing there: the deadline ends it with the last error. */
  t0 = g_get_monotonic_time();
  g_assert_null(vhu_frontend_connect_wait(path, 100, wait_alive, &w, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
  g_assert_cmpint(g_get_monotonic_time() - t0, >=, 100 * 1000);
  g_assert_cmpint(g_get_monotonic_time() - t0, <, 5 * G_USEC_PER_SEC);
  g_assert_cmpuint(w.calls, >=, 1);
  g_clear_error(&error);

  /* A backend that died ends it at once. */
  w = (ConnectWait){ .listener = -1, .alive = FALSE };
  g_assert_null(vhu_frontend_connect_wait(path, 5000, wait_alive, &w, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
  g_assert_cmpuint(w.calls, ==, 1);
  g_clear_error(&error);

  /* Bound but not listening: refused, then accepted once it listens. */
  w = (ConnectWait){ .listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), .alive = FALSE };
  g_strlcpy(sun.sun_path, path, sizeof sun.sun_path);
  g_assert_cmpint(bind(w.listener, (struct sockaddr *)&sun, sizeof sun), ==, 0);
  g_assert_null(vhu_frontend_connect_wait(path, 5000, wait_alive, &w, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED);
  g_clear_error(&error);
  w.alive = TRUE;
  w.calls = 0;
  w.listen_at = 3;
  fe = vhu_frontend_connect_wait(path, 5000, wait_alive, &w, &error);
  g_assert_no_error(error);
  g_assert_nonnull(fe);
  g_assert_cmpuint(w.calls, ==, 3);
  vhu_frontend_free(fe);
  close(w.listener);
  g_unlink(path);
  g_rmdir(dir);
}

static void
test_memory(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(VhuFrontend) fe = vhu_frontend_new_from_fd(-1);
  guint64 a, b, c;

  g_assert_true(vhu_frontend_add_region(fe, 0x1000, 0x1000, &error));
  g_assert_true(vhu_frontend_add_region_offset(fe, 0x10000, 0x2000, 0x1000, &error));
  g_assert_no_error(error);
  g_assert_false(vhu_frontend_add_region(fe, 0x1800, 0x1000, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS);
  g_clear_error(&error);
  g_assert_false(vhu_frontend_add_region(fe, G_MAXUINT64 - 10, 0x1000, &error));
  g_clear_error(&error);
  g_assert_false(vhu_frontend_add_region(fe, 0x100000, 0, &error));
  g_clear_error(&error);

  g_assert_null(vhu_frontend_gpa_to_ptr(fe, 0x0fff, 2));
  g_assert_nonnull(vhu_frontend_gpa_to_ptr(fe, 0x1000, 0x1000));
  g_assert_null(vhu_frontend_gpa_to_ptr(fe, 0x1001, 0x1000));
  g_assert_null(vhu_frontend_gpa_to_ptr(fe, 0x1800, G_MAXSIZE));
  a = vhu_frontend_alloc(fe, 0x100, 16);
  b = vhu_frontend_alloc(fe, 0x10, 0x100);
  g_assert_cmphex(a, ==, 0x1000);
  g_assert_cmphex(b, ==, 0x1100);
  /* Does not fit in the first region: goes to the second, never across. */
  c = vhu_frontend_alloc(fe, 0xf00, 8);
  g_assert_cmphex(c, ==, 0x10000);
  g_assert_cmphex(vhu_frontend_alloc(fe, 0x3000, 8), ==, G_MAXUINT64);
  vhu_frontend_reset_alloc(fe);
  g_assert_cmphex(vhu_frontend_alloc(fe, 0x10, 1), ==, 0x1000);
}

static const VhuDisplayConfig display_config = {
  .num_scanouts = 1, .width = 640, .height = 480, .protocol_features = 0x3, /* like QEMU 10 */
};

/* --- display server against a scripted GPU backend ---------------------- */

typedef struct {
  VhuFrontend *fe;
  int main_peer; /* backend end of the vhost-user socket */
  int sock;      /* backend end of the display socket */
  VhuDisplayServer *ds;
} Display;

/* Attaches and receives the display socket as a backend would. */
static int
receive_display_socket(Display *d)
{
  g_autoptr(GError) error = NULL;
  VhuMsg m;
  int fd;

  g_assert_true(vhu_display_server_attach(d->ds, d->fe, &error));
  g_assert_no_error(error);
  g_assert_true(tu_wait_readable(d->main_peer, 5000));
  g_assert_cmpint(vhu_msg_read(d->main_peer, &m, 5000, &error), ==, VHU_MSG_OK);
  g_assert_cmpuint(m.hdr.request, ==, VHU_GPU_SET_SOCKET);
  g_assert_cmphex(m.hdr.flags, ==, 0x1);
  g_assert_cmpuint(m.hdr.size, ==, 0);
  g_assert_cmpuint(m.n_fds, ==, 1);
  fd = vhu_msg_steal_fd(&m, 0);
  vhu_msg_close_fds(&m);
  return fd;
}

static void
display_setup(Display *d, gboolean answer_invalid_edid)
{
  VhuDisplayConfig c = display_config;
  int sv[2];

  c.num_scanouts = 2;
  c.answer_invalid_edid = answer_invalid_edid;
  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  d->fe = vhu_frontend_new_from_fd(sv[0]);
  d->main_peer = sv[1];
  d->ds = vhu_display_server_new(&c);
  d->sock = receive_display_socket(d);
}

static void
display_teardown(Display *d)
{
  vhu_display_server_free(d->ds);
  vhu_frontend_free(d->fe);
  close(d->main_peer);
  if (d->sock >= 0)
    close(d->sock);
}

static void
dsend(Display *d, guint32 request, const void *payload, gsize size)
{
  guint32 hdr[3] = { request, 0, (guint32)size };
  g_autofree guint8 *buf = g_malloc(sizeof hdr + size);

  memcpy(buf, hdr, sizeof hdr);
  if (size > 0)
    memcpy(buf + sizeof hdr, payload, size);
  g_assert_cmpint(send(d->sock, buf, sizeof hdr + size, MSG_NOSIGNAL), ==, sizeof hdr + size);
}

/* Reads one reply; returns its payload size (payload copied to @buf). */
static gsize
dreply(Display *d, guint32 request, void *buf, gsize cap)
{
  guint32 hdr[3];

  g_assert_true(tu_wait_readable(d->sock, 5000));
  g_assert_cmpint(recv(d->sock, hdr, sizeof hdr, MSG_WAITALL), ==, sizeof hdr);
  g_assert_cmpuint(hdr[0], ==, request);
  g_assert_cmphex(hdr[1], ==, VHU_DISPLAY_FLAG_REPLY);
  g_assert_cmpuint(hdr[2], <=, cap);
  if (hdr[2] > 0)
    g_assert_cmpint(recv(d->sock, buf, hdr[2], MSG_WAITALL), ==, hdr[2]);
  return hdr[2];
}

/* A request with a reply orders everything sent before it. */
static void
dbarrier(Display *d)
{
  guint64 v = 0;

  dsend(d, VHU_DISPLAY_GET_PROTOCOL_FEATURES, NULL, 0);
  g_assert_cmpuint(dreply(d, VHU_DISPLAY_GET_PROTOCOL_FEATURES, &v, sizeof v), ==, 8);
  g_assert_cmphex(v, ==, 0x3);
}

static guint64
derrors(Display *d)
{
  VhuDisplayStats st;

  vhu_display_server_get_stats(d->ds, &st);
  return st.errors;
}

static void
test_display_requests(void)
{
  struct virtio_gpu_resp_display_info info;
  g_autofree struct virtio_gpu_resp_edid *edid = g_new0(struct virtio_gpu_resp_edid, 1);
  guint64 features = 0x1;
  VhuDisplayEdidRequest er = { .scanout_id = 1 };
  VhuDisplayStats st;
  Display d;

  display_setup(&d, FALSE);
  dbarrier(&d);
  dsend(&d, VHU_DISPLAY_SET_PROTOCOL_FEATURES, &features, sizeof features);
  dsend(&d, VHU_DISPLAY_GET_DISPLAY_INFO, NULL, 0);
  g_assert_cmpuint(dreply(&d, VHU_DISPLAY_GET_DISPLAY_INFO, &info, sizeof info), ==, sizeof info);
  g_assert_cmphex(info.hdr.type, ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(info.pmodes[1].enabled, ==, 1);
  g_assert_cmpuint(info.pmodes[1].r.width, ==, 640);
  g_assert_cmpuint(info.pmodes[2].enabled, ==, 0);
  dsend(&d, VHU_DISPLAY_GET_EDID, &er, sizeof er);
  g_assert_cmpuint(dreply(&d, VHU_DISPLAY_GET_EDID, edid, sizeof *edid), ==, sizeof *edid);
  g_assert_cmphex(edid->hdr.type, ==, VIRTIO_GPU_RESP_OK_EDID);
  /* An invalid scanout gets no answer, as from QEMU: the next reply is the
   * barrier's. */
  er.scanout_id = 2;
  dsend(&d, VHU_DISPLAY_GET_EDID, &er, sizeof er);
  dbarrier(&d);
  /* DMABUF_UPDATE is answered at once with an empty reply. */
  {
    VhuDisplayUpdate u = { 0, 0, 0, 1, 1 };

    dsend(&d, VHU_DISPLAY_DMABUF_UPDATE, &u, sizeof u);
    g_assert_cmpuint(dreply(&d, VHU_DISPLAY_DMABUF_UPDATE, NULL, 0), ==, 0);
  }
  vhu_display_server_get_stats(d.ds, &st);
  g_assert_cmphex(st.negotiated_features, ==, 0x1);
  g_assert_cmpuint(st.edid_requests, ==, 2);
  g_assert_cmpuint(st.errors, ==, 1);
  g_assert_cmpuint(st.dmabuf_updates, ==, 1);
  display_teardown(&d);

  /* With answer_invalid_edid the bad id gets an error answer. */
  display_setup(&d, TRUE);
  dsend(&d, VHU_DISPLAY_GET_EDID, &er, sizeof er);
  g_assert_cmpuint(dreply(&d, VHU_DISPLAY_GET_EDID, edid, sizeof *edid), ==, sizeof *edid);
  g_assert_cmphex(edid->hdr.type, ==, VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
  display_teardown(&d);
}

static void
send_update(Display *d, guint32 id, guint32 x, guint32 y, guint32 w, guint32 h, gsize pixels,
            guint32 value)
{
  VhuDisplayUpdate u = { id, x, y, w, h };
  g_autofree guint8 *buf = g_malloc(sizeof u + pixels * 4);

  memcpy(buf, &u, sizeof u);
  for (gsize i = 0; i < pixels; i++)
    memcpy(buf + sizeof u + i * 4, &value, 4);
  dsend(d, VHU_DISPLAY_UPDATE, buf, sizeof u + pixels * 4);
}

static void
test_display_framebuffer(void)
{
  VhuDisplayScanout so = { 1, 8, 4 };
  g_autofree guint32 *frame = NULL;
  guint w = 0, h = 0;
  Display d;

  display_setup(&d, FALSE);
  dsend(&d, VHU_DISPLAY_SCANOUT, &so, sizeof so);
  send_update(&d, 1, 2, 1, 3, 2, 6, 0x00abcdef);
  g_assert_true(vhu_display_server_wait_updates(d.ds, 1, 5000));
  dbarrier(&d);
  frame = vhu_display_server_get_frame(d.ds, 1, &w, &h);
  g_assert_nonnull(frame);
  g_assert_cmpuint(w, ==, 8);
  g_assert_cmpuint(h, ==, 4);
  for (guint y = 0; y < 4; y++)
    for (guint x = 0; x < 8; x++)
      g_assert_cmphex(frame[y * 8 + x], ==, x >= 2 && x < 5 && y >= 1 && y < 3 ? 0x00abcdef : 0);
  g_assert_null(vhu_display_server_get_frame(d.ds, 0, NULL, NULL));
  g_assert_cmpuint(derrors(&d), ==, 0);

  /* Bad updates: each one counted, none applied, the server goes on. */
  send_update(&d, 1, 6, 0, 3, 1, 3, 1);                   /* past the right edge */
  send_update(&d, 1, 0, 0xffffffff, 1, 2, 2, 1);          /* y + h overflows */
  send_update(&d, 1, 0, 0, 0xffffffff, 0xffffffff, 0, 1); /* w * h * 4 overflows */
  send_update(&d, 1, 0, 0, 2, 2, 3, 1);                   /* payload too short */
  send_update(&d, 1, 0, 0, 2, 2, 5, 1);                   /* payload too long */
  send_update(&d, 0, 0, 0, 1, 1, 1, 1);                   /* scanout disabled */
  send_update(&d, 7, 0, 0, 1, 1, 1, 1);                   /* no such scanout */
  dsend(&d, VHU_DISPLAY_UPDATE, "abc", 3);                /* shorter than its header */
  dbarrier(&d);
  g_assert_cmpuint(derrors(&d), ==, 8);
  g_free(frame);
  frame = vhu_display_server_get_frame(d.ds, 1, &w, &h);
  g_assert_cmphex(frame[0], ==, 0);
  g_assert_cmphex(frame[7], ==, 0);

  /* Bad scanouts and cursors, unknown requests. */
  {
    VhuDisplayScanout huge = { 0, 100000, 100000 }, bad_id = { 16, 8, 8 };
    g_autofree VhuDisplayCursorUpdate *cur = g_new0(VhuDisplayCursorUpdate, 1);
    g_autofree guint32 *image = g_new0(guint32, 64 * 64);
    VhuDisplayCursorPos pos = { 1, 5, 6 };
    guint x, y;
    gboolean visible;

    dsend(&d, VHU_DISPLAY_SCANOUT, &huge, sizeof huge);
    dsend(&d, VHU_DISPLAY_SCANOUT, &bad_id, sizeof bad_id);
    dsend(&d, VHU_DISPLAY_SCANOUT, &so, 8);
    dsend(&d, VHU_DISPLAY_CURSOR_UPDATE, cur, sizeof *cur - 4);
    dsend(&d, 99, NULL, 0);
    dbarrier(&d);
    g_assert_cmpuint(derrors(&d), ==, 8 + 5);
    g_assert_null(vhu_display_server_get_frame(d.ds, 0, NULL, NULL));
    g_assert_false(vhu_display_server_get_cursor(d.ds, 1, &x, &y, &visible, NULL));
    cur->pos = pos;
    cur->data[0] = 0xff112233;
    dsend(&d, VHU_DISPLAY_CURSOR_UPDATE, cur, sizeof *cur);
    pos.x = 9;
    dsend(&d, VHU_DISPLAY_CURSOR_POS_HIDE, &pos, sizeof pos);
    dbarrier(&d);
    g_assert_true(vhu_display_server_get_cursor(d.ds, 1, &x, &y, &visible, image));
    g_assert_cmpuint(x, ==, 9);
    g_assert_cmpuint(y, ==, 6);
    g_assert_false(visible);
    g_assert_cmphex(image[0], ==, 0xff112233);
  }
  /* 0x0 disables the scanout. */
  so.width = so.height = 0;
  dsend(&d, VHU_DISPLAY_SCANOUT, &so, sizeof so);
  dbarrier(&d);
  g_assert_null(vhu_display_server_get_frame(d.ds, 1, NULL, NULL));
  g_assert_false(vhu_display_server_wait_updates(d.ds, 1000, 10));
  display_teardown(&d);
}

/* An oversized message drops the connection; attach replaces it. */
static void
test_display_connection(void)
{
  guint32 hdr[3] = { VHU_DISPLAY_UPDATE, 0, 512u << 20 };
  char c;
  int old;
  Display d;

  display_setup(&d, FALSE);
  g_assert_cmpint(send(d.sock, hdr, sizeof hdr, MSG_NOSIGNAL), ==, sizeof hdr);
  g_assert_true(tu_wait_readable(d.sock, 5000));
  g_assert_cmpint(recv(d.sock, &c, 1, 0), ==, 0); /* EOF */
  g_assert_cmpuint(derrors(&d), ==, 1);

  /* A new socket; the old one is closed by the server. */
  old = d.sock;
  d.sock = receive_display_socket(&d);
  dbarrier(&d);
  close(old);
  old = d.sock;
  d.sock = receive_display_socket(&d);
  g_assert_true(tu_wait_readable(old, 5000));
  g_assert_cmpint(recv(old, &c, 1, 0), ==, 0);
  close(old);
  dbarrier(&d);
  vhu_display_server_detach(d.ds);
  g_assert_true(tu_wait_readable(d.sock, 5000));
  g_assert_cmpint(recv(d.sock, &c, 1, 0), ==, 0);
  display_teardown(&d);
}

/* --- QEMU's vhost-user-gpu ----------------------------------------------- */

typedef struct {
  TuBackend b;
  VhuFrontend *fe;
  VhuDisplayServer *ds;
} Qemu;

static const char *
qemu_gpu_binary(void)
{
  const char *env = g_getenv("VHU_QEMU_GPU");

  return env != NULL ? env : QEMU_GPU;
}

static gboolean
qemu_spawn(Qemu *qm)
{
  g_autoptr(GError) error = NULL;

  memset(qm, 0, sizeof *qm);
  if (!tu_spawn_qemu_gpu(&qm->b, qemu_gpu_binary(), "vhu-fe-XXXXXX"))
    return FALSE;
  /* It says nothing when ready: the socket accepting is the event. */
  qm->fe = vhu_frontend_connect_wait(qm->b.path, 10000, tu_proc_alive, qm->b.proc, &error);
  if (qm->fe == NULL)
    g_error("backend did not listen on %s: %s", qm->b.path, error->message);
  return TRUE;
}

/* Disconnects and waits (bounded) for the backend to exit on EOF, as it
 * does when QEMU goes away.  It must exit cleanly, not crash. */
static void
qemu_reap(Qemu *qm)
{
  g_clear_pointer(&qm->fe, vhu_frontend_free);
  g_assert_cmpint(tu_wait_exit(qm->b.proc, 5000), !=, -1);
  g_clear_pointer(&qm->ds, vhu_display_server_free);
  tu_backend_clear(&qm->b);
}

/* init, memory (one region with a non-zero mmap_offset, as QEMU's RAM above
 * the VGA hole), display socket, start: what QEMU does at DRIVER_OK. */
static void
qemu_start(Qemu *qm)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 64, 16 };
  guint64 drv = BIT(VIRTIO_GPU_F_EDID) | BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX);

  g_assert_true(vhu_frontend_init(qm->fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_add_region(qm->fe, 0, 1 << 20, &error));
  g_assert_true(vhu_frontend_add_region_offset(qm->fe, 1 << 20, 4 << 20, 1 << 20, &error));
  g_assert_no_error(error);
  qm->ds = vhu_display_server_new(&display_config);
  g_assert_true(vhu_display_server_attach(qm->ds, qm->fe, &error));
  g_assert_true(vhu_frontend_start(qm->fe, drv, sizes, 2, &error));
  g_assert_no_error(error);
}

static void
check_display_info(VhuFrontend *fe)
{
  struct virtio_gpu_ctrl_hdr req = { .type = VIRTIO_GPU_CMD_GET_DISPLAY_INFO };
  struct virtio_gpu_resp_display_info info;

  g_assert_cmphex(gpu_cmd(fe, &req, sizeof req, &info, sizeof info), ==,
                  VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(info.pmodes[0].enabled, ==, 1);
  g_assert_cmpuint(info.pmodes[0].r.width, ==, 640);
  g_assert_cmpuint(info.pmodes[0].r.height, ==, 480);
  g_assert_cmpuint(info.pmodes[1].enabled, ==, 0);
}

static void
test_qemu_realize(void)
{
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_config cfg;
  guint64 f;
  Qemu qm;

  if (!qemu_spawn(&qm))
    return;
  g_assert_true(vhu_frontend_init(qm.fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  f = vhu_frontend_get_backend_features(qm.fe);
  g_assert_true(f & BIT(VHU_F_VERSION_1));
  g_assert_true(f & BIT(VHU_F_PROTOCOL_FEATURES));
  g_assert_true(f & BIT(VHU_F_RING_INDIRECT_DESC));
  g_assert_true(f & BIT(VHU_F_RING_EVENT_IDX));
  g_assert_true(vhu_frontend_has_protocol_feature(qm.fe, VHU_PF_REPLY_ACK));
  g_assert_true(vhu_frontend_has_protocol_feature(qm.fe, VHU_PF_CONFIG));
  g_assert_true(vhu_frontend_has_protocol_feature(qm.fe, VHU_PF_MQ));
  g_assert_cmpuint(vhu_frontend_get_num_queues(qm.fe), ==, 2);
  g_assert_true(vhu_frontend_get_config(qm.fe, 0, &cfg, sizeof cfg, &error));
  g_assert_no_error(error);
  /* QEMU keeps num_scanouts and the event fields itself; its backend only
   * fills num_capsets (0 without virgl). */
  g_assert_cmpuint(cfg.num_scanouts, ==, 0);
  g_assert_cmpuint(cfg.events_read, ==, 0);
  g_assert_cmpuint(cfg.events_clear, ==, 0);
  g_assert_cmpuint(cfg.num_capsets, ==, 0);
  qemu_reap(&qm);
}

static void
fill_pattern(guint32 *px, guint w, guint h, guint32 seed)
{
  for (guint y = 0; y < h; y++)
    for (guint x = 0; x < w; x++)
      px[y * w + x] = 0xff000000u | ((x * 4 + seed) & 0xff) << 16 | ((y * 5) & 0xff) << 8
                      | ((x + y + seed) & 0xff);
}

static void
assert_frame(VhuDisplayServer *ds, const guint32 *want, guint w, guint h)
{
  guint fw = 0, fh = 0;
  g_autofree guint32 *frame = vhu_display_server_get_frame(ds, 0, &fw, &fh);

  g_assert_nonnull(frame);
  g_assert_cmpuint(fw, ==, w);
  g_assert_cmpuint(fh, ==, h);
  for (guint i = 0; i < w * h; i++) {
    if ((frame[i] & 0xffffff) != (want[i] & 0xffffff))
      g_error("pixel (%u,%u): 0x%08x, want 0x%08x", i % w, i / w, frame[i], want[i]);
  }
}

/* Creates a 2D resource backed by guest memory (split over two entries). */
static guint64
create_resource(VhuFrontend *fe, guint32 id, guint w, guint h)
{
  struct virtio_gpu_resource_create_2d create = {
    .hdr.type = VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
    .resource_id = id,
    .format = VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
    .width = w,
    .height = h,
  };
  struct {
    struct virtio_gpu_resource_attach_backing hdr;
    struct virtio_gpu_mem_entry e[2];
  } attach = { .hdr = { .hdr.type = VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
                        .resource_id = id,
                        .nr_entries = 2 } };
  gsize bytes = (gsize)w * h * 4;
  guint64 gpa = vhu_frontend_alloc(fe, bytes, 4096);

  g_assert_cmphex(gpa, !=, G_MAXUINT64);
  attach.e[0].addr = gpa;
  attach.e[0].length = (guint32)(bytes / 2);
  attach.e[1].addr = gpa + bytes / 2;
  attach.e[1].length = (guint32)(bytes - bytes / 2);
  g_assert_cmphex(gpu_cmd(fe, &create, sizeof create, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(gpu_cmd(fe, &attach, sizeof attach, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  return gpa;
}

static void
transfer_flush(VhuFrontend *fe, guint32 id, guint stride, guint x, guint y, guint w, guint h)
{
  struct virtio_gpu_transfer_to_host_2d t = {
    .hdr.type = VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
    .r = { x, y, w, h },
    .offset = (guint64)y * stride + x * 4,
    .resource_id = id,
  };
  struct virtio_gpu_resource_flush f = {
    .hdr.type = VIRTIO_GPU_CMD_RESOURCE_FLUSH,
    .r = { x, y, w, h },
    .resource_id = id,
  };

  g_assert_cmphex(gpu_cmd(fe, &t, sizeof t, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(gpu_cmd(fe, &f, sizeof f, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

static void
check_edid(VhuFrontend *fe)
{
  struct virtio_gpu_cmd_get_edid req = gpu_get_edid(0);
  g_autofree struct virtio_gpu_resp_edid *edid = g_new0(struct virtio_gpu_resp_edid, 1);

  g_assert_cmphex(gpu_cmd(fe, &req, sizeof req, edid, sizeof *edid), ==, VIRTIO_GPU_RESP_OK_EDID);
  g_assert_cmpuint(edid->size, ==, 128);
  /* The detailed timing carries the mode: 640 x 480. */
  gpu_check_edid(edid->edid, 640, 480);
}

static void
test_qemu_session(void)
{
  const guint w = 64, h = 48;
  struct virtio_gpu_set_scanout so = {
    .hdr.type = VIRTIO_GPU_CMD_SET_SCANOUT,
    .r = { 0, 0, w, h },
    .scanout_id = 0,
    .resource_id = 1,
  };
  g_autofree guint32 *want = g_new(guint32, w * h);
  VhuDisplayStats st;
  guint32 *backing;
  Qemu qm;

  if (!qemu_spawn(&qm))
    return;
  qemu_start(&qm);

  /* QEMU 10's backend asks the display for everything. */
  check_display_info(qm.fe);
  vhu_display_server_get_stats(qm.ds, &st);
  g_assert_cmpuint(st.protocol_features_requests, ==, 1);
  g_assert_cmpuint(st.set_protocol_features, ==, 1);
  g_assert_cmphex(st.negotiated_features, ==, 0x3);
  g_assert_cmpuint(st.display_info_requests, >=, 1);
  check_edid(qm.fe);

  backing = vhu_frontend_gpa_to_ptr(qm.fe, create_resource(qm.fe, 1, w, h), w * h * 4);
  g_assert_nonnull(backing);
  fill_pattern(backing, w, h, 0);
  memcpy(want, backing, w * h * 4);
  g_assert_cmphex(gpu_cmd(qm.fe, &so, sizeof so, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  transfer_flush(qm.fe, 1, w * 4, 0, 0, w, h);
  g_assert_true(vhu_display_server_wait_updates(qm.ds, 1, 5000));
  assert_frame(qm.ds, want, w, h);

  /* A partial update lands at its place and nowhere else. */
  fill_pattern(backing, w, h, 77);
  for (guint y = 8; y < 24; y++)
    for (guint x = 8; x < 24; x++)
      want[y * w + x] = backing[y * w + x];
  transfer_flush(qm.fe, 1, w * 4, 8, 8, 16, 16);
  g_assert_true(vhu_display_server_wait_updates(qm.ds, 2, 5000));
  assert_frame(qm.ds, want, w, h);
  vhu_display_server_get_stats(qm.ds, &st);
  g_assert_cmpuint(st.scanouts, >=, 1);
  g_assert_cmpuint(st.update_bytes, ==, (w * h + 16 * 16) * 4);
  g_assert_cmpuint(st.errors, ==, 0);
  qemu_reap(&qm);
}

static void
test_qemu_cursor(void)
{
  struct virtio_gpu_update_cursor cur = {
    .hdr.type = VIRTIO_GPU_CMD_UPDATE_CURSOR,
    .pos = { .scanout_id = 0, .x = 10, .y = 20 },
    .resource_id = 2,
    .hot_x = 1,
    .hot_y = 2,
  };
  g_autoptr(GError) error = NULL;
  g_autofree guint32 *image = g_new(guint32, 64 * 64);
  guint32 *backing;
  guint x, y;
  gboolean visible;
  Qemu qm;

  if (!qemu_spawn(&qm))
    return;
  qemu_start(&qm);
  backing = vhu_frontend_gpa_to_ptr(qm.fe, create_resource(qm.fe, 2, 64, 64), 64 * 64 * 4);
  fill_pattern(backing, 64, 64, 3);
  {
    struct virtio_gpu_transfer_to_host_2d t = {
      .hdr.type = VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
      .r = { 0, 0, 64, 64 },
      .resource_id = 2,
    };
    g_assert_cmphex(gpu_cmd(qm.fe, &t, sizeof t, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
  /* The cursor queue answers nothing (no writable buffer). */
  g_assert_cmpint(vhu_driver_queue_transact(vhu_frontend_get_queue(qm.fe, 1), &cur, sizeof cur,
                                            NULL, 0, &error),
                  ==, 0);
  g_assert_no_error(error);
  /* The display socket is ordered: once GET_DISPLAY_INFO went through it,
   * the cursor message sent before it has been handled. */
  check_display_info(qm.fe);
  g_assert_true(vhu_display_server_get_cursor(qm.ds, 0, &x, &y, &visible, image));
  g_assert_cmpuint(x, ==, 10);
  g_assert_cmpuint(y, ==, 20);
  g_assert_true(visible);
  g_assert_cmphex(image[65], ==, backing[65]);
  g_assert_cmpmem(image, 64 * 64 * 4, backing, 64 * 64 * 4);
  qemu_reap(&qm);
}

/* Indirect tables and batches against libvhost-user's ring code. */
static void
test_qemu_indirect(void)
{
  enum { N = 32 };
  struct virtio_gpu_resource_unref unref[N];
  struct virtio_gpu_ctrl_hdr *resp;
  VhuDriverQueue *q;
  guint64 req_gpa, resp_gpa;
  guint done = 0;
  Qemu qm;

  if (!qemu_spawn(&qm))
    return;
  qemu_start(&qm);
  q = vhu_frontend_get_queue(qm.fe, 0);
  req_gpa = vhu_frontend_alloc(qm.fe, sizeof unref, 64);
  resp_gpa = vhu_frontend_alloc(qm.fe, sizeof *resp * N, 64);
  resp = vhu_frontend_gpa_to_ptr(qm.fe, resp_gpa, sizeof *resp * N);
  for (guint i = 0; i < N; i++) {
    /* Each request split over two readable buffers, in one indirect table. */
    VhuGuestBuf out[2] = { { req_gpa + i * sizeof unref[0], 8 },
                           { req_gpa + i * sizeof unref[0] + 8, sizeof unref[0] - 8 } };
    VhuGuestBuf in = { resp_gpa + i * sizeof *resp, sizeof *resp };

    unref[i] = (struct virtio_gpu_resource_unref){ .hdr.type = VIRTIO_GPU_CMD_RESOURCE_UNREF,
                                                   .resource_id = 1000 + i };
    memcpy(vhu_frontend_gpa_to_ptr(qm.fe, out[0].gpa, sizeof unref[0]), &unref[i], sizeof unref[0]);
    g_assert_cmpint(vhu_driver_queue_add(q, out, 2, &in, 1, i % 2 == 0, GUINT_TO_POINTER(i + 1)),
                    >=, 0);
  }
  vhu_driver_queue_kick(q);
  while (done < N) {
    gpointer token;
    guint32 len;

    if (!vhu_driver_queue_get_used(q, &token, &len)) {
      g_assert_true(vhu_driver_queue_wait(q, 5000));
      continue;
    }
    g_assert_cmpuint(len, ==, sizeof *resp);
    g_assert_cmphex(resp[GPOINTER_TO_UINT(token) - 1].type, ==,
                    VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
    done++;
  }
  g_assert_cmpuint(vhu_driver_queue_num_free(q), ==, 64);
  qemu_reap(&qm);
}

/* Stop and start again, as a guest reboot does: QEMU hands the backend a
 * new display socket on every start.  QEMU's own backend refuses any socket
 * after the first (QEMU issue #4849) and then waits on the dead one, so only
 * requests that do not involve the display are checked after the restart;
 * the vhost-user side must work: fresh rings from index 0, state kept. */
static void
test_qemu_restart(void)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 64, 16 };
  struct virtio_gpu_resource_unref unref
      = { .hdr.type = VIRTIO_GPU_CMD_RESOURCE_UNREF, .resource_id = 4242 };
  struct virtio_gpu_resource_unref unref1
      = { .hdr.type = VIRTIO_GPU_CMD_RESOURCE_UNREF, .resource_id = 1 };
  struct virtio_gpu_resource_create_2d create = {
    .hdr.type = VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
    .resource_id = 1,
    .format = VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
    .width = 16,
    .height = 16,
  };
  Qemu qm;

  if (!qemu_spawn(&qm))
    return;
  qemu_start(&qm);
  check_display_info(qm.fe);
  g_assert_cmphex(gpu_cmd(qm.fe, &create, sizeof create, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  for (guint round = 0; round < 3; round++) {
    g_assert_true(vhu_frontend_stop(qm.fe, &error));
    g_assert_no_error(error);
    g_assert_true(vhu_display_server_attach(qm.ds, qm.fe, &error));
    g_assert_true(vhu_frontend_start(qm.fe, BIT(VIRTIO_GPU_F_EDID), sizes, 2, &error));
    g_assert_no_error(error);
    g_assert_cmphex(gpu_cmd(qm.fe, &unref, sizeof unref, NULL, 0), ==,
                    VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  }
  /* The resource created before the restarts is still there. */
  g_assert_cmphex(gpu_cmd(qm.fe, &unref1, sizeof unref1, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  qemu_reap(&qm);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/frontend/memory", test_memory);
  g_test_add_func("/frontend/connect-errors", test_connect_errors);
  g_test_add_func("/frontend/connect-wait", test_connect_wait);
  g_test_add_func("/frontend/bad-replies", test_bad_replies);
  g_test_add_func("/frontend/sequence/full", test_sequence_full);
  g_test_add_func("/frontend/sequence/minimal", test_sequence_minimal);
  g_test_add_func("/frontend/queue/direct", test_queue_direct);
  g_test_add_func("/frontend/queue/indirect", test_queue_indirect);
  g_test_add_func("/frontend/queue/event-idx", test_queue_event_idx);
  g_test_add_func("/frontend/queue/hostile-used", test_queue_hostile_used);
  g_test_add_func("/frontend/display/requests", test_display_requests);
  g_test_add_func("/frontend/display/framebuffer", test_display_framebuffer);
  g_test_add_func("/frontend/display/connection", test_display_connection);
  g_test_add_func("/frontend/qemu-gpu/realize", test_qemu_realize);
  g_test_add_func("/frontend/qemu-gpu/session", test_qemu_session);
  g_test_add_func("/frontend/qemu-gpu/cursor", test_qemu_cursor);
  g_test_add_func("/frontend/qemu-gpu/indirect", test_qemu_indirect);
  g_test_add_func("/frontend/qemu-gpu/restart", test_qemu_restart);
  return g_test_run();
}
