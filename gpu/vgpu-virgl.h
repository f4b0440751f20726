/* vgpu-virgl.h: virgl 3D for the device model, through virglrenderer.
 *
 * Plugs into a VgpuDevice as its command extension (VgpuDeviceExt) and
 * handles the 3D command set: GET_CAPSET_INFO / GET_CAPSET (VIRGL, VIRGL2),
 * CTX_CREATE / CTX_DESTROY / CTX_ATTACH_RESOURCE / CTX_DETACH_RESOURCE,
 * RESOURCE_CREATE_3D, TRANSFER_TO_HOST_3D / TRANSFER_FROM_HOST_3D,
 * SUBMIT_3D, and RESOURCE_UNREF / ATTACH_BACKING / DETACH_BACKING /
 * TRANSFER_TO_HOST_2D for 3D resources.  2D resources stay with the device
 * model; the two share one id space.
 *
 * Renderer: EGL.  Without a render node, surfaceless EGL (Mesa falls back to
 * llvmpipe); with one, that GPU.  It cannot start: vgpu_virgl_new fails with
 * a message for the user.  virglrenderer's state is process-wide: one
 * VgpuVirgl per process.
 *
 * Threads: virglrenderer's GL context belongs to the thread that started it,
 * so every call here (new, free, the extension's callbacks, the fence
 * source) must come from that one thread (the daemon: the backend's queue
 * thread), except the extension's reset, which may come from any thread: it
 * drops our records at once and resets the renderer on the render thread
 * before its next use.  The caller serialises all of it with its device lock
 * (options.lock/unlock, which the fence source takes).
 *
 * Guest input is checked before it reaches virglrenderer: ids (context 0 is
 * never the guest's; resources of the other kind are refused), box and level
 * against the resource, SUBMIT_3D sizes (at most VGPU_VIRGL_MAX_SUBMIT
 * bytes, copied out of guest memory first), capset ids, versions and
 * indices, context counts.  Errors answered:
 *   INVALID_CONTEXT_ID   unknown context, 0, or one that exists on create
 *   INVALID_RESOURCE_ID  unknown or 2D resource, id in use on create
 *   INVALID_PARAMETER    bad target, size, level, box, capset or SUBMIT_3D
 *                        size; backing entries as for 2D
 *   OUT_OF_MEMORY        host memory budget, context or resource count
 *   UNSPEC               virglrenderer refused the command, transfer without
 *                        backing, backing attached twice
 *
 * Host memory: each 3D resource is charged VGPU_RESOURCE_OVERHEAD plus an
 * estimate of what virglrenderer keeps for it (buffers their size, textures
 * 4 bytes a texel of every layer, level and sample), each context
 * VGPU_VIRGL_CONTEXT_CHARGE, backings as for 2D, a SUBMIT_3D's copy while it
 * runs, against the device's budget (vgpu_device_get_hostmem).
 *
 * Fences: a fenced 3D command is held (vgpu_device_query_done) until
 * virglrenderer retires a fence of ours created right after it: with
 * INFO_RING_IDX (VIRTIO_GPU_F_CONTEXT_INIT) on that context's ring, else on
 * the renderer's global timeline.  Fence numbers are our own, so a guest's
 * fence ids never reach virglrenderer.  Retirement comes through
 * virglrenderer's poll fd (THREAD_SYNC), watched on options.context.  The
 * device completes held requests in its own order, so a fence never
 * completes before a command still waiting on a display.  A context
 * destroyed with fences pending on its rings completes them. */
#pragma once

#include <glib.h>

#include "vgpu-device.h"

G_BEGIN_DECLS

#define VGPU_VIRGL_MAX_SUBMIT     (4u << 20) /* bytes of one SUBMIT_3D */
#define VGPU_VIRGL_MAX_CONTEXTS   64u
#define VGPU_VIRGL_MAX_RESOURCES  16384u
#define VGPU_VIRGL_CONTEXT_CHARGE (1u << 20)
#define VGPU_VIRGL_MAX_RINGS      64u /* ring_idx values */
#define VGPU_VIRGL_NUM_CAPSETS    2u
/* Virtio features the device offers with virgl on. */
#define VGPU_VIRGL_FEATURES ((1ull << VIRTIO_GPU_F_VIRGL) | (1ull << VIRTIO_GPU_F_CONTEXT_INIT))

typedef struct _VgpuVirgl VgpuVirgl;

typedef struct {
  const char *render_node; /* NULL: surfaceless EGL, no GPU needed */
  gboolean gles;           /* an OpenGL ES context rather than desktop GL */
} VgpuVirglConfig;

typedef struct {
  GMainContext *context; /* where the fence source runs (the render thread's) */
  void (*lock)(gpointer data);
  void (*unlock)(gpointer data);
  gpointer lock_data;
} VgpuVirglOptions;

typedef struct {
  guint64 contexts;  /* live */
  guint64 resources; /* live 3D resources */
  guint64 submits;   /* SUBMIT_3D accepted */
  guint64 fences;    /* fences retired */
  guint64 resets;    /* renderer resets */
} VgpuVirglStats;

/* TRUE when built with virglrenderer. */
gboolean vgpu_virgl_supported(void);

/* Starts the renderer on the calling thread and plugs into @dev (which it
 * must not outlive).  NULL with @error when it cannot start. */
VgpuVirgl *vgpu_virgl_new(const VgpuVirglConfig *config, const VgpuVirglOptions *options,
                          VgpuDevice *dev, GError **error);
/* Unplugs from the device and stops the renderer (render thread, lock held). */
void vgpu_virgl_free(VgpuVirgl *virgl);

/* The renderer's description, e.g. "LLVMPIPE (LLVM 15.0.6, 256 bits)". */
const char *vgpu_virgl_get_renderer(VgpuVirgl *virgl);
void vgpu_virgl_get_stats(VgpuVirgl *virgl, VgpuVirglStats *stats);

G_END_DECLS
