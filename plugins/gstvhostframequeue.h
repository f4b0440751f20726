/* gstvhostframequeue.h: one scanout of the GPU device model as GStreamer
 * frames.
 *
 * A GstVhostFrameQueue is a display sink (vgpu-sink.h) for one scanout.  Its
 * sink callbacks run under the device lock and never wait: each flush copies
 * the flushed rectangle once, from guest memory (update_guest) or from the
 * resource's image (update), into memfd-backed frame memory (GstFdAllocator,
 * kept mapped, from a small pool), so the guest never waits for the
 * pipeline.  A consumer thread takes frames with gst_vhost_frame_queue_pop().
 *
 * Buffer lifetime: the queue keeps the newest complete frame ("current").  A
 * popped frame shares its memory with downstream (read-only).  While any
 * buffer downstream holds a frame memory (its refcount is above the pool's
 * own reference) the device never writes it again: the next flush goes into
 * another pool frame, which first receives from the current one only what it
 * missed (damage history of the last generations) and then the new damage.
 * When every pool frame is held downstream, flushes go to a private shadow
 * copy (counted as overflows) and are merged into a frame the consumer
 * finds or allocates (bounded) when it pops.
 *
 * Guest-memory blobs (VgpuSinkIface.scanout_blob): when the scanout shows a
 * blob whose rows are one contiguous host range, every frame is one
 * read-only GstMemory wrapping those guest pages (no copy, frame memory
 * unused); it holds a reference on the blob's backing, hence on the memory
 * table mapping, for as long as any buffer holds it.  Scan-out semantics:
 * the pages are the guest's, what it writes there later shows through in
 * buffers still held downstream, and after the guest unrefs the resource
 * they show whatever the guest reuses them for (never freed memory: the
 * mapping stays).  Blobs in several host pieces are copied like 2D frames.
 *
 * Coalescing: flushes that arrive before the consumer pops merge into one
 * frame: their damage is united, the newest pixels win, the count of flushes
 * is kept and the time stamp is that of the newest flush.
 *
 * Threads: the sink callbacks (device lock held, then the queue's own lock),
 * one consumer thread (pop), any thread for set_flushing/get_stats.  The
 * queue's lock is never held while calling out, so it nests inside the
 * device lock and nothing waits on the device while holding it. */
#pragma once

#include <gst/gst.h>
#include <gst/video/video.h>

#include "vgpu-sink.h"

G_BEGIN_DECLS

#define GST_VHOST_FRAME_MAX_DAMAGE 16u /* rectangles; more are sent as their bounds */

typedef struct _GstVhostFrameQueue GstVhostFrameQueue;
typedef struct _GstVhostBlobExport GstVhostBlobExport;

typedef struct {
  GstBuffer *buffer;  /* frame memory, read-only, no metadata (owned) */
  GstVideoInfo info;  /* format and size of the scanout */
  guint64 geometry;   /* changes whenever the scanout's format or size did */
  guint64 number;     /* frames popped so far, this one included */
  guint flushes;      /* guest flushes coalesced into this frame (0: cursor only) */
  guint64 flush_time; /* CLOCK_MONOTONIC ns of the newest flush (or cursor change) */
  guint n_damage;
  VgpuRect damage[GST_VHOST_FRAME_MAX_DAMAGE]; /* scanout coordinates */
  VgpuRect bounds;                             /* of all damage */
  /* Cursor, if one is visible on this scanout: 64x64 premultiplied BGRA with
   * a GstVideoMeta (owned), its top-left corner (hot spot applied). */
  GstBuffer *cursor;
  gint cursor_x, cursor_y;
  guint64 cursor_serial; /* changes with the cursor image */
  gboolean zero_copy;    /* the memory is the guest's blob itself */
  /* Not NULL: a blob scanout's frame that export_dmabuf() can turn into the
   * blob's own dmabuf (owned, opaque). */
  GstVhostBlobExport *blob_export;
} GstVhostFrame;

typedef enum {
  GST_VHOST_FRAME_OK,
  GST_VHOST_FRAME_TIMEOUT,  /* nothing new before the deadline */
  GST_VHOST_FRAME_FLUSHING, /* set_flushing(TRUE) */
  GST_VHOST_FRAME_EOS,      /* set_eos() */
} GstVhostFrameResult;

typedef struct {
  guint64 flushes;      /* flushes of the scanout received */
  guint64 frames;       /* frames popped */
  guint64 coalesced;    /* flushes merged into a frame with others */
  guint64 overflows;    /* flushes stored in the shadow: all frames held downstream */
  guint64 bytes_copied; /* from the guest or the image */
  guint64 bytes_synced; /* between frames (what a frame missed) */
  guint64 frames_allocated;
  guint64 geometry_changes;
  guint64 cursor_updates;
  guint64 zero_copy_frames;   /* frames that are the guest's blob memory itself */
  guint64 dmabuf_frames;      /* frames handed out as dmabuf memory */
  guint64 blob_dmabuf_frames; /* of which a guest blob's own pages */
} GstVhostFrameQueueStats;

/* Follows scanout @scanout.  Flushes use at most @max_frames frame
 * memories per geometry (at least 2) before going to the shadow; pop() may
 * allocate up to 4 times as many for a downstream that holds that many. */
GstVhostFrameQueue *gst_vhost_frame_queue_new(guint scanout, guint max_frames);
/* The queue must no longer be attached to a device. */
void gst_vhost_frame_queue_free(GstVhostFrameQueue *q);

/* Pass with the queue to vgpu_device_add_sink() (device lock held). */
const VgpuSinkIface *gst_vhost_frame_queue_get_sink_iface(void);

/* Waits until a frame is ready and the monotonic time (µs) is at least
 * @not_before, or until @deadline (µs, -1: none).  Fills @frame on OK (clear
 * it with gst_vhost_frame_clear). */
GstVhostFrameResult gst_vhost_frame_queue_pop(GstVhostFrameQueue *q, gint64 not_before,
                                              gint64 deadline, GstVhostFrame *frame);
/* The current frame again (keepalive), with no damage and no flush; FALSE
 * when there is none or the scanout is disabled. */
gboolean gst_vhost_frame_queue_repeat(GstVhostFrameQueue *q, GstVhostFrame *frame);
void gst_vhost_frame_queue_set_flushing(GstVhostFrameQueue *q, gboolean flushing);
/* pop() returns the frame that is ready, if any, then EOS from now on
 * (end of stream asked for, or the frontend of an --fd backend left). */
void gst_vhost_frame_queue_set_eos(GstVhostFrameQueue *q);
void gst_vhost_frame_queue_get_stats(GstVhostFrameQueue *q, GstVhostFrameQueueStats *stats);

void gst_vhost_frame_clear(GstVhostFrame *frame);

/* dmabuf: where /dev/udmabuf exists, frame memory (sealed memfds) can go
 * downstream as dmabuf memory of the same pages, one dmabuf per frame
 * memory, made on first use and kept with it (a downstream holding either
 * keeps the frame from being written).  A blob scanout whose rows lie in
 * whole pages of guest memory files sealed against shrinking (QEMU's memfd
 * backend; vhu-mem.h keeps their fds) goes as one dmabuf of the guest's
 * pages themselves (UDMABUF_CREATE_LIST over its page-aligned pieces, in
 * however many host pieces: no copy; scan-out semantics as for blob
 * memory), made on first use and cached per blob while the blob lives (a
 * few, for a guest flipping between framebuffers); any other blob frame
 * stays guest memory (or its copy).  Without udmabuf, one log line (INFO)
 * and fd memory. */
gboolean gst_vhost_udmabuf_available(void);
/* Replaces @frame's memory by its dmabuf (for a blob frame with
 * blob_export, the blob's, and @frame->info gets the blob's stride); FALSE,
 * @frame unchanged, for another blob frame, without udmabuf, or when the
 * kernel refused (logged once; a blob's export is then dropped, so the
 * next frame renegotiates without it).  The consumer thread; may make the
 * dmabuf (an ioctl) without holding anything the device waits for. */
gboolean gst_vhost_frame_queue_export_dmabuf(GstVhostFrameQueue *q, GstVhostFrame *frame);

/* The consumer negotiated memory:DMABuf (any thread).  While it has, the
 * flushes of a blob that can be a dmabuf are not copied into frame memory
 * at all, even for a blob in several host pieces: its frames carry no
 * memory until export_dmabuf() gives them the blob's dmabuf.  When it stops
 * (or the export fails), the next flush first copies the whole blob. */
void gst_vhost_frame_queue_set_dmabuf_consumer(GstVhostFrameQueue *q, gboolean dmabuf);

/* The GStreamer format of a virtio-gpu format (GST_VIDEO_FORMAT_UNKNOWN if
 * none): byte order in memory is the same, so no conversion is needed. */
GstVideoFormat gst_vhost_video_format_from_virtio(guint32 format);

G_END_DECLS
