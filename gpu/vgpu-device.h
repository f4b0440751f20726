/* vgpu-device.h: the virtio-gpu 2D device model.
 *
 * Turns control-queue and cursor-queue requests into state changes and calls
 * to the attached display sinks (vgpu-sink.h).
 *
 * TRANSFER_TO_HOST_2D is deferred: the rectangle is recorded as pending and
 * its pixels stay in the guest's backing until something needs them in the
 * resource's image (see docs/gpu-backend.md); a flush of pending pixels is
 * read by the sinks straight from guest memory.  What a display shows there
 * is the backing as of when it is read, not as of the transfer.  Knows nothing of rings,
 * sockets or GStreamer: the caller pops requests and hands them in with
 * vgpu_device_submit(); the device writes the response into the request's
 * writable buffers and gives the element back through ops->complete, at
 * once or later.
 *
 * Not thread-safe: the caller serialises every call (VgpuVhost holds its
 * device lock, vgpu_vhost_lock()).  ops->wake may be called from any thread.
 *
 * Completion order: a request without VIRTIO_GPU_FLAG_FENCE completes as soon
 * as it is done.  GET_DISPLAY_INFO and GET_EDID may be answered by a sink
 * asynchronously; later requests keep being processed meanwhile.  A fenced
 * request is processed at once but completes only after every request before
 * it has completed, so fences retire in order and signal that all earlier
 * work is done (what guests assume).
 *
 * Errors answered to the guest:
 *   INVALID_RESOURCE_ID  id 0, unknown id, id already in use on create
 *   INVALID_SCANOUT_ID   scanout id >= number of scanouts
 *   INVALID_PARAMETER    bad format or size, rectangle or offset outside the
 *                        resource or its backing, malformed backing entries
 *                        (too many, unmapped, truncated), cursor not 64x64;
 *                        blobs: see vgpu-blob.h (and SET_SCANOUT of a blob
 *                        never given a geometry by SET_SCANOUT_BLOB)
 *   OUT_OF_MEMORY        host memory budget or resource count exhausted
 *   UNSPEC               short request, unknown or 3D command, transfer
 *                        without backing, backing attached twice, GET_EDID
 *                        without VIRTIO_GPU_F_EDID or RESOURCE_ASSIGN_UUID
 *                        without VIRTIO_GPU_F_RESOURCE_UUID negotiated, a
 *                        blob command without VIRTIO_GPU_F_RESOURCE_BLOB,
 *                        MAP/UNMAP_BLOB (nothing is mappable), DETACH_BACKING
 *                        of a blob
 *
 * Blobs (VIRTIO_GPU_BLOB_MEM_GUEST): the entries are the blob's backing,
 * charged like ATTACH_BACKING's; TRANSFER_TO_HOST_2D on a blob is a no-op
 * (OK).  SET_SCANOUT_BLOB gives the blob an image of its geometry (stride /
 * 4 pixels wide, charged like a 2D resource's, a sparse memfd) into which
 * its pixels are copied only for sinks that need an image; sinks reading
 * guest memory see its rows as a pending transfer, and scanout_blob() tells
 * them the blob's pages can be shown as they are.  One geometry per blob:
 * SET_SCANOUT_BLOB with another one disables the other scanouts showing it.
 * Each kind of guest error is logged once, then at most once a minute with a
 * count of the suppressed ones.
 *
 * Host memory budget (max_hostmem): everything the guest makes the device
 * keep is charged before it is allocated and credited when it is freed:
 *   - a resource: its image, page rounded (vgpu_image_size_for), plus
 *     VGPU_RESOURCE_OVERHEAD for its records;
 *   - a backing: vgpu_backing_charge_for(pieces), 24 bytes per host piece
 *     (entries adjacent in host memory merge into one piece), and, while
 *     ATTACH_BACKING runs, 16 bytes per entry for the copy of the entries;
 *   - a request held back (a display query, a fence behind one): its record,
 *     the element and its iovecs, about 1.3 KiB.
 * Images and backings a sink still reads stay charged until it lets go.  A
 * resource or backing beyond the budget is refused with OUT_OF_MEMORY; a
 * request that cannot be held is answered at once instead (a display query
 * from the configuration, a fence after answering the queries before it
 * from the configuration), so order is kept.  Not charged: what is bounded
 * by constants (one cursor's pixels while it is converted, the response
 * being built).  The count of resources is limited separately. */
#pragma once

#include <glib.h>

#include "vgpu-sink.h"
#include "vhu-vring.h"

G_BEGIN_DECLS

#define VGPU_CTRL_QUEUE   0u
#define VGPU_CURSOR_QUEUE 1u
#define VGPU_NUM_QUEUES   2u

#define VGPU_MAX_SCANOUTS          16u
#define VGPU_MAX_BACKING_ENTRIES   16384u
#define VGPU_DEFAULT_WIDTH         1280u
#define VGPU_DEFAULT_HEIGHT        800u
#define VGPU_DEFAULT_MAX_HOSTMEM   (256u * 1024u * 1024u)
#define VGPU_DEFAULT_MAX_RESOURCES 4096u
/* Bytes charged per resource besides its image: the device's and the
 * image's records and the id table's share. */
#define VGPU_RESOURCE_OVERHEAD 256u

/* Virtio feature bits the device offers: EDID and RESOURCE_UUID. */
#define VGPU_DEVICE_FEATURES ((1ull << VIRTIO_GPU_F_EDID) | (1ull << VIRTIO_GPU_F_RESOURCE_UUID))

typedef struct _VgpuDevice VgpuDevice;

typedef struct {
  guint num_scanouts;    /* 1..16 */
  guint32 width, height; /* mode reported for every scanout */
  guint64 max_hostmem;   /* bytes of host memory the guest may make us keep (see above) */
  guint max_resources;   /* 0: VGPU_DEFAULT_MAX_RESOURCES */
  gboolean blob;         /* offer VIRTIO_GPU_F_RESOURCE_BLOB (read by the vhost glue) */
} VgpuDeviceConfig;

typedef struct {
  /* @elem is done, @len bytes written into its writable part.  The device
   * no longer touches it. */
  void (*complete)(gpointer data, guint qidx, VhuElem *elem, guint32 len);
  /* @elem is dropped without an answer (reset). */
  void (*discard)(gpointer data, guint qidx, VhuElem *elem);
  /* A request refused by vgpu_device_submit() can now be retried.  Any
   * thread, possibly with a sink's internal locks held: only schedule. */
  void (*wake)(gpointer data);
} VgpuDeviceOps;

typedef struct {
  guint64 commands;     /* control + cursor requests handled */
  guint64 errors;       /* requests answered with an error */
  guint64 fences;       /* fenced requests completed */
  guint32 resources;    /* live resources */
  guint64 hostmem_used; /* bytes charged */
  guint64 stalls;       /* submits refused because a sink was reading */
  guint64 display_queries, display_query_fallbacks;
  guint64 transfers_deferred; /* transfers left in guest memory until needed */
  guint64 materializations;   /* pending transfers copied into images */
  guint64 guest_updates;      /* flushes sinks read straight from guest memory */
} VgpuDeviceStats;

/* A command set beyond 2D (3D: vgpu-virgl.h), plugged into the device. */
#define VGPU_EXT_PASS 0u /* not a response type: the 2D model handles the command */
typedef struct {
  guint32 num_capsets; /* reported in the config space */
  /* Sees every control request first (whole header in @hdr), with whatever
   * serialises the device held.  Returns VGPU_EXT_PASS to leave it to the
   * 2D model, or the response type.  A payload after the header is written
   * by the extension into @elem at offset sizeof *hdr, its size in
   * *payload_len; the device writes the header and completes the request in
   * its completion order.  Setting *hold means it is not done yet: the
   * device holds it and calls hold() with the handle the extension finishes
   * it with (vgpu_device_query_done(dev, query, NULL, 0), exactly once), or
   * with NULL when it could not be held and was answered at once. */
  guint32 (*command)(gpointer data, VhuElem *elem, const struct virtio_gpu_ctrl_hdr *hdr,
                     gsize *payload_len, gboolean *hold);
  void (*hold)(gpointer data, VgpuQuery *query);
  /* The device was reset: every context and resource of the extension goes. */
  void (*reset)(gpointer data);
} VgpuDeviceExt;

/* Checks @config; fills @error with a message for the user. */
gboolean vgpu_device_config_validate(const VgpuDeviceConfig *config, GError **error);
VgpuDevice *vgpu_device_new(const VgpuDeviceConfig *config, const VgpuDeviceOps *ops,
                            gpointer data);
/* Discards every held request (ops->discard); sinks must be removed first. */
void vgpu_device_free(VgpuDevice *dev);

/* Attaches @sink (caller holds the device's lock).  Scanouts already set are
 * replayed to it at once: set_scanout (scanout_blob for a blob) and an update
 * of the whole current picture, so a sink attached after the guest set its
 * mode shows it without waiting for the next flush. */
void vgpu_device_add_sink(VgpuDevice *dev, const VgpuSinkIface *iface, gpointer sink);
void vgpu_device_remove_sink(VgpuDevice *dev, gpointer sink);

/* The virtio features the driver acknowledged (none after new and reset):
 * GET_EDID and RESOURCE_ASSIGN_UUID are answered only with theirs. */
void vgpu_device_set_features(VgpuDevice *dev, guint64 features);
guint64 vgpu_device_get_features(VgpuDevice *dev);
/* struct virtio_gpu_config; @size bytes from offset 0 (at most 16). */
void vgpu_device_get_config(VgpuDevice *dev, guint8 *config, gsize size);
void vgpu_device_set_config(VgpuDevice *dev, guint32 offset, const guint8 *data, gsize size);

/* Takes @elem popped from queue @qidx.  Returns FALSE without taking it when
 * it must wait for a sink to stop reading (a transfer into a resource whose
 * image or guest memory a sink still reads, a flush that must copy into an
 * image a sink reads, a detach or unref of guest memory a sink reads): the
 * caller puts it back and submits it again after ops->wake. */
gboolean vgpu_device_submit(VgpuDevice *dev, guint qidx, VhuElem *elem);
/* Answers every request waiting on a sink now, from the configuration (the
 * queues are about to stop). */
void vgpu_device_flush(VgpuDevice *dev);
/* Drops all resources, scanouts, cursors and held requests (ops->discard):
 * the guest reset the device or the frontend left. */
void vgpu_device_reset(VgpuDevice *dev);

/* For sinks: the answer to a query.  @reply is a struct
 * virtio_gpu_resp_display_info or virtio_gpu_resp_edid as the display sent
 * it (size checked here), or NULL on failure/timeout. */
void vgpu_device_query_done(VgpuDevice *dev, VgpuQuery *query, const void *reply, gsize size);

/* Plugs @ext in (NULL: none), before the first request. */
void vgpu_device_set_ext(VgpuDevice *dev, const VgpuDeviceExt *ext, gpointer data);
/* TRUE when the 2D model has resource @id (ids are shared with the extension). */
gboolean vgpu_device_has_resource(VgpuDevice *dev, guint32 id);
/* For the extension: scanout @id shows @rect of @image, which the extension
 * keeps for its resource @resource_id (@image NULL: disabled); a SET_SCANOUT
 * of another resource replaces it.  Then @rect (image coordinates) of it
 * changed: the sinks get the part on the scanout (all of it first). */
void vgpu_device_ext_set_scanout(VgpuDevice *dev, guint id, guint32 resource_id, VgpuImage *image,
                                 const VgpuRect *rect);
void vgpu_device_ext_flush(VgpuDevice *dev, guint id, const VgpuRect *rect);

void vgpu_device_get_stats(VgpuDevice *dev, VgpuDeviceStats *stats);
VgpuHostmem *vgpu_device_get_hostmem(VgpuDevice *dev);
/* The image of resource @resource_id, or NULL (no reference taken).  A
 * pending transfer is copied into it first, unless a sink still reads it. */
VgpuImage *vgpu_device_get_resource_image(VgpuDevice *dev, guint32 resource_id);
/* Copies every pending transfer into its image (images a sink still reads
 * are left as they are): for readers of the images outside update(), such
 * as a replay to a new display connection. */
void vgpu_device_sync_images(VgpuDevice *dev);

G_END_DECLS
