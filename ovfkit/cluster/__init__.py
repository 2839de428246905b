"""Many hosts: exports run by Celery workers near the storage, records in a shared database.

- :mod:`.routing` (pure): what a worker can reach, which queue a job goes to.
- :mod:`.jobs`: jobs, leases and workers in the database (every transition one conditional
  UPDATE).
- :mod:`.celery_app`: the Celery application (Redis broker, late acknowledgement).
- :mod:`.dispatch`: publishing and the reaper (lost leases, lost messages, unroutable jobs).
- :mod:`.worker`: ``ovfkit worker``; :mod:`.service`: the API node's side.

Needs the ``cluster`` extra (``pip install 'ovfkit[cluster]'``: Celery with Redis, psycopg).
Importing this package loads nothing.
"""
