/* vsnd-vhost.h: the sound device model served over vhost-user.
 *
 * Threads (see vhu-backend.h): control messages on the caller's context,
 * ring kicks on the backend's queue thread, and the output's data calls
 * (vsnd_vhost_read()/vsnd_vhost_write()) on whatever threads the output
 * runs.  The device lock (vsnd_vhost_lock()) serialises the VsndDevice and
 * every call into the output: the output's callbacks run with it held and
 * must not block.  Completions go straight to the ring (thread-safe), so
 * a tx buffer completes on the thread that consumed its last frame.
 *
 * Device lifetime: RESET_DEVICE / RESET_OWNER and the frontend leaving reset
 * the device (streams closed, held requests dropped, controls kept).  A
 * queue that stops (VM pause) completes what it held (vsnd-device.h); the
 * guest's event buffers go back on the ring. */
#pragma once

#include <glib.h>

#include "vhu-backend.h"
#include "vsnd-device.h"

G_BEGIN_DECLS

typedef struct _VsndVhost VsndVhost;

typedef struct {
  VsndDeviceConfig device;
  VhuBackendOptions backend;
} VsndVhostConfig;

/* Messages are handled on @context (the caller iterates it). */
VsndVhost *vsnd_vhost_new(const VsndVhostConfig *config, GMainContext *context, GError **error);
void vsnd_vhost_free(VsndVhost *vsnd);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VsndVhost, vsnd_vhost_free)

/* Called on the control context after a frontend left. */
void vsnd_vhost_set_disconnect_func(VsndVhost *vsnd, void (*func)(gpointer data), gpointer data);

/* The device lock; hold it around any use of the device obtained here. */
void vsnd_vhost_lock(VsndVhost *vsnd);
void vsnd_vhost_unlock(VsndVhost *vsnd);

VhuBackend *vsnd_vhost_get_backend(VsndVhost *vsnd);
VsndDevice *vsnd_vhost_get_device(VsndVhost *vsnd);

/* Sets the output (takes the lock). */
void vsnd_vhost_set_stream_iface(VsndVhost *vsnd, const VsndStreamIface *iface, gpointer data);
/* vsnd_device_read/write under the lock, from any thread. */
gsize vsnd_vhost_read(VsndVhost *vsnd, guint stream, guint8 *buf, gsize len, gboolean fill);
gsize vsnd_vhost_write(VsndVhost *vsnd, guint stream, const guint8 *buf, gsize len);

G_END_DECLS
