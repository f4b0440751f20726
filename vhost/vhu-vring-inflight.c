/* vhu-vring-inflight.c: inflight tracking (INFLIGHT_SHMFD) in QEMU's split
 * layout: requests recorded in a region the frontend keeps across a backend
 * restart are resubmitted first, in their original order. */
#include "vhu-vring-internal.h"

#include <gio/gio.h>

/* ---- inflight tracking ------------------------------------------------- */

gsize
vhu_vring_inflight_region_size(guint queue_size)
{
  /* Header plus entries, rounded up to 64.  Equal to libvhost-user's
   * ALIGN_UP(16 * size + 2, 64): no multiple of 64 lies between
   * 16 * size + 2 and 16 * size + 16. */
  gsize raw = sizeof(VhuInflightQueue) + (gsize)queue_size * sizeof(VhuInflightDesc);

  return (raw + 63) & ~(gsize)63;
}

gboolean
vhu_vring_set_inflight_locked(VhuVring *vring, void *region, gsize size, GError **error)
{
  volatile VhuInflightQueue *q = region;

  if (vring->started) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: inflight region set while started", vring->index);
    return FALSE;
  }
  if (region == NULL) {
    vring->inflight = NULL;
    vring->inflight_size = 0;
    return TRUE;
  }
  if (size < sizeof(VhuInflightQueue)
      || (vring->num != 0 && size < vhu_vring_inflight_region_size(vring->num))) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: inflight region of %" G_GSIZE_FORMAT " bytes is too small", vring->index,
                size);
    return FALSE;
  }
  if (q->version != 0 && size < vhu_vring_inflight_region_size(q->desc_num)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: inflight region of %" G_GSIZE_FORMAT " bytes cannot hold %u entries",
                vring->index, size, (guint)q->desc_num);
    return FALSE;
  }
  vring->inflight = q;
  vring->inflight_size = size;
  return TRUE;
}

static gint
resubmit_compare(gconstpointer a, gconstpointer b)
{
  const VhuResubmit *x = a, *y = b;

  if (x->counter != y->counter)
    return x->counter < y->counter ? -1 : 1;
  return (gint)x->head - (gint)y->head;
}

/* Brings the region in line with the used ring and queues the requests it
 * records as inflight, oldest first. */
gboolean
vhu_vring_inflight_start(VhuVring *vring, GError **error)
{
  volatile VhuInflightQueue *q = vring->inflight;
  guint num = vring->num;
  guint64 max_counter = 0;

  if (q == NULL)
    return TRUE;
  if (vring->inflight_size < vhu_vring_inflight_region_size(num)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: inflight region of %" G_GSIZE_FORMAT " bytes is too small for %u",
                vring->index, vring->inflight_size, num);
    return FALSE;
  }
  if (q->version == 0) {
    /* Fresh region: nothing to recover. */
    q->features = 0;
    q->desc_num = num;
    q->last_batch_head = 0;
    q->used_idx = vring->last_used_idx;
    for (guint i = 0; i < num; i++) {
      q->desc[i].inflight = 0;
      q->desc[i].next = 0;
      q->desc[i].counter = 0;
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    q->version = 1;
    vring->inflight_counter = 1;
    return TRUE;
  }
  if (q->desc_num != num) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "queue %u: inflight region has %u entries, the queue %u", vring->index,
                (guint)q->desc_num, num);
    return FALSE;
  }
  if (q->used_idx != vring->last_used_idx) {
    /* We died after publishing the last used entry and before recording
     * it: that batch is complete. */
    guint16 head = q->last_batch_head;

    if (head < num)
      q->desc[head].inflight = 0;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    q->used_idx = vring->last_used_idx;
  }
  for (guint i = 0; i < num; i++) {
    VhuResubmit r = { .head = i, .counter = q->desc[i].counter };

    if (q->desc[i].inflight != 1)
      continue;
    g_array_append_val(vring->resubmit, r);
    max_counter = MAX(max_counter, r.counter);
  }
  g_array_sort(vring->resubmit, resubmit_compare);
  vring->inflight_counter = max_counter + 1;
  /* Everything up to the last used entry and the requests still inflight
   * were taken from the avail ring. */
  vring->last_avail_idx = vring->last_used_idx + vring->resubmit->len;
  return TRUE;
}

void
vhu_vring_inflight_mark(VhuVring *vring, guint16 head)
{
  if (vring->inflight == NULL)
    return;
  vring->inflight->desc[head].counter = vring->inflight_counter++;
  __atomic_thread_fence(__ATOMIC_RELEASE);
  vring->inflight->desc[head].inflight = 1;
}

void
vhu_vring_inflight_clear(VhuVring *vring, guint16 head)
{
  if (vring->inflight != NULL)
    vring->inflight->desc[head].inflight = 0;
}
