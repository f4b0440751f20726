/* gst-vhost-bench: transport throughput, our backend against QEMU's.
 *
 * One frontend driver (vhost/vhu-frontend) sends small requests through
 *  - our null device (tests/vhost/vhu-null-backend: echoes 64 bytes), and
 *  - QEMU's vhost-user-gpu, with its cheapest commands: TRANSFER_TO_HOST_2D
 *    of one pixel (answered OK, no display traffic, no log line) and
 *    RESOURCE_UNREF of an unknown id (answered with an error, and logged),
 * one request per kick and 64 per kick, and prints requests per second side
 * by side.  Both backends run as separate processes on this machine; the
 * figures measure the vhost-user data path (rings, eventfds, wake-ups), not
 * the devices.  By default the driver and the backend share one CPU, so a
 * figure is CPU cost per request and repeatable; --cpus split measures
 * cross-CPU wake-up latency instead (see docs/performance.md). */
#include <signal.h>
#include <errno.h>
#include <gio/gio.h>
#include <gio/gunixinputstream.h>
#include <linux/virtio_gpu.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench-util.h"

#ifndef VHU_NULL_BACKEND_PATH
#define VHU_NULL_BACKEND_PATH "vhu-null-backend"
#endif
#define QEMU_GPU_PATH "/usr/lib/qemu/vhost-user-gpu"
#define BIT(n)        (G_GUINT64_CONSTANT(1) << (n))
#define MAX_BATCH     BENCH_MAX_BATCH
#define ECHO_SIZE     64u

typedef struct {
  char *null_backend;
  char *qemu_gpu;
  double seconds;
  int repeat;
  int queue_size;
  gboolean indirect;
  char *only;      /* NULL, "ours" or "qemu" */
  int per_kick;    /* 0: both 1 and MAX_BATCH */
  char *cpus;      /* NULL/"any", "same" or "split" */
  int backend_cpu; /* -1: wherever the scheduler puts it */
} Options;

/* --- backends ------------------------------------------------------------ */

/* The null device prints "ready" once it listens. */
static gboolean
wait_ready(GSubprocess *proc, GError **error)
{
  GInputStream *out = g_subprocess_get_stdout_pipe(proc);
  int fd = g_unix_input_stream_get_fd(G_UNIX_INPUT_STREAM(out));
  char buf[128] = { 0 };
  gsize got = 0;

  while (strstr(buf, "ready\n") == NULL) {
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    gssize n;

    if (got == sizeof buf - 1 || poll(&pfd, 1, 10000) != 1) {
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                          "the null backend did not print \"ready\"");
      return FALSE;
    }
    n = g_input_stream_read(out, buf + got, sizeof buf - 1 - got, NULL, error);
    if (n <= 0) {
      if (n == 0)
        g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                            "the null backend exited before it was ready");
      return FALSE;
    }
    got += (gsize)n;
  }
  return TRUE;
}

/* --cpus: "same" runs the driver and the backend on one CPU (every wake-up
 * is a context switch there: the figure is CPU cost per request), "split"
 * on two (every wake-up crosses CPUs: the figure is mostly wake-up
 * latency).  Left to the scheduler, runs land on either, which is the main
 * source of noise.  Returns a description, or NULL with @error. */
static char *
place_cpus(Options *opt, GError **error)
{
  cpu_set_t allowed, set;
  int first = -1, second = -1;

  opt->backend_cpu = -1;
  if (opt->cpus != NULL && strcmp(opt->cpus, "any") == 0)
    return g_strdup("left to the scheduler");
  if (sched_getaffinity(0, sizeof allowed, &allowed) < 0) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "sched_getaffinity: %s",
                g_strerror(errno));
    return NULL;
  }
  for (int i = 0; i < CPU_SETSIZE && second < 0; i++) {
    if (!CPU_ISSET(i, &allowed))
      continue;
    if (first < 0)
      first = i;
    else
      second = i;
  }
  if (g_strcmp0(opt->cpus, "split") == 0 && second < 0) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "--cpus split needs two CPUs");
    return NULL;
  }
  opt->backend_cpu = g_strcmp0(opt->cpus, "split") == 0 ? second : first;
  CPU_ZERO(&set);
  CPU_SET(first, &set);
  if (sched_setaffinity(0, sizeof set, &set) < 0) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "sched_setaffinity: %s",
                g_strerror(errno));
    return NULL;
  }
  return g_strdup_printf("driver on CPU %d, backend on CPU %d", first, opt->backend_cpu);
}

static gboolean
start_null(BenchBackend *b, const Options *opt, GError **error)
{
  const guint size = (guint)opt->queue_size;

  if (!bench_backend_dir(b, "vhu-bench-XXXXXX", "null.sock", error))
    return FALSE;
  b->proc = bench_spawn(
      G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_SILENCE, opt->backend_cpu, error,
      (const char *const[]){ opt->null_backend, "--socket-path", b->path, "--queues", "1", NULL });
  if (b->proc == NULL || !wait_ready(b->proc, error))
    return FALSE;
  b->fe = vhu_frontend_connect(b->path, error);
  return b->fe != NULL && vhu_frontend_init(b->fe, G_MAXUINT64, error)
         && vhu_frontend_add_region(b->fe, 0, 4 << 20, error)
         && vhu_frontend_start(b->fe, BIT(28) | BIT(29), &size, 1, error);
}

static gboolean
start_qemu(BenchBackend *b, const Options *opt, GError **error)
{
  const VhuDisplayConfig dc
      = { .num_scanouts = 1, .width = 640, .height = 480, .protocol_features = 0x3 };
  const guint sizes[2] = { (guint)opt->queue_size, 16 };

  if (!bench_backend_dir(b, "vhu-bench-XXXXXX", "gpu.sock", error))
    return FALSE;
  b->proc = bench_spawn(G_SUBPROCESS_FLAGS_STDOUT_SILENCE | G_SUBPROCESS_FLAGS_STDERR_SILENCE,
                        opt->backend_cpu, error,
                        (const char *const[]){ opt->qemu_gpu, "--socket-path", b->path, NULL });
  if (b->proc == NULL)
    return FALSE;
  /* It says nothing when ready, and accepts a single connection: ours. */
  if (!bench_backend_connect(b, error) || !vhu_frontend_init(b->fe, G_MAXUINT64, error)
      || !vhu_frontend_add_region(b->fe, 0, 4 << 20, error))
    return FALSE;
  b->ds = vhu_display_server_new(&dc);
  return vhu_display_server_attach(b->ds, b->fe, error)
         && vhu_frontend_start(b->fe, BIT(28) | BIT(29), sizes, 2, error);
}

/* A 16x16 resource with backing, for one-pixel transfers. */
static gboolean
qemu_resource(BenchBackend *b, GError **error)
{
  struct virtio_gpu_resource_create_2d create = {
    .hdr.type = VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
    .resource_id = 1,
    .format = VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
    .width = 16,
    .height = 16,
  };
  struct {
    struct virtio_gpu_resource_attach_backing hdr;
    struct virtio_gpu_mem_entry e;
  } attach = {
    .hdr
    = { .hdr.type = VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, .resource_id = 1, .nr_entries = 1 },
    .e = { .addr = vhu_frontend_alloc(b->fe, 16 * 16 * 4, 4096), .length = 16 * 16 * 4 }
  };
  VhuDriverQueue *q = vhu_frontend_get_queue(b->fe, 0);
  struct virtio_gpu_ctrl_hdr resp;

  if (vhu_driver_queue_transact(q, &create, sizeof create, &resp, sizeof resp, error) < 0
      || resp.type != VIRTIO_GPU_RESP_OK_NODATA
      || vhu_driver_queue_transact(q, &attach, sizeof attach, &resp, sizeof resp, error) < 0
      || resp.type != VIRTIO_GPU_RESP_OK_NODATA) {
    if (error != NULL && *error == NULL)
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "resource setup answered 0x%x", resp.type);
    return FALSE;
  }
  return TRUE;
}

/* --- the measurement ----------------------------------------------------- */

/* Requests per second over @seconds, after a short warm-up.  Adds every
 * request sent, warm-up included, to *@sent (for syscalls per request). */
static double
measure(VhuFrontend *fe, const BenchRequest *r, const BenchSlots *s, guint batch,
        const Options *opt, guint64 *sent, GError **error)
{
  VhuDriverQueue *q = vhu_frontend_get_queue(fe, 0);
  gint64 start, end, now;
  guint64 n = 0;

  end = g_get_monotonic_time() + 100 * 1000;
  while (g_get_monotonic_time() < end) {
    if (!bench_round_trip(q, r, s, batch, opt->indirect, error))
      return -1;
    *sent += batch;
  }
  start = g_get_monotonic_time();
  end = start + (gint64)(opt->seconds * G_USEC_PER_SEC);
  do {
    if (!bench_round_trip(q, r, s, batch, opt->indirect, error))
      return -1;
    n += batch;
    *sent += batch;
    now = g_get_monotonic_time();
  } while (now < end);
  return (double)n * G_USEC_PER_SEC / (double)(now - start);
}

typedef struct {
  const char *label;
  const char *short_label;
  double rate[2];  /* 1 per kick, 64 per kick; < 0: failed */
  guint64 sent[2]; /* requests sent, warm-up included */
  char *why;
} Row;

static int
cmp_double(gconstpointer a, gconstpointer b)
{
  double x = *(const double *)a, y = *(const double *)b;

  return x < y ? -1 : x > y;
}

/* The median of opt->repeat measurements: this is a busy, shared machine. */
static void
run_row(BenchBackend *b, Row *row, const BenchRequest *r, const Options *opt)
{
  g_autoptr(GError) error = NULL;
  g_autofree double *runs = g_new(double, opt->repeat);
  BenchSlots s;
  const guint batches[2] = { 1, MAX_BATCH };

  row->rate[0] = row->rate[1] = -1;
  if (!bench_prepare_slots(b->fe, r, &s, &error)) {
    row->why = g_strdup(error->message);
    return;
  }
  for (guint i = 0; i < 2; i++) {
    if (opt->per_kick != 0 && (guint)opt->per_kick != batches[i])
      continue;
    for (int k = 0; k < opt->repeat; k++) {
      runs[k] = measure(b->fe, r, &s, batches[i], opt, &row->sent[i], &error);
      if (runs[k] < 0) {
        row->why = g_strdup(error->message);
        return;
      }
    }
    qsort(runs, (gsize)opt->repeat, sizeof *runs, cmp_double);
    row->rate[i] = runs[opt->repeat / 2];
  }
}

static void
fail_row(Row *row, GError *error, const char *what)
{
  row->rate[0] = row->rate[1] = -1;
  row->why = error != NULL ? g_strdup_printf("%s: %s", what, error->message) : g_strdup(what);
}

static void
print_rate(double v)
{
  if (v < 0)
    printf(" %14s", "n/a");
  else
    printf(" %14.0f", v);
}

static void
print_table(Row *rows, guint n, const Options *opt)
{
  printf("\nrequests per second (median of %d runs of %.1f s, queue size %d, %s descriptors, "
         "EVENT_IDX)\n\n",
         opt->repeat, opt->seconds, opt->queue_size, opt->indirect ? "indirect" : "direct");
  printf("%-38s %14s %14s\n", "", "1 per kick", "64 per kick");
  for (guint i = 0; i < n; i++) {
    printf("%-38s", rows[i].label);
    print_rate(rows[i].rate[0]);
    print_rate(rows[i].rate[1]);
    printf("\n");
  }
  for (guint k = 1; k < n; k++) {
    g_autofree char *label = g_strdup_printf("ratio ours / %s", rows[k].short_label);

    printf("%-38s", label);
    for (guint i = 0; i < 2; i++) {
      if (rows[0].rate[i] > 0 && rows[k].rate[i] > 0)
        printf(" %13.2fx", rows[0].rate[i] / rows[k].rate[i]);
      else
        printf(" %14s", "n/a");
    }
    printf("\n");
  }
  printf("\nrequests sent, warm-up included (to count syscalls or instructions per request)\n");
  for (guint i = 0; i < n; i++)
    printf("%-38s %14" G_GUINT64_FORMAT " %14" G_GUINT64_FORMAT "\n", rows[i].label,
           rows[i].sent[0], rows[i].sent[1]);
  for (guint i = 0; i < n; i++) {
    if (rows[i].why != NULL)
      printf("\n%s: n/a: %s", rows[i].label, rows[i].why);
  }
  printf("\n");
}

int
main(int argc, char **argv)
{
  Options opt = { .seconds = 0.5, .repeat = 3, .queue_size = 256 };
  g_autofree char *null_backend = NULL, *qemu_gpu = NULL;
  const GOptionEntry entries[] = {
    { "null-backend", 0, 0, G_OPTION_ARG_FILENAME, &null_backend,
      "Our null device (default: the one in this build)", "PATH" },
    { "qemu-gpu", 0, 0, G_OPTION_ARG_FILENAME, &qemu_gpu,
      "QEMU's backend (default " QEMU_GPU_PATH ")", "PATH" },
    { "seconds", 's', 0, G_OPTION_ARG_DOUBLE, &opt.seconds, "Seconds per run (default 0.5)", "S" },
    { "repeat", 'r', 0, G_OPTION_ARG_INT, &opt.repeat,
      "Runs per figure; the median is printed (default 3)", "N" },
    { "queue-size", 'q', 0, G_OPTION_ARG_INT, &opt.queue_size,
      "Ring size, a power of two >= 128 (default 256)", "N" },
    { "indirect", 0, 0, G_OPTION_ARG_NONE, &opt.indirect, "Use indirect descriptor tables", NULL },
    { "per-kick", 0, 0, G_OPTION_ARG_INT, &opt.per_kick,
      "Measure only 1 or only 64 requests per kick", "N" },
    { "cpus", 0, 0, G_OPTION_ARG_STRING, &opt.cpus,
      "CPU placement: same (default: driver and backend on one CPU), split (two) or any", "PLACE" },
    { "only", 0, 0, G_OPTION_ARG_STRING, &opt.only,
      "Measure one side only: ours or qemu (e.g. under strace -c)", "SIDE" },
    { NULL },
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new(NULL);
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_transfer_to_host_2d transfer = {
    .hdr.type = VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
    .r = { 0, 0, 1, 1 },
    .resource_id = 1,
  };
  struct virtio_gpu_resource_unref unref = {
    .hdr.type = VIRTIO_GPU_CMD_RESOURCE_UNREF,
    .resource_id = 0xdead,
  };
  guint8 echo[ECHO_SIZE];
  const BenchRequest echo_req = { echo, sizeof echo, sizeof echo, 0 };
  const BenchRequest transfer_req
      = { &transfer, sizeof transfer, sizeof(struct virtio_gpu_ctrl_hdr),
          VIRTIO_GPU_RESP_OK_NODATA };
  const BenchRequest unref_req = { &unref, sizeof unref, sizeof(struct virtio_gpu_ctrl_hdr),
                                   VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID };
  Row rows[3] = {
    { .label = "ours: null device, 64-byte echo", .short_label = "ours" },
    { .label = "QEMU gpu: TRANSFER_TO_HOST_2D 1 px", .short_label = "QEMU TRANSFER" },
    { .label = "QEMU gpu: RESOURCE_UNREF unknown id", .short_label = "QEMU UNREF" },
  };
  BenchBackend ours = { 0 }, qemu = { 0 };
  const Row *main_row;
  g_autofree char *placement = NULL;

  /* A peer that goes away is an error return, never the end of us. */
  signal(SIGPIPE, SIG_IGN);
  g_option_context_set_summary(ctx, "Requests per second through the vhost-user transport: our "
                                    "null device against QEMU's vhost-user-gpu.");
  g_option_context_set_description(
      ctx, "Both backends run as child processes (their log output is discarded); one frontend\n"
           "driver sends small requests: a 64-byte echo through our null device, and QEMU's\n"
           "cheapest GPU commands (a one-pixel TRANSFER_TO_HOST_2D answered OK without a\n"
           "log line, and a RESOURCE_UNREF of an unknown id answered with an error that QEMU\n"
           "logs).  Each figure waits for every answer of a kick before the next kick.\n"
           "By default the driver and both backends run on one CPU (CPU cost per request);\n"
           "--cpus split puts the backend on a second CPU (cross-CPU wake-up latency).\n"
           "A benchmark, not a test: the figures depend on the machine.");
  g_option_context_add_main_entries(ctx, entries, NULL);
  if (!g_option_context_parse(ctx, &argc, &argv, &error) || opt.seconds <= 0 || opt.repeat < 1
      || opt.repeat > 100 || opt.queue_size < 128 || opt.queue_size > 32768
      || (opt.queue_size & (opt.queue_size - 1)) != 0
      || (opt.per_kick != 0 && opt.per_kick != 1 && opt.per_kick != (int)MAX_BATCH)
      || (opt.only != NULL && g_strcmp0(opt.only, "ours") != 0 && g_strcmp0(opt.only, "qemu") != 0)
      || (opt.cpus != NULL && g_strcmp0(opt.cpus, "any") != 0 && g_strcmp0(opt.cpus, "same") != 0
          && g_strcmp0(opt.cpus, "split") != 0)) {
    fprintf(stderr, "gst-vhost-bench: %s\n", error != NULL ? error->message : "bad option value");
    return 2;
  }
  opt.null_backend = null_backend != NULL ? null_backend : VHU_NULL_BACKEND_PATH;
  opt.qemu_gpu = qemu_gpu != NULL ? qemu_gpu : QEMU_GPU_PATH;
  for (guint i = 0; i < sizeof echo; i++)
    echo[i] = (guint8)(i * 7 + 1);

  placement = place_cpus(&opt, &error);
  if (placement == NULL) {
    fprintf(stderr, "gst-vhost-bench: %s\n", error->message);
    return 2;
  }
  printf("null device: %s\nQEMU backend: %s\nCPUs: %s\n", opt.null_backend, opt.qemu_gpu,
         placement);
  if (g_strcmp0(opt.only, "qemu") == 0)
    fail_row(&rows[0], NULL, "skipped (--only qemu)");
  else if (start_null(&ours, &opt, &error))
    run_row(&ours, &rows[0], &echo_req, &opt);
  else
    fail_row(&rows[0], error, "cannot start");
  g_clear_error(&error);
  bench_backend_clear(&ours);

  if (g_strcmp0(opt.only, "ours") == 0) {
    fail_row(&rows[1], NULL, "skipped (--only ours)");
    fail_row(&rows[2], NULL, "skipped (--only ours)");
  } else if (start_qemu(&qemu, &opt, &error) && qemu_resource(&qemu, &error)) {
    run_row(&qemu, &rows[1], &transfer_req, &opt);
    run_row(&qemu, &rows[2], &unref_req, &opt);
  } else {
    fail_row(&rows[1], error, "cannot start");
    fail_row(&rows[2], error, "cannot start");
  }
  bench_backend_clear(&qemu);

  print_table(rows, G_N_ELEMENTS(rows), &opt);
  for (guint i = 0; i < G_N_ELEMENTS(rows); i++)
    g_free(rows[i].why);
  /* Fails when the side that was asked for could not be measured. */
  main_row = g_strcmp0(opt.only, "qemu") == 0 ? &rows[1] : &rows[0];
  g_free(opt.only);
  g_free(opt.cpus);
  return main_row->rate[opt.per_kick == (int)MAX_BATCH ? 1 : 0] > 0 ? 0 : 1;
}
