/* vgpu-sink.h: what a display attached to the device model sees.
 *
 * The device calls every attached sink, in attach order, from whatever
 * thread drives it and under the lock that serialises it (for the daemon:
 * the device lock vgpu_vhost_lock, on the queue thread or the control
 * thread).  Sinks must not block: a sink that reads pixels after returning (a socket writer, a
 * GStreamer pipeline) takes a reference and brackets the reading with
 * vgpu_image_begin_read/end_read (vgpu_backing_* for update_guest); the
 * device then holds back writes into that image, further transfers into the
 * resource, and giving the guest memory back, until the reading ends, so the
 * sink must end it promptly. */
#pragma once

#include <glib.h>
#include <linux/virtio_gpu.h>

#include "vgpu-backing.h"
#include "vgpu-format.h"
#include "vgpu-image.h"

G_BEGIN_DECLS

#define VGPU_CURSOR_SIZE 64u

typedef struct _VgpuQuery VgpuQuery;

typedef struct {
  /* Scanout @id now shows @rect of @image (@image NULL: disabled).  Content
   * follows with update(). */
  void (*set_scanout)(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect);
  /* @rect of @image (image coordinates) changed; it appears at (@dst_x,
   * @dst_y) of scanout @id. */
  void (*update)(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect, guint32 dst_x,
                 guint32 dst_y);
  /* New 64x64 cursor image (A8R8G8B8 in pixman terms, i.e. native-endian
   * ARGB words) with hot spot, shown at (@x, @y). */
  void (*cursor_update)(gpointer sink, guint id, const guint32 *pixels, guint32 hot_x,
                        guint32 hot_y, guint32 x, guint32 y);
  void (*cursor_move)(gpointer sink, guint id, guint32 x, guint32 y, gboolean visible);

  /* Optional: ask the display for its modes / EDID.  Return FALSE when it
   * cannot answer (the device then answers from its configuration).  When it
   * returns TRUE it must later call vgpu_device_query_done() exactly once for
   * @query, under the device's lock, on success, failure, timeout or when the
   * sink goes away; never from inside this call. */
  gboolean (*query_display_info)(gpointer sink, VgpuQuery *query);
  gboolean (*query_edid)(gpointer sink, guint id, VgpuQuery *query);

  /* Optional: like update(), but the pixels are in guest memory: row h of
   * @rect is at @offset + h * image->stride of @backing, in image->format
   * (@image is for its format and size; its pixels there are stale).  A
   * sink that reads after returning takes a reference on @backing and
   * brackets the reading with vgpu_backing_begin_read/end_read.  The guest
   * may write that memory meanwhile: the sink shows what it reads.
   * Sinks without update_guest get update() with the pixels copied into the
   * image first: that is how a sink asks for materialised images (e.g. to
   * pass the image memfd downstream).  Flushes go through update() whenever
   * any attached sink lacks update_guest. */
  void (*update_guest)(gpointer sink, guint id, VgpuImage *image, VgpuBacking *backing,
                       guint64 offset, const VgpuRect *rect, guint32 dst_x, guint32 dst_y);

  /* Optional: the scanout set_scanout() just gave @id is a guest-memory
   * blob (vgpu-blob.h): its pixel (x, y) lies at @offset + y * @stride +
   * x * 4 of @backing for as long as the scanout stays set, in the image's
   * format.  update()/update_guest() then only say what changed; a sink may
   * show the blob's pages themselves (scan-out: what the guest writes there
   * shows through).  Such a sink takes a reference on @backing, which keeps
   * the pages mapped, but no read mark: the device never waits for it, and
   * the guest may reuse the pages once it unrefs the resource. */
  void (*scanout_blob)(gpointer sink, guint id, VgpuBacking *backing, guint64 offset,
                       guint32 stride);
} VgpuSinkIface;

G_END_DECLS
