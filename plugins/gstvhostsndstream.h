/* gstvhostsndstream.h: GStreamer pipelines as the audio stream output of a
 * virtio-sound device (sound/vsnd-vhost.h).
 *
 * One pipeline per device stream, described as for gst-launch-1.0:
 *   playback:  appsrc ! audioconvert ! volume ! audioconvert ! audioresample
 *              ! capsfilter ! DESCRIPTION
 *   capture:   DESCRIPTION ! audioconvert ! audioresample ! volume
 *              ! audioconvert ! capsfilter ! appsink
 * so any guest format and rate meets any pipeline.  The volume element
 * follows the stream's volume and switch controls.  A playback pipeline's
 * format is the one it negotiated first: later guest formats are converted
 * to it (a file or a sound card keeps one format for good).
 *
 * Clock: each stream has a pacing thread that waits on the pipeline's clock
 * (the sound card's, when the pipeline has one; the system clock
 * otherwise) and moves the frames that are due: playback frames are read
 * from the guest's buffers (a tx buffer completes once its last frame was
 * due; what the guest did not send is silence and an XRUN) and pushed,
 * stamped with their running time; capture frames are taken from the
 * pipeline and written into rx buffers (silence when the pipeline has
 * none, e.g. after its end of stream).  A sink that runs slightly fast or
 * slow drives the clock, so the guest follows it.  The pipeline never
 * stalls the guest: a playback pipeline that stops taking data loses the
 * oldest (bounded queue); a capture pipeline that falls behind delivers
 * silence.
 *
 * Playback pipelines run from gst_vhost_snd_stream_start() to
 * gst_vhost_snd_stream_finish().  A capture pipeline with a live source
 * plays from PREPARE to RELEASE and pauses in between (what it captured
 * before START is dropped); any other source plays from the start and
 * waits on its full appsink, so a file is read on from where the last
 * capture left it.
 *
 * Threads and locks: the VsndStreamIface callbacks run under the VsndVhost
 * device lock and only note the request for the stream's thread (order:
 * device lock, then the stream's lock).  Stream threads change pipeline
 * states and call vsnd_vhost_read()/vsnd_vhost_write() holding nothing.
 * Bus messages (errors, warnings: logged, the device goes on) are handled
 * on the GMainContext given to _new(). */
#pragma once

#include <gst/gst.h>

#include "vsnd-vhost.h"

G_BEGIN_DECLS

typedef struct _GstVhostSndStream GstVhostSndStream;

/* Default descriptions; with no sound server they become a headless sink
 * (the stream is still paced by the clock) and a silent live source, with
 * one log line. */
#define GST_VHOST_SND_DEFAULT_OUTPUT "autoaudiosink"
#define GST_VHOST_SND_DEFAULT_INPUT  "autoaudiosrc"

/* For the streams of @vsnd (not owned; it must outlive the result).
 * gst_init() must have been called. */
GstVhostSndStream *gst_vhost_snd_stream_new(VsndVhost *vsnd, GMainContext *context);

/* The description for @stream (a device stream index); NULL: the default
 * of its direction.  Before _start(). */
void gst_vhost_snd_stream_set_description(GstVhostSndStream *self, guint stream,
                                          const char *description);

/* Every pipeline runs on @clock instead of the one it would choose (a
 * clock the application shares, or a test clock).  Before _start(). */
void gst_vhost_snd_stream_set_clock(GstVhostSndStream *self, GstClock *clock);

/* Builds every pipeline, starts the playback ones and becomes @vsnd's
 * output.  FALSE with @error (the stream and what is wrong) when a
 * description does not parse or a pipeline cannot start. */
gboolean gst_vhost_snd_stream_start(GstVhostSndStream *self, GError **error);

/* Detaches from the device, sends end-of-stream into the playback
 * pipelines and waits at most @timeout_ms for it to come out of them, so
 * that files are complete; then stops every pipeline.  FALSE if some did
 * not finish in time.  Idempotent. */
gboolean gst_vhost_snd_stream_finish(GstVhostSndStream *self, guint timeout_ms);

/* Stops every pipeline (without end-of-stream unless finished) and frees. */
void gst_vhost_snd_stream_free(GstVhostSndStream *self);

/* The pipeline of @stream (owned by @self) after _start(), for tests and
 * applications that watch it. */
GstElement *gst_vhost_snd_stream_get_pipeline(GstVhostSndStream *self, guint stream);

/* The GStreamer caps of a stream's parameters; NULL for formats GStreamer
 * has no raw audio format for. */
GstCaps *gst_vhost_snd_params_to_caps(const VsndPcmParams *params);

G_END_DECLS
