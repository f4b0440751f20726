/* gst-vhost-conform: checks a vhost-user GPU or sound backend against the
 * vhost-user and virtio 1.3 specifications, without a VM.  See
 * docs/conformance.md and gst-vhost-conform(1). */
#include <signal.h>
#include <gio/gio.h>
#include <stdio.h>
#include <stdlib.h>

#include "vcf-check.h"
#include "vcf-report.h"
#include "vcf-target.h"

static char *opt_device, *opt_socket, *opt_start, *opt_json, *opt_only;
static gboolean opt_tap, opt_list, opt_verbose;

static const GOptionEntry entries[] = {
  { "device", 'd', 0, G_OPTION_ARG_STRING, &opt_device,
    "Device kind of the backend: gpu or sound (null: the project's echo test device)", "KIND" },
  { "socket-path", 's', 0, G_OPTION_ARG_FILENAME, &opt_socket,
    "Connect to a backend already listening on PATH (it must serve one connection after "
    "another)",
    "PATH" },
  { "start", 0, 0, G_OPTION_ARG_STRING, &opt_start,
    "Start the backend with CMD (shell-like quoting); {socket} is replaced by a fresh socket "
    "path. The backend is started again whenever it is gone; a death caused by a check is "
    "reported as 'crashed' against that check",
    "'CMD ... {socket} ...'" },
  { "json", 'j', 0, G_OPTION_ARG_FILENAME, &opt_json,
    "Also write the results as JSON: {\"backend\", \"device\", \"checks\": [{\"id\", \"group\", "
    "\"section\", \"verdict\", \"detail\"}]}",
    "FILE" },
  { "tap", 0, 0, G_OPTION_ARG_NONE, &opt_tap, "Print TAP version 13 instead of the table", NULL },
  { "only", 'o', 0, G_OPTION_ARG_STRING, &opt_only,
    "Run only these groups or check ids (comma-separated)", "GROUP,..." },
  { "list", 'l', 0, G_OPTION_ARG_NONE, &opt_list,
    "List the checks of --device (id, group, spec section, what it checks) and exit", NULL },
  { "verbose", 'v', 0, G_OPTION_ARG_NONE, &opt_verbose, "Name each check on stderr as it starts",
    NULL },
  { NULL },
};

static const char summary[]
    = "Runs conformance checks against a vhost-user backend, playing the VMM: guest memory in\n"
      "memfd regions, driver rings and the message sequences QEMU sends.  Each check uses a\n"
      "fresh connection and the backend must survive it.  Groups: handshake, reply, mem,\n"
      "vring, ring, config, status, inflight, reconnect, hostile, and per device gpu and\n"
      "display, or sound.";
static const char description[]
    = "Verdicts: pass; fail; not-offered (the backend does not offer the feature the check\n"
      "needs); crashed (the backend died or stopped answering because of the check: the\n"
      "signal or exit status is in the detail).\n"
      "\n"
      "Exit status: 0 when nothing failed or crashed, 1 otherwise, 2 on usage errors.\n"
      "\n"
      "Examples:\n"
      "  gst-vhost-conform --device gpu --start '/usr/libexec/gst-vhost-gpu --socket-path "
      "{socket}'\n"
      "  gst-vhost-conform --device gpu --start '/usr/lib/qemu/vhost-user-gpu -s {socket}' "
      "--json qemu.json\n"
      "  gst-vhost-conform --device sound --start '/usr/libexec/gst-vhost-sound --socket-path "
      "{socket}'\n"
      "  gst-vhost-conform --device gpu --socket-path /run/gpu.sock --only handshake,reply "
      "--tap\n"
      "\n"
      "Set GST_VHOST_CONFORM_BACKEND_LOG=1 to keep a started backend's stderr.";

int
main(int argc, char **argv)
{
  g_autoptr(GOptionContext) octx = g_option_context_new("- vhost-user backend conformance checks");
  g_autoptr(GError) error = NULL;
  g_autoptr(VcfTarget) target = NULL;
  g_auto(GStrv) only = NULL;
  const VcfDevice *device;
  GArray *results;
  gboolean ok;

  /* A backend that goes away is an error return, never the end of us. */
  signal(SIGPIPE, SIG_IGN);
  g_option_context_set_summary(octx, summary);
  g_option_context_set_description(octx, description);
  g_option_context_add_main_entries(octx, entries, NULL);
  if (!g_option_context_parse(octx, &argc, &argv, &error)) {
    g_printerr("gst-vhost-conform: %s\n", error->message);
    return 2;
  }
  device = vcf_device_lookup(opt_device != NULL ? opt_device : "");
  if (device == NULL) {
    g_printerr("gst-vhost-conform: --device gpu or --device sound is required\n");
    return 2;
  }
  if (opt_list) {
    vcf_report_list(stdout, device);
    return 0;
  }
  if ((opt_socket == NULL) == (opt_start == NULL)) {
    g_printerr("gst-vhost-conform: need exactly one of --socket-path and --start\n");
    return 2;
  }
  if (opt_start != NULL) {
    target = vcf_target_new_command(opt_start, &error);
    if (target == NULL) {
      g_printerr("gst-vhost-conform: %s\n", error->message);
      return 2;
    }
  } else {
    target = vcf_target_new_socket(opt_socket);
  }
  if (opt_only != NULL)
    only = g_strsplit(opt_only, ",", -1);

  results = vcf_run(target, device, (const char *const *)only, opt_verbose);
  if (results->len == 0) {
    g_printerr("gst-vhost-conform: no check of a %s matches --only %s (see --list)\n", device->name,
               opt_only);
    vcf_results_free(results);
    return 2;
  }
  if (opt_tap)
    vcf_report_tap(stdout, results);
  else
    vcf_report_table(stdout, results);
  if (opt_json != NULL) {
    g_autofree char *json = vcf_report_json(vcf_target_describe(target), device->name, results);

    if (!g_file_set_contents(opt_json, json, -1, &error)) {
      g_printerr("gst-vhost-conform: %s\n", error->message);
      vcf_results_free(results);
      return 2;
    }
  }
  ok = vcf_results_ok(results);
  vcf_results_free(results);
  return ok ? 0 : 1;
}
