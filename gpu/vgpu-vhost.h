/* vgpu-vhost.h: the GPU device model served over vhost-user, with QEMU's
 * display socket as its first sink.
 *
 * Threads (see vhu-backend.h): control requests (control context), ring
 * kicks and display replies (queue thread) all take the device lock
 * (vgpu_vhost_lock), which serialises the VgpuDevice and the
 * VgpuQemuDisplay; the rings have locks of their own, taken after it
 * (device lock, then ring lock, never the reverse).  The display writer
 * threads work without it.  Hold vgpu_vhost_lock() around any use of the
 * device or the display obtained here.
 *
 * Device lifetime: RESET_DEVICE / RESET_OWNER (QEMU 10 sends one around every
 * guest reset) reset the device; the frontend leaving also drops the display
 * connection.  A control queue started at ring position
 * 0 means the guest driver re-initialised (reboot, driver rebind): all
 * resources are dropped then too, while the display socket QEMU sent just
 * before the start is kept.  A start at any other position is a VM resume:
 * everything is kept and replayed on the new display socket. */
#pragma once

#include <glib.h>

#include "vgpu-device.h"
#include "vgpu-qemu-display.h"
#include "vgpu-virgl.h"
#include "vhu-backend.h"

G_BEGIN_DECLS

typedef struct _VgpuVhost VgpuVhost;

typedef struct {
  VgpuDeviceConfig device;
  guint display_reply_timeout_ms; /* 0: 1000 */
  guint display_write_timeout_ms; /* longest a display write reads a resource; 0: 20 */
  VhuBackendOptions backend;
  /* 3D through virglrenderer (NULL: 2D only), started on the queue thread:
   * vgpu_vhost_new fails when it cannot start. */
  const VgpuVirglConfig *virgl;
} VgpuVhostConfig;

/* Messages are handled on @context (the caller iterates it). */
VgpuVhost *vgpu_vhost_new(const VgpuVhostConfig *config, GMainContext *context, GError **error);
void vgpu_vhost_free(VgpuVhost *vgpu);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VgpuVhost, vgpu_vhost_free)

/* Called on the control context after a frontend left; use this rather than
 * vhu_backend_set_disconnect_func, which the glue needs itself. */
void vgpu_vhost_set_disconnect_func(VgpuVhost *vgpu, void (*func)(gpointer data), gpointer data);

/* The device lock: serialises the VgpuDevice, its sinks and the
 * VgpuQemuDisplay.  Hold it around any use of the device or the display
 * obtained here (sinks are called with it held and must not block). */
void vgpu_vhost_lock(VgpuVhost *vgpu);
void vgpu_vhost_unlock(VgpuVhost *vgpu);

VhuBackend *vgpu_vhost_get_backend(VgpuVhost *vgpu);
VgpuDevice *vgpu_vhost_get_device(VgpuVhost *vgpu);
VgpuQemuDisplay *vgpu_vhost_get_display(VgpuVhost *vgpu);
/* NULL without 3D. */
VgpuVirgl *vgpu_vhost_get_virgl(VgpuVhost *vgpu);

G_END_DECLS
