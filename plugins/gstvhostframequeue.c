/* gstvhostframequeue.c: a display sink that turns flushes into frames. */
#include "gstvhostframequeue.h"

#include <errno.h>
#include <fcntl.h>
#include <gst/allocators/allocators.h>
#include <pixman.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vgpu-udmabuf.h"

GST_DEBUG_CATEGORY_STATIC(frames_debug);
#define GST_CAT_DEFAULT frames_debug

/* Generations of damage remembered: a frame that missed more is resynced
 * whole. */
#define HISTORY 16u
/* Poll period while every frame is held downstream and the newest pixels
 * are only in the shadow (GstMemory has no release notification). */
#define RELEASE_POLL_US 5000
/* The device side stays within max_frames (then the shadow takes flushes);
 * the consumer may allocate up to this many times more, for a downstream
 * that holds many frames before releasing any (encoder lookahead). */
#define STREAMING_FRAMES_FACTOR 4u

typedef struct {
  GstMemory *mem;    /* one reference is ours; more mean downstream holds it */
  GstMemory *dmabuf; /* the same pages as a dmabuf (udmabuf), made on demand */
  guint8 *data;      /* kept mapped for the memory's lifetime */
  guint64 gen;       /* generation whose content it holds; 0: none yet */
} Frame;

/* Blob dmabufs cached per backing range: a guest flipping between a few
 * framebuffers reuses theirs. */
#define BLOB_DMABUF_CACHE 4u

/* A blob scanout whose pages can be one dmabuf (UDMABUF_CREATE_LIST):
 * immutable, shared by the queue and the frames popped while it is shown. */
struct _GstVhostBlobExport {
  VgpuBacking *backing; /* keeps the fds of @pieces valid */
  guint64 start, size;  /* the page-aligned range of the backing exported */
  gsize head;           /* the first pixel's offset in that range */
  gsize len;            /* stride * height */
  guint32 stride;
  GArray *pieces; /* VhuMemFdPiece, each page-aligned */
};

typedef struct {
  VgpuBacking *backing;
  guint64 start, size;
  GstMemory *dmabuf; /* the whole range, read-only */
} CachedDmabuf;

/* Where a flushed rectangle's pixels come from. */
typedef struct {
  const guint8 *image;  /* row h at image + h * stride, or */
  VgpuBacking *backing; /* row h at offset + h * stride of the backing */
  guint64 offset;
  guint32 stride;
} Source;

struct _GstVhostFrameQueue {
  GMutex lock;
  GCond cond;
  guint scanout;
  guint max_frames;
  GstAllocator *fd_alloc;
  GstAllocator *dmabuf_alloc;

  gboolean enabled;
  GstVideoInfo info;
  guint64 geometry;
  GPtrArray *frames;                  /* Frame, of the current geometry */
  Frame *cur;                         /* newest complete content; NULL before the first flush */
  guint64 gen;                        /* generation of cur */
  pixman_region32_t history[HISTORY]; /* written during generation g at g % HISTORY */
  guint8 *shadow;                     /* newest pixels of shadow_region */
  pixman_region32_t shadow_region;
  gboolean overflowing;
  /* A guest-memory blob scanout shown as it is: one memory wrapping its
   * rows (holding a reference on the backing, so its mapping stays), shared
   * by every frame; NULL while frames are copies. */
  GstMemory *blob_mem;
  GstVideoInfo blob_info; /* info with the blob's stride */
  guint last_kind;        /* of the last frame popped: blob memory, blob export */
  /* The blob scanout's pages as one dmabuf, where udmabuf can take them
   * (whole pages of sealed files); NULL otherwise. */
  GstVhostBlobExport *blob_export;
  GPtrArray *blob_dmabufs; /* CachedDmabuf, oldest first */
  /* The consumer takes blob frames as the blob's dmabuf: a blob in several
   * host pieces is then not copied into frame memory either.  When that
   * stops while the blob is shown, the next flush copies all of it from
   * @resync first (frame memory missed what went by). */
  gboolean consumer_dmabuf;
  GstVhostBlobExport *resync;

  /* What the next frame carries. */
  gboolean ready;
  pixman_region32_t damage;
  guint flushes;
  guint64 flush_time;
  guint64 number;

  GstBuffer *cursor;
  guint32 cursor_hot_x, cursor_hot_y, cursor_pos_x, cursor_pos_y;
  gboolean cursor_visible;
  guint64 cursor_serial;

  gboolean flushing, eos;
  gboolean export_failed; /* logged once */
  GstVhostFrameQueueStats stats;
};

static guint64
monotonic_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (guint64)ts.tv_sec * GST_SECOND + (guint64)ts.tv_nsec;
}

GstVideoFormat
gst_vhost_video_format_from_virtio(guint32 format)
{
  switch (format) {
    case VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM:
      return GST_VIDEO_FORMAT_BGRA;
    case VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM:
      return GST_VIDEO_FORMAT_BGRx;
    case VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM:
      return GST_VIDEO_FORMAT_ARGB;
    case VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM:
      return GST_VIDEO_FORMAT_xRGB;
    case VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM:
      return GST_VIDEO_FORMAT_RGBA;
    case VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM:
      return GST_VIDEO_FORMAT_xBGR;
    case VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM:
      return GST_VIDEO_FORMAT_ABGR;
    case VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM:
      return GST_VIDEO_FORMAT_RGBx;
    default:
      return GST_VIDEO_FORMAT_UNKNOWN;
  }
}

/* ------------------------------------------------------------------------ */
/* Frame memory */

static void
frame_free(gpointer data)
{
  Frame *f = data;

  gst_memory_unref(f->mem);
  if (f->dmabuf)
    gst_memory_unref(f->dmabuf);
  g_free(f);
}

static gboolean
frame_is_free(Frame *f)
{
  return g_atomic_int_get(&GST_MINI_OBJECT_CAST(f->mem)->refcount) == 1
         && (!f->dmabuf || g_atomic_int_get(&GST_MINI_OBJECT_CAST(f->dmabuf)->refcount) == 1);
}

/* Said once where there is no udmabuf. */
static gpointer
udmabuf_check(gpointer data)
{
  if (!vgpu_udmabuf_available())
    GST_INFO("frames are not exported as dmabuf: no /dev/udmabuf; they go as fd memory");
  return NULL;
}

gboolean
gst_vhost_udmabuf_available(void)
{
  static GOnce once = G_ONCE_INIT;

  GST_DEBUG_CATEGORY_INIT(frames_debug, "vhostframes", 0, "vhost GPU scanout frames");
  g_once(&once, udmabuf_check, NULL);
  return vgpu_udmabuf_available();
}

static gsize
page_round(gsize size)
{
  gsize page = (gsize)sysconf(_SC_PAGESIZE);

  return (size + page - 1) / page * page;
}

/* @f's pages as a dmabuf memory, made once (its memfd is sealed against
 * shrinking, as udmabuf wants); NULL when the kernel refuses. */
static GstMemory *
frame_dmabuf(GstVhostFrameQueue *q, Frame *f)
{
  VhuMemFdPiece piece = { gst_fd_memory_get_fd(f->mem), 0, page_round(f->mem->size) };
  g_autoptr(GError) error = NULL;
  int dfd;

  if (f->dmabuf)
    return f->dmabuf;
  if (!gst_vhost_udmabuf_available())
    return NULL;
  dfd = vgpu_udmabuf_create(&piece, 1, &error);
  if (dfd < 0) {
    if (!q->export_failed)
      GST_WARNING("%s; frames go as fd memory", error->message);
    q->export_failed = TRUE;
    return NULL;
  }
  f->dmabuf = gst_dmabuf_allocator_alloc(q->dmabuf_alloc, dfd, f->mem->size);
  GST_MINI_OBJECT_FLAG_SET(f->dmabuf, GST_MEMORY_FLAG_READONLY);
  return f->dmabuf;
}

/* A zeroed, sealed memfd of the current geometry, kept mapped. */
static Frame *
frame_new(GstVhostFrameQueue *q)
{
  gsize size = GST_VIDEO_INFO_SIZE(&q->info);
  GstMemory *mem;
  GstMapInfo map;
  Frame *f;
  int fd;

  fd = memfd_create("gst-vhost-frame", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  /* Whole pages: what udmabuf exports. */
  if (fd < 0 || ftruncate(fd, (off_t)page_round(size)) < 0) {
    GST_WARNING("frame memory of %" G_GSIZE_FORMAT " bytes: %s", size, g_strerror(errno));
    if (fd >= 0)
      close(fd);
    return NULL;
  }
  fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  mem = gst_fd_allocator_alloc(q->fd_alloc, fd, size, GST_FD_MEMORY_FLAG_KEEP_MAPPED);
  if (!mem || !gst_memory_map(mem, &map, GST_MAP_READWRITE)) {
    GST_WARNING("cannot map frame memory");
    if (mem)
      gst_memory_unref(mem);
    else
      close(fd);
    return NULL;
  }
  f = g_new0(Frame, 1);
  f->mem = mem;
  f->data = map.data;
  gst_memory_unmap(mem, &map);
  /* Downstream must not write it: a writer maps a copy instead. */
  GST_MINI_OBJECT_FLAG_SET(mem, GST_MEMORY_FLAG_READONLY);
  q->stats.frames_allocated++;
  return f;
}

/* A frame nobody downstream holds, other than cur; a new one within
 * @limit; NULL when every frame is held. */
static Frame *
free_frame(GstVhostFrameQueue *q, guint limit)
{
  Frame *f;

  for (guint i = 0; i < q->frames->len; i++) {
    f = q->frames->pdata[i];
    if (f != q->cur && frame_is_free(f))
      return f;
  }
  if (q->frames->len >= limit)
    return NULL;
  f = frame_new(q);
  if (f)
    g_ptr_array_add(q->frames, f);
  return f;
}

/* ------------------------------------------------------------------------ */
/* Blob dmabufs */

static void
blob_export_free(gpointer data)
{
  GstVhostBlobExport *e = data;

  vgpu_backing_unref(e->backing);
  g_array_unref(e->pieces);
}

static GstVhostBlobExport *
blob_export_ref(GstVhostBlobExport *e)
{
  return g_atomic_rc_box_acquire(e);
}

static void
blob_export_unref(GstVhostBlobExport *e)
{
  if (e)
    g_atomic_rc_box_release_full(e, blob_export_free);
}

/* The export of @len bytes at @offset of @backing, or NULL (said why at
 * DEBUG) when udmabuf cannot take them: whole pages of sealed files only. */
static GstVhostBlobExport *
blob_export_new(VgpuBacking *backing, guint64 offset, guint64 len, guint32 stride)
{
  guint64 page = (guint64)sysconf(_SC_PAGESIZE), end, size = vgpu_backing_get_size(backing);
  g_autoptr(GArray) pieces = NULL;
  GstVhostBlobExport *e;
  guint64 start = offset / page * page;

  if (!gst_vhost_udmabuf_available())
    return NULL;
  if (!g_uint64_checked_add(&end, offset, len) || !g_uint64_checked_add(&end, end, page - 1)
      || (end = end / page * page) > size || end - start > G_MAXSIZE) {
    GST_DEBUG("blob rows do not end inside a whole page of the blob: not a dmabuf");
    return NULL;
  }
  pieces = g_array_new(FALSE, FALSE, sizeof(VhuMemFdPiece));
  if (!vgpu_backing_append_fd_pieces(backing, start, (gsize)(end - start), pieces)) {
    GST_DEBUG("blob not in sealed guest memory: not a dmabuf");
    return NULL;
  }
  for (guint i = 0; i < pieces->len; i++) {
    const VhuMemFdPiece *p = &g_array_index(pieces, VhuMemFdPiece, i);

    if (p->offset % page != 0 || p->len % page != 0) {
      GST_DEBUG("blob piece %u not page aligned: not a dmabuf", i);
      return NULL;
    }
  }
  e = g_atomic_rc_box_new0(GstVhostBlobExport);
  e->backing = vgpu_backing_ref(backing);
  e->start = start;
  e->size = end - start;
  e->head = (gsize)(offset - start);
  e->len = (gsize)len;
  e->stride = stride;
  e->pieces = g_steal_pointer(&pieces);
  return e;
}

/* One dmabuf over @e's pieces; NULL when the kernel refuses (logged once). */
static GstMemory *
blob_dmabuf_create(GstVhostFrameQueue *q, const GstVhostBlobExport *e)
{
  gsize n = e->pieces->len;
  g_autoptr(GError) error = NULL;
  GstMemory *mem;
  int dfd;

  dfd = vgpu_udmabuf_create((const VhuMemFdPiece *)(void *)e->pieces->data, (guint)n, &error);
  if (dfd < 0) {
    if (!q->export_failed)
      GST_WARNING("%s; blob frames go as guest memory", error->message);
    q->export_failed = TRUE;
    return NULL;
  }
  mem = gst_dmabuf_allocator_alloc(q->dmabuf_alloc, dfd, (gsize)e->size);
  GST_MINI_OBJECT_FLAG_SET(mem, GST_MEMORY_FLAG_READONLY);
  GST_INFO("scanout %u: blob of %" G_GSIZE_FORMAT " pieces is a dmabuf of %" G_GUINT64_FORMAT
           " bytes",
           q->scanout, n, e->size);
  return mem;
}

static void
cached_free(gpointer data)
{
  CachedDmabuf *c = data;

  vgpu_backing_unref(c->backing);
  gst_memory_unref(c->dmabuf);
  g_free(c);
}

/* Drops the cached dmabufs of backings only the cache still holds (the
 * guest unrefed the blob and no frame shows it).  Queue lock held. */
static void
cache_prune(GstVhostFrameQueue *q)
{
  for (guint i = q->blob_dmabufs->len; i-- > 0;) {
    CachedDmabuf *c = q->blob_dmabufs->pdata[i];

    if (!vgpu_backing_is_shared(c->backing))
      g_ptr_array_remove_index(q->blob_dmabufs, i);
  }
}

/* @e's dmabuf (a new reference), from the cache or made now; the ioctl runs
 * without the queue lock, so the device never waits on it. */
static GstMemory *
blob_dmabuf(GstVhostFrameQueue *q, const GstVhostBlobExport *e)
{
  CachedDmabuf *c;
  GstMemory *mem;

  g_mutex_lock(&q->lock);
  cache_prune(q);
  for (guint i = 0; i < q->blob_dmabufs->len; i++) {
    c = q->blob_dmabufs->pdata[i];
    if (c->backing == e->backing && c->start == e->start && c->size == e->size) {
      mem = gst_memory_ref(c->dmabuf);
      g_ptr_array_add(q->blob_dmabufs, g_ptr_array_steal_index(q->blob_dmabufs, i));
      g_mutex_unlock(&q->lock);
      return mem;
    }
  }
  g_mutex_unlock(&q->lock);
  mem = blob_dmabuf_create(q, e);
  g_mutex_lock(&q->lock);
  if (mem) {
    if (q->blob_dmabufs->len >= BLOB_DMABUF_CACHE)
      g_ptr_array_remove_index(q->blob_dmabufs, 0);
    c = g_new0(CachedDmabuf, 1);
    c->backing = vgpu_backing_ref(e->backing);
    c->start = e->start;
    c->size = e->size;
    c->dmabuf = gst_memory_ref(mem);
    g_ptr_array_add(q->blob_dmabufs, c);
  } else if (q->blob_export == e) {
    /* The next frame renegotiates without it, from a full copy. */
    if (q->consumer_dmabuf && !q->blob_mem && !q->resync)
      q->resync = blob_export_ref(q->blob_export);
    g_clear_pointer(&q->blob_export, blob_export_unref);
  }
  g_mutex_unlock(&q->lock);
  return mem;
}

/* ------------------------------------------------------------------------ */
/* Pixels */

static void
copy_region(GstVhostFrameQueue *q, guint8 *dst, const guint8 *src, pixman_region32_t *region)
{
  guint stride = GST_VIDEO_INFO_PLANE_STRIDE(&q->info, 0);
  int n = 0;
  pixman_box32_t *b = pixman_region32_rectangles(region, &n);

  for (int i = 0; i < n; i++) {
    gsize off = (gsize)b[i].y1 * stride + (gsize)b[i].x1 * 4u;
    gsize len = (gsize)(b[i].x2 - b[i].x1) * 4u;

    for (int y = b[i].y1; y < b[i].y2; y++, off += stride)
      memcpy(dst + off, src + off, len);
    q->stats.bytes_synced += len * (gsize)(b[i].y2 - b[i].y1);
  }
}

static void
copy_in(GstVhostFrameQueue *q, guint8 *dst, const Source *src, const VgpuRect *d)
{
  guint stride = GST_VIDEO_INFO_PLANE_STRIDE(&q->info, 0);
  gsize len = (gsize)d->width * 4u;

  dst += (gsize)d->y * stride + (gsize)d->x * 4u;
  for (guint32 h = 0; h < d->height; h++, dst += stride) {
    if (src->backing)
      vgpu_backing_read(src->backing, src->offset + (guint64)h * src->stride, dst, len);
    else
      memcpy(dst, src->image + (gsize)h * src->stride, len);
  }
  q->stats.bytes_copied += len * d->height;
}

static void
region_set_full(GstVhostFrameQueue *q, pixman_region32_t *r)
{
  pixman_region32_fini(r);
  pixman_region32_init_rect(r, 0, 0, GST_VIDEO_INFO_WIDTH(&q->info),
                            GST_VIDEO_INFO_HEIGHT(&q->info));
}

/* The shadow's pixels, except where @incoming will be written, into @f. */
static void
merge_shadow(GstVhostFrameQueue *q, Frame *f, pixman_region32_t *incoming)
{
  pixman_region32_t r;

  if (!pixman_region32_not_empty(&q->shadow_region))
    return;
  pixman_region32_init(&r);
  pixman_region32_subtract(&r, &q->shadow_region, incoming);
  copy_region(q, f->data, q->shadow, &r);
  pixman_region32_fini(&r);
  pixman_region32_union(&q->history[q->gen % HISTORY], &q->history[q->gen % HISTORY],
                        &q->shadow_region);
  pixman_region32_clear(&q->shadow_region);
  if (q->overflowing)
    GST_INFO("scanout %u: a frame is free again", q->scanout);
  q->overflowing = FALSE;
}

/* The frame the next pixels (@incoming) go into, holding everything else
 * of the newest content; NULL when downstream holds every frame and there
 * are @limit of them. */
static Frame *
target_for(GstVhostFrameQueue *q, pixman_region32_t *incoming, guint limit)
{
  pixman_region32_t *slot;
  pixman_region32_t need;
  Frame *f;

  if (q->cur && frame_is_free(q->cur)) {
    merge_shadow(q, q->cur, incoming);
    return q->cur;
  }
  f = free_frame(q, limit);
  if (!f)
    return NULL;
  q->gen++;
  slot = &q->history[q->gen % HISTORY];
  pixman_region32_clear(slot);
  if (q->cur) {
    /* What changed since @f was current, from cur (complete, read-only). */
    pixman_region32_init(&need);
    if (f->gen != 0 && q->gen - f->gen <= HISTORY) {
      for (guint64 g = f->gen + 1; g < q->gen; g++)
        pixman_region32_union(&need, &need, &q->history[g % HISTORY]);
    } else {
      region_set_full(q, &need);
    }
    pixman_region32_subtract(&need, &need, &q->shadow_region);
    pixman_region32_subtract(&need, &need, incoming);
    copy_region(q, f->data, q->cur->data, &need);
    pixman_region32_fini(&need);
  }
  merge_shadow(q, f, incoming);
  f->gen = q->gen;
  q->cur = f;
  return f;
}

static void
reset_content(GstVhostFrameQueue *q)
{
  g_ptr_array_set_size(q->frames, 0);
  q->cur = NULL;
  for (guint i = 0; i < HISTORY; i++)
    pixman_region32_clear(&q->history[i]);
  g_clear_pointer(&q->shadow, g_free);
  pixman_region32_clear(&q->shadow_region);
  pixman_region32_clear(&q->damage);
  q->overflowing = FALSE;
  q->ready = FALSE;
  q->flushes = 0;
}

/* ------------------------------------------------------------------------ */
/* Sink callbacks (device lock held) */

static void
sink_set_scanout(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect)
{
  GstVhostFrameQueue *q = sink;
  GstVideoFormat fmt;
  GstVideoInfo info;

  if (id != q->scanout)
    return;
  g_mutex_lock(&q->lock);
  g_clear_pointer(&q->blob_mem, gst_memory_unref);
  g_clear_pointer(&q->blob_export, blob_export_unref);
  g_clear_pointer(&q->resync, blob_export_unref);
  cache_prune(q);
  if (!image) {
    if (q->enabled)
      GST_INFO("scanout %u disabled", id);
    q->enabled = FALSE;
    reset_content(q);
    goto out;
  }
  fmt = gst_vhost_video_format_from_virtio(image->format);
  if (fmt == GST_VIDEO_FORMAT_UNKNOWN || rect->width == 0 || rect->height == 0)
    goto out; /* the device checked both */
  gst_video_info_set_format(&info, fmt, rect->width, rect->height);
  if (q->enabled && gst_video_info_is_equal(&info, &q->info))
    goto out; /* a page flip: the device sends the whole scanout next */
  GST_INFO("scanout %u: %s %ux%u", id, gst_video_format_to_string(fmt), rect->width, rect->height);
  reset_content(q);
  q->info = info;
  q->enabled = TRUE;
  q->geometry++;
  q->stats.geometry_changes++;
out:
  g_mutex_unlock(&q->lock);
}

/* Frames are the blob itself (its memory, or its dmabuf): nothing to copy. */
static gboolean
frames_are_blob(GstVhostFrameQueue *q)
{
  return q->blob_mem || (q->blob_export && q->consumer_dmabuf);
}

/* All of the blob @e into frame memory: what the skipped flushes missed. */
static void
resync_blob(GstVhostFrameQueue *q, const GstVhostBlobExport *e)
{
  Source all = { .backing = e->backing, .offset = e->start + e->head, .stride = e->stride };
  VgpuRect full = { 0, 0, GST_VIDEO_INFO_WIDTH(&q->info), GST_VIDEO_INFO_HEIGHT(&q->info) };
  pixman_region32_t r;
  Frame *f;

  pixman_region32_init_rect(&r, 0, 0, full.width, full.height);
  if ((f = target_for(q, &r, q->max_frames))) {
    copy_in(q, f->data, &all, &full);
    pixman_region32_union(&q->history[q->gen % HISTORY], &q->history[q->gen % HISTORY], &r);
  }
  pixman_region32_fini(&r);
}

static void
flushed(GstVhostFrameQueue *q, const Source *src, guint32 w, guint32 h, guint32 dst_x,
        guint32 dst_y)
{
  guint32 fw = GST_VIDEO_INFO_WIDTH(&q->info), fh = GST_VIDEO_INFO_HEIGHT(&q->info);
  VgpuRect d = { dst_x, dst_y, 0, 0 };
  pixman_region32_t incoming;
  Frame *f;

  if (!q->enabled)
    return;
  /* The device keeps updates inside the scanout; clip anyway. */
  if (dst_x < fw && dst_y < fh) {
    d.width = MIN(w, fw - dst_x);
    d.height = MIN(h, fh - dst_y);
  }
  pixman_region32_init_rect(&incoming, (int)d.x, (int)d.y, d.width, d.height);
  if (q->resync && !frames_are_blob(q)) {
    resync_blob(q, q->resync);
    g_clear_pointer(&q->resync, blob_export_unref);
  }
  if (frames_are_blob(q)) {
    /* The frame is the guest's memory: nothing to copy. */
  } else if ((f = target_for(q, &incoming, q->max_frames))) {
    copy_in(q, f->data, src, &d);
    pixman_region32_union(&q->history[q->gen % HISTORY], &q->history[q->gen % HISTORY], &incoming);
  } else {
    if (!q->shadow)
      q->shadow = g_malloc0(GST_VIDEO_INFO_SIZE(&q->info));
    copy_in(q, q->shadow, src, &d);
    pixman_region32_union(&q->shadow_region, &q->shadow_region, &incoming);
    q->stats.overflows++;
    if (!q->overflowing)
      GST_INFO("scanout %u: downstream holds all %u frames; keeping flushes in a shadow copy",
               q->scanout, q->max_frames);
    q->overflowing = TRUE;
  }
  pixman_region32_union(&q->damage, &q->damage, &incoming);
  pixman_region32_fini(&incoming);
  q->flushes++;
  q->stats.flushes++;
  q->flush_time = monotonic_ns();
  q->ready = TRUE;
  g_cond_broadcast(&q->cond);
}

static void
sink_update(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect, guint32 dst_x,
            guint32 dst_y)
{
  GstVhostFrameQueue *q = sink;
  Source src = { 0 };

  if (id != q->scanout)
    return;
  src.image = image->data + (gsize)rect->y * image->stride + (gsize)rect->x * 4u;
  src.stride = image->stride;
  g_mutex_lock(&q->lock);
  flushed(q, &src, rect->width, rect->height, dst_x, dst_y);
  g_mutex_unlock(&q->lock);
}

static void
sink_update_guest(gpointer sink, guint id, VgpuImage *image, VgpuBacking *backing, guint64 offset,
                  const VgpuRect *rect, guint32 dst_x, guint32 dst_y)
{
  GstVhostFrameQueue *q = sink;
  Source src = { 0 };

  if (id != q->scanout)
    return;
  src.backing = backing;
  src.offset = offset;
  src.stride = image->stride;
  g_mutex_lock(&q->lock);
  flushed(q, &src, rect->width, rect->height, dst_x, dst_y);
  g_mutex_unlock(&q->lock);
}

/* Wraps the blob's rows when they are one contiguous host range with
 * 4-byte aligned rows: GstVideoMeta describes the stride. */
static void
sink_scanout_blob(gpointer sink, guint id, VgpuBacking *backing, guint64 offset, guint32 stride)
{
  GstVhostFrameQueue *q = sink;
  g_autoptr(GArray) iov = NULL;
  guint32 h;
  guint64 len;

  if (id != q->scanout)
    return;
  g_mutex_lock(&q->lock);
  h = GST_VIDEO_INFO_HEIGHT(&q->info);
  len = (guint64)stride * h;
  if (!q->enabled || stride % 4u != 0 || offset > vgpu_backing_get_size(backing)
      || len > vgpu_backing_get_size(backing) - offset || len > G_MAXSIZE) {
    GST_INFO("scanout %u: blob rows not whole in the blob; frames are copies", id);
    goto out;
  }
  q->blob_info = q->info;
  q->blob_info.stride[0] = (gint)stride;
  q->blob_info.size = (gsize)len;
  q->blob_export = blob_export_new(backing, offset, len, stride);
  iov = g_array_new(FALSE, FALSE, sizeof(struct iovec));
  vgpu_backing_append_iov(backing, offset, (gsize)len, iov);
  if (iov->len != 1 || (guintptr)g_array_index(iov, struct iovec, 0).iov_base % 4u != 0) {
    GST_INFO("scanout %u: blob in %u host pieces; frames are copies%s", id, iov->len,
             q->blob_export ? " (or the blob's dmabuf)" : "");
    goto out;
  }
  q->blob_mem = gst_memory_new_wrapped(
      GST_MEMORY_FLAG_READONLY, g_array_index(iov, struct iovec, 0).iov_base, (gsize)len, 0,
      (gsize)len, vgpu_backing_ref(backing), (GDestroyNotify)vgpu_backing_unref);
  GST_INFO("scanout %u: a guest-memory blob, stride %u: frames without a copy%s", id, stride,
           q->blob_export ? " (or as its dmabuf)" : "");
out:
  g_mutex_unlock(&q->lock);
}

static gboolean
has_content(GstVhostFrameQueue *q)
{
  return q->cur || frames_are_blob(q);
}

static void
cursor_changed(GstVhostFrameQueue *q)
{
  q->stats.cursor_updates++;
  if (!q->enabled || !has_content(q))
    return;
  q->flush_time = monotonic_ns();
  q->ready = TRUE;
  g_cond_broadcast(&q->cond);
}

static void
sink_cursor_update(gpointer sink, guint id, const guint32 *pixels, guint32 hot_x, guint32 hot_y,
                   guint32 x, guint32 y)
{
  GstVhostFrameQueue *q = sink;
  gsize size = VGPU_CURSOR_SIZE * VGPU_CURSOR_SIZE * 4u;
  GstBuffer *buf;

  if (id != q->scanout)
    return;
  /* Native-endian ARGB words are BGRA bytes on little-endian hosts, the
   * overlay composition's RGB format. */
  buf = gst_buffer_new_allocate(NULL, size, NULL);
  gst_buffer_fill(buf, 0, pixels, size);
  gst_buffer_add_video_meta(buf, GST_VIDEO_FRAME_FLAG_NONE,
                            GST_VIDEO_OVERLAY_COMPOSITION_FORMAT_RGB, VGPU_CURSOR_SIZE,
                            VGPU_CURSOR_SIZE);
  g_mutex_lock(&q->lock);
  gst_clear_buffer(&q->cursor);
  q->cursor = buf;
  q->cursor_hot_x = MIN(hot_x, VGPU_CURSOR_SIZE);
  q->cursor_hot_y = MIN(hot_y, VGPU_CURSOR_SIZE);
  q->cursor_pos_x = MIN(x, G_MAXINT16);
  q->cursor_pos_y = MIN(y, G_MAXINT16);
  q->cursor_visible = TRUE;
  q->cursor_serial++;
  cursor_changed(q);
  g_mutex_unlock(&q->lock);
}

static void
sink_cursor_move(gpointer sink, guint id, guint32 x, guint32 y, gboolean visible)
{
  GstVhostFrameQueue *q = sink;

  if (id != q->scanout)
    return;
  g_mutex_lock(&q->lock);
  q->cursor_pos_x = MIN(x, G_MAXINT16);
  q->cursor_pos_y = MIN(y, G_MAXINT16);
  q->cursor_visible = visible && q->cursor;
  cursor_changed(q);
  g_mutex_unlock(&q->lock);
}

static const VgpuSinkIface sink_iface = {
  .set_scanout = sink_set_scanout,
  .update = sink_update,
  .update_guest = sink_update_guest,
  .cursor_update = sink_cursor_update,
  .cursor_move = sink_cursor_move,
  .scanout_blob = sink_scanout_blob,
};

const VgpuSinkIface *
gst_vhost_frame_queue_get_sink_iface(void)
{
  return &sink_iface;
}

/* ------------------------------------------------------------------------ */
/* Consumer side */

static void
fill_frame(GstVhostFrameQueue *q, GstVhostFrame *frame, gboolean with_damage)
{
  pixman_box32_t *b, *e;
  int n = 0;
  guint kind;

  memset(frame, 0, sizeof *frame);
  frame->buffer = gst_buffer_new();
  kind = (q->blob_mem ? 1u : 0u) | (q->blob_export ? 2u : 0u);
  if (kind != q->last_kind) {
    q->last_kind = kind;
    q->geometry++; /* the consumer decides anew what memory it offers */
  }
  if (q->blob_export)
    frame->blob_export = blob_export_ref(q->blob_export);
  if (q->blob_mem) {
    gst_buffer_append_memory(frame->buffer, gst_memory_ref(q->blob_mem));
    frame->info = q->blob_info;
    frame->zero_copy = TRUE;
    q->stats.zero_copy_frames++;
  } else {
    /* No memory when the frame is the blob's dmabuf, made on export. */
    if (q->cur)
      gst_buffer_append_memory(frame->buffer, gst_memory_ref(q->cur->mem));
    frame->info = q->info;
  }
  frame->geometry = q->geometry;
  frame->number = ++q->number;
  frame->flush_time = with_damage ? q->flush_time : monotonic_ns();
  if (with_damage) {
    frame->flushes = q->flushes;
    b = pixman_region32_rectangles(&q->damage, &n);
    e = pixman_region32_extents(&q->damage);
    if (n > 0)
      frame->bounds = (VgpuRect){ e->x1, e->y1, e->x2 - e->x1, e->y2 - e->y1 };
    if ((guint)n > GST_VHOST_FRAME_MAX_DAMAGE) {
      frame->damage[0] = frame->bounds;
      frame->n_damage = 1;
    } else {
      for (int i = 0; i < n; i++)
        frame->damage[i] = (VgpuRect){ b[i].x1, b[i].y1, b[i].x2 - b[i].x1, b[i].y2 - b[i].y1 };
      frame->n_damage = n;
    }
  }
  if (q->cursor_visible && q->cursor) {
    frame->cursor = gst_buffer_ref(q->cursor);
    frame->cursor_x = (gint)q->cursor_pos_x - (gint)q->cursor_hot_x;
    frame->cursor_y = (gint)q->cursor_pos_y - (gint)q->cursor_hot_y;
    frame->cursor_serial = q->cursor_serial;
  }
  q->stats.frames++;
}

GstVhostFrameResult
gst_vhost_frame_queue_pop(GstVhostFrameQueue *q, gint64 not_before, gint64 deadline,
                          GstVhostFrame *frame)
{
  GstVhostFrameResult res;
  pixman_region32_t none;

  pixman_region32_init(&none);
  g_mutex_lock(&q->lock);
  for (;;) {
    gint64 now = g_get_monotonic_time(), until = deadline;

    if (q->flushing) {
      res = GST_VHOST_FRAME_FLUSHING;
      break;
    }
    if (q->eos && !(q->ready && q->enabled && has_content(q))) {
      res = GST_VHOST_FRAME_EOS;
      break;
    }
    if (q->ready && q->enabled && (now >= not_before || q->eos)) {
      /* The newest pixels may still be only in the shadow. */
      if (!pixman_region32_not_empty(&q->shadow_region)
          || target_for(q, &none, q->max_frames * STREAMING_FRAMES_FACTOR)) {
        if (has_content(q)) {
          fill_frame(q, frame, TRUE);
          if (q->flushes > 1)
            q->stats.coalesced += q->flushes - 1;
          q->ready = FALSE;
          q->flushes = 0;
          pixman_region32_clear(&q->damage);
          res = GST_VHOST_FRAME_OK;
          break;
        }
        q->ready = FALSE; /* a cursor change before any content */
        continue;
      }
      until = now + RELEASE_POLL_US;
    } else if (q->ready && q->enabled) {
      until = q->eos ? now : not_before; /* the last frame goes out at once */
    }
    if (deadline >= 0 && now >= deadline) {
      res = GST_VHOST_FRAME_TIMEOUT;
      break;
    }
    if (deadline >= 0 && until > deadline)
      until = deadline;
    if (until < 0)
      g_cond_wait(&q->cond, &q->lock);
    else
      g_cond_wait_until(&q->cond, &q->lock, until);
  }
  g_mutex_unlock(&q->lock);
  pixman_region32_fini(&none);
  return res;
}

gboolean
gst_vhost_frame_queue_repeat(GstVhostFrameQueue *q, GstVhostFrame *frame)
{
  gboolean ok;

  g_mutex_lock(&q->lock);
  ok = q->enabled && has_content(q) && !q->flushing;
  if (ok)
    fill_frame(q, frame, FALSE);
  g_mutex_unlock(&q->lock);
  return ok;
}

void
gst_vhost_frame_queue_set_flushing(GstVhostFrameQueue *q, gboolean flushing)
{
  g_mutex_lock(&q->lock);
  q->flushing = flushing;
  g_cond_broadcast(&q->cond);
  g_mutex_unlock(&q->lock);
}

void
gst_vhost_frame_queue_set_eos(GstVhostFrameQueue *q)
{
  g_mutex_lock(&q->lock);
  q->eos = TRUE;
  g_cond_broadcast(&q->cond);
  g_mutex_unlock(&q->lock);
}

void
gst_vhost_frame_queue_get_stats(GstVhostFrameQueue *q, GstVhostFrameQueueStats *stats)
{
  g_mutex_lock(&q->lock);
  *stats = q->stats;
  g_mutex_unlock(&q->lock);
}

/* A blob frame becomes (a part of) the blob's dmabuf, with its stride. */
static gboolean
export_blob(GstVhostFrameQueue *q, GstVhostFrame *frame)
{
  const GstVhostBlobExport *e = frame->blob_export;
  GstMemory *d = blob_dmabuf(q, e);

  if (!d)
    return FALSE;
  if (e->head != 0 || e->len != gst_memory_get_sizes(d, NULL, NULL)) {
    GstMemory *part = gst_memory_share(d, (gssize)e->head, (gssize)e->len);

    gst_memory_unref(d);
    d = part;
  }
  if (gst_buffer_n_memory(frame->buffer) > 0)
    gst_buffer_replace_memory(frame->buffer, 0, d);
  else
    gst_buffer_append_memory(frame->buffer, d);
  frame->info = q->blob_info;
  frame->info.stride[0] = (gint)e->stride;
  frame->info.size = e->len;
  g_mutex_lock(&q->lock);
  q->stats.dmabuf_frames++;
  q->stats.blob_dmabuf_frames++;
  g_mutex_unlock(&q->lock);
  return TRUE;
}

gboolean
gst_vhost_frame_queue_export_dmabuf(GstVhostFrameQueue *q, GstVhostFrame *frame)
{
  GstMemory *mem, *d = NULL;

  if (frame->blob_export)
    return export_blob(q, frame);
  mem = gst_buffer_peek_memory(frame->buffer, 0);
  g_mutex_lock(&q->lock);
  for (guint i = 0; i < q->frames->len && !frame->zero_copy; i++) {
    Frame *f = q->frames->pdata[i];

    if (f->mem == mem || f->dmabuf == mem) {
      d = frame_dmabuf(q, f);
      break;
    }
  }
  if (d && d != mem)
    gst_buffer_replace_memory(frame->buffer, 0, gst_memory_ref(d));
  if (d)
    q->stats.dmabuf_frames++;
  g_mutex_unlock(&q->lock);
  return d != NULL;
}

void
gst_vhost_frame_queue_set_dmabuf_consumer(GstVhostFrameQueue *q, gboolean dmabuf)
{
  g_mutex_lock(&q->lock);
  if (q->consumer_dmabuf && !dmabuf && q->blob_export && !q->blob_mem && !q->resync)
    q->resync = blob_export_ref(q->blob_export);
  q->consumer_dmabuf = dmabuf;
  g_mutex_unlock(&q->lock);
}

void
gst_vhost_frame_clear(GstVhostFrame *frame)
{
  gst_clear_buffer(&frame->buffer);
  gst_clear_buffer(&frame->cursor);
  g_clear_pointer(&frame->blob_export, blob_export_unref);
}

GstVhostFrameQueue *
gst_vhost_frame_queue_new(guint scanout, guint max_frames)
{
  GstVhostFrameQueue *q = g_new0(GstVhostFrameQueue, 1);

  GST_DEBUG_CATEGORY_INIT(frames_debug, "vhostframes", 0, "vhost GPU scanout frames");
  g_mutex_init(&q->lock);
  g_cond_init(&q->cond);
  q->scanout = scanout;
  q->max_frames = MAX(max_frames, 2u);
  q->fd_alloc = gst_fd_allocator_new();
  q->dmabuf_alloc = gst_dmabuf_allocator_new();
  q->frames = g_ptr_array_new_with_free_func(frame_free);
  q->blob_dmabufs = g_ptr_array_new_with_free_func(cached_free);
  for (guint i = 0; i < HISTORY; i++)
    pixman_region32_init(&q->history[i]);
  pixman_region32_init(&q->shadow_region);
  pixman_region32_init(&q->damage);
  gst_video_info_init(&q->info);
  return q;
}

void
gst_vhost_frame_queue_free(GstVhostFrameQueue *q)
{
  if (!q)
    return;
  reset_content(q);
  g_clear_pointer(&q->blob_mem, gst_memory_unref);
  g_clear_pointer(&q->blob_export, blob_export_unref);
  g_clear_pointer(&q->resync, blob_export_unref);
  g_ptr_array_unref(q->blob_dmabufs);
  g_ptr_array_unref(q->frames);
  for (guint i = 0; i < HISTORY; i++)
    pixman_region32_fini(&q->history[i]);
  pixman_region32_fini(&q->shadow_region);
  pixman_region32_fini(&q->damage);
  gst_clear_buffer(&q->cursor);
  gst_object_unref(q->fd_alloc);
  gst_object_unref(q->dmabuf_alloc);
  g_mutex_clear(&q->lock);
  g_cond_clear(&q->cond);
  g_free(q);
}
