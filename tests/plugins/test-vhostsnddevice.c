/* The shared sound device table: two users of one socket path get one
 * device that a frontend reaches, another configuration is refused, and
 * the path is free again (a new device listens) once the last user left. */
#include <glib.h>

#include "gstvhostsnddevice.h"
#include "test-util.h"
#include "vhu-frontend.h"

static const GstVhostSndDeviceConfig config = {
  .outputs = 1,
  .inputs = 1,
  .formats = 1ull << VIRTIO_SND_PCM_FMT_S16,
  .rates = 1ull << VIRTIO_SND_PCM_RATE_48000,
  .channels_min = 2,
  .channels_max = 2,
};

static void
test_share(void)
{
  g_autoptr(GError) error = NULL;
  GstVhostSndDeviceConfig other = config;
  TuBackend b = { 0 };
  GstVhostSndDevice *a, *c;
  VhuFrontend *fe;

  tu_backend_init(&b, "test-vhostsnddevice-XXXXXX", "snd.sock");
  a = gst_vhost_snd_device_acquire(b.path, &config, &error);
  g_assert_no_error(error);
  c = gst_vhost_snd_device_acquire(b.path, &config, &error);
  g_assert_no_error(error);
  g_assert_true(a == c);
  other.inputs = 2;
  g_assert_null(gst_vhost_snd_device_acquire(b.path, &other, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);

  fe = vhu_frontend_connect(b.path, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  vhu_frontend_free(fe);

  gst_vhost_snd_device_release(a);
  gst_vhost_snd_device_release(c);
  /* The path is free: a device with the other configuration takes it. */
  a = gst_vhost_snd_device_acquire(b.path, &other, &error);
  g_assert_no_error(error);
  gst_vhost_snd_device_release(a);
  tu_backend_clear(&b);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/vhostsnddevice/share", test_share);
  return g_test_run();
}
