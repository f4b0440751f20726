/* vcf-session.h: one conformance connection to a backend under test.
 *
 * A VcfSession is the frontend (VMM) side of one vhost-user connection, built
 * on VhuFrontend for the socket, the handshake and guest memory, but with its
 * own start sequence and its own driver rings (VcfRing) so that a check can
 * control every field the backend sees: ring bases, notification
 * suppression, indirect tables, descriptors that span regions, the kick and
 * call eventfds.  Single-threaded; every wait ends with the session timeout.
 *
 * Guest memory layout (fixed, so checks can reason about it):
 *   region 0: gpa 0x0        size 1 MiB   rings and scratch buffers
 *   region 1: gpa 0x100000   size 15 MiB  mmap_offset 4 KiB, device data
 * The two regions are adjacent in guest-physical space but separate memfds,
 * so a buffer at 0x100000 - n spans both. */
#pragma once

#include <glib.h>
#include <linux/virtio_ring.h>

#include "vhu-frontend.h"

G_BEGIN_DECLS

#define VCF_REGION0_GPA  G_GUINT64_CONSTANT(0x0)
#define VCF_REGION0_SIZE (1u << 20)
#define VCF_REGION1_GPA  G_GUINT64_CONSTANT(0x100000)
#define VCF_REGION1_SIZE (15u << 20)
#define VCF_REGION1_OFF  4096u
#define VCF_MAX_QUEUES   8u

typedef struct _VcfSession VcfSession;
typedef struct _VcfRing VcfRing;

typedef struct {
  guint64 protocol_mask;         /* protocol features the frontend accepts */
  gboolean no_protocol_features; /* never send GET/SET_PROTOCOL_FEATURES */
  guint timeout_ms;              /* 0: 5000 */
} VcfSessionOptions;

/* Connects to @path and runs the handshake (GET_FEATURES, protocol features,
 * SET_OWNER, ...), and adds the two memory regions (not yet sent). */
VcfSession *vcf_session_open(const char *path, const VcfSessionOptions *options, GError **error);
void vcf_session_free(VcfSession *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VcfSession, vcf_session_free)

VhuFrontend *vcf_session_frontend(VcfSession *s);
guint vcf_session_timeout(VcfSession *s);
guint64 vcf_session_offered_features(VcfSession *s);
guint64 vcf_session_negotiated_protocol(VcfSession *s);
gboolean vcf_session_has_pf(VcfSession *s, guint bit);

/* The memory table: SET_MEM_TABLE, or one ADD_MEM_REG per region when
 * CONFIGURE_MEM_SLOTS was negotiated (unless @force_table). */
gboolean vcf_session_send_memory(VcfSession *s, gboolean force_table, GError **error);
/* A region descriptor as the backend sees it, and its memfd. */
void vcf_session_region(VcfSession *s, guint i, VhuMemRegionDesc *desc, int *fd);

/* SET_FEATURES (@features & offer, VERSION_1 and PROTOCOL_FEATURES when
 * offered), FEATURES_OK with STATUS, the memory, then rings 0..n-1 of the
 * given sizes at base 0, then DRIVER_OK: what QEMU 10 sends at start. */
gboolean vcf_session_start(VcfSession *s, guint64 features, const guint *sizes, guint n,
                           GError **error);
/* The first step of that alone: SET_FEATURES, and FEATURES_OK with STATUS. */
gboolean vcf_session_set_features(VcfSession *s, guint64 features, GError **error);
guint64 vcf_session_features(VcfSession *s); /* sent with SET_FEATURES */

/* Allocates @size bytes of zeroed guest memory in region 1; returns the gpa. */
guint64 vcf_session_alloc(VcfSession *s, gsize size);
void *vcf_session_ptr(VcfSession *s, guint64 gpa, gsize len);
/* Copies @len bytes from/to guest memory that may span regions. */
gboolean vcf_session_write(VcfSession *s, guint64 gpa, const void *data, gsize len);
gboolean vcf_session_read(VcfSession *s, guint64 gpa, void *data, gsize len);

/* Messages: a request with NEED_REPLY when REPLY_ACK was negotiated, acked. */
gboolean vcf_session_request(VcfSession *s, guint32 request, const void *payload, gsize size,
                             const int *fds, guint n_fds, GError **error);
gboolean vcf_session_state(VcfSession *s, guint32 request, guint index, guint num, GError **error);
/* GET_VRING_BASE(@index); *num gets the answer. */
gboolean vcf_session_get_base(VcfSession *s, guint index, guint *num, GError **error);

/* --- rings --- */
VcfRing *vcf_session_ring(VcfSession *s, guint index);
/* Allocates ring memory for @index (replacing an older ring object there). */
VcfRing *vcf_session_new_ring(VcfSession *s, guint index, guint size, GError **error);
/* SET_VRING_NUM, SET_VRING_BASE(@base), SET_VRING_ADDR, SET_VRING_CALL,
 * SET_VRING_ERR, SET_VRING_KICK, then SET_VRING_ENABLE(1) when PROTOCOL_FEATURES
 * was negotiated.  The driver's indices are left as they are (see
 * vcf_ring_set_indices). */
gboolean vcf_ring_setup(VcfRing *r, guint base, GError **error);
/* Sets both driver indices (avail and last used) without telling the backend. */
void vcf_ring_set_indices(VcfRing *r, guint16 idx);
/* Adds a chain of readable @out then writable @in buffers (direct, or one
 * indirect table); returns the head, or -1 when the ring has no room. */
int vcf_ring_add(VcfRing *r, const VhuGuestBuf *out, guint n_out, const VhuGuestBuf *in, guint n_in,
                 gboolean indirect);
void vcf_ring_publish(VcfRing *r); /* avail idx */
void vcf_ring_kick(VcfRing *r);    /* always writes the kick eventfd */
/* Waits for the next used entry; FALSE after the timeout. */
gboolean vcf_ring_wait_used(VcfRing *r, int timeout_ms, guint32 *id, guint32 *len);
/* The call eventfd's counter (0 when not signalled); resets it. */
guint64 vcf_ring_take_calls(VcfRing *r);
/* Waits up to @timeout_ms for the call eventfd. */
gboolean vcf_ring_wait_call(VcfRing *r, int timeout_ms);
/* TRUE when the error eventfd was signalled (resets it). */
gboolean vcf_ring_take_error(VcfRing *r);
guint16 vcf_ring_used_idx(VcfRing *r);
guint16 vcf_ring_avail_idx(VcfRing *r);
guint vcf_ring_size(VcfRing *r);
struct vring_desc *vcf_ring_desc(VcfRing *r);
struct vring_avail *vcf_ring_avail(VcfRing *r);
struct vring_used *vcf_ring_used(VcfRing *r);
void vcf_ring_set_used_event(VcfRing *r, guint16 v);
/* Descriptor index the next vcf_ring_add starts at (for hostile chains). */
guint16 vcf_ring_next_desc(VcfRing *r);
void vcf_ring_skip_desc(VcfRing *r, guint n);

/* One request/answer on ring @q: @req into a readable buffer, @resp_size
 * writable bytes; returns the bytes the device wrote, -1 with @error. */
gssize vcf_session_transact(VcfSession *s, guint q, const void *req, gsize req_size, void *resp,
                            gsize resp_size, GError **error);

/* Raw messages (for reply-rule checks): sends @flags as given (version bits
 * included), and reads the next message whatever it is. */
gboolean vcf_session_send_raw(VcfSession *s, guint32 request, guint32 flags, const void *payload,
                              gsize size, const int *fds, guint n_fds, GError **error);
typedef struct {
  guint32 request, flags, size;
  guint8 payload[512];
} VcfReply;
/* FALSE with @error on timeout or EOF (G_IO_ERROR_CONNECTION_CLOSED). */
gboolean vcf_session_recv_raw(VcfSession *s, VcfReply *reply, int timeout_ms, GError **error);
/* TRUE when the backend closed the connection (EOF) within @timeout_ms. */
gboolean vcf_session_wait_closed(VcfSession *s, int timeout_ms);
/* GET_FEATURES round trip: the connection still works. */
gboolean vcf_session_alive(VcfSession *s, GError **error);

G_END_DECLS
