/* vhu-backend.h: the backend (device) side of vhost-user.
 *
 * A VhuBackend serves one frontend at a time over a Unix socket (listening, or
 * an inherited connected fd) and hands ring events to a device through a
 * VhuDeviceIface.  It never exits or aborts because of what the frontend or
 * the guest sends: malformed messages get an error ack or close the
 * connection, broken rings set NEEDS_RESET, and after a disconnect the device
 * is reset and the next frontend is served.
 *
 * Threads: messages are handled on the GMainContext given at creation (the
 * "control" context).  Kicks are handled on a queue thread owned by the
 * backend.  One mutex (vhu_backend_lock) guards the rings and the memory
 * table: queue_kick is called with it held, and any other thread that pops or
 * pushes must hold it.  See docs/architecture.md. */
#pragma once

#include <glib.h>

#include "vhu-proto.h"
#include "vhu-vring.h"

G_BEGIN_DECLS

typedef struct _VhuBackend VhuBackend;

typedef struct {
  const char *name;  /* for log lines, e.g. "gpu" */
  guint32 device_id; /* virtio device id (16 gpu, 25 sound) */
  guint num_queues;
  guint max_queue_size; /* 0: VHU_MAX_QUEUE_SIZE */
  /* Device feature bits; the backend adds VERSION_1, INDIRECT_DESC,
   * EVENT_IDX, NOTIFY_ON_EMPTY and PROTOCOL_FEATURES. */
  guint64 features;
  gsize config_size; /* 0: no config space */

  /* All callbacks are optional.  Unless noted they run on the control
   * context with the backend lock held. */
  void (*get_config)(gpointer dev, guint8 *config, gsize size);
  gboolean (*set_config)(gpointer dev, guint32 offset, const guint8 *data, gsize size,
                         guint32 flags, GError **error);
  void (*set_features)(gpointer dev, guint64 features);
  /* After the ring started; with @started FALSE, just before it stops
   * (GET_VRING_BASE, reset): requests completed then still reach the used
   * ring, and the base the frontend gets counts them. */
  void (*queue_started)(gpointer dev, guint qidx, gboolean started);
  /* The guest kicked @qidx (or requests are pending after a start). Runs on
   * the queue thread.  Pop until empty; complete now or later. */
  void (*queue_kick)(gpointer dev, VhuBackend *backend, guint qidx);
  /* Device-specific requests (e.g. 33, GPU_SET_SOCKET).  Return FALSE with
   * @error set to reject it.  To keep an fd, take it and set fds[i] = -1; the
   * backend closes the rest.  Called without the backend lock. */
  gboolean (*device_request)(gpointer dev, guint32 request, const guint8 *payload, gsize size,
                             int *fds, guint n_fds, GError **error);
  /* Drop all device state: frontend gone, RESET_DEVICE, RESET_OWNER.
   * Called without the backend lock, after the rings were stopped. */
  void (*reset)(gpointer dev);
} VhuDeviceIface;

typedef struct {
  guint socket_mode;      /* permissions of a created socket; 0: 0600 */
  gboolean single_client; /* stop serving after the first frontend leaves */
} VhuBackendOptions;

VhuBackend *vhu_backend_new(const VhuDeviceIface *iface, gpointer dev, GMainContext *context,
                            const VhuBackendOptions *options);
void vhu_backend_free(VhuBackend *backend);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VhuBackend, vhu_backend_free)

/* Listen on @path (a stale socket file is replaced). */
gboolean vhu_backend_listen(VhuBackend *backend, const char *path, GError **error);
/* Serve an already connected socket; takes ownership of @fd. */
gboolean vhu_backend_serve_fd(VhuBackend *backend, int fd, GError **error);
/* TRUE until a single_client backend's frontend left, or an --fd one closed. */
gboolean vhu_backend_is_serving(VhuBackend *backend);
/* Called on the control context after each frontend leaves. */
void vhu_backend_set_disconnect_func(VhuBackend *backend, void (*func)(gpointer data),
                                     gpointer data);

void vhu_backend_lock(VhuBackend *backend);
void vhu_backend_unlock(VhuBackend *backend);
/* Lock held: */
VhuVring *vhu_backend_get_vring(VhuBackend *backend, guint qidx);
guint64 vhu_backend_get_features(VhuBackend *backend); /* negotiated */
/* The device found the guest's requests unusable: set NEEDS_RESET. */
void vhu_backend_set_needs_reset(VhuBackend *backend, const char *why);

guint8 vhu_backend_get_status(VhuBackend *backend);
/* The queue thread's context: a device may attach its own sources there;
 * they run without the backend lock. */
GMainContext *vhu_backend_get_queue_context(VhuBackend *backend);
/* Schedules a queue_kick for @qidx on the queue thread (any thread). */
void vhu_backend_kick(VhuBackend *backend, guint qidx);

G_END_DECLS
