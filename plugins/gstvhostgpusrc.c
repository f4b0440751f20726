/* gstvhostgpusrc.c: vhostgpusrc, the guest's display as a live source.
 *
 * SECTION:element-vhostgpusrc
 *
 * A vhost-user-gpu backend (QEMU's vhost-user-gpu-pci or vhost-user-vga
 * connects to socket-path) whose scanout becomes a video/x-raw stream: one
 * buffer per guest flush, time-stamped with the running time at which the
 * flush arrived, with the damaged rectangles as GstVideoRegionOfInterestMeta
 * of type "damage", the cursor as GstVideoOverlayCompositionMeta (or drawn
 * in, draw-cursor=true) and a "vhost-frame" element message per buffer.
 *
 *   gst-launch-1.0 vhostgpusrc socket-path=/tmp/gpu.sock ! videoconvert ! autovideosink
 */
#include "gstvhostgpusrc.h"

#include <gio/gio.h>
#include <gst/allocators/allocators.h>
#include <gst/video/video.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "gstvhostframequeue.h"

GST_DEBUG_CATEGORY_STATIC(gst_vhost_gpu_src_debug);
#define GST_CAT_DEFAULT gst_vhost_gpu_src_debug

/* Frame memories per scanout geometry: what downstream may hold at once
 * before flushes go to the shadow copy. */
#define FRAMES_PER_SCANOUT 8u

#define DEFAULT_SCANOUT      0u
#define DEFAULT_SCANOUTS     1u
#define DEFAULT_QEMU_DISPLAY TRUE
#define DEFAULT_KEEPALIVE    0u
#define DEFAULT_DRAW_CURSOR  FALSE
#define DEFAULT_BLOB         TRUE
#define DEFAULT_QEMU_DMABUF  FALSE
#define DEFAULT_VIRGL        FALSE
#define DEFAULT_GLES         FALSE
#define MIN_SIDE             16u
#define MAX_SIDE             4095u
#define MAX_KEEPALIVE_MS     3600000u

enum {
  PROP_0,
  PROP_SOCKET_PATH,
  PROP_FD,
  PROP_SCANOUT,
  PROP_SCANOUTS,
  PROP_WIDTH,
  PROP_HEIGHT,
  PROP_MAX_HOSTMEM,
  PROP_QEMU_DISPLAY,
  PROP_KEEPALIVE_TIME,
  PROP_MAX_FRAMERATE,
  PROP_DRAW_CURSOR,
  PROP_BLOB,
  PROP_QEMU_DMABUF,
  PROP_VIRGL,
  PROP_RENDER_NODE,
  PROP_GLES,
  PROP_STATS,
};

struct _GstVhostGpuSrc {
  GstPushSrc parent;

  /* Properties (object lock). */
  char *socket_path;
  gint fd;
  guint scanout, scanouts;
  guint width, height;
  guint64 max_hostmem;
  gboolean qemu_display;
  guint keepalive_ms;
  gint max_fps_n, max_fps_d;
  gboolean draw_cursor;
  gboolean blob;
  gboolean qemu_dmabuf;
  gboolean virgl, gles;
  char *render_node;

  VgpuVhost *external; /* set_vhost: not owned */

  /* Between start and stop. */
  VgpuVhost *vhost; /* the device served (own or external) */
  gboolean own_vhost;
  GMainContext *context;
  GMainLoop *loop;
  GThread *thread;
  GstVhostFrameQueue *queue;

  /* Streaming thread. */
  guint64 geometry;
  GstVideoInfo info;
  gint64 last_push_us;
  guint64 keepalives;

  gboolean dmabuf; /* memory:DMABuf negotiated (streaming thread) */
  gboolean dmabuf_warned;
  GstCaps *caps;            /* what get_caps answers (object lock) */
  GstStructure *last_stats; /* kept after stop (object lock) */
};

#define VIDEO_FORMATS "{ BGRA, BGRx, ARGB, xRGB, RGBA, xBGR, ABGR, RGBx }"

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE(
    "src", GST_PAD_SRC, GST_PAD_ALWAYS,
    GST_STATIC_CAPS("video/x-raw(" GST_CAPS_FEATURE_MEMORY_DMABUF
                    "), format = (string) " VIDEO_FORMATS
                    ", width = (int) [ 16, 4095 ], height = (int) [ 16, 4095 ]"
                    ", framerate = (fraction) 0/1, pixel-aspect-ratio = (fraction) 1/1; "
                    "video/x-raw, format = (string) " VIDEO_FORMATS
                    ", width = (int) [ 16, 4095 ], height = (int) [ 16, 4095 ]"
                    ", framerate = (fraction) 0/1, pixel-aspect-ratio = (fraction) 1/1"));

/* The plugin registers "GstVhostGpuSrc"; gst-vhost-gpu links its own copy of
 * the element under another type name, so that the plugin can still be
 * loaded into the daemon (a registry scan in-process, a pipeline naming
 * vhostgpusrc) without two registrations of one name. */
#ifndef GST_VHOST_GPU_SRC_TYPE_NAME
#define GST_VHOST_GPU_SRC_TYPE_NAME "GstVhostGpuSrc"
#endif

static void gst_vhost_gpu_src_init(GstVhostGpuSrc *self);
static void gst_vhost_gpu_src_class_init(GstVhostGpuSrcClass *klass);
static gpointer gst_vhost_gpu_src_parent_class = NULL;

static void
gst_vhost_gpu_src_class_intern_init(gpointer klass, gpointer data)
{
  gst_vhost_gpu_src_parent_class = g_type_class_peek_parent(klass);
  gst_vhost_gpu_src_class_init(klass);
}

static void
gst_vhost_gpu_src_instance_init(GTypeInstance *instance, gpointer klass)
{
  gst_vhost_gpu_src_init((GstVhostGpuSrc *)instance);
}

GType
gst_vhost_gpu_src_get_type(void)
{
  static gsize type = 0;

  if (g_once_init_enter(&type)) {
    GType t = g_type_register_static_simple(
        GST_TYPE_PUSH_SRC, g_intern_static_string(GST_VHOST_GPU_SRC_TYPE_NAME),
        sizeof(GstVhostGpuSrcClass), gst_vhost_gpu_src_class_intern_init, sizeof(GstVhostGpuSrc),
        gst_vhost_gpu_src_instance_init, 0);

    g_once_init_leave(&type, t);
  }
  return type;
}
GST_ELEMENT_REGISTER_DEFINE(vhostgpusrc, "vhostgpusrc", GST_RANK_NONE, GST_TYPE_VHOST_GPU_SRC)

static guint64
monotonic_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (guint64)ts.tv_sec * GST_SECOND + (guint64)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Backend */

static gpointer
control_main(gpointer data)
{
  GstVhostGpuSrc *self = data;

  g_main_context_push_thread_default(self->context);
  g_main_loop_run(self->loop);
  g_main_context_pop_thread_default(self->context);
  return NULL;
}

/* Control thread: an --fd style connection ended; nothing more will come. */
static void
on_frontend_gone(gpointer data)
{
  GstVhostGpuSrc *self = data;

  GST_OBJECT_LOCK(self);
  if (self->vhost && self->queue && !vhu_backend_is_serving(vgpu_vhost_get_backend(self->vhost))) {
    GST_INFO_OBJECT(self, "the frontend left and no other will be served: EOS");
    gst_vhost_frame_queue_set_eos(self->queue);
  }
  GST_OBJECT_UNLOCK(self);
}

static gboolean
serve(GstVhostGpuSrc *self, GError **error)
{
  VgpuVhostConfig cfg = { 0 };
  VgpuVirglConfig virgl = { 0 };
  VhuBackend *backend;
  g_autofree char *render_node = NULL;
  char *path;
  int fd;

  GST_OBJECT_LOCK(self);
  cfg.device.num_scanouts = self->scanouts;
  cfg.device.width = self->width;
  cfg.device.height = self->height;
  cfg.device.max_hostmem = self->max_hostmem;
  cfg.device.blob = self->blob;
  /* 3D exactly as gst-vhost-gpu --virgl: the device model starts the
   * renderer on its queue thread. */
  if (self->virgl) {
    virgl.render_node = render_node = g_strdup(self->render_node);
    virgl.gles = self->gles;
    cfg.virgl = &virgl;
  }
  path = g_strdup(self->socket_path);
  fd = self->fd;
  GST_OBJECT_UNLOCK(self);

  if ((path != NULL) == (fd >= 0)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "set exactly one of socket-path and fd");
    g_free(path);
    return FALSE;
  }
  self->context = g_main_context_new();
  self->vhost = vgpu_vhost_new(&cfg, self->context, error);
  if (!self->vhost) {
    g_free(path);
    return FALSE;
  }
  self->own_vhost = TRUE;
  backend = vgpu_vhost_get_backend(self->vhost);
  if (path) {
    gboolean ok = vhu_backend_listen(backend, path, error);

    g_free(path);
    if (!ok)
      return FALSE;
  } else {
    int dup_fd = dup(fd);

    if (dup_fd < 0 || !vhu_backend_serve_fd(backend, dup_fd, error)) {
      if (dup_fd < 0)
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "fd %d: %s", fd,
                    g_strerror(errno));
      return FALSE;
    }
  }
  vgpu_vhost_set_disconnect_func(self->vhost, on_frontend_gone, self);
  return TRUE;
}

static void
attach_sink(GstVhostGpuSrc *self, gboolean qemu_display, gboolean qemu_dmabuf)
{
  VgpuDevice *dev = vgpu_vhost_get_device(self->vhost);

  vgpu_vhost_lock(self->vhost);
  if (!qemu_display)
    vgpu_device_remove_sink(dev, vgpu_vhost_get_display(self->vhost));
  else if (self->own_vhost)
    vgpu_qemu_display_set_dmabuf(vgpu_vhost_get_display(self->vhost), qemu_dmabuf);
  vgpu_device_add_sink(dev, gst_vhost_frame_queue_get_sink_iface(), self->queue);
  vgpu_vhost_unlock(self->vhost);
}

static gboolean
gst_vhost_gpu_src_start(GstBaseSrc *bsrc)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(bsrc);
  g_autoptr(GError) error = NULL;
  GstVhostFrameQueue *queue;
  gboolean qemu_display, qemu_dmabuf;
  guint scanout;

  GST_OBJECT_LOCK(self);
  scanout = self->scanout;
  qemu_display = self->qemu_display;
  qemu_dmabuf = self->qemu_dmabuf;
  GST_OBJECT_UNLOCK(self);
  queue = gst_vhost_frame_queue_new(scanout, FRAMES_PER_SCANOUT);
  GST_OBJECT_LOCK(self);
  self->queue = queue;
  GST_OBJECT_UNLOCK(self);
  self->geometry = 0;
  self->last_push_us = 0;
  self->keepalives = 0;
  if (self->external) {
    self->vhost = self->external;
    self->own_vhost = FALSE;
    attach_sink(self, TRUE, FALSE);
    return TRUE;
  }
  if (!serve(self, &error)) {
    GST_ELEMENT_ERROR(self, RESOURCE, OPEN_READ_WRITE,
                      ("Cannot serve vhost-user: %s", error->message), (NULL));
    g_clear_pointer(&self->vhost, vgpu_vhost_free);
    g_clear_pointer(&self->context, g_main_context_unref);
    GST_OBJECT_LOCK(self);
    self->queue = NULL;
    GST_OBJECT_UNLOCK(self);
    gst_vhost_frame_queue_free(queue);
    return FALSE;
  }
  attach_sink(self, qemu_display, qemu_dmabuf);
  self->loop = g_main_loop_new(self->context, FALSE);
  self->thread = g_thread_new("vhostgpusrc-ctl", control_main, self);
  GST_INFO_OBJECT(self, "serving the vhost-user-gpu frontend");
  return TRUE;
}

static GstStructure *make_stats(GstVhostGpuSrc *self);

static gboolean
gst_vhost_gpu_src_stop(GstBaseSrc *bsrc)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(bsrc);
  GstStructure *stats = make_stats(self);
  GstVhostFrameQueue *queue;
  VgpuVhost *vhost;

  /* Others (stats, send_event) see the element stopped from here on. */
  GST_OBJECT_LOCK(self);
  if (self->last_stats)
    gst_structure_free(self->last_stats);
  self->last_stats = stats;
  queue = g_steal_pointer(&self->queue);
  vhost = g_steal_pointer(&self->vhost);
  gst_clear_caps(&self->caps);
  GST_OBJECT_UNLOCK(self);
  if (vhost) {
    vgpu_vhost_lock(vhost);
    vgpu_device_remove_sink(vgpu_vhost_get_device(vhost), queue);
    vgpu_vhost_unlock(vhost);
  }
  if (self->thread) {
    g_main_loop_quit(self->loop);
    g_thread_join(self->thread);
    self->thread = NULL;
  }
  if (self->own_vhost)
    vgpu_vhost_free(vhost);
  self->own_vhost = FALSE;
  g_clear_pointer(&self->loop, g_main_loop_unref);
  g_clear_pointer(&self->context, g_main_context_unref);
  gst_vhost_frame_queue_free(queue);
  return TRUE;
}

/* ------------------------------------------------------------------------ */
/* Caps */

static void
add_max_framerate(GstVhostGpuSrc *self, GstCaps *caps)
{
  if (self->max_fps_n > 0)
    gst_caps_set_simple(caps, "max-framerate", GST_TYPE_FRACTION, self->max_fps_n, self->max_fps_d,
                        NULL);
}

/* @caps, preceded by the same as memory:DMABuf when frames can be dmabufs:
 * with udmabuf, frames of sealed memfds and blobs that udmabuf can take
 * (@blob_only: a blob frame that cannot be a dmabuf, as it is guest memory
 * in unsealed files or unaligned pages), never frames with the cursor
 * drawn into a copy.  Object lock held. */
static GstCaps *
offer_dmabuf(GstVhostGpuSrc *self, GstCaps *caps, gboolean blob_only)
{
  GstCaps *dma;

  if (blob_only || self->draw_cursor || !gst_vhost_udmabuf_available())
    return caps;
  dma = gst_caps_copy(caps);
  gst_caps_set_features(dma, 0, gst_caps_features_new(GST_CAPS_FEATURE_MEMORY_DMABUF, NULL));
  gst_caps_append(dma, caps);
  return dma;
}

/* The scanout's caps, or the offered mode in BGRx (what Linux guests use)
 * until the guest set one. */
static GstCaps *
gst_vhost_gpu_src_get_caps(GstBaseSrc *bsrc, GstCaps *filter)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(bsrc);
  GstVideoInfo info;
  GstCaps *caps;

  GST_OBJECT_LOCK(self);
  if (self->caps) {
    caps = gst_caps_ref(self->caps);
  } else {
    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_BGRx, self->width, self->height);
    caps = gst_video_info_to_caps(&info);
    add_max_framerate(self, caps);
    caps = offer_dmabuf(self, caps, FALSE);
  }
  GST_OBJECT_UNLOCK(self);
  if (filter) {
    GstCaps *tmp = gst_caps_intersect_full(filter, caps, GST_CAPS_INTERSECT_FIRST);

    gst_caps_unref(caps);
    caps = tmp;
  }
  return caps;
}

static gboolean
renegotiate(GstVhostGpuSrc *self, const GstVhostFrame *frame)
{
  GstCaps *caps = gst_video_info_to_caps(&frame->info);
  GstCaps *current;
  gboolean ok;

  GST_OBJECT_LOCK(self);
  add_max_framerate(self, caps);
  caps = offer_dmabuf(self, caps, frame->zero_copy && !frame->blob_export);
  gst_caps_replace(&self->caps, caps);
  GST_OBJECT_UNLOCK(self);
  GST_INFO_OBJECT(self, "scanout geometry: %" GST_PTR_FORMAT, caps);
  gst_caps_unref(caps);
  self->info = frame->info;
  self->geometry = frame->geometry;
  ok = gst_base_src_negotiate(GST_BASE_SRC(self));
  current = gst_pad_get_current_caps(GST_BASE_SRC_PAD(self));
  self->dmabuf = current
                 && gst_caps_features_contains(gst_caps_get_features(current, 0),
                                               GST_CAPS_FEATURE_MEMORY_DMABUF);
  gst_vhost_frame_queue_set_dmabuf_consumer(self->queue, self->dmabuf);
  gst_clear_caps(&current);
  return ok;
}

/* ------------------------------------------------------------------------ */
/* Buffers */

static GstClockTime
running_time_at(GstVhostGpuSrc *self, guint64 mono_ns)
{
  GstClock *clock = gst_element_get_clock(GST_ELEMENT(self));
  GstClockTime base = gst_element_get_base_time(GST_ELEMENT(self)), now, t;
  guint64 now_mono;

  if (!clock)
    return GST_CLOCK_TIME_NONE;
  now = gst_clock_get_time(clock);
  now_mono = monotonic_ns();
  gst_object_unref(clock);
  t = now - MIN(now, now_mono > mono_ns ? now_mono - mono_ns : 0);
  return t > base ? t - base : 0;
}

static GstVideoOverlayComposition *
cursor_composition(const GstVhostFrame *frame)
{
  GstVideoOverlayRectangle *rect;
  GstVideoOverlayComposition *comp;

  rect = gst_video_overlay_rectangle_new_raw(frame->cursor, frame->cursor_x, frame->cursor_y,
                                             VGPU_CURSOR_SIZE, VGPU_CURSOR_SIZE,
                                             GST_VIDEO_OVERLAY_FORMAT_FLAG_PREMULTIPLIED_ALPHA);
  comp = gst_video_overlay_composition_new(rect);
  gst_video_overlay_rectangle_unref(rect);
  return comp;
}

/* A copy of the frame with the cursor drawn in (the frame memory itself is
 * never written outside the device's flushes). */
static GstBuffer *
draw_cursor(GstVhostGpuSrc *self, GstVhostFrame *frame)
{
  GstVideoOverlayComposition *comp = cursor_composition(frame);
  GstBuffer *out = gst_buffer_new_allocate(NULL, GST_VIDEO_INFO_SIZE(&frame->info), NULL);
  GstVideoFrame vf;
  GstMapInfo in;

  if (gst_buffer_map(frame->buffer, &in, GST_MAP_READ)) {
    gst_buffer_fill(out, 0, in.data, MIN(in.size, GST_VIDEO_INFO_SIZE(&frame->info)));
    gst_buffer_unmap(frame->buffer, &in);
  }
  if (gst_video_frame_map(&vf, &frame->info, out, GST_MAP_READWRITE)) {
    gst_video_overlay_composition_blend(comp, &vf);
    gst_video_frame_unmap(&vf);
  }
  gst_video_overlay_composition_unref(comp);
  return out;
}

static GstBuffer *
decorate(GstVhostGpuSrc *self, GstVhostFrame *frame, gboolean draw)
{
  GstVideoInfo *info = &frame->info;
  GstBuffer *buf;

  if (frame->cursor && draw)
    buf = draw_cursor(self, frame);
  else
    buf = g_steal_pointer(&frame->buffer);
  GST_BUFFER_PTS(buf) = running_time_at(self, frame->flush_time);
  GST_BUFFER_DTS(buf) = GST_CLOCK_TIME_NONE;
  GST_BUFFER_DURATION(buf) = GST_CLOCK_TIME_NONE;
  GST_BUFFER_OFFSET(buf) = frame->number;
  gst_buffer_add_video_meta_full(buf, GST_VIDEO_FRAME_FLAG_NONE, GST_VIDEO_INFO_FORMAT(info),
                                 GST_VIDEO_INFO_WIDTH(info), GST_VIDEO_INFO_HEIGHT(info), 1,
                                 info->offset, info->stride);
  for (guint i = 0; i < frame->n_damage; i++) {
    const VgpuRect *r = &frame->damage[i];

    gst_buffer_add_video_region_of_interest_meta(buf, "damage", r->x, r->y, r->width, r->height);
  }
  if (frame->cursor && !draw) {
    GstVideoOverlayComposition *comp = cursor_composition(frame);

    gst_buffer_add_video_overlay_composition_meta(buf, comp);
    gst_video_overlay_composition_unref(comp);
  }
  return buf;
}

static void
post_frame_message(GstVhostGpuSrc *self, const GstVhostFrame *frame, GstBuffer *buf,
                   gboolean keepalive)
{
  GstStructure *s;

  s = gst_structure_new("vhost-frame", "scanout", G_TYPE_UINT, self->scanout, "frame",
                        G_TYPE_UINT64, frame->number, "flushes", G_TYPE_UINT, frame->flushes, "x",
                        G_TYPE_UINT, frame->bounds.x, "y", G_TYPE_UINT, frame->bounds.y, "width",
                        G_TYPE_UINT, frame->bounds.width, "height", G_TYPE_UINT,
                        frame->bounds.height, "damage-rects", G_TYPE_UINT, frame->n_damage,
                        "keepalive", G_TYPE_BOOLEAN, keepalive, "cursor", G_TYPE_BOOLEAN,
                        frame->cursor != NULL, "pts", G_TYPE_UINT64, GST_BUFFER_PTS(buf), NULL);
  gst_element_post_message(GST_ELEMENT(self), gst_message_new_element(GST_OBJECT(self), s));
}

static GstFlowReturn
gst_vhost_gpu_src_create(GstPushSrc *psrc, GstBuffer **outbuf)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(psrc);
  GstVhostFrame frame = { 0 };
  gboolean keepalive = FALSE, draw;
  gint64 not_before = 0, deadline = -1;
  guint keepalive_ms;
  gint fps_n, fps_d;

  GST_OBJECT_LOCK(self);
  keepalive_ms = self->keepalive_ms;
  fps_n = self->max_fps_n;
  fps_d = self->max_fps_d;
  draw = self->draw_cursor;
  GST_OBJECT_UNLOCK(self);

again:
  keepalive = FALSE;
  for (;;) {
    GstVhostFrameResult r;

    if (fps_n > 0 && self->last_push_us > 0)
      not_before = self->last_push_us + gst_util_uint64_scale_int(G_USEC_PER_SEC, fps_d, fps_n);
    if (keepalive_ms > 0)
      deadline = MAX(self->last_push_us, not_before) + (gint64)keepalive_ms * 1000;
    r = gst_vhost_frame_queue_pop(self->queue, not_before, deadline, &frame);
    if (r == GST_VHOST_FRAME_FLUSHING)
      return GST_FLOW_FLUSHING;
    if (r == GST_VHOST_FRAME_EOS)
      return GST_FLOW_EOS;
    if (r == GST_VHOST_FRAME_OK)
      break;
    /* Idle guest: the last frame again, if there is one. */
    if (self->geometry != 0 && gst_vhost_frame_queue_repeat(self->queue, &frame)) {
      keepalive = TRUE;
      self->keepalives++;
      break;
    }
    self->last_push_us = g_get_monotonic_time();
  }
  if (frame.geometry != self->geometry && !renegotiate(self, &frame)) {
    gst_vhost_frame_clear(&frame);
    GST_ELEMENT_ERROR(self, CORE, NEGOTIATION, (NULL),
                      ("downstream refused the scanout's caps %" GST_PTR_FORMAT, self->caps));
    return GST_FLOW_NOT_NEGOTIATED;
  }
  if (self->dmabuf && !gst_vhost_frame_queue_export_dmabuf(self->queue, &frame)) {
    if (!self->dmabuf_warned)
      GST_WARNING_OBJECT(self,
                         "memory:DMABuf negotiated but frame %" G_GUINT64_FORMAT
                         " could not be exported: sent as fd memory",
                         frame.number);
    self->dmabuf_warned = TRUE;
  }
  if (gst_buffer_n_memory(frame.buffer) == 0) {
    /* A blob's frame that only its dmabuf could carry, and it did not (the
     * export failed, or downstream no longer takes dmabufs): the queue
     * copies the whole blob on the next flush. */
    gst_vhost_frame_clear(&frame);
    goto again;
  }
  *outbuf = decorate(self, &frame, draw);
  GST_LOG_OBJECT(
      self, "frame %" G_GUINT64_FORMAT ": %u flushes, %u damage rects, pts %" GST_TIME_FORMAT,
      frame.number, frame.flushes, frame.n_damage, GST_TIME_ARGS(GST_BUFFER_PTS(*outbuf)));
  post_frame_message(self, &frame, *outbuf, keepalive);
  gst_vhost_frame_clear(&frame);
  self->last_push_us = g_get_monotonic_time();
  return GST_FLOW_OK;
}

static gboolean
gst_vhost_gpu_src_unlock(GstBaseSrc *bsrc)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(bsrc);

  if (self->queue)
    gst_vhost_frame_queue_set_flushing(self->queue, TRUE);
  return TRUE;
}

static gboolean
gst_vhost_gpu_src_unlock_stop(GstBaseSrc *bsrc)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(bsrc);

  if (self->queue)
    gst_vhost_frame_queue_set_flushing(self->queue, FALSE);
  return TRUE;
}

/* EOS sent to the element: the frame already flushed goes out first, so a
 * recording ends with what the guest showed last. */
static gboolean
gst_vhost_gpu_src_send_event(GstElement *element, GstEvent *event)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(element);
  gboolean drained = FALSE;

  if (GST_EVENT_TYPE(event) == GST_EVENT_EOS) {
    GST_OBJECT_LOCK(self);
    if (self->queue) {
      gst_vhost_frame_queue_set_eos(self->queue);
      drained = TRUE;
    }
    GST_OBJECT_UNLOCK(self);
  }
  if (drained) {
    GST_INFO_OBJECT(self, "end of stream after the pending frame");
    gst_event_unref(event);
    return TRUE;
  }
  return GST_ELEMENT_CLASS(gst_vhost_gpu_src_parent_class)->send_event(element, event);
}

/* Buffers are stamped when the flush arrived and pushed as soon as possible;
 * with max-framerate they may wait up to one interval. */
static gboolean
gst_vhost_gpu_src_query(GstBaseSrc *bsrc, GstQuery *query)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(bsrc);
  GstClockTime min = 0;

  if (GST_QUERY_TYPE(query) != GST_QUERY_LATENCY)
    return GST_BASE_SRC_CLASS(gst_vhost_gpu_src_parent_class)->query(bsrc, query);
  GST_OBJECT_LOCK(self);
  if (self->max_fps_n > 0)
    min = gst_util_uint64_scale_int(GST_SECOND, self->max_fps_d, self->max_fps_n);
  GST_OBJECT_UNLOCK(self);
  gst_query_set_latency(query, TRUE, min, GST_CLOCK_TIME_NONE);
  return TRUE;
}

/* ------------------------------------------------------------------------ */
/* Properties */

static GstStructure *
make_stats(GstVhostGpuSrc *self)
{
  GstVhostFrameQueueStats qs = { 0 };
  VgpuDeviceStats ds = { 0 };

  if (self->queue)
    gst_vhost_frame_queue_get_stats(self->queue, &qs);
  if (self->vhost) {
    vgpu_vhost_lock(self->vhost);
    vgpu_device_get_stats(vgpu_vhost_get_device(self->vhost), &ds);
    vgpu_vhost_unlock(self->vhost);
  }
  return gst_structure_new(
      "vhostgpusrc-stats", "flushes", G_TYPE_UINT64, qs.flushes, "frames", G_TYPE_UINT64, qs.frames,
      "coalesced", G_TYPE_UINT64, qs.coalesced, "overflows", G_TYPE_UINT64, qs.overflows,
      "keepalives", G_TYPE_UINT64, self->keepalives, "bytes-copied", G_TYPE_UINT64, qs.bytes_copied,
      "bytes-synced", G_TYPE_UINT64, qs.bytes_synced, "frames-allocated", G_TYPE_UINT64,
      qs.frames_allocated, "geometry-changes", G_TYPE_UINT64, qs.geometry_changes, "cursor-updates",
      G_TYPE_UINT64, qs.cursor_updates, "zero-copy-frames", G_TYPE_UINT64, qs.zero_copy_frames,
      "dmabuf-frames", G_TYPE_UINT64, qs.dmabuf_frames, "blob-dmabuf-frames", G_TYPE_UINT64,
      qs.blob_dmabuf_frames, "commands", G_TYPE_UINT64, ds.commands, "errors", G_TYPE_UINT64,
      ds.errors, "resources", G_TYPE_UINT, ds.resources, "hostmem-used", G_TYPE_UINT64,
      ds.hostmem_used, NULL);
}

void
gst_vhost_gpu_src_set_vhost(GstVhostGpuSrc *src, VgpuVhost *vhost)
{
  g_return_if_fail(GST_IS_VHOST_GPU_SRC(src));
  g_return_if_fail(GST_STATE(src) == GST_STATE_NULL);
  src->external = vhost;
}

static void
gst_vhost_gpu_src_set_property(GObject *object, guint prop_id, const GValue *value,
                               GParamSpec *pspec)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(object);

  GST_OBJECT_LOCK(self);
  switch (prop_id) {
    case PROP_SOCKET_PATH:
      g_free(self->socket_path);
      self->socket_path = g_value_dup_string(value);
      break;
    case PROP_FD:
      self->fd = g_value_get_int(value);
      break;
    case PROP_SCANOUT:
      self->scanout = g_value_get_uint(value);
      break;
    case PROP_SCANOUTS:
      self->scanouts = g_value_get_uint(value);
      break;
    case PROP_WIDTH:
      self->width = g_value_get_uint(value);
      break;
    case PROP_HEIGHT:
      self->height = g_value_get_uint(value);
      break;
    case PROP_MAX_HOSTMEM:
      self->max_hostmem = g_value_get_uint64(value);
      break;
    case PROP_QEMU_DISPLAY:
      self->qemu_display = g_value_get_boolean(value);
      break;
    case PROP_KEEPALIVE_TIME:
      self->keepalive_ms = g_value_get_uint(value);
      break;
    case PROP_MAX_FRAMERATE:
      self->max_fps_n = gst_value_get_fraction_numerator(value);
      self->max_fps_d = gst_value_get_fraction_denominator(value);
      break;
    case PROP_DRAW_CURSOR:
      self->draw_cursor = g_value_get_boolean(value);
      break;
    case PROP_QEMU_DMABUF:
      self->qemu_dmabuf = g_value_get_boolean(value);
      break;
    case PROP_BLOB:
      self->blob = g_value_get_boolean(value);
      break;
    case PROP_VIRGL:
      self->virgl = g_value_get_boolean(value);
      break;
    case PROP_RENDER_NODE:
      g_free(self->render_node);
      self->render_node = g_value_dup_string(value);
      break;
    case PROP_GLES:
      self->gles = g_value_get_boolean(value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID(object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK(self);
}

static void
gst_vhost_gpu_src_get_property(GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(object);

  if (prop_id == PROP_STATS) {
    GstStructure *s = NULL;

    /* The object lock keeps the queue and the device from going away. */
    GST_OBJECT_LOCK(self);
    if (!self->queue && self->last_stats)
      s = gst_structure_copy(self->last_stats);
    else
      s = make_stats(self);
    GST_OBJECT_UNLOCK(self);
    g_value_take_boxed(value, s);
    return;
  }
  GST_OBJECT_LOCK(self);
  switch (prop_id) {
    case PROP_SOCKET_PATH:
      g_value_set_string(value, self->socket_path);
      break;
    case PROP_FD:
      g_value_set_int(value, self->fd);
      break;
    case PROP_SCANOUT:
      g_value_set_uint(value, self->scanout);
      break;
    case PROP_SCANOUTS:
      g_value_set_uint(value, self->scanouts);
      break;
    case PROP_WIDTH:
      g_value_set_uint(value, self->width);
      break;
    case PROP_HEIGHT:
      g_value_set_uint(value, self->height);
      break;
    case PROP_MAX_HOSTMEM:
      g_value_set_uint64(value, self->max_hostmem);
      break;
    case PROP_QEMU_DISPLAY:
      g_value_set_boolean(value, self->qemu_display);
      break;
    case PROP_KEEPALIVE_TIME:
      g_value_set_uint(value, self->keepalive_ms);
      break;
    case PROP_MAX_FRAMERATE:
      gst_value_set_fraction(value, self->max_fps_n, self->max_fps_d);
      break;
    case PROP_DRAW_CURSOR:
      g_value_set_boolean(value, self->draw_cursor);
      break;
    case PROP_QEMU_DMABUF:
      g_value_set_boolean(value, self->qemu_dmabuf);
      break;
    case PROP_BLOB:
      g_value_set_boolean(value, self->blob);
      break;
    case PROP_VIRGL:
      g_value_set_boolean(value, self->virgl);
      break;
    case PROP_RENDER_NODE:
      g_value_set_string(value, self->render_node);
      break;
    case PROP_GLES:
      g_value_set_boolean(value, self->gles);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID(object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK(self);
}

static void
gst_vhost_gpu_src_finalize(GObject *object)
{
  GstVhostGpuSrc *self = GST_VHOST_GPU_SRC(object);

  g_free(self->socket_path);
  g_free(self->render_node);
  gst_clear_caps(&self->caps);
  if (self->last_stats)
    gst_structure_free(self->last_stats);
  G_OBJECT_CLASS(gst_vhost_gpu_src_parent_class)->finalize(object);
}

static void
gst_vhost_gpu_src_init(GstVhostGpuSrc *self)
{
  self->fd = -1;
  self->scanout = DEFAULT_SCANOUT;
  self->scanouts = DEFAULT_SCANOUTS;
  self->width = VGPU_DEFAULT_WIDTH;
  self->height = VGPU_DEFAULT_HEIGHT;
  self->max_hostmem = VGPU_DEFAULT_MAX_HOSTMEM;
  self->qemu_display = DEFAULT_QEMU_DISPLAY;
  self->keepalive_ms = DEFAULT_KEEPALIVE;
  self->max_fps_n = 0;
  self->max_fps_d = 1;
  self->draw_cursor = DEFAULT_DRAW_CURSOR;
  self->blob = DEFAULT_BLOB;
  self->qemu_dmabuf = DEFAULT_QEMU_DMABUF;
  self->virgl = DEFAULT_VIRGL;
  self->gles = DEFAULT_GLES;
  gst_base_src_set_live(GST_BASE_SRC(self), TRUE);
  gst_base_src_set_format(GST_BASE_SRC(self), GST_FORMAT_TIME);
}

#define READY_FLAGS   (G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY)
#define PLAYING_FLAGS (G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING)

static void
gst_vhost_gpu_src_class_init(GstVhostGpuSrcClass *klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS(klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS(klass);
  GstBaseSrcClass *basesrc_class = GST_BASE_SRC_CLASS(klass);
  GstPushSrcClass *pushsrc_class = GST_PUSH_SRC_CLASS(klass);

  GST_DEBUG_CATEGORY_INIT(gst_vhost_gpu_src_debug, "vhostgpusrc", 0,
                          "vhost-user-gpu backend as a video source");
  gobject_class->set_property = gst_vhost_gpu_src_set_property;
  gobject_class->get_property = gst_vhost_gpu_src_get_property;
  gobject_class->finalize = gst_vhost_gpu_src_finalize;

  g_object_class_install_property(
      gobject_class, PROP_SOCKET_PATH,
      g_param_spec_string("socket-path", "Socket path",
                          "Listen on this Unix socket for the vhost-user frontend (QEMU); a "
                          "frontend that leaves is followed by the next one",
                          NULL, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_FD,
      g_param_spec_int("fd", "File descriptor",
                       "Serve this connected vhost-user socket instead of socket-path (the "
                       "element uses a duplicate; EOS once that frontend leaves); -1: none",
                       -1, G_MAXINT, -1, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_SCANOUT,
      g_param_spec_uint("scanout", "Scanout", "The scanout (guest output) to follow", 0,
                        VGPU_MAX_SCANOUTS - 1, DEFAULT_SCANOUT, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_SCANOUTS,
      g_param_spec_uint("scanouts", "Scanouts",
                        "Number of scanouts the device offers (match QEMU's max_outputs)", 1,
                        VGPU_MAX_SCANOUTS, DEFAULT_SCANOUTS, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_WIDTH,
      g_param_spec_uint("width", "Width",
                        "Width of the display mode offered to the guest when QEMU's display "
                        "does not answer",
                        MIN_SIDE, MAX_SIDE, VGPU_DEFAULT_WIDTH, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_HEIGHT,
      g_param_spec_uint("height", "Height",
                        "Height of the display mode offered to the guest when QEMU's display "
                        "does not answer",
                        MIN_SIDE, MAX_SIDE, VGPU_DEFAULT_HEIGHT, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_MAX_HOSTMEM,
      g_param_spec_uint64("max-hostmem", "Maximum host memory",
                          "Bytes of host memory the guest may use for its resources", 64 * 1024,
                          G_MAXUINT64, VGPU_DEFAULT_MAX_HOSTMEM, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_QEMU_DISPLAY,
      g_param_spec_boolean("qemu-display", "QEMU display",
                           "Also show the scanouts through the display socket QEMU hands over "
                           "(QEMU's window keeps working)",
                           DEFAULT_QEMU_DISPLAY, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_KEEPALIVE_TIME,
      g_param_spec_uint("keepalive-time", "Keepalive time",
                        "Send the last frame again after this many milliseconds without a "
                        "flush (0: never)",
                        0, MAX_KEEPALIVE_MS, DEFAULT_KEEPALIVE, PLAYING_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_MAX_FRAMERATE,
      gst_param_spec_fraction("max-framerate", "Maximum framerate",
                              "At most this many buffers per second, flushes in between "
                              "coalesce (0/1: no limit); set as max-framerate in the caps",
                              0, 1, G_MAXINT, 1, 0, 1, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_DRAW_CURSOR,
      g_param_spec_boolean("draw-cursor", "Draw cursor",
                           "Draw the guest's cursor into a copy of each frame instead of "
                           "attaching it as an overlay composition meta",
                           DEFAULT_DRAW_CURSOR, PLAYING_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_BLOB,
      g_param_spec_boolean("blob", "Blob resources",
                           "Offer guest-memory blob resources (VIRTIO_GPU_F_RESOURCE_BLOB): a "
                           "guest scanning out a blob has its frames sent without a copy",
                           DEFAULT_BLOB, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_QEMU_DMABUF,
      g_param_spec_boolean("qemu-dmabuf", "dmabuf scanouts to QEMU",
                           "Send scanouts to QEMU's display as dmabufs (DMABUF_SCANOUT2 + "
                           "DMABUF_UPDATE) where /dev/udmabuf exists and QEMU offers DMABUF2, "
                           "instead of pixels; only a GL display of QEMU (gl=on) shows them",
                           DEFAULT_QEMU_DMABUF, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_VIRGL,
      g_param_spec_boolean("virgl", "virgl 3D",
                           "Offer 3D (VIRTIO_GPU_F_VIRGL) through virglrenderer, as "
                           "gst-vhost-gpu --virgl; without render-node it renders on the CPU "
                           "(llvmpipe); start fails where the renderer cannot start",
                           DEFAULT_VIRGL, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_RENDER_NODE,
      g_param_spec_string("render-node", "Render node",
                          "With virgl, render on the GPU of this DRM render node (e.g. "
                          "/dev/dri/renderD128); NULL: surfaceless EGL",
                          NULL, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_GLES,
      g_param_spec_boolean("gles", "OpenGL ES",
                           "With virgl, render through OpenGL ES rather than desktop OpenGL",
                           DEFAULT_GLES, READY_FLAGS));
  g_object_class_install_property(
      gobject_class, PROP_STATS,
      g_param_spec_boxed("stats", "Statistics",
                         "Counters: flushes, frames, coalesced flushes, overflows (all frames "
                         "held downstream), keepalives, bytes copied, device commands and errors",
                         GST_TYPE_STRUCTURE, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));

  gst_element_class_add_static_pad_template(element_class, &src_template);
  gst_element_class_set_static_metadata(
      element_class, "vhost-user GPU source", "Source/Video",
      "Serves a virtio-gpu to a VM over vhost-user and streams its scanout",
      "gst-vhost developers");

  element_class->send_event = GST_DEBUG_FUNCPTR(gst_vhost_gpu_src_send_event);
  basesrc_class->start = GST_DEBUG_FUNCPTR(gst_vhost_gpu_src_start);
  basesrc_class->stop = GST_DEBUG_FUNCPTR(gst_vhost_gpu_src_stop);
  basesrc_class->get_caps = GST_DEBUG_FUNCPTR(gst_vhost_gpu_src_get_caps);
  basesrc_class->unlock = GST_DEBUG_FUNCPTR(gst_vhost_gpu_src_unlock);
  basesrc_class->unlock_stop = GST_DEBUG_FUNCPTR(gst_vhost_gpu_src_unlock_stop);
  basesrc_class->query = GST_DEBUG_FUNCPTR(gst_vhost_gpu_src_query);
  pushsrc_class->create = GST_DEBUG_FUNCPTR(gst_vhost_gpu_src_create);
}
