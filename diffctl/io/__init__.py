"""The files diffctl owns: checkpoints, run folders and their records (config, metrics logs, locks,
JSON reports), image grids and the plots several commands share.  A command's own report (eval's
quality-vs-NFE plot, inspect-schedule's curves) is drawn by that command, and the metric caches by
the metric that owns them."""
