/* vsnd-null-output.h: a headless audio stream output paced by the
 * monotonic clock.
 *
 * Consumes every running playback stream at its rate (frames are dropped;
 * what the guest does not send counts as underrun) and fills every running
 * capture stream with silence at its rate.  One thread for all streams,
 * waking every VSND_NULL_OUTPUT_TICK_MS: a transfer completes within one
 * tick of when its last frame is due.  For a daemon without a sound server
 * and for tests of the pacing.
 *
 * Threads: the callbacks run with the VsndVhost device lock held (they only
 * note the state); the output's thread takes the same lock to move frames.
 * Free it before the VsndVhost. */
#pragma once

#include "vsnd-vhost.h"

G_BEGIN_DECLS

#define VSND_NULL_OUTPUT_TICK_MS 2

typedef struct _VsndNullOutput VsndNullOutput;

/* Becomes @vsnd's output (vsnd_vhost_set_stream_iface). */
VsndNullOutput *vsnd_null_output_new(VsndVhost *vsnd);
/* Stops the thread and detaches from @vsnd. */
void vsnd_null_output_free(VsndNullOutput *out);

G_END_DECLS
