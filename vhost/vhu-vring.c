/* vhu-vring.c: device side of a split virtqueue.
 *
 * The rings live in memory the guest writes concurrently, so every value read
 * from it is loaded once into a local and checked there; nothing is re-read
 * after validation.  Indirect tables are copied out whole before they are
 * walked.  Memory ordering: avail->idx is loaded with acquire semantics
 * before the entries it publishes; used entries are stored before used->idx
 * with release semantics; a full fence separates "publish used" from
 * "read the guest's notification wishes", and "enable notifications" or
 * "advance avail_event" (EVENT_IDX) from the avail->idx check that finds
 * the ring empty. */
#include "vhu-vring-internal.h"

#include <errno.h>
#include <gio/gio.h>
#include <linux/virtio_ring.h>
#include <string.h>
#include <unistd.h>

GQuark
vhu_vring_error_quark(void)
{
  return g_quark_from_static_string("vhu-vring-error-quark");
}

/* ---- elements ---------------------------------------------------------- */

void
vhu_elem_free(VhuElem *elem)
{
  if (elem == NULL)
    return;
  vhu_mem_table_unref(elem->mem);
  g_free((VhuElemPriv *)elem);
}

gsize
vhu_elem_read(const VhuElem *elem, gsize offset, void *buf, gsize len)
{
  return vhu_iov_to_buf(elem->out_sg, elem->out_num, offset, buf, len);
}

gsize
vhu_elem_write(const VhuElem *elem, gsize offset, const void *buf, gsize len)
{
  return vhu_iov_from_buf(elem->in_sg, elem->in_num, offset, buf, len);
}

/* ---- life cycle -------------------------------------------------------- */

VhuVring *
vhu_vring_new(guint index)
{
  VhuVring *vring = g_new0(VhuVring, 1);

  g_mutex_init(&vring->lock);
  vring->index = index;
  vring->call_fd = -1;
  vring->err_fd = -1;
  vring->notify_enabled = TRUE;
  vring->generation = 1;
  vring->resubmit = g_array_new(FALSE, FALSE, sizeof(VhuResubmit));
  vring->iov = g_new(struct iovec, VHU_ELEM_MAX_IOV);
  vring->indirect = g_new(struct vring_desc, VHU_INDIRECT_MAX);
  return vring;
}

static void
replace_fd(int *slot, int fd)
{
  if (*slot >= 0)
    close(*slot);
  *slot = fd;
}

void
vhu_vring_free(VhuVring *vring)
{
  if (vring == NULL)
    return;
  replace_fd(&vring->call_fd, -1);
  replace_fd(&vring->err_fd, -1);
  vhu_mem_table_unref(vring->mem);
  g_array_unref(vring->resubmit);
  g_free(vring->iov);
  g_free(vring->broken_reason);
  g_free(vring->indirect);
  g_mutex_clear(&vring->lock);
  g_free(vring);
}

guint
vhu_vring_index(const VhuVring *vring)
{
  return vring->index;
}

#define LOCKED_GETTER(type, name, expr)                                                            \
  type name(const VhuVring *vring)                                                                 \
  {                                                                                                \
    VhuVring *v = (VhuVring *)vring;                                                               \
    type value;                                                                                    \
                                                                                                   \
    g_mutex_lock(&v->lock);                                                                        \
    value = (expr);                                                                                \
    g_mutex_unlock(&v->lock);                                                                      \
    return value;                                                                                  \
  }

LOCKED_GETTER(guint, vhu_vring_size, v->num)
LOCKED_GETTER(gboolean, vhu_vring_is_started, v->started)
LOCKED_GETTER(gboolean, vhu_vring_is_enabled, v->enabled)
LOCKED_GETTER(gboolean, vhu_vring_is_broken, v->broken)
/* Requests unpopped in stack order were rewound already; one unpopped out
 * of order stays counted: handing out requests after it again would
 * complete them twice. */
LOCKED_GETTER(guint16, vhu_vring_get_base, v->last_avail_idx)

void
vhu_vring_set_broken_func(VhuVring *vring, VhuVringBrokenFunc func, gpointer data)
{
  g_mutex_lock(&vring->lock);
  vring->broken_func = func;
  vring->broken_data = data;
  g_mutex_unlock(&vring->lock);
}

/* Every public function that can break the ring ends with this instead of
 * g_mutex_unlock: the report runs unlocked, so the callback may use the
 * ring (signal its error fd) and take other locks. */
static void
unlock_and_report(VhuVring *vring)
{
  VhuVringBrokenFunc func = vring->broken_func;
  gpointer data = vring->broken_data;
  char *reason = NULL;

  if (vring->broke_now) {
    vring->broke_now = FALSE;
    reason = g_strdup(vring->broken_reason);
  }
  g_mutex_unlock(&vring->lock);
  if (reason != NULL && func != NULL)
    func(data, vring, reason);
  g_free(reason);
}

static gboolean
is_mapped(const VhuVring *vring)
{
  return vring->desc != NULL;
}

static void
unmap_rings(VhuVring *vring)
{
  vring->desc = NULL;
  vring->avail = NULL;
  vring->used = NULL;
}

/* Translates the three rings over their full sizes (event index fields
 * included) and checks that the host pointers keep the ring alignment, which
 * an odd mmap_offset could break. */
static gboolean
translate_rings(const VhuVring *vring, const VhuMemTable *mem, void *host[3], GError **error)
{
  const guint64 num = vring->num;
  const struct {
    const char *what;
    guint64 uva, size, align;
  } parts[3] = {
    { "descriptor table", vring->addr.desc_user_addr, 16 * num, VRING_DESC_ALIGN_SIZE },
    { "available ring", vring->addr.avail_user_addr, 4 + 2 * num + 2, VRING_AVAIL_ALIGN_SIZE },
    { "used ring", vring->addr.used_user_addr, 4 + 8 * num + 2, VRING_USED_ALIGN_SIZE },
  };

  if (vring->num == 0 || !vring->has_addr || mem == NULL) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: size, addresses and memory table are not all set", vring->index);
    return FALSE;
  }
  for (guint i = 0; i < 3; i++) {
    host[i] = vhu_mem_uva_to_host(mem, parts[i].uva, parts[i].size);
    if (host[i] == NULL || (guintptr)host[i] % parts[i].align != 0) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                  "queue %u: %s at 0x%" G_GINT64_MODIFIER "x (+%" G_GUINT64_FORMAT
                  ") is %s frontend memory",
                  vring->index, parts[i].what, parts[i].uva, parts[i].size,
                  host[i] == NULL ? "not in" : "misaligned in");
      return FALSE;
    }
  }
  return TRUE;
}

static gboolean
map_rings(VhuVring *vring, GError **error)
{
  void *host[3];

  unmap_rings(vring);
  if (!translate_rings(vring, vring->mem, host, error))
    return FALSE;
  vring->desc = host[0];
  vring->avail = host[1];
  vring->used = host[2];
  return TRUE;
}

gboolean
vhu_vring_check_mem(VhuVring *vring, const VhuMemTable *mem, GError **error)
{
  void *host[3];
  gboolean ok = TRUE;

  g_mutex_lock(&vring->lock);
  if (vring->started)
    ok = translate_rings(vring, mem, host, error);
  g_mutex_unlock(&vring->lock);
  return ok;
}

static gboolean
set_num_locked(VhuVring *vring, guint num, GError **error)
{
  if (num == 0 || num > VHU_MAX_QUEUE_SIZE || (num & (num - 1)) != 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: size %u is not a power of two in 1..%u", vring->index, num,
                VHU_MAX_QUEUE_SIZE);
    return FALSE;
  }
  if (vring->started) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: size changed while started", vring->index);
    return FALSE;
  }
  vring->num = num;
  /* The rings now have other sizes; start maps them again if this fails. */
  if (vring->has_addr && vring->mem != NULL)
    map_rings(vring, NULL);
  else
    unmap_rings(vring);
  return TRUE;
}

static gboolean
set_addr_locked(VhuVring *vring, const VhuVringAddr *addr, GError **error)
{
  VhuVringAddr a;

  memcpy(&a, addr, sizeof a);
  if (a.desc_user_addr % VRING_DESC_ALIGN_SIZE || a.avail_user_addr % VRING_AVAIL_ALIGN_SIZE
      || a.used_user_addr % VRING_USED_ALIGN_SIZE) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: misaligned ring address (desc 0x%" G_GINT64_MODIFIER
                "x avail 0x%" G_GINT64_MODIFIER "x used 0x%" G_GINT64_MODIFIER "x)",
                vring->index, (guint64)a.desc_user_addr, (guint64)a.avail_user_addr,
                (guint64)a.used_user_addr);
    return FALSE;
  }
  vring->addr = a;
  vring->has_addr = TRUE;
  /* Without a memory table yet, translation waits for set_mem/start. */
  if (vring->num == 0 || vring->mem == NULL) {
    unmap_rings(vring);
    return TRUE;
  }
  return map_rings(vring, error);
}

static gboolean
set_base_locked(VhuVring *vring, guint num, GError **error)
{
  if (num > G_MAXUINT16 || vring->started) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                vring->started ? "queue %u: base %u set while started"
                               : "queue %u: base %u out of range",
                vring->index, num);
    return FALSE;
  }
  vring->last_avail_idx = num;
  vring->signalled_used_valid = FALSE;
  return TRUE;
}

static void
set_features_locked(VhuVring *vring, guint64 features)
{
  vring->features = features;
}

static gboolean
set_mem_locked(VhuVring *vring, VhuMemTable *mem, GError **error)
{
  if (mem != NULL)
    vhu_mem_table_ref(mem);
  vhu_mem_table_unref(vring->mem);
  vring->mem = mem;
  if (mem == NULL || vring->num == 0 || !vring->has_addr) {
    unmap_rings(vring);
    return TRUE;
  }
  return map_rings(vring, error);
}

static void
signal_fd(int fd)
{
  guint64 one = 1;
  ssize_t r;

  if (fd < 0)
    return;
  do
    r = write(fd, &one, sizeof one);
  while (r < 0 && errno == EINTR);
  /* The fd is non-blocking (the backend made it so): EAGAIN means the
   * counter is saturated and the reader wakes up anyway. */
}

static void
set_call_fd_locked(VhuVring *vring, int fd)
{
  replace_fd(&vring->call_fd, fd);
  if (fd < 0 || !vring->missed_notify)
    return;
  /* Completions made while no call fd was set (as libvhost-user does after
   * a reconnect): one interrupt too many is harmless, one too few leaves the
   * guest waiting. */
  vring->missed_notify = FALSE;
  if (!vring->started)
    return;
  vring->signalled_used = vring->last_used_idx;
  vring->signalled_used_valid = TRUE;
  signal_fd(fd);
}

static void
set_err_fd_locked(VhuVring *vring, int fd)
{
  replace_fd(&vring->err_fd, fd);
}

static void
set_enabled_locked(VhuVring *vring, gboolean enabled)
{
  vring->enabled = enabled;
}

static void
signal_error_locked(VhuVring *vring)
{
  signal_fd(vring->err_fd);
}

/* ---- start / stop ------------------------------------------------------ */

static void
forget_requests(VhuVring *vring)
{
  vring->generation++;
  vring->inuse = 0;
  g_array_set_size(vring->resubmit, 0);
}

static gboolean
start_locked(VhuVring *vring, GError **error)
{
  if (vring->started)
    return TRUE;
  if (!is_mapped(vring) && !map_rings(vring, error))
    return FALSE;
  forget_requests(vring);
  vring->last_used_idx = __atomic_load_n(&vring->used->idx, __ATOMIC_ACQUIRE);
  if (!vhu_vring_inflight_start(vring, error))
    return FALSE;
  /* A restart by the frontend gives the ring a fresh chance. */
  vring->broken = FALSE;
  g_clear_pointer(&vring->broken_reason, g_free);
  vring->signalled_used_valid = FALSE;
  vring->notify_enabled = TRUE;
  vring->used_flags = 0;
  GUEST_STORE(&vring->used->flags, vring->used_flags);
  if (has_feature(vring, VIRTIO_RING_F_EVENT_IDX))
    GUEST_STORE((guint16 *)&vring->used->ring[vring->num], vring->last_avail_idx);
  vring->event_unfenced = has_feature(vring, VIRTIO_RING_F_EVENT_IDX);
  vring->missed_notify = FALSE;
  vring->started = TRUE;
  return TRUE;
}

static void
stop_locked(VhuVring *vring)
{
  vring->started = FALSE;
  vring->pops_held = FALSE;
  forget_requests(vring);
}

void
vhu_vring_hold_pops(VhuVring *vring, gboolean hold)
{
  g_mutex_lock(&vring->lock);
  vring->pops_held = hold;
  g_mutex_unlock(&vring->lock);
}

static void
reset_locked(VhuVring *vring)
{
  stop_locked(vring);
  /* The memory table is the backend's, not ring state: it stays so that a
   * frontend that does not resend it (QEMU keeps its own copy) can restart. */
  vring->num = 0;
  vring->features = 0;
  vring->has_addr = FALSE;
  memset(&vring->addr, 0, sizeof vring->addr);
  unmap_rings(vring);
  vring->last_avail_idx = 0;
  vring->last_used_idx = 0;
  vring->signalled_used = 0;
  vring->signalled_used_valid = FALSE;
  vring->used_flags = 0;
  vring->enabled = FALSE;
  vring->broken = FALSE;
  g_clear_pointer(&vring->broken_reason, g_free);
  vring->notify_enabled = TRUE;
  vring->missed_notify = FALSE;
  replace_fd(&vring->call_fd, -1);
  replace_fd(&vring->err_fd, -1);
  vring->inflight = NULL;
  vring->inflight_size = 0;
  vring->inflight_counter = 0;
}

/* ---- pop --------------------------------------------------------------- */

/* A region the frontend truncated under us reads as zeros from the fault
 * on (vhu-mem.h): whatever the ring read or wrote since is void. */
static gboolean
memory_intact(VhuVring *vring, GError **error)
{
  if (vring->mem == NULL || !vhu_mem_table_is_damaged(vring->mem))
    return TRUE;
  vhu_vring_break(vring, error, "guest memory shrank under the ring (truncated by the frontend)");
  return FALSE;
}

static gboolean
can_process(const VhuVring *vring)
{
  return vring->started && !vring->pops_held && vring->enabled && !vring->broken
         && is_mapped(vring);
}

static VhuElem *
pop_resubmit(VhuVring *vring, GError **error)
{
  VhuResubmit r = g_array_index(vring->resubmit, VhuResubmit, 0);
  VhuElemPriv *priv;

  g_array_remove_index(vring->resubmit, 0);
  priv = vhu_vring_gather_chain(vring, r.head, error);
  if (priv == NULL)
    return NULL;
  if (!memory_intact(vring, error)) {
    vhu_elem_free(&priv->elem);
    return NULL;
  }
  priv->from_avail = r.from_avail;
  priv->avail_pos = r.avail_pos;
  vring->inuse++;
  vhu_vring_inflight_mark(vring, r.head);
  return &priv->elem;
}

static VhuElem *
pop_locked(VhuVring *vring, GError **error)
{
  guint16 avail_idx, pending, head;
  VhuElemPriv *priv;

  if (!can_process(vring))
    return NULL;
  /* Before the avail index is judged: a truncated ring reads as zeros. */
  if (!memory_intact(vring, error))
    return NULL;
  if (vring->resubmit->len > 0)
    return pop_resubmit(vring, error);

  avail_idx = __atomic_load_n(&vring->avail->idx, __ATOMIC_ACQUIRE);
  pending = avail_idx - vring->last_avail_idx;
  if (pending == 0 && vring->event_unfenced) {
    /* The guest publishes avail->idx, then (after a full barrier) reads
     * avail_event to decide whether to kick.  Our avail_event store must be
     * visible before we conclude the ring is empty, or each side can miss
     * the other's write: no request seen here, no kick sent there. */
    vring->event_unfenced = FALSE;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    avail_idx = __atomic_load_n(&vring->avail->idx, __ATOMIC_ACQUIRE);
    pending = avail_idx - vring->last_avail_idx;
  }
  if (pending > vring->num) {
    vhu_vring_break(vring, error, "avail index moved from %u to %u, more than the ring size %u",
                    vring->last_avail_idx, avail_idx, vring->num);
    return NULL;
  }
  if (pending == 0)
    return NULL;
  head = GUEST_LOAD(&vring->avail->ring[vring->last_avail_idx & (vring->num - 1)]);
  if (head >= vring->num) {
    vhu_vring_break(vring, error, "avail entry %u names head %u, beyond ring size %u",
                    vring->last_avail_idx, head, vring->num);
    return NULL;
  }
  priv = vhu_vring_gather_chain(vring, head, error);
  if (priv == NULL)
    return NULL;
  if (!memory_intact(vring, error)) {
    vhu_elem_free(&priv->elem);
    return NULL;
  }
  priv->from_avail = TRUE;
  priv->avail_pos = vring->last_avail_idx;
  vring->last_avail_idx++;
  vring->inuse++;
  vhu_vring_inflight_mark(vring, head);
  /* Tell the guest how far we read, so it kicks for the next one only. */
  if (vring->notify_enabled && has_feature(vring, VIRTIO_RING_F_EVENT_IDX)) {
    GUEST_STORE((guint16 *)&vring->used->ring[vring->num], vring->last_avail_idx);
    vring->event_unfenced = TRUE;
  }
  return &priv->elem;
}

static gboolean
is_current(const VhuVring *vring, const VhuElem *elem)
{
  return elem->generation == vring->generation && vring->started && !vring->broken
         && is_mapped(vring);
}

/* Rewinds over out-of-order unpops that became the most recent pop. */
static void
rewind_resubmits(VhuVring *vring)
{
  gboolean again = TRUE;

  while (again) {
    again = FALSE;
    for (guint i = 0; i < vring->resubmit->len; i++) {
      VhuResubmit *r = &g_array_index(vring->resubmit, VhuResubmit, i);

      if (r->from_avail && r->avail_pos == (guint16)(vring->last_avail_idx - 1)) {
        vhu_vring_inflight_clear(vring, r->head);
        vring->last_avail_idx--;
        g_array_remove_index(vring->resubmit, i);
        again = TRUE;
        break;
      }
    }
  }
}

static void
unpop_locked(VhuVring *vring, VhuElem *elem)
{
  VhuElemPriv *priv = (VhuElemPriv *)elem;

  if (elem == NULL)
    return;
  if (is_current(vring, elem)) {
    vring->inuse--;
    if (priv->from_avail && priv->avail_pos == (guint16)(vring->last_avail_idx - 1)) {
      vhu_vring_inflight_clear(vring, elem->head);
      vring->last_avail_idx--;
      rewind_resubmits(vring);
    } else {
      VhuResubmit r = {
        .head = elem->head,
        .from_avail = priv->from_avail,
        .avail_pos = priv->avail_pos,
      };

      g_array_prepend_val(vring->resubmit, r);
    }
  }
  vhu_elem_free(elem);
}

/* ---- push / notify ----------------------------------------------------- */

static void
push_locked(VhuVring *vring, VhuElem *elem, guint32 len)
{
  volatile VhuInflightQueue *q = vring->inflight;
  struct vring_used_elem *slot;
  guint16 head;

  if (elem == NULL)
    return;
  if (!is_current(vring, elem)) {
    vhu_elem_free(elem);
    return;
  }
  head = elem->head;
  /* Never claim more than the guest offered. */
  if (len > elem->in_len)
    len = (guint32)elem->in_len;
  if (q != NULL)
    q->last_batch_head = head;
  slot = &vring->used->ring[vring->last_used_idx & (vring->num - 1)];
  GUEST_STORE(&slot->id, head);
  GUEST_STORE(&slot->len, len);
  vring->last_used_idx++;
  __atomic_store_n(&vring->used->idx, vring->last_used_idx, __ATOMIC_RELEASE);
  if (q != NULL) {
    q->desc[head].inflight = 0;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    q->used_idx = vring->last_used_idx;
  }
  vring->inuse--;
  vhu_elem_free(elem);
  memory_intact(vring, NULL);
}

static gboolean
ring_is_empty(const VhuVring *vring)
{
  return vring->resubmit->len == 0
         && __atomic_load_n(&vring->avail->idx, __ATOMIC_ACQUIRE) == vring->last_avail_idx;
}

static gboolean
guest_wants_interrupt(VhuVring *vring)
{
  guint16 old, used_event;
  gboolean valid;

  if (has_feature(vring, VHU_F_NOTIFY_ON_EMPTY) && vring->inuse == 0 && ring_is_empty(vring))
    return TRUE;
  if (!has_feature(vring, VIRTIO_RING_F_EVENT_IDX))
    return !(GUEST_LOAD(&vring->avail->flags) & VRING_AVAIL_F_NO_INTERRUPT);
  valid = vring->signalled_used_valid;
  old = vring->signalled_used;
  vring->signalled_used = vring->last_used_idx;
  vring->signalled_used_valid = TRUE;
  used_event = GUEST_LOAD(&vring->avail->ring[vring->num]);
  return !valid || vring_need_event(used_event, vring->last_used_idx, old);
}

static gboolean
notify_locked(VhuVring *vring)
{
  if (!vring->started || vring->broken || !is_mapped(vring))
    return FALSE;
  if (vring->call_fd < 0) {
    /* Nobody to tell yet: signalled_used stays, and the call fd installed
     * later is signalled at once (set_call_fd_locked). */
    if (!vring->signalled_used_valid || vring->signalled_used != vring->last_used_idx)
      vring->missed_notify = TRUE;
    return FALSE;
  }
  /* Publish the used entries before reading what the guest asks for. */
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (!guest_wants_interrupt(vring))
    return FALSE;
  signal_fd(vring->call_fd);
  return TRUE;
}

static gboolean
set_notification_locked(VhuVring *vring, gboolean enable)
{
  vring->notify_enabled = enable;
  if (!vring->started || vring->broken || !is_mapped(vring))
    return FALSE;
  if (has_feature(vring, VIRTIO_RING_F_EVENT_IDX)) {
    /* Disabled: avail_event simply stops advancing. */
    if (enable)
      GUEST_STORE((guint16 *)&vring->used->ring[vring->num], vring->last_avail_idx);
  } else {
    if (enable)
      vring->used_flags &= ~VRING_USED_F_NO_NOTIFY;
    else
      vring->used_flags |= VRING_USED_F_NO_NOTIFY;
    GUEST_STORE(&vring->used->flags, vring->used_flags);
  }
  if (!enable)
    return FALSE;
  /* The guest may have added a request before it saw the change. */
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  vring->event_unfenced = FALSE;
  return !ring_is_empty(vring);
}

/* ---- public entry points: each takes the ring lock ------------------- */

gboolean
vhu_vring_set_num(VhuVring *vring, guint num, GError **error)
{
  gboolean ret;

  g_mutex_lock(&vring->lock);
  ret = set_num_locked(vring, num, error);
  g_mutex_unlock(&vring->lock);
  return ret;
}

gboolean
vhu_vring_set_addr(VhuVring *vring, const VhuVringAddr *addr, GError **error)
{
  gboolean ret;

  g_mutex_lock(&vring->lock);
  ret = set_addr_locked(vring, addr, error);
  g_mutex_unlock(&vring->lock);
  return ret;
}

gboolean
vhu_vring_set_base(VhuVring *vring, guint num, GError **error)
{
  gboolean ret;

  g_mutex_lock(&vring->lock);
  ret = set_base_locked(vring, num, error);
  g_mutex_unlock(&vring->lock);
  return ret;
}

void
vhu_vring_set_features(VhuVring *vring, guint64 features)
{
  g_mutex_lock(&vring->lock);
  set_features_locked(vring, features);
  g_mutex_unlock(&vring->lock);
}

gboolean
vhu_vring_set_mem(VhuVring *vring, VhuMemTable *mem, GError **error)
{
  gboolean ret;

  g_mutex_lock(&vring->lock);
  ret = set_mem_locked(vring, mem, error);
  g_mutex_unlock(&vring->lock);
  return ret;
}

void
vhu_vring_set_call_fd(VhuVring *vring, int fd)
{
  g_mutex_lock(&vring->lock);
  set_call_fd_locked(vring, fd);
  g_mutex_unlock(&vring->lock);
}

void
vhu_vring_set_err_fd(VhuVring *vring, int fd)
{
  g_mutex_lock(&vring->lock);
  set_err_fd_locked(vring, fd);
  g_mutex_unlock(&vring->lock);
}

void
vhu_vring_set_enabled(VhuVring *vring, gboolean enabled)
{
  g_mutex_lock(&vring->lock);
  set_enabled_locked(vring, enabled);
  g_mutex_unlock(&vring->lock);
}

void
vhu_vring_signal_error(VhuVring *vring)
{
  g_mutex_lock(&vring->lock);
  signal_error_locked(vring);
  g_mutex_unlock(&vring->lock);
}

gboolean
vhu_vring_set_inflight(VhuVring *vring, void *region, gsize size, GError **error)
{
  gboolean ret;

  g_mutex_lock(&vring->lock);
  ret = vhu_vring_set_inflight_locked(vring, region, size, error);
  g_mutex_unlock(&vring->lock);
  return ret;
}

gboolean
vhu_vring_start(VhuVring *vring, GError **error)
{
  gboolean ret;

  g_mutex_lock(&vring->lock);
  ret = start_locked(vring, error);
  unlock_and_report(vring);
  return ret;
}

void
vhu_vring_stop(VhuVring *vring)
{
  g_mutex_lock(&vring->lock);
  stop_locked(vring);
  g_mutex_unlock(&vring->lock);
}

void
vhu_vring_reset(VhuVring *vring)
{
  g_mutex_lock(&vring->lock);
  reset_locked(vring);
  g_mutex_unlock(&vring->lock);
}

VhuElem *
vhu_vring_pop(VhuVring *vring, GError **error)
{
  VhuElem *ret;

  g_mutex_lock(&vring->lock);
  ret = pop_locked(vring, error);
  unlock_and_report(vring);
  return ret;
}

void
vhu_vring_unpop(VhuVring *vring, VhuElem *elem)
{
  g_mutex_lock(&vring->lock);
  unpop_locked(vring, elem);
  unlock_and_report(vring);
}

void
vhu_vring_push(VhuVring *vring, VhuElem *elem, guint32 len)
{
  g_mutex_lock(&vring->lock);
  push_locked(vring, elem, len);
  unlock_and_report(vring);
}

gboolean
vhu_vring_notify(VhuVring *vring)
{
  gboolean ret;

  g_mutex_lock(&vring->lock);
  ret = notify_locked(vring);
  unlock_and_report(vring);
  return ret;
}

gboolean
vhu_vring_set_notification(VhuVring *vring, gboolean enable)
{
  gboolean ret;

  g_mutex_lock(&vring->lock);
  ret = set_notification_locked(vring, enable);
  unlock_and_report(vring);
  return ret;
}

void
vhu_vring_complete(VhuVring *vring, VhuElem *elem, guint32 len)
{
  g_mutex_lock(&vring->lock);
  push_locked(vring, elem, len);
  notify_locked(vring);
  unlock_and_report(vring);
}

char *
vhu_vring_dup_broken_reason(const VhuVring *vring)
{
  VhuVring *v = (VhuVring *)vring;
  char *reason;

  g_mutex_lock(&v->lock);
  reason = v->broken ? g_strdup(v->broken_reason) : NULL;
  g_mutex_unlock(&v->lock);
  return reason;
}
