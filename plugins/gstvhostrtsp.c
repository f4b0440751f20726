/* gstvhostrtsp.c: a scanout served over RTSP through gst-rtsp-server. */
#include "gstvhostrtsp.h"

#include <gio/gio.h>
#include <gst/app/gstappsink.h>
#include <gst/app/gstappsrc.h>
#include <gst/rtsp-server/rtsp-server.h>
#include <gst/video/video.h>
#include <string.h>

#include "gstvhostgpusrc.h"

#define DEFAULT_HOST    "127.0.0.1"
#define DEFAULT_PATH    "/vm"
#define DEFAULT_MAX_FPS 30u
/* A static screen still sends a frame this often, so that a key frame asked
 * for by a new viewer goes out soon and decoders see a live stream. */
#define KEEPALIVE_MS 500u
/* Key frames at least every 2 s of frames at the full rate. */
#define KEYFRAME_FRAMES    60u
#define VIEWER_ROLE        "viewer"
#define MAX_CREDENTIAL_LEN 256u

/* The scanout's frames come from one pipeline of our own, vhostgpusrc into
 * an appsink, that runs from start to end: the device tells a sink about a
 * scanout only when the guest sets it, so a source made for the first viewer
 * (maybe hours after the guest's mode set) would never see a frame.  Each
 * media gets them through its appsrc. */
struct _GstVhostRtsp {
  GstRTSPServer *server;
  GSource *source;
  char *host, *path;
  GstElement *frames; /* vhostgpusrc ! appsink */
  GMutex lock;
  GPtrArray *appsrcs; /* GstAppSrc of each prepared media */
  GPtrArray *medias;  /* GstRTSPMedia not yet unprepared, for free */
  GstCaps *caps;      /* of the newest frame */
};

/* --- address, codec -------------------------------------------------------- */

static gboolean
bad_value(GError **error, const char *what, const char *spec)
{
  g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "%s: %s", what, spec);
  return FALSE;
}

gboolean
gst_vhost_rtsp_parse_address(const char *spec, GstVhostRtspAddress *addr, GError **error)
{
  g_autofree char *host = NULL;
  const char *port_start = spec, *slash, *colon;
  g_autofree char *port_text = NULL;
  guint64 port;

  memset(addr, 0, sizeof *addr);
  if (spec[0] == '[') {
    const char *close = strchr(spec, ']');

    if (!close || close[1] != ':' || close == spec + 1)
      return bad_value(error, "not [IPV6]:PORT[/PATH]", spec);
    host = g_strndup(spec + 1, (gsize)(close - spec - 1));
    port_start = close + 2;
  } else {
    slash = strchr(spec, '/');
    colon = strrchr(spec, ':');
    if (colon && (!slash || colon < slash)) {
      host = g_strndup(spec, (gsize)(colon - spec));
      port_start = colon + 1;
    }
  }
  if (host && !g_hostname_is_ip_address(host) && !g_hostname_is_non_ascii(host)
      && strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
             != strlen(host))
    return bad_value(error, "not an address or host name", host);
  slash = strchr(port_start, '/');
  port_text = slash ? g_strndup(port_start, (gsize)(slash - port_start)) : g_strdup(port_start);
  if (!g_ascii_string_to_unsigned(port_text, 10, 0, 65535, &port, NULL))
    return bad_value(error, "not a port (0-65535) in [ADDRESS:]PORT[/PATH]", spec);
  if (slash && (slash[1] == '\0' || strstr(slash, "//") || strpbrk(slash, " ?#\\")))
    return bad_value(error, "not a path like /vm", slash);
  addr->host = host && host[0] ? g_steal_pointer(&host) : g_strdup(DEFAULT_HOST);
  addr->port = (guint)port;
  addr->path = g_strdup(slash ? slash : DEFAULT_PATH);
  return TRUE;
}

void
gst_vhost_rtsp_address_clear(GstVhostRtspAddress *addr)
{
  g_clear_pointer(&addr->host, g_free);
  g_clear_pointer(&addr->path, g_free);
}

gboolean
gst_vhost_rtsp_parse_codec(const char *name, GstVhostRtspCodec *codec, GError **error)
{
  if (g_ascii_strcasecmp(name, "h264") == 0)
    *codec = GST_VHOST_RTSP_CODEC_H264;
  else if (g_ascii_strcasecmp(name, "vp8") == 0)
    *codec = GST_VHOST_RTSP_CODEC_VP8;
  else
    return bad_value(error, "not a codec (h264 or vp8)", name);
  return TRUE;
}

/* --- the media factory ----------------------------------------------------- */

#define GST_TYPE_VHOST_RTSP_FACTORY (gst_vhost_rtsp_factory_get_type())
G_DECLARE_FINAL_TYPE(GstVhostRtspFactory, gst_vhost_rtsp_factory, GST, VHOST_RTSP_FACTORY,
                     GstRTSPMediaFactory)

struct _GstVhostRtspFactory {
  GstRTSPMediaFactory parent;
  GstVhostRtspCodec codec;
};

G_DEFINE_TYPE(GstVhostRtspFactory, gst_vhost_rtsp_factory, GST_TYPE_RTSP_MEDIA_FACTORY)

/* Low latency: no B-frames or lookahead (x264's zerolatency, vp8's
 * lag-in-frames=0 and realtime deadline), the fastest presets, parameter sets
 * with every key frame so a viewer can start at any of them. */
static char *
encoder_description(GstVhostRtspCodec codec)
{
  if (codec == GST_VHOST_RTSP_CODEC_VP8)
    return g_strdup_printf("videoconvert ! "
                           "vp8enc name=enc deadline=1 cpu-used=8 lag-in-frames=0 "
                           "end-usage=cbr target-bitrate=4000000 keyframe-max-dist=%u "
                           "error-resilient=default threads=2 ! "
                           "rtpvp8pay name=pay0 pt=96",
                           KEYFRAME_FRAMES);
  return g_strdup_printf("videoconvert ! video/x-raw,format=I420 ! "
                         "x264enc name=enc tune=zerolatency speed-preset=ultrafast "
                         "key-int-max=%u bitrate=4000 ! "
                         "rtph264pay name=pay0 pt=96 config-interval=-1 "
                         "aggregate-mode=zero-latency",
                         KEYFRAME_FRAMES);
}

/* The media: our frames (time stamped on arrival by the media's clock; a
 * slow encoder makes the oldest queued frame go, never the source wait),
 * then the encoder. */
static GstElement *
factory_create_element(GstRTSPMediaFactory *factory, const GstRTSPUrl *url)
{
  GstVhostRtspFactory *self = GST_VHOST_RTSP_FACTORY(factory);
  g_autofree char *enc = encoder_description(self->codec);
  g_autofree char *desc = g_strdup_printf("appsrc name=frames is-live=true format=time "
                                          "do-timestamp=true max-buffers=2 leaky-type=downstream "
                                          "! %s",
                                          enc);
  g_autoptr(GError) error = NULL;
  GstElement *bin = gst_parse_bin_from_description(desc, FALSE, &error);

  if (!bin)
    g_warning("rtsp: cannot build the encoder (%s): is its plugin installed?", error->message);
  return bin;
}

static void
gst_vhost_rtsp_factory_class_init(GstVhostRtspFactoryClass *klass)
{
  GST_RTSP_MEDIA_FACTORY_CLASS(klass)->create_element = factory_create_element;
}

static void
gst_vhost_rtsp_factory_init(GstVhostRtspFactory *self)
{
  GstRTSPMediaFactory *f = GST_RTSP_MEDIA_FACTORY(self);

  /* One media, one encode, for every viewer; it stops with the last one. */
  gst_rtsp_media_factory_set_shared(f, TRUE);
  gst_rtsp_media_factory_set_suspend_mode(f, GST_RTSP_SUSPEND_MODE_NONE);
}

/* --- viewers --------------------------------------------------------------- */

static const char *
client_peer(GstRTSPClient *client)
{
  GstRTSPConnection *conn = gst_rtsp_client_get_connection(client);

  const char *ip = conn ? gst_rtsp_connection_get_ip(conn) : NULL;

  return ip ? ip : "?";
}

/* After PLAY has been answered (the viewer's transport is active): a key
 * frame, so that it needs not wait for the next periodic one. */
static void
on_play(GstRTSPClient *client, GstRTSPContext *ctx, gpointer data)
{
  GstRTSPMedia *media = ctx->sessmedia ? gst_rtsp_session_media_get_media(ctx->sessmedia) : NULL;
  g_autoptr(GstElement) element = media ? gst_rtsp_media_get_element(media) : NULL;
  g_autoptr(GstElement) pay = element ? gst_bin_get_by_name(GST_BIN(element), "pay0") : NULL;

  g_info("rtsp: %s plays", client_peer(client));
  if (pay)
    gst_element_send_event(
        pay, gst_video_event_new_upstream_force_key_unit(GST_CLOCK_TIME_NONE, TRUE, 0));
}

static void
on_closed(GstRTSPClient *client, gpointer data)
{
  g_info("rtsp: %s left", client_peer(client));
}

static void
on_client(GstRTSPServer *server, GstRTSPClient *client, gpointer data)
{
  /* A viewer that stops reading loses packets instead of holding the stream. */
  g_object_set(client, "drop-backlog", TRUE, NULL);
  g_signal_connect(client, "play-request", G_CALLBACK(on_play), NULL);
  g_signal_connect(client, "closed", G_CALLBACK(on_closed), NULL);
  g_info("rtsp: viewer from %s", client_peer(client));
}

static void
on_unprepared(GstRTSPMedia *media, gpointer data)
{
  GstVhostRtsp *rtsp = data;
  g_autoptr(GstElement) element = gst_rtsp_media_get_element(media);
  g_autoptr(GstElement) appsrc = gst_bin_get_by_name(GST_BIN(element), "frames");

  g_mutex_lock(&rtsp->lock);
  g_ptr_array_remove(rtsp->appsrcs, appsrc);
  g_mutex_unlock(&rtsp->lock);
}

static void
on_media(GstRTSPMediaFactory *factory, GstRTSPMedia *media, gpointer data)
{
  GstVhostRtsp *rtsp = data;
  g_autoptr(GstElement) element = gst_rtsp_media_get_element(media);
  GstElement *appsrc = gst_bin_get_by_name(GST_BIN(element), "frames");

  g_signal_connect(media, "unprepared", G_CALLBACK(on_unprepared), rtsp);
  g_mutex_lock(&rtsp->lock);
  for (guint i = rtsp->medias->len; i-- > 0;)
    if (gst_rtsp_media_get_status(rtsp->medias->pdata[i]) == GST_RTSP_MEDIA_STATUS_UNPREPARED)
      g_ptr_array_remove_index_fast(rtsp->medias, i);
  g_ptr_array_add(rtsp->medias, g_object_ref(media));
  if (rtsp->caps)
    gst_app_src_set_caps(GST_APP_SRC(appsrc), rtsp->caps);
  g_ptr_array_add(rtsp->appsrcs, appsrc);
  g_mutex_unlock(&rtsp->lock);
}

/* Each frame to every media: a shallow copy (the memory is shared) without
 * time stamps, which the media's appsrc gives it. */
static GstFlowReturn
on_frame(GstAppSink *sink, gpointer data)
{
  GstVhostRtsp *rtsp = data;
  g_autoptr(GstSample) sample = gst_app_sink_pull_sample(sink);
  GstCaps *caps;
  GstBuffer *buf;
  gboolean new_caps;

  if (!sample)
    return GST_FLOW_EOS;
  caps = gst_sample_get_caps(sample);
  buf = gst_sample_get_buffer(sample);
  g_mutex_lock(&rtsp->lock);
  new_caps = caps && (!rtsp->caps || !gst_caps_is_equal(caps, rtsp->caps));
  if (new_caps)
    gst_caps_replace(&rtsp->caps, caps);
  for (guint i = 0; i < rtsp->appsrcs->len; i++) {
    GstBuffer *copy = gst_buffer_copy(buf);

    GST_BUFFER_PTS(copy) = GST_BUFFER_DTS(copy) = GST_BUFFER_DURATION(copy) = GST_CLOCK_TIME_NONE;
    if (new_caps)
      gst_app_src_set_caps(rtsp->appsrcs->pdata[i], caps);
    gst_app_src_push_buffer(rtsp->appsrcs->pdata[i], copy);
  }
  g_mutex_unlock(&rtsp->lock);
  return GST_FLOW_OK;
}

static GstElement *
frames_new(GstVhostRtsp *rtsp, const GstVhostRtspConfig *config, GError **error)
{
  g_autoptr(GstElement) pipeline = gst_pipeline_new("gst-vhost-rtsp-frames");
  GstAppSinkCallbacks cb = { .new_sample = on_frame };
  guint fps = config->max_fps ? config->max_fps : DEFAULT_MAX_FPS;
  GstElement *src, *sink;

  src = g_object_new(GST_TYPE_VHOST_GPU_SRC, "scanout", config->scanout, "keepalive-time",
                     KEEPALIVE_MS, "max-framerate", (gint)fps, 1, NULL);
  gst_vhost_gpu_src_set_vhost(GST_VHOST_GPU_SRC(src), config->vhost);
  sink = gst_element_factory_make("appsink", NULL);
  g_object_set(sink, "sync", FALSE, "max-buffers", 1, "drop", TRUE, NULL);
  gst_app_sink_set_callbacks(GST_APP_SINK(sink), &cb, rtsp, NULL);
  gst_bin_add_many(GST_BIN(pipeline), src, sink, NULL);
  if (!gst_element_link(src, sink)
      || gst_element_set_state(pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
    g_set_error(error, GST_CORE_ERROR, GST_CORE_ERROR_STATE_CHANGE,
                "rtsp: the scanout's source does not start");
    gst_element_set_state(pipeline, GST_STATE_NULL);
    return NULL;
  }
  return g_steal_pointer(&pipeline);
}

static gboolean
setup_auth(GstRTSPServer *server, GstRTSPMediaFactory *factory, const char *auth, GError **error)
{
  const char *colon = strchr(auth, ':');
  g_autofree char *user = NULL, *basic = NULL;
  g_autoptr(GstRTSPAuth) ra = NULL;
  g_autoptr(GstRTSPToken) token = NULL;

  if (!colon || colon == auth || colon[1] == '\0' || strlen(auth) > MAX_CREDENTIAL_LEN)
    return bad_value(error, "not USER:PASS (both non-empty)", "--rtsp-auth");
  user = g_strndup(auth, (gsize)(colon - auth));
  basic = gst_rtsp_auth_make_basic(user, colon + 1);
  ra = gst_rtsp_auth_new();
  token = gst_rtsp_token_new(GST_RTSP_TOKEN_MEDIA_FACTORY_ROLE, G_TYPE_STRING, VIEWER_ROLE, NULL);
  gst_rtsp_auth_add_basic(ra, basic, token);
  gst_rtsp_server_set_auth(server, ra);
  gst_rtsp_media_factory_add_role(factory, VIEWER_ROLE, GST_RTSP_PERM_MEDIA_FACTORY_ACCESS,
                                  G_TYPE_BOOLEAN, TRUE, GST_RTSP_PERM_MEDIA_FACTORY_CONSTRUCT,
                                  G_TYPE_BOOLEAN, TRUE, NULL);
  return TRUE;
}

/* The encoder's element is there (a missing plugin is a start-up error, not a
 * silent failure at the first viewer). */
static gboolean
check_encoder(GstVhostRtspCodec codec, GError **error)
{
  const char *need[]
      = { codec == GST_VHOST_RTSP_CODEC_VP8 ? "vp8enc" : "x264enc",
          codec == GST_VHOST_RTSP_CODEC_VP8 ? "rtpvp8pay" : "rtph264pay", "videoconvert" };

  for (guint i = 0; i < G_N_ELEMENTS(need); i++) {
    g_autoptr(GstElementFactory) f = gst_element_factory_find(need[i]);

    if (!f) {
      g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                  "GStreamer element %s not found (x264enc: gstreamer1.0-plugins-ugly; "
                  "vp8enc, rtp payloaders: gstreamer1.0-plugins-good)",
                  need[i]);
      return FALSE;
    }
  }
  return TRUE;
}

GstVhostRtsp *
gst_vhost_rtsp_new(const GstVhostRtspConfig *config, GError **error)
{
  g_autoptr(GstRTSPMountPoints) mounts = NULL;
  g_autofree char *service = g_strdup_printf("%u", config->address->port);
  GstVhostRtspFactory *factory;
  GstVhostRtsp *rtsp;

  g_return_val_if_fail(config->vhost != NULL, NULL);
  if (!check_encoder(config->codec, error))
    return NULL;
  rtsp = g_new0(GstVhostRtsp, 1);
  rtsp->host = g_strdup(config->address->host);
  rtsp->path = g_strdup(config->address->path);
  g_mutex_init(&rtsp->lock);
  rtsp->appsrcs = g_ptr_array_new_with_free_func(g_object_unref);
  rtsp->medias = g_ptr_array_new_with_free_func(g_object_unref);
  rtsp->server = gst_rtsp_server_new();
  gst_rtsp_server_set_address(rtsp->server, rtsp->host);
  gst_rtsp_server_set_service(rtsp->server, service);
  factory = g_object_new(GST_TYPE_VHOST_RTSP_FACTORY, NULL);
  factory->codec = config->codec;
  if (config->auth
      && !setup_auth(rtsp->server, GST_RTSP_MEDIA_FACTORY(factory), config->auth, error)) {
    g_object_unref(factory);
    gst_vhost_rtsp_free(rtsp);
    return NULL;
  }
  g_signal_connect(factory, "media-configure", G_CALLBACK(on_media), rtsp);
  mounts = gst_rtsp_server_get_mount_points(rtsp->server);
  gst_rtsp_mount_points_add_factory(mounts, rtsp->path, GST_RTSP_MEDIA_FACTORY(factory));
  g_signal_connect(rtsp->server, "client-connected", G_CALLBACK(on_client), NULL);
  rtsp->source = gst_rtsp_server_create_source(rtsp->server, NULL, error);
  if (!rtsp->source) {
    g_prefix_error(error, "cannot listen on %s port %u: ", rtsp->host, config->address->port);
    gst_vhost_rtsp_free(rtsp);
    return NULL;
  }
  rtsp->frames = frames_new(rtsp, config, error);
  if (!rtsp->frames) {
    gst_vhost_rtsp_free(rtsp);
    return NULL;
  }
  g_source_attach(rtsp->source, g_main_context_get_thread_default());
  return rtsp;
}

char *
gst_vhost_rtsp_get_url(GstVhostRtsp *rtsp)
{
  gboolean v6 = strchr(rtsp->host, ':') != NULL;

  return g_strdup_printf("rtsp://%s%s%s:%d%s", v6 ? "[" : "", rtsp->host, v6 ? "]" : "",
                         gst_rtsp_server_get_bound_port(rtsp->server), rtsp->path);
}

static GstRTSPFilterResult
remove_client(GstRTSPServer *server, GstRTSPClient *client, gpointer data)
{
  return GST_RTSP_FILTER_REMOVE;
}

void
gst_vhost_rtsp_free(GstVhostRtsp *rtsp)
{
  GPtrArray *medias;

  if (!rtsp)
    return;
  if (rtsp->source) {
    g_source_destroy(rtsp->source);
    g_source_unref(rtsp->source);
  }
  /* The source leaves the device here, before the device may go. */
  if (rtsp->frames) {
    gst_element_set_state(rtsp->frames, GST_STATE_NULL);
    gst_clear_object(&rtsp->frames);
  }
  if (rtsp->server)
    gst_rtsp_server_client_filter(rtsp->server, remove_client, NULL);
  /* The medias' threads end here, not at some point during exit. */
  g_mutex_lock(&rtsp->lock);
  medias = g_steal_pointer(&rtsp->medias);
  g_mutex_unlock(&rtsp->lock);
  for (guint i = 0; i < medias->len; i++) {
    g_autoptr(GstElement) element = gst_rtsp_media_get_element(medias->pdata[i]);

    gst_rtsp_media_unprepare(medias->pdata[i]);
    gst_element_set_state(element, GST_STATE_NULL);
  }
  g_ptr_array_unref(medias);
  g_clear_object(&rtsp->server);
  gst_rtsp_thread_pool_cleanup();
  g_ptr_array_unref(rtsp->appsrcs);
  gst_clear_caps(&rtsp->caps);
  g_mutex_clear(&rtsp->lock);
  g_free(rtsp->host);
  g_free(rtsp->path);
  g_free(rtsp);
}
