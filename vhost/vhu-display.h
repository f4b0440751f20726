/* vhu-display.h: the frontend end of the vhost-user-gpu display socket.
 *
 * Plays QEMU's part: makes a socketpair, hands one end to a GPU backend with
 * GPU_SET_SOCKET, answers GET_PROTOCOL_FEATURES / GET_DISPLAY_INFO / GET_EDID
 * and keeps one X8R8G8B8 framebuffer per scanout from SCANOUT/UPDATE, or
 * from DMABUF_SCANOUT(2)/DMABUF_UPDATE: the dmabuf is kept mapped while
 * shown (linear only), each update copies its rectangle out of it before
 * the reply, so the framebuffer is what the dmabuf held then.  It
 * runs on its own thread so a test blocked on a ring never stalls it. */
#pragma once

#include <glib.h>

#include "vhu-display-proto.h"
#include "vhu-frontend.h"

G_BEGIN_DECLS

typedef struct _VhuDisplayServer VhuDisplayServer;

typedef struct {
  guint num_scanouts;  /* 1..16 */
  guint width, height; /* mode reported by GET_DISPLAY_INFO for every scanout */
  guint64
      protocol_features; /* answered to GET_PROTOCOL_FEATURES: 0 like QEMU 7.2, 3 like QEMU 10 */
  gboolean answer_invalid_edid; /* FALSE: ignore GET_EDID for bad scanouts, as QEMU does */
} VhuDisplayConfig;

VhuDisplayServer *vhu_display_server_new(const VhuDisplayConfig *config);
void vhu_display_server_free(VhuDisplayServer *ds);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VhuDisplayServer, vhu_display_server_free)

/* Makes a new socketpair and sends one end with GPU_SET_SOCKET (the old
 * connection, if any, is closed as QEMU does on every device start). */
gboolean vhu_display_server_attach(VhuDisplayServer *ds, VhuFrontend *fe, GError **error);
void vhu_display_server_detach(VhuDisplayServer *ds);

typedef struct {
  guint64 messages;     /* all messages received */
  guint64 updates;      /* UPDATE messages */
  guint64 update_bytes; /* pixel bytes received in UPDATEs */
  guint64 scanouts;     /* SCANOUT messages */
  guint64 cursor_updates, cursor_moves;
  guint64 errors;              /* malformed messages seen */
  guint64 negotiated_features; /* from SET_PROTOCOL_FEATURES */
  /* Requests seen, by kind (for tools that report the handshake). */
  guint64 protocol_features_requests; /* GET_PROTOCOL_FEATURES */
  guint64 set_protocol_features;      /* SET_PROTOCOL_FEATURES */
  guint64 display_info_requests;      /* GET_DISPLAY_INFO */
  guint64 edid_requests;              /* GET_EDID */
  guint64 dmabuf_scanouts;            /* DMABUF_SCANOUT and DMABUF_SCANOUT2 */
  guint64 dmabuf_updates;             /* DMABUF_UPDATE */
} VhuDisplayStats;
void vhu_display_server_get_stats(VhuDisplayServer *ds, VhuDisplayStats *stats);

/* Waits until at least @n UPDATE and DMABUF_UPDATE messages have arrived
 * in total. */
gboolean vhu_display_server_wait_updates(VhuDisplayServer *ds, guint64 n, int timeout_ms);
/* Waits until scanout @id is @width x @height and shows exactly @pixels
 * (X8R8G8B8, stride width*4): the frame a test expects, however many
 * updates the backend merged on the way. */
gboolean vhu_display_server_wait_frame(VhuDisplayServer *ds, guint id, const guint32 *pixels,
                                       guint width, guint height, int timeout_ms);
/* Copy of scanout @id's framebuffer (X8R8G8B8, stride width*4); NULL when the
 * scanout is disabled.  Free with g_free. */
guint32 *vhu_display_server_get_frame(VhuDisplayServer *ds, guint id, guint *width, guint *height);
/* Cursor state of scanout @id; FALSE if never set. */
gboolean vhu_display_server_get_cursor(VhuDisplayServer *ds, guint id, guint *x, guint *y,
                                       gboolean *visible, guint32 *image_64x64);

G_END_DECLS
