/* vcf-report.c: table, TAP and JSON output. */
#include "vcf-report.h"

#include <string.h>

static void
json_string(GString *s, const char *v)
{
  g_string_append_c(s, '"');
  for (const guchar *p = (const guchar *)v; *p != '\0'; p++) {
    if (*p == '"' || *p == '\\')
      g_string_append_printf(s, "\\%c", *p);
    else if (*p < 0x20)
      g_string_append_printf(s, "\\u%04x", *p);
    else
      g_string_append_c(s, (char)*p);
  }
  g_string_append_c(s, '"');
}

static void
json_field(GString *s, const char *name, const char *value, gboolean last)
{
  json_string(s, name);
  g_string_append(s, ": ");
  json_string(s, value);
  if (!last)
    g_string_append(s, ", ");
}

char *
vcf_report_json(const char *backend, const char *device, GArray *results)
{
  GString *s = g_string_new("{\n  ");

  json_field(s, "backend", backend, FALSE);
  json_field(s, "device", device, FALSE);
  g_string_append(s, "\n  \"checks\": [");
  for (guint i = 0; i < results->len; i++) {
    const VcfResult *r = &g_array_index(results, VcfResult, i);

    g_string_append(s, i == 0 ? "\n    {" : ",\n    {");
    json_field(s, "id", r->check->id, FALSE);
    json_field(s, "group", r->check->group, FALSE);
    json_field(s, "section", r->check->section, FALSE);
    json_field(s, "verdict", vcf_verdict_name(r->verdict), FALSE);
    json_field(s, "detail", r->detail, TRUE);
    g_string_append_c(s, '}');
  }
  g_string_append(s, "\n  ]\n}\n");
  return g_string_free(s, FALSE);
}

void
vcf_report_table(FILE *out, GArray *results)
{
  guint w = 5;
  guint counts[VCF_CRASHED + 1] = { 0 };

  for (guint i = 0; i < results->len; i++)
    w = MAX(w, (guint)strlen(g_array_index(results, VcfResult, i).check->id));
  fprintf(out, "%-*s  %-11s  %s\n", (int)w, "check", "verdict", "detail");
  for (guint i = 0; i < results->len; i++) {
    const VcfResult *r = &g_array_index(results, VcfResult, i);

    fprintf(out, "%-*s  %-11s  %s\n", (int)w, r->check->id, vcf_verdict_name(r->verdict),
            r->detail);
    counts[r->verdict]++;
  }
  fprintf(out, "\n%u checks: %u pass, %u fail, %u not-offered, %u crashed\n", results->len,
          counts[VCF_PASS], counts[VCF_FAIL], counts[VCF_NOT_OFFERED], counts[VCF_CRASHED]);
}

/* TAP text stays on one line and inside its YAML quotes. */
static char *
tap_text(const char *s)
{
  char *t = g_strdup(s);

  g_strdelimit(t, "\n\"", ' ');
  return t;
}

void
vcf_report_tap(FILE *out, GArray *results)
{
  fprintf(out, "TAP version 13\n1..%u\n", results->len);
  for (guint i = 0; i < results->len; i++) {
    const VcfResult *r = &g_array_index(results, VcfResult, i);
    g_autofree char *detail = tap_text(r->detail);

    switch (r->verdict) {
      case VCF_PASS:
        fprintf(out, "ok %u - %s\n", i + 1, r->check->id);
        break;
      case VCF_NOT_OFFERED:
        fprintf(out, "ok %u - %s # SKIP not-offered: %s\n", i + 1, r->check->id, detail);
        break;
      default:
        fprintf(out,
                "not ok %u - %s\n  ---\n  verdict: %s\n  section: \"%s\"\n  detail: \"%s\"\n"
                "  ...\n",
                i + 1, r->check->id, vcf_verdict_name(r->verdict), r->check->section, detail);
        break;
    }
  }
}

void
vcf_report_list(FILE *out, const VcfDevice *device)
{
  const VcfCheck *lists[2];
  guint n = vcf_device_checks(device, lists);

  for (guint l = 0; l < n; l++)
    for (const VcfCheck *c = lists[l]; c->id != NULL; c++)
      fprintf(out, "%-36s %-10s %s\n    %s\n", c->id, c->group, c->section, c->summary);
}

gboolean
vcf_results_ok(GArray *results)
{
  for (guint i = 0; i < results->len; i++) {
    VcfVerdict v = g_array_index(results, VcfResult, i).verdict;

    if (v == VCF_FAIL || v == VCF_CRASHED)
      return FALSE;
  }
  return TRUE;
}
