"""The hostile-input corpus (issue 12): descriptors, packages, certificates and inventories
that each must end in a clear ZStack error (or a verify problem), never a traceback, in
bounded memory. ``corpus`` builds the cases, ``runner`` runs every reader and CLI command over
them in a child process whose peak RSS the test measures (tests/test_hostile_corpus.py)."""
