/* gstvhostsnddevice.c: the process-wide table of shared sound devices. */
#include "gstvhostsnddevice.h"

#include <gio/gio.h>
#include <string.h>

struct _GstVhostSndDevice {
  guint refcount; /* under table_lock */
  char *socket_path;
  GstVhostSndDeviceConfig config;
  GMainContext *context;
  GMainLoop *loop;
  GThread *thread;
  VsndVhost *vsnd;
};

static GMutex table_lock;
static GHashTable *table; /* socket path -> GstVhostSndDevice */

static gpointer
control_thread(gpointer data)
{
  GstVhostSndDevice *dev = data;

  g_main_context_push_thread_default(dev->context);
  g_main_loop_run(dev->loop);
  g_main_context_pop_thread_default(dev->context);
  return NULL;
}

static gboolean
quit_loop(gpointer data)
{
  g_main_loop_quit(data);
  return G_SOURCE_REMOVE;
}

static void
device_free(GstVhostSndDevice *dev)
{
  if (dev->thread) {
    g_main_context_invoke(dev->context, quit_loop, dev->loop);
    g_thread_join(dev->thread);
  }
  g_clear_pointer(&dev->vsnd, vsnd_vhost_free);
  g_main_loop_unref(dev->loop);
  g_main_context_unref(dev->context);
  g_free(dev->socket_path);
  g_free(dev);
}

static GstVhostSndDevice *
device_new(const char *socket_path, const GstVhostSndDeviceConfig *config, GError **error)
{
  GstVhostSndDevice *dev = g_new0(GstVhostSndDevice, 1);
  guint n = config->outputs + config->inputs;
  g_autofree VsndStreamConfig *streams = g_new0(VsndStreamConfig, MAX(n, 1));
  VsndVhostConfig vc = { 0 };

  dev->refcount = 1;
  dev->socket_path = g_strdup(socket_path);
  dev->config = *config;
  dev->context = g_main_context_new();
  dev->loop = g_main_loop_new(dev->context, FALSE);
  for (guint i = 0; i < n; i++) {
    streams[i].direction = i < config->outputs ? VIRTIO_SND_D_OUTPUT : VIRTIO_SND_D_INPUT;
    streams[i].channels_min = config->channels_min;
    streams[i].channels_max = config->channels_max;
    streams[i].formats = config->formats;
    streams[i].rates = config->rates;
  }
  vc.device.n_streams = n;
  vc.device.streams = streams;
  vc.device.controls = TRUE;
  dev->vsnd = vsnd_vhost_new(&vc, dev->context, error);
  if (!dev->vsnd || !vhu_backend_listen(vsnd_vhost_get_backend(dev->vsnd), socket_path, error)) {
    device_free(dev);
    return NULL;
  }
  dev->thread = g_thread_new("vhostsnd-ctl", control_thread, dev);
  return dev;
}

GstVhostSndDevice *
gst_vhost_snd_device_acquire(const char *socket_path, const GstVhostSndDeviceConfig *config,
                             GError **error)
{
  GstVhostSndDevice *dev;

  g_return_val_if_fail(socket_path != NULL && config != NULL, NULL);
  g_mutex_lock(&table_lock);
  if (!table)
    table = g_hash_table_new(g_str_hash, g_str_equal);
  dev = g_hash_table_lookup(table, socket_path);
  if (dev) {
    if (memcmp(&dev->config, config, sizeof *config) != 0) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                  "%s: already served with other streams, formats, rates or channels", socket_path);
      dev = NULL;
    } else {
      dev->refcount++;
    }
  } else {
    dev = device_new(socket_path, config, error);
    if (dev)
      g_hash_table_insert(table, dev->socket_path, dev);
  }
  g_mutex_unlock(&table_lock);
  return dev;
}

void
gst_vhost_snd_device_release(GstVhostSndDevice *dev)
{
  gboolean last;

  g_return_if_fail(dev != NULL);
  g_mutex_lock(&table_lock);
  last = --dev->refcount == 0;
  if (last)
    g_hash_table_remove(table, dev->socket_path);
  g_mutex_unlock(&table_lock);
  if (last)
    device_free(dev);
}

VsndVhost *
gst_vhost_snd_device_get_vhost(GstVhostSndDevice *dev)
{
  return dev->vsnd;
}
