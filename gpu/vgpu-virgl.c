/* vgpu-virgl.c: the 3D command set through virglrenderer. */
#include "vgpu-virgl.h"

#include <gio/gio.h>
#include <string.h>

#include "config.h"

#ifndef HAVE_VIRGL

gboolean
vgpu_virgl_supported(void)
{
  return FALSE;
}

VgpuVirgl *
vgpu_virgl_new(const VgpuVirglConfig *config, const VgpuVirglOptions *options, VgpuDevice *dev,
               GError **error)
{
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "virgl: built without virglrenderer");
  return NULL;
}

void
vgpu_virgl_free(VgpuVirgl *virgl)
{}

const char *
vgpu_virgl_get_renderer(VgpuVirgl *virgl)
{
  return NULL;
}

void
vgpu_virgl_get_stats(VgpuVirgl *virgl, VgpuVirglStats *stats)
{
  memset(stats, 0, sizeof *stats);
}

#else /* HAVE_VIRGL */

#define VIRGL_RENDERER_UNSTABLE_APIS 1
#include <epoxy/egl.h>
#include <epoxy/gl.h>
#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <stddef.h>
#include <unistd.h>
#include <virgl/virglrenderer.h>

#include "vgpu-backing.h"
#include "vgpu-format.h"

/* Declared but not defined by virglrenderer.h: its layout is virgl_hw.h's. */
struct virgl_box {
  uint32_t x, y, z;
  uint32_t w, h, d;
};

/* virglrenderer's pipe targets and limits we check against. */
#define PIPE_BUFFER             0u
#define PIPE_TEXTURE_1D         1u
#define PIPE_TEXTURE_2D         2u
#define PIPE_TEXTURE_3D         3u
#define PIPE_TEXTURE_CUBE       4u
#define PIPE_TEXTURE_RECT       5u
#define PIPE_TEXTURE_1D_ARRAY   6u
#define PIPE_TEXTURE_2D_ARRAY   7u
#define PIPE_TEXTURE_CUBE_ARRAY 8u
#define MAX_TEXTURE_SIZE        16384u
#define MAX_TEXTURE_3D_SIZE     2048u
#define MAX_ARRAY_LAYERS        2048u
#define MAX_LEVELS              15u /* log2(16384) + 1 */
#define MAX_SAMPLES             32u
#define MAX_FORMAT              512u
#define MAX_BUFFER_SIZE         (1u << 30)
#define GLOBAL_RING             G_MAXUINT32 /* timeline of fences without a ring */

typedef enum {
  VE_SHORT,
  VE_CONTEXT,
  VE_RESOURCE,
  VE_PARAMETER,
  VE_HOSTMEM,
  VE_RENDERER,
  VE_BACKING,
  VE_N_KINDS
} VirglError;

#define LOG_INTERVAL_US (60 * G_USEC_PER_SEC)

typedef struct {
  guint32 id;
  guint32 target, format, width, height, depth, array_size, last_level, nr_samples;
  guint64 charge;
  VgpuBacking *backing;
  GArray *iov; /* struct iovec, what virglrenderer was given */
  /* Scanouts: the pixels read back for the sinks, and what could not be
   * read while a sink still read them. */
  VgpuImage *shadow;
  guint32 scanouts; /* bit per scanout showing it */
  VgpuRect damage;
} Resource;

typedef struct {
  guint32 id;
  guint32 capset; /* 0: created without CONTEXT_INIT */
} Context;

typedef struct {
  guint32 ctx_id;
  guint32 ring; /* GLOBAL_RING or ring_idx */
  guint64 seq;
  VgpuQuery *query; /* NULL until held */
  gboolean retired; /* before it was held */
  gboolean orphan;  /* the device could not hold it */
} Fence;

struct _VgpuVirgl {
  VgpuDevice *dev;
  VgpuVirglOptions opts;
  VgpuHostmem *hostmem;
  GHashTable *resources; /* id -> Resource */
  GHashTable *contexts;  /* id -> Context */
  GQueue fences;         /* Fence, in creation order */
  Fence *last;           /* created by the command being handled */
  guint64 features;
  guint64 next_seq;
  guint32 capset_ver[VGPU_VIRGL_NUM_CAPSETS + 1], capset_size[VGPU_VIRGL_NUM_CAPSETS + 1];
  guint8 *capset_data[VGPU_VIRGL_NUM_CAPSETS + 1];
  GSource *poll_source; /* THREAD_SYNC's eventfd, or a timer */
  int poll_fd;          /* -1: no eventfd, a timer while fences wait */
  gboolean timer;
  gboolean reset_pending; /* renderer to clear before its next use */
  GPtrArray *graveyard;   /* Resources dropped by a reset from another thread */
  GArray *dead_contexts;  /* guint32 ids, likewise */
  char *renderer;
  guint num_scanouts;
  VgpuNotify *idle_notify; /* a shadow image's last reader left */
  GMutex idle_lock;        /* guards idle_source: the notify comes from any thread */
  GSource *idle_source;    /* readbacks deferred until then */
  gboolean dmabuf_export;  /* EGL_MESA_image_dma_buf_export */
  VgpuVirglStats stats;
  gint64 last_log[VE_N_KINDS];
  guint64 suppressed[VE_N_KINDS];
};

static const VgpuDeviceExt virgl_ext;

G_GNUC_PRINTF(3, 4)
static void
guest_error(VgpuVirgl *v, VirglError kind, const char *format, ...)
{
  gint64 now = g_get_monotonic_time();
  g_autofree char *msg = NULL;
  va_list args;

  if (v->last_log[kind] != 0 && now - v->last_log[kind] < LOG_INTERVAL_US) {
    v->suppressed[kind]++;
    return;
  }
  va_start(args, format);
  msg = g_strdup_vprintf(format, args);
  va_end(args);
  if (v->suppressed[kind] > 0)
    g_warning("guest: virgl: %s (%" G_GUINT64_FORMAT " similar errors suppressed)", msg,
              v->suppressed[kind]);
  else
    g_warning("guest: virgl: %s", msg);
  v->last_log[kind] = now;
  v->suppressed[kind] = 0;
}

gboolean
vgpu_virgl_supported(void)
{
  return TRUE;
}

/* ------------------------------------------------------------------------ */
/* Records */

static void
resource_release(VgpuVirgl *v, Resource *res)
{
  if (res->shadow)
    vgpu_image_unref(res->shadow);
  if (res->backing)
    vgpu_backing_unref(res->backing);
  if (res->iov)
    g_array_unref(res->iov);
  vgpu_hostmem_credit(v->hostmem, res->charge);
  g_free(res);
}

/* Takes @res out of the renderer and frees it (render thread). */
static void
resource_destroy(VgpuVirgl *v, Resource *res)
{
  struct iovec *iov = NULL;
  int n = 0;

  if (res->backing)
    virgl_renderer_resource_detach_iov((int)res->id, &iov, &n);
  virgl_renderer_resource_unref(res->id);
  resource_release(v, res);
}

static Resource *
find_resource(VgpuVirgl *v, guint32 id)
{
  return id ? g_hash_table_lookup(v->resources, GUINT_TO_POINTER(id)) : NULL;
}

static Context *
find_context(VgpuVirgl *v, guint32 id)
{
  return id ? g_hash_table_lookup(v->contexts, GUINT_TO_POINTER(id)) : NULL;
}

/* A reset asked for from another thread, done before the renderer is used:
 * every context and resource of the guest goes.  (Not virgl_renderer_reset,
 * which also stops the fence thread for good.) */
static void
finish_reset(VgpuVirgl *v)
{
  if (!v->reset_pending)
    return;
  v->reset_pending = FALSE;
  for (guint i = 0; i < v->dead_contexts->len; i++)
    virgl_renderer_context_destroy(g_array_index(v->dead_contexts, guint32, i));
  g_array_set_size(v->dead_contexts, 0);
  /* Only now may the guest memory virglrenderer was given go. */
  for (guint i = 0; i < v->graveyard->len; i++)
    resource_destroy(v, v->graveyard->pdata[i]);
  g_ptr_array_set_size(v->graveyard, 0);
  v->stats.resets++;
}

/* ------------------------------------------------------------------------ */
/* Fences */

static void fence_source_update(VgpuVirgl *v);

/* Finishes @f's request (or marks it for hold()). */
static void
fence_finish(VgpuVirgl *v, GList *link)
{
  Fence *f = link->data;

  g_queue_delete_link(&v->fences, link);
  if (f == v->last) {
    /* Retired inside the command that made it: finished once held. */
    f->retired = TRUE;
    return;
  }
  v->stats.fences++;
  if (f->query)
    vgpu_device_query_done(v->dev, f->query, NULL, 0);
  g_free(f);
}

/* Every fence of timeline (@ctx_id, @ring) up to @seq is done. */
static void
retire(VgpuVirgl *v, guint32 ctx_id, guint32 ring, guint64 seq, gboolean wrap32)
{
  GList *l = v->fences.head;

  while (l) {
    GList *next = l->next;
    Fence *f = l->data;
    gboolean done = wrap32 ? (gint32)((guint32)seq - (guint32)f->seq) >= 0 : f->seq <= seq;

    if (f->ring == ring && (ring == GLOBAL_RING || f->ctx_id == ctx_id) && done)
      fence_finish(v, l);
    l = next;
  }
}

static void
cb_write_fence(void *cookie, uint32_t fence)
{
  retire(cookie, 0, GLOBAL_RING, fence, TRUE);
}

static void
cb_write_context_fence(void *cookie, uint32_t ctx_id, uint32_t ring_idx, uint64_t fence_id)
{
  retire(cookie, ctx_id, ring_idx, fence_id, FALSE);
}

/* Every fence pending on @ctx_id's rings completes (the context goes). */
static void
retire_context(VgpuVirgl *v, guint32 ctx_id)
{
  GList *l = v->fences.head;

  while (l) {
    GList *next = l->next;
    Fence *f = l->data;

    if (f->ring != GLOBAL_RING && f->ctx_id == ctx_id)
      fence_finish(v, l);
    l = next;
  }
}

static gboolean
on_poll(gpointer data)
{
  VgpuVirgl *v = data;

  v->opts.lock(v->opts.lock_data);
  finish_reset(v);
  virgl_renderer_poll();
  if (v->timer && g_queue_is_empty(&v->fences)) {
    g_clear_pointer(&v->poll_source, g_source_unref);
    v->opts.unlock(v->opts.lock_data);
    return G_SOURCE_REMOVE;
  }
  v->opts.unlock(v->opts.lock_data);
  return G_SOURCE_CONTINUE;
}

static gboolean
on_poll_fd(gint fd, GIOCondition cond, gpointer data)
{
  return on_poll(data);
}

static void
poll_source_clear(VgpuVirgl *v)
{
  if (v->poll_source) {
    g_source_destroy(v->poll_source);
    g_clear_pointer(&v->poll_source, g_source_unref);
  }
}

/* Watches the renderer's eventfd (THREAD_SYNC), if it has one now. */
static void
poll_source_setup(VgpuVirgl *v)
{
  poll_source_clear(v);
  v->poll_fd = virgl_renderer_get_poll_fd();
  v->timer = v->poll_fd < 0;
  if (v->timer) {
    fence_source_update(v);
    return;
  }
  v->poll_source = g_unix_fd_source_new(v->poll_fd, G_IO_IN);
  g_source_set_callback(v->poll_source, G_SOURCE_FUNC(on_poll_fd), v, NULL);
  g_source_attach(v->poll_source, v->opts.context);
}

/* Without a poll fd (no THREAD_SYNC), a timer runs while fences wait. */
static void
fence_source_update(VgpuVirgl *v)
{
  if (!v->timer || v->poll_source || g_queue_is_empty(&v->fences))
    return;
  v->poll_source = g_timeout_source_new(1);
  g_source_set_callback(v->poll_source, on_poll, v, NULL);
  g_source_attach(v->poll_source, v->opts.context);
}

/* A fence after the command being handled; FALSE if virglrenderer refused. */
static gboolean
fence_create(VgpuVirgl *v, const struct virtio_gpu_ctrl_hdr *hdr)
{
  gboolean per_ring = (hdr->flags & VIRTIO_GPU_FLAG_INFO_RING_IDX)
                      && (v->features & (1ull << VIRTIO_GPU_F_CONTEXT_INIT)) && hdr->ctx_id != 0
                      && find_context(v, hdr->ctx_id);
  Fence *f = g_new0(Fence, 1);
  int ret;

  f->seq = ++v->next_seq;
  f->ctx_id = hdr->ctx_id;
  f->ring = per_ring ? hdr->ring_idx : GLOBAL_RING;
  if (per_ring)
    ret = virgl_renderer_context_create_fence(hdr->ctx_id, VIRGL_RENDERER_FENCE_FLAG_MERGEABLE,
                                              hdr->ring_idx, f->seq);
  else
    ret = virgl_renderer_create_fence((int)(guint32)f->seq, 0);
  if (ret != 0) {
    g_free(f);
    return FALSE;
  }
  g_queue_push_tail(&v->fences, f);
  v->last = f;
  return TRUE;
}

/* ------------------------------------------------------------------------ */
/* Commands */

typedef union {
  struct virtio_gpu_ctrl_hdr hdr;
  struct virtio_gpu_get_capset_info capset_info;
  struct virtio_gpu_get_capset capset;
  struct virtio_gpu_ctx_create ctx_create;
  struct virtio_gpu_ctx_destroy ctx_destroy;
  struct virtio_gpu_ctx_resource ctx_resource;
  struct virtio_gpu_resource_create_3d create_3d;
  struct virtio_gpu_transfer_host_3d transfer_3d;
  struct virtio_gpu_cmd_submit submit;
  struct virtio_gpu_resource_create_2d create_2d;
  struct virtio_gpu_resource_unref unref;
  struct virtio_gpu_resource_attach_backing attach;
  struct virtio_gpu_resource_detach_backing detach;
  struct virtio_gpu_transfer_to_host_2d transfer_2d;
  struct virtio_gpu_set_scanout set_scanout;
  struct virtio_gpu_resource_flush flush;
} Request;

static gsize
command_size(guint32 type)
{
  switch (type) {
    case VIRTIO_GPU_CMD_GET_CAPSET_INFO:
      return sizeof(struct virtio_gpu_get_capset_info);
    case VIRTIO_GPU_CMD_GET_CAPSET:
      return sizeof(struct virtio_gpu_get_capset);
    case VIRTIO_GPU_CMD_CTX_CREATE:
      return sizeof(struct virtio_gpu_ctx_create);
    case VIRTIO_GPU_CMD_CTX_DESTROY:
      return sizeof(struct virtio_gpu_ctx_destroy);
    case VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE:
    case VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE:
      return sizeof(struct virtio_gpu_ctx_resource);
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_3D:
      return sizeof(struct virtio_gpu_resource_create_3d);
    case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D:
    case VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D:
      return sizeof(struct virtio_gpu_transfer_host_3d);
    case VIRTIO_GPU_CMD_SUBMIT_3D:
      return sizeof(struct virtio_gpu_cmd_submit);
    default:
      return 0;
  }
}

/* The resource id of a 2D-model command that names a 3D resource. */
static gboolean
shared_command_id(const Request *req, gsize got, guint32 *id)
{
  switch (req->hdr.type) {
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_2D:
      if (got < sizeof req->create_2d)
        return FALSE;
      *id = req->create_2d.resource_id;
      return TRUE;
    case VIRTIO_GPU_CMD_RESOURCE_UNREF:
      if (got < sizeof req->unref)
        return FALSE;
      *id = req->unref.resource_id;
      return TRUE;
    case VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING:
      if (got < sizeof req->attach)
        return FALSE;
      *id = req->attach.resource_id;
      return TRUE;
    case VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING:
      if (got < sizeof req->detach)
        return FALSE;
      *id = req->detach.resource_id;
      return TRUE;
    case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D:
      if (got < sizeof req->transfer_2d)
        return FALSE;
      *id = req->transfer_2d.resource_id;
      return TRUE;
    case VIRTIO_GPU_CMD_SET_SCANOUT:
      if (got < sizeof req->set_scanout)
        return FALSE;
      *id = req->set_scanout.resource_id;
      return TRUE;
    case VIRTIO_GPU_CMD_RESOURCE_FLUSH:
      if (got < sizeof req->flush)
        return FALSE;
      *id = req->flush.resource_id;
      return TRUE;
    default:
      return FALSE;
  }
}

static guint32
bad_context(VgpuVirgl *v, const char *what, guint32 id)
{
  guest_error(v, VE_CONTEXT, "%s: invalid context id %u", what, id);
  return VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID;
}

static guint32
bad_resource(VgpuVirgl *v, const char *what, guint32 id)
{
  guest_error(v, VE_RESOURCE, "%s: invalid resource id %u", what, id);
  return VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
}

static guint32
cmd_capset_info(VgpuVirgl *v, const struct virtio_gpu_get_capset_info *c, VhuElem *elem,
                gsize *payload)
{
  struct virtio_gpu_resp_capset_info r = { 0 };
  const gsize at = offsetof(struct virtio_gpu_resp_capset_info, capset_id);

  if (c->capset_index >= VGPU_VIRGL_NUM_CAPSETS) {
    guest_error(v, VE_PARAMETER, "GET_CAPSET_INFO: index %u out of range (%u capsets)",
                c->capset_index, VGPU_VIRGL_NUM_CAPSETS);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  r.capset_id = c->capset_index + 1; /* VIRGL, VIRGL2 */
  r.capset_max_version = v->capset_ver[r.capset_id];
  r.capset_max_size = v->capset_size[r.capset_id];
  *payload = vhu_elem_write(elem, at, (const guint8 *)&r + at, sizeof r - at);
  return VIRTIO_GPU_RESP_OK_CAPSET_INFO;
}

static guint32
cmd_capset(VgpuVirgl *v, const struct virtio_gpu_get_capset *c, VhuElem *elem, gsize *payload)
{
  const gsize at = sizeof(struct virtio_gpu_ctrl_hdr);
  guint32 id = c->capset_id;

  if (id == 0 || id > VGPU_VIRGL_NUM_CAPSETS || c->capset_version > v->capset_ver[id]) {
    guest_error(v, VE_PARAMETER, "GET_CAPSET: no capset %u version %u", id, c->capset_version);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (elem->in_len < at + v->capset_size[id]) {
    guest_error(v, VE_SHORT, "GET_CAPSET %u: %zu-byte response buffer for %u bytes", id,
                elem->in_len, v->capset_size[id]);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  *payload = vhu_elem_write(elem, at, v->capset_data[id], v->capset_size[id]);
  return VIRTIO_GPU_RESP_OK_CAPSET;
}

static guint32
cmd_ctx_create(VgpuVirgl *v, const struct virtio_gpu_ctx_create *c, guint32 ctx_id)
{
  char name[sizeof c->debug_name + 1];
  guint32 capset = 0;
  Context *ctx;
  int ret;

  if (ctx_id == 0 || find_context(v, ctx_id)) {
    guest_error(v, VE_CONTEXT, "CTX_CREATE: context id %u %s", ctx_id,
                ctx_id ? "already exists" : "is reserved");
    return VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID;
  }
  if (c->nlen > sizeof c->debug_name) {
    guest_error(v, VE_PARAMETER, "CTX_CREATE %u: name of %u bytes", ctx_id, c->nlen);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (v->features & (1ull << VIRTIO_GPU_F_CONTEXT_INIT)) {
    capset = c->context_init & VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK;
    if (capset > VGPU_VIRGL_NUM_CAPSETS
        || (c->context_init & ~(guint32)VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK)) {
      guest_error(v, VE_PARAMETER, "CTX_CREATE %u: context_init 0x%x (capsets 1..%u)", ctx_id,
                  c->context_init, VGPU_VIRGL_NUM_CAPSETS);
      return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
    }
  }
  if (g_hash_table_size(v->contexts) >= VGPU_VIRGL_MAX_CONTEXTS) {
    guest_error(v, VE_HOSTMEM, "CTX_CREATE %u: limit of %u contexts reached", ctx_id,
                VGPU_VIRGL_MAX_CONTEXTS);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  if (!vgpu_hostmem_charge(v->hostmem, VGPU_VIRGL_CONTEXT_CHARGE)) {
    guest_error(v, VE_HOSTMEM, "CTX_CREATE %u: host memory budget exhausted", ctx_id);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  memcpy(name, c->debug_name, c->nlen);
  name[c->nlen] = '\0';
  ret = capset ? virgl_renderer_context_create_with_flags(ctx_id, capset, c->nlen, name)
               : virgl_renderer_context_create(ctx_id, c->nlen, name);
  if (ret != 0) {
    vgpu_hostmem_credit(v->hostmem, VGPU_VIRGL_CONTEXT_CHARGE);
    guest_error(v, VE_RENDERER, "CTX_CREATE %u: the renderer refused it (%d)", ctx_id, ret);
    return VIRTIO_GPU_RESP_ERR_UNSPEC;
  }
  ctx = g_new0(Context, 1);
  ctx->id = ctx_id;
  ctx->capset = capset;
  g_hash_table_insert(v->contexts, GUINT_TO_POINTER(ctx_id), ctx);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_ctx_destroy(VgpuVirgl *v, guint32 ctx_id)
{
  if (!find_context(v, ctx_id))
    return bad_context(v, "CTX_DESTROY", ctx_id);
  virgl_renderer_context_destroy(ctx_id);
  /* virglrenderer drops the context's pending fences without retiring them. */
  retire_context(v, ctx_id);
  g_hash_table_remove(v->contexts, GUINT_TO_POINTER(ctx_id));
  vgpu_hostmem_credit(v->hostmem, VGPU_VIRGL_CONTEXT_CHARGE);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_ctx_resource(VgpuVirgl *v, const struct virtio_gpu_ctx_resource *c, guint32 ctx_id,
                 gboolean attach)
{
  const char *what = attach ? "CTX_ATTACH_RESOURCE" : "CTX_DETACH_RESOURCE";

  if (!find_context(v, ctx_id))
    return bad_context(v, what, ctx_id);
  /* The guest driver attaches every resource, its 2D dumb buffers too:
   * those live in the 2D model, with nothing in the renderer to attach. */
  if (!find_resource(v, c->resource_id) && vgpu_device_has_resource(v->dev, c->resource_id))
    return VIRTIO_GPU_RESP_OK_NODATA;
  if (!find_resource(v, c->resource_id))
    return bad_resource(v, what, c->resource_id);
  if (attach)
    virgl_renderer_ctx_attach_resource((int)ctx_id, (int)c->resource_id);
  else
    virgl_renderer_ctx_detach_resource((int)ctx_id, (int)c->resource_id);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

/* What the renderer keeps for a resource, roughly (see the header). */
static gboolean
resource_charge(const struct virtio_gpu_resource_create_3d *c, guint64 *charge)
{
  guint64 texels = 0, w = c->width, h = c->height, d = c->depth;

  if (c->target == PIPE_BUFFER) {
    *charge = VGPU_RESOURCE_OVERHEAD + c->width;
    return TRUE;
  }
  d = MAX(d, 1u);
  for (guint32 l = 0; l <= c->last_level; l++) {
    texels += w * h * d;
    w = MAX(w / 2, 1);
    h = MAX(h / 2, 1);
    d = MAX(d / 2, 1);
  }
  /* Each factor is bounded (see check_create_3d): no overflow below 2^64. */
  *charge = VGPU_RESOURCE_OVERHEAD + texels * MAX(c->array_size, 1u) * MAX(c->nr_samples, 1u) * 4u;
  return TRUE;
}

static gboolean
check_create_3d(const struct virtio_gpu_resource_create_3d *in, const char **why)
{
  /* Mesa sends 0 for a depth or layer count of 1 (buffers, 2D textures). */
  struct virtio_gpu_resource_create_3d n = *in;
  const struct virtio_gpu_resource_create_3d *c = &n;

  n.depth = MAX(n.depth, 1u);
  n.array_size = MAX(n.array_size, 1u);
  guint32 max_side = c->target == PIPE_TEXTURE_3D ? MAX_TEXTURE_3D_SIZE : MAX_TEXTURE_SIZE;
  guint32 biggest = MAX(MAX(c->width, c->height), c->depth);

  *why = NULL;
  if (c->target > PIPE_TEXTURE_CUBE_ARRAY)
    *why = "unknown target";
  else if (c->format == 0 || c->format >= MAX_FORMAT)
    *why = "unknown format";
  else if (c->width == 0 || c->height == 0)
    *why = "empty";
  else if (c->target == PIPE_BUFFER)
    *why = c->width > MAX_BUFFER_SIZE || c->height != 1 || c->depth != 1 || c->array_size != 1
                   || c->last_level != 0 || c->nr_samples > 1
               ? "bad buffer size"
               : NULL;
  else if (c->width > max_side || c->height > max_side || c->depth > MAX_TEXTURE_3D_SIZE)
    *why = "too large";
  else if (c->target != PIPE_TEXTURE_3D && c->depth != 1)
    *why = "depth on a texture that is not 3D";
  else if ((c->target == PIPE_TEXTURE_1D || c->target == PIPE_TEXTURE_1D_ARRAY) && c->height != 1)
    *why = "height on a 1D texture";
  else if (c->array_size > MAX_ARRAY_LAYERS
           || ((c->target == PIPE_TEXTURE_1D || c->target == PIPE_TEXTURE_2D
                || c->target == PIPE_TEXTURE_3D || c->target == PIPE_TEXTURE_RECT)
               && c->array_size != 1)
           || (c->target == PIPE_TEXTURE_CUBE && c->array_size != 6)
           || (c->target == PIPE_TEXTURE_CUBE_ARRAY && c->array_size % 6 != 0))
    *why = "bad array size";
  else if (c->last_level >= MAX_LEVELS || (1ull << c->last_level) > biggest)
    *why = "too many levels";
  else if (c->nr_samples > MAX_SAMPLES || (c->nr_samples > 1 && c->last_level != 0))
    *why = "bad sample count";
  return *why == NULL;
}

static guint32
cmd_create_3d(VgpuVirgl *v, const struct virtio_gpu_resource_create_3d *c)
{
  struct virgl_renderer_resource_create_args args = {
    .handle = c->resource_id,
    .target = c->target,
    .format = c->format,
    .bind = c->bind,
    .width = c->width,
    .height = c->height,
    .depth = c->depth,
    .array_size = c->array_size,
    .last_level = c->last_level,
    .nr_samples = c->nr_samples,
    .flags = c->flags,
  };
  const char *why;
  guint64 charge;
  Resource *res;
  int ret;

  if (c->resource_id == 0)
    return bad_resource(v, "RESOURCE_CREATE_3D", 0);
  if (find_resource(v, c->resource_id) || vgpu_device_has_resource(v->dev, c->resource_id)) {
    guest_error(v, VE_RESOURCE, "RESOURCE_CREATE_3D: resource %u already exists", c->resource_id);
    return VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
  }
  if (!check_create_3d(c, &why)) {
    guest_error(v, VE_PARAMETER,
                "RESOURCE_CREATE_3D %u: %s (target %u format %u %ux%ux%u, %u layers, %u levels, "
                "%u samples)",
                c->resource_id, why, c->target, c->format, c->width, c->height, c->depth,
                c->array_size, c->last_level + 1, c->nr_samples);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (g_hash_table_size(v->resources) >= VGPU_VIRGL_MAX_RESOURCES) {
    guest_error(v, VE_HOSTMEM, "RESOURCE_CREATE_3D: limit of %u resources reached",
                VGPU_VIRGL_MAX_RESOURCES);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  resource_charge(c, &charge);
  if (!vgpu_hostmem_charge(v->hostmem, charge)) {
    guest_error(v, VE_HOSTMEM,
                "RESOURCE_CREATE_3D %u: %" G_GUINT64_FORMAT " bytes exceed the host memory budget",
                c->resource_id, charge);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  ret = virgl_renderer_resource_create(&args, NULL, 0);
  if (ret != 0) {
    vgpu_hostmem_credit(v->hostmem, charge);
    guest_error(v, VE_RENDERER, "RESOURCE_CREATE_3D %u: the renderer refused it (%d)",
                c->resource_id, ret);
    return VIRTIO_GPU_RESP_ERR_UNSPEC;
  }
  res = g_new0(Resource, 1);
  res->id = c->resource_id;
  res->target = c->target;
  res->format = c->format;
  res->width = c->width;
  res->height = c->height;
  res->depth = MAX(c->depth, 1u);
  res->array_size = MAX(c->array_size, 1u);
  res->last_level = c->last_level;
  res->nr_samples = c->nr_samples;
  res->charge = charge;
  g_hash_table_insert(v->resources, GUINT_TO_POINTER(res->id), res);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static void scanout_drop(VgpuVirgl *v, Resource *res);

static guint32
cmd_unref(VgpuVirgl *v, Resource *res)
{
  scanout_drop(v, res);
  g_hash_table_steal(v->resources, GUINT_TO_POINTER(res->id));
  resource_destroy(v, res);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_attach_backing(VgpuVirgl *v, Resource *res, VhuElem *elem,
                   const struct virtio_gpu_resource_attach_backing *c)
{
  g_autofree struct virtio_gpu_mem_entry *ents = NULL;
  g_autoptr(GError) error = NULL;
  VgpuBacking *backing;
  gsize bytes;
  guint bad = 0;
  guint32 type = VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;

  if (res->backing) {
    guest_error(v, VE_BACKING, "RESOURCE_ATTACH_BACKING: resource %u already has backing", res->id);
    return VIRTIO_GPU_RESP_ERR_UNSPEC;
  }
  if (c->nr_entries == 0 || c->nr_entries > VGPU_MAX_BACKING_ENTRIES) {
    guest_error(v, VE_BACKING, "RESOURCE_ATTACH_BACKING: %u entries for resource %u (1..%u)",
                c->nr_entries, res->id, VGPU_MAX_BACKING_ENTRIES);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  bytes = (gsize)c->nr_entries * sizeof *ents;
  if (elem->out_len < sizeof *c + bytes) {
    guest_error(v, VE_BACKING, "RESOURCE_ATTACH_BACKING: %u entries announced, %zu bytes sent",
                c->nr_entries, elem->out_len);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (!vgpu_hostmem_charge(v->hostmem, bytes)) {
    guest_error(v, VE_HOSTMEM, "RESOURCE_ATTACH_BACKING %u: host memory budget exhausted", res->id);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  ents = g_malloc(bytes);
  if (vhu_elem_read(elem, sizeof *c, ents, bytes) != bytes)
    goto out;
  backing = vgpu_backing_new(v->hostmem, elem->mem, ents, c->nr_entries, &bad, &error);
  if (!backing) {
    gboolean budget = g_error_matches(error, VGPU_BACKING_ERROR, VGPU_BACKING_ERROR_BUDGET);

    guest_error(v, budget ? VE_HOSTMEM : VE_BACKING, "RESOURCE_ATTACH_BACKING %u: entry %u: %s",
                res->id, bad, error->message);
    type = budget ? VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY : VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
    goto out;
  }
  res->iov = g_array_new(FALSE, FALSE, sizeof(struct iovec));
  vgpu_backing_append_iov(backing, 0, vgpu_backing_get_size(backing), res->iov);
  if (virgl_renderer_resource_attach_iov((int)res->id, (struct iovec *)res->iov->data,
                                         (int)res->iov->len)
      != 0) {
    guest_error(v, VE_RENDERER, "RESOURCE_ATTACH_BACKING %u: the renderer refused it", res->id);
    g_clear_pointer(&res->iov, g_array_unref);
    vgpu_backing_unref(backing);
    type = VIRTIO_GPU_RESP_ERR_UNSPEC;
    goto out;
  }
  res->backing = backing;
  type = VIRTIO_GPU_RESP_OK_NODATA;
out:
  vgpu_hostmem_credit(v->hostmem, bytes);
  return type;
}

static guint32
cmd_detach_backing(VgpuVirgl *v, Resource *res)
{
  struct iovec *iov = NULL;
  int n = 0;

  if (!res->backing)
    return VIRTIO_GPU_RESP_OK_NODATA;
  virgl_renderer_resource_detach_iov((int)res->id, &iov, &n);
  g_clear_pointer(&res->iov, g_array_unref);
  g_clear_pointer(&res->backing, vgpu_backing_unref);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

/* Size of @res at @level along one axis. */
static guint32
level_size(guint32 size, guint32 level)
{
  return MAX(size >> level, 1u);
}

/* The start of the last row of the last layer lies in the backing (with a
 * stride of 0 the renderer packs the rows; it checks the rest itself). */
static gboolean
transfer_fits(Resource *res, const struct virtio_gpu_box *b, guint64 offset, guint32 stride,
              guint32 layer_stride)
{
  guint64 end = offset, part;

  if (!g_uint64_checked_mul(&part, (guint64)(b->h - 1), stride)
      || !g_uint64_checked_add(&end, end, part)
      || !g_uint64_checked_mul(&part, (guint64)(b->d - 1), layer_stride)
      || !g_uint64_checked_add(&end, end, part))
    return FALSE;
  return end < vgpu_backing_get_size(res->backing);
}

static guint32
cmd_transfer(VgpuVirgl *v, const struct virtio_gpu_ctrl_hdr *hdr, Resource *res, guint32 level,
             const struct virtio_gpu_box *b, guint64 offset, guint32 stride, guint32 layer_stride,
             gboolean to_host)
{
  const char *what = to_host ? "TRANSFER_TO_HOST_3D" : "TRANSFER_FROM_HOST_3D";
  struct virgl_box box = { b->x, b->y, b->z, b->w, b->h, b->d };
  guint32 layers = res->target == PIPE_TEXTURE_3D ? level_size(res->depth, level) : res->array_size;
  int ret;

  if (hdr->ctx_id != 0 && !find_context(v, hdr->ctx_id))
    return bad_context(v, what, hdr->ctx_id);
  if (level > res->last_level || (guint64)b->x + b->w > level_size(res->width, level)
      || (guint64)b->y + b->h > level_size(res->height, level) || (guint64)b->z + b->d > layers) {
    guest_error(v, VE_PARAMETER,
                "%s: box %ux%ux%u+%u+%u+%u level %u outside resource %u (%ux%ux%u, %u layers, %u "
                "levels)",
                what, b->w, b->h, b->d, b->x, b->y, b->z, level, res->id, res->width, res->height,
                res->depth, res->array_size, res->last_level + 1);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (!res->backing) {
    guest_error(v, VE_BACKING, "%s: resource %u has no backing", what, res->id);
    return VIRTIO_GPU_RESP_ERR_UNSPEC;
  }
  if (b->w && b->h && b->d && !transfer_fits(res, b, offset, stride, layer_stride)) {
    guest_error(v, VE_PARAMETER,
                "%s: offset %" G_GUINT64_FORMAT
                ", stride %u, layer stride %u beyond the %" G_GUINT64_FORMAT "-byte backing of %u",
                what, offset, stride, layer_stride, vgpu_backing_get_size(res->backing), res->id);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (to_host)
    ret = virgl_renderer_transfer_write_iov(res->id, hdr->ctx_id, (int)level, stride, layer_stride,
                                            &box, offset, NULL, 0);
  else
    ret = virgl_renderer_transfer_read_iov(res->id, hdr->ctx_id, level, stride, layer_stride, &box,
                                           offset, NULL, 0);
  if (ret != 0) {
    guest_error(v, VE_RENDERER, "%s %u: the renderer refused it (%d)", what, res->id, ret);
    return VIRTIO_GPU_RESP_ERR_UNSPEC;
  }
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_submit(VgpuVirgl *v, const struct virtio_gpu_cmd_submit *c, guint32 ctx_id, VhuElem *elem)
{
  g_autofree guint32 *buf = NULL;
  guint32 type = VIRTIO_GPU_RESP_OK_NODATA;
  int ret;

  if (!find_context(v, ctx_id))
    return bad_context(v, "SUBMIT_3D", ctx_id);
  if (c->size > VGPU_VIRGL_MAX_SUBMIT || c->size % 4 != 0
      || elem->out_len < sizeof *c + (gsize)c->size) {
    guest_error(v, VE_PARAMETER,
                "SUBMIT_3D: %u bytes announced, %zu sent (multiple of 4, at most %u)", c->size,
                elem->out_len - sizeof *c, VGPU_VIRGL_MAX_SUBMIT);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (c->size == 0)
    return VIRTIO_GPU_RESP_OK_NODATA;
  if (!vgpu_hostmem_charge(v->hostmem, c->size)) {
    guest_error(v, VE_HOSTMEM, "SUBMIT_3D of %u bytes: host memory budget exhausted", c->size);
    return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
  }
  /* A private copy: the guest cannot change it while virglrenderer parses. */
  buf = g_malloc(c->size);
  vhu_elem_read(elem, sizeof *c, buf, c->size);
  ret = virgl_renderer_submit_cmd(buf, (int)ctx_id, (int)(c->size / 4));
  if (ret != 0) {
    guest_error(v, VE_RENDERER, "SUBMIT_3D on context %u: the renderer refused it (%d)", ctx_id,
                ret);
    type = VIRTIO_GPU_RESP_ERR_UNSPEC;
  } else {
    v->stats.submits++;
  }
  g_clear_pointer(&buf, g_free);
  vgpu_hostmem_credit(v->hostmem, c->size);
  return type;
}

/* ------------------------------------------------------------------------ */
/* Scanouts: the flushed rectangle read back into an image of ours, which the
 * device shows like a 2D resource's.  (Exporting the texture as a dmabuf
 * would need EGL_MESA_image_dma_buf_export; without it virglrenderer's
 * texture export crashes inside Mesa, so it is never called.) */

static gboolean
rect_empty(const VgpuRect *r)
{
  return r->width == 0 || r->height == 0;
}

static void
rect_union(VgpuRect *acc, const VgpuRect *r)
{
  guint32 x1, y1;

  if (rect_empty(acc)) {
    *acc = *r;
    return;
  }
  x1 = MAX(acc->x + acc->width, r->x + r->width);
  y1 = MAX(acc->y + acc->height, r->y + r->height);
  acc->x = MIN(acc->x, r->x);
  acc->y = MIN(acc->y, r->y);
  acc->width = x1 - acc->x;
  acc->height = y1 - acc->y;
}

/* Reads @r (inside the resource) back into the shadow image and, with
 * @show, hands it to the scanouts showing it; later, if a sink still reads
 * the image. */
static void
scanout_readback(VgpuVirgl *v, Resource *res, const VgpuRect *r, gboolean show)
{
  VgpuImage *img = res->shadow;
  struct virgl_box box = { r->x, r->y, 0, r->width, r->height, 1 };
  struct iovec iov = { img->data, (gsize)img->stride * img->height };
  int ret;

  if (vgpu_image_is_busy(img)) {
    rect_union(&res->damage, r);
    return;
  }
  ret = virgl_renderer_transfer_read_iov(res->id, 0, 0, img->stride, 0, &box,
                                         (guint64)r->y * img->stride + (guint64)r->x * 4u, &iov, 1);
  if (ret != 0) {
    guest_error(v, VE_RENDERER, "RESOURCE_FLUSH %u: the renderer cannot read it back (%d)", res->id,
                ret);
    return;
  }
  for (guint i = 0; i < v->num_scanouts && show; i++) {
    if (res->scanouts & (1u << i))
      vgpu_device_ext_flush(v->dev, i, r);
  }
}

/* Render thread, device lock taken: the readbacks that waited. */
static gboolean
on_shadow_idle(gpointer data)
{
  VgpuVirgl *v = data;
  GHashTableIter it;
  gpointer value;

  g_mutex_lock(&v->idle_lock);
  g_clear_pointer(&v->idle_source, g_source_unref);
  g_mutex_unlock(&v->idle_lock);
  v->opts.lock(v->opts.lock_data);
  finish_reset(v);
  g_hash_table_iter_init(&it, v->resources);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    Resource *res = value;
    VgpuRect r = res->damage;

    if (res->shadow && !rect_empty(&r) && !vgpu_image_is_busy(res->shadow)) {
      res->damage = (VgpuRect){ 0, 0, 0, 0 };
      scanout_readback(v, res, &r, TRUE);
    }
  }
  v->opts.unlock(v->opts.lock_data);
  return G_SOURCE_REMOVE;
}

/* Any thread, possibly with the device lock or a sink's held: only
 * schedule. */
static void
shadow_idle_cb(gpointer data)
{
  VgpuVirgl *v = data;
  GSource *src;

  g_mutex_lock(&v->idle_lock);
  if (!v->idle_source) {
    src = g_idle_source_new();
    g_source_set_callback(src, on_shadow_idle, v, NULL);
    g_source_attach(src, v->opts.context);
    v->idle_source = src;
  }
  g_mutex_unlock(&v->idle_lock);
}

static void
scanout_forget(VgpuVirgl *v, guint id)
{
  GHashTableIter it;
  gpointer value;

  g_hash_table_iter_init(&it, v->resources);
  while (g_hash_table_iter_next(&it, NULL, &value))
    ((Resource *)value)->scanouts &= ~(1u << id);
}

static guint32
cmd_set_scanout(VgpuVirgl *v, Resource *res, const struct virtio_gpu_set_scanout *c)
{
  VgpuRect r = { c->r.x, c->r.y, c->r.width, c->r.height };
  g_autoptr(GError) error = NULL;

  if (c->scanout_id >= v->num_scanouts) {
    guest_error(v, VE_PARAMETER, "SET_SCANOUT: invalid scanout id %u", c->scanout_id);
    return VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
  }
  if ((res->target != PIPE_TEXTURE_2D && res->target != PIPE_TEXTURE_RECT)
      || !vgpu_format_is_valid(res->format) || res->nr_samples > 1) {
    guest_error(v, VE_PARAMETER, "SET_SCANOUT: resource %u (target %u format %u) cannot be shown",
                res->id, res->target, res->format);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (rect_empty(&r) || !vgpu_rect_inside(&r, res->width, res->height)) {
    guest_error(v, VE_PARAMETER, "SET_SCANOUT: rectangle %ux%u+%u+%u outside resource %u (%ux%u)",
                r.width, r.height, r.x, r.y, res->id, res->width, res->height);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (!res->shadow) {
    res->shadow = vgpu_image_new(v->hostmem, res->format, res->width, res->height, &error);
    if (!res->shadow) {
      guest_error(v, VE_HOSTMEM, "SET_SCANOUT %u: %s", res->id, error->message);
      return VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
    }
    vgpu_image_set_idle_notify(res->shadow, v->idle_notify);
  }
  scanout_forget(v, c->scanout_id);
  res->scanouts |= 1u << c->scanout_id;
  vgpu_device_ext_set_scanout(v->dev, c->scanout_id, res->id, res->shadow, &r);
  /* The sinks get all of it with the next flush; have it current. */
  scanout_readback(v, res, &r, FALSE);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

static guint32
cmd_flush(VgpuVirgl *v, Resource *res, const struct virtio_gpu_resource_flush *c)
{
  VgpuRect r = { c->r.x, c->r.y, c->r.width, c->r.height };

  if (!vgpu_rect_inside(&r, res->width, res->height)) {
    guest_error(v, VE_PARAMETER,
                "RESOURCE_FLUSH: rectangle %ux%u+%u+%u outside resource %u (%ux%u)", r.width,
                r.height, r.x, r.y, res->id, res->width, res->height);
    return VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
  }
  if (res->scanouts && res->shadow && !rect_empty(&r))
    scanout_readback(v, res, &r, TRUE);
  return VIRTIO_GPU_RESP_OK_NODATA;
}

/* The resource goes: so does what shows it. */
static void
scanout_drop(VgpuVirgl *v, Resource *res)
{
  for (guint i = 0; i < v->num_scanouts; i++) {
    if (res->scanouts & (1u << i))
      vgpu_device_ext_set_scanout(v->dev, i, 0, NULL, NULL);
  }
  res->scanouts = 0;
}

static guint32
dispatch(VgpuVirgl *v, const Request *req, gsize got, VhuElem *elem, gsize *payload)
{
  const struct virtio_gpu_ctrl_hdr *hdr = &req->hdr;
  Resource *res = NULL;
  guint32 id = 0;
  gsize need;

  if (shared_command_id(req, got, &id)) {
    res = find_resource(v, id);
    if (!res) {
      /* a 2D resource's, or unknown (or 0): the device answers, and a
       * scanout it sets is no longer ours */
      if (hdr->type == VIRTIO_GPU_CMD_SET_SCANOUT && req->set_scanout.scanout_id < v->num_scanouts)
        scanout_forget(v, req->set_scanout.scanout_id);
      return VGPU_EXT_PASS;
    }
    switch (hdr->type) {
      case VIRTIO_GPU_CMD_RESOURCE_CREATE_2D:
        guest_error(v, VE_RESOURCE, "RESOURCE_CREATE_2D: resource %u already exists", id);
        return VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
      case VIRTIO_GPU_CMD_RESOURCE_UNREF:
        return cmd_unref(v, res);
      case VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING:
        return cmd_attach_backing(v, res, elem, &req->attach);
      case VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING:
        return cmd_detach_backing(v, res);
      case VIRTIO_GPU_CMD_SET_SCANOUT:
        return cmd_set_scanout(v, res, &req->set_scanout);
      case VIRTIO_GPU_CMD_RESOURCE_FLUSH:
        return cmd_flush(v, res, &req->flush);
      case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: {
        const struct virtio_gpu_transfer_to_host_2d *t = &req->transfer_2d;
        struct virtio_gpu_box box = { t->r.x, t->r.y, 0, t->r.width, t->r.height, 1 };

        return cmd_transfer(v, hdr, res, 0, &box, t->offset, 0, 0, TRUE);
      }
      default:
        g_assert_not_reached();
    }
  }
  need = command_size(hdr->type);
  if (need == 0)
    return VGPU_EXT_PASS;
  if (got < need) {
    guest_error(v, VE_SHORT, "command 0x%x of %zu bytes, needs %zu", hdr->type, got, need);
    return VIRTIO_GPU_RESP_ERR_UNSPEC;
  }
  switch (hdr->type) {
    case VIRTIO_GPU_CMD_GET_CAPSET_INFO:
      return cmd_capset_info(v, &req->capset_info, elem, payload);
    case VIRTIO_GPU_CMD_GET_CAPSET:
      return cmd_capset(v, &req->capset, elem, payload);
    case VIRTIO_GPU_CMD_CTX_CREATE:
      return cmd_ctx_create(v, &req->ctx_create, hdr->ctx_id);
    case VIRTIO_GPU_CMD_CTX_DESTROY:
      return cmd_ctx_destroy(v, hdr->ctx_id);
    case VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE:
    case VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE:
      return cmd_ctx_resource(v, &req->ctx_resource, hdr->ctx_id,
                              hdr->type == VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE);
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_3D:
      return cmd_create_3d(v, &req->create_3d);
    case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D:
    case VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D: {
      const struct virtio_gpu_transfer_host_3d *t = &req->transfer_3d;

      res = find_resource(v, t->resource_id);
      if (!res)
        return bad_resource(v,
                            hdr->type == VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D
                                ? "TRANSFER_TO_HOST_3D"
                                : "TRANSFER_FROM_HOST_3D",
                            t->resource_id);
      return cmd_transfer(v, hdr, res, t->level, &t->box, t->offset, t->stride, t->layer_stride,
                          hdr->type == VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D);
    }
    case VIRTIO_GPU_CMD_SUBMIT_3D:
      return cmd_submit(v, &req->submit, hdr->ctx_id, elem);
    default:
      g_assert_not_reached();
  }
}

/* ------------------------------------------------------------------------ */
/* VgpuDeviceExt */

static guint32
ext_command(gpointer data, VhuElem *elem, const struct virtio_gpu_ctrl_hdr *hdr, gsize *payload,
            gboolean *hold)
{
  VgpuVirgl *v = data;
  Request req;
  gsize got;
  guint32 type;

  finish_reset(v);
  v->features = vgpu_device_get_features(v->dev);
  memset(&req, 0, sizeof req);
  got = vhu_elem_read(elem, 0, &req, sizeof req);
  type = dispatch(v, &req, got, elem, payload);
  if (type == VGPU_EXT_PASS || !(hdr->flags & VIRTIO_GPU_FLAG_FENCE)
      || type >= VIRTIO_GPU_RESP_ERR_UNSPEC)
    return type;
  /* Done when the renderer has done everything submitted so far. */
  if (!fence_create(v, hdr)) {
    guest_error(v, VE_RENDERER, "command 0x%x: the renderer refused its fence", hdr->type);
    return type;
  }
  *hold = TRUE;
  return type;
}

static void
ext_hold(gpointer data, VgpuQuery *query)
{
  VgpuVirgl *v = data;
  Fence *f = v->last;

  v->last = NULL;
  if (!f)
    return;
  if (f->retired || !query) {
    /* retired already (then no longer queued), or not held: answered now */
    if (!f->retired)
      g_queue_remove(&v->fences, f);
    if (query)
      vgpu_device_query_done(v->dev, query, NULL, 0);
    v->stats.fences++;
    g_free(f);
    return;
  }
  f->query = query;
  fence_source_update(v);
}

/* Any thread, with the device lock held: drops our records now, the
 * renderer's state on the render thread before it is used again. */
static void
ext_reset(gpointer data)
{
  VgpuVirgl *v = data;
  GHashTableIter it;
  gpointer res;
  Fence *f;

  while ((f = g_queue_pop_head(&v->fences))) {
    if (f->query)
      vgpu_device_query_done(v->dev, f->query, NULL, 0); /* already discarded */
    g_free(f);
  }
  g_hash_table_iter_init(&it, v->resources);
  while (g_hash_table_iter_next(&it, NULL, &res)) {
    g_ptr_array_add(v->graveyard, res);
    g_hash_table_iter_steal(&it);
  }
  vgpu_hostmem_credit(v->hostmem,
                      (guint64)g_hash_table_size(v->contexts) * VGPU_VIRGL_CONTEXT_CHARGE);
  g_hash_table_iter_init(&it, v->contexts);
  while (g_hash_table_iter_next(&it, &res, NULL))
    g_array_append_val(v->dead_contexts, (guint32){ GPOINTER_TO_UINT(res) });
  g_hash_table_remove_all(v->contexts);
  v->reset_pending = TRUE;
}

static const VgpuDeviceExt virgl_ext = {
  .num_capsets = VGPU_VIRGL_NUM_CAPSETS,
  .command = ext_command,
  .hold = ext_hold,
  .reset = ext_reset,
};

/* ------------------------------------------------------------------------ */
/* Start-up */

static VgpuVirgl *the_virgl; /* virglrenderer is process-wide */

static int
cb_get_drm_fd(void *cookie)
{
  VgpuVirgl *v = cookie;

  return v->renderer ? open(v->renderer, O_RDWR | O_CLOEXEC) : -1;
}

static void
debug_cb(const char *fmt, va_list ap)
{
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);

  g_strchomp(msg);
  g_debug("virglrenderer: %s", msg);
}

static struct virgl_renderer_callbacks callbacks = {
  .version = 3,
  .write_fence = cb_write_fence,
  .get_drm_fd = cb_get_drm_fd,
  .write_context_fence = cb_write_context_fence,
};

VgpuVirgl *
vgpu_virgl_new(const VgpuVirglConfig *config, const VgpuVirglOptions *options, VgpuDevice *dev,
               GError **error)
{
  int flags = VIRGL_RENDERER_USE_EGL | VIRGL_RENDERER_THREAD_SYNC;
  const char *gl_renderer;
  VgpuVirgl *v;
  int fd;

  if (the_virgl) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS, "virgl: the renderer is already in use");
    return NULL;
  }
  if (config->render_node) {
    fd = open(config->render_node, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      int e = errno;

      g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "virgl: render node %s: %s",
                  config->render_node, g_strerror(e));
      return NULL;
    }
    close(fd);
  } else {
    /* No GPU: EGL on no surface at all, which Mesa serves with llvmpipe. */
    flags |= VIRGL_RENDERER_USE_SURFACELESS;
  }
  if (config->gles)
    flags |= VIRGL_RENDERER_USE_GLES;
  v = g_new0(VgpuVirgl, 1);
  v->dev = dev;
  v->opts = *options;
  v->hostmem = vgpu_device_get_hostmem(dev);
  v->resources = g_hash_table_new(NULL, NULL);
  v->contexts = g_hash_table_new_full(NULL, NULL, NULL, g_free);
  v->graveyard = g_ptr_array_new();
  v->dead_contexts = g_array_new(FALSE, FALSE, sizeof(guint32));
  g_queue_init(&v->fences);
  v->renderer = g_strdup(config->render_node); /* for get_drm_fd, replaced below */
  virgl_set_debug_callback(debug_cb);
  /* The cookie must not be NULL: virglrenderer then fails without a word. */
  if (virgl_renderer_init(v, flags, &callbacks) != 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                "virgl: the renderer does not start (EGL%s%s%s); run with -vv for "
                "virglrenderer's messages, or EGL_LOG_LEVEL=debug for EGL's",
                config->render_node ? " on " : ", surfaceless",
                config->render_node ? config->render_node : "", config->gles ? ", GLES" : "");
    g_free(v->renderer);
    g_hash_table_unref(v->resources);
    g_hash_table_unref(v->contexts);
    g_ptr_array_unref(v->graveyard);
    g_array_unref(v->dead_contexts);
    g_free(v);
    return NULL;
  }
  the_virgl = v;
  {
    struct virtio_gpu_config cfg;
    EGLDisplay dpy = eglGetCurrentDisplay();

    vgpu_device_get_config(dev, (guint8 *)&cfg, sizeof cfg);
    v->num_scanouts = MIN(cfg.num_scanouts, VGPU_MAX_SCANOUTS);
    v->dmabuf_export
        = dpy != EGL_NO_DISPLAY && epoxy_has_egl_extension(dpy, "EGL_MESA_image_dma_buf_export");
  }
  g_mutex_init(&v->idle_lock);
  v->idle_notify = vgpu_notify_new(shadow_idle_cb, v);
  g_clear_pointer(&v->renderer, g_free);
  gl_renderer = (const char *)glGetString(GL_RENDERER);
  v->renderer = g_strdup(gl_renderer ? gl_renderer : "unknown");
  for (guint id = 1; id <= VGPU_VIRGL_NUM_CAPSETS; id++) {
    virgl_renderer_get_cap_set(id, &v->capset_ver[id], &v->capset_size[id]);
    v->capset_size[id] = MIN(v->capset_size[id], 64u * 1024u);
    v->capset_data[id] = g_malloc0(MAX(v->capset_size[id], 1u));
    if (v->capset_size[id])
      virgl_renderer_fill_caps(id, v->capset_ver[id], v->capset_data[id]);
  }
  poll_source_setup(v);
  g_debug("virgl: fences %s", v->timer ? "polled every millisecond" : "signalled by an eventfd");
  g_info("virgl: scanouts are read back%s",
         v->dmabuf_export ? "" : " (EGL cannot export textures as dmabufs here)");
  vgpu_device_set_ext(dev, &virgl_ext, v);
  return v;
}

void
vgpu_virgl_free(VgpuVirgl *v)
{
  if (!v)
    return;
  vgpu_device_set_ext(v->dev, NULL, NULL);
  ext_reset(v);
  poll_source_clear(v);
  finish_reset(v);
  vgpu_notify_disarm(v->idle_notify);
  vgpu_notify_unref(v->idle_notify);
  if (v->idle_source) {
    g_source_destroy(v->idle_source);
    g_clear_pointer(&v->idle_source, g_source_unref);
  }
  g_mutex_clear(&v->idle_lock);
  virgl_renderer_cleanup(v);
  g_hash_table_unref(v->resources);
  g_hash_table_unref(v->contexts);
  g_ptr_array_unref(v->graveyard);
  g_array_unref(v->dead_contexts);
  for (guint id = 0; id <= VGPU_VIRGL_NUM_CAPSETS; id++)
    g_free(v->capset_data[id]);
  g_free(v->renderer);
  the_virgl = NULL;
  g_free(v);
}

const char *
vgpu_virgl_get_renderer(VgpuVirgl *v)
{
  return v->renderer;
}

void
vgpu_virgl_get_stats(VgpuVirgl *v, VgpuVirglStats *stats)
{
  *stats = v->stats;
  stats->contexts = g_hash_table_size(v->contexts);
  stats->resources = g_hash_table_size(v->resources);
}

#endif /* HAVE_VIRGL */
