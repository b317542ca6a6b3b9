/* `fhirx worker`: one worker process.
 *
 * The supervisor (the main thread) owns what every thread shares
 * (services.h: the configuration, the token cache, the governor, the
 * reference cache, the tenant set, the producer, the metrics), serves the
 * producer's delivery reports on its loop, turns SIGTERM/SIGINT into a
 * drain and SIGHUP into a tenant reload, and exits once every thread left.
 *
 * Its threads: N worker threads (jobs/jobs.h) in the jobs group, one bulk
 * thread (bulk/bulk.h) in the bulk group, and the admin endpoint's own
 * thread (admin/admin.h). Everything that can fail at start-up (the
 * configuration, keys, the producer, the consumers, the admin port) is set
 * up before any consumer joins its group, so a worker that cannot start
 * leaves no member behind. */
#ifndef FX_POOL_POOL_H
#define FX_POOL_POOL_H

/* Runs the worker until it is stopped; 0 on a clean exit. */
int fx_pool_run(const char *config_path);

#endif
