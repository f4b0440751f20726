/* vgpu-vhost.c: VgpuDevice + VgpuQemuDisplay behind a VhuBackend. */
#include "vgpu-vhost.h"

#include "vgpu-blob.h"

#include <gio/gio.h>
#include <unistd.h>

/* Requests handled per kick before yielding to other sources. */
#define MAX_BATCH 256u

struct _VgpuVhost {
  GMutex lock; /* the device lock: everything below but the backend */
  VhuBackend *backend;
  VgpuDevice *dev;
  VgpuQemuDisplay *display;
  VgpuVirgl *virgl; /* 3D, or NULL; used on the queue thread only */
  gboolean batching[VGPU_NUM_QUEUES]; /* inside queue_kick */
  gboolean used_device;               /* requests served since the last reset */
  gboolean replay_pending;            /* a display socket came before the start */
  void (*disconnect_func)(gpointer data);
  gpointer disconnect_data;
};

/* ------------------------------------------------------------------------ */
/* Device ops (device lock held) */

static void
ops_complete(gpointer data, guint qidx, VhuElem *elem, guint32 len)
{
  VgpuVhost *v = data;
  VhuVring *vring = vhu_backend_get_vring(v->backend, qidx);

  if (qidx < VGPU_NUM_QUEUES && v->batching[qidx])
    vhu_vring_push(vring, elem, len); /* notified once at the end of the batch */
  else
    vhu_vring_complete(vring, elem, len);
}

static void
ops_discard(gpointer data, guint qidx, VhuElem *elem)
{
  vhu_elem_free(elem);
}

/* Any thread; vhu_backend_kick only schedules an idle on the queue thread. */
static void
ops_wake(gpointer data)
{
  VgpuVhost *v = data;

  vhu_backend_kick(v->backend, VGPU_CTRL_QUEUE);
}

static const VgpuDeviceOps device_ops = {
  .complete = ops_complete,
  .discard = ops_discard,
  .wake = ops_wake,
};

/* ------------------------------------------------------------------------ */
/* VhuDeviceIface */

static void
iface_get_config(gpointer dev, guint8 *config, gsize size)
{
  VgpuVhost *v = dev;

  g_mutex_lock(&v->lock);
  vgpu_device_get_config(v->dev, config, size);
  g_mutex_unlock(&v->lock);
}

static gboolean
iface_set_config(gpointer dev, guint32 offset, const guint8 *data, gsize size, guint32 flags,
                 GError **error)
{
  VgpuVhost *v = dev;

  g_mutex_lock(&v->lock);
  vgpu_device_set_config(v->dev, offset, data, size);
  g_mutex_unlock(&v->lock);
  return TRUE;
}

static void
iface_set_features(gpointer dev, guint64 features)
{
  VgpuVhost *v = dev;

  g_mutex_lock(&v->lock);
  vgpu_device_set_features(v->dev, features);
  g_mutex_unlock(&v->lock);
}

static void
queue_started_locked(VgpuVhost *v, guint qidx, gboolean started)
{
  VhuVring *vring = vhu_backend_get_vring(v->backend, qidx);

  if (!started) {
    /* The ring stops once this returns (VM pause: GET_VRING_BASE, whose
     * answer counts every request popped).  A display query still held
     * would be answered into a stopped ring and lost, so answer it now from
     * the configuration; fenced requests behind it complete too, in order.
     * A request refused for a busy image was put back at once
     * (iface_queue_kick), is not counted, and is popped again after the
     * restart. */
    if (qidx == VGPU_CTRL_QUEUE)
      vgpu_device_flush(v->dev);
    return;
  }
  g_debug("gpu: queue %u started at %u", qidx, vhu_vring_get_base(vring));
  if (qidx != VGPU_CTRL_QUEUE)
    return;
  if (vhu_vring_get_base(vring) == 0 && v->used_device) {
    g_message("gpu: guest driver restarted; dropping its resources");
    vgpu_device_reset(v->dev);
    vgpu_device_set_features(v->dev, vhu_backend_get_features(v->backend));
    v->used_device = FALSE;
  }
  /* A resume: show the display what it showed before the stop. */
  if (v->replay_pending)
    vgpu_qemu_display_replay(v->display);
  v->replay_pending = FALSE;
}

static void
iface_queue_started(gpointer dev, guint qidx, gboolean started)
{
  VgpuVhost *v = dev;

  g_mutex_lock(&v->lock);
  queue_started_locked(v, qidx, started);
  g_mutex_unlock(&v->lock);
}

static void
iface_queue_kick(gpointer dev, VhuBackend *backend, guint qidx)
{
  VgpuVhost *v = dev;
  VhuVring *vring = vhu_backend_get_vring(backend, qidx);
  guint n = 0;

  if (qidx >= VGPU_NUM_QUEUES)
    return;
  g_mutex_lock(&v->lock);
  v->batching[qidx] = TRUE;
  while (n < MAX_BATCH) {
    g_autoptr(GError) error = NULL;
    VhuElem *elem = vhu_vring_pop(vring, &error);

    if (!elem)
      break; /* empty, or broken (the backend reports it) */
    v->used_device = TRUE;
    if (!vgpu_device_submit(v->dev, qidx, elem)) {
      /* A sink still reads the target image: retry after ops_wake. */
      vhu_vring_unpop(vring, elem);
      n = 0;
      break;
    }
    n++;
  }
  v->batching[qidx] = FALSE;
  g_mutex_unlock(&v->lock);
  vhu_vring_notify(vring);
  if (n == MAX_BATCH)
    vhu_backend_kick(backend, qidx); /* more may wait: come back after other sources */
}

static gboolean
iface_device_request(gpointer dev, guint32 request, const guint8 *payload, gsize size, int *fds,
                     guint n_fds, GError **error)
{
  VgpuVhost *v = dev;
  gboolean ok;
  int fd;

  if (request != VHU_GPU_SET_SOCKET) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "unknown request %u", request);
    return FALSE;
  }
  if (n_fds != 1 || fds[0] < 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "GPU_SET_SOCKET needs one fd, got %u", n_fds);
    return FALSE;
  }
  fd = fds[0];
  fds[0] = -1;
  g_mutex_lock(&v->lock);
  ok = vgpu_qemu_display_set_socket(v->display, fd, error);
  /* QEMU sends the socket before starting the rings: whether the scanouts
   * survived (resume) or not (reboot) is known at the start. */
  if (ok && vhu_vring_is_started(vhu_backend_get_vring(v->backend, VGPU_CTRL_QUEUE)))
    vgpu_qemu_display_replay(v->display);
  else
    v->replay_pending = ok;
  g_mutex_unlock(&v->lock);
  return ok;
}

static void
iface_reset(gpointer dev)
{
  VgpuVhost *v = dev;

  /* The display socket stays: QEMU resets the device (RESET_DEVICE) around
   * a guest reset and may already have sent the socket for the next start. */
  g_info("gpu: device reset by the frontend");
  g_mutex_lock(&v->lock);
  vgpu_device_reset(v->dev);
  v->used_device = FALSE;
  v->replay_pending = FALSE;
  g_mutex_unlock(&v->lock);
}

/* The frontend left (after reset): its display socket is of no use. */
static void
on_disconnect(gpointer data)
{
  VgpuVhost *v = data;

  g_mutex_lock(&v->lock);
  vgpu_qemu_display_close(v->display);
  g_mutex_unlock(&v->lock);
  if (v->disconnect_func)
    v->disconnect_func(v->disconnect_data);
}

static const VhuDeviceIface gpu_iface = {
  .name = "gpu",
  .device_id = 16,
  .num_queues = VGPU_NUM_QUEUES,
  .max_queue_size = 0,
  .features = VGPU_DEVICE_FEATURES,
  .config_size = sizeof(struct virtio_gpu_config),
  .get_config = iface_get_config,
  .set_config = iface_set_config,
  .set_features = iface_set_features,
  .queue_started = iface_queue_started,
  .queue_kick = iface_queue_kick,
  .device_request = iface_device_request,
  .reset = iface_reset,
};

/* ------------------------------------------------------------------------ */

static void
lock_device(gpointer data)
{
  vgpu_vhost_lock(data);
}

static void
unlock_device(gpointer data)
{
  vgpu_vhost_unlock(data);
}

/* virglrenderer's GL context belongs to the thread that starts it: the 3D
 * renderer is started, used and stopped on the queue thread. */
typedef struct {
  VgpuVhost *v;
  const VgpuVirglConfig *config;
  GError *error;
  gboolean done;
  GMutex mutex;
  GCond cond;
} VirglCall;

static gboolean
virgl_call_idle(gpointer data)
{
  VirglCall *c = data;
  VgpuVhost *v = c->v;

  g_mutex_lock(&v->lock);
  if (c->config) {
    VgpuVirglOptions vopts = {
      .context = vhu_backend_get_queue_context(v->backend),
      .lock = lock_device,
      .unlock = unlock_device,
      .lock_data = v,
    };

    v->virgl = vgpu_virgl_new(c->config, &vopts, v->dev, &c->error);
  } else {
    g_clear_pointer(&v->virgl, vgpu_virgl_free);
  }
  g_mutex_unlock(&v->lock);
  g_mutex_lock(&c->mutex);
  c->done = TRUE;
  g_cond_signal(&c->cond);
  g_mutex_unlock(&c->mutex);
  return G_SOURCE_REMOVE;
}

/* Starts (@config) or stops (NULL) the renderer on the queue thread. */
static gboolean
virgl_call(VgpuVhost *v, const VgpuVirglConfig *config, GError **error)
{
  VirglCall c = { .v = v, .config = config };
  GSource *s = g_idle_source_new();

  g_mutex_init(&c.mutex);
  g_cond_init(&c.cond);
  g_source_set_callback(s, virgl_call_idle, &c, NULL);
  g_source_attach(s, vhu_backend_get_queue_context(v->backend));
  g_source_unref(s);
  g_mutex_lock(&c.mutex);
  while (!c.done)
    g_cond_wait(&c.cond, &c.mutex);
  g_mutex_unlock(&c.mutex);
  g_mutex_clear(&c.mutex);
  g_cond_clear(&c.cond);
  if (c.error) {
    g_propagate_error(error, c.error);
    return FALSE;
  }
  return TRUE;
}

VgpuVhost *
vgpu_vhost_new(const VgpuVhostConfig *config, GMainContext *context, GError **error)
{
  VgpuVhost *v;
  VgpuQemuDisplayOptions dopts = { 0 };
  VhuDeviceIface iface = gpu_iface;

  if (!vgpu_device_config_validate(&config->device, error))
    return NULL;
  v = g_new0(VgpuVhost, 1);
  g_mutex_init(&v->lock);
  v->dev = vgpu_device_new(&config->device, &device_ops, v);
  if (config->virgl)
    iface.features |= VGPU_VIRGL_FEATURES;
  if (config->device.blob)
    iface.features |= VGPU_BLOB_FEATURES;
  v->backend = vhu_backend_new(&iface, v, context, &config->backend);
  if (config->virgl && !virgl_call(v, config->virgl, error)) {
    vhu_backend_free(v->backend);
    vgpu_device_free(v->dev);
    g_mutex_clear(&v->lock);
    g_free(v);
    return NULL;
  }
  dopts.context = vhu_backend_get_queue_context(v->backend);
  dopts.lock = lock_device;
  dopts.unlock = unlock_device;
  dopts.lock_data = v;
  dopts.reply_timeout_ms = config->display_reply_timeout_ms;
  dopts.write_timeout_ms = config->display_write_timeout_ms;
  g_mutex_lock(&v->lock);
  v->display = vgpu_qemu_display_new(v->dev, &dopts);
  g_mutex_unlock(&v->lock);
  vhu_backend_set_disconnect_func(v->backend, on_disconnect, v);
  return v;
}

void
vgpu_vhost_set_disconnect_func(VgpuVhost *v, void (*func)(gpointer data), gpointer data)
{
  v->disconnect_func = func;
  v->disconnect_data = data;
}

void
vgpu_vhost_free(VgpuVhost *v)
{
  if (!v)
    return;
  /* Writers first, so no image release can kick a backend being freed. */
  g_mutex_lock(&v->lock);
  vgpu_qemu_display_close(v->display);
  g_mutex_unlock(&v->lock);
  /* A writer still exiting may take the device lock or kick the backend. */
  vgpu_qemu_display_wait_writers(v->display);
  if (v->virgl)
    virgl_call(v, NULL, NULL);
  vhu_backend_free(v->backend);
  vgpu_qemu_display_free(v->display);
  vgpu_device_free(v->dev);
  g_mutex_clear(&v->lock);
  g_free(v);
}

void
vgpu_vhost_lock(VgpuVhost *v)
{
  g_mutex_lock(&v->lock);
}

void
vgpu_vhost_unlock(VgpuVhost *v)
{
  g_mutex_unlock(&v->lock);
}

VhuBackend *
vgpu_vhost_get_backend(VgpuVhost *v)
{
  return v->backend;
}

VgpuDevice *
vgpu_vhost_get_device(VgpuVhost *v)
{
  return v->dev;
}

VgpuQemuDisplay *
vgpu_vhost_get_display(VgpuVhost *v)
{
  return v->display;
}

VgpuVirgl *
vgpu_vhost_get_virgl(VgpuVhost *v)
{
  return v->virgl;
}
