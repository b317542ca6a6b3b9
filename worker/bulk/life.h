/* The lifecycles of a bulk export and of one of its files in memory, on the
 * bulk thread: the states, the events that move them, and the transitions
 * (pure: no thread, no Kafka; the unit tests drive every transition).
 *
 * These are not the states an export records on the bulk topic (pending,
 * exporting, downloading, completed, failed: fx_bx_record below), which say
 * where a resume starts. The in-memory state says what this thread is doing
 * with the export right now, and which of its callbacks still count:
 *
 *   LISTED       known from its partition's records, not started: the
 *                partition is not read to its end yet (a newer record may
 *                still replace it)
 *   WAITING      started; a timer runs until its next request
 *   ASKING       its kick-off or a status poll is in flight
 *   DOWNLOADING  the manifest is read; its files download (fx_bxf_phase)
 *   FAILING      it failed: its failure record and dead letter wait for
 *                Kafka's acknowledgement
 *   REPORTING    its status record waits for Kafka's acknowledgement
 *   ENDED        its final progress record is produced; the DELETE on the
 *                server may still be in flight
 *   DROPPING     given up here (its partition went elsewhere, the thread
 *                stops, a newer record ended it, or Kafka refused its final
 *                records): nothing more is published, and it resumes from
 *                its last progress record wherever its partition goes
 *   DONE         nothing it started is in flight: it is freed
 *
 *   LISTED -SEND-> ASKING -WAIT-> WAITING -SEND-> ASKING -MANIFEST->
 *   DOWNLOADING -FILES_DONE-> REPORTING -ACKED-> ENDED -IDLE-> DONE
 *   (any of the first four) -FAIL-> FAILING -ACKED-> REPORTING
 *   (any of the first four) -DROP-> DROPPING -IDLE-> DONE
 *   FAILING, REPORTING -NOT_ACKED-> DROPPING
 *
 * An event that does not apply in a state is refused (fx_bx_next returns
 * FX_BX_NONE) and its caller drops it: a second failure of an export that is
 * failing already, an answer that arrives after its export was dropped.
 *
 * A file of a DOWNLOADING export goes through its own phases:
 *
 *   WAITING     its download starts when its timer fires (a retry), or now
 *   RECEIVING   its transfer runs; lines are published as they arrive
 *   PAUSED      its transfer is paused: a line waits for room in the producer
 *   DRAINING    the body is read; its last lines wait for room
 *   REFERENCES  every line is published; the entities they reference are read
 *   ACKING      everything is produced, or the file was given up: its sink
 *               waits for Kafka
 *   SETTLED     Kafka answered: counted done (or to be downloaded again), and
 *               the file closes
 *
 * Thread: any (nothing here has state). */
#ifndef FX_BULK_LIFE_H
#define FX_BULK_LIFE_H

#include "worker/out/records.h"

enum { FX_BX_NONE = -1 };

typedef enum fx_bx_state {
  FX_BX_LISTED,
  FX_BX_WAITING,
  FX_BX_ASKING,
  FX_BX_DOWNLOADING,
  FX_BX_FAILING,
  FX_BX_REPORTING,
  FX_BX_ENDED,
  FX_BX_DROPPING,
  FX_BX_DONE,
  FX_BX_NSTATES
} fx_bx_state;

typedef enum fx_bx_event {
  FX_BX_SEND,       /* a kick-off or status poll is sent */
  FX_BX_WAIT,       /* the next request waits for a timer */
  FX_BX_MANIFEST,   /* a status poll returned the manifest */
  FX_BX_FILES_DONE, /* every file is acknowledged: on to the status record */
  FX_BX_FAIL,       /* the export fails (the server, its deadline, a file) */
  FX_BX_ACKED,      /* Kafka has the records of the ending step */
  FX_BX_NOT_ACKED,  /* Kafka refused one of them */
  FX_BX_DROP,       /* given up here (see DROPPING) */
  FX_BX_IDLE,       /* nothing it started is in flight any more */
  FX_BX_NEVENTS
} fx_bx_event;

/* The state ev moves s to, or FX_BX_NONE when ev does not apply in s. */
int fx_bx_next(fx_bx_state s, fx_bx_event ev);
const char *fx_bx_state_name(fx_bx_state s);
const char *fx_bx_event_name(fx_bx_event ev);
/* 1 where the export is running here: started, and not given up or freed
 * (what fhirx_bulk_exports_active counts). */
int fx_bx_active(fx_bx_state s);
/* 1 where a progress record read from the bulk topic can still concern it
 * (it has not begun to end): LISTED to DOWNLOADING. */
int fx_bx_known(fx_bx_state s);

typedef enum fx_bxf_phase {
  FX_BXF_WAITING,
  FX_BXF_RECEIVING,
  FX_BXF_PAUSED,
  FX_BXF_DRAINING,
  FX_BXF_REFERENCES,
  FX_BXF_ACKING,
  FX_BXF_SETTLED,
  FX_BXF_NPHASES
} fx_bxf_phase;

typedef enum fx_bxf_event {
  FX_BXF_SEND,       /* its request is sent (the first, a retry's, or a redirect's) */
  FX_BXF_PAUSE,      /* the producer is full: the transfer pauses */
  FX_BXF_RESUME,     /* room again: the transfer goes on */
  FX_BXF_BODY_END,   /* the transfer ended with a 2xx and the whole body */
  FX_BXF_LINES_DONE, /* every line is published */
  FX_BXF_REFS_DONE,  /* every referenced entity was read, or reported */
  FX_BXF_RETRY,      /* the download failed and starts again after a pause */
  FX_BXF_GIVE_UP,    /* its export stopped downloading: nothing more is published */
  FX_BXF_SETTLE,     /* Kafka answered for each of its outputs */
  FX_BXF_NEVENTS
} fx_bxf_event;

/* The phase ev moves p to, or FX_BX_NONE when ev does not apply in p. */
int fx_bxf_next(fx_bxf_phase p, fx_bxf_event ev);
const char *fx_bxf_phase_name(fx_bxf_phase p);
/* 1 while the file's transfer is in flight (RECEIVING, PAUSED). */
int fx_bxf_transferring(fx_bxf_phase p);

/* The states an export records on the bulk topic (bulk_progress.schema.json). */
typedef enum fx_bx_record {
  FX_BXR_PENDING,
  FX_BXR_EXPORTING,
  FX_BXR_DOWNLOADING,
  FX_BXR_COMPLETED,
  FX_BXR_FAILED,
  FX_BXR_COUNT
} fx_bx_record;

const char *fx_bx_record_name(fx_bx_record r);
/* FX_BX_NONE for a name that is not a record state (or NULL). */
int fx_bx_record_parse(const char *name);

/* What the status record of an ending export says: failed_export when the
 * export itself failed (its dead letter re-runs it whole), else the lines
 * the files could not publish (error-file lines, bad lines, failed
 * references) decide; with any of those, partial when something was
 * published, else failed. */
fx_outcome fx_bx_outcome(int failed_export, long long published, long long failed_lines);

#endif
