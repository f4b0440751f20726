/* gstvhost.c: the "vhost" plugin, vhost-user device backends as elements. */
#include <gst/gst.h>

#include "config.h"
#include "gstvhostgpusrc.h"

static gboolean
plugin_init(GstPlugin *plugin)
{
  return GST_ELEMENT_REGISTER(vhostgpusrc, plugin);
}

GST_PLUGIN_DEFINE(GST_VERSION_MAJOR, GST_VERSION_MINOR, vhost,
                  "vhost-user device backends (virtio-gpu) as GStreamer elements", plugin_init,
                  VERSION, GST_LICENSE, GST_PACKAGE_NAME, GST_PACKAGE_ORIGIN)
