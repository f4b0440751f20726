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
#include "vgpu-vhost.h"

#define EXIT_USAGE 2
/* fds kept free for sockets, eventfds and memory regions */
#define FD_RESERVE 256u

typedef struct {
  char *socket_path;
  gint fd;
  gboolean print_capabilities;
  gint width, height, scanouts;
  guint64 max_hostmem;
  gint verbosity;
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
      "SIGTERM and SIGINT end it cleanly (exit status 0).\n"
      "\n"
      "Example (QEMU 8.0 or later; older QEMU requires KVM for vhost-user-gpu):\n"
      "  gst-vhost-gpu --socket-path /tmp/gpu.sock &\n"
      "  qemu-system-x86_64 -m 1G \\\n"
      "    -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem "
      "\\\n"
      "    -chardev socket,id=gpu,path=/tmp/gpu.sock \\\n"
      "    -device vhost-user-gpu-pci,chardev=gpu,xres=1280,yres=800 ...\n"
      "\n"
      "Guest memory must be shared (memory-backend-memfd with share=on).";

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
  /* No render node and no virgl: no optional gpu features. */
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

static gboolean
on_signal(gpointer data)
{
  g_main_loop_quit(data);
  return G_SOURCE_CONTINUE;
}

typedef struct {
  GMainLoop *loop;
  VhuBackend *backend;
} DisconnectData;

static void
on_frontend_gone(gpointer data)
{
  DisconnectData *d = data;

  if (!vhu_backend_is_serving(d->backend))
    g_main_loop_quit(d->loop);
}

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
  DisconnectData dd;

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
  if (!vgpu_device_config_validate(&config.device, &error))
    return usage_error(ctx, "%s", error->message);
  config.device.max_resources = raise_fd_limit();

  loop = g_main_loop_new(NULL, FALSE);
  vgpu = vgpu_vhost_new(&config, NULL, &error);
  if (!vgpu)
    return usage_error(ctx, "%s", error->message);
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
  vgpu_vhost_set_disconnect_func(vgpu, on_frontend_gone, &dd);
  g_unix_signal_add(SIGTERM, on_signal, loop);
  g_unix_signal_add(SIGINT, on_signal, loop);
  if (opts.socket_path)
    g_message("%s %s: listening on %s", g_get_prgname(), PACKAGE_VERSION, opts.socket_path);
  else
    g_message("%s %s: serving fd %d", g_get_prgname(), PACKAGE_VERSION, opts.fd);
  g_info("%u scanout(s) of %ux%u, %" G_GUINT64_FORMAT " bytes for at most %u resources",
         config.device.num_scanouts, config.device.width, config.device.height,
         config.device.max_hostmem, config.device.max_resources);
  g_main_loop_run(loop);
  g_clear_pointer(&vgpu, vgpu_vhost_free);
  g_free(opts.socket_path);
  return EXIT_SUCCESS;
}
