/* gstvhostgpusrc.h: vhostgpusrc, a live source that is a vhost-user-gpu
 * backend.
 *
 * The element serves the virtio-gpu device model (gpu/) over vhost-user
 * in-process, on its own control thread and the backend's queue thread,
 * and pushes one buffer per guest RESOURCE_FLUSH of the scanout it follows
 * (coalesced when downstream is busy; see gstvhostframequeue.h).  The
 * guest never waits for the pipeline.  Going to READY frees the backend;
 * PAUSED again serves a new frontend.
 *
 * The daemon (gst-vhost-gpu --pipeline) uses the same element on a device
 * it serves itself: gst_vhost_gpu_src_set_vhost() before the element leaves
 * NULL; the element then only attaches its sink to that device (under its
 * lock) while it runs, and the socket properties are ignored. */
#pragma once

#include <gst/base/gstpushsrc.h>
#include <gst/gst.h>

#include "vgpu-vhost.h"

G_BEGIN_DECLS

#define GST_TYPE_VHOST_GPU_SRC (gst_vhost_gpu_src_get_type())
G_DECLARE_FINAL_TYPE(GstVhostGpuSrc, gst_vhost_gpu_src, GST, VHOST_GPU_SRC, GstPushSrc)

GST_ELEMENT_REGISTER_DECLARE(vhostgpusrc);

/* Follow a scanout of @vhost (not owned; it must outlive the element's
 * running states) instead of serving a socket.  Only in the NULL state. */
void gst_vhost_gpu_src_set_vhost(GstVhostGpuSrc *src, VgpuVhost *vhost);

G_END_DECLS
