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
 * Threads: messages are written by a writer thread per connection, without
 * the device lock and never blocking (MSG_DONTWAIT, poll): a display that
 * reads slowly or not at all cannot stall the device, the vhost-user control
 * path or the guest.  Replies (GET_PROTOCOL_FEATURES, GET_DISPLAY_INFO,
 * GET_EDID) are read on @context, a bounded number of reads per dispatch,
 * and matched to their requests; each query is answered when the reply
 * comes, after reply_timeout_ms, or when the connection goes, whichever is
 * first.
 *
 * Backpressure: a flush that finds the writer idle is sent from where its
 * pixels are (the resource image, or guest memory), holding a read mark on
 * that image or backing while it is written.  A flush that comes while the
 * writer is busy becomes damage of its scanout: later flushes merge into it
 * (one rectangle per scanout) and the writer reads the pixels as they are
 * when it gets there (pending transfers copied into the image first).  When
 * the display takes nothing for write_timeout_ms while a message still reads
 * a resource, the rest of that message is copied into a buffer of its own
 * and the mark ends.  So a resource is kept from the guest (transfers into
 * it, DETACH_BACKING, UNREF wait) at most that long per message, guest
 * memory is never left in the socket (it is copied by sendmsg, not lent),
 * the memory held is at most one queued message per scanout and kind plus
 * the one being written, and a display that reads again gets the current
 * picture.  SCANOUT supersedes what is queued for its scanout, a cursor
 * image the queued cursor messages, a position the queued position.  Only a
 * display that closes its socket, fails a write or breaks the protocol is
 * dropped, never a slow one.
 *
 * Locking: every function but new/free/wait_writers must be called with the
 * device lock held (the same lock @lock/@unlock take, which the client takes
 * itself in its callbacks on @context and in the writer, briefly, to read
 * damaged pixels).  The lock must stay usable until vgpu_qemu_display_free()
 * returns. */
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
  guint write_timeout_ms; /* longest a message reads a resource while the display takes
                           * nothing, before its rest is copied; 0: 20 */
} VgpuQemuDisplayOptions;

typedef struct {
  guint64 connections;       /* sockets accepted */
  guint64 messages;          /* messages written */
  guint64 updates;           /* UPDATE messages written */
  guint64 update_bytes;      /* pixel bytes written */
  guint64 coalesced;         /* updates merged into the damage of their scanout */
  guint64 copied;            /* messages whose rest was copied: the display did not read */
  guint64 replies;           /* replies matched to a request */
  guint64 timeouts;          /* requests that got no reply in time */
  guint64 dropped;           /* connections dropped for an error */
  guint64 dmabuf_scanouts;   /* DMABUF_SCANOUT2 messages written (with their fd) */
  guint64 dmabuf_updates;    /* DMABUF_UPDATE messages written */
  guint64 protocol_features; /* negotiated on the current connection */
  gboolean connected;
} VgpuQemuDisplayStats;

/* Attaches a new client to @dev as a sink.  Device lock held. */
VgpuQemuDisplay *vgpu_qemu_display_new(VgpuDevice *dev, const VgpuQemuDisplayOptions *options);
/* Closes the connection (taking the lock), waits for the writer threads and
 * detaches from the device.  Call without the lock, when no other thread
 * uses the device any more. */
void vgpu_qemu_display_free(VgpuQemuDisplay *qd);

/* Takes ownership of @fd, a connected stream socket, replacing the current
 * connection.  FALSE (fd closed, the current connection kept) with
 * G_IO_ERROR_INVALID_ARGUMENT if @fd is not a socket, not a stream socket,
 * or a listening one. */
gboolean vgpu_qemu_display_set_socket(VgpuQemuDisplay *qd, int fd, GError **error);
/* Sends every enabled scanout (SCANOUT, then all of it as damage: read from
 * its image, pending transfers copied in, when the writer gets there) and
 * cursor on the current connection: QEMU shows nothing of a scanout until it
 * gets them. */
void vgpu_qemu_display_replay(VgpuQemuDisplay *qd);
/* Drops the current connection, if any, without waiting for its writer:
 * once this returns the display holds no read mark on the device's images
 * and backings any more (the writer finishes on its own). */
void vgpu_qemu_display_close(VgpuQemuDisplay *qd);
/* Waits, without the device lock, until the writers of closed connections
 * have exited. */
void vgpu_qemu_display_wait_writers(VgpuQemuDisplay *qd);
/* dmabuf scanouts (off by default): when on, a display that negotiated
 * DMABUF2 gets each scanout as a dmabuf where /dev/udmabuf exists: the
 * blob's guest pages (whole pages of sealed guest memory, rows from a page
 * boundary) or the resource image's memfd, sent once with DMABUF_SCANOUT2
 * (linear, the image's stride and DRM fourcc), then one DMABUF_UPDATE per
 * flush instead of pixels.  DMABUF_UPDATE waits for its reply (QEMU sends it
 * once its window shows the buffer): at most one is out per scanout, the
 * flushes meanwhile merge into the next one, and a reply that does not come
 * within reply_timeout_ms is given up on.  For a 2D resource the pending
 * transfers are copied into its image before each update, as for pixels.  A
 * scanout whose pages cannot be exported goes as pixels (said once).  Off
 * by default because QEMU offers DMABUF2 whatever its display: only a GL
 * display (gtk, sdl, egl-headless, spice or dbus with gl=on) shows dmabufs,
 * any other shows nothing.  Device lock held. */
void vgpu_qemu_display_set_dmabuf(VgpuQemuDisplay *qd, gboolean dmabuf);
void vgpu_qemu_display_get_stats(VgpuQemuDisplay *qd, VgpuQemuDisplayStats *stats);

G_END_DECLS
