/* vgpu-blob.c: guest-memory blob resources. */
#include "vgpu-blob.h"

#include <string.h>

#include "vgpu-device.h"

guint32
vgpu_blob_create(VgpuHostmem *hostmem, VhuElem *elem,
                 const struct virtio_gpu_resource_create_blob *c, VgpuBacking **backing,
                 char **message)
{
  g_autofree struct virtio_gpu_mem_entry *ents = NULL;
  g_autoptr(GError) error = NULL;
  guint64 total = 0;
  gsize bytes;
  guint bad = 0;
  guint32 type = VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;

  *backing = NULL;
  if (c->blob_mem != VIRTIO_GPU_BLOB_MEM_GUEST) {
    *message = g_strdup_printf("RESOURCE_CREATE_BLOB %u: blob_mem %u (only guest memory, 1, is "
                               "served without 3D)",
                               c->resource_id, c->blob_mem);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (c->blob_flags & ~(guint32)VGPU_BLOB_FLAGS) {
    *message = g_strdup_printf("RESOURCE_CREATE_BLOB %u: blob_flags 0x%x (no host-visible memory: "
                               "nothing is mappable)",
                               c->resource_id, c->blob_flags);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (c->blob_id != 0 || c->size == 0 || c->nr_entries == 0
      || c->nr_entries > VGPU_MAX_BACKING_ENTRIES) {
    *message = g_strdup_printf("RESOURCE_CREATE_BLOB %u: blob_id %" G_GUINT64_FORMAT
                               ", size %" G_GUINT64_FORMAT ", %u entries (1..%u)",
                               c->resource_id, (guint64)c->blob_id, (guint64)c->size, c->nr_entries,
                               VGPU_MAX_BACKING_ENTRIES);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  bytes = (gsize)c->nr_entries * sizeof *ents;
  if (elem->out_len < sizeof *c + bytes) {
    *message = g_strdup_printf("RESOURCE_CREATE_BLOB %u: %u entries announced, request holds %zu "
                               "bytes of %zu",
                               c->resource_id, c->nr_entries, elem->out_len, sizeof *c + bytes);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  /* The private copy of the entries is charged while it lives. */
  if (!vgpu_hostmem_charge(hostmem, bytes)) {
    *message = g_strdup_printf("RESOURCE_CREATE_BLOB %u: %u entries: host memory budget exhausted",
                               c->resource_id, c->nr_entries);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  ents = g_malloc(bytes);
  if (vhu_elem_read(elem, sizeof *c, ents, bytes) != bytes) {
    *message = g_strdup_printf("RESOURCE_CREATE_BLOB %u: truncated entries", c->resource_id);
    goto out;
  }
  for (guint i = 0; i < c->nr_entries; i++)
    total += ents[i].length; /* at most 16384 * (2^32 - 1): no overflow */
  if (total != c->size) {
    *message = g_strdup_printf("RESOURCE_CREATE_BLOB %u: entries hold %" G_GUINT64_FORMAT
                               " bytes, the blob %" G_GUINT64_FORMAT,
                               c->resource_id, total, (guint64)c->size);
    goto out;
  }
  *backing = vgpu_backing_new(hostmem, elem->mem, ents, c->nr_entries, &bad, &error);
  if (!*backing) {
    gboolean budget = g_error_matches(error, VGPU_BACKING_ERROR, VGPU_BACKING_ERROR_BUDGET);

    if (budget)
      *message = g_strdup_printf("RESOURCE_CREATE_BLOB %u: %s", c->resource_id, error->message);
    else
      *message = g_strdup_printf(
          "RESOURCE_CREATE_BLOB %u: entry %u (0x%" G_GINT64_MODIFIER "x, %u bytes): %s",
          c->resource_id, bad, (guint64)ents[bad].addr, ents[bad].length, error->message);
    type = budget ? VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY : VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
    goto out;
  }
  type = VIRTIO_GPU_RESP_OK_NODATA;
out:
  g_clear_pointer(&ents, g_free);
  vgpu_hostmem_credit(hostmem, bytes);
  return type;
}

guint32
vgpu_blob_check_scanout(const struct virtio_gpu_set_scanout_blob *c, guint64 blob_size,
                        VgpuBlobScanout *out, char **message)
{
  VgpuRect r = { c->r.x, c->r.y, c->r.width, c->r.height };
  guint64 end;

  if (!vgpu_format_is_valid(c->format)) {
    *message = g_strdup_printf("SET_SCANOUT_BLOB: unknown format %u", c->format);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (c->width == 0 || c->height == 0 || c->strides[0] % 4u != 0 || c->strides[0] / 4u < c->width) {
    *message = g_strdup_printf("SET_SCANOUT_BLOB: %ux%u with a stride of %u bytes", c->width,
                               c->height, c->strides[0]);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  /* The last byte of the last row must lie in the blob; the products are
   * below 2^64, only the sums can overflow. */
  if (!g_uint64_checked_add(&end, c->offsets[0], (guint64)(c->height - 1) * c->strides[0])
      || !g_uint64_checked_add(&end, end, (guint64)c->width * 4u) || end > blob_size) {
    *message = g_strdup_printf("SET_SCANOUT_BLOB: %ux%u rows of %u bytes from offset %u beyond "
                               "the %" G_GUINT64_FORMAT "-byte blob %u",
                               c->width, c->height, c->strides[0], c->offsets[0], blob_size,
                               c->resource_id);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (r.width == 0 || r.height == 0 || !vgpu_rect_inside(&r, c->width, c->height)) {
    *message = g_strdup_printf("SET_SCANOUT_BLOB: rectangle %ux%u+%u+%u outside the %ux%u image",
                               r.width, r.height, r.x, r.y, c->width, c->height);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  *out = (VgpuBlobScanout){ c->format, c->width, c->height, c->strides[0], c->offsets[0], r };
  return VIRTIO_GPU_RESP_OK_NODATA;
}

guint32
vgpu_blob_map(guint32 resource_id, gboolean is_blob, gboolean unmap, char **message)
{
  *message = g_strdup_printf("RESOURCE_%s_BLOB %u: %s", unmap ? "UNMAP" : "MAP", resource_id,
                             is_blob ? "no host-visible memory region to map blobs into"
                                     : "not a blob resource");
  return is_blob ? VIRTIO_GPU_RESP_ERR_UNSPEC : VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
}
