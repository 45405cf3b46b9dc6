"""``adapterhub eval``: registry versions (and the bare base) compared on one data file: generation through
the serving engine in mixed batches (``generate``), loss through PEFT (``loss``), metrics stored per data
digest (``compare``), and a bar chart (``plot``)."""
