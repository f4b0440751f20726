/* vsnd-vhost.c: VsndDevice behind a VhuBackend. */
#include "vsnd-vhost.h"

#include <gio/gio.h>

/* Requests handled per kick before yielding to other sources. */
#define MAX_BATCH 256u

struct _VsndVhost {
  GMutex lock; /* the device lock: the device and the output */
  VhuBackend *backend;
  VsndDevice *dev;
  gboolean batching[VSND_NUM_QUEUES]; /* inside queue_kick */
  gboolean warned_config;
  void (*disconnect_func)(gpointer data);
  gpointer disconnect_data;
};

/* ------------------------------------------------------------------------ */
/* Device ops (device lock held) */

static void
ops_complete(gpointer data, guint qidx, VhuElem *elem, guint32 len)
{
  VsndVhost *v = data;
  VhuVring *vring = vhu_backend_get_vring(v->backend, qidx);

  if (v->batching[qidx])
    vhu_vring_push(vring, elem, len); /* notified once at the end of the batch */
  else
    vhu_vring_complete(vring, elem, len);
}

/* Unpopped, so an element of a ring that keeps running (an event buffer
 * held across a pause) is handed out again; one of a ring that was reset
 * is just freed. */
static void
ops_discard(gpointer data, guint qidx, VhuElem *elem)
{
  VsndVhost *v = data;

  vhu_vring_unpop(vhu_backend_get_vring(v->backend, qidx), elem);
}

static const VsndDeviceOps device_ops = {
  .complete = ops_complete,
  .discard = ops_discard,
};

/* ------------------------------------------------------------------------ */
/* VhuDeviceIface */

static void
iface_get_config(gpointer dev, guint8 *config, gsize size)
{
  VsndVhost *v = dev;

  g_mutex_lock(&v->lock);
  /* QEMU's vhost-user-snd without controls=on has a 12-byte config space yet
   * shows the guest our CTLS bit: the driver then reads a controls count
   * that is not there and fails its probe. */
  if (size < sizeof(struct virtio_snd_config)
      && (vsnd_device_get_features(v->dev) & (1ull << VIRTIO_SND_F_CTLS)) && !v->warned_config) {
    g_warning("sound: the frontend reads %zu bytes of config, without the controls count: "
              "give QEMU's vhost-user-snd-pci controls=on, or run with --no-controls",
              size);
    v->warned_config = TRUE;
  }
  vsnd_device_get_config(v->dev, config, size);
  g_mutex_unlock(&v->lock);
}

static gboolean
iface_set_config(gpointer dev, guint32 offset, const guint8 *data, gsize size, guint32 flags,
                 GError **error)
{
  /* Every field is driver-read-only. */
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED,
              "the sound config space is read-only");
  return FALSE;
}

static void
iface_set_features(gpointer dev, guint64 features)
{
  VsndVhost *v = dev;

  g_mutex_lock(&v->lock);
  vsnd_device_set_features(v->dev, features);
  g_mutex_unlock(&v->lock);
}

static void
iface_queue_started(gpointer dev, guint qidx, gboolean started)
{
  VsndVhost *v = dev;

  if (started || qidx >= VSND_NUM_QUEUES)
    return;
  g_mutex_lock(&v->lock);
  vsnd_device_queue_stopped(v->dev, qidx);
  g_mutex_unlock(&v->lock);
}

static void
iface_queue_kick(gpointer dev, VhuBackend *backend, guint qidx)
{
  VsndVhost *v = dev;
  VhuVring *vring = vhu_backend_get_vring(backend, qidx);
  guint n = 0;

  if (qidx >= VSND_NUM_QUEUES)
    return;
  g_mutex_lock(&v->lock);
  v->batching[qidx] = TRUE;
  while (n < MAX_BATCH) {
    g_autoptr(GError) error = NULL;
    VhuElem *elem = vhu_vring_pop(vring, &error);

    if (!elem)
      break; /* empty, or broken (the backend reports it) */
    vsnd_device_submit(v->dev, qidx, elem);
    n++;
  }
  v->batching[qidx] = FALSE;
  g_mutex_unlock(&v->lock);
  vhu_vring_notify(vring);
  if (n == MAX_BATCH)
    vhu_backend_kick(backend, qidx); /* more may wait: come back after other sources */
}

static void
iface_reset(gpointer dev)
{
  VsndVhost *v = dev;

  g_info("sound: device reset by the frontend");
  g_mutex_lock(&v->lock);
  vsnd_device_reset(v->dev);
  g_mutex_unlock(&v->lock);
}

static void
on_disconnect(gpointer data)
{
  VsndVhost *v = data;

  if (v->disconnect_func)
    v->disconnect_func(v->disconnect_data);
}

static const VhuDeviceIface sound_iface = {
  .name = "sound",
  .device_id = 25,
  .num_queues = VSND_NUM_QUEUES,
  .max_queue_size = 0,
  .features = 0, /* set per device (CTLS) */
  .config_size = sizeof(struct virtio_snd_config),
  .get_config = iface_get_config,
  .set_config = iface_set_config,
  .set_features = iface_set_features,
  .queue_started = iface_queue_started,
  .queue_kick = iface_queue_kick,
  .reset = iface_reset,
};

/* ------------------------------------------------------------------------ */

VsndVhost *
vsnd_vhost_new(const VsndVhostConfig *config, GMainContext *context, GError **error)
{
  VhuDeviceIface iface = sound_iface; /* copied by the backend */
  VsndVhost *v;

  if (!vsnd_device_config_validate(&config->device, error))
    return NULL;
  v = g_new0(VsndVhost, 1);
  g_mutex_init(&v->lock);
  v->dev = vsnd_device_new(&config->device, &device_ops, v);
  iface.features = vsnd_device_get_features(v->dev);
  v->backend = vhu_backend_new(&iface, v, context, &config->backend);
  vhu_backend_set_disconnect_func(v->backend, on_disconnect, v);
  return v;
}

void
vsnd_vhost_set_disconnect_func(VsndVhost *v, void (*func)(gpointer data), gpointer data)
{
  v->disconnect_func = func;
  v->disconnect_data = data;
}

void
vsnd_vhost_free(VsndVhost *v)
{
  if (!v)
    return;
  vhu_backend_free(v->backend);
  g_mutex_lock(&v->lock);
  vsnd_device_free(v->dev);
  g_mutex_unlock(&v->lock);
  g_mutex_clear(&v->lock);
  g_free(v);
}

void
vsnd_vhost_lock(VsndVhost *v)
{
  g_mutex_lock(&v->lock);
}

void
vsnd_vhost_unlock(VsndVhost *v)
{
  g_mutex_unlock(&v->lock);
}

VhuBackend *
vsnd_vhost_get_backend(VsndVhost *v)
{
  return v->backend;
}

VsndDevice *
vsnd_vhost_get_device(VsndVhost *v)
{
  return v->dev;
}

void
vsnd_vhost_set_stream_iface(VsndVhost *v, const VsndStreamIface *iface, gpointer data)
{
  g_mutex_lock(&v->lock);
  vsnd_device_set_stream_iface(v->dev, iface, data);
  g_mutex_unlock(&v->lock);
}

gsize
vsnd_vhost_read(VsndVhost *v, guint stream, guint8 *buf, gsize len, gboolean fill)
{
  gsize n;

  g_mutex_lock(&v->lock);
  n = vsnd_device_read(v->dev, stream, buf, len, fill);
  g_mutex_unlock(&v->lock);
  return n;
}

gsize
vsnd_vhost_write(VsndVhost *v, guint stream, const guint8 *buf, gsize len)
{
  gsize n;

  g_mutex_lock(&v->lock);
  n = vsnd_device_write(v->dev, stream, buf, len);
  g_mutex_unlock(&v->lock);
  return n;
}
