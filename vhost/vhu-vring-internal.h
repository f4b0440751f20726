/* vhu-vring-internal.h: what the parts of VhuVring share (not for devices
 * or the backend): vhu-vring.c (state, start/stop, pop, push, notify and the
 * public entry points, which take the ring lock), vhu-vring-walk.c (walking
 * and checking a descriptor chain), vhu-vring-inflight.c (INFLIGHT_SHMFD).
 * Every function here is called with the ring lock held. */
#pragma once

#include <linux/virtio_ring.h>

#include "vhu-vring-private.h"

G_BEGIN_DECLS

#define VHU_INDIRECT_MAX 1024u
/* A chain of VHU_MAX_QUEUE_SIZE descriptors, some of which cross a region
 * boundary. */
#define VHU_ELEM_MAX_IOV (VHU_MAX_QUEUE_SIZE + 64u)

#define GUEST_LOAD(p)     __atomic_load_n((p), __ATOMIC_RELAXED)
#define GUEST_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

/* A descriptor after it was copied out of guest memory. */
typedef struct {
  guint64 addr;
  guint32 len;
  guint16 flags;
  guint16 next;
} VhuDesc;

/* A request to hand out again before new ones: unpopped out of order, or
 * recorded as inflight by a previous run. */
typedef struct {
  guint16 head;
  gboolean from_avail; /* popped from avail ring position avail_pos */
  guint16 avail_pos;
  guint64 counter;
} VhuResubmit;

typedef struct {
  VhuElem elem; /* first: a VhuElem pointer is a VhuElemPriv pointer */
  gboolean from_avail;
  guint16 avail_pos;
  struct iovec iov[];
} VhuElemPriv;

struct _VhuVring {
  GMutex lock; /* everything below; never held while calling out */
  guint index;
  guint num; /* 0 until set */
  guint64 features;
  gboolean has_addr;
  VhuVringAddr addr;
  VhuMemTable *mem;
  /* Host views of the rings; NULL while not mapped. */
  struct vring_desc *desc;
  struct vring_avail *avail;
  struct vring_used *used;

  guint16 last_avail_idx;
  guint16 last_used_idx;
  guint16 signalled_used;
  gboolean signalled_used_valid;
  guint16 used_flags;
  guint inuse; /* popped and neither pushed nor unpopped */

  gboolean started;
  gboolean pops_held; /* starting or stopping: pops return nothing, pushes land */
  gboolean enabled;
  gboolean broken;
  gboolean broke_now;     /* this call broke the ring: report once unlocked */
  gboolean missed_notify; /* the guest wanted an interrupt while no call fd was set */
  VhuVringBrokenFunc broken_func;
  gpointer broken_data;
  char *broken_reason; /* why, while broken */
  gboolean notify_enabled;
  gboolean event_unfenced; /* avail_event stored, no full fence since */
  guint64 generation;

  int call_fd;
  int err_fd;

  GArray *resubmit; /* of VhuResubmit, handed out from index 0 */

  volatile VhuInflightQueue *inflight;
  gsize inflight_size;
  guint64 inflight_counter;

  /* Scratch space, reused by every pop. */
  struct iovec *iov;
  struct vring_desc *indirect;
};

static inline gboolean
has_feature(const VhuVring *vring, guint bit)
{
  return (vring->features & (G_GUINT64_CONSTANT(1) << bit)) != 0;
}

/* vhu-vring-walk.c */
/* Marks the ring broken and keeps why (for the backend's log line); the
 * caller fails with @error, which says the same. */
void vhu_vring_break(VhuVring *vring, GError **error, const char *format, ...) G_GNUC_PRINTF(3, 4);
/* Walks the chain of @head (through at most one indirect table) into an
 * element.  NULL with the ring broken on any violation. */
VhuElemPriv *vhu_vring_gather_chain(VhuVring *vring, guint16 head, GError **error);

/* vhu-vring-inflight.c */
gboolean vhu_vring_set_inflight_locked(VhuVring *vring, void *region, gsize size, GError **error);
/* Brings the region in line with the used ring and queues the requests it
 * records as inflight, oldest first. */
gboolean vhu_vring_inflight_start(VhuVring *vring, GError **error);
void vhu_vring_inflight_mark(VhuVring *vring, guint16 head);
void vhu_vring_inflight_clear(VhuVring *vring, guint16 head);

G_END_DECLS
