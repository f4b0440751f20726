/* vcf-check.h: the check registry of gst-vhost-conform.
 *
 * A check has an id ("group.name"), a group, the spec section it tests, the
 * feature it needs (a virtio feature bit or a vhost-user protocol feature
 * bit; when the backend does not offer it the verdict is not-offered without
 * running it), and a run function.  The run function opens its own
 * connection(s) with vcf_ctx_open (each check starts from a fresh
 * connection), returns a verdict and leaves one line of detail with
 * vcf_ctx_detail.  Whether the backend survived is judged by the runner
 * after the check (vcf-target.h), which turns a dead backend into `crashed`.
 *
 * Ownership: checks are static tables; a VcfCtx belongs to the runner and
 * lives for one check.  Not thread-safe (the tool is single-threaded). */
#pragma once

#include <glib.h>

#include "vcf-session.h"

G_BEGIN_DECLS

typedef enum {
  VCF_PASS,
  VCF_FAIL,
  VCF_NOT_OFFERED,
  VCF_CRASHED,
} VcfVerdict;

const char *vcf_verdict_name(VcfVerdict v);

typedef struct _VcfCtx VcfCtx;
typedef struct _VcfDevice VcfDevice;

typedef enum {
  VCF_NEED_NONE,
  VCF_NEED_FEATURE,  /* a virtio feature bit (GET_FEATURES) */
  VCF_NEED_PROTOCOL, /* a vhost-user protocol feature bit (GET_PROTOCOL_FEATURES) */
} VcfNeedKind;

typedef struct {
  const char *id;      /* "group.name" */
  const char *group;   /* e.g. "handshake" */
  const char *section; /* spec section it tests */
  VcfNeedKind need_kind;
  guint need_bit;
  const char *summary; /* one line for --list */
  VcfVerdict (*run)(VcfCtx *ctx);
} VcfCheck;

/* A device kind: what the generic checks need to know of it. */
struct _VcfDevice {
  const char *name; /* "gpu", "sound", "null" */
  guint num_queues; /* queues the tool starts */
  guint queue_sizes[VCF_MAX_QUEUES];
  guint config_size;   /* bytes of config space */
  int writable_config; /* offset of 4 writable config bytes; -1: read-only space */
  guint resp_size;     /* writable bytes given to a probe request */
  /* A harmless request on queue 0 whose answer the device kind defines:
   * writes it into @req (at most 256 bytes) and returns its size. */
  gsize (*probe_request)(guint seq, guint8 *req);
  /* TRUE when @resp (@len bytes written) is the right answer to @req. */
  gboolean (*probe_ok)(guint seq, const guint8 *req, gsize req_len, const guint8 *resp, gsize len,
                       GString *why);
  const VcfCheck *checks; /* device-specific checks, NULL-id terminated */
};

const VcfDevice *vcf_device_lookup(const char *name);
/* Generic vhost-user checks (vcf-checks-vhost.c) and device ones. */
extern const VcfCheck vcf_vhost_checks[];
extern const VcfCheck vcf_gpu_checks[];
extern const VcfCheck vcf_sound_checks[];
extern const VcfDevice vcf_device_gpu, vcf_device_sound, vcf_device_null;

/* --- what a check uses --- */
const VcfDevice *vcf_ctx_device(VcfCtx *ctx);
const char *vcf_ctx_socket(VcfCtx *ctx);
/* A fresh connection, handshake done (NULL with the detail set). */
VcfSession *vcf_ctx_open(VcfCtx *ctx, const VcfSessionOptions *options);
/* A fresh connection started with the device's queues and @features. */
VcfSession *vcf_ctx_open_started(VcfCtx *ctx, guint64 features);
/* Sets the detail line (printf-style); returns @v for `return vcf_ctx_verdict(...)`. */
VcfVerdict vcf_ctx_verdict(VcfCtx *ctx, VcfVerdict v, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
#define vcf_pass(ctx, ...) vcf_ctx_verdict((ctx), VCF_PASS, __VA_ARGS__)
#define vcf_fail(ctx, ...) vcf_ctx_verdict((ctx), VCF_FAIL, __VA_ARGS__)
/* Fails with "@what: error message". */
VcfVerdict vcf_fail_error(VcfCtx *ctx, const char *what, const GError *error);
gboolean vcf_ctx_has_detail(VcfCtx *ctx);

/* The device's probe request on ring @q of @s: TRUE when answered rightly,
 * else FALSE with the reason in @why. */
gboolean vcf_probe(VcfCtx *ctx, VcfSession *s, guint seq, GString *why);
/* Probe whose request and answer buffers are the given guest addresses. */
gboolean vcf_probe_at(VcfCtx *ctx, VcfSession *s, guint seq, guint64 req_gpa, guint64 resp_gpa,
                      gboolean indirect, GString *why);

/* --- the runner --- */
typedef struct {
  const VcfCheck *check;
  VcfVerdict verdict;
  char *detail;
} VcfResult;

typedef struct _VcfTarget VcfTarget;

/* Runs @checks (filtered by @only, a NULL-terminated group list, or NULL
 * for all) against @target; returns a GArray of VcfResult. */
GArray *vcf_run(VcfTarget *target, const VcfDevice *device, const char *const *only,
                gboolean verbose);
void vcf_results_free(GArray *results);
/* Every check a device kind runs (generic ones first), NULL-id terminated
 * lists in @lists[0..1]. */
guint vcf_device_checks(const VcfDevice *device, const VcfCheck **lists);

G_END_DECLS
