/* vhu-backend-internal.h: what the parts of VhuBackend share (not for
 * devices or tests): vhu-backend.c (session state, connections, public API),
 * vhu-backend-queue.c (the queue thread), vhu-backend-messages.c (one handler
 * per vhost-user request).  The threading model is described at the top of
 * vhu-backend.c. */
#pragma once

#include "vhu-backend-private.h"
#include "vhu-vring-private.h"

G_BEGIN_DECLS

#define MSG_TIMEOUT_MS   1000
#define POLL_INTERVAL_MS 1

/* What a queue's sources get as data: lives as long as the backend. */
typedef struct {
  VhuBackend *backend;
  guint qidx;
} QueueRef;

typedef struct {
  QueueRef ref;
  VhuVring *vring;
  /* watch_lock: */
  int kick_fd;       /* polled by the queue thread's loop; closed on that thread */
  gboolean polled;   /* started without a kick fd: the loop polls the ring */
  gint kick_pending; /* atomic: a scheduled queue_kick is queued */
} VhuQueue;

struct _VhuBackend {
  VhuDeviceIface iface;
  gpointer dev;
  GMainContext *context;
  VhuBackendOptions options;
  GMutex watch_lock; /* the queues' kick sources; never held across a call out */
  GMutex req_lock;   /* backend_req_fd and writes to it */

  /* Control thread only. */
  int listen_fd;
  GSource *listen_source;
  char *socket_path;
  dev_t socket_dev;
  ino_t socket_ino;
  int conn_fd;
  GSource *conn_source;
  gboolean serving;
  gboolean single_client;
  void (*disconnect_func)(gpointer data);
  gpointer disconnect_data;
  guint64 offered_features;
  guint64 offered_protocol;
  guint64 protocol_features;
  int backend_req_fd;      /* req_lock; written on the control thread only */
  gboolean backend_req_ok; /* req_lock: BACKEND_REQ negotiated, channel usable */

  guint64 features; /* atomic: negotiated virtio features */
  /* Control thread only (rings hold their own references). */
  VhuMemTable *mem;
  guint8 *inflight_base;
  gsize inflight_size;
  guint num_queues;
  guint max_queue_size;
  VhuQueue *queues;

  gint status; /* atomic: virtio status byte, NEEDS_RESET included */

  GMainContext *qctx;
  GThread *qthread;
  gint quit; /* atomic: the queue thread's loop ends */
};

typedef enum {
  H_OK,        /* ack 0 when asked */
  H_REPLIED,   /* the request's own reply was sent */
  H_REFUSED,   /* ack 1 when asked, otherwise just logged */
  H_MALFORMED, /* ack 1 when asked, otherwise the connection is dropped */
  H_CLOSE,     /* drop the connection */
} HResult;

/* vhu-backend-queue.c */
void vhu_backend_notify_config_change(VhuBackend *b);
void vhu_backend_ring_broken(gpointer data, VhuVring *vring, const char *reason);
void vhu_backend_schedule_kick(VhuBackend *b, guint qidx);
void vhu_backend_drop_kick_watch(VhuBackend *b, VhuQueue *q);
void vhu_backend_add_kick_watch(VhuBackend *b, guint qidx, int fd);
gpointer vhu_backend_queue_thread(gpointer data);

/* vhu-backend.c (control thread) */
gboolean vhu_backend_start_queue(VhuBackend *b, guint qidx, GError **error);
void vhu_backend_stop_queue(VhuBackend *b, guint qidx);
void vhu_backend_reset_device(VhuBackend *b);
gboolean vhu_backend_set_mem(VhuBackend *b, VhuMemTable *mem, GError **error);
void vhu_backend_drop_inflight(VhuBackend *b);

G_END_DECLS
