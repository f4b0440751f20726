/* gst-vhost-gpu: a vhost-user virtio-gpu (2D) backend for QEMU's
 * vhost-user-gpu-pci / vhost-user-vga, following QEMU's backend program
 * conventions (docs/interop/vhost-user.rst). */
#include <errno.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "config.h"
#include "vgpu-qemu-display.h"
#include "vgpu-udmabuf.h"
#include "vgpu-vhost.h"
#ifdef HAVE_GST_PIPELINE
#include "gstvhostgpusrc.h"
#endif
#ifdef HAVE_GST_RTSP
#include "gstvhostrtsp.h"
#endif

#define EXIT_USAGE 2
#ifdef HAVE_GST_PIPELINE
typedef GstElement *GstElementPtr;
#else
typedef gpointer GstElementPtr;
#endif
/* fds kept free for sockets, eventfds and memory regions */
#define FD_RESERVE 256u
/* How long SIGTERM/SIGINT wait for the pipeline to finish after EOS. */
#define EOS_TIMEOUT_S 5u

typedef struct {
  char *socket_path;
  gint fd;
  gboolean print_capabilities;
  gint width, height, scanouts;
  guint64 max_hostmem;
  gint verbosity;
  char *pipeline;
  gint pipeline_scanout;
  gboolean virgl, gles;
  char *render_node;
  gboolean no_blob;
  gboolean qemu_dmabuf;
  char *rtsp, *rtsp_codec, *rtsp_auth;
} Options;

static Options opts = {
  .fd = -1,
  .width = VGPU_DEFAULT_WIDTH,
  .height = VGPU_DEFAULT_HEIGHT,
  .scanouts = 1,
  .max_hostmem = VGPU_DEFAULT_MAX_HOSTMEM,
};

static gboolean
parse_verbose(const char *name, const char *value, gpointer data, GError **error)
{
  opts.verbosity++;
  return TRUE;
}

static gboolean
parse_quiet(const char *name, const char *value, gpointer data, GError **error)
{
  opts.verbosity = -1;
  return TRUE;
}

/* "256M", "1G", "65536", "512KiB": binary units. */
static gboolean
parse_size(const char *name, const char *value, gpointer data, GError **error)
{
  guint64 n, mult = 1;
  char *end = NULL;

  errno = 0;
  n = g_ascii_strtoull(value, &end, 10);
  if (errno || end == value || *value == '-') {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "%s: not a size: %s", name, value);
    return FALSE;
  }
  switch (g_ascii_toupper(*end)) {
    case 'K':
      mult = G_GUINT64_CONSTANT(1) << 10;
      end++;
      break;
    case 'M':
      mult = G_GUINT64_CONSTANT(1) << 20;
      end++;
      break;
    case 'G':
      mult = G_GUINT64_CONSTANT(1) << 30;
      end++;
      break;
    case 'T':
      mult = G_GUINT64_CONSTANT(1) << 40;
      end++;
      break;
    default:
      break;
  }
  if (mult > 1 && (g_ascii_strcasecmp(end, "iB") == 0 || g_ascii_strcasecmp(end, "B") == 0))
    end += strlen(end);
  if (*end != '\0' || !g_uint64_checked_mul(&opts.max_hostmem, n, mult)) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "%s: not a size: %s (use a number with an optional K, M, G or T suffix)", name,
                value);
    return FALSE;
  }
  return TRUE;
}

static const GOptionEntry entries[] = {
  { "socket-path", 's', 0, G_OPTION_ARG_FILENAME, &opts.socket_path,
    "Listen on the Unix socket PATH for the frontend (QEMU connects to it)", "PATH" },
  { "fd", 'f', 0, G_OPTION_ARG_INT, &opts.fd,
    "Serve the already connected socket FDNUM (inherited from the process that started us)",
    "FDNUM" },
  { "print-capabilities", 'c', 0, G_OPTION_ARG_NONE, &opts.print_capabilities,
    "Print the backend capabilities as JSON and exit", NULL },
  { "width", 0, 0, G_OPTION_ARG_INT, &opts.width,
    "Width of the display mode offered to the guest (16..4095, default 1280)", "PIXELS" },
  { "height", 0, 0, G_OPTION_ARG_INT, &opts.height,
    "Height of the display mode offered to the guest (16..4095, default 800)", "PIXELS" },
  { "scanouts", 0, 0, G_OPTION_ARG_INT, &opts.scanouts,
    "Number of scanouts (outputs), 1..16, default 1; match QEMU's max_outputs", "N" },
  { "max-hostmem", 0, 0, G_OPTION_ARG_CALLBACK, parse_size,
    "Host memory the guest may use for resources, with K/M/G suffixes (default 256M)", "SIZE" },
#ifdef HAVE_GST_PIPELINE
  { "pipeline", 'p', 0, G_OPTION_ARG_STRING, &opts.pipeline,
    "Also feed a scanout into a GStreamer pipeline (gst-launch-1.0 syntax, without the "
    "source)",
    "DESCRIPTION" },
  { "pipeline-scanout", 0, 0, G_OPTION_ARG_INT, &opts.pipeline_scanout,
    "The scanout fed to --pipeline (default 0)", "N" },
#endif
#ifdef HAVE_GST_RTSP
  { "rtsp", 0, 0, G_OPTION_ARG_STRING, &opts.rtsp,
    "Serve the scanout of --pipeline-scanout as an RTSP stream at [ADDRESS:]PORT[/PATH] "
    "(address 127.0.0.1 unless given, path /vm; port 0: any free one)",
    "ADDRESS:PORT/PATH" },
  { "rtsp-codec", 0, 0, G_OPTION_ARG_STRING, &opts.rtsp_codec,
    "The stream's codec: h264 (default) or vp8", "CODEC" },
  { "rtsp-auth", 0, 0, G_OPTION_ARG_STRING, &opts.rtsp_auth,
    "Require RTSP basic authentication with these credentials", "USER:PASS" },
#endif
  { "virgl", 0, 0, G_OPTION_ARG_NONE, &opts.virgl,
    "Offer 3D (VIRTIO_GPU_F_VIRGL) through virglrenderer; without --render-node it renders "
    "on the CPU (EGL surfaceless, llvmpipe)",
    NULL },
  { "render-node", 0, 0, G_OPTION_ARG_FILENAME, &opts.render_node,
    "With --virgl, render on the GPU of this DRM render node (e.g. /dev/dri/renderD128)", "PATH" },
  { "no-blob", 0, 0, G_OPTION_ARG_NONE, &opts.no_blob,
    "Do not offer guest-memory blob resources (VIRTIO_GPU_F_RESOURCE_BLOB, offered by default)",
    NULL },
  { "qemu-dmabuf", 0, 0, G_OPTION_ARG_NONE, &opts.qemu_dmabuf,
    "Send scanouts to QEMU's display as dmabufs (no copy) where /dev/udmabuf exists and the "
    "guest memory is sealed; only a GL display (gl=on) shows them",
    NULL },
  { "gles", 0, 0, G_OPTION_ARG_NONE, &opts.gles,
    "With --virgl, render through OpenGL ES rather than desktop OpenGL", NULL },
  { "verbose", 'v', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK, parse_verbose,
    "Log more (-v: informational messages, -vv: debugging)", NULL },
  { "quiet", 'q', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK, parse_quiet,
    "Log only warnings and errors", NULL },
  { NULL },
};

static const char description[]
    = "Serves a 2D virtio-gpu to QEMU's vhost-user-gpu-pci or vhost-user-vga device over\n"
      "vhost-user and shows its scanouts through QEMU's display (the display socket QEMU\n"
      "sends at every device start).  Exactly one of --socket-path and --fd is required.\n"
      "With --socket-path the backend keeps serving: after a frontend leaves, the next one\n"
      "is served from scratch.  With --fd it exits when that connection closes.\n"
      "SIGTERM and SIGINT end it cleanly (exit status 0); with --pipeline they first send\n"
      "end-of-stream and wait (at most 5 s) so that recorded files are complete.\n"
      "\n"
      "Example (QEMU 8.0 or later; older QEMU requires KVM for vhost-user-gpu):\n"
      "  gst-vhost-gpu --socket-path /tmp/gpu.sock &\n"
      "  qemu-system-x86_64 -m 1G \\\n"
      "    -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem "
      "\\\n"
      "    -chardev socket,id=gpu,path=/tmp/gpu.sock \\\n"
      "    -device vhost-user-gpu-pci,chardev=gpu,xres=1280,yres=800 ...\n"
      "\n"
      "Guest memory must be shared (memory-backend-memfd with share=on).\n"
      "\n"
      "Recording the VM's screen while QEMU's window keeps working:\n"
      "  gst-vhost-gpu --socket-path /tmp/gpu.sock \\\n"
      "    --pipeline 'videoconvert ! vp8enc deadline=1 ! webmmux ! filesink location=vm.webm'";

static int log_threshold = G_LOG_LEVEL_MESSAGE;

static GLogWriterOutput
log_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer data)
{
  /* GLib levels: ERROR=4 < CRITICAL=8 < WARNING=16 < MESSAGE=32 < INFO=64 < DEBUG=128 */
  if ((level & G_LOG_LEVEL_MASK) > (GLogLevelFlags)log_threshold)
    return G_LOG_WRITER_HANDLED;
  return g_log_writer_default(level, fields, n_fields, data);
}

static void
print_capabilities(void)
{
  /* The options a frontend may pass: --virgl when built with 3D.  Not
   * "render-node": libvirt then demands a /dev/dri render node even for a 2D
   * domain and fails without one; --virgl finds its own (or renders without). */
  if (vgpu_virgl_supported())
    printf("{\n  \"type\": \"gpu\",\n  \"features\": [\n    \"virgl\"\n  ]\n}\n");
  else
    printf("{\n  \"type\": \"gpu\",\n  \"features\": [\n  ]\n}\n");
}

/* More fds allow more resources (one memfd each). */
static guint
raise_fd_limit(void)
{
  struct rlimit rl;

  if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
    return VGPU_DEFAULT_MAX_RESOURCES;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= VGPU_DEFAULT_MAX_RESOURCES + FD_RESERVE)
    return VGPU_DEFAULT_MAX_RESOURCES;
  return rl.rlim_cur > 2 * FD_RESERVE ? (guint)rl.rlim_cur - FD_RESERVE : FD_RESERVE;
}

/* --qemu-dmabuf: without udmabuf every scanout goes as pixels (said once,
 * here, rather than per scanout). */
static void
enable_qemu_dmabuf(VgpuVhost *vgpu)
{
  vgpu_vhost_lock(vgpu);
  vgpu_qemu_display_set_dmabuf(vgpu_vhost_get_display(vgpu), TRUE);
  vgpu_vhost_unlock(vgpu);
  if (vgpu_udmabuf_available())
    g_info("qemu-dmabuf: scanouts go to QEMU's display as dmabufs where it takes them");
  else
    g_message("qemu-dmabuf: no /dev/udmabuf; scanouts go to QEMU's display as pixels");
}

typedef struct {
  GMainLoop *loop;
  VhuBackend *backend;
  GstElementPtr pipeline; /* --pipeline, or NULL */
  gpointer rtsp;          /* --rtsp (GstVhostRtsp), or NULL */
  gboolean ending;        /* EOS sent, waiting for it to come out */
} Daemon;

#ifdef HAVE_GST_PIPELINE
static gboolean
on_eos_timeout(gpointer data)
{
  Daemon *d = data;

  g_warning("pipeline: no end-of-stream after %u s; stopping it anyway", EOS_TIMEOUT_S);
  g_main_loop_quit(d->loop);
  return G_SOURCE_REMOVE;
}
#endif

/* Ends the daemon; a pipeline first gets EOS (bounded wait) so that what it
 * records is complete.  A second request ends at once. */
static void
daemon_end(Daemon *d)
{
#ifdef HAVE_GST_PIPELINE
  if (d->pipeline && !d->ending) {
    d->ending = TRUE;
    g_info("pipeline: sending end-of-stream");
    gst_element_send_event(d->pipeline, gst_event_new_eos());
    g_timeout_add_seconds(EOS_TIMEOUT_S, on_eos_timeout, d);
    return;
  }
#endif
  g_main_loop_quit(d->loop);
}

static gboolean
on_signal(gpointer data)
{
  daemon_end(data);
  return G_SOURCE_CONTINUE;
}

static void
on_frontend_gone(gpointer data)
{
  Daemon *d = data;

  if (!vhu_backend_is_serving(d->backend))
    daemon_end(d);
}

#ifdef HAVE_GST_PIPELINE
/* The pipeline's trouble never stops the device: QEMU's display keeps
 * working; it is logged and the pipeline stopped. */
static gboolean
on_bus_message(GstBus *bus, GstMessage *msg, gpointer data)
{
  Daemon *d = data;
  g_autoptr(GError) error = NULL;
  g_autofree char *dbg = NULL;

  switch (GST_MESSAGE_TYPE(msg)) {
    case GST_MESSAGE_EOS:
      g_info("pipeline: end-of-stream");
      if (d->ending)
        g_main_loop_quit(d->loop);
      break;
    case GST_MESSAGE_ERROR:
      gst_message_parse_error(msg, &error, &dbg);
      g_warning("pipeline: %s (%s); the pipeline stops, the device goes on", error->message,
                dbg ? dbg : "no details");
      gst_element_set_state(d->pipeline, GST_STATE_NULL);
      if (d->ending)
        g_main_loop_quit(d->loop);
      break;
    case GST_MESSAGE_WARNING:
      gst_message_parse_warning(msg, &error, &dbg);
      g_warning("pipeline: %s", error->message);
      break;
    default:
      break;
  }
  return G_SOURCE_CONTINUE;
}

/* vhostgpusrc on our device, linked to the user's description. */
static GstElement *
pipeline_new(VgpuVhost *vgpu, const char *desc, guint scanout, GError **error)
{
  g_autoptr(GstElement) pipeline = gst_pipeline_new("gst-vhost-gpu");
  GstElement *src, *bin;

  bin = gst_parse_bin_from_description(desc, TRUE, error);
  if (!bin)
    return NULL;
  src = g_object_new(GST_TYPE_VHOST_GPU_SRC, "name", "vhostgpusrc", "scanout", scanout, NULL);
  gst_vhost_gpu_src_set_vhost(GST_VHOST_GPU_SRC(src), vgpu);
  gst_bin_add_many(GST_BIN(pipeline), src, bin, NULL);
  if (!gst_element_link(src, bin)) {
    g_set_error(error, GST_CORE_ERROR, GST_CORE_ERROR_NEGOTIATION,
                "the pipeline does not take raw video (video/x-raw) as its input");
    return NULL;
  }
  return g_steal_pointer(&pipeline);
}
#endif

static int usage_error(GOptionContext *ctx, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static int
usage_error(GOptionContext *ctx, const char *fmt, ...)
{
  g_autofree char *msg = NULL;
  va_list args;

  va_start(args, fmt);
  msg = g_strdup_vprintf(fmt, args);
  va_end(args);
  fprintf(stderr, "%s: %s\nTry '%s --help' for more information.\n", g_get_prgname(), msg,
          g_get_prgname());
  return EXIT_USAGE;
}

int
main(int argc, char **argv)
{
  g_autoptr(GOptionContext) ctx = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GMainLoop) loop = NULL;
  g_autoptr(VgpuVhost) vgpu = NULL;
  VgpuVhostConfig config = { 0 };
  VgpuVirglConfig virgl = { 0 };
  Daemon dd = { 0 };

  /* A peer that goes away is an error return, never the end of us. */
  signal(SIGPIPE, SIG_IGN);
  g_set_prgname("gst-vhost-gpu");
  ctx = g_option_context_new("- virtio-gpu vhost-user backend");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_option_context_set_description(ctx, description);
  if (!g_option_context_parse(ctx, &argc, &argv, &error))
    return usage_error(ctx, "%s", error->message);
  if (argc > 1)
    return usage_error(ctx, "unexpected argument: %s", argv[1]);
  if (opts.print_capabilities) {
    print_capabilities();
    return EXIT_SUCCESS;
  }
  if ((opts.socket_path != NULL) == (opts.fd >= 0))
    return usage_error(ctx, "exactly one of --socket-path and --fd is required");
  if (opts.fd < -1)
    return usage_error(ctx, "--fd: invalid file descriptor %d", opts.fd);
  if (opts.socket_path && opts.socket_path[0] == '\0')
    return usage_error(ctx, "--socket-path: empty path");

  log_threshold = opts.verbosity < 0    ? G_LOG_LEVEL_WARNING
                  : opts.verbosity == 0 ? G_LOG_LEVEL_MESSAGE
                  : opts.verbosity == 1 ? G_LOG_LEVEL_INFO
                                        : G_LOG_LEVEL_DEBUG;
  /* Everything to stderr (stdout is for --print-capabilities); the default
   * writer prints info and debug only when G_MESSAGES_DEBUG asks, so ask for
   * all and filter by -v/-q in log_writer. */
  g_log_writer_default_set_use_stderr(TRUE);
  if (opts.verbosity > 0)
    g_setenv("G_MESSAGES_DEBUG", "all", TRUE);
  g_log_set_writer_func(log_writer, NULL, NULL);

  config.device.num_scanouts = opts.scanouts < 0 ? 0 : (guint)opts.scanouts;
  config.device.width = opts.width < 0 ? 0 : (guint32)opts.width;
  config.device.height = opts.height < 0 ? 0 : (guint32)opts.height;
  config.device.max_hostmem = opts.max_hostmem;
  config.device.blob = !opts.no_blob;
  if (!vgpu_device_config_validate(&config.device, &error))
    return usage_error(ctx, "%s", error->message);
  if (opts.pipeline_scanout < 0 || (guint)opts.pipeline_scanout >= config.device.num_scanouts)
    return usage_error(ctx, "--pipeline-scanout: %d is not one of the %u scanouts",
                       opts.pipeline_scanout, config.device.num_scanouts);
  config.device.max_resources = raise_fd_limit();
  if (opts.gles && !opts.virgl)
    return usage_error(ctx, "--gles needs --virgl");
  /* libvirt passes a render node it picked, with or without 3D. */
  if (opts.render_node && !opts.virgl)
    g_info("--render-node %s: unused without --virgl", opts.render_node);
  if (opts.virgl) {
    virgl.render_node = opts.render_node;
    virgl.gles = opts.gles;
    config.virgl = &virgl;
  }

  loop = g_main_loop_new(NULL, FALSE);
  vgpu = vgpu_vhost_new(&config, NULL, &error);
  if (!vgpu && opts.virgl) {
    /* Not a usage error: the machine cannot render. */
    g_printerr("%s: %s\n", g_get_prgname(), error->message);
    return EXIT_FAILURE;
  }
  if (!vgpu)
    return usage_error(ctx, "%s", error->message);
  if (opts.qemu_dmabuf)
    enable_qemu_dmabuf(vgpu);
  if (opts.virgl)
    g_message("virgl: 3D through %s", vgpu_virgl_get_renderer(vgpu_vhost_get_virgl(vgpu)));
  if (opts.socket_path) {
    if (!vhu_backend_listen(vgpu_vhost_get_backend(vgpu), opts.socket_path, &error)) {
      g_printerr("%s: %s\n", g_get_prgname(), error->message);
      return EXIT_FAILURE;
    }
  } else if (!vhu_backend_serve_fd(vgpu_vhost_get_backend(vgpu), opts.fd, &error)) {
    g_printerr("%s: --fd %d: %s\n", g_get_prgname(), opts.fd, error->message);
    return EXIT_FAILURE;
  }
  dd.loop = loop;
  dd.backend = vgpu_vhost_get_backend(vgpu);
#ifdef HAVE_GST_PIPELINE
  if (opts.pipeline) {
    gst_init(NULL, NULL);
    dd.pipeline = pipeline_new(vgpu, opts.pipeline, (guint)opts.pipeline_scanout, &error);
    if (!dd.pipeline)
      return usage_error(ctx, "--pipeline: %s", error->message);
    gst_bus_add_watch(GST_ELEMENT_BUS(dd.pipeline), on_bus_message, &dd);
    if (gst_element_set_state(dd.pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
      g_printerr("%s: --pipeline: the pipeline does not start\n", g_get_prgname());
      return EXIT_FAILURE;
    }
    g_message("pipeline: scanout %d into '%s'", opts.pipeline_scanout, opts.pipeline);
  }
#endif
#ifdef HAVE_GST_RTSP
  if (opts.rtsp) {
    g_auto(GstVhostRtspAddress) address = { 0 };
    GstVhostRtspConfig rc = {
      .address = &address,
      .codec = GST_VHOST_RTSP_CODEC_H264,
      .auth = opts.rtsp_auth,
      .vhost = vgpu,
      .scanout = (guint)opts.pipeline_scanout,
    };
    g_autofree char *url = NULL;

    if (!gst_vhost_rtsp_parse_address(opts.rtsp, &address, &error)
        || (opts.rtsp_codec && !gst_vhost_rtsp_parse_codec(opts.rtsp_codec, &rc.codec, &error)))
      return usage_error(ctx, "--rtsp: %s", error->message);
    gst_init(NULL, NULL);
    dd.rtsp = gst_vhost_rtsp_new(&rc, &error);
    if (!dd.rtsp && g_error_matches(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE))
      return usage_error(ctx, "%s", error->message);
    if (!dd.rtsp) {
      g_printerr("%s: --rtsp: %s\n", g_get_prgname(), error->message);
      return EXIT_FAILURE;
    }
    url = gst_vhost_rtsp_get_url(dd.rtsp);
    g_message("rtsp: serving scanout %d at %s%s", opts.pipeline_scanout, url,
              opts.rtsp_auth ? " (basic authentication)" : "");
  } else if (opts.rtsp_codec || opts.rtsp_auth) {
    return usage_error(ctx, "--rtsp-codec and --rtsp-auth need --rtsp");
  }
#endif
  vgpu_vhost_set_disconnect_func(vgpu, on_frontend_gone, &dd);
  g_unix_signal_add(SIGTERM, on_signal, &dd);
  g_unix_signal_add(SIGINT, on_signal, &dd);
  if (opts.socket_path)
    g_message("%s %s: listening on %s", g_get_prgname(), PACKAGE_VERSION, opts.socket_path);
  else
    g_message("%s %s: serving fd %d", g_get_prgname(), PACKAGE_VERSION, opts.fd);
  g_info("%u scanout(s) of %ux%u, %" G_GUINT64_FORMAT " bytes for at most %u resources",
         config.device.num_scanouts, config.device.width, config.device.height,
         config.device.max_hostmem, config.device.max_resources);
  g_main_loop_run(loop);
#ifdef HAVE_GST_PIPELINE
  if (dd.pipeline) {
    gst_element_set_state(dd.pipeline, GST_STATE_NULL);
    gst_bus_remove_watch(GST_ELEMENT_BUS(dd.pipeline));
    gst_clear_object(&dd.pipeline);
  }
  g_free(opts.pipeline);
#endif
#ifdef HAVE_GST_RTSP
  g_clear_pointer(&dd.rtsp, gst_vhost_rtsp_free);
  g_free(opts.rtsp);
  g_free(opts.rtsp_codec);
  g_free(opts.rtsp_auth);
#endif
  g_clear_pointer(&vgpu, vgpu_vhost_free);
  g_free(opts.socket_path);
  g_free(opts.render_node);
  return EXIT_SUCCESS;
}
