/* gst-vhost-sound: a vhost-user virtio-sound backend for QEMU's
 * vhost-user-snd-pci, following QEMU's backend program conventions
 * (docs/interop/vhost-user.rst). */
#include <errno.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "vsnd-null-output.h"
#include "vsnd-vhost.h"
#ifdef HAVE_GST_PIPELINE
#include "gstvhostsndstream.h"
#endif

#define EXIT_USAGE 2
/* How long SIGTERM/SIGINT wait for playback pipelines to finish after EOS. */
#define EOS_TIMEOUT_MS 3000

typedef struct {
  char *socket_path;
  gint fd;
  gboolean print_capabilities;
  gint outputs, inputs;
  char *channels, *formats, *rates;
  gboolean no_controls;
  char **output_pipelines, **input_pipelines;
  gint verbosity;
} Options;

static Options opts = { .fd = -1, .outputs = 1, .inputs = 1 };

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

static const GOptionEntry entries[] = {
  { "socket-path", 's', 0, G_OPTION_ARG_FILENAME, &opts.socket_path,
    "Listen on the Unix socket PATH for the frontend (QEMU connects to it)", "PATH" },
  { "fd", 'f', 0, G_OPTION_ARG_INT, &opts.fd,
    "Serve the already connected socket FDNUM (inherited from the process that started us)",
    "FDNUM" },
  { "print-capabilities", 'c', 0, G_OPTION_ARG_NONE, &opts.print_capabilities,
    "Print the backend capabilities as JSON and exit", NULL },
  { "outputs", 0, 0, G_OPTION_ARG_INT, &opts.outputs,
    "Number of playback (guest output) streams, default 1", "N" },
  { "inputs", 0, 0, G_OPTION_ARG_INT, &opts.inputs,
    "Number of capture (guest input) streams, default 1", "N" },
  { "channels", 0, 0, G_OPTION_ARG_STRING, &opts.channels,
    "Channels every stream offers: N or MIN-MAX (1..18, default 2)", "RANGE" },
  { "formats", 0, 0, G_OPTION_ARG_STRING, &opts.formats,
    "Sample formats offered, comma-separated (default u8,s16,s24,s32,float; also s8, u16, "
    "s24_3, u32, float64, mu_law, a_law)",
    "LIST" },
  { "rates", 0, 0, G_OPTION_ARG_STRING, &opts.rates,
    "Frame rates offered in Hz, comma-separated (default every rate from 8000 to 192000)", "LIST" },
  { "no-controls", 0, 0, G_OPTION_ARG_NONE, &opts.no_controls,
    "Do not offer the volume and switch controls (VIRTIO_SND_F_CTLS)", NULL },
#ifdef HAVE_GST_PIPELINE
  { "output-pipeline", 'o', 0, G_OPTION_ARG_STRING_ARRAY, &opts.output_pipelines,
    "Play guest output into this GStreamer pipeline (gst-launch-1.0 syntax, taking raw audio; "
    "default autoaudiosink).  N:DESCRIPTION for output stream N only; repeatable",
    "[N:]DESCRIPTION" },
  { "input-pipeline", 'i', 0, G_OPTION_ARG_STRING_ARRAY, &opts.input_pipelines,
    "Feed guest input from this GStreamer pipeline (gst-launch-1.0 syntax, producing raw "
    "audio; default autoaudiosrc).  N:DESCRIPTION for input stream N only; repeatable",
    "[N:]DESCRIPTION" },
#endif
  { "verbose", 'v', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK, parse_verbose,
    "Log more (-v: informational messages, -vv: debugging)", NULL },
  { "quiet", 'q', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK, parse_quiet,
    "Log only warnings and errors", NULL },
  { NULL },
};

static const char description[]
    = "Serves a virtio-sound device to QEMU's vhost-user-snd-pci over vhost-user.  Guest\n"
      "playback is consumed and guest capture is fed in real time, paced by the clock:\n"
      "a playback buffer completes when its frames are due, not when it arrives.  Exactly\n"
      "one of --socket-path and --fd is required.  With --socket-path the backend keeps\n"
      "serving: after a frontend leaves, the next one is served (volume and switch\n"
      "settings are kept).  With --fd it exits when that connection closes.  SIGTERM and\n"
      "SIGINT end it cleanly (exit status 0), after end-of-stream went through the output\n"
      "pipelines (at most 3 s), so that the files they write are complete.\n"
      "\n"
      "Each stream has its own pipeline, with conversion and resampling in front of it\n"
      "(output) or behind it (input), so any guest format and rate works with any\n"
      "pipeline; an output pipeline keeps the format it first negotiated.  Without a\n"
      "sound server the default pipelines are headless: playback is consumed at the\n"
      "clock's pace, capture is silence.\n"
      "\n"
      "Example (QEMU 9.0 or later):\n"
      "  gst-vhost-sound --socket-path /tmp/snd.sock &\n"
      "  qemu-system-x86_64 -m 1G \\\n"
      "    -object memory-backend-memfd,id=mem,size=1G,share=on -machine pc,memory-backend=mem "
      "\\\n"
      "    -chardev socket,id=snd,path=/tmp/snd.sock \\\n"
      "    -device vhost-user-snd-pci,chardev=snd,controls=on ...\n"
      "\n"
      "Recording the guest's playback into a WAV file:\n"
      "  gst-vhost-sound --socket-path /tmp/snd.sock \\\n"
      "    --output-pipeline 'wavenc ! filesink location=guest.wav'\n"
      "\n"
      "Guest memory must be shared (memory-backend-memfd with share=on).  With the volume and\n"
      "switch controls (the default) QEMU's device needs controls=on, else the guest's driver\n"
      "fails to probe; --no-controls goes without.";

static int log_threshold = G_LOG_LEVEL_MESSAGE;

static GLogWriterOutput
log_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer data)
{
  if ((level & G_LOG_LEVEL_MASK) > (GLogLevelFlags)log_threshold)
    return G_LOG_WRITER_HANDLED;
  return g_log_writer_default(level, fields, n_fields, data);
}

static void
print_capabilities(void)
{
  printf("{\n  \"type\": \"sound\",\n  \"features\": [\n  ]\n}\n");
}

/* --- stream options -------------------------------------------------------- */

static const struct {
  const char *name;
  guint format;
} format_names[] = {
  { "s8", VIRTIO_SND_PCM_FMT_S8 },         { "u8", VIRTIO_SND_PCM_FMT_U8 },
  { "s16", VIRTIO_SND_PCM_FMT_S16 },       { "u16", VIRTIO_SND_PCM_FMT_U16 },
  { "s24_3", VIRTIO_SND_PCM_FMT_S24_3 },   { "u24_3", VIRTIO_SND_PCM_FMT_U24_3 },
  { "s24", VIRTIO_SND_PCM_FMT_S24 },       { "u24", VIRTIO_SND_PCM_FMT_U24 },
  { "s32", VIRTIO_SND_PCM_FMT_S32 },       { "u32", VIRTIO_SND_PCM_FMT_U32 },
  { "float", VIRTIO_SND_PCM_FMT_FLOAT },   { "float64", VIRTIO_SND_PCM_FMT_FLOAT64 },
  { "mu_law", VIRTIO_SND_PCM_FMT_MU_LAW }, { "a_law", VIRTIO_SND_PCM_FMT_A_LAW },
};

static gboolean
parse_formats(const char *list, guint64 *formats, GError **error)
{
  g_auto(GStrv) items = g_strsplit(list, ",", -1);

  *formats = 0;
  for (guint i = 0; items[i]; i++) {
    guint k;

    for (k = 0; k < G_N_ELEMENTS(format_names); k++)
      if (g_ascii_strcasecmp(g_strstrip(items[i]), format_names[k].name) == 0)
        break;
    if (k == G_N_ELEMENTS(format_names)) {
      g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "--formats: unknown format '%s'",
                  items[i]);
      return FALSE;
    }
    *formats |= 1ull << format_names[k].format;
  }
  return *formats != 0;
}

static gboolean
parse_rates(const char *list, guint64 *rates, GError **error)
{
  g_auto(GStrv) items = g_strsplit(list, ",", -1);

  *rates = 0;
  for (guint i = 0; items[i]; i++) {
    guint64 hz;
    guint r;

    if (!g_ascii_string_to_unsigned(g_strstrip(items[i]), 10, 1, G_MAXUINT32, &hz, NULL))
      hz = 0;
    for (r = 0; r < VIRTIO_SND_PCM_RATE_COUNT; r++)
      if (vsnd_rate_to_hz(r) == hz)
        break;
    if (r == VIRTIO_SND_PCM_RATE_COUNT) {
      g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                  "--rates: %s is not a virtio-sound rate (5512, 8000, 11025, 12000, 16000, "
                  "22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000, 176400, 192000, "
                  "384000)",
                  items[i]);
      return FALSE;
    }
    *rates |= 1ull << r;
  }
  return *rates != 0;
}

static gboolean
parse_channels(const char *s, guint8 *min, guint8 *max, GError **error)
{
  g_auto(GStrv) parts = g_strsplit(s, "-", 2);
  guint64 lo, hi;

  if (!g_ascii_string_to_unsigned(parts[0], 10, 1, VIRTIO_SND_CHMAP_MAX_SIZE, &lo, NULL)
      || !g_ascii_string_to_unsigned(parts[1] ? parts[1] : parts[0], 10, lo,
                                     VIRTIO_SND_CHMAP_MAX_SIZE, &hi, NULL)) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "--channels: '%s' is not N or MIN-MAX within 1..%u", s, VIRTIO_SND_CHMAP_MAX_SIZE);
    return FALSE;
  }
  *min = (guint8)lo;
  *max = (guint8)hi;
  return TRUE;
}

/* Channel maps the guest can pick from: mono, stereo and 5.1 where offered,
 * per direction. */
static void
add_chmaps(GArray *chmaps, guint8 direction, guint8 min, guint8 max)
{
  static const struct {
    guint8 channels;
    guint8 positions[6];
  } maps[] = {
    { 1, { VIRTIO_SND_CHMAP_MONO } },
    { 2, { VIRTIO_SND_CHMAP_FL, VIRTIO_SND_CHMAP_FR } },
    { 6,
      { VIRTIO_SND_CHMAP_FL, VIRTIO_SND_CHMAP_FR, VIRTIO_SND_CHMAP_FC, VIRTIO_SND_CHMAP_LFE,
        VIRTIO_SND_CHMAP_RL, VIRTIO_SND_CHMAP_RR } },
  };

  for (guint i = 0; i < G_N_ELEMENTS(maps); i++) {
    VsndChmapConfig c = { 0, direction, maps[i].channels };

    if (maps[i].channels < min || maps[i].channels > max)
      continue;
    memcpy(c.positions, maps[i].positions, maps[i].channels);
    g_array_append_val(chmaps, c);
  }
}

/* HDA pin default configuration of a jack: 1/8" jack, green line out or
 * pink mic in, association 1, sequence = its index. */
static VsndJackConfig
jack_for(guint8 direction, guint index)
{
  guint32 device = direction == VIRTIO_SND_D_OUTPUT ? 0x0 : 0xa;
  guint32 color = direction == VIRTIO_SND_D_OUTPUT ? 0x4 : 0x9;
  guint32 caps = direction == VIRTIO_SND_D_OUTPUT ? 0x14 : 0x24; /* presence detect, out/in */

  return (VsndJackConfig){ 0,
                           (device << 20) | (1u << 16) | (color << 12) | (1u << 4) | (index & 0xf),
                           caps, TRUE, TRUE };
}

#ifdef HAVE_GST_PIPELINE
/* Values of --output-pipeline or --input-pipeline (@option) for @n streams:
 * "N:DESCRIPTION" is stream N's, a plain "DESCRIPTION" every other's; NULL
 * in @descs is the default. */
static gboolean
parse_pipelines(char **values, const char *option, gint n, const char **descs, GError **error)
{
  const char *rest = NULL;

  for (guint i = 0; values && values[i]; i++) {
    const char *colon = strchr(values[i], ':');
    g_autofree char *num = colon ? g_strndup(values[i], (gsize)(colon - values[i])) : NULL;
    guint64 k;

    if (num && g_ascii_string_to_unsigned(num, 10, 0, G_MAXINT, &k, NULL)) {
      if (k >= (guint64)n || descs[k]) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    k >= (guint64)n ? "%s %s: there is no stream %s (%d configured)"
                                    : "%s %s: stream %s has a pipeline already",
                    option, values[i], num, n);
        return FALSE;
      }
      descs[k] = colon + 1;
    } else if (rest) {
      g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                  "%s given twice for every stream (use N:DESCRIPTION per stream)", option);
      return FALSE;
    } else {
      rest = values[i];
    }
  }
  for (gint k = 0; k < n; k++)
    if (!descs[k])
      descs[k] = rest;
  return TRUE;
}
#endif

static int usage_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static int
usage_error(const char *fmt, ...)
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

/* --- daemon ---------------------------------------------------------------- */

typedef struct {
  GMainLoop *loop;
  VhuBackend *backend;
} Daemon;

static gboolean
on_signal(gpointer data)
{
  g_main_loop_quit(((Daemon *)data)->loop);
  return G_SOURCE_CONTINUE;
}

static void
on_frontend_gone(gpointer data)
{
  Daemon *d = data;

  if (!vhu_backend_is_serving(d->backend))
    g_main_loop_quit(d->loop);
}

int
main(int argc, char **argv)
{
  g_autoptr(GOptionContext) ctx = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GMainLoop) loop = NULL;
  g_autoptr(GArray) streams = g_array_new(FALSE, TRUE, sizeof(VsndStreamConfig));
  g_autoptr(GArray) jacks = g_array_new(FALSE, TRUE, sizeof(VsndJackConfig));
  g_autoptr(GArray) chmaps = g_array_new(FALSE, TRUE, sizeof(VsndChmapConfig));
  VsndStreamConfig sc = { 0 };
  VsndVhostConfig config = { 0 };
#ifdef HAVE_GST_PIPELINE
  g_autofree const char **descs = NULL;
  GstVhostSndStream *pipelines;
#else
  VsndNullOutput *output;
#endif
  VsndVhost *vsnd;
  Daemon dd = { 0 };

  /* A peer that goes away is an error return, never the end of us. */
  signal(SIGPIPE, SIG_IGN);
  g_set_prgname("gst-vhost-sound");
  ctx = g_option_context_new("- virtio-sound vhost-user backend");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_option_context_set_description(ctx, description);
  if (!g_option_context_parse(ctx, &argc, &argv, &error))
    return usage_error("%s", error->message);
  if (argc > 1)
    return usage_error("unexpected argument: %s", argv[1]);
  if (opts.print_capabilities) {
    print_capabilities();
    return EXIT_SUCCESS;
  }
  if ((opts.socket_path != NULL) == (opts.fd >= 0))
    return usage_error("exactly one of --socket-path and --fd is required");
  if (opts.fd < -1)
    return usage_error("--fd: invalid file descriptor %d", opts.fd);
  if (opts.socket_path && opts.socket_path[0] == '\0')
    return usage_error("--socket-path: empty path");
  if (opts.outputs < 0 || opts.inputs < 0 || opts.outputs + opts.inputs < 1
      || opts.outputs + opts.inputs > (gint)VSND_MAX_STREAMS)
    return usage_error("--outputs and --inputs: 1 to %u streams in all", VSND_MAX_STREAMS);
  sc.channels_min = sc.channels_max = 2;
  if (opts.channels && !parse_channels(opts.channels, &sc.channels_min, &sc.channels_max, &error))
    return usage_error("%s", error->message);
  if (!parse_formats(opts.formats ? opts.formats : "u8,s16,s24,s32,float", &sc.formats, &error)
      || !parse_rates(opts.rates ? opts.rates
                                 : "8000,11025,16000,22050,32000,44100,48000,64000,88200,"
                                   "96000,176400,192000",
                      &sc.rates, &error))
    return usage_error("%s", error ? error->message : "empty list");
#ifdef HAVE_GST_PIPELINE
  descs = g_new0(const char *, opts.outputs + opts.inputs);
  if (!parse_pipelines(opts.output_pipelines, "--output-pipeline", opts.outputs, descs, &error)
      || !parse_pipelines(opts.input_pipelines, "--input-pipeline", opts.inputs,
                          descs + opts.outputs, &error))
    return usage_error("%s", error->message);
#endif

  log_threshold = opts.verbosity < 0    ? G_LOG_LEVEL_WARNING
                  : opts.verbosity == 0 ? G_LOG_LEVEL_MESSAGE
                  : opts.verbosity == 1 ? G_LOG_LEVEL_INFO
                                        : G_LOG_LEVEL_DEBUG;
  g_log_writer_default_set_use_stderr(TRUE);
  if (opts.verbosity > 0)
    g_setenv("G_MESSAGES_DEBUG", "all", TRUE);
  g_log_set_writer_func(log_writer, NULL, NULL);

  for (gint i = 0; i < opts.outputs + opts.inputs; i++) {
    VsndJackConfig jack;

    sc.direction = i < opts.outputs ? VIRTIO_SND_D_OUTPUT : VIRTIO_SND_D_INPUT;
    jack = jack_for(sc.direction, (guint)(i < opts.outputs ? i : i - opts.outputs));
    g_array_append_val(streams, sc);
    g_array_append_val(jacks, jack);
  }
  if (opts.outputs > 0)
    add_chmaps(chmaps, VIRTIO_SND_D_OUTPUT, sc.channels_min, sc.channels_max);
  if (opts.inputs > 0)
    add_chmaps(chmaps, VIRTIO_SND_D_INPUT, sc.channels_min, sc.channels_max);
  config.device = (VsndDeviceConfig){
    streams->len,      (VsndStreamConfig *)streams->data,
    jacks->len,        (VsndJackConfig *)jacks->data,
    chmaps->len,       (VsndChmapConfig *)chmaps->data,
    !opts.no_controls,
  };

  loop = g_main_loop_new(NULL, FALSE);
  vsnd = vsnd_vhost_new(&config, NULL, &error);
  if (!vsnd)
    return usage_error("%s", error->message);
#ifdef HAVE_GST_PIPELINE
  gst_init(NULL, NULL);
  pipelines = gst_vhost_snd_stream_new(vsnd, NULL);
  for (gint i = 0; i < opts.outputs + opts.inputs; i++)
    gst_vhost_snd_stream_set_description(pipelines, (guint)i, descs[i]);
  if (!gst_vhost_snd_stream_start(pipelines, &error)) {
    gst_vhost_snd_stream_free(pipelines);
    vsnd_vhost_free(vsnd);
    return usage_error("%s", error->message);
  }
#else
  output = vsnd_null_output_new(vsnd);
#endif
  /* Served once the streams are ready. */
  if (opts.socket_path ? !vhu_backend_listen(vsnd_vhost_get_backend(vsnd), opts.socket_path, &error)
                       : !vhu_backend_serve_fd(vsnd_vhost_get_backend(vsnd), opts.fd, &error)) {
    if (opts.socket_path)
      g_printerr("%s: %s\n", g_get_prgname(), error->message);
    else
      g_printerr("%s: --fd %d: %s\n", g_get_prgname(), opts.fd, error->message);
#ifdef HAVE_GST_PIPELINE
    gst_vhost_snd_stream_free(pipelines);
#else
    vsnd_null_output_free(output);
#endif
    vsnd_vhost_free(vsnd);
    return EXIT_FAILURE;
  }
  dd.loop = loop;
  dd.backend = vsnd_vhost_get_backend(vsnd);
  vsnd_vhost_set_disconnect_func(vsnd, on_frontend_gone, &dd);
  g_unix_signal_add(SIGTERM, on_signal, &dd);
  g_unix_signal_add(SIGINT, on_signal, &dd);
  if (opts.socket_path)
    g_message("%s %s: listening on %s", g_get_prgname(), PACKAGE_VERSION, opts.socket_path);
  else
    g_message("%s %s: serving fd %d", g_get_prgname(), PACKAGE_VERSION, opts.fd);
#ifdef HAVE_GST_PIPELINE
  g_message("%d output and %d input stream(s), %u-%u channels", opts.outputs, opts.inputs,
            sc.channels_min, sc.channels_max);
#else
  g_message("%d output and %d input stream(s), %u-%u channels; headless: playback is "
            "consumed and capture is silence, at real-time pace",
            opts.outputs, opts.inputs, sc.channels_min, sc.channels_max);
#endif
  g_main_loop_run(loop);
#ifdef HAVE_GST_PIPELINE
  gst_vhost_snd_stream_finish(pipelines, EOS_TIMEOUT_MS);
  gst_vhost_snd_stream_free(pipelines);
  g_strfreev(opts.output_pipelines);
  g_strfreev(opts.input_pipelines);
#else
  vsnd_null_output_free(output);
#endif
  vsnd_vhost_free(vsnd);
  g_free(opts.socket_path);
  g_free(opts.channels);
  g_free(opts.formats);
  g_free(opts.rates);
  return EXIT_SUCCESS;
}
