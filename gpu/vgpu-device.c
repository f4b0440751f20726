/* vgpu-device.c: virtio-gpu 2D device model. */
#include "vgpu-device.h"

#include <gio/gio.h>
#include <stddef.h>
#include <string.h>

#include "vgpu-backing.h"
#include "vgpu-blob.h"
#include "vgpu-edid.h"

G_STATIC_ASSERT(G_BYTE_ORDER == G_LITTLE_ENDIAN); /* virtio fields are used as host order */

/* Kinds of guest errors, each rate-limited on its own. */
typedef enum {
  GE_SHORT_REQUEST,
  GE_SHORT_RESPONSE,
  GE_UNKNOWN_COMMAND,
  GE_RESOURCE_ID,
  GE_RESOURCE_EXISTS,
  GE_FORMAT,
  GE_SIZE,
  GE_HOSTMEM,
  GE_RESOURCE_COUNT,
  GE_SCANOUT_ID,
  GE_RECT,
  GE_NO_BACKING,
  GE_BACKING_ATTACHED,
  GE_BACKING_ENTRIES,
  GE_BACKING_UNMAPPED,
  GE_TRANSFER_RANGE,
  GE_CURSOR,
  GE_DISPLAY_REPLY,
  GE_NOT_NEGOTIATED,
  GE_BLOB,
  GE_N_KINDS
} GuestError;

#define LOG_INTERVAL_US (60 * G_USEC_PER_SEC)

typedef struct {
  guint32 id;
  VgpuHostmem *hostmem; /* charged VGPU_RESOURCE_OVERHEAD for the records */
  VgpuImage *image;     /* NULL: a blob not scanned out yet */
  VgpuBacking *backing;
  /* A transfer not copied into the image yet: inside @pending the resource's
   * pixels are the backing's, row y at pending_offset + (y - pending.y) *
   * stride.  Empty (width 0) when the image holds every pixel. */
  VgpuRect pending;
  guint64 pending_offset;
  gboolean has_uuid;
  guint8 uuid[16];
  /* A guest-memory blob of that many bytes (0: a 2D resource): its backing
   * is its pixels for good (pending never empties), its image has the
   * geometry of its last SET_SCANOUT_BLOB and receives copies only for
   * sinks that need them (vgpu-blob.h). */
  guint64 blob_size;
} Resource;

typedef struct {
  guint32 resource_id; /* 0: disabled */
  VgpuRect rect;
  VgpuImage *image;
  gboolean full_pending; /* next flush sends the whole scanout */
  gboolean cursor_defined;
  guint32 cursor_x, cursor_y;
} Scanout;

typedef enum {
  QUERY_DISPLAY_INFO,
  QUERY_EDID,
  QUERY_EXT, /* held by the command extension */
} QueryKind;

typedef struct _Pending Pending;

struct _VgpuQuery {
  Pending *pending; /* NULL once cancelled */
};

typedef union {
  struct virtio_gpu_ctrl_hdr hdr;
  struct virtio_gpu_resp_display_info display_info;
  struct virtio_gpu_resp_edid edid;
  struct virtio_gpu_resp_resource_uuid uuid;
} Response;

struct _Pending {
  GList link; /* in VgpuDevice.pending */
  guint64 charged;
  VhuElem *elem;
  struct virtio_gpu_ctrl_hdr req;
  QueryKind kind;
  guint32 scanout;
  gboolean ready;
  gboolean fenced;
  VgpuQuery *query;
  Response resp;
  gsize resp_len;
  gsize payload_len; /* written by the extension after the header */
};

typedef struct {
  const VgpuSinkIface *iface;
  gpointer sink;
} Sink;

struct _VgpuDevice {
  VgpuDeviceConfig config;
  VgpuDeviceOps ops;
  gpointer ops_data;
  VgpuHostmem *hostmem;
  VgpuNotify *idle_notify;
  GHashTable *resources; /* id -> Resource */
  Resource *last_found;  /* guests address one resource many times in a row */
  Scanout scanouts[VGPU_MAX_SCANOUTS];
  GArray *sinks;  /* Sink */
  GQueue pending; /* Pending, in submission order */
  guint64 features;
  guint32 events_read;
  const VgpuDeviceExt *ext;
  gpointer ext_data;
  VgpuDeviceStats stats;
  gint64 last_log[GE_N_KINDS];
  guint64 suppressed[GE_N_KINDS];
};

/* Rate-limited log line for a guest error: the first of each kind, then one
 * a minute with the number suppressed meanwhile. */
G_GNUC_PRINTF(3, 4)
static void
guest_error(VgpuDevice *dev, GuestError kind, const char *format, ...)
{
  gint64 now = g_get_monotonic_time();
  g_autofree char *msg = NULL;
  va_list args;

  if (dev->last_log[kind] != 0 && now - dev->last_log[kind] < LOG_INTERVAL_US) {
    dev->suppressed[kind]++;
    return;
  }
  va_start(args, format);
  msg = g_strdup_vprintf(format, args);
  va_end(args);
  if (dev->suppressed[kind] > 0)
    g_warning("guest: %s (%" G_GUINT64_FORMAT " similar errors suppressed)", msg,
              dev->suppressed[kind]);
  else
    g_warning("guest: %s", msg);
  dev->last_log[kind] = now;
  dev->suppressed[kind] = 0;
}

/* ------------------------------------------------------------------------ */
/* Resources and sinks */

/* What a resource costs besides its image and backing: this record, the
 * image's, and the id table's share. */
G_STATIC_ASSERT(sizeof(Resource) + sizeof(VgpuImage) + 64 <= VGPU_RESOURCE_OVERHEAD);

static void
resource_free(gpointer data)
{
  Resource *res = data;

  vgpu_backing_unref(res->backing);
  vgpu_image_unref(res->image);
  vgpu_hostmem_credit(res->hostmem, VGPU_RESOURCE_OVERHEAD);
  g_free(res);
}

static Resource *
find_resource(VgpuDevice *dev, guint32 id)
{
  Resource *res;

  if (id == 0)
    return NULL;
  if (dev->last_found && dev->last_found->id == id)
    return dev->last_found;
  res = g_hash_table_lookup(dev->resources, GUINT_TO_POINTER(id));
  if (res)
    dev->last_found = res;
  return res;
}

static void
sinks_set_scanout(VgpuDevice *dev, guint id)
{
  Scanout *s = &dev->scanouts[id];

  for (guint i = 0; i < dev->sinks->len; i++) {
    Sink *k = &g_array_index(dev->sinks, Sink, i);

    if (k->iface->set_scanout)
      k->iface->set_scanout(k->sink, id, s->image, s->image ? &s->rect : NULL);
  }
}

static void
sinks_update(VgpuDevice *dev, guint id, const VgpuRect *rect)
{
  Scanout *s = &dev->scanouts[id];

  for (guint i = 0; i < dev->sinks->len; i++) {
    Sink *k = &g_array_index(dev->sinks, Sink, i);

    if (k->iface->update)
      k->iface->update(k->sink, id, s->image, rect, rect->x - s->rect.x, rect->y - s->rect.y);
  }
}

/* TRUE when every sink that shows updates can read them from guest memory. */
static gboolean
sinks_read_guest(VgpuDevice *dev)
{
  for (guint i = 0; i < dev->sinks->len; i++) {
    Sink *k = &g_array_index(dev->sinks, Sink, i);

    if (k->iface->update && !k->iface->update_guest)
      return FALSE;
  }
  return TRUE;
}

static void
sinks_cursor_move(VgpuDevice *dev, guint id, gboolean visible)
{
  Scanout *s = &dev->scanouts[id];

  for (guint i = 0; i < dev->sinks->len; i++) {
    Sink *k = &g_array_index(dev->sinks, Sink, i);

    if (k->iface->cursor_move)
      k->iface->cursor_move(k->sink, id, s->cursor_x, s->cursor_y, visible);
  }
}

static void
sinks_scanout_blob(VgpuDevice *dev, guint id, Resource *res)
{
  Scanout *s = &dev->scanouts[id];
  guint64 offset
      = res->pending_offset + (guint64)s->rect.y * res->image->stride + (guint64)s->rect.x * 4u;

  for (guint i = 0; i < dev->sinks->len; i++) {
    Sink *k = &g_array_index(dev->sinks, Sink, i);

    if (k->iface->scanout_blob)
      k->iface->scanout_blob(k->sink, id, res->backing, offset, res->image->stride);
  }
}

static void
disable_scanout(VgpuDevice *dev, guint id)
{
  Scanout *s = &dev->scanouts[id];

  if (s->resource_id == 0)
    return;
  s->resource_id = 0;
  s->rect = (VgpuRect){ 0, 0, 0, 0 };
  s->full_pending = FALSE;
  g_clear_pointer(&s->image, vgpu_image_unref);
  sinks_set_scanout(dev, id);
}

/* ------------------------------------------------------------------------ */
/* Pending transfers
 *
 * TRANSFER_TO_HOST_2D does not copy: it records its rectangle as pending,
 * where the resource's pixels are those of the guest backing.  A
 * RESOURCE_FLUSH inside the pending rectangle lets the sinks read the guest
 * memory directly.  The pixels are copied into the image (materialised) only
 * when something needs them there: a transfer elsewhere, a flush beyond the
 * pending rectangle or to a sink that only reads images, DETACH_BACKING, a
 * reader of the image.  Until then the guest's later writes to its backing
 * show through, as they would on a scanout from guest memory. */

static gboolean
rect_is_empty(const VgpuRect *r)
{
  return r->width == 0 || r->height == 0;
}

/* TRUE when @inner lies inside @outer (an empty @outer holds nothing). */
static gboolean
rect_contains(const VgpuRect *outer, const VgpuRect *inner)
{
  return !rect_is_empty(outer) && inner->x >= outer->x && inner->y >= outer->y
         && (guint64)inner->x + inner->width <= (guint64)outer->x + outer->width
         && (guint64)inner->y + inner->height <= (guint64)outer->y + outer->height;
}

/* Backing offset of pixel (@x, @y), which lies in the pending rectangle. */
static guint64
pending_offset_at(const Resource *res, guint32 x, guint32 y)
{
  return res->pending_offset + (guint64)(y - res->pending.y) * res->image->stride
         + (guint64)(x - res->pending.x) * 4u;
}

/* A sink still reads the image or the guest memory of @res. */
static gboolean
resource_busy(Resource *res)
{
  return (res->image && vgpu_image_is_busy(res->image))
         || (res->backing && vgpu_backing_is_busy(res->backing));
}

/* A sink still reads the guest memory, or lent its pages to a peer that may
 * read them later. */
static gboolean
backing_in_use(VgpuBacking *backing)
{
  return vgpu_backing_is_busy(backing) || vgpu_backing_is_lent(backing);
}

/* Copies the pending rectangle into the image; the caller made sure no sink
 * reads the image. */
static void
materialize(VgpuDevice *dev, Resource *res)
{
  const VgpuRect *r = &res->pending;
  VgpuImage *img = res->image;

  if (rect_is_empty(r))
    return;
  if (r->x == 0 && r->width == img->width) {
    /* Whole rows: one contiguous copy. */
    vgpu_backing_read(res->backing, res->pending_offset, img->data + (gsize)r->y * img->stride,
                      (gsize)r->height * img->stride);
  } else {
    for (guint32 h = 0; h < r->height; h++)
      vgpu_backing_read(res->backing, res->pending_offset + (guint64)h * img->stride,
                        img->data + (gsize)(r->y + h) * img->stride + (gsize)r->x * 4u,
                        (gsize)r->width * 4u);
  }
  if (!res->blob_size)
    res->pending = (VgpuRect){ 0, 0, 0, 0 };
  dev->stats.materializations++;
}

static void
sinks_update_guest(VgpuDevice *dev, guint id, Resource *res, const VgpuRect *rect)
{
  Scanout *s = &dev->scanouts[id];
  guint64 offset = pending_offset_at(res, rect->x, rect->y);

  for (guint i = 0; i < dev->sinks->len; i++) {
    Sink *k = &g_array_index(dev->sinks, Sink, i);

    if (k->iface->update_guest)
      k->iface->update_guest(k->sink, id, res->image, res->backing, offset, rect,
                             rect->x - s->rect.x, rect->y - s->rect.y);
  }
  dev->stats.guest_updates++;
}

/* ------------------------------------------------------------------------ */
/* Responses and completion */

static void
resp_init(Response *resp, const struct virtio_gpu_ctrl_hdr *req, guint32 type)
{
  memset(&resp->hdr, 0, sizeof resp->hdr);
  resp->hdr.type = type;
  if (req->flags & VIRTIO_GPU_FLAG_FENCE) {
    resp->hdr.flags = VIRTIO_GPU_FLAG_FENCE;
    resp->hdr.fence_id = req->fence_id;
    resp->hdr.ctx_id = req->ctx_id;
    if (req->flags & VIRTIO_GPU_FLAG_INFO_RING_IDX) {
      resp->hdr.flags |= VIRTIO_GPU_FLAG_INFO_RING_IDX;
      resp->hdr.ring_idx = req->ring_idx;
    }
  }
}

/* @payload bytes after the header were written by the extension. */
static void
complete_ctrl_payload(VgpuDevice *dev, VhuElem *elem, const struct virtio_gpu_ctrl_hdr *req,
                      const Response *resp, gsize len, gsize payload)
{
  gsize written = vhu_elem_write(elem, 0, resp, len);

  if (written < len)
    guest_error(dev, GE_SHORT_RESPONSE,
                "response buffer of %zu bytes too small for %zu (command 0x%x)", elem->in_len, len,
                req->type);
  if (resp->hdr.type >= VIRTIO_GPU_RESP_ERR_UNSPEC)
    dev->stats.errors++;
  if (req->flags & VIRTIO_GPU_FLAG_FENCE)
    dev->stats.fences++;
  if (written == len)
    written += payload;
  dev->ops.complete(dev->ops_data, VGPU_CTRL_QUEUE, elem, (guint32)written);
}

static void
complete_ctrl(VgpuDevice *dev, VhuElem *elem, const struct virtio_gpu_ctrl_hdr *req,
              const Response *resp, gsize len)
{
  complete_ctrl_payload(dev, elem, req, resp, len, 0);
}

/* A held request's record, charged with what holding it costs (the record,
 * a display query, the element and its iovecs); NULL when the budget is
 * exhausted. */
static Pending *
pending_new(VgpuDevice *dev, VhuElem *elem, const struct virtio_gpu_ctrl_hdr *req)
{
  guint64 charge = sizeof(Pending) + sizeof(VgpuQuery) + sizeof(VhuElem) + 64
                   + ((guint64)elem->out_num + elem->in_num) * sizeof(struct iovec);
  Pending *p;

  if (!vgpu_hostmem_charge(dev->hostmem, charge)) {
    guest_error(dev, GE_HOSTMEM, "command 0x%x: no host memory left to hold it; answered at once",
                req->type);
    return NULL;
  }
  p = g_new0(Pending, 1);
  p->link.data = p;
  p->charged = charge;
  p->elem = elem;
  p->req = *req;
  p->fenced = (req->flags & VIRTIO_GPU_FLAG_FENCE) != 0;
  return p;
}

static void
pending_free(VgpuDevice *dev, Pending *p)
{
  vgpu_hostmem_credit(dev->hostmem, p->charged);
  g_free(p);
}

/* Completes what may complete: ready requests without a fence at once, a
 * ready fenced request only when nothing before it is still outstanding. */
static void
drain_pending(VgpuDevice *dev)
{
  gboolean blocked = FALSE;
  GList *l = dev->pending.head;

  while (l) {
    GList *next = l->next;
    Pending *p = l->data;

    if (p->ready && (!p->fenced || !blocked)) {
      g_queue_unlink(&dev->pending, l);
      complete_ctrl_payload(dev, p->elem, &p->req, &p->resp, p->resp_len, p->payload_len);
      pending_free(dev, p);
    } else {
      blocked = TRUE;
    }
    l = next;
  }
}

static void
fill_display_info(VgpuDevice *dev, Response *resp, const struct virtio_gpu_resp_display_info *from)
{
  struct virtio_gpu_resp_display_info *info = &resp->display_info;

  memset(info->pmodes, 0, sizeof info->pmodes);
  for (guint i = 0; i < dev->config.num_scanouts; i++) {
    if (from) {
      info->pmodes[i] = from->pmodes[i];
    } else {
      info->pmodes[i].r.width = dev->config.width;
      info->pmodes[i].r.height = dev->config.height;
      info->pmodes[i].enabled = 1;
    }
  }
}

static void
fill_edid(VgpuDevice *dev, Response *resp, guint32 scanout, const struct virtio_gpu_resp_edid *from)
{
  struct virtio_gpu_resp_edid *edid = &resp->edid;

  memset(edid->edid, 0, sizeof edid->edid);
  edid->padding = 0;
  if (from) {
    edid->size = from->size;
    memcpy(edid->edid, from->edid, from->size);
  } else {
    edid->size = VGPU_EDID_SIZE;
    vgpu_edid_generate(dev->config.width, dev->config.height, scanout + 1, edid->edid);
  }
}

/* Fills @p's answer from a display's @reply, or from the configuration. */
static void
pending_answer(VgpuDevice *dev, Pending *p, const void *reply, gsize size)
{
  if (p->kind == QUERY_EXT) {
    /* its answer was set when it was held */
  } else if (p->kind == QUERY_DISPLAY_INFO) {
    const struct virtio_gpu_resp_display_info *info = reply;

    if (reply && (size < sizeof *info || info->hdr.type != VIRTIO_GPU_RESP_OK_DISPLAY_INFO)) {
      guest_error(dev, GE_DISPLAY_REPLY, "display sent a bad display info reply (%zu bytes)", size);
      info = NULL;
    }
    if (!info)
      dev->stats.display_query_fallbacks++;
    fill_display_info(dev, &p->resp, info);
  } else {
    const struct virtio_gpu_resp_edid *edid = reply;

    if (reply
        && (size < offsetof(struct virtio_gpu_resp_edid, edid)
            || edid->hdr.type != VIRTIO_GPU_RESP_OK_EDID || edid->size == 0
            || edid->size > sizeof edid->edid
            || size < offsetof(struct virtio_gpu_resp_edid, edid) + edid->size)) {
      guest_error(dev, GE_DISPLAY_REPLY, "display sent a bad EDID reply (%zu bytes)", size);
      edid = NULL;
    }
    if (!edid)
      dev->stats.display_query_fallbacks++;
    fill_edid(dev, &p->resp, p->scanout, edid);
  }
  p->ready = TRUE;
}

/* Asks the first sink able to answer; FALSE when none is. */
static gboolean
pending_query(VgpuDevice *dev, Pending *p)
{
  for (guint i = 0; i < dev->sinks->len; i++) {
    Sink *k = &g_array_index(dev->sinks, Sink, i);
    VgpuQuery *q;
    gboolean asked = FALSE;

    if (!(p->kind == QUERY_DISPLAY_INFO ? (gpointer)k->iface->query_display_info
                                        : (gpointer)k->iface->query_edid))
      continue;
    /* Linked before asking, so that an answer given too early (a sink
     * dropping its connection while sending) still finds its request. */
    q = g_new0(VgpuQuery, 1);
    q->pending = p;
    p->query = q;
    if (p->kind == QUERY_DISPLAY_INFO)
      asked = k->iface->query_display_info(k->sink, q);
    else
      asked = k->iface->query_edid(k->sink, p->scanout, q);
    if (asked) {
      dev->stats.display_queries++;
      return TRUE;
    }
    if (p->query == q) {
      p->query = NULL;
      g_free(q);
    }
  }
  return FALSE;
}

void
vgpu_device_query_done(VgpuDevice *dev, VgpuQuery *query, const void *reply, gsize size)
{
  Pending *p = query->pending;

  g_free(query);
  if (!p)
    return; /* cancelled by a flush or reset */
  p->query = NULL;
  pending_answer(dev, p, reply, size);
  drain_pending(dev);
}

static void
cancel_query(Pending *p)
{
  if (p->query) {
    p->query->pending = NULL;
    p->query = NULL;
  }
}

void
vgpu_device_flush(VgpuDevice *dev)
{
  for (GList *l = dev->pending.head; l; l = l->next) {
    Pending *p = l->data;

    if (!p->ready) {
      cancel_query(p);
      pending_answer(dev, p, NULL, 0);
    }
  }
  drain_pending(dev);
}

static void
discard_pending(VgpuDevice *dev)
{
  GList *l;

  while ((l = g_queue_pop_head_link(&dev->pending))) {
    Pending *p = l->data;

    cancel_query(p);
    dev->ops.discard(dev->ops_data, VGPU_CTRL_QUEUE, p->elem);
    pending_free(dev, p);
  }
}

/* ------------------------------------------------------------------------ */
/* Control commands.  Each returns the response type (or an error) and may
 * fill extra response fields; TRANSFER may ask to wait instead. */

typedef union {
  struct virtio_gpu_ctrl_hdr hdr;
  struct virtio_gpu_resource_create_2d create_2d;
  struct virtio_gpu_resource_unref unref;
  struct virtio_gpu_set_scanout set_scanout;
  struct virtio_gpu_resource_flush flush;
  struct virtio_gpu_transfer_to_host_2d transfer;
  struct virtio_gpu_resource_attach_backing attach;
  struct virtio_gpu_resource_detach_backing detach;
  struct virtio_gpu_cmd_get_edid get_edid;
  struct virtio_gpu_resource_assign_uuid assign_uuid;
  struct virtio_gpu_resource_create_blob create_blob;
  struct virtio_gpu_set_scanout_blob set_scanout_blob;
  struct virtio_gpu_resource_map_blob map_blob;
  struct virtio_gpu_resource_unmap_blob unmap_blob;
} Request;

#define RESULT_WAIT 0u /* not a response type: the request must wait */

static guint32
bad_resource(VgpuDevice *dev, const char *what, guint32 id)
{
  guest_error(dev, GE_RESOURCE_ID, "%s: invalid resource id %u", what, id);
  return VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
}

static guint32
cmd_create_2d(VgpuDevice *dev, const struct virtio_gpu_resource_create_2d *c)
{
  g_autoptr(GError) error = NULL;
  guint max = dev->config.max_resources ? dev->config.max_resources : VGPU_DEFAULT_MAX_RESOURCES;
  guint64 charge;
  Resource *res;
  VgpuImage *image;

  if (c->resource_id == 0)
    return bad_resource(dev, "RESOURCE_CREATE_2D", 0);
  if (find_resource(dev, c->resource_id)) {
    guest_error(dev, GE_RESOURCE_EXISTS, "RESOURCE_CREATE_2D: resource %u already exists",
                c->resource_id);
    return VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
  }
  if (!vgpu_format_is_valid(c->format)) {
    guest_error(dev, GE_FORMAT, "RESOURCE_CREATE_2D: unknown format %u", c->format);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (!vgpu_image_size_for(c->width, c->height, &charge)) {
    guest_error(dev, GE_SIZE, "RESOURCE_CREATE_2D: invalid size %ux%u", c->width, c->height);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (g_hash_table_size(dev->resources) >= max) {
    guest_error(dev, GE_RESOURCE_COUNT, "RESOURCE_CREATE_2D: limit of %u resources reached", max);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  if (!vgpu_hostmem_charge(dev->hostmem, VGPU_RESOURCE_OVERHEAD)) {
    guest_error(dev, GE_HOSTMEM, "RESOURCE_CREATE_2D %u: host memory budget exhausted",
                c->resource_id);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  image = vgpu_image_new(dev->hostmem, c->format, c->width, c->height, &error);
  if (!image) {
    vgpu_hostmem_credit(dev->hostmem, VGPU_RESOURCE_OVERHEAD);
    guest_error(dev, GE_HOSTMEM, "RESOURCE_CREATE_2D %u: %s", c->resource_id, error->message);
    return g_error_matches(error, VGPU_IMAGE_ERROR, VGPU_IMAGE_ERROR_INVALID)
               ? VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
               : VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  vgpu_image_set_idle_notify(image, dev->idle_notify);
  res = g_new0(Resource, 1);
  res->id = c->resource_id;
  res->hostmem = dev->hostmem;
  res->image = image;
  g_hash_table_insert(dev->resources, GUINT_TO_POINTER(res->id), res);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_unref(VgpuDevice *dev, const struct virtio_gpu_resource_unref *c)
{
  Resource *res = find_resource(dev, c->resource_id);

  if (!res)
    return bad_resource(dev, "RESOURCE_UNREF", c->resource_id);
  if (res->backing && backing_in_use(res->backing)) {
    /* The guest frees the pages once answered: not while a sink reads them. */
    dev->stats.stalls++;
    return RESULT_WAIT;
  }
  for (guint i = 0; i < dev->config.num_scanouts; i++) {
    if (dev->scanouts[i].resource_id == res->id)
      disable_scanout(dev, i);
  }
  if (dev->last_found == res)
    dev->last_found = NULL;
  g_hash_table_remove(dev->resources, GUINT_TO_POINTER(res->id));
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static gboolean
rect_equal(const VgpuRect *a, const VgpuRect *b)
{
  return a->x == b->x && a->y == b->y && a->width == b->width && a->height == b->height;
}

static guint32
cmd_set_scanout(VgpuDevice *dev, const struct virtio_gpu_set_scanout *c)
{
  VgpuRect r = { c->r.x, c->r.y, c->r.width, c->r.height };
  Resource *res;
  Scanout *s;

  if (c->scanout_id >= dev->config.num_scanouts) {
    guest_error(dev, GE_SCANOUT_ID, "SET_SCANOUT: invalid scanout id %u", c->scanout_id);
    return VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
  }
  s = &dev->scanouts[c->scanout_id];
  if (c->resource_id == 0) {
    disable_scanout(dev, c->scanout_id);
    return VIRTIO_GPU_RESP_OK_NODATA;
  }
  res = find_resource(dev, c->resource_id);
  if (!res)
    return bad_resource(dev, "SET_SCANOUT", c->resource_id);
  if (!res->image) {
    guest_error(dev, GE_BLOB, "SET_SCANOUT: blob %u has no geometry (SET_SCANOUT_BLOB)", res->id);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (r.width == 0 || r.height == 0
      || !vgpu_rect_inside(&r, res->image->width, res->image->height)) {
    guest_error(dev, GE_RECT, "SET_SCANOUT: rectangle %ux%u+%u+%u outside resource %u (%ux%u)",
                r.width, r.height, r.x, r.y, res->id, res->image->width, res->image->height);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (s->resource_id == res->id && rect_equal(&s->rect, &r))
    return VIRTIO_GPU_RESP_OK_NODATA;
  s->resource_id = res->id;
  s->rect = r;
  s->full_pending = TRUE;
  if (s->image != res->image) {
    g_clear_pointer(&s->image, vgpu_image_unref);
    s->image = vgpu_image_ref(res->image);
  }
  sinks_set_scanout(dev, c->scanout_id);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_flush(VgpuDevice *dev, const struct virtio_gpu_resource_flush *c)
{
  VgpuRect r = { c->r.x, c->r.y, c->r.width, c->r.height };
  Resource *res = find_resource(dev, c->resource_id);
  struct {
    guint id;
    VgpuRect rect;
  } parts[VGPU_MAX_SCANOUTS];
  guint n = 0;
  gboolean touches = FALSE, inside = TRUE, direct;

  if (!res)
    return bad_resource(dev, "RESOURCE_FLUSH", c->resource_id);
  if (!res->image)
    return VIRTIO_GPU_RESP_OK_NODATA; /* a blob no scanout shows */
  if (!vgpu_rect_inside(&r, res->image->width, res->image->height)) {
    guest_error(dev, GE_RECT, "RESOURCE_FLUSH: rectangle %ux%u+%u+%u outside resource %u (%ux%u)",
                r.width, r.height, r.x, r.y, res->id, res->image->width, res->image->height);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  /* What each scanout showing the resource needs, and where it comes from. */
  for (guint i = 0; i < dev->config.num_scanouts; i++) {
    Scanout *s = &dev->scanouts[i];
    VgpuRect part, common;

    if (s->resource_id != res->id)
      continue;
    if (s->full_pending)
      part = s->rect;
    else if (!vgpu_rect_intersect(&r, &s->rect, &part))
      continue;
    touches |= vgpu_rect_intersect(&part, &res->pending, &common);
    inside &= rect_contains(&res->pending, &part);
    parts[n].id = i;
    parts[n++].rect = part;
  }
  /* Straight from guest memory when it holds all of it and no sink still
   * reads it (one message in flight per backing keeps a slow display from
   * piling up updates); otherwise the image gets the pending pixels first. */
  direct = touches && inside && res->backing && !vgpu_backing_is_busy(res->backing)
           && sinks_read_guest(dev);
  if (touches && !direct) {
    if (vgpu_image_is_busy(res->image)) {
      dev->stats.stalls++;
      return RESULT_WAIT;
    }
    materialize(dev, res);
  }
  for (guint k = 0; k < n; k++) {
    dev->scanouts[parts[k].id].full_pending = FALSE;
    if (direct)
      sinks_update_guest(dev, parts[k].id, res, &parts[k].rect);
    else
      sinks_update(dev, parts[k].id, &parts[k].rect);
  }
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_transfer(VgpuDevice *dev, const struct virtio_gpu_transfer_to_host_2d *c)
{
  VgpuRect r = { c->r.x, c->r.y, c->r.width, c->r.height };
  Resource *res = find_resource(dev, c->resource_id);
  VgpuImage *img;
  guint64 row_bytes, end;

  if (!res)
    return bad_resource(dev, "TRANSFER_TO_HOST_2D", c->resource_id);
  if (res->blob_size && resource_busy(res)) {
    dev->stats.stalls++; /* paced like a 2D transfer */
    return RESULT_WAIT;
  }
  if (res->blob_size)
    return VIRTIO_GPU_RESP_OK_NODATA; /* a blob's pixels are in guest memory already */
  img = res->image;
  if (!vgpu_rect_inside(&r, img->width, img->height)) {
    guest_error(dev, GE_RECT,
                "TRANSFER_TO_HOST_2D: rectangle %ux%u+%u+%u outside resource %u (%ux%u)", r.width,
                r.height, r.x, r.y, res->id, img->width, img->height);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (!res->backing) {
    guest_error(dev, GE_NO_BACKING, "TRANSFER_TO_HOST_2D: resource %u has no backing", res->id);
    return VIRTIO_GPU_RESP_ERR_UNSPEC;
  }
  if (rect_is_empty(&r))
    return VIRTIO_GPU_RESP_OK_NODATA;
  /* Row h comes from offset + h * stride; the last byte read must lie in
   * the backing.  Both factors are < 2^32, so only the sums can overflow. */
  row_bytes = (guint64)r.width * 4u;
  if (!g_uint64_checked_add(&end, c->offset, (guint64)(r.height - 1) * img->stride)
      || !g_uint64_checked_add(&end, end, row_bytes) || end > vgpu_backing_get_size(res->backing)) {
    guest_error(dev, GE_TRANSFER_RANGE,
                "TRANSFER_TO_HOST_2D: offset %" G_GUINT64_FORMAT
                " + %ux%u rows beyond the %" G_GUINT64_FORMAT "-byte backing of resource %u",
                (guint64)c->offset, r.width, r.height, vgpu_backing_get_size(res->backing),
                res->id);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  /* Also keeps a guest from transferring faster than the display reads. */
  if (resource_busy(res)) {
    dev->stats.stalls++;
    return RESULT_WAIT;
  }
  dev->stats.transfers_deferred++;
  if (rect_is_empty(&res->pending) || rect_contains(&r, &res->pending)) {
    /* Nothing pending, or all of it replaced. */
  } else if (rect_contains(&res->pending, &r) && pending_offset_at(res, r.x, r.y) == c->offset) {
    return VIRTIO_GPU_RESP_OK_NODATA; /* already pending, from the same place */
  } else {
    materialize(dev, res);
  }
  res->pending = r;
  res->pending_offset = c->offset;
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_attach_backing(VgpuDevice *dev, VhuElem *elem,
                   const struct virtio_gpu_resource_attach_backing *c)
{
  g_autofree struct virtio_gpu_mem_entry *ents = NULL;
  g_autoptr(GError) error = NULL;
  Resource *res = find_resource(dev, c->resource_id);
  gsize bytes, need;
  guint bad = 0;
  guint32 type;

  if (!res)
    return bad_resource(dev, "RESOURCE_ATTACH_BACKING", c->resource_id);
  if (res->backing) {
    guest_error(dev, GE_BACKING_ATTACHED,
                "RESOURCE_ATTACH_BACKING: resource %u already has backing", res->id);
    return VIRTIO_GPU_RESP_ERR_UNSPEC;
  }
  if (c->nr_entries == 0 || c->nr_entries > VGPU_MAX_BACKING_ENTRIES) {
    guest_error(dev, GE_BACKING_ENTRIES,
                "RESOURCE_ATTACH_BACKING: %u entries for resource %u (1..%u allowed)",
                c->nr_entries, res->id, VGPU_MAX_BACKING_ENTRIES);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  bytes = (gsize)c->nr_entries * sizeof *ents;
  need = sizeof *c + bytes;
  if (elem->out_len < need) {
    guest_error(dev, GE_BACKING_ENTRIES,
                "RESOURCE_ATTACH_BACKING: %u entries announced, request holds %zu bytes of %zu",
                c->nr_entries, elem->out_len, need);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  /* The private copy of the entries is charged while it lives. */
  if (!vgpu_hostmem_charge(dev->hostmem, bytes)) {
    guest_error(dev, GE_HOSTMEM,
                "RESOURCE_ATTACH_BACKING: %u entries for resource %u: host memory budget exhausted",
                c->nr_entries, res->id);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  ents = g_malloc(bytes);
  if (vhu_elem_read(elem, sizeof *c, ents, bytes) != bytes) {
    guest_error(dev, GE_BACKING_ENTRIES, "RESOURCE_ATTACH_BACKING: truncated entries");
    type = VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
    goto out;
  }
  res->backing = vgpu_backing_new(dev->hostmem, elem->mem, ents, c->nr_entries, &bad, &error);
  if (!res->backing && g_error_matches(error, VGPU_BACKING_ERROR, VGPU_BACKING_ERROR_BUDGET)) {
    guest_error(dev, GE_HOSTMEM, "RESOURCE_ATTACH_BACKING: resource %u: %s", res->id,
                error->message);
    type = VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
    goto out;
  }
  if (!res->backing) {
    guest_error(dev,
                g_error_matches(error, VGPU_BACKING_ERROR, VGPU_BACKING_ERROR_UNMAPPED)
                    ? GE_BACKING_UNMAPPED
                    : GE_BACKING_ENTRIES,
                "RESOURCE_ATTACH_BACKING: entry %u (0x%" G_GINT64_MODIFIER "x, %u bytes) of "
                "resource %u: %s",
                bad, (guint64)ents[bad].addr, ents[bad].length, res->id, error->message);
    type = VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
    goto out;
  }
  vgpu_backing_set_idle_notify(res->backing, dev->idle_notify);
  type = VIRTIO_GPU_RESP_OK_NODATA;
out:
  g_clear_pointer(&ents, g_free);
  vgpu_hostmem_credit(dev->hostmem, bytes);
  return type;
}

static guint32
cmd_detach_backing(VgpuDevice *dev, const struct virtio_gpu_resource_detach_backing *c)
{
  Resource *res = find_resource(dev, c->resource_id);

  if (!res)
    return bad_resource(dev, "RESOURCE_DETACH_BACKING", c->resource_id);
  if (res->blob_size) {
    guest_error(dev, GE_BLOB, "RESOURCE_DETACH_BACKING: %u is a blob (its memory goes with UNREF)",
                res->id);
    return VIRTIO_GPU_RESP_ERR_UNSPEC;
  }
  /* The guest reuses the pages once answered: no sink may still read them,
   * and the image keeps what was transferred. */
  if ((res->backing && backing_in_use(res->backing))
      || (!rect_is_empty(&res->pending) && vgpu_image_is_busy(res->image))) {
    dev->stats.stalls++;
    return RESULT_WAIT;
  }
  materialize(dev, res);
  g_clear_pointer(&res->backing, vgpu_backing_unref);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_assign_uuid(VgpuDevice *dev, const struct virtio_gpu_resource_assign_uuid *c, Response *resp)
{
  Resource *res = find_resource(dev, c->resource_id);

  if (!res)
    return bad_resource(dev, "RESOURCE_ASSIGN_UUID", c->resource_id);
  if (!res->has_uuid) {
    g_autofree char *str = g_uuid_string_random();
    guint j = 0;

    /* "xxxxxxxx-xxxx-..." -> 16 bytes */
    for (const char *p = str; *p && j < 16; p++) {
      if (*p == '-')
        continue;
      res->uuid[j++] = (guint8)(g_ascii_xdigit_value(p[0]) << 4 | g_ascii_xdigit_value(p[1]));
      p++;
    }
    res->has_uuid = TRUE;
  }
  memcpy(resp->uuid.uuid, res->uuid, sizeof res->uuid);
  return VIRTIO_GPU_RESP_OK_RESOURCE_UUID;
}

/* Blob commands (vgpu-blob.h checks them). */

static guint32
blob_error(VgpuDevice *dev, guint32 type, char *message)
{
  guest_error(dev, GE_BLOB, "%s", message);
  g_free(message);
  return type;
}

static guint32
cmd_create_blob(VgpuDevice *dev, VhuElem *elem, const struct virtio_gpu_resource_create_blob *c)
{
  guint max = dev->config.max_resources ? dev->config.max_resources : VGPU_DEFAULT_MAX_RESOURCES;
  VgpuBacking *backing = NULL;
  char *msg = NULL;
  guint32 type;
  Resource *res;

  if (c->resource_id == 0)
    return bad_resource(dev, "RESOURCE_CREATE_BLOB", 0);
  if (find_resource(dev, c->resource_id)) {
    guest_error(dev, GE_RESOURCE_EXISTS, "RESOURCE_CREATE_BLOB: resource %u already exists",
                c->resource_id);
    return VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
  }
  if (g_hash_table_size(dev->resources) >= max) {
    guest_error(dev, GE_RESOURCE_COUNT, "RESOURCE_CREATE_BLOB: limit of %u resources reached", max);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  if (!vgpu_hostmem_charge(dev->hostmem, VGPU_RESOURCE_OVERHEAD)) {
    guest_error(dev, GE_HOSTMEM, "RESOURCE_CREATE_BLOB %u: host memory budget exhausted",
                c->resource_id);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  type = vgpu_blob_create(dev->hostmem, elem, c, &backing, &msg);
  if (type != VIRTIO_GPU_RESP_OK_NODATA) {
    vgpu_hostmem_credit(dev->hostmem, VGPU_RESOURCE_OVERHEAD);
    return blob_error(dev, type, msg);
  }
  vgpu_backing_set_idle_notify(backing, dev->idle_notify);
  res = g_new0(Resource, 1);
  res->id = c->resource_id;
  res->hostmem = dev->hostmem;
  res->backing = backing;
  res->blob_size = c->size;
  g_hash_table_insert(dev->resources, GUINT_TO_POINTER(res->id), res);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

/* Gives blob @res the image of geometry @b (format, stride / 4 x height),
 * so the 2D paths see the blob's rows as a pending transfer of it. */
static guint32
blob_set_geometry(VgpuDevice *dev, Resource *res, const VgpuBlobScanout *b)
{
  g_autoptr(GError) error = NULL;
  VgpuImage *img = res->image;

  if (!img || img->format != b->format || img->width != b->stride / 4u
      || img->height != b->height) {
    img = vgpu_image_new(dev->hostmem, b->format, b->stride / 4u, b->height, &error);
    if (!img) {
      guest_error(dev, GE_BLOB, "SET_SCANOUT_BLOB %u: %s", res->id, error->message);
      return g_error_matches(error, VGPU_IMAGE_ERROR, VGPU_IMAGE_ERROR_INVALID)
                 ? VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
                 : VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
    }
    vgpu_image_set_idle_notify(img, dev->idle_notify);
  } else if (res->pending_offset == b->offset && res->pending.width == b->width) {
    return VIRTIO_GPU_RESP_OK_NODATA;
  } else {
    vgpu_image_ref(img);
  }
  /* One geometry per blob: other scanouts showing it another way go dark. */
  for (guint i = 0; i < dev->config.num_scanouts; i++) {
    if (dev->scanouts[i].resource_id == res->id)
      disable_scanout(dev, i);
  }
  vgpu_image_unref(res->image);
  res->image = img;
  res->pending = (VgpuRect){ 0, 0, b->width, b->height };
  res->pending_offset = b->offset;
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_set_scanout_blob(VgpuDevice *dev, const struct virtio_gpu_set_scanout_blob *c)
{
  VgpuBlobScanout b;
  char *msg = NULL;
  Resource *res;
  Scanout *s;
  guint32 type;

  if (c->scanout_id >= dev->config.num_scanouts) {
    guest_error(dev, GE_SCANOUT_ID, "SET_SCANOUT_BLOB: invalid scanout id %u", c->scanout_id);
    return VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
  }
  if (c->resource_id == 0) {
    disable_scanout(dev, c->scanout_id);
    return VIRTIO_GPU_RESP_OK_NODATA;
  }
  res = find_resource(dev, c->resource_id);
  if (!res)
    return bad_resource(dev, "SET_SCANOUT_BLOB", c->resource_id);
  if (!res->blob_size) {
    guest_error(dev, GE_BLOB, "SET_SCANOUT_BLOB: resource %u is not a blob", res->id);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  type = vgpu_blob_check_scanout(c, res->blob_size, &b, &msg);
  if (type != VIRTIO_GPU_RESP_OK_NODATA)
    return blob_error(dev, type, msg);
  type = blob_set_geometry(dev, res, &b);
  if (type != VIRTIO_GPU_RESP_OK_NODATA)
    return type;
  s = &dev->scanouts[c->scanout_id];
  if (s->resource_id == res->id && rect_equal(&s->rect, &b.rect))
    return VIRTIO_GPU_RESP_OK_NODATA;
  s->resource_id = res->id;
  s->rect = b.rect;
  s->full_pending = TRUE;
  if (s->image != res->image) {
    g_clear_pointer(&s->image, vgpu_image_unref);
    s->image = vgpu_image_ref(res->image);
  }
  sinks_set_scanout(dev, c->scanout_id);
  sinks_scanout_blob(dev, c->scanout_id, res);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_blob(VgpuDevice *dev, VhuElem *elem, const Request *req)
{
  Resource *res;
  char *msg = NULL;
  guint32 type;

  switch (req->hdr.type) {
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB:
      return cmd_create_blob(dev, elem, &req->create_blob);
    case VIRTIO_GPU_CMD_SET_SCANOUT_BLOB:
      return cmd_set_scanout_blob(dev, &req->set_scanout_blob);
    default:
      /* map_blob and unmap_blob start alike */
      res = find_resource(dev, req->map_blob.resource_id);
      if (!res)
        return bad_resource(dev, "RESOURCE_MAP_BLOB", req->map_blob.resource_id);
      type = vgpu_blob_map(res->id, res->blob_size != 0,
                           req->hdr.type == VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB, &msg);
      return blob_error(dev, type, msg);
  }
}

static gboolean
has_feature(VgpuDevice *dev, guint bit)
{
  return (dev->features & (G_GUINT64_CONSTANT(1) << bit)) != 0;
}

/* A command of an optional feature the driver did not negotiate. */
static guint32
not_negotiated(VgpuDevice *dev, const char *what, const char *feature)
{
  guest_error(dev, GE_NOT_NEGOTIATED, "%s without VIRTIO_GPU_F_%s negotiated", what, feature);
  return VIRTIO_GPU_RESP_ERR_UNSPEC;
}

static gsize
command_size(guint32 type)
{
  switch (type) {
    case VIRTIO_GPU_CMD_GET_DISPLAY_INFO:
      return sizeof(struct virtio_gpu_ctrl_hdr);
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_2D:
      return sizeof(struct virtio_gpu_resource_create_2d);
    case VIRTIO_GPU_CMD_RESOURCE_UNREF:
      return sizeof(struct virtio_gpu_resource_unref);
    case VIRTIO_GPU_CMD_SET_SCANOUT:
      return sizeof(struct virtio_gpu_set_scanout);
    case VIRTIO_GPU_CMD_RESOURCE_FLUSH:
      return sizeof(struct virtio_gpu_resource_flush);
    case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D:
      return sizeof(struct virtio_gpu_transfer_to_host_2d);
    case VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING:
      return sizeof(struct virtio_gpu_resource_attach_backing);
    case VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING:
      return sizeof(struct virtio_gpu_resource_detach_backing);
    case VIRTIO_GPU_CMD_GET_EDID:
      return sizeof(struct virtio_gpu_cmd_get_edid);
    case VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID:
      return sizeof(struct virtio_gpu_resource_assign_uuid);
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB:
      return sizeof(struct virtio_gpu_resource_create_blob);
    case VIRTIO_GPU_CMD_SET_SCANOUT_BLOB:
      return sizeof(struct virtio_gpu_set_scanout_blob);
    case VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB:
      return sizeof(struct virtio_gpu_resource_map_blob);
    case VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB:
      return sizeof(struct virtio_gpu_resource_unmap_blob);
    default:
      return 0;
  }
}

/* A display query that cannot be held: answered from the configuration,
 * after the held requests when it carries a fence. */
static void
answer_query_now(VgpuDevice *dev, VhuElem *elem, const Request *req)
{
  Response resp;
  gsize len;

  if (req->hdr.flags & VIRTIO_GPU_FLAG_FENCE)
    vgpu_device_flush(dev);
  dev->stats.display_query_fallbacks++;
  if (req->hdr.type == VIRTIO_GPU_CMD_GET_DISPLAY_INFO) {
    resp_init(&resp, &req->hdr, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
    fill_display_info(dev, &resp, NULL);
    len = sizeof resp.display_info;
  } else {
    resp_init(&resp, &req->hdr, VIRTIO_GPU_RESP_OK_EDID);
    fill_edid(dev, &resp, req->get_edid.scanout, NULL);
    len = sizeof resp.edid;
  }
  complete_ctrl(dev, elem, &req->hdr, &resp, len);
}

/* Offers the request to the extension; TRUE when it took it. */
static gboolean
submit_ext(VgpuDevice *dev, VhuElem *elem, const struct virtio_gpu_ctrl_hdr *hdr)
{
  gsize payload = 0;
  gboolean hold = FALSE;
  guint32 type = dev->ext->command(dev->ext_data, elem, hdr, &payload, &hold);
  Response resp;
  Pending *p;

  if (type == VGPU_EXT_PASS)
    return FALSE;
  resp_init(&resp, hdr, type);
  if (hold || ((hdr->flags & VIRTIO_GPU_FLAG_FENCE) && !g_queue_is_empty(&dev->pending))) {
    p = pending_new(dev, elem, hdr);
    if (p) {
      p->kind = QUERY_EXT;
      p->ready = !hold;
      p->resp = resp;
      p->resp_len = sizeof resp.hdr;
      p->payload_len = payload;
      g_queue_push_tail_link(&dev->pending, &p->link);
      if (hold) {
        p->query = g_new0(VgpuQuery, 1);
        p->query->pending = p;
        dev->ext->hold(dev->ext_data, p->query);
      }
      drain_pending(dev);
      return TRUE;
    }
    if (hold)
      dev->ext->hold(dev->ext_data, NULL);
    vgpu_device_flush(dev);
  }
  complete_ctrl_payload(dev, elem, hdr, &resp, sizeof resp.hdr, payload);
  return TRUE;
}

static gboolean
submit_ctrl(VgpuDevice *dev, VhuElem *elem)
{
  Request req;
  Response resp;
  gsize got, resp_len = sizeof resp.hdr, need;
  guint32 type = VIRTIO_GPU_RESP_ERR_UNSPEC;
  Pending *p;

  memset(&req, 0, sizeof req);
  got = vhu_elem_read(elem, 0, &req, sizeof req);
  if (got < sizeof req.hdr) {
    guest_error(dev, GE_SHORT_REQUEST, "control request of %zu bytes, shorter than a header",
                elem->out_len);
    memset(&req, 0, sizeof req);
    resp_init(&resp, &req.hdr, VIRTIO_GPU_RESP_ERR_UNSPEC);
    complete_ctrl(dev, elem, &req.hdr, &resp, resp_len);
    return TRUE;
  }
  dev->stats.commands++;
  if (dev->ext && submit_ext(dev, elem, &req.hdr))
    return TRUE;
  need = command_size(req.hdr.type);
  if (need == 0) {
    guest_error(dev, GE_UNKNOWN_COMMAND, "unsupported control command 0x%x", req.hdr.type);
    type = VIRTIO_GPU_RESP_ERR_UNSPEC;
    goto answer;
  }
  if (got < need) {
    guest_error(dev, GE_SHORT_REQUEST, "command 0x%x of %zu bytes, needs %zu", req.hdr.type, got,
                need);
    type = VIRTIO_GPU_RESP_ERR_UNSPEC;
    goto answer;
  }

  switch (req.hdr.type) {
    case VIRTIO_GPU_CMD_GET_DISPLAY_INFO:
    case VIRTIO_GPU_CMD_GET_EDID:
      if (req.hdr.type == VIRTIO_GPU_CMD_GET_EDID && !has_feature(dev, VIRTIO_GPU_F_EDID)) {
        type = not_negotiated(dev, "GET_EDID", "EDID");
        goto answer;
      }
      if (req.hdr.type == VIRTIO_GPU_CMD_GET_EDID
          && req.get_edid.scanout >= dev->config.num_scanouts) {
        /* Never forwarded: QEMU does not answer EDID requests for ids it
         * does not have. */
        guest_error(dev, GE_SCANOUT_ID, "GET_EDID: invalid scanout id %u", req.get_edid.scanout);
        type = VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
        goto answer;
      }
      p = pending_new(dev, elem, &req.hdr);
      if (!p) {
        answer_query_now(dev, elem, &req);
        return TRUE;
      }
      if (req.hdr.type == VIRTIO_GPU_CMD_GET_DISPLAY_INFO) {
        p->kind = QUERY_DISPLAY_INFO;
        p->resp_len = sizeof p->resp.display_info;
        resp_init(&p->resp, &req.hdr, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
      } else {
        p->kind = QUERY_EDID;
        p->scanout = req.get_edid.scanout;
        p->resp_len = sizeof p->resp.edid;
        resp_init(&p->resp, &req.hdr, VIRTIO_GPU_RESP_OK_EDID);
      }
      g_queue_push_tail_link(&dev->pending, &p->link);
      if (!pending_query(dev, p) && !p->ready)
        pending_answer(dev, p, NULL, 0);
      drain_pending(dev);
      return TRUE;
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_2D:
      type = cmd_create_2d(dev, &req.create_2d);
      break;
    case VIRTIO_GPU_CMD_RESOURCE_UNREF:
      type = cmd_unref(dev, &req.unref);
      break;
    case VIRTIO_GPU_CMD_SET_SCANOUT:
      type = cmd_set_scanout(dev, &req.set_scanout);
      break;
    case VIRTIO_GPU_CMD_RESOURCE_FLUSH:
      type = cmd_flush(dev, &req.flush);
      break;
    case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D:
      type = cmd_transfer(dev, &req.transfer);
      break;
    case VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING:
      type = cmd_attach_backing(dev, elem, &req.attach);
      break;
    case VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING:
      type = cmd_detach_backing(dev, &req.detach);
      break;
    case VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID:
      if (!has_feature(dev, VIRTIO_GPU_F_RESOURCE_UUID)) {
        type = not_negotiated(dev, "RESOURCE_ASSIGN_UUID", "RESOURCE_UUID");
        break;
      }
      type = cmd_assign_uuid(dev, &req.assign_uuid, &resp);
      if (type == VIRTIO_GPU_RESP_OK_RESOURCE_UUID)
        resp_len = sizeof resp.uuid;
      break;
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB:
    case VIRTIO_GPU_CMD_SET_SCANOUT_BLOB:
    case VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB:
    case VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB:
      if (!has_feature(dev, VIRTIO_GPU_F_RESOURCE_BLOB))
        type = not_negotiated(dev, "a blob command", "RESOURCE_BLOB");
      else
        type = cmd_blob(dev, elem, &req);
      break;
    default:
      g_assert_not_reached();
  }
  if (type == RESULT_WAIT) {
    dev->stats.commands--;
    return FALSE; /* taken again after ops->wake */
  }

answer:
  resp_init(&resp, &req.hdr, type);
  if ((req.hdr.flags & VIRTIO_GPU_FLAG_FENCE) && !g_queue_is_empty(&dev->pending)) {
    /* Earlier requests still wait on a display: hold the fence back, or,
     * with no memory to hold it, answer those from the configuration. */
    p = pending_new(dev, elem, &req.hdr);
    if (!p) {
      vgpu_device_flush(dev);
      complete_ctrl(dev, elem, &req.hdr, &resp, resp_len);
      return TRUE;
    }
    p->ready = TRUE;
    p->resp = resp;
    p->resp_len = resp_len;
    g_queue_push_tail_link(&dev->pending, &p->link);
    drain_pending(dev);
    return TRUE;
  }
  complete_ctrl(dev, elem, &req.hdr, &resp, resp_len);
  return TRUE;
}

/* ------------------------------------------------------------------------ */
/* Cursor queue: no responses, errors are only logged. */

static void
cursor_update(VgpuDevice *dev, const struct virtio_gpu_update_cursor *c)
{
  guint32 pixels[VGPU_CURSOR_SIZE * VGPU_CURSOR_SIZE];
  g_autofree guint8 *live = NULL;
  Scanout *s = &dev->scanouts[c->pos.scanout_id];
  Resource *res;
  VgpuImage *img;

  s->cursor_x = c->pos.x;
  s->cursor_y = c->pos.y;
  if (c->resource_id == 0) {
    s->cursor_defined = FALSE;
    sinks_cursor_move(dev, c->pos.scanout_id, FALSE);
    return;
  }
  res = find_resource(dev, c->resource_id);
  if (!res) {
    bad_resource(dev, "UPDATE_CURSOR", c->resource_id);
    dev->stats.errors++;
    return;
  }
  img = res->image;
  if (!img) {
    guest_error(dev, GE_CURSOR, "UPDATE_CURSOR: blob %u has no geometry", res->id);
    dev->stats.errors++;
    return;
  }
  if (img->width != VGPU_CURSOR_SIZE || img->height != VGPU_CURSOR_SIZE) {
    guest_error(dev, GE_CURSOR, "UPDATE_CURSOR: resource %u is %ux%u, not %ux%u", res->id,
                img->width, img->height, VGPU_CURSOR_SIZE, VGPU_CURSOR_SIZE);
    dev->stats.errors++;
    return;
  }
  if (!rect_is_empty(&res->pending)) {
    /* The pending pixels from the backing, without writing the image (a
     * sink may read it). */
    live = g_memdup2(img->data, (gsize)img->stride * img->height);
    for (guint32 h = 0; h < res->pending.height; h++)
      vgpu_backing_read(res->backing, res->pending_offset + (guint64)h * img->stride,
                        live + (gsize)(res->pending.y + h) * img->stride
                            + (gsize)res->pending.x * 4u,
                        (gsize)res->pending.width * 4u);
  }
  vgpu_format_convert(img->format, live ? live : img->data, img->width, img->height, img->stride, 0,
                      0, VGPU_CURSOR_SIZE, VGPU_CURSOR_SIZE, PIXMAN_a8r8g8b8, (guint8 *)pixels,
                      VGPU_CURSOR_SIZE * 4u);
  s->cursor_defined = TRUE;
  for (guint i = 0; i < dev->sinks->len; i++) {
    Sink *k = &g_array_index(dev->sinks, Sink, i);

    if (k->iface->cursor_update)
      k->iface->cursor_update(k->sink, c->pos.scanout_id, pixels, c->hot_x, c->hot_y, c->pos.x,
                              c->pos.y);
  }
}

static void
submit_cursor(VgpuDevice *dev, VhuElem *elem)
{
  struct virtio_gpu_update_cursor c;

  memset(&c, 0, sizeof c);
  dev->stats.commands++;
  if (vhu_elem_read(elem, 0, &c, sizeof c) < sizeof c) {
    guest_error(dev, GE_SHORT_REQUEST, "cursor request of %zu bytes, needs %zu", elem->out_len,
                sizeof c);
    dev->stats.errors++;
  } else if (c.hdr.type != VIRTIO_GPU_CMD_UPDATE_CURSOR
             && c.hdr.type != VIRTIO_GPU_CMD_MOVE_CURSOR) {
    guest_error(dev, GE_UNKNOWN_COMMAND, "unsupported cursor command 0x%x", c.hdr.type);
    dev->stats.errors++;
  } else if (c.pos.scanout_id >= dev->config.num_scanouts) {
    guest_error(dev, GE_SCANOUT_ID, "cursor: invalid scanout id %u", c.pos.scanout_id);
    dev->stats.errors++;
  } else if (c.hdr.type == VIRTIO_GPU_CMD_UPDATE_CURSOR) {
    cursor_update(dev, &c);
  } else {
    Scanout *s = &dev->scanouts[c.pos.scanout_id];

    s->cursor_x = c.pos.x;
    s->cursor_y = c.pos.y;
    sinks_cursor_move(dev, c.pos.scanout_id, s->cursor_defined && c.resource_id != 0);
  }
  dev->ops.complete(dev->ops_data, VGPU_CURSOR_QUEUE, elem, 0);
}

/* ------------------------------------------------------------------------ */
/* Public API */

gboolean
vgpu_device_config_validate(const VgpuDeviceConfig *config, GError **error)
{
  if (config->num_scanouts < 1 || config->num_scanouts > VGPU_MAX_SCANOUTS) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "number of scanouts must be 1..%u, not %u", VGPU_MAX_SCANOUTS,
                config->num_scanouts);
    return FALSE;
  }
  if (config->width < 16 || config->width > VGPU_EDID_MAX_SIDE || config->height < 16
      || config->height > VGPU_EDID_MAX_SIDE) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "mode %ux%u out of range (each side 16..%u)", config->width, config->height,
                VGPU_EDID_MAX_SIDE);
    return FALSE;
  }
  if (config->max_hostmem < 64 * 1024) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "host memory budget of %" G_GUINT64_FORMAT " bytes is too small (64 KiB at least)",
                config->max_hostmem);
    return FALSE;
  }
  return TRUE;
}

static void
idle_notify_cb(gpointer data)
{
  VgpuDevice *dev = data;

  if (dev->ops.wake)
    dev->ops.wake(dev->ops_data);
}

VgpuDevice *
vgpu_device_new(const VgpuDeviceConfig *config, const VgpuDeviceOps *ops, gpointer data)
{
  VgpuDevice *dev;

  g_return_val_if_fail(vgpu_device_config_validate(config, NULL), NULL);
  g_return_val_if_fail(ops && ops->complete && ops->discard, NULL);
  dev = g_new0(VgpuDevice, 1);
  dev->config = *config;
  dev->ops = *ops;
  dev->ops_data = data;
  dev->hostmem = vgpu_hostmem_new(config->max_hostmem);
  dev->idle_notify = vgpu_notify_new(idle_notify_cb, dev);
  dev->resources = g_hash_table_new_full(NULL, NULL, NULL, resource_free);
  dev->sinks = g_array_new(FALSE, FALSE, sizeof(Sink));
  g_queue_init(&dev->pending);
  return dev;
}

static void
clear_state(VgpuDevice *dev)
{
  discard_pending(dev);
  for (guint i = 0; i < dev->config.num_scanouts; i++) {
    Scanout *s = &dev->scanouts[i];

    disable_scanout(dev, i);
    if (s->cursor_defined) {
      s->cursor_defined = FALSE;
      sinks_cursor_move(dev, i, FALSE);
    }
    s->cursor_x = s->cursor_y = 0;
  }
  dev->last_found = NULL;
  g_hash_table_remove_all(dev->resources);
  dev->events_read = 0;
  if (dev->ext && dev->ext->reset)
    dev->ext->reset(dev->ext_data);
}

void
vgpu_device_free(VgpuDevice *dev)
{
  if (!dev)
    return;
  g_warn_if_fail(dev->sinks->len == 0);
  clear_state(dev);
  vgpu_notify_disarm(dev->idle_notify);
  vgpu_notify_unref(dev->idle_notify);
  g_hash_table_unref(dev->resources);
  g_array_unref(dev->sinks);
  vgpu_hostmem_unref(dev->hostmem);
  g_free(dev);
}

void
vgpu_device_reset(VgpuDevice *dev)
{
  clear_state(dev);
  dev->features = 0;
}

/* Tells sink @k, attached late, what scanout @id shows now: set_scanout,
 * the blob's pages, and the whole current picture, from guest memory when
 * the sink reads it and it holds all of it, else from the image (pending
 * transfers copied in first).  An image a sink still reads cannot take that
 * copy: the next flush then sends the whole scanout to every sink. */
static void
sink_replay(VgpuDevice *dev, const Sink *k, guint id)
{
  Scanout *s = &dev->scanouts[id];
  Resource *res = find_resource(dev, s->resource_id);
  VgpuRect common;

  if (!s->image)
    return;
  if (res && res->image != s->image)
    res = NULL; /* an external (3D) scanout: its image is the picture */
  if (k->iface->set_scanout)
    k->iface->set_scanout(k->sink, id, s->image, &s->rect);
  if (res && res->blob_size && k->iface->scanout_blob)
    k->iface->scanout_blob(k->sink, id, res->backing,
                           res->pending_offset + (guint64)s->rect.y * res->image->stride
                               + (guint64)s->rect.x * 4u,
                           res->image->stride);
  if (s->full_pending)
    return; /* the next flush sends it all anyway */
  if (res && res->backing && vgpu_rect_intersect(&s->rect, &res->pending, &common)) {
    if (k->iface->update_guest && rect_contains(&res->pending, &s->rect)) {
      k->iface->update_guest(k->sink, id, res->image, res->backing,
                             pending_offset_at(res, s->rect.x, s->rect.y), &s->rect, 0, 0);
      return;
    }
    if (vgpu_image_is_busy(res->image)) {
      s->full_pending = TRUE;
      return;
    }
    materialize(dev, res);
  }
  if (k->iface->update)
    k->iface->update(k->sink, id, s->image, &s->rect, 0, 0);
}

void
vgpu_device_add_sink(VgpuDevice *dev, const VgpuSinkIface *iface, gpointer sink)
{
  Sink k = { iface, sink };

  g_array_append_val(dev->sinks, k);
  for (guint i = 0; i < dev->config.num_scanouts; i++)
    sink_replay(dev, &k, i);
}

void
vgpu_device_remove_sink(VgpuDevice *dev, gpointer sink)
{
  for (guint i = 0; i < dev->sinks->len; i++) {
    if (g_array_index(dev->sinks, Sink, i).sink == sink) {
      g_array_remove_index(dev->sinks, i);
      return;
    }
  }
}

void
vgpu_device_set_features(VgpuDevice *dev, guint64 features)
{
  dev->features = features;
}

guint64
vgpu_device_get_features(VgpuDevice *dev)
{
  return dev->features;
}

void
vgpu_device_get_config(VgpuDevice *dev, guint8 *config, gsize size)
{
  struct virtio_gpu_config c = {
    .events_read = dev->events_read,
    .events_clear = 0,
    .num_scanouts = dev->config.num_scanouts,
    .num_capsets = dev->ext ? dev->ext->num_capsets : 0,
  };

  memset(config, 0, size);
  memcpy(config, &c, MIN(size, sizeof c));
}

void
vgpu_device_set_config(VgpuDevice *dev, guint32 offset, const guint8 *data, gsize size)
{
  const guint32 clear_at = offsetof(struct virtio_gpu_config, events_clear);
  guint32 clear;

  /* Only events_clear is writable; it clears the bits it names. */
  if (offset > clear_at || size < clear_at - offset + sizeof clear)
    return;
  memcpy(&clear, data + (clear_at - offset), sizeof clear);
  dev->events_read &= ~clear;
}

gboolean
vgpu_device_submit(VgpuDevice *dev, guint qidx, VhuElem *elem)
{
  switch (qidx) {
    case VGPU_CTRL_QUEUE:
      return submit_ctrl(dev, elem);
    case VGPU_CURSOR_QUEUE:
      submit_cursor(dev, elem);
      return TRUE;
    default:
      dev->ops.complete(dev->ops_data, qidx, elem, 0);
      return TRUE;
  }
}

void
vgpu_device_set_ext(VgpuDevice *dev, const VgpuDeviceExt *ext, gpointer data)
{
  dev->ext = ext;
  dev->ext_data = data;
}

gboolean
vgpu_device_has_resource(VgpuDevice *dev, guint32 id)
{
  return find_resource(dev, id) != NULL;
}

void
vgpu_device_ext_set_scanout(VgpuDevice *dev, guint id, guint32 resource_id, VgpuImage *image,
                            const VgpuRect *rect)
{
  Scanout *s = &dev->scanouts[id];

  g_return_if_fail(id < dev->config.num_scanouts);
  if (!image) {
    disable_scanout(dev, id);
    return;
  }
  s->resource_id = resource_id;
  s->rect = *rect;
  s->full_pending = TRUE;
  if (s->image != image) {
    g_clear_pointer(&s->image, vgpu_image_unref);
    s->image = vgpu_image_ref(image);
  }
  sinks_set_scanout(dev, id);
}

void
vgpu_device_ext_flush(VgpuDevice *dev, guint id, const VgpuRect *rect)
{
  Scanout *s = &dev->scanouts[id];
  VgpuRect part;

  g_return_if_fail(id < dev->config.num_scanouts);
  if (!s->image)
    return;
  if (s->full_pending)
    part = s->rect;
  else if (!vgpu_rect_intersect(rect, &s->rect, &part))
    return;
  s->full_pending = FALSE;
  sinks_update(dev, id, &part);
}

void
vgpu_device_get_stats(VgpuDevice *dev, VgpuDeviceStats *stats)
{
  *stats = dev->stats;
  stats->resources = g_hash_table_size(dev->resources);
  stats->hostmem_used = vgpu_hostmem_get_used(dev->hostmem);
}

VgpuHostmem *
vgpu_device_get_hostmem(VgpuDevice *dev)
{
  return dev->hostmem;
}

VgpuImage *
vgpu_device_get_resource_image(VgpuDevice *dev, guint32 resource_id)
{
  Resource *res = find_resource(dev, resource_id);

  if (!res || !res->image)
    return NULL;
  if (!vgpu_image_is_busy(res->image))
    materialize(dev, res);
  return res->image;
}

void
vgpu_device_sync_images(VgpuDevice *dev)
{
  GHashTableIter it;
  gpointer res;

  g_hash_table_iter_init(&it, dev->resources);
  while (g_hash_table_iter_next(&it, NULL, &res)) {
    VgpuImage *img = ((Resource *)res)->image;

    if (img && !vgpu_image_is_busy(img))
      materialize(dev, res);
  }
}
