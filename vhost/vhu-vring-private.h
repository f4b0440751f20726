/* vhu-vring-private.h: how the backend drives a VhuVring (not for devices). */
#pragma once

#include "vhu-vring.h"

G_BEGIN_DECLS

VhuVring *vhu_vring_new(guint index);
void vhu_vring_free(VhuVring *vring);

/* Each setter validates its input and returns FALSE with a GError (domain
 * G_IO_ERROR, code G_IO_ERROR_INVALID_ARGUMENT) on bad values. */
gboolean vhu_vring_set_num(VhuVring *vring, guint num, GError **error); /* power of 2, 1..1024 */
gboolean vhu_vring_set_addr(VhuVring *vring, const VhuVringAddr *addr, GError **error);
gboolean vhu_vring_set_base(VhuVring *vring, guint num, GError **error);
guint16 vhu_vring_get_base(const VhuVring *vring); /* last_avail_idx, minus unpopped inflight */
void vhu_vring_set_features(VhuVring *vring, guint64 features); /* EVENT_IDX, INDIRECT_DESC */
/* Translates the ring addresses through @mem (uva).  Called again after every
 * memory table change; on failure the ring cannot start. */
gboolean vhu_vring_set_mem(VhuVring *vring, VhuMemTable *mem, GError **error);
/* Takes ownership of @fd (-1 for none), which the caller made non-blocking.
 * A new call fd is signalled at once when the guest missed an interrupt
 * while none was set. */
void vhu_vring_set_call_fd(VhuVring *vring, int fd);
void vhu_vring_set_err_fd(VhuVring *vring, int fd);
/* Starts processing: needs num, addr and a memory table that maps the rings.
 * The kick fd itself is owned by the backend's watch. */
gboolean vhu_vring_start(VhuVring *vring, GError **error);
/* Stops: later pushes of elements popped earlier are dropped. */
void vhu_vring_stop(VhuVring *vring);
void vhu_vring_set_enabled(VhuVring *vring, gboolean enabled);
/* Back to the state of vhu_vring_new (closes call/err fds, forgets inflight). */
void vhu_vring_reset(VhuVring *vring);
/* Signals the error eventfd, if any. */
void vhu_vring_signal_error(VhuVring *vring);
/* Why the ring broke (e.g. "descriptor 5 chains to 300, beyond ring size
 * 256"), without the queue index; NULL while it is not broken.  Free it. */
char *vhu_vring_dup_broken_reason(const VhuVring *vring);
/* Called once each time a pop or push breaks the ring, on that caller's
 * thread, after the ring lock was released; @reason as above. */
typedef void (*VhuVringBrokenFunc)(gpointer data, VhuVring *vring, const char *reason);
void vhu_vring_set_broken_func(VhuVring *vring, VhuVringBrokenFunc func, gpointer data);
/* FALSE (with @error) when the ring is started and @mem does not map it: a
 * memory table that may not replace the current one. */
gboolean vhu_vring_check_mem(VhuVring *vring, const VhuMemTable *mem, GError **error);
/* While held, pops return NULL and pushes still land: around a start (until
 * the device knows about it) and a stop (so a device can complete what it
 * holds before vhu_vring_stop).  Stop and reset release the hold. */
void vhu_vring_hold_pops(VhuVring *vring, gboolean hold);

/* Inflight tracking (INFLIGHT_SHMFD): @region is the queue's part of the
 * shared buffer, @size its length.  On start, requests recorded as inflight
 * are resubmitted first, in their original order. */
gsize vhu_vring_inflight_region_size(guint queue_size);
gboolean vhu_vring_set_inflight(VhuVring *vring, void *region, gsize size, GError **error);

G_END_DECLS
