/* gstvhostrtsp.h: a scanout served as an RTSP stream (gst-vhost-gpu --rtsp).
 *
 * One gst-rtsp-server, attached to the main context that is thread-default
 * when gst_vhost_rtsp_new() runs (the daemon's main loop), with one shared
 * media at the mount point: every viewer gets the RTP packets of one encode.
 * The scanout's frames come from a vhostgpusrc on the device that runs from
 * new to free (into an appsink: it must see the guest's mode set, which comes
 * once); while no one watches, that costs one copy of each flushed rectangle
 * (gstvhostframequeue.h) and nothing is encoded.  The media's pipeline
 * (appsrc, videoconvert, the encoder, its payloader) is built when the first
 * viewer asks and goes when the last one leaves; each new viewer makes the
 * encoder send a key frame.
 *
 * The guest never waits for the stream: the source coalesces flushes while the
 * encoder is busy (gstvhostframequeue.h), and a viewer whose TCP connection is
 * full loses packets (gst-rtsp-server's drop-backlog) without holding back the
 * encoder or the other viewers.
 *
 * Authentication: with a USER:PASS, RTSP basic authentication is required for
 * every request (gst-rtsp-server's GstRTSPAuth); the credentials cross the
 * network in the clear, as all of RTSP does: bind to a trusted address.
 *
 * Threads: new/free on the thread of that main context; the media runs on
 * gst-rtsp-server's and GStreamer's threads.  Errors: GError (G_OPTION_ERROR
 * for a bad address, codec or credentials; G_IO_ERROR when binding fails). */
#pragma once

#include <glib.h>

#include "vgpu-vhost.h"

G_BEGIN_DECLS

typedef enum {
  GST_VHOST_RTSP_CODEC_H264,
  GST_VHOST_RTSP_CODEC_VP8,
} GstVhostRtspCodec;

/* Where to serve: "[ADDRESS:]PORT[/PATH]"; ADDRESS defaults to 127.0.0.1
 * (IPv6 in brackets: [::1]:8554/vm), PATH to /vm; PORT 0 takes a free port
 * (gst_vhost_rtsp_get_url() tells which). */
typedef struct {
  char *host;
  guint port;
  char *path;
} GstVhostRtspAddress;

gboolean gst_vhost_rtsp_parse_address(const char *spec, GstVhostRtspAddress *addr, GError **error);
void gst_vhost_rtsp_address_clear(GstVhostRtspAddress *addr);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(GstVhostRtspAddress, gst_vhost_rtsp_address_clear)

/* "h264" or "vp8". */
gboolean gst_vhost_rtsp_parse_codec(const char *name, GstVhostRtspCodec *codec, GError **error);

typedef struct {
  const GstVhostRtspAddress *address;
  GstVhostRtspCodec codec;
  const char *auth; /* "USER:PASS", or NULL for none */
  VgpuVhost *vhost; /* not owned; outlives the server */
  guint scanout;
  guint max_fps; /* at most this many frames per second (0: 30) */
} GstVhostRtspConfig;

typedef struct _GstVhostRtsp GstVhostRtsp;

/* Needs gst_init().  Listens before it returns. */
GstVhostRtsp *gst_vhost_rtsp_new(const GstVhostRtspConfig *config, GError **error);

/* rtsp://HOST:PORT/PATH with the bound port; free with g_free. */
char *gst_vhost_rtsp_get_url(GstVhostRtsp *rtsp);

/* Stops listening, disconnects every viewer and stops the media pipelines
 * (their sources leave the device) before it returns. */
void gst_vhost_rtsp_free(GstVhostRtsp *rtsp);

G_END_DECLS
