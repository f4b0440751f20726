/* vgpu-edid.c: EDID generation (VESA E-EDID 1.4 base block, CVT reduced
 * blanking timings). */
#include "vgpu-edid.h"

#include <string.h>

#define REFRESH_HZ    60u
#define DPI           96u
#define H_BLANK       160u /* CVT-RB: fixed horizontal blanking */
#define H_FRONT       48u
#define H_SYNC        32u
#define V_FRONT       3u
#define V_SYNC        6u
#define V_BACK_MIN    6u
#define MIN_VBLANK_US 460u
#define MONITOR_NAME  "gst-vhost"

/* Three letters, 5 bits each, big endian: "GVH". */
static void
put_manufacturer(guint8 *p)
{
  guint16 id = (guint16)((('G' - '@') << 10) | (('V' - '@') << 5) | ('H' - '@'));

  p[0] = (guint8)(id >> 8);
  p[1] = (guint8)id;
}

/* sRGB primaries and D65 white point as 10-bit binary fractions. */
static void
put_chromaticity(guint8 *p)
{
  static const double xy[8] = { 0.640, 0.330, 0.300, 0.600, 0.150, 0.060, 0.3127, 0.3290 };
  guint v[8];

  for (guint i = 0; i < 8; i++)
    v[i] = (guint)(xy[i] * 1024.0 + 0.5);
  p[0] = (guint8)(((v[0] & 3) << 6) | ((v[1] & 3) << 4) | ((v[2] & 3) << 2) | (v[3] & 3));
  p[1] = (guint8)(((v[4] & 3) << 6) | ((v[5] & 3) << 4) | ((v[6] & 3) << 2) | (v[7] & 3));
  for (guint i = 0; i < 8; i++)
    p[2 + i] = (guint8)(v[i] >> 2);
}

static void
put_detailed_timing(guint8 *d, guint32 w, guint32 h)
{
  guint64 h_period_ns, vbi, v_blank, h_total, v_total, clock_10khz, refresh = REFRESH_HZ;
  guint32 w_mm = (guint32)MIN((guint64)w * 254u / (DPI * 10u), 4095u);
  guint32 h_mm = (guint32)MIN((guint64)h * 254u / (DPI * 10u), 4095u);

  /* Vertical blanking long enough for MIN_VBLANK_US at the target rate. */
  h_period_ns = (1000000000ull / REFRESH_HZ - MIN_VBLANK_US * 1000ull) / h;
  vbi = MIN_VBLANK_US * 1000ull / MAX(h_period_ns, 1u) + 1;
  v_blank = MAX(vbi, (guint64)(V_FRONT + V_SYNC + V_BACK_MIN));
  v_blank = MIN(v_blank, 4095u);
  h_total = w + H_BLANK;
  v_total = h + v_blank;
  clock_10khz = h_total * v_total * refresh / 10000u;
  if (clock_10khz > G_MAXUINT16) {
    /* Too fast for the 16-bit field: lower the refresh rate instead. */
    refresh = MAX((guint64)G_MAXUINT16 * 10000u / (h_total * v_total), 1u);
    clock_10khz = MIN(h_total * v_total * refresh / 10000u, G_MAXUINT16);
  }

  d[0] = (guint8)clock_10khz;
  d[1] = (guint8)(clock_10khz >> 8);
  d[2] = (guint8)w;
  d[3] = (guint8)H_BLANK;
  d[4] = (guint8)(((w >> 8) & 0xf) << 4 | ((H_BLANK >> 8) & 0xf));
  d[5] = (guint8)h;
  d[6] = (guint8)v_blank;
  d[7] = (guint8)(((h >> 8) & 0xf) << 4 | ((v_blank >> 8) & 0xf));
  d[8] = (guint8)H_FRONT;
  d[9] = (guint8)H_SYNC;
  d[10] = (guint8)((V_FRONT & 0xf) << 4 | (V_SYNC & 0xf));
  d[11] = (guint8)(((H_FRONT >> 8) & 3) << 6 | ((H_SYNC >> 8) & 3) << 4 | ((V_FRONT >> 4) & 3) << 2
                   | ((V_SYNC >> 4) & 3));
  d[12] = (guint8)w_mm;
  d[13] = (guint8)h_mm;
  d[14] = (guint8)(((w_mm >> 8) & 0xf) << 4 | ((h_mm >> 8) & 0xf));
  d[15] = 0;
  d[16] = 0;
  d[17] = 0x1a; /* digital separate sync, +hsync -vsync (CVT-RB) */
}

/* Display descriptor with up to 13 characters of text. */
static void
put_text_descriptor(guint8 *d, guint8 tag, const char *text)
{
  gsize len = strlen(text);

  for (guint i = 0; i < 18; i++)
    d[i] = i < 5 ? 0 : ' ';
  d[3] = tag;
  for (guint i = 0; i < 13 && i < len; i++)
    d[5 + i] = (guint8)text[i];
  if (len < 13)
    d[5 + len] = '\n';
}

void
vgpu_edid_generate(guint32 width, guint32 height, guint32 serial, guint8 edid[VGPU_EDID_SIZE])
{
  static const guint8 header[8] = { 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00 };
  char serial_text[16];
  guint8 sum = 0;
  guint32 w = CLAMP(width, 1u, VGPU_EDID_MAX_SIDE);
  guint32 h = CLAMP(height, 1u, VGPU_EDID_MAX_SIDE);

  memset(edid, 0, VGPU_EDID_SIZE);
  memcpy(edid, header, sizeof header);
  put_manufacturer(edid + 8);
  edid[10] = 0x01; /* product code 0x0001, little endian */
  edid[12] = (guint8)serial;
  edid[13] = (guint8)(serial >> 8);
  edid[14] = (guint8)(serial >> 16);
  edid[15] = (guint8)(serial >> 24);
  edid[16] = 1;  /* week */
  edid[17] = 34; /* 2024 */
  edid[18] = 1;  /* EDID 1.4 */
  edid[19] = 4;
  edid[20] = 0xa0; /* digital input, 8 bits per colour */
  edid[21] = (guint8)MIN((guint64)w * 254u / (DPI * 100u), 255u); /* cm */
  edid[22] = (guint8)MIN((guint64)h * 254u / (DPI * 100u), 255u);
  edid[23] = 120;  /* gamma 2.2 */
  edid[24] = 0x06; /* RGB 4:4:4, sRGB default, preferred timing is native */
  put_chromaticity(edid + 25);
  for (guint i = 38; i < 54; i++)
    edid[i] = 0x01; /* unused standard timings */
  put_detailed_timing(edid + 54, w, h);
  g_snprintf(serial_text, sizeof serial_text, "%u", serial);
  put_text_descriptor(edid + 72, 0xff, serial_text);
  put_text_descriptor(edid + 90, 0xfc, MONITOR_NAME);
  edid[108 + 3] = 0x10; /* dummy descriptor */
  edid[126] = 0;        /* no extensions */
  for (guint i = 0; i < 127; i++)
    sum += edid[i];
  edid[127] = (guint8)(0x100 - sum);
}
