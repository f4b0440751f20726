/* gstvhostsnddevice.h: one virtio-sound device (VsndVhost) per socket path,
 * shared by the vhostsnd elements of a process.
 *
 * _acquire() looks the path up in a process-wide table: the first caller
 * creates the device (with its configuration) and starts serving the
 * socket; later callers with the same path get the same device and a
 * reference, provided they ask for the same configuration.  The last
 * _release() stops serving and frees it.
 *
 * Threads: _acquire()/_release() are thread-safe (table lock).  The device
 * handles control messages on a thread of its own (a GMainContext it
 * iterates), so no application main loop is needed. */
#pragma once

#include <glib.h>

#include "vsnd-vhost.h"

G_BEGIN_DECLS

typedef struct _GstVhostSndDevice GstVhostSndDevice;

typedef struct {
  guint outputs, inputs; /* playback and capture streams; 1..VSND_MAX_STREAMS in all */
  guint64 formats;       /* 1 << VIRTIO_SND_PCM_FMT_* */
  guint64 rates;         /* 1 << VIRTIO_SND_PCM_RATE_* */
  guint8 channels_min, channels_max;
} GstVhostSndDeviceConfig;

/* The device serving @socket_path (a new reference).  NULL with @error
 * when the configuration is invalid, differs from that of the device
 * already serving the path, or the socket cannot be listened on. */
GstVhostSndDevice *gst_vhost_snd_device_acquire(const char *socket_path,
                                                const GstVhostSndDeviceConfig *config,
                                                GError **error);

/* Drops a reference; the last one stops the device. */
void gst_vhost_snd_device_release(GstVhostSndDevice *dev);

/* The device model (owned by @dev). */
VsndVhost *gst_vhost_snd_device_get_vhost(GstVhostSndDevice *dev);

G_END_DECLS
