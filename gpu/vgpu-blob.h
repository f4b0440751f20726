/* vgpu-blob.h: guest-memory blob resources (VIRTIO_GPU_F_RESOURCE_BLOB).
 *
 * The checks behind RESOURCE_CREATE_BLOB, SET_SCANOUT_BLOB and
 * RESOURCE_MAP_BLOB / RESOURCE_UNMAP_BLOB; the device model (vgpu-device.c)
 * applies their results to its resources and scanouts.
 *
 * Only VIRTIO_GPU_BLOB_MEM_GUEST is served: the blob's pixels are the
 * guest's pages given with RESOURCE_CREATE_BLOB (translated, checked and
 * charged exactly like ATTACH_BACKING's entries, into a VgpuBacking).  The
 * device offers no host-visible memory region (VIRTIO_GPU_SHM_ID_HOST_VISIBLE),
 * so nothing can be mapped: a blob asking for USE_MAPPABLE is refused at
 * creation, MAP_BLOB and UNMAP_BLOB of a known resource are answered
 * ERR_UNSPEC (INVALID_RESOURCE_ID for an unknown one).  HOST3D blobs need 3D
 * and are refused with INVALID_PARAMETER.
 *
 * Every function is pure (no state of its own): the caller serialises. */
#pragma once

#include <glib.h>
#include <linux/virtio_gpu.h>

#include "vgpu-backing.h"
#include "vgpu-format.h"
#include "vhu-vring.h"

G_BEGIN_DECLS

#define VGPU_BLOB_FEATURES (G_GUINT64_CONSTANT(1) << VIRTIO_GPU_F_RESOURCE_BLOB)
/* Blob flags a guest-memory blob may carry without host-visible memory. */
#define VGPU_BLOB_FLAGS (VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE | VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE)

/* Checks RESOURCE_CREATE_BLOB @c (the resource id was checked by the
 * caller) and translates the entries that follow it in @elem into
 * *backing, charged against @hostmem (the entries' private copy too, while
 * it lives).  The entries must add up to exactly c->size bytes.  Returns
 * VIRTIO_GPU_RESP_OK_NODATA, or the error answer with @message set to a
 * line for the log (free it). */
guint32 vgpu_blob_create(VgpuHostmem *hostmem, VhuElem *elem,
                         const struct virtio_gpu_resource_create_blob *c, VgpuBacking **backing,
                         char **message);

/* Where a blob scanout's pixels are: rectangle @rect of a @width x @height
 * image of @format whose row y starts at @offset + y * @stride of the blob. */
typedef struct {
  guint32 format;
  guint32 width, height;
  guint32 stride;
  guint64 offset;
  VgpuRect rect;
} VgpuBlobScanout;

/* Checks SET_SCANOUT_BLOB @c (scanout and resource ids checked by the
 * caller, the resource not disabled) against a blob of @blob_size bytes:
 * a known format, a non-zero size, a stride that is a multiple of 4 and at
 * least width * 4 bytes (the image sizes themselves are checked when the
 * device allocates the scanout's image), every row inside the blob, a
 * non-empty rectangle inside the image.  Only plane 0 is used: every
 * virtio-gpu format has one.  Fills @out. */
guint32 vgpu_blob_check_scanout(const struct virtio_gpu_set_scanout_blob *c, guint64 blob_size,
                                VgpuBlobScanout *out, char **message);

/* The answer to RESOURCE_MAP_BLOB / RESOURCE_UNMAP_BLOB of an existing
 * resource (@is_blob: it is a blob): nothing is mappable. */
guint32 vgpu_blob_map(guint32 resource_id, gboolean is_blob, gboolean unmap, char **message);

G_END_DECLS
