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
 * backend.  There is no backend-wide lock: each ring has its own (taken
 * inside every vhu_vring_* call, never held while calling out), so a device
 * may pop and complete from any thread, and the device serialises its own
 * state with a lock of its own.  No callback is called with a lock of ours
 * held.  Every fd the frontend hands over is checked for its kind (kick,
 * call and error fds must be eventfds; the backend channel a stream socket)
 * and written without blocking.  See docs/architecture.md. */
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
   * EVENT_IDX and PROTOCOL_FEATURES (not the legacy-only NOTIFY_ON_EMPTY). */
  guint64 features;
  gsize config_size; /* 0: no config space */

  /* All callbacks are optional.  Unless noted they run on the control
   * context, with no lock held. */
  void (*get_config)(gpointer dev, guint8 *config, gsize size);
  gboolean (*set_config)(gpointer dev, guint32 offset, const guint8 *data, gsize size,
                         guint32 flags, GError **error);
  void (*set_features)(gpointer dev, guint64 features);
  /* After the ring started and before its first pop; with @started FALSE,
   * once pops return nothing and just before it stops (GET_VRING_BASE,
   * reset): requests completed then still reach the used ring, and the base
   * the frontend gets counts them.  A request completed after this returned
   * is dropped. */
  void (*queue_started)(gpointer dev, guint qidx, gboolean started);
  /* The guest kicked @qidx (or requests are pending after a start). Runs on
   * the queue thread.  Pop until empty; complete now or later. */
  void (*queue_kick)(gpointer dev, VhuBackend *backend, guint qidx);
  /* Device-specific requests (e.g. 33, GPU_SET_SOCKET).  Return FALSE with
   * @error set to reject it.  To keep an fd, take it and set fds[i] = -1; the
   * backend closes the rest.  The fds are unchecked: check their kind. */
  gboolean (*device_request)(gpointer dev, guint32 request, const guint8 *payload, gsize size,
                             int *fds, guint n_fds, GError **error);
  /* Drop all device state: frontend gone, RESET_DEVICE, RESET_OWNER.
   * Called after the rings were stopped. */
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

/* Any thread: */
VhuVring *vhu_backend_get_vring(VhuBackend *backend, guint qidx);
guint64 vhu_backend_get_features(VhuBackend *backend); /* negotiated */
/* The device found the guest's requests unusable: set NEEDS_RESET, signal
 * every error eventfd and tell the frontend (BACKEND_CONFIG_CHANGE_MSG when
 * BACKEND_REQ was negotiated), as a broken ring does.  One log line. */
void vhu_backend_set_needs_reset(VhuBackend *backend, const char *why);

guint8 vhu_backend_get_status(VhuBackend *backend);
/* The queue thread's context: a device may attach its own sources there
 * (they must not block: the kicks of every ring run there too). */
GMainContext *vhu_backend_get_queue_context(VhuBackend *backend);
/* Schedules a queue_kick for @qidx on the queue thread (any thread). */
void vhu_backend_kick(VhuBackend *backend, guint qidx);

G_END_DECLS
