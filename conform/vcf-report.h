/* vcf-report.h: the outputs of gst-vhost-conform: a table (check, verdict,
 * detail), TAP version 13, and a JSON object
 * {"backend", "device", "checks": [{"id", "group", "section", "verdict",
 * "detail"}]}. */
#pragma once

#include <stdio.h>

#include "vcf-check.h"

G_BEGIN_DECLS

void vcf_report_table(FILE *out, GArray *results);
void vcf_report_tap(FILE *out, GArray *results);
char *vcf_report_json(const char *backend, const char *device, GArray *results);
void vcf_report_list(FILE *out, const VcfDevice *device);
/* TRUE when no result is fail or crashed. */
gboolean vcf_results_ok(GArray *results);

G_END_DECLS
