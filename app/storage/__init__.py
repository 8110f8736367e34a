"""What DATA_DIR holds and for how long: deleting jobs (:mod:`.retention`), the periodic sweep
that a worker runs (KEEP_MODELS, intermediate and temporary files), and the storage report
(:mod:`.usage`). Above the services: it reads jobs, models and datasets together."""
