/* vhu-vring.h: device side of a split virtqueue.
 *
 * Thread-safe: each ring has its own mutex, taken inside every call and
 * never held while calling out, so one thread may pop while others complete.
 * Writes to the call and error eventfds are non-blocking: a saturated one
 * loses the notification, never the request.  A ring that the guest corrupts
 * (descriptor loop, address outside memory, avail index jump, bad indirect
 * table, chain longer than the ring) becomes broken: pop returns an error
 * once, the backend logs it once, sets NEEDS_RESET and tells the frontend,
 * and the ring does nothing until it is restarted. */
#pragma once

#include <glib.h>
#include <sys/uio.h>

#include "vhu-mem.h"

G_BEGIN_DECLS

typedef struct _VhuVring VhuVring;

#define VHU_VRING_ERROR (vhu_vring_error_quark())
GQuark vhu_vring_error_quark(void);
typedef enum {
  VHU_VRING_ERROR_BROKEN, /* the guest corrupted the ring */
} VhuVringError;

/* One request: the descriptor chain of @head gathered into iovecs.
 * out_sg are device-readable (driver -> device) buffers, in_sg device-writable.
 * Holds a reference on the memory table the iovecs point into. */
typedef struct {
  guint16 head;
  guint out_num;
  guint in_num;
  struct iovec *out_sg;
  struct iovec *in_sg;
  gsize out_len; /* total bytes of out_sg */
  gsize in_len;  /* total bytes of in_sg */
  /* private */
  VhuMemTable *mem;
  guint64 generation;
} VhuElem;

void vhu_elem_free(VhuElem *elem);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VhuElem, vhu_elem_free)
/* Copy out of the readable part / into the writable part at @offset. */
gsize vhu_elem_read(const VhuElem *elem, gsize offset, void *buf, gsize len);
gsize vhu_elem_write(const VhuElem *elem, gsize offset, const void *buf, gsize len);

guint vhu_vring_index(const VhuVring *vring);
guint vhu_vring_size(const VhuVring *vring);
gboolean vhu_vring_is_started(const VhuVring *vring);
gboolean vhu_vring_is_enabled(const VhuVring *vring);
gboolean vhu_vring_is_broken(const VhuVring *vring);
/* The index of the next request to pop (SET_VRING_BASE's value right after a
 * start).  A device can tell a driver that re-initialised its rings (base 0
 * at start: guest reboot, driver rebind) from a VM that resumes (the base it
 * had); also declared in vhu-vring-private.h. */
guint16 vhu_vring_get_base(const VhuVring *vring);

/* Next available request; NULL with no error when the ring is empty (or not
 * started/enabled), NULL with VHU_VRING_ERROR_BROKEN when the guest broke it. */
VhuElem *vhu_vring_pop(VhuVring *vring, GError **error);
/* Puts @elem back so the next pop returns it again (no used entry written). */
void vhu_vring_unpop(VhuVring *vring, VhuElem *elem);
/* Completes @elem with @len bytes written and frees it.  An element popped
 * before the ring was stopped or reset is freed without touching the ring. */
void vhu_vring_push(VhuVring *vring, VhuElem *elem, guint32 len);
/* Signals the call eventfd if the guest wants an interrupt (EVENT_IDX,
 * NO_INTERRUPT, NOTIFY_ON_EMPTY honoured).  Returns TRUE if it signalled.
 * Without a call fd nothing is signalled, and the next call fd installed is
 * signalled at once. */
gboolean vhu_vring_notify(VhuVring *vring);
/* Convenience: push then notify. */
void vhu_vring_complete(VhuVring *vring, VhuElem *elem, guint32 len);
/* Ask the guest not to kick (FALSE) or to kick again (TRUE) while polling.
 * Re-enabling returns TRUE if requests arrived meanwhile (poll again). */
gboolean vhu_vring_set_notification(VhuVring *vring, gboolean enable);

G_END_DECLS
