/* vgpu-qemu-display.h: the backend end of QEMU's vhost-user-gpu display
 * socket (GPU_SET_SOCKET), as a display sink of a VgpuDevice.
 *
 * QEMU sends a new socket on every device start (guest boot or reboot, VM
 * resume); set_socket() replaces the previous connection, and replay() sends
 * the current scanouts and cursors on it once the caller knows the guest
 * state survived (a resume, not a reboot).  The protocol features are
 * negotiated on each connection (EDID and DMABUF2 when QEMU offers them; QEMU
 * 7.2 offers none).
 *
 * Threads: messages are written by a writer thread per connection, straight
 * from the resource images when they are already X8R8G8B8 (no copy but the
 * kernel's), converted in bounded chunks otherwise; the device lock is never
 * held while writing, so a display that reads slowly cannot block the
 * vhost-user control path.  Replies (GET_PROTOCOL_FEATURES, GET_DISPLAY_INFO,
 * GET_EDID) are read on @context and matched to their requests; each query is
 * answered when the reply comes, after reply_timeout_ms, or when the
 * connection goes, whichever is first.  A connection that accepts no byte for
 * write_timeout_ms, or lets more than a bounded number of messages pile up,
 * is dropped.
 *
 * Locking: every function but new/free must be called with the device lock
 * held (the same lock @lock/@unlock take, which the client takes itself in
 * its callbacks on @context). */
#pragma once

#include <glib.h>

#include "vgpu-device.h"

G_BEGIN_DECLS

typedef struct _VgpuQemuDisplay VgpuQemuDisplay;

typedef struct {
  GMainContext *context; /* replies and timeouts */
  void (*lock)(gpointer data);
  void (*unlock)(gpointer data);
  gpointer lock_data;
  guint reply_timeout_ms; /* 0: 1000 */
  guint write_timeout_ms; /* 0: 5000 */
} VgpuQemuDisplayOptions;

typedef struct {
  guint64 connections;       /* sockets accepted */
  guint64 messages;          /* messages written */
  guint64 updates;           /* UPDATE messages written */
  guint64 update_bytes;      /* pixel bytes written */
  guint64 coalesced;         /* updates merged into a queued one */
  guint64 replies;           /* replies matched to a request */
  guint64 timeouts;          /* requests that got no reply in time */
  guint64 dropped;           /* connections dropped for an error or stall */
  guint64 protocol_features; /* negotiated on the current connection */
  gboolean connected;
} VgpuQemuDisplayStats;

/* Attaches a new client to @dev as a sink.  Device lock held. */
VgpuQemuDisplay *vgpu_qemu_display_new(VgpuDevice *dev, const VgpuQemuDisplayOptions *options);
/* Closes the connection and detaches from the device.  Call when no other
 * thread uses the device any more (the lock is not taken). */
void vgpu_qemu_display_free(VgpuQemuDisplay *qd);

/* Takes ownership of @fd, a connected stream socket, replacing the current
 * connection.  FALSE (fd closed) if @fd is not a socket. */
gboolean vgpu_qemu_display_set_socket(VgpuQemuDisplay *qd, int fd, GError **error);
/* Sends every enabled scanout (SCANOUT + a full UPDATE from its image, with
 * pending transfers copied in) and cursor on the current connection: QEMU
 * shows nothing of a scanout until it gets them. */
void vgpu_qemu_display_replay(VgpuQemuDisplay *qd);
/* Drops the current connection, if any. */
void vgpu_qemu_display_close(VgpuQemuDisplay *qd);
void vgpu_qemu_display_get_stats(VgpuQemuDisplay *qd, VgpuQemuDisplayStats *stats);

G_END_DECLS
